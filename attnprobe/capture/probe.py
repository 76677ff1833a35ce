"""The probe: a context manager over forward hooks that can never leak.

>>> with Probe(model, taps=["stage0.*"]) as probe:
...     logits = probe.run(image, mask=real_mask)
...     probe.cache["stage0.block0.attn"].shape     # (sample, window, head, query, key)

While active it switches every attention module to the explicit-softmax path (MONAI 1.6's
``use_flash_attention`` never runs the softmax) and restores it on exit; it raises when a
requested tap did not fire, or fired twice, in one forward. Hooks are removed in
``finally`` even when the forward raises. Hooks only read: the output is bit-identical
to the unhooked model on the same path.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from attnprobe.capture.geometry import check_input_shape, token_kinds
from attnprobe.capture.lifecycle import force_explicit_softmax, release
from attnprobe.errors import TapError
from attnprobe.models.adapter import Adapter, BlockGeometry, TapSpec, as_triple
from attnprobe.models.registry import adapter_for


@dataclass
class ForwardContext:
    """What sinks know about the forward in flight."""

    spatial_shape: tuple[int, int, int]
    batch: int
    geometry: dict[str, BlockGeometry]
    kinds: dict[str, torch.Tensor]
    fired: dict[str, int] = field(default_factory=dict)
    tag: object = None


class TapSink(Protocol):
    """Receives tap values as they are produced (e.g. a store writer, an online reducer)."""

    def on_tap(self, tap: TapSpec, value: torch.Tensor, ctx: ForwardContext) -> None: ...

    def on_forward_end(self, ctx: ForwardContext) -> None: ...


def resolve_taps(all_taps: Sequence[TapSpec], patterns: Iterable[str]) -> list[TapSpec]:
    """Taps whose canonical names match any glob pattern, in model order."""
    patterns = list(patterns)
    names = [t.name for t in all_taps]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            near = difflib.get_close_matches(pattern, names, n=3, cutoff=0.4)
            raise TapError(
                f"tap pattern {pattern!r} matches no tap",
                expected=f"a glob over names like {names[0]!r} … {names[-1]!r}",
                got=repr(pattern),
                fix=f"did you mean {', '.join(near)}?" if near else "use e.g. 'stage0.*' or '*.attn'",
            )
    return [t for t in all_taps if any(fnmatch.fnmatchcase(t.name, p) for p in patterns)]


class Probe:
    """Hook the requested taps of a model for the duration of a ``with`` block.

    Parameters
    ----------
    model
        A model of a registered architecture (see :func:`attnprobe.models.build_model`).
    taps
        Glob patterns over canonical tap names (``stage{s}.block{b}.attn`` / ``.out``).
    sinks
        Objects with ``on_tap`` / ``on_forward_end`` receiving values as they come.
    keep
        Keep the last forward's values in :attr:`cache` (turn off for streaming sinks).

    Attributes
    ----------
    cache
        Tap name -> detached tensor of the last forward; ``attn`` as
        ``(sample, window, head, query, key)``, ``out`` as ``(sample, x, y, z, channel)``.
    context
        The :class:`ForwardContext` of the last forward (geometry and token kinds).
    """

    def __init__(self, model: nn.Module, taps: Iterable[str] = ("*",), *, sinks: Sequence[TapSink] = (),
                 keep: bool = True, adapter: Adapter | None = None) -> None:
        self.model = model
        self.adapter = adapter or adapter_for(model)
        self.taps = resolve_taps(self.adapter.taps(model), taps)
        self.sinks = list(sinks)
        self.keep = keep
        self.cache: dict[str, torch.Tensor] = {}
        self.context: ForwardContext | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._flash_saved: list[tuple[nn.Module, bool]] = []
        self._pending_mask: torch.Tensor | None = None
        self._pending_tag: object = None
        self._active = False
        self._geo_cache: dict[tuple, tuple[dict, dict]] = {}

    # ---- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> Probe:
        try:
            force_explicit_softmax(self.adapter.attention_modules(self.model), self._flash_saved)
            self._handles.append(self.model.register_forward_pre_hook(self._begin))
            for tap in self.taps:
                module = self.model.get_submodule(tap.module_path)
                self._handles.append(module.register_forward_hook(self._make_hook(tap)))
            self._handles.append(self.model.register_forward_hook(self._end))
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._teardown()

    def _teardown(self) -> None:
        try:
            release(self._handles, self._flash_saved)
        finally:
            self._active = False

    # ---- running --------------------------------------------------------------------
    def run(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, tag: object = None) -> torch.Tensor:
        """Forward ``x`` through the model with ``mask`` (real voxels) known to the taps."""
        if not self._handles:
            raise TapError("the probe is not active", fix="call run() inside `with Probe(...) as probe:`")
        self._pending_mask, self._pending_tag = mask, tag
        try:
            return self.model(x)
        finally:
            self._pending_mask, self._pending_tag = None, None

    def _geometry(self, spatial: tuple[int, int, int], mask: torch.Tensor | None, batch: int,
                  device: torch.device) -> tuple[dict, dict]:
        if mask is None:
            key = (spatial, batch, str(device))
            if key not in self._geo_cache:
                full = torch.ones((batch, 1, *spatial), dtype=torch.bool, device=device)
                self._geo_cache[key] = token_kinds(self.model, full, adapter=self.adapter)
            return self._geo_cache[key]
        if tuple(mask.shape[-3:]) != spatial or mask.shape[0] != batch:
            raise TapError(
                "mask does not match the input", expected=f"(sample={batch}, 1, {spatial})",
                got=str(tuple(mask.shape)), fix="pass the real-voxel mask of the same batch",
            )
        return token_kinds(self.model, mask.to(device), adapter=self.adapter)

    def _begin(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        spatial = as_triple(x.shape[2:], "input size")
        check_input_shape(self.adapter, spatial)
        geometry, kinds = self._geometry(spatial, self._pending_mask, int(x.shape[0]), x.device)
        self.context = ForwardContext(spatial, int(x.shape[0]), geometry, kinds,
                                      {t.name: 0 for t in self.taps}, self._pending_tag)
        if self.keep:
            self.cache = {}
        self._active = True

    def _make_hook(self, tap: TapSpec):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            ctx = self.context
            if not self._active or ctx is None:
                return  # e.g. activation checkpointing re-running a block during backward
            ctx.fired[tap.name] += 1
            if ctx.fired[tap.name] > 1:
                raise TapError(
                    f"tap {tap.name} fired twice in one forward",
                    expected="each block to run once per forward",
                    got=f"{ctx.fired[tap.name]} calls of {tap.module_path}",
                    fix="the model calls this block more than once; capture cannot tell the calls apart",
                )
            geom = ctx.geometry[tap.block.name]
            value = output.detach()
            if tap.kind == "attn":
                expected = (ctx.batch * geom.n_windows, geom.heads, geom.n_tokens, geom.n_tokens)
                if tuple(value.shape) != expected:
                    raise TapError(
                        f"attention of {tap.name} does not have the geometry attnprobe computed",
                        expected=str(expected), got=str(tuple(value.shape)),
                        fix="the adapter's window geometry disagrees with the model; please report this",
                    )
                value = value.view(ctx.batch, geom.n_windows, geom.heads, geom.n_tokens, geom.n_tokens)
            else:
                value = self.adapter.out_to_channel_last(value, geom)
            if self.keep:
                self.cache[tap.name] = value
            for sink in self.sinks:
                sink.on_tap(tap, value, ctx)

        return hook

    def _end(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        ctx = self.context
        self._active = False
        if ctx is None:
            return
        silent = [name for name, n in ctx.fired.items() if n == 0]
        if silent:
            raise TapError(
                f"{len(silent)} requested tap(s) never fired, e.g. {silent[0]}",
                expected="every requested tap to run once per forward",
                got=f"no call for {silent[:4]}",
                fix="the model may take a path without an explicit softmax (flash attention or a "
                "non-attention block); build it with attnprobe or disable that path",
            )
        for sink in self.sinks:
            sink.on_forward_end(ctx)
