"""Attention dilution over a padding sweep (docs/definitions.md).

:func:`adi_vs_padding` (and :func:`attnprobe.figures.flow.flow_matrices`) take the *stage-level* tidy frame, i.e. the output of
:func:`attnprobe.metrics.aggregate.stage_means` (block -> stage aggregation done), with columns
``case, padding, pad_fraction, stage, kind, metric, value`` and optionally ``model`` when
several models are compared. Nothing is computed here beyond grouping for display: the mean
and sample standard deviation over cases of each plotted cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator

from attnprobe.errors import DataError
from attnprobe.figures.style import (
    LINESTYLES,
    MARKERS,
    choice,
    count,
    figure_and_axes,
    palette,
    require_frame,
    require_unique,
    styled,
    unique_in_order,
)
from attnprobe.tokens import PADDING_KINDS, PaddingKind
from attnprobe.train.stats import bootstrap_ci

__all__ = ["Metric", "PaddingKind", "METRIC_LABELS", "adi_vs_padding"]

Metric = Literal["adi", "sfr", "a_rr", "a_rp", "a_pr", "a_pp", "h", "h_rp"]
_METRICS: tuple[Metric, ...] = ("adi", "sfr", "a_rr", "a_rp", "a_pr", "a_pp", "h", "h_rp")
_KINDS: tuple[PaddingKind, ...] = PADDING_KINDS

METRIC_LABELS: dict[str, str] = {
    "adi": "ADI (ratio of entropies, 0–1)",
    "sfr": "SFR = A_rr (attention fraction)",
    "a_rr": "A_rr: real → real (attention fraction)",
    "a_rp": "A_rp: real → pad (attention fraction)",
    "a_pr": "A_pr: pad → real (attention fraction)",
    "a_pp": "A_pp: pad → pad (attention fraction)",
    "h": "entropy H of real queries (nats)",
    "h_rp": "padding-key entropy H_rp (nats)",
}
"""Axis label (with unit) of each metric of :data:`attnprobe.metrics.flow.METRICS`."""

_SHORT = {"adi": "ADI", "sfr": "SFR", "a_rr": "A_rr", "a_rp": "A_rp", "a_pr": "A_pr", "a_pp": "A_pp",
          "h": "H", "h_rp": "H_rp"}
_STAGE_COLUMNS = ("case", "padding", "stage", "kind", "metric", "value")
_FIX = ("pass the stage-level frame: attnprobe.metrics.aggregate.stage_means(tidy) "
        "(add a 'model' column to compare models)")


def _stage_frame(frame: pd.DataFrame, *, what: str) -> pd.DataFrame:
    require_frame(frame, _STAGE_COLUMNS, what=what, fix=_FIX)
    if "block" in frame.columns:
        raise DataError(f"{what} takes stage-level values, not blocks", expected="no 'block' column",
                        got="a block-level frame", fix=_FIX)
    if "head" in frame.columns:
        raise DataError(f"{what} draws head-mean values", expected="no 'head' column",
                        got="a per-head frame", fix="select one head (frame[frame.head == h].drop(columns='head')) "
                        "or capture with heads='mean'")
    return frame


def _select(frame: pd.DataFrame, column: str, values: Sequence[object], *, what: str) -> pd.DataFrame:
    out = frame[frame[column].isin(values)]
    if out.empty:
        raise DataError(f"{what}: no rows with {column} in {list(values)}", expected=f"{column} values {list(values)}",
                        got=f"{column} values {unique_in_order(frame[column])}",
                        fix=f"pick {column}= among the values present")
    return out


def _models(frame: pd.DataFrame) -> list[object]:
    return unique_in_order(frame["model"]) if "model" in frame.columns else [None]


@styled
def adi_vs_padding(
    stage_frame: pd.DataFrame,
    *,
    kind: PaddingKind = "all",
    metric: Metric = "adi",
    ax: Axes | Sequence[Axes] | None = None,
    pad_fraction_axis: bool = True,
) -> Figure:
    """Stage curves of a flow metric against input padding: mean over cases with a 95% interval.

    One line per stage (colour, marker and line style differ per stage), a shaded band with the
    95% percentile case-bootstrap interval of the mean (2000 resamples, seed 0; absent for a
    single case: one case has no interval), one panel per model when the frame has a ``model``
    column. A standard deviation over a handful of cases is not an interval, so none is drawn.

    Parameters
    ----------
    stage_frame
        Stage-level tidy frame with columns ``case, padding, stage, kind, metric, value`` (and
        ``pad_fraction``, ``model`` when present); one row per (model, case, padding, stage,
        kind, metric).
    kind
        Padding kind to show: ``"input"``, ``"window"`` or ``"all"``.
    metric
        Metric to show (see :data:`METRIC_LABELS`).
    ax
        Axes to draw into: one per model, in the order models first appear. ``None`` creates a
        figure with one panel per model (shared y axis).
    pad_fraction_axis
        Add a secondary x axis on top labelled with the mean padding fraction (percent of the
        input) at each padding amount; needs a ``pad_fraction`` column.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    DataError
        Missing columns, a block-level or per-head frame, no rows for ``kind``/``metric``, or a
        case that appears twice in one cell.
    ConfigError
        Unknown ``kind`` or ``metric``, or ``ax`` that does not hold one Axes per model.
    """
    what = "adi_vs_padding"
    kind = choice(kind, "kind", _KINDS)
    metric = choice(metric, "metric", _METRICS)
    frame = _stage_frame(stage_frame, what=what)
    frame = _select(_select(frame, "kind", [kind], what=what), "metric", [metric], what=what)
    models = _models(frame)
    keys = ["model", "case", "padding", "stage"] if models != [None] else ["case", "padding", "stage"]
    require_unique(frame, keys, what=what, fix="aggregate blocks to stages and keep one value per case")

    fig, axes = figure_and_axes(ax, len(models), what=what, sharey=True,
                                figsize=(1.0 + 4.2 * len(models), 4.3))
    stages = sorted(unique_in_order(frame["stage"]))
    colours = palette(len(stages))
    for model, axis in zip(models, axes):
        sub = frame if model is None else frame[frame["model"] == model]
        for i, stage in enumerate(stages):
            cell = sub[sub["stage"] == stage]
            if cell.empty:
                continue
            groups = cell.groupby("padding", sort=True)["value"]
            x = np.asarray(list(groups.groups), dtype=float)
            mean = groups.mean().to_numpy(float)
            axis.plot(x, mean, color=colours[i], marker=MARKERS[i % len(MARKERS)],
                      linestyle=LINESTYLES[i % len(LINESTYLES)], label=f"stage {stage}")
            if groups.size().min() > 1:
                low, high = np.array([bootstrap_ci(v.to_numpy(float)) for _, v in groups]).T
                axis.fill_between(x, low, high, color=colours[i], alpha=0.2, linewidth=0)
        paddings = np.sort(sub["padding"].unique().astype(float))
        axis.xaxis.set_major_locator(FixedLocator(paddings.tolist()))
        axis.set_xlabel("input padding (voxels)")
        if ax is not None or axis is axes[0]:
            axis.set_ylabel(METRIC_LABELS[metric])
        axis.set_ylim(bottom=0.0)
        n_model_cases = sub["case"].nunique()
        panel = f"{model}: " if model is not None else ""
        axis.set_title(f"{panel}n = {count(n_model_cases, 'case')}, 95% CI")
        if pad_fraction_axis and "pad_fraction" in sub.columns and sub["pad_fraction"].notna().any():
            fractions = sub.groupby("padding", sort=True)["pad_fraction"].mean()
            top = axis.secondary_xaxis("top")
            top.set_xticks(fractions.index.to_numpy(float),
                           labels=[f"{100 * f:.0f}" if np.isfinite(f) else "" for f in fractions.to_numpy(float)])
            top.set_xlabel("padding fraction of input (%)")
    # One legend for all panels, outside the data so no line runs under it.
    entries: dict[str, Any] = {}
    for axis in axes:  # a stage missing from one model's panel still gets its entry
        for handle, label in zip(*axis.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    labels = [f"stage {s}" for s in stages if f"stage {s}" in entries]
    handles = [entries[label] for label in labels]
    if ax is None:
        fig.legend(handles, labels, title="stage", loc="outside lower center", ncols=min(len(labels), 6))
    else:
        axes[-1].legend(handles, labels, title="stage", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if ax is None:
        fig.suptitle(f"{_SHORT[metric]} vs input padding ({kind} padding tokens)")
    return fig
