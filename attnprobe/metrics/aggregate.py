"""Tidy tables of attention-flow metrics and their aggregations (docs/definitions.md).

One row per (case, padding, stage, block, kind, metric)::

    case  padding  pad_fraction  stage  block  kind  metric  value  n_real_queries  n_pad_queries

- ``padding``: the sweep amount p in voxels; ``pad_fraction``: the share of the input that
  is padding (both given by the caller); ``kind``: the padding kind of the metric
  (``input``/``window``/``all``); ``block``: block index within ``stage``; ``metric``: one of
  :data:`attnprobe.metrics.flow.METRICS`.
- The two count columns (real / padding queries behind the row, from
  :class:`~attnprobe.metrics.flow.FlowResult`) are kept for token weighting.
- Per-head results add a ``head`` column after ``block``; every aggregation keeps it.

Aggregations, per case: block -> stage (unweighted mean over the blocks of the stage),
stage -> model (mean over stages, or token-weighted), and sweeps over cases (mean, std, n).
:func:`to_xarray` turns any of these frames into an ``xarray.Dataset`` with named dims.

Missing values: ``a_pr``/``a_pp`` of a block without padding queries are NaN (there is no
value, see :mod:`attnprobe.metrics.flow`). Every aggregation skips NaN (nanmean semantics)
rather than averaging 0 placeholders in; a group whose values are all NaN is NaN, and the
``n_blocks``/``n_stages``/``n`` columns count only the values behind the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from attnprobe.errors import DataError, ShapeError, check_option
from attnprobe.metrics.flow import COUNTS, METRICS, FlowResult
from attnprobe.tokens import PADDING_KINDS

__all__ = [
    "TIDY_COLUMNS",
    "tidy_flow",
    "tidy_columns",
    "stage_means",
    "model_means",
    "sweep_summary",
    "to_xarray",
]

TIDY_COLUMNS: tuple[str, ...] = ("case", "padding", "pad_fraction", "stage", "block", "kind", "metric", "value")
"""Columns of a block-level tidy frame (then the count columns, and ``head`` if per head)."""

# Identifier columns in canonical order; a frame holds the subset its level needs.
_ID_ORDER = ("case", "padding", "pad_fraction", "stage", "block", "head", "kind", "metric")
_DIM_ORDER = ("case", "padding", "stage", "block", "head", "kind")
# Metrics averaged over padding queries: their token weight is the padding-query count.
_PAD_QUERY_METRICS = frozenset({"a_pr", "a_pp"})

_LONG_NAMES = {
    "adi": "attention dilution index",
    "sfr": "signal fidelity ratio",
    "a_rr": "attention of real queries to real keys",
    "a_rp": "attention of real queries to padding keys",
    "a_pr": "attention of padding queries to real keys",
    "a_pp": "attention of padding queries to padding keys",
    "h": "mean attention entropy of real queries (nats)",
    "h_rp": "mean padding-key attention entropy of real queries (nats)",
}


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{what} needs columns the frame lacks",
            expected=", ".join(columns),
            got=f"columns {list(frame.columns)} (missing {missing})",
            fix="build the frame with tidy_flow (and stage_means for stage-level input)",
        )


def _ids(frame: pd.DataFrame, drop: Sequence[str] = ()) -> list[str]:
    return [c for c in _ID_ORDER if c in frame.columns and c not in drop]


def _group(frame: pd.DataFrame, keys: Sequence[str]):
    # Keep NaN keys (e.g. unknown pad_fraction) and first-seen order (metric order stays METRICS).
    return frame.groupby(keys, sort=False, dropna=False, observed=True)


def _per_case(values, n: int, name: str) -> list:
    # A string is one case id, not a sequence of characters; a number applies to every sample.
    if isinstance(values, str) or np.ndim(values) == 0:
        values = [values] if name == "cases" else [values] * n
    values = list(values)
    if len(values) != n:
        raise ShapeError(
            f"{name} does not match the number of samples in the result",
            expected=f"{n} entries", got=f"{len(values)}",
            fix=f"pass one {name} entry per sample, in batch order",
        )
    return values


def tidy_flow(
    result: FlowResult,
    *,
    cases: str | Sequence[str],
    padding: float,
    pad_fraction: float | Sequence[float],
    stage: int,
    block: int,
) -> pd.DataFrame:
    """Tidy rows for one block's :class:`FlowResult`; concatenate blocks with ``pd.concat``.

    Parameters
    ----------
    result
        Output of :func:`~attnprobe.metrics.flow.attention_flow` with metrics of shape
        ``(sample,)``, ``(sample, head)`` (per head) or ``()`` (one sample).
    cases
        Case id per sample, in batch order (a single id for a 0-d result).
    padding
        Sweep amount p (voxels) the inputs were made with.
    pad_fraction
        Padding share of the input, one value or one per sample.
    stage, block
        Stage index and block index within the stage.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`TIDY_COLUMNS` plus ``n_real_queries``, ``n_pad_queries`` (and ``head``
        after ``block`` for per-head results); ``kind`` is ``result.padding``.
    """
    return pd.DataFrame(tidy_columns(result, cases=cases, padding=padding, pad_fraction=pad_fraction, stage=stage,
                                     block=block))


def tidy_columns(
    result: FlowResult,
    *,
    cases: str | Sequence[str],
    padding: float,
    pad_fraction: float | Sequence[float],
    stage: int,
    block: int,
) -> dict[str, np.ndarray]:
    """The columns of :func:`tidy_flow` as arrays, to join many blocks into one frame at once.

    ``pd.DataFrame`` of the per-column concatenation of several blocks' columns equals
    ``pd.concat`` of their :func:`tidy_flow` frames (with ``ignore_index=True``), at a
    fraction of the cost when a forward has many blocks.
    """
    per_head = result.heads == "per-head"
    lead = tuple(result.n_real_queries.shape)
    if len(lead) > 1:
        raise ShapeError(
            "tidy_flow takes results with at most one batch dim",
            expected="metrics (sample,) or (sample, head)", got=f"batch dims {lead}",
            fix="flatten the batch dims to one sample dim first",
        )
    n_samples = lead[0] if lead else 1
    cases = [str(c) for c in _per_case(cases, n_samples, "cases")]
    fractions = [float(f) for f in _per_case(pad_fraction, n_samples, "pad_fraction")]

    def as_np(t) -> np.ndarray:
        return t.detach().to("cpu").double().numpy()

    # (sample, head', metric) values; head' = 1 for head-mean results.
    values = np.stack([as_np(getattr(result, m)).reshape(n_samples, -1) for m in METRICS], axis=-1)
    n_heads, n_metrics = values.shape[1], values.shape[2]
    sample_idx = np.repeat(np.arange(n_samples), n_heads * n_metrics)
    counts = {c: as_np(getattr(result, c)).reshape(n_samples).astype(np.int64)[sample_idx] for c in COUNTS}
    frame = {
        "case": np.asarray(cases, dtype=object)[sample_idx],
        "padding": np.full(sample_idx.size, padding),
        "pad_fraction": np.asarray(fractions)[sample_idx],
        "stage": np.full(sample_idx.size, int(stage), dtype=np.int64),
        "block": np.full(sample_idx.size, int(block), dtype=np.int64),
    }
    if per_head:
        frame["head"] = np.tile(np.repeat(np.arange(n_heads, dtype=np.int64), n_metrics), n_samples)
    frame["kind"] = np.full(sample_idx.size, result.padding, dtype=object)
    frame["metric"] = np.tile(np.asarray(METRICS, dtype=object), n_samples * n_heads)
    frame["value"] = values.reshape(-1)
    frame.update(counts)
    return frame


def stage_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Block -> stage: unweighted mean over the blocks of each stage, per case.

    Parameters
    ----------
    frame
        Block-level tidy frame (:func:`tidy_flow`).

    Returns
    -------
    pandas.DataFrame
        One row per (case, padding, pad_fraction, stage, [head], kind, metric) with ``value``
        (mean over the blocks with a value: NaN skipped), ``n_blocks`` (those blocks) and the
        count columns summed over blocks.
    """
    _require(frame, TIDY_COLUMNS, "stage_means")
    keys = _ids(frame, drop=("block",))
    grouped = _group(frame, keys)
    out = grouped["value"].mean().to_frame("value")
    return _with_counts(out, grouped, frame, n_column="n_blocks")


def model_means(frame: pd.DataFrame, *, weighting: Literal["stages", "tokens"] = "stages") -> pd.DataFrame:
    """Stage -> model, per case.

    Parameters
    ----------
    frame
        Stage-level frame (:func:`stage_means`); a block-level frame is reduced to stages first.
    weighting
        ``"stages"``: unweighted mean over stages (docs/definitions.md). ``"tokens"``: stage values weighted
        by the queries behind them — real-query counts for every metric except ``a_pr`` and
        ``a_pp``, which are means over padding queries and so are weighted by padding-query
        counts; a stage's weight is its count summed over its blocks. As a stage's blocks see
        the same real tokens (roll only permutes them), for real-query metrics this is the
        mean over every (block, real query) of the model. NaN values carry no weight. A
        group whose weights are all 0 gets NaN for ``a_pr``/``a_pp`` (no padding query: no
        value) and 0 for the real-query metrics, as in :mod:`attnprobe.metrics.flow`.

    Returns
    -------
    pandas.DataFrame
        One row per (case, padding, pad_fraction, [head], kind, metric) with ``value`` (NaN
        skipped), ``n_stages`` (stages with a value) and the count columns summed over stages.
    """
    check_option("weighting", weighting, ("stages", "tokens"))
    if "block" in frame.columns:
        frame = stage_means(frame)
    _require(frame, ("case", "stage", "kind", "metric", "value"), "model_means")
    keys = _ids(frame, drop=("stage",))
    if weighting == "tokens":
        _require(frame, COUNTS, "token-weighted model_means")
        pad_rows = frame["metric"].isin(_PAD_QUERY_METRICS).to_numpy()
        value = frame["value"].to_numpy(dtype=np.float64)
        weight = np.where(pad_rows, frame["n_pad_queries"], frame["n_real_queries"]).astype(np.float64)
        weight = np.where(np.isnan(value), 0.0, weight)  # a missing value carries no weight
        frame = frame.assign(_w=weight, _wv=np.where(weight > 0, weight * value, 0.0))
        grouped = _group(frame, keys)
        total, weighted = grouped["_w"].sum(), grouped["_wv"].sum()
        empty = np.where(total.index.get_level_values("metric").isin(_PAD_QUERY_METRICS), np.nan, 0.0)
        out = (weighted / total.where(total > 0, 1.0)).where(total > 0, empty).to_frame("value")
    else:
        grouped = _group(frame, keys)
        out = grouped["value"].mean().to_frame("value")
    return _with_counts(out, grouped, frame, n_column="n_stages")


def _with_counts(out: pd.DataFrame, grouped: Any, frame: pd.DataFrame, *, n_column: str) -> pd.DataFrame:
    """Add the number of values behind each mean (NaN not counted) and the count columns summed
    per group."""
    out[n_column] = grouped["value"].count()
    for c in COUNTS:
        if c in frame.columns:
            out[c] = grouped[c].sum()
    return out.reset_index()


def sweep_summary(frame: pd.DataFrame, *, ddof: int = 1) -> pd.DataFrame:
    """Mean, standard deviation and number of cases per sweep cell.

    Parameters
    ----------
    frame
        A block-, stage- or model-level frame with one row per case and cell.
    ddof
        Delta degrees of freedom of the std (1: sample std, NaN for a single case).

    Returns
    -------
    pandas.DataFrame
        One row per (padding, [stage], [block], [head], kind, metric) — the identifier
        columns present, without ``case`` — with ``mean``, ``std``, ``n`` (cases with a value:
        NaN is skipped, not counted) and ``pad_fraction`` (mean over cases).
    """
    _require(frame, ("case", "padding", "kind", "metric", "value"), "sweep_summary")
    keys = _ids(frame, drop=("case", "pad_fraction"))
    if frame.duplicated(subset=[*keys, "case"]).any():
        raise DataError(
            "a case appears more than once in a sweep cell",
            expected=f"one row per case and ({', '.join(keys)})",
            got="duplicate rows",
            fix="aggregate blocks/stages first (stage_means, model_means) or drop duplicates",
        )
    grouped = _group(frame, keys)
    out = grouped["value"].agg(["mean", "count"]).rename(columns={"count": "n"})
    out["std"] = grouped["value"].std(ddof=ddof)
    if "pad_fraction" in frame.columns:
        out["pad_fraction"] = grouped["pad_fraction"].mean()
    return out[[c for c in ("mean", "std", "n", "pad_fraction") if c in out.columns]].reset_index()


def to_xarray(frame: pd.DataFrame, *, value: str = "value") -> xr.Dataset:
    """Any frame of this module as an ``xarray.Dataset`` with one variable per metric.

    Parameters
    ----------
    frame
        Tidy, stage, model or sweep frame.
    value
        Column to spread into the metric variables (``"mean"`` or ``"std"`` for sweeps).

    Returns
    -------
    xarray.Dataset
        Dims: those of ``case, padding, stage, block, head, kind`` present in the frame.
        Data variables: one per metric; count columns (``n_real_queries``, ``n_pad_queries``,
        ``n_blocks``, ``n_stages``, ``n``) as further variables. ``pad_fraction`` becomes a
        coordinate on (case, padding) or (padding) (mean if it varies). Cells absent from the
        frame (e.g. blocks of a shorter stage) are NaN.
    """
    _require(frame, ("metric", value), "to_xarray")
    dims = [d for d in _DIM_ORDER if d in frame.columns]
    if frame.duplicated(subset=[*dims, "metric"]).any():
        raise DataError(
            "the frame has several rows per cell",
            expected=f"one row per ({', '.join(dims)}, metric)", got="duplicate rows",
            fix="aggregate first, or pass a frame of one level only",
        )
    wide = frame.set_index([*dims, "metric"])[value].unstack("metric")
    wide = wide[[m for m in frame["metric"].drop_duplicates()]]  # METRICS order, not sorted
    wide.columns.name = None
    ds = xr.Dataset.from_dataframe(wide)
    for name in ds.data_vars:
        ds[name].attrs["long_name"] = _LONG_NAMES.get(str(name), str(name))
    for col in (*COUNTS, "n_blocks", "n_stages", "n"):
        if col in frame.columns and col != value:
            ds[col] = xr.DataArray.from_series(_group(frame, dims)[col].first())
    if "kind" in ds.dims:
        # Report order input, window, all (from_dataframe sorts labels alphabetically).
        present = [str(k) for k in ds["kind"].values]
        ds = ds.reindex(kind=[k for k in PADDING_KINDS if k in present] + sorted(set(present) - set(PADDING_KINDS)))
    if "pad_fraction" in frame.columns:
        on = [d for d in ("case", "padding") if d in dims]
        if on:
            ds = ds.assign_coords(pad_fraction=xr.DataArray.from_series(_group(frame, on)["pad_fraction"].mean()))
    return ds
