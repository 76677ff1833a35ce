"""Padding sweep: how attention dilution grows as more of the input is padding (docs/definitions.md).

For each case and each amount ``p`` (voxels along one axis) an input is built from the
prepared case and run through the model with an online
:class:`~attnprobe.metrics.reducers.FlowReducer`, so no attention map is stored.

Swept inputs (:func:`swept_input`), along ``axis`` with ``S`` the case's size there:

- ``mode="fixed-roi"`` (the paper's setting): the input keeps the case's shape (the model
  ROI). Its real content is the case's real voxels cropped to an extent of ``S - p`` along
  ``axis`` — the crop centred on the label's bounding box if the case has a labelled voxel,
  else on the real voxels' box, and kept inside them — and zeros with mask False fill the
  rest: after the content for ``pad_mode="end"``, split before/after (extra voxel after) for
  ``"symmetric"``. Padding the case already had on that axis (a volume shorter than the
  ROI) is cropped away first, so it never sits in the middle; if the real extent is shorter
  than ``S - p`` the input simply holds more padding than ``p``.
- ``mode="grow"``: the case is kept whole and ``p`` zero voxels (mask False) are added along
  ``axis``, at the end or split; ``S + p`` must be a multiple of the model's input multiple
  (32).

``pad_fraction`` of an input is the share of its voxels whose mask is False (padding from
preprocessing included), exact. On the other axes the case is used as prepared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from numbers import Integral
from typing import Literal, get_args

import pandas as pd
import torch
from torch import nn

from attnprobe.capture.probe import Probe
from attnprobe.data.preprocess import PadMode
from attnprobe.errors import ConfigError, ShapeError, check_option
from attnprobe.metrics.aggregate import model_means, stage_means, sweep_summary
from attnprobe.metrics.flow import PAD_QUERY_MODES, HeadMode, PadQueries
from attnprobe.metrics.reducers import FlowReducer, FlowTag
from attnprobe.models.adapter import Adapter
from attnprobe.models.registry import adapter_for
from attnprobe.store.record import CaseLike

__all__ = [
    "SweepAxis",
    "SweepMode",
    "PadMode",
    "SweepSpec",
    "SweptInput",
    "SweepTables",
    "swept_input",
    "padding_sweep",
    "prepared_flow",
    "sweep_tables",
]

SweepAxis = Literal["x", "y", "z"]
SweepMode = Literal["fixed-roi", "grow"]
_AXES: tuple[SweepAxis, ...] = ("x", "y", "z")
_MODES: tuple[SweepMode, ...] = ("fixed-roi", "grow")
_PAD_MODES: tuple[PadMode, ...] = get_args(PadMode)


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """How a padding sweep builds its inputs.

    Parameters
    ----------
    paddings
        Amounts p in voxels, non-negative, distinct, in the order to run.
    axis
        Spatial axis the padding goes along (``z``: axial, the default).
    pad_mode
        ``"end"``: padding after the content; ``"symmetric"``: split, the extra voxel after.
    mode
        ``"fixed-roi"``: the input keeps the ROI and the content shrinks by p; ``"grow"``: the
        content is kept and the input grows by p.
    multiple
        Every input size must be a multiple of this (32 for Swin UNETR and SMIT).
    """

    paddings: tuple[int, ...] = (0, 16, 32, 48)
    axis: SweepAxis = "z"
    pad_mode: PadMode = "end"
    mode: SweepMode = "fixed-roi"
    multiple: int = 32

    def __post_init__(self) -> None:
        check_option("axis", self.axis, _AXES)
        check_option("pad mode", self.pad_mode, _PAD_MODES)
        check_option("sweep mode", self.mode, _MODES)
        values = tuple(self.paddings)
        if not values or any(not isinstance(p, Integral) or isinstance(p, bool) or p < 0 for p in values):
            raise ConfigError("bad padding sweep", expected="one or more non-negative integers (voxels)",
                              got=repr(self.paddings), fix="e.g. --padding-sweep 0,16,32,48")
        if len(set(values)) != len(values):  # duplicates would double-count cases in the summary
            raise ConfigError("padding sweep has repeated amounts", expected="distinct amounts",
                              got=repr(values))
        object.__setattr__(self, "paddings", tuple(int(p) for p in values))

    @property
    def axis_index(self) -> int:
        """Index of :attr:`axis` among the spatial dims ``(x, y, z)``."""
        return _AXES.index(self.axis)

    def check_shape(self, shape: Sequence[int]) -> None:
        """Raise before any forward if some amount cannot be applied to a case of ``shape``.

        Raises
        ------
        ShapeError
            ``fixed-roi``: p not smaller than the ROI on the axis; ``grow``: the grown size is
            not a multiple of :attr:`multiple`.
        """
        size = int(shape[self.axis_index])
        if self.mode == "fixed-roi":
            bad = [p for p in self.paddings if p >= size]
            if bad:
                raise ShapeError(
                    f"padding {bad[0]} leaves no content on axis {self.axis}",
                    expected=f"amounts smaller than the ROI's {self.axis} size {size}",
                    got=f"--padding-sweep {','.join(map(str, self.paddings))}",
                    fix=f"use amounts below {size}, or --sweep-mode grow",
                )
        else:
            bad = [p for p in self.paddings if (size + p) % self.multiple]
            if bad:
                good = sorted({(k * self.multiple - size) for k in range(1, 5) if k * self.multiple >= size})
                raise ShapeError(
                    f"--sweep-mode grow: {size} + {bad[0]} = {size + bad[0]} voxels on axis {self.axis} "
                    f"is not divisible by {self.multiple}",
                    expected=f"every grown size a multiple of {self.multiple}",
                    got=f"amounts {bad}",
                    fix=f"use amounts such as {','.join(map(str, good))} (or --sweep-mode fixed-roi)",
                )


@dataclass(frozen=True, eq=False)
class SweptInput:
    """One model input of a sweep.

    Attributes
    ----------
    case_id, padding
        Case and amount p it was built for.
    image : (1, x, y, z) float32
        Content with zeros on padding.
    mask : (1, x, y, z) bool
        True on real voxels.
    pad_fraction
        Share of voxels that are padding (mask False).
    label : (1, x, y, z) uint8 or None
        The case's label cropped and placed exactly like the image (0 on padding); ``None``
        when the case has no label.
    """

    case_id: str
    padding: int
    image: torch.Tensor
    mask: torch.Tensor
    pad_fraction: float
    label: torch.Tensor | None = None


def _pad_fraction(mask: torch.Tensor) -> float:
    """Share of the voxels of a bool mask that are padding (False)."""
    return (mask.numel() - int(mask.sum())) / mask.numel()  # padding count first: exact ratio


def _span(mask_1d: torch.Tensor) -> tuple[int, int] | None:
    idx = torch.nonzero(mask_1d).flatten()
    return (int(idx[0]), int(idx[-1]) + 1) if idx.numel() else None


def _content_window(case: CaseLike, axis: int, length: int) -> tuple[int, int]:
    """Half-open range of ``length`` voxels (or fewer) on ``axis`` inside the real voxels,
    centred on the label box when there is one, else on the real box."""
    others = tuple(d for d in range(3) if d != axis)
    real = _span(case.mask[0].any(dim=others))
    if real is None:
        # A case with no real voxel: nothing to centre on, take the middle.
        size = case.mask.shape[axis + 1]
        lo = max(0, (size - length) // 2)
        return lo, min(size, lo + length)
    lo_real, hi_real = real
    length = min(length, hi_real - lo_real)
    label = getattr(case, "label", None)
    box = _span((label[0] > 0).any(dim=others)) if label is not None else None
    centre = (box[0] + box[1]) / 2.0 if box is not None else (lo_real + hi_real) / 2.0
    lo = int(math.floor(centre - length / 2.0))
    lo = min(max(lo, lo_real), hi_real - length)  # stay inside the real voxels
    return lo, lo + length


def _place(t: torch.Tensor, axis: int, size: int, pad_mode: PadMode) -> torch.Tensor:
    """Zero-pad ``t`` (1, x, y, z) along spatial ``axis`` to ``size`` at the end or split."""
    total = size - t.shape[axis + 1]
    before = total // 2 if pad_mode == "symmetric" else 0
    pads = [0, 0] * 3
    # F.pad order is last dim first: (z_lo, z_hi, y_lo, y_hi, x_lo, x_hi)
    slot = 2 * (2 - axis)
    pads[slot], pads[slot + 1] = before, total - before
    if t.dtype == torch.bool:
        return torch.nn.functional.pad(t.to(torch.uint8), pads).bool()
    return torch.nn.functional.pad(t, pads)


def swept_input(case: CaseLike, padding: int, spec: SweepSpec) -> SweptInput:
    """Build the input of one sweep step (module docstring has the rules).

    Parameters
    ----------
    case
        Prepared case with ``image``/``mask`` ``(1, x, y, z)`` (and optionally ``label``).
    padding
        Amount p in voxels.
    spec
        Axis, pad mode and sweep mode.

    Returns
    -------
    SweptInput
        Image, mask, exact padding fraction, and the label swept the same way when the case
        has one.
    """
    image, mask = case.image, case.mask
    if image.ndim != 4 or tuple(mask.shape) != tuple(image.shape) or image.shape[0] != 1:
        raise ShapeError("a prepared case needs image and mask of one shape (1, x, y, z)",
                         got=f"image {tuple(image.shape)}, mask {tuple(mask.shape)}",
                         fix="prepare cases with attnprobe.data.preprocess.prepare_case")
    replace(spec, paddings=(int(padding),)).check_shape(image.shape[1:])
    axis = spec.axis_index
    size = int(image.shape[axis + 1])
    mask = mask.bool()
    label = getattr(case, "label", None)
    if label is not None and tuple(label.shape) != tuple(mask.shape):
        raise ShapeError("the case's label is not on its image grid", expected=str(tuple(mask.shape)),
                         got=str(tuple(label.shape)), fix="prepare cases with attnprobe.data.preprocess.prepare_case")
    if spec.mode == "fixed-roi":
        lo, hi = _content_window(case, axis, size - padding)
        image = image.narrow(axis + 1, lo, hi - lo)
        mask = mask.narrow(axis + 1, lo, hi - lo)
        label = label.narrow(axis + 1, lo, hi - lo) if label is not None else None
        target = size
    else:
        target = size + padding
    image = _place(image.to(torch.float32), axis, target, spec.pad_mode)
    mask = _place(mask, axis, target, spec.pad_mode)
    image = image * mask  # padding reads 0, even where the case had non-zero padding
    if label is not None:
        # the same crop and placement as the image, so that predictions and labels stay aligned
        label = (_place(label.to(torch.uint8), axis, target, spec.pad_mode) * mask).contiguous()
    return SweptInput(str(case.case_id), int(padding), image.contiguous(), mask.contiguous(), _pad_fraction(mask),
                      label)


def _online_flow(
    model: nn.Module,
    inputs: Iterable[tuple[torch.Tensor, torch.Tensor, FlowTag]],
    *,
    heads: HeadMode,
    pad_queries: PadQueries,
    device: str | torch.device,
    adapter: Adapter | None = None,
    on_step: Callable[[str, int], None] | None = None,
) -> pd.DataFrame:
    """Run ``(image, mask, tag)`` inputs (``(1, x, y, z)`` each, one case per forward) through the
    model with an online :class:`FlowReducer`; the block-level tidy frame.

    ``inputs`` is consumed inside the probe and ``no_grad``, one input per forward; ``on_step``
    gets ``(case id, padding)`` of the tag after each forward.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    reducer = FlowReducer(heads=heads, pad_queries=pad_queries)
    with torch.no_grad(), Probe(model, ["*.attn"], sinks=[reducer], keep=False, adapter=adapter) as probe:
        for image, mask, tag in inputs:
            probe.run(image[None].to(device=device, dtype=torch.float32), mask=mask[None].to(device), tag=tag)
            if on_step is not None:
                on_step(tag.cases[0], tag.padding)  # type: ignore[arg-type]
    return reducer.frame()


def padding_sweep(
    model: nn.Module,
    cases: Iterable[CaseLike],
    spec: SweepSpec | None = None,
    *,
    heads: HeadMode = "mean",
    pad_queries: PadQueries = "all-windows",
    device: str | torch.device = "cpu",
    on_step: Callable[[str, int], None] | None = None,
) -> pd.DataFrame:
    """Run a padding sweep with online reduction; return the block-level tidy frame.

    Parameters
    ----------
    model
        A model of a registered architecture (Swin UNETR, SMIT).
    cases
        Prepared cases, all at the model ROI for ``fixed-roi``; consumed lazily.
    spec
        Amounts, axis, pad mode and sweep mode (default ``SweepSpec()``: 0,16,32,48 on z,
        end, fixed-roi).
    heads
        ``"mean"`` or ``"per-head"``.
    pad_queries
        ``"all-windows"`` (default, the paper's) or ``"real-windows"``: which padding queries
        ``a_pr``/``a_pp`` average over (``docs/conventions.md``).
    device
        Where the model and the reduction run.
    on_step
        Called with ``(case id, p)`` after each forward (progress bars).

    Returns
    -------
    pandas.DataFrame
        Columns ``case, padding, pad_fraction, stage, block, [head], kind, metric, value,
        n_real_queries, n_pad_queries``; one forward per (case, p), one sample each.
    """
    spec = spec or SweepSpec()
    check_option("pad_queries", pad_queries, PAD_QUERY_MODES)  # before any forward
    adapter = adapter_for(model)
    if spec.multiple != adapter.input_multiple:
        spec = replace(spec, multiple=adapter.input_multiple)

    def inputs(sweep: SweepSpec) -> Iterator[tuple[torch.Tensor, torch.Tensor, FlowTag]]:
        for case in cases:
            # Fail on the whole sweep of a case before its first forward.
            sweep.check_shape(case.image.shape[1:])
            for p in sweep.paddings:
                item = swept_input(case, p, sweep)
                yield item.image, item.mask, FlowTag(cases=(item.case_id,), padding=p, pad_fraction=item.pad_fraction)

    return _online_flow(model, inputs(spec), heads=heads, pad_queries=pad_queries, device=device, adapter=adapter,
                        on_step=on_step)


def prepared_flow(
    model: nn.Module,
    cases: Iterable[CaseLike],
    *,
    heads: HeadMode = "mean",
    pad_queries: PadQueries = "all-windows",
    device: str | torch.device = "cpu",
    on_step: Callable[[str, int], None] | None = None,
) -> pd.DataFrame:
    """Attention flow of prepared cases as they are (no sweep), with online reduction.

    The rows have ``padding`` 0 and the case's own ``pad_fraction``; they equal what
    :func:`attnprobe.metrics.offline.store_flow` gives on a capture of the same cases.
    Parameters and return value as in :func:`padding_sweep`.
    """
    def inputs() -> Iterator[tuple[torch.Tensor, torch.Tensor, FlowTag]]:
        for case in cases:
            mask = case.mask.bool()
            yield case.image, mask, FlowTag(cases=(str(case.case_id),), padding=0, pad_fraction=_pad_fraction(mask))

    check_option("pad_queries", pad_queries, PAD_QUERY_MODES)
    return _online_flow(model, inputs(), heads=heads, pad_queries=pad_queries, device=device, on_step=on_step)


@dataclass(frozen=True, eq=False)
class SweepTables:
    """The levels of a sweep's results.

    Attributes
    ----------
    blocks
        Block-level tidy frame (one row per case, padding, stage, block, kind, metric).
    stages
        Per case, mean over the blocks of each stage.
    models
        Per case, mean over stages (``weighting="stages"``).
    summary
        Stage level over cases: ``mean``, ``std``, ``n`` per (padding, stage, kind, metric).
    """

    blocks: pd.DataFrame
    stages: pd.DataFrame
    models: pd.DataFrame
    summary: pd.DataFrame


def sweep_tables(frame: pd.DataFrame) -> SweepTables:
    """Aggregate a block-level sweep frame: blocks -> stages -> model, and the sweep summary."""
    stages = stage_means(frame)
    return SweepTables(blocks=frame, stages=stages, models=model_means(stages), summary=sweep_summary(stages))
