"""Attention flow and ADI from a capture store, out of core (docs/definitions.md, offline path).

The store's ``attn`` arrays are chunked one sample by a few windows (about 8 MiB a chunk).
:func:`store_flow` reads them chunk by chunk through the store's dask-backed xarray view and
feeds a :class:`~attnprobe.metrics.flow.FlowAccumulator` per (sample, block), so at most two
chunks (the one reduced and the one being read ahead) are in memory, whatever the block size.
The rows are the ones the online :class:`~attnprobe.metrics.reducers.FlowReducer` produces
for the same forwards; with a float32 store they agree to ~1e-12 (float16 stores differ by the
storage rounding of the maps, ~1e-4 relative).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
import xarray as xr

from attnprobe.errors import ConfigError, StoreError
from attnprobe.metrics.flow import (
    FlowAccumulator,
    HeadMode,
    PadQueries,
    check_kind_codes,
    check_reduction_options,
)
from attnprobe.metrics.reducers import BlockFlow, FlowTag, ForwardFlow, flows_to_frame, result_to_cpu
from attnprobe.store import as_tree, block_names
from attnprobe.store.writer import CHUNK_BYTES
from attnprobe.tokens import PADDING_KINDS, PaddingKind

__all__ = ["OfflineStats", "recorded_padding", "store_flow", "store_flow_records"]


@dataclass
class OfflineStats:
    """Work done by one :func:`store_flow` call (filled in as it runs).

    Attributes
    ----------
    attn_bytes
        Bytes of attention maps read, in the store's dtype.
    chunks
        Chunks read.
    largest_chunk_bytes
        Size of the largest chunk read: the most attention held at once (twice that with
        read-ahead), independent of block size.
    seconds
        Wall time of the whole reduction.
    skipped_samples
        Case ids of samples not marked done in the store (left out).
    """

    attn_bytes: int = 0
    chunks: int = 0
    largest_chunk_bytes: int = 0
    seconds: float = 0.0
    skipped_samples: tuple[str, ...] = ()

    @property
    def gb_per_s(self) -> float:
        """Attention read throughput (1e9 bytes per second)."""
        return self.attn_bytes / 1e9 / self.seconds if self.seconds > 0 else math.nan


def _window_bounds(attn: xr.DataArray) -> list[tuple[int, int]]:
    """Window ranges of the array's chunks: dask chunks, else the store's own chunking, else the
    writer's rule (about :data:`~attnprobe.store.writer.CHUNK_BYTES` a chunk)."""
    n_win = attn.sizes["window"]
    axis = attn.get_axis_num("window")
    if attn.chunks is not None:
        sizes = list(attn.chunks[axis])
    else:
        # Lazily indexed (chunks=None) view: follow the chunking the store was written with.
        stored = attn.encoding.get("chunks") or attn.encoding.get("preferred_chunks", {}).get("window")
        if isinstance(stored, (tuple, list)):
            step = int(stored[axis])
        elif isinstance(stored, int):
            step = stored
        else:
            per_window = int(np.prod([attn.sizes[d] for d in ("head", "query", "key")])) * attn.dtype.itemsize
            step = max(1, CHUNK_BYTES // max(per_window, 1))
        sizes = [min(step, n_win - w) for w in range(0, n_win, step)]
    edges = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _per_sample_attr(tree: xr.DataTree, name: str, n: int) -> list[float] | None:
    """A per-sample number stored as a root variable ``name (sample,)`` or a root attr list."""
    if name in tree.dataset.data_vars:
        values = np.asarray(tree.dataset[name].values, dtype=float).reshape(-1)
    elif name in tree.attrs:
        values = np.asarray(tree.attrs[name], dtype=float).reshape(-1)
    else:
        return None
    if values.size == 1:
        values = np.repeat(values, n)
    if values.size != n:
        raise StoreError(f"store attribute {name!r} does not have one value per sample",
                         expected=f"{n} values", got=f"{values.size}")
    return [float(v) for v in values]


def recorded_padding(attrs: Mapping[Any, Any]) -> int | float | None:
    """The padding amount (voxels) a store's attributes record, or ``None`` when they hold none.

    Captures record ``padding = {"mode": ...}``; a capture of sweep inputs adds ``"amount"``
    (a bare number is accepted too).
    """
    raw = attrs.get("padding")
    if isinstance(raw, dict):
        raw = raw.get("amount")
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return int(raw) if float(raw).is_integer() else float(raw)
    return None


def _store_padding(tree: xr.DataTree) -> int | float:
    amount = recorded_padding(tree.attrs)
    return 0 if amount is None else amount


def _block_ids(attrs: Mapping[Any, Any], name: str) -> tuple[int, int]:
    """``(stage, block)`` of a block node: its attrs, else parsed from ``stage{s}.block{b}``."""
    stage = int(attrs.get("stage", name.split(".")[0].removeprefix("stage")))
    block = int(attrs.get("block", name.split(".")[1].removeprefix("block")))
    return stage, block


def _load(array: xr.DataArray, sample: int, w0: int | None = None, w1: int | None = None) -> np.ndarray:
    """One sample (and window range) of a store array as numpy, reading only that part."""
    part = array.isel(sample=sample) if w0 is None else array.isel(sample=sample, window=slice(w0, w1))
    if part.chunks is not None:
        # One chunk, one task: the synchronous scheduler avoids a thread pool per read.
        return np.asarray(part.data.compute(scheduler="synchronous"))
    return np.asarray(part.values)  # lazily indexed backend: reads just this slice


def store_flow_records(
    store: str | os.PathLike[str] | xr.DataTree,
    *,
    heads: HeadMode = "mean",
    padding_kinds: Sequence[PaddingKind] = PADDING_KINDS,
    pad_queries: PadQueries = "all-windows",
    blocks: Sequence[str] | None = None,
    padding: float | None = None,
    pad_fraction: float | Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    read_ahead: bool = True,
    stats: OfflineStats | None = None,
    on_sample: Callable[[str], None] | None = None,
) -> Iterator[ForwardFlow]:
    """Attention flow of every done sample of a store, one :class:`ForwardFlow` per sample.

    Parameters are those of :func:`store_flow`; ``stats`` (if given) is filled in as the
    records are produced.

    Yields
    ------
    ForwardFlow
        Tag ``FlowTag(cases=(case,), padding, pad_fraction)`` and the flow of every block
        holding attention maps, metrics on the CPU.
    """
    check_reduction_options(heads, padding_kinds, pad_queries)
    # chunks={} keeps the store's own chunking (one sample x a few windows) as dask chunks.
    tree = as_tree(store, chunks={})
    names = [n for n in block_names(tree) if "attn" in tree[n].dataset]
    if blocks is not None:
        unknown = sorted(set(blocks) - set(names))
        if unknown:
            raise StoreError("the store holds no attention maps for some requested blocks",
                             expected=f"names among {names}", got=str(unknown))
        names = [n for n in names if n in set(blocks)]
    if not names:
        raise StoreError("the store holds no attention maps",
                         expected="blocks captured with an '.attn' tap", got="only block outputs",
                         fix="capture again with --taps '*.attn' (or the default '*')")
    cases = [str(c) for c in tree.dataset["case"].values]
    done = np.asarray(tree["done"].values, dtype=bool)
    n = len(cases)
    if not done.any():
        raise StoreError("no sample of the store is complete", expected="at least one sample marked done",
                         got=f"0 of {n}", fix="run (or resume) the capture to the end")
    if pad_fraction is None:
        fractions = _per_sample_attr(tree, "pad_fraction", n) or [math.nan] * n
    elif np.ndim(pad_fraction) == 0:
        fractions = [float(pad_fraction)] * n  # type: ignore[arg-type]
    else:
        fractions = [float(f) for f in pad_fraction]  # type: ignore[union-attr]
        if len(fractions) != n:
            raise ConfigError("pad_fraction needs one value per store sample", expected=f"{n} values",
                              got=f"{len(fractions)}")
    pad_amount = _store_padding(tree) if padding is None else padding
    stats = stats if stats is not None else OfflineStats()
    stats.skipped_samples = tuple(c for c, d in zip(cases, done) if not d)
    device = torch.device(device)

    nodes = {name: tree[name].dataset for name in names}
    bounds = {name: _window_bounds(nodes[name]["attn"]) for name in names}
    ids = {name: _block_ids(tree[name].attrs, name) for name in names}
    jobs = [(s, name, w0, w1) for s in np.flatnonzero(done).tolist() for name in names for w0, w1 in bounds[name]]

    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnprobe-read") if read_ahead else None
    try:
        def fetch(i: int) -> Future | np.ndarray:
            s, name, w0, w1 = jobs[i]
            if pool is None:
                return _load(nodes[name]["attn"], s, w0, w1)
            return pool.submit(_load, nodes[name]["attn"], s, w0, w1)

        ahead = fetch(0) if jobs else None
        acc: FlowAccumulator | None = None
        kinds: torch.Tensor | None = None
        per_block: dict[str, BlockFlow] = {}
        for i, (s, name, w0, w1) in enumerate(jobs):
            chunk = ahead.result() if isinstance(ahead, Future) else cast(np.ndarray, ahead)  # None only past the last job
            # Read the next chunk while this one is reduced (zarr decoding releases the GIL).
            ahead = fetch(i + 1) if i + 1 < len(jobs) else None
            if w0 == 0:
                acc = FlowAccumulator(heads=heads)
                kinds = torch.from_numpy(_load(nodes[name]["attn_kind"], s)).to(device)
                check_kind_codes(kinds)  # once per (sample, block), not per chunk
            stats.attn_bytes += chunk.nbytes
            stats.chunks += 1
            stats.largest_chunk_bytes = max(stats.largest_chunk_bytes, chunk.nbytes)
            probs = torch.from_numpy(chunk).to(device)
            acc.update(probs[None], kinds[None, w0:w1], trusted_kinds=True)  # type: ignore[union-attr, index]
            if w1 == bounds[name][-1][1]:
                per_block[name] = BlockFlow(*ids[name], {
                    k: result_to_cpu(acc.result(padding=k, pad_queries=pad_queries))  # type: ignore[union-attr]
                    for k in padding_kinds
                })
                if name == names[-1]:
                    stats.seconds = time.perf_counter() - start
                    if on_sample is not None:
                        on_sample(cases[s])
                    yield ForwardFlow(FlowTag(cases=(cases[s],), padding=pad_amount, pad_fraction=fractions[s]),
                                      per_block)
                    per_block = {}
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    stats.seconds = time.perf_counter() - start


def store_flow(
    store: str | os.PathLike[str] | xr.DataTree,
    *,
    heads: HeadMode = "mean",
    padding_kinds: Sequence[PaddingKind] = PADDING_KINDS,
    pad_queries: PadQueries = "all-windows",
    blocks: Sequence[str] | None = None,
    padding: float | None = None,
    pad_fraction: float | Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    read_ahead: bool = True,
    stats: OfflineStats | None = None,
    on_sample: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Tidy attention-flow rows of a capture store, computed chunk by chunk over windows.

    Parameters
    ----------
    store
        Path of a store written by ``attnprobe capture`` (or the DataTree of one, opened with
        dask chunks for out-of-core reading).
    heads
        ``"mean"`` or ``"per-head"``.
    padding_kinds
        Padding kinds to report (one pass serves all).
    pad_queries
        ``"all-windows"`` (default, the paper's) or ``"real-windows"``: which padding queries
        ``a_pr``/``a_pp`` average over (``docs/conventions.md``).
    blocks
        Block names (``stage{s}.block{b}``) to reduce; default every block with maps.
    padding
        The rows' ``padding`` value; default the store's ``padding`` attribute amount, else 0.
    pad_fraction
        Padding share of each sample's input; default the store's ``pad_fraction`` (root
        variable or attribute), else NaN (a capture does not record it).
    device
        Where the reduction runs (``"cuda"`` for big stores).
    read_ahead
        Read the next chunk in a background thread while the current one is reduced.
    stats
        An :class:`OfflineStats` to fill (bytes read, time) for throughput reports.
    on_sample
        Called with the case id after each sample (progress bars).

    Returns
    -------
    pandas.DataFrame
        Block-level tidy frame, same columns and row order as
        :meth:`attnprobe.metrics.reducers.FlowReducer.frame` for the same forwards. Samples not
        marked done are left out (their ids in ``stats.skipped_samples``).

    Raises
    ------
    StoreError
        No store, no attention maps, no finished sample, unknown blocks.
    """
    records = store_flow_records(store, heads=heads, padding_kinds=padding_kinds, pad_queries=pad_queries,
                                 blocks=blocks, padding=padding,
                                 pad_fraction=pad_fraction, device=device, read_ahead=read_ahead, stats=stats,
                                 on_sample=on_sample)
    # Drain the records first: building the frame interleaved with the reads would count its
    # time in stats.seconds (and lower the reported GB/s).
    return flows_to_frame(list(records))
