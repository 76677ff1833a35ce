"""Figures of the interventions and their evaluation (docs/conventions.md).

- :func:`detection_bars`: tumor detection rate per trainer preset and backbone, "k/n" labels,
  with the bootstrap 95 % interval as error bars when the summary has one.
- :func:`dice_hd95_boxes`: per-case Dice and HD95 (mm) distributions per preset and backbone,
  with the mean and its bootstrap 95 % interval when summaries are given.
- :func:`token_efficiency`: real tokens / all tokens per stage for several crops.
- :func:`tumor_clusters`: per-case tumor appearance features coloured by k-means cluster.

Inputs are plain tidy frames; nothing is computed beyond the display (the detection rate
``k / n`` is the bar height, box plots show quartiles of the per-case values, intervals come
from the evaluation summaries, :func:`attnprobe.train.evaluate.summarize`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, PercentFormatter

from attnprobe.errors import ConfigError, DataError
from attnprobe.figures.style import (
    LINESTYLES,
    MARKERS,
    figure_and_axes,
    palette,
    require_frame,
    require_unique,
    styled,
    unique_in_order,
)

__all__ = ["FEATURE_LABELS", "detection_bars", "dice_hd95_boxes", "token_efficiency", "tumor_clusters"]

FEATURE_LABELS: dict[str, str] = {
    "mean": "tumor mean intensity (a.u.)",
    "cv": "tumor CV (std / mean, unitless)",
    "shell_mean": "background-shell mean intensity (a.u.)",
    "contrast": "tumor-to-background contrast (unitless)",
    "boundary_gradient": "boundary gradient (a.u. / mm)",
    "volume_mm3": "tumor volume (mm³)",
}
"""Axis labels (with units) of the features of :mod:`attnprobe.data.tumor_stats`."""


def _order(values: pd.Series, order: Sequence[str] | None, name: str) -> list[str]:
    present = [str(v) for v in unique_in_order(values)]
    if order is None:
        return present
    order = [str(o) for o in order]
    missing = [p for p in present if p not in order]
    if missing:
        raise ConfigError(f"{name}_order misses values of the frame", expected=f"all of {present}",
                          got=f"{order} (missing {missing})", fix=f"list every {name}, or pass {name}_order=None")
    return [o for o in order if o in present]


def _offsets(n: int, total: float = 0.8) -> tuple[np.ndarray, float]:
    width = total / n
    return (np.arange(n) - (n - 1) / 2) * width, width


def _rate_error_bars(axis: Axes, xs: np.ndarray, heights: np.ndarray, rows: pd.DataFrame) -> bool:
    """Error bars from the bootstrap interval columns, where both ends are numbers; True if any drawn."""
    if not {"detection_rate_ci_low", "detection_rate_ci_high"} <= set(rows.columns):
        return False
    low = pd.to_numeric(rows["detection_rate_ci_low"], errors="coerce").to_numpy(float)
    high = pd.to_numeric(rows["detection_rate_ci_high"], errors="coerce").to_numpy(float)
    ok = np.isfinite(low) & np.isfinite(high)
    if not ok.any():
        return False
    # a percentile interval need not contain the point estimate; clip so the bar lengths stay >= 0
    yerr = np.vstack([np.clip(heights - low, 0, None), np.clip(high - heights, 0, None)])[:, ok]
    axis.errorbar(xs[ok], heights[ok], yerr=yerr, fmt="none", ecolor="0.15", elinewidth=1.0, capsize=3,
                  label="_95% CI")
    return True


@styled
def detection_bars(
    summary: pd.DataFrame,
    *,
    ax: Axes | None = None,
    title: str | None = "Tumor detection rate",
    preset_order: Sequence[str] | None = None,
) -> Figure:
    """Grouped bars of the detection rate per preset (x) and backbone (colour), labelled "k/n".

    Parameters
    ----------
    summary
        One row per (preset, backbone) with columns ``preset, backbone, n_detected, n_cases``
        (cases whose tumor was detected, cases evaluated), and optionally
        ``detection_rate_ci_low, detection_rate_ci_high`` (the bootstrap interval of
        ``summary.json``, 0-1), drawn as error bars where both are numbers.
    ax
        Axes to draw into; ``None`` creates a figure.
    title
        Axes title, or ``None`` for none.
    preset_order
        Presets from left to right; ``None`` keeps the frame's order.

    Returns
    -------
    matplotlib.figure.Figure
        Bar heights are ``n_detected / n_cases``; the y axis shows them as percentages. With
        intervals, the "k/n" labels sit inside the bars so that they do not cover the error bars.

    Raises
    ------
    DataError
        Missing columns, duplicate (preset, backbone) rows, ``n_cases < 1`` or counts outside
        ``0 <= n_detected <= n_cases``.
    ConfigError
        A ``preset_order`` that leaves out presets of the frame.
    """
    what = "detection_bars"
    fix = "pass one row per (preset, backbone) with integer counts, e.g. from train.evaluate.summarize"
    frame = require_frame(summary, ("preset", "backbone", "n_detected", "n_cases"), what=what, fix=fix)
    frame = frame.assign(preset=frame["preset"].astype(str), backbone=frame["backbone"].astype(str))
    require_unique(frame, ["preset", "backbone"], what=what, fix=fix)
    k = pd.to_numeric(frame["n_detected"], errors="coerce").to_numpy(float)
    n = pd.to_numeric(frame["n_cases"], errors="coerce").to_numpy(float)
    bad = ~np.isfinite(k) | ~np.isfinite(n) | (n < 1) | (k < 0) | (k > n) | (k != np.round(k)) | (n != np.round(n))
    if bad.any():
        row = frame.loc[bad].iloc[0]
        raise DataError(f"{what}: counts must be integers with 0 <= n_detected <= n_cases and n_cases >= 1",
                        expected="0 <= n_detected <= n_cases, n_cases >= 1",
                        got=f"n_detected={row['n_detected']}, n_cases={row['n_cases']} for "
                            f"({row['preset']}, {row['backbone']})", fix=fix)
    frame = frame.assign(_k=k.astype(int), _n=n.astype(int))
    presets = _order(frame["preset"], preset_order, "preset")
    backbones = [str(b) for b in unique_in_order(frame["backbone"])]
    offsets, width = _offsets(len(backbones))
    colours = palette(len(backbones))
    # ~0.65 in per bar keeps the horizontal "k/n" labels of neighbouring bars apart.
    fig, (axis,) = figure_and_axes(ax, 1, what=what,
                                   figsize=(max(4.5, 2.8 + 0.65 * len(presets) * len(backbones)), 3.8))
    for j, backbone in enumerate(backbones):
        rows = frame[frame["backbone"] == backbone].set_index("preset")
        here = [p for p in presets if p in rows.index]
        xs = np.array([presets.index(p) for p in here], dtype=float) + offsets[j]
        kk, nn = rows.loc[here, "_k"].to_numpy(), rows.loc[here, "_n"].to_numpy()
        bars = axis.bar(xs, kk / nn, width=width * 0.92, color=colours[j], label=backbone,
                        edgecolor="white", linewidth=0.5)
        drawn = _rate_error_bars(axis, xs, kk / nn, rows.loc[here])
        axis.bar_label(bars, labels=[f"{a}/{b}" for a, b in zip(kk, nn)], padding=2, fontsize="x-small",
                       label_type="center" if drawn else "edge")
    axis.set_xticks(np.arange(len(presets)), labels=presets)
    axis.set_xlim(-0.5, len(presets) - 0.5)
    axis.set_ylim(0.0, 1.15)
    axis.yaxis.set_major_locator(FixedLocator(np.linspace(0, 1, 6).tolist()))
    axis.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    axis.set_xlabel("training preset")
    axis.set_ylabel("detection rate (% of cases)")
    axis.grid(False, axis="x")
    if title:
        axis.set_title(title)
    axis.legend(title="backbone", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _mean_with_interval(axis: Axes, x: float, intervals: pd.DataFrame, key: tuple[str, str], column: str,
                        colour: tuple) -> None:
    """The summary's mean and bootstrap interval of one metric as a diamond with error bars."""
    names = [f"{column}_mean", f"{column}_ci_low", f"{column}_ci_high"]
    if key not in intervals.index or not set(names) <= set(intervals.columns):
        return
    mean, low, high = (float(pd.to_numeric(intervals.loc[key, n], errors="coerce")) for n in names)
    if not (np.isfinite(mean) and np.isfinite(low) and np.isfinite(high)):
        return
    axis.errorbar([x], [mean], yerr=[[max(mean - low, 0.0)], [max(high - mean, 0.0)]], fmt="D", color=colour,
                  markerfacecolor="white", markersize=4, elinewidth=1.2, capsize=2.5, zorder=4)


@styled
def dice_hd95_boxes(
    cases: pd.DataFrame,
    *,
    summary: pd.DataFrame | None = None,
    title: str | None = "Segmentation accuracy per case",
    preset_order: Sequence[str] | None = None,
) -> Figure:
    """Two panels of per-case box plots: Dice (left) and HD95 in mm (right).

    Boxes per preset (x) and backbone (colour), whiskers at 1.5 IQR, every case drawn as a
    point on top. Cases with an undefined value (NaN, e.g. HD95 without a matched lesion) are
    left out of that panel only.

    Parameters
    ----------
    cases
        One row per (preset, backbone, case) with columns ``preset, backbone, case, dice, hd95``.
    summary
        Optional, one row per (preset, backbone) with ``dice_mean, dice_ci_low, dice_ci_high``
        and/or ``hd95_mean, hd95_ci_low, hd95_ci_high`` (``summary.json``): the mean is drawn as
        a white diamond with its bootstrap 95 % interval as error bars, right of its box.
    title
        Figure title, or ``None`` for none.
    preset_order
        Presets from left to right; ``None`` keeps the frame's order.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    DataError
        Missing columns or a case listed twice for one preset and backbone.
    ConfigError
        A ``preset_order`` that leaves out presets of the frame.
    """
    what = "dice_hd95_boxes"
    fix = "pass one row per (preset, backbone, case), e.g. train.evaluate.results_table plus preset/backbone"
    frame = require_frame(cases, ("preset", "backbone", "case", "dice", "hd95"), what=what, fix=fix)
    frame = frame.assign(preset=frame["preset"].astype(str), backbone=frame["backbone"].astype(str))
    require_unique(frame, ["preset", "backbone", "case"], what=what, fix=fix)
    presets = _order(frame["preset"], preset_order, "preset")
    backbones = [str(b) for b in unique_in_order(frame["backbone"])]
    offsets, width = _offsets(len(backbones))
    colours = palette(len(backbones))
    rng = np.random.default_rng(0)  # fixed jitter: the same figure on every run

    from matplotlib.patches import Patch

    intervals = None
    if summary is not None:
        intervals = require_frame(summary, ("preset", "backbone"), what=what, fix="pass summary.json rows")
        intervals = intervals.assign(preset=intervals["preset"].astype(str),
                                     backbone=intervals["backbone"].astype(str))
        require_unique(intervals, ["preset", "backbone"], what=what, fix="pass one summary row per model")
        intervals = intervals.set_index(["preset", "backbone"])

    fig, axes = figure_and_axes(None, 2, what=what,
                                figsize=(max(7.0, 2.0 + 1.3 * len(presets) * len(backbones)), 3.8))
    for axis, column, label in zip(axes, ("dice", "hd95"), ("Dice (0–1)", "HD95 (mm)")):
        for j, backbone in enumerate(backbones):
            for i, preset in enumerate(presets):
                cell = frame[(frame["preset"] == preset) & (frame["backbone"] == backbone)]
                values = pd.to_numeric(cell[column], errors="coerce").to_numpy(float)
                values = values[np.isfinite(values)]
                if values.size == 0:
                    continue
                x = i + offsets[j]
                axis.boxplot([values], positions=[x], widths=width * 0.8, patch_artist=True, showfliers=False,
                             boxprops={"facecolor": (*colours[j], 0.35), "edgecolor": colours[j]},
                             medianprops={"color": colours[j], "linewidth": 2.0},
                             whiskerprops={"color": colours[j]}, capprops={"color": colours[j]})
                jitter = rng.uniform(-width * 0.25, width * 0.25, size=values.size)
                axis.scatter(x + jitter, values, s=10, color=colours[j], alpha=0.8, linewidths=0, zorder=3)
                if intervals is not None:
                    _mean_with_interval(axis, x + width * 0.3, intervals, (preset, backbone), column, colours[j])
        axis.set_xticks(np.arange(len(presets)), labels=presets)
        axis.set_xlim(-0.5, len(presets) - 0.5)
        axis.set_xlabel("training preset")
        axis.set_ylabel(label)
        axis.grid(False, axis="x")
    axes[0].set_ylim(0.0, 1.02)
    axes[1].set_ylim(bottom=0.0)
    axes[0].set_title("Dice (higher is better)")
    axes[1].set_title("HD95 (lower is better)")
    handles = [Patch(facecolor=(*colours[j], 0.35), edgecolor=colours[j], label=b) for j, b in enumerate(backbones)]
    fig.legend(handles=handles, title="backbone", loc="outside right upper")
    if title:
        fig.suptitle(title)
    return fig


@styled
def token_efficiency(
    frame: pd.DataFrame,
    *,
    ax: Axes | Sequence[Axes] | None = None,
    title: str | None = "Token efficiency per stage",
) -> Figure:
    """Token efficiency (real tokens / all tokens) per stage, one line per crop.

    Parameters
    ----------
    frame
        One row per ([arch,] crop, stage) with columns ``crop`` (e.g. ``"96x96x64"``),
        ``stage``, ``efficiency`` (0–1) and optionally ``arch`` -- one panel per architecture.
    ax
        Axes to draw into, one per architecture; ``None`` creates a figure.
    title
        Figure title (``ax=None``) or axes title, or ``None`` for none.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    DataError
        Missing columns or several rows for one (arch, crop, stage), e.g. per-case values
        that still need averaging.
    """
    what = "token_efficiency"
    fix = "pass one efficiency per ([arch,] crop, stage), averaged over cases if needed"
    data = require_frame(frame, ("crop", "stage", "efficiency"), what=what, fix=fix)
    archs = [str(a) for a in unique_in_order(data["arch"])] if "arch" in data.columns else [None]
    data = data.assign(crop=data["crop"].astype(str))
    if archs != [None]:
        data = data.assign(arch=data["arch"].astype(str))
    require_unique(data, (["arch"] if archs != [None] else []) + ["crop", "stage"], what=what, fix=fix)
    crops = [str(c) for c in unique_in_order(data["crop"])]
    colours = palette(len(crops))
    fig, axes = figure_and_axes(ax, len(archs), what=what, sharey=True, figsize=(1.2 + 4.0 * len(archs), 3.6))
    for arch, axis in zip(archs, axes):
        sub = data if arch is None else data[data["arch"] == arch]
        for i, crop in enumerate(crops):
            line = sub[sub["crop"] == crop].sort_values("stage")
            if line.empty:
                continue
            axis.plot(line["stage"].to_numpy(), line["efficiency"].to_numpy(float), color=colours[i],
                      marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)],
                      label=crop.replace("x", "×"))
        stages = np.sort(sub["stage"].unique())
        axis.xaxis.set_major_locator(FixedLocator(stages.astype(float).tolist()))
        axis.set_xlabel("stage")
        if ax is not None or axis is axes[0]:
            axis.set_ylabel("token efficiency (real / all tokens)")
        axis.set_ylim(0.0, 1.05)
        axis.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        if arch is not None:
            axis.set_title(arch)
        axis.legend(title="crop (voxels)", loc="best")
    if title:
        if ax is None and archs != [None]:
            fig.suptitle(title)
        else:
            axes[0].set_title(title)
    return fig


@styled
def tumor_clusters(
    frame: pd.DataFrame,
    *,
    x: str = "mean",
    y: str = "cv",
    cluster: str = "cluster",
    ax: Axes | None = None,
    title: str | None = "Tumor appearance clusters",
    x_label: str | None = None,
    y_label: str | None = None,
) -> Figure:
    """Scatter of two per-case tumor features, coloured (and marked) by cluster.

    Parameters
    ----------
    frame
        One row per case with the columns ``x``, ``y`` and ``cluster`` (integer labels; ``-1``
        marks cases left out of the clustering and is drawn as grey crosses "unclustered").
    x, y
        Feature columns on the horizontal and vertical axes, e.g. from
        :func:`attnprobe.data.tumor_stats.tumor_tables`.
    cluster
        Column of cluster labels, e.g. ``ClusterResult.labels`` joined on ``case``.
    ax
        Axes to draw into; ``None`` creates a figure.
    title
        Axes title, or ``None`` for none.
    x_label, y_label
        Axis labels; ``None`` uses :data:`FEATURE_LABELS` (or the column name).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    DataError
        Missing columns.
    """
    what = "tumor_clusters"
    data = require_frame(frame, (x, y, cluster), what=what,
                         fix="join the cluster labels onto the wide feature table (one row per case)")
    labels = unique_in_order(data[cluster])
    ordered = sorted((lab for lab in labels if str(lab) != "-1"), key=lambda v: (str(type(v)), v))
    if any(str(lab) == "-1" for lab in labels):
        ordered.append(next(lab for lab in labels if str(lab) == "-1"))
    colours = palette(len(ordered))
    fig, (axis,) = figure_and_axes(ax, 1, what=what, figsize=(6.4, 4.2))
    for i, lab in enumerate(ordered):
        cell = data[data[cluster] == lab]
        unclustered = str(lab) == "-1"
        axis.scatter(pd.to_numeric(cell[x], errors="coerce"), pd.to_numeric(cell[y], errors="coerce"),
                     color="0.55" if unclustered else colours[i], marker="x" if unclustered else MARKERS[i % len(MARKERS)],
                     s=36, alpha=0.9, edgecolors="white" if not unclustered else None, linewidths=0.5 if not unclustered else 1.0,
                     label=f"unclustered (n = {len(cell)})" if unclustered else f"{lab} (n = {len(cell)})")
    axis.set_xlabel(x_label if x_label is not None else FEATURE_LABELS.get(x, x))
    axis.set_ylabel(y_label if y_label is not None else FEATURE_LABELS.get(y, y))
    if title:
        axis.set_title(title)
    axis.legend(title="cluster", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig
