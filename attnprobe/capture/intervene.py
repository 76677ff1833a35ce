"""Intervene: a context manager that applies edits to a model's forward with hooks that cannot leak.

>>> iv = Intervention(name="mask-stage1", edits=(MaskKeys(blocks="stage1.*", kind="all"),))
>>> with torch.no_grad(), Intervene(model, iv) as edit:
...     logits = edit.run(image, mask=real_mask)

The sibling of :class:`~attnprobe.capture.probe.Probe`, with the same guarantees: every hook
is removed in ``finally`` (also when the forward raises), MONAI's flash-attention path is
switched off while active (the softmax must run for a key mask to apply) and restored on exit,
and every edited site must fire exactly once per forward.

Composition with a probe (``docs/ablation.md``): pass it to :meth:`Intervene.run`; both are
active for the same forward and the probe reads the *edited* values -- the attention tap is
the softmax's output, computed from the masked logits, and the edit of a block output is
registered ahead of every other forward hook of that block, so a probe's ``out`` tap sees the
replaced tokens whichever context was entered first. An online
:class:`~attnprobe.metrics.reducers.FlowReducer` in that probe thus measures the ADI of the
edited forward.

With an empty intervention (or edits that select no token) the output is bit-identical to
the plain forward on the explicit-softmax path.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable
from typing import cast

import torch
from torch import nn

from attnprobe.capture.edits import (
    Edit,
    Intervention,
    MaskKeys,
    ReplaceTokens,
    key_mask,
    mask_logits,
    replace_tokens,
)
from attnprobe.capture.geometry import check_input_shape, grid_token_kinds, token_kinds
from attnprobe.capture.lifecycle import force_explicit_softmax, release
from attnprobe.capture.probe import Probe
from attnprobe.errors import TapError
from attnprobe.models.adapter import Adapter, BlockGeometry, BlockRef, as_triple
from attnprobe.models.registry import adapter_for
from attnprobe.tokens import REAL

__all__ = ["Intervene"]


def _resolve(blocks: list[BlockRef], edits: Iterable[Edit]) -> None:
    """Raise when an edit's glob matches no block, with the nearest names."""
    names = [b.name for b in blocks]
    for edit in edits:
        if not fnmatch.filter(names, edit.blocks):
            near = difflib.get_close_matches(edit.blocks, names, n=3, cutoff=0.4)
            raise TapError(f"edit block glob {edit.blocks!r} matches no block",
                           expected=f"a glob over names like {names[0]!r} … {names[-1]!r}",
                           got=repr(edit.blocks),
                           fix=f"did you mean {', '.join(near)}?" if near else "use e.g. 'stage0.*' or '*'")


class Intervene:
    """Apply an :class:`~attnprobe.capture.edits.Intervention` for the duration of a ``with`` block.

    Parameters
    ----------
    model
        A model of a registered architecture.
    intervention
        The edits (an :class:`Intervention`, or an iterable of edits for an unnamed one).
    measure_moved
        Also record, per masked block, the attention mass the unedited softmax of *this*
        forward put on the masked keys (mean over real queries, heads averaged): what the
        mask moved onto the remaining keys. One extra softmax per masked block.
    adapter
        The architecture's adapter (default: the registered one).

    Attributes
    ----------
    moved
        Block name -> ``(sample,)`` float tensor on the CPU, for the last forward (with
        ``measure_moved``); NaN for a sample without a real query in the block.
    """

    def __init__(self, model: nn.Module, intervention: Intervention | Iterable[Edit], *, measure_moved: bool = False,
                 adapter: Adapter | None = None) -> None:
        if not isinstance(intervention, Intervention):
            intervention = Intervention(name="edits", edits=tuple(intervention))
        self.model = model
        self.intervention = intervention
        self.adapter = adapter or adapter_for(model)
        self.measure_moved = measure_moved
        self._blocks = self.adapter.blocks(model)
        _resolve(self._blocks, intervention.edits)
        self._sites = [(ref, site, intervention.edits_for(ref.name, site))
                       for ref in self._blocks for site in ("attn", "out")]
        self._sites = [s for s in self._sites if s[2]]
        self.moved: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._flash_saved: list[tuple[nn.Module, bool]] = []
        self._pending_mask: torch.Tensor | None = None
        self._state: dict | None = None

    # ---- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> Intervene:
        try:
            force_explicit_softmax(self.adapter.attention_modules(self.model), self._flash_saved)
            self._handles.append(self.model.register_forward_pre_hook(self._begin))
            for ref, site, edits in self._sites:
                if site == "attn":
                    module = self.model.get_submodule(ref.softmax_path)
                    self._handles.append(module.register_forward_pre_hook(self._attn_hook(ref, edits)))
                else:
                    module = self.model.get_submodule(ref.block_path)
                    # prepend: a probe's out tap on the same block reads the edited tokens
                    self._handles.append(module.register_forward_hook(self._out_hook(ref, edits), prepend=True))
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
            self._state = None

    # ---- running --------------------------------------------------------------------
    def run(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, probe: Probe | None = None,
            tag: object = None) -> torch.Tensor:
        """Forward ``x`` with the edits; ``mask`` (real voxels) decides which tokens are padding.

        Parameters
        ----------
        x : (sample, channel, x, y, z)
            Model input.
        mask : (sample, 1, x, y, z) bool, optional
            Real voxels; ``None``: every voxel is real (only window padding exists).
        probe
            An active :class:`Probe` on the same model: it runs the forward (with ``mask`` and
            ``tag``) and reads the edited values.
        tag
            Passed to the probe's ``run``.
        """
        if not self._handles:
            raise TapError("the intervention is not active", fix="call run() inside `with Intervene(...) as edit:`")
        if probe is not None and probe.model is not self.model:
            raise TapError("the probe hooks another model", expected="Probe(model) and Intervene(model) on one model",
                           got=f"{type(probe.model).__name__} vs {type(self.model).__name__}")
        self._pending_mask = mask
        try:
            return probe.run(x, mask=mask, tag=tag) if probe is not None else self.model(x)
        finally:
            self._pending_mask = None

    def _begin(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        spatial = as_triple(x.shape[2:], "input size")
        check_input_shape(self.adapter, spatial)
        batch = int(x.shape[0])
        mask = self._pending_mask
        if mask is None:
            mask = torch.ones((batch, 1, *spatial), dtype=torch.bool, device=x.device)
        elif tuple(mask.shape[-3:]) != spatial or mask.shape[0] != batch:
            raise TapError("mask does not match the input", expected=f"(sample={batch}, 1, {spatial})",
                           got=str(tuple(mask.shape)), fix="pass the real-voxel mask of the same batch")
        mask = mask.to(x.device)
        state: dict = {"batch": batch, "fired": {(ref.name, site): 0 for ref, site, _ in self._sites}}
        sites = {site for _, site, _ in self._sites}
        if "attn" in sites:
            state["geometry"], state["kinds"] = token_kinds(self.model, mask, adapter=self.adapter)
        if "out" in sites:
            state["grid"] = grid_token_kinds(self.model, mask, adapter=self.adapter)
            state["geometry"] = state.get("geometry") or {g.name: g for g in self.adapter.geometry(self.model, spatial)}
        self.moved = {}
        self._state = state

    def _fire(self, ref: BlockRef, site: str, module_path: str) -> dict | None:
        state = self._state
        if state is None:
            return None  # outside run bookkeeping, e.g. activation checkpointing re-running a block
        key = (ref.name, site)
        state["fired"][key] += 1
        if state["fired"][key] > 1:
            raise TapError(f"edited site {ref.name}.{site} fired twice in one forward",
                           expected="each block to run once per forward", got=f"2 calls of {module_path}",
                           fix="the model calls this block more than once; edits cannot tell the calls apart")
        return state

    def _attn_hook(self, ref: BlockRef, edits: list[Edit]):
        def hook(module: nn.Module, args: tuple):
            state = self._fire(ref, "attn", ref.softmax_path)
            if state is None:
                return None
            logits = args[0]
            geom: BlockGeometry = state["geometry"][ref.name]
            expected = (state["batch"] * geom.n_windows, geom.heads, geom.n_tokens, geom.n_tokens)
            if tuple(logits.shape) != expected:
                raise TapError(f"logits of {ref.name} do not have the geometry attnprobe computed",
                               expected=str(expected), got=str(tuple(logits.shape)),
                               fix="the adapter's window geometry disagrees with the model; please report this")
            kinds = state["kinds"][ref.name].to(logits.device)
            masked = torch.zeros_like(kinds, dtype=torch.bool)
            for edit in cast("tuple[MaskKeys, ...]", edits):  # edits_for(name, "attn") holds MaskKeys only
                masked |= key_mask(kinds, edit.kind)
            # the union of several masks may cover a whole window: keep such windows unmasked
            masked &= ~masked.all(dim=-1, keepdim=True)
            if self.measure_moved:
                self.moved[ref.name] = _moved_mass(logits, masked, kinds)
            return (mask_logits(logits, masked), *args[1:])

        return hook

    def _out_hook(self, ref: BlockRef, edits: list[Edit]):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor):
            state = self._fire(ref, "out", ref.block_path)
            if state is None:
                return None
            geom: BlockGeometry = state["geometry"][ref.name]
            grid = state["grid"][ref.stage]
            expected = (state["batch"], *geom.grid, geom.channels)
            if tuple(output.shape) != expected or self.adapter.out_to_channel_last(output, geom) is not output:
                raise TapError(f"output of {ref.name} is not channel-last on the stage grid",
                               expected=str(expected), got=str(tuple(output.shape)),
                               fix="token edits need an adapter whose blocks return (sample, x, y, z, channel)")
            for edit in cast("tuple[ReplaceTokens, ...]", edits):  # edits_for(name, "out"): ReplaceTokens only
                source = edit.source_for(ref.name) if edit.value == "patch" else None
                output = replace_tokens(output, grid, kind=edit.kind, value=edit.value, source=source)
            return output

        return hook

    def _end(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        state, self._state = self._state, None
        if state is None:
            return
        silent = [f"{name}.{site}" for (name, site), n in state["fired"].items() if n == 0]
        if silent:
            raise TapError(f"{len(silent)} edited site(s) never ran, e.g. {silent[0]}",
                           expected="every edited site to run once per forward", got=f"no call for {silent[:4]}",
                           fix="the model may take a path without an explicit softmax (flash attention); "
                           "build it with attnprobe or disable that path")


def _moved_mass(logits: torch.Tensor, masked: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """Mean over real queries of the (head-averaged) probability the unedited softmax puts on masked keys."""
    b, w, n = kinds.shape
    probs = torch.softmax(logits.float(), dim=-1).mean(dim=1).view(b, w, n, n)
    mass = (probs * masked[:, :, None, :]).sum(-1)  # (sample, window, query)
    real = kinds == REAL
    count = real.sum(dim=(1, 2))
    total = (mass * real).sum(dim=(1, 2))
    return torch.where(count > 0, total / count.clamp(min=1), torch.nan).cpu()
