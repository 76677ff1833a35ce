"""Registry of architectures (timm-style): name -> adapter."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from torch import nn

from attnprobe.errors import ConfigError
from attnprobe.models.adapter import Adapter
from attnprobe.models.compat import BUILD_DEFAULT

_ADAPTERS: dict[str, Adapter] = {}

ARCH_LABELS: dict[str, str] = {"swin_unetr": "Swin UNETR", "smit": "SMIT"}
"""Display names of the built-in architectures (figures, reports); others show their registry name."""


def register_adapter(adapter: Adapter | type[Adapter]) -> Adapter:
    """Register an adapter (instance or class) under its ``name``; usable as a decorator."""
    instance = adapter() if isinstance(adapter, type) else adapter
    _ADAPTERS[instance.name] = instance
    return adapter  # type: ignore[return-value]


def available_architectures() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(arch: str) -> Adapter:
    """The adapter registered as ``arch``; unknown names get the nearest suggestions."""
    try:
        return _ADAPTERS[arch]
    except KeyError:
        near = difflib.get_close_matches(arch, list(_ADAPTERS), n=3)
        hint = f"did you mean {', '.join(near)}?" if near else "pick one of the registered names"
        raise ConfigError(
            f"unknown architecture {arch!r}",
            expected=f"one of {available_architectures()}",
            got=repr(arch),
            fix=hint,
        ) from None


def model_config(model: nn.Module) -> dict[str, Any]:
    """The config a model was built with (``attnprobe_config``, set by :meth:`Adapter.build`).

    Empty for a model attnprobe did not build. A copy: changing it leaves the model alone.
    """
    config = getattr(model, "attnprobe_config", None)
    return dict(config) if isinstance(config, Mapping) else {}


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of a model built by attnprobe (or of a known class)."""
    arch = getattr(model, "attnprobe_arch", None)
    if arch is not None:
        return get_adapter(arch)
    for adapter in _ADAPTERS.values():
        if adapter.recognizes(model):
            return adapter
    raise ConfigError(
        "cannot tell the architecture of this model",
        expected=f"a model built by attnprobe.models.build_model or an instance of {available_architectures()}",
        got=type(model).__name__,
        fix="build it with attnprobe.models.build_model(arch, ...) or set model.attnprobe_arch",
    )


def resolve_config(arch: str, preset: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Preset values updated by overrides; unknown presets and keys are errors."""
    adapter = get_adapter(arch)
    preset = preset or adapter.default_preset
    if preset not in adapter.presets:
        raise ConfigError(
            f"unknown preset {preset!r} for {arch}",
            expected=f"one of {sorted(adapter.presets)}",
            got=repr(preset),
        )
    # every architecture takes ``compat`` (models/compat.py), presets need not list it
    config = {"compat": BUILD_DEFAULT, **adapter.presets[preset]}
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} for {arch}",
            expected=f"keys among {sorted(config)}",
            got=str(unknown),
        )
    config.update(overrides)
    return config


def build_model(arch: str, *, preset: str | None = None, **overrides: Any) -> nn.Module:
    """Build a model of a registered architecture from a preset plus overrides.

    ``compat="original"`` builds the semantics of the code that trained published checkpoints,
    ``compat="current"`` (the default) today's; see :mod:`attnprobe.models.compat`.

    Examples
    --------
    >>> model = build_model("swin_unetr", preset="tiny")
    >>> model.attnprobe_arch
    'swin_unetr'
    """
    config = resolve_config(arch, preset, **overrides)
    return get_adapter(arch).build(config)
