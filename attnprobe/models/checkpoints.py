"""Checkpoint reading and loading with a load report.

Safe by default: PyTorch files are read with ``torch.load(..., weights_only=True)``;
safetensors files through ``safetensors``. A load that matches no backbone key, or leaves
backbone keys missing, is an error (the naive strip-and-``strict=False`` trap loads nothing
silently); the user may opt in to a partial backbone with ``allow_partial=True``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from attnprobe.errors import CheckpointError
from attnprobe.models.compat import CompatChoice, choose_compat
from attnprobe.models.registry import available_architectures, get_adapter, resolve_config

#: key under which attnprobe's own checkpoints keep their metadata
META_KEY = "attnprobe"


class CompatNotice(UserWarning):
    """A checkpoint is computed in a compat mode chosen by default; the message says how to change it."""


@dataclass(frozen=True)
class LoadReport:
    """What a checkpoint load matched, missed and ignored."""

    path: str
    sha256: str
    arch: str
    format: str
    config: dict[str, Any]
    matched: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    missing_backbone: tuple[str, ...]
    shape_mismatch: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    #: keys of known heads the model has no place for (self-supervised heads), not loaded
    ignored: tuple[str, ...] = ()
    #: semantics the model computes (``original`` or ``current``) and why (models/compat.py)
    compat: str = "current"
    compat_reason: str = ""
    #: one line for the user when the compat mode was a default they may want to change
    notice: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        ignored = f", {len(self.ignored)} ignored (known heads)" if self.ignored else ""
        return (
            f"{self.arch} ({self.format}, compat={self.compat}): {len(self.matched)} matched, "
            f"{len(self.missing)} missing ({len(self.missing_backbone)} of them backbone), "
            f"{len(self.unexpected)} unexpected{ignored}"
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file into a mapping without running any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path}", expected="an existing .pt/.pth/.ckpt or .safetensors file",
            got="no such file", fix="check the path or the model name in attnprobe.toml",
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on garbage (IndexError included)
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read {path.name} as a checkpoint",
            expected="a PyTorch state dict saved with torch.save (tensors only) or a safetensors file",
            got=f"{type(exc).__name__}: {first}",
            fix="the file may be truncated or not a checkpoint; re-download or re-export it "
            "(attnprobe never unpickles arbitrary objects)",
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path.name} holds no state dict", expected="a mapping of tensor names to tensors",
            got=type(obj).__name__,
        )
    return dict(obj)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The attnprobe metadata of a checkpoint (``arch``, ``config``, ``train``, ...); ``{}`` when it has none.

    Raises
    ------
    CheckpointError
        As :func:`read_checkpoint`.
    """
    meta = read_checkpoint(path).get(META_KEY)
    return dict(meta) if isinstance(meta, Mapping) else {}


def _guess_arch(raw: Mapping[str, Any]) -> str:
    best, best_hits = None, 0
    for arch in available_architectures():
        adapter = get_adapter(arch)
        try:
            sd, _ = adapter.normalize_state_dict(raw)
        except CheckpointError:
            continue
        hits = sum(adapter.is_backbone_key(k) for k in sd)
        if hits > best_hits:
            best, best_hits = arch, hits
    if best is None:
        keys = sorted(k for k in _flat_keys(raw))[:5]
        raise CheckpointError(
            "no registered architecture recognises this checkpoint",
            expected=f"keys of one of {available_architectures()}",
            got=f"keys such as {keys}",
            fix="pass --arch explicitly, or check that this is a model checkpoint",
        )
    return best


def _flat_keys(raw: Mapping[str, Any]) -> list[str]:
    keys: list[str] = []
    for k, v in raw.items():
        if isinstance(v, Mapping):
            keys.extend(f"{k}.{kk}" for kk in v)
        else:
            keys.append(k)
    return keys


def load_checkpoint(
    path: str | os.PathLike[str],
    arch: str | None = None,
    *,
    preset: str | None = None,
    allow_partial: bool = False,
    compat: str | None = None,
    **overrides: Any,
) -> tuple[nn.Module, LoadReport]:
    """Build the model a checkpoint describes and load its weights.

    Parameters
    ----------
    path
        ``.pt``/``.pth`` (read with ``weights_only=True``) or ``.safetensors``.
    arch
        Registered architecture; guessed from the keys when omitted.
    preset
        Preset filling the hyper-parameters the keys do not determine.
    allow_partial
        Accept a load that leaves backbone keys missing (they stay randomly initialised) or
        brings keys the model does not have (they are not loaded).
    compat
        ``"original"`` (the semantics of the code that trained published checkpoints) or
        ``"current"``. Default: what the checkpoint records; ``"original"`` for a checkpoint
        attnprobe did not write, with a :class:`CompatNotice` warning naming the choice.
    **overrides
        Config values that win over both the preset and the inferred values.

    Returns
    -------
    (model, report)
        The model in eval mode and a :class:`LoadReport`.
    """
    path = Path(path)
    raw = read_checkpoint(path)
    meta = m if isinstance(m := raw.get(META_KEY), Mapping) else {}
    arch = arch or meta.get("arch") or _guess_arch(raw)
    adapter = get_adapter(arch)
    sd, fmt = adapter.normalize_state_dict(raw)
    if not sd:
        raise CheckpointError(
            f"{path.name} contains no tensors", expected="a state dict of tensors", got="an empty mapping"
        )
    choice = choose_compat(raw, meta, compat)
    if choice.mode not in adapter.compat_modes and choice.reason != "requested":
        # an architecture with one semantics (a user's adapter): nothing to choose, nothing to announce
        choice = CompatChoice(adapter.compat_modes[0], f"the only mode the {arch} adapter has")
    base = dict(meta.get("config", {})) if meta.get("arch") == arch else {}
    inferred = adapter.infer_config(sd)
    config = resolve_config(arch, preset)
    config.update({k: v for k, v in base.items() if k in config})
    config.update(inferred)
    config.update(overrides)
    config["compat"] = choice.mode
    model = adapter.build(resolve_config(arch, preset, **config))

    own = model.state_dict()
    matched: list[str] = []
    mismatch: list[str] = []
    for key, value in sd.items():
        if key in own:
            (matched if tuple(own[key].shape) == tuple(value.shape) else mismatch).append(key)
    ignored = sorted(k for k in sd if k not in own and adapter.is_known_extra_key(k))
    unexpected = sorted(k for k in sd if k not in own and not adapter.is_known_extra_key(k))
    missing = sorted(k for k in own if k not in sd)
    missing_backbone = [k for k in missing if adapter.is_backbone_key(k)]
    backbone_matched = [k for k in matched if adapter.is_backbone_key(k)]
    if mismatch:
        k = mismatch[0]
        raise CheckpointError(
            f"{len(mismatch)} tensor(s) of {path.name} do not fit a {arch} built from its keys",
            expected=f"{k} of shape {tuple(own[k].shape)}",
            got=f"shape {tuple(sd[k].shape)}",
            fix="the checkpoint may be for another configuration; pass the right --arch or options",
        )
    if not backbone_matched:
        raise CheckpointError(
            f"no backbone weight of {path.name} matches {arch}",
            expected=f"keys like {next((k for k in own if adapter.is_backbone_key(k)), '?')}",
            got=f"keys like {unexpected[:3]}",
            fix="the checkpoint is probably for another architecture or has an unusual prefix; "
            "check --arch",
        )
    if missing_backbone and not allow_partial:
        raise CheckpointError(
            f"{len(missing_backbone)} backbone weight(s) are missing from {path.name}",
            expected="every encoder weight of the model",
            got=f"missing {missing_backbone[:4]}{' ...' if len(missing_backbone) > 4 else ''}",
            fix="use a complete checkpoint, the right --arch/depths, or allow_partial=True to keep "
            "those weights random",
        )
    if unexpected and not allow_partial:
        raise CheckpointError(
            f"{len(unexpected)} weight(s) of {path.name} have no place in the {arch} built from its keys",
            expected="only keys of the model (and known self-supervised heads)",
            got=f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}",
            fix="the checkpoint may be of another layout or architecture; check --arch, or pass "
            "--allow-partial (allow_partial=True) to load the rest and ignore them",
        )
    model.load_state_dict({k: sd[k] for k in matched}, strict=False)
    model.eval()
    report = LoadReport(
        path=str(path), sha256=sha256_of(path), arch=arch, format=fmt, config=dict(cast(Mapping[str, Any], model.attnprobe_config)),
        matched=tuple(sorted(matched)), missing=tuple(missing), unexpected=tuple(unexpected),
        missing_backbone=tuple(missing_backbone), shape_mismatch=tuple(mismatch),
        metadata={k: v for k, v in meta.items() if k != "config"}, ignored=tuple(ignored),
        compat=choice.mode, compat_reason=choice.reason, notice=choice.notice,
    )
    if choice.notice:
        warnings.warn(f"{path.name}: {choice.notice}", CompatNotice, stacklevel=2)
    model.attnprobe_checkpoint = report  # type: ignore[assignment]  # a plain attribute on the module
    return model, report


def save_checkpoint(model: nn.Module, path: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Save a model built by attnprobe with its architecture and config (tensors only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"arch": model.attnprobe_arch, "config": _plain(model.attnprobe_config), **_plain(extra or {})}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": model.state_dict(), META_KEY: meta}, tmp)
    tmp.replace(path)  # atomic: a crash never leaves a truncated checkpoint under the final name
    return path


def _plain(obj: Any) -> Any:
    """Config values as weights_only-loadable builtins (tuples -> lists)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [_plain(v) for v in obj]
    return obj
