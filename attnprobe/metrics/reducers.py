"""Online reducers: tap sinks that turn attention maps into attention-flow metrics in the hook.

A :class:`FlowReducer` sits in a :class:`~attnprobe.capture.probe.Probe` built with
``keep=False``. Each ``attn`` tap value ``(sample, window, head, query, key)`` is reduced on
the model's device, right where the hook sees it, to the sufficient statistics of
:class:`~attnprobe.metrics.flow.FlowAccumulator`; one pass gives the metrics for every padding
kind (``input``, ``window``, ``all``). The map itself is never kept, so a padding sweep costs
about what plain forwards cost in memory: the extra is one float32 head-averaged copy of at
most ``max_chunk_bytes`` worth of windows.

>>> reducer = FlowReducer(heads="mean")
>>> with torch.no_grad(), Probe(model, ["*.attn"], sinks=[reducer], keep=False) as probe:
...     probe.run(image, mask=real, tag=FlowTag(cases=("case0",), padding=16, pad_fraction=0.25))
>>> reducer.frame()           # tidy rows: case, padding, pad_fraction, stage, block, kind, metric, value
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from attnprobe.capture.probe import ForwardContext
from attnprobe.errors import ConfigError, ShapeError
from attnprobe.metrics.aggregate import TIDY_COLUMNS, tidy_columns
from attnprobe.metrics.flow import (
    COUNTS,
    FlowAccumulator,
    FlowResult,
    HeadMode,
    PadQueries,
    accumulators_to,
    check_reduction_options,
)
from attnprobe.models.adapter import TapSpec
from attnprobe.tokens import PADDING_KINDS, PaddingKind

__all__ = ["FlowTag", "BlockFlow", "ForwardFlow", "FlowReducer", "reduce_block", "flows_to_frame", "result_to_cpu"]

DEFAULT_CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class FlowTag:
    """What a forward's rows are labelled with; pass as ``tag=`` to :meth:`Probe.run`.

    Parameters
    ----------
    cases
        Case id of every sample of the batch, in batch order.
    padding
        Sweep amount p (voxels) the batch was made with.
    pad_fraction
        Share of input voxels that are padding: one value for the batch or one per sample.
    """

    cases: tuple[str, ...]
    padding: float = 0
    pad_fraction: float | tuple[float, ...] = math.nan


@dataclass(frozen=True, eq=False)
class BlockFlow:
    """Attention flow of one block of one forward, for every padding kind.

    Attributes
    ----------
    stage, block
        Stage index and block index within the stage.
    results
        Padding kind -> :class:`~attnprobe.metrics.flow.FlowResult` with metrics ``(sample,)``
        (or ``(sample, head)`` per head), on the CPU.
    """

    stage: int
    block: int
    results: dict[str, FlowResult]


@dataclass(frozen=True, eq=False)
class ForwardFlow:
    """Everything one forward produced: its tag and the flow of every hooked block."""

    tag: FlowTag
    blocks: dict[str, BlockFlow]


def _windows_per_chunk(value: torch.Tensor, heads: HeadMode, max_chunk_bytes: int | None) -> int:
    """Windows per chunk so that the float32 work copy of a chunk stays under the budget."""
    batch, n_win, n_head, n_tok, _ = value.shape
    if max_chunk_bytes is None:
        return n_win
    # The accumulator's work copy is float32: head-averaged (1 head) or per head.
    per_window = batch * (1 if heads == "mean" else n_head) * n_tok * n_tok * 4
    return max(1, min(n_win, max_chunk_bytes // max(per_window, 1)))


def reduce_block(
    probs: torch.Tensor,
    kinds: torch.Tensor,
    *,
    heads: HeadMode = "mean",
    padding_kinds: Iterable[PaddingKind] = PADDING_KINDS,
    max_chunk_bytes: int | None = DEFAULT_CHUNK_BYTES,
    trusted_kinds: bool = False,
    pad_queries: PadQueries = "all-windows",
) -> dict[str, FlowResult]:
    """Attention flow of one block for several padding kinds in one pass over its windows.

    Parameters
    ----------
    probs : (sample, window, head, query, key) floating tensor
        Attention probabilities, on any device.
    kinds : (sample, window, token) integer tensor
        Token kinds in the same window order.
    heads
        ``"mean"`` or ``"per-head"`` (see :func:`~attnprobe.metrics.flow.attention_flow`).
    padding_kinds
        Which results to finalise.
    max_chunk_bytes
        Bound on the extra float32 memory; windows are fed to the accumulator in chunks that
        fit. ``None``: all windows at once.
    trusted_kinds
        The kinds come from the probe's geometry: skip re-checking their codes (a device
        sync per chunk inside the hook).
    pad_queries
        ``"all-windows"`` (the paper's) or ``"real-windows"``: which padding queries
        ``a_pr``/``a_pp`` average over (see :func:`~attnprobe.metrics.flow.attention_flow`).

    Returns
    -------
    dict
        Padding kind -> :class:`~attnprobe.metrics.flow.FlowResult` on ``probs``' device.
    """
    acc = _accumulate(probs, kinds, heads=heads, max_chunk_bytes=max_chunk_bytes, trusted_kinds=trusted_kinds)
    return {kind: acc.result(padding=kind, pad_queries=pad_queries) for kind in padding_kinds}


def _accumulate(probs: torch.Tensor, kinds: torch.Tensor, *, heads: HeadMode, max_chunk_bytes: int | None,
                trusted_kinds: bool) -> FlowAccumulator:
    """The flow state of one block, fed window chunk by window chunk (see :func:`reduce_block`)."""
    acc = FlowAccumulator(heads=heads)
    step = _windows_per_chunk(probs, heads, max_chunk_bytes)
    n_win = probs.shape[1]
    for w0 in range(0, n_win, step):
        acc.update(probs[:, w0:w0 + step], kinds[:, w0:w0 + step], trusted_kinds=trusted_kinds)
    return acc


def result_to_cpu(result: FlowResult) -> FlowResult:
    """A copy of ``result`` with every tensor on the CPU."""
    moved = {name: t.detach().to("cpu") for name, t in result.as_dict().items()}
    return FlowResult(**moved, padding=result.padding, heads=result.heads, pad_queries=result.pad_queries)


class FlowReducer:
    """A :class:`~attnprobe.capture.probe.TapSink` computing attention flow inside the hook.

    Parameters
    ----------
    heads
        ``"mean"``: average heads first (docs/definitions.md default); ``"per-head"``: keep a head axis.
    padding_kinds
        Padding kinds to report; all three come from one pass over each map.
    pad_queries
        ``"all-windows"`` (default, the paper's) or ``"real-windows"``: which padding
        queries ``a_pr``/``a_pp`` average over (``docs/conventions.md``).
    max_chunk_bytes
        Extra device memory allowed per reduction step (windows are chunked to fit).

    Attributes
    ----------
    records
        One :class:`ForwardFlow` per finished forward, in order; small CPU tensors only.

    Notes
    -----
    Only ``attn`` taps are used; ``out`` taps are ignored, so ``taps=["*.attn"]`` is the
    cheap choice. A forward's ``tag`` must be a :class:`FlowTag` or ``None`` (then cases are
    named ``sample{i}``, padding 0 and the padding fraction unknown).
    """

    def __init__(self, *, heads: HeadMode = "mean", padding_kinds: Sequence[PaddingKind] = PADDING_KINDS,
                 pad_queries: PadQueries = "all-windows",
                 max_chunk_bytes: int | None = DEFAULT_CHUNK_BYTES) -> None:
        check_reduction_options(heads, padding_kinds, pad_queries)
        if max_chunk_bytes is not None and max_chunk_bytes <= 0:
            raise ConfigError("max_chunk_bytes must be positive", expected="bytes > 0 or None",
                              got=repr(max_chunk_bytes))
        self.heads: HeadMode = heads
        self.padding_kinds: tuple[PaddingKind, ...] = tuple(padding_kinds)
        self.pad_queries: PadQueries = pad_queries
        self.max_chunk_bytes = max_chunk_bytes
        self.records: list[ForwardFlow] = []
        self._pending: dict[str, tuple[int, int, FlowAccumulator]] = {}
        self._ctx: ForwardContext | None = None

    def on_tap(self, tap: TapSpec, value: torch.Tensor, ctx: ForwardContext) -> None:
        if tap.kind != "attn":
            return
        if ctx is not self._ctx:
            # A new forward: drop what a forward that raised halfway may have left behind.
            self._pending, self._ctx = {}, ctx
        acc = _accumulate(value, ctx.kinds[tap.block.name], heads=self.heads, max_chunk_bytes=self.max_chunk_bytes,
                          trusted_kinds=True)
        # Only the block's few state tensors are kept, on the device, until the forward ends; they
        # then move to the CPU together (see on_forward_end), where the results are computed.
        self._pending[tap.block.name] = (tap.block.stage, tap.block.block, acc)

    def on_forward_end(self, ctx: ForwardContext) -> None:
        pending, self._pending, self._ctx = self._pending, {}, None
        tag = ctx.tag
        if tag is None:
            tag = FlowTag(cases=tuple(f"sample{i}" for i in range(ctx.batch)))
        if not isinstance(tag, FlowTag):
            raise ConfigError("the forward's tag is not a FlowTag", expected="Probe.run(..., tag=FlowTag(...))",
                              got=type(tag).__name__, fix="label each forward with attnprobe.metrics.reducers.FlowTag")
        if len(tag.cases) != ctx.batch:
            raise ShapeError("FlowTag names a different number of cases than the batch holds",
                             expected=f"{ctx.batch} case ids", got=f"{len(tag.cases)}",
                             fix="pass one case id per sample, in batch order")
        # One move for the state of every block of the forward (one sync), then metrics on the CPU.
        on_cpu = accumulators_to([acc for _, _, acc in pending.values()], "cpu")
        blocks = {
            name: BlockFlow(stage, block, {k: acc.result(padding=k, pad_queries=self.pad_queries)
                                           for k in self.padding_kinds})
            for (name, (stage, block, _)), acc in zip(pending.items(), on_cpu)
        }
        self.records.append(ForwardFlow(tag, blocks))

    def frame(self) -> pd.DataFrame:
        """Tidy rows of every recorded forward (see :func:`flows_to_frame`)."""
        return flows_to_frame(self.records)

    def clear(self) -> None:
        """Forget the recorded forwards."""
        self.records.clear()
        self._pending, self._ctx = {}, None


def flows_to_frame(records: Iterable[ForwardFlow]) -> pd.DataFrame:
    """Tidy rows ``case, padding, pad_fraction, stage, block, [head], kind, metric, value`` and counts.

    Parameters
    ----------
    records
        Forwards recorded by a :class:`FlowReducer` (or built by the offline reader).

    Returns
    -------
    pandas.DataFrame
        Block-level frame as :func:`attnprobe.metrics.aggregate.tidy_flow` makes it, blocks
        in model order, kinds in ``input, window, all`` order.
    """
    parts = []
    for rec in records:
        for bf in sorted(rec.blocks.values(), key=lambda b: (b.stage, b.block)):
            for result in bf.results.values():
                parts.append(tidy_columns(result, cases=list(rec.tag.cases), padding=rec.tag.padding,
                                          pad_fraction=rec.tag.pad_fraction, stage=bf.stage, block=bf.block))
    if not parts:
        return pd.DataFrame(columns=[*TIDY_COLUMNS, *COUNTS])
    if any(p.keys() != parts[0].keys() for p in parts):
        # head-mean and per-head records mixed: let pandas align the columns
        return pd.concat([pd.DataFrame(p) for p in parts], ignore_index=True)
    # One frame from joined columns: a frame per block and a concat cost more than the reduction.
    return pd.DataFrame({c: np.concatenate([p[c] for p in parts]) for c in parts[0]})
