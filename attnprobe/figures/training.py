"""Training curves: loss per step (and validation Dice) of fine-tuning runs.

The input is the trainer's ``metrics.csv`` (:mod:`attnprobe.train.trainer`): one row per step
(``epoch, step, loss, val_dice, lr, time`` with ``val_dice`` empty) plus one row per validation
(``val_dice`` filled, ``loss`` the epoch mean, ``step`` that of the epoch's last step), one or
more runs stacked with ``preset`` and ``backbone`` columns naming each run.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

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

__all__ = ["training_curves"]


@styled
def training_curves(
    metrics: pd.DataFrame,
    *,
    smooth: int = 5,
    ax: Axes | list[Axes] | None = None,
    title: str | None = "Fine-tuning",
) -> Figure:
    """Loss against optimiser step per run, one panel per backbone, one colour per preset.

    Each run is drawn twice: its per-step loss as a thin faint line and the trailing mean of
    the last ``smooth`` steps as a solid line (steps are noisy with one or two crops per
    batch). Validation Dice, where the frame has it, is drawn as markers against a second
    y axis (0–1) on the right.

    Parameters
    ----------
    metrics
        Tidy frame with columns ``step``, ``loss`` and optionally ``val_dice`` (filled on
        validation rows, whose loss is not drawn), ``preset`` and ``backbone`` (absent: one
        run, one panel).
    smooth
        Steps in the trailing mean; ``1`` draws the raw loss only.
    ax
        Axes to draw into (one per backbone); ``None`` creates a figure.
    title
        Figure title, or ``None`` for none.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    DataError
        Missing ``step``/``loss`` columns, non-numeric values, a run without step rows or a
        step that appears twice among one run's step rows.
    ConfigError
        ``smooth < 1``.
    """
    what = "training_curves"
    fix = "pass the trainer's metrics.csv rows, with preset/backbone columns naming each run"
    frame = require_frame(metrics, ("step", "loss"), what=what, fix=fix)
    if int(smooth) != smooth or smooth < 1:
        raise ConfigError(f"{what}: smooth must be a whole number of steps >= 1", expected="smooth >= 1",
                          got=repr(smooth), fix="pass smooth=1 to draw the raw loss only")
    frame = frame.assign(preset=frame["preset"].astype(str) if "preset" in frame.columns else "run",
                         backbone=frame["backbone"].astype(str) if "backbone" in frame.columns else "model")
    for column in ("step", "loss", "val_dice"):
        if column in frame.columns:
            values = pd.to_numeric(frame[column], errors="coerce")
            if column != "val_dice" and values.isna().any():
                raise DataError(f"{what}: column {column!r} must be numeric", expected="numbers on every row",
                                got=f"{int(values.isna().sum())} missing or non-numeric value(s)", fix=fix)
            frame[column] = values
    is_val = frame["val_dice"].notna() if "val_dice" in frame.columns else pd.Series(False, index=frame.index)
    validation, frame = frame[is_val], frame[~is_val]
    if frame.empty:
        raise DataError(f"{what}: no step rows", expected="rows with an empty val_dice (one per step)",
                        got=f"{len(validation)} validation row(s) only", fix=fix)
    require_unique(frame, ["backbone", "preset", "step"], what=what, fix=fix)
    has_val = not validation.empty

    backbones = [str(b) for b in unique_in_order(frame["backbone"])]
    presets = [str(p) for p in unique_in_order(frame["preset"])]
    colours = dict(zip(presets, palette(len(presets))))
    fig, axes = figure_and_axes(ax, len(backbones), what=what, figsize=(0.8 + 4.4 * len(backbones), 3.6),
                                sharey=True)
    handles: dict[str, Any] = {}
    for axis, backbone in zip(axes, backbones):
        twin = axis.twinx() if has_val else None
        for j, preset in enumerate(presets):
            run = frame[(frame["backbone"] == backbone) & (frame["preset"] == preset)].sort_values("step")
            if run.empty:
                continue
            steps, loss = run["step"].to_numpy(float), run["loss"].to_numpy(float)
            colour = colours[preset]
            if smooth > 1:
                axis.plot(steps, loss, color=colour, alpha=0.3, linewidth=0.8)
                trend = pd.Series(loss).rolling(int(smooth), min_periods=1).mean().to_numpy()
            else:
                trend = loss
            (line,) = axis.plot(steps, trend, color=colour, linewidth=1.8, linestyle=LINESTYLES[j % len(LINESTYLES)],
                                label=preset)
            handles.setdefault(preset, line)
            if twin is not None:
                val = validation[(validation["backbone"] == backbone) & (validation["preset"] == preset)]
                twin.plot(val["step"].to_numpy(float), val["val_dice"].to_numpy(float), color=colour,
                          marker=MARKERS[j % len(MARKERS)], linestyle="none", markersize=6,
                          markeredgecolor="white")
        axis.set_title(backbone)
        axis.set_xlabel("optimiser step")
        if twin is not None:
            twin.set_ylim(0.0, 1.0)
            twin.grid(False)
            if axis is axes[-1]:
                twin.set_ylabel("validation Dice (markers, 0–1)")
            else:
                twin.tick_params(right=False, labelright=False)
    axes[0].set_ylabel("Dice-CE loss" + (f" ({smooth}-step mean)" if smooth > 1 else ""))
    if ax is None:  # our constrained-layout figure: the legend goes beside the panels, off the curves
        fig.legend(list(handles.values()), list(handles), title="preset", loc="outside right upper", frameon=False)
    else:
        axes[-1].legend(list(handles.values()), list(handles), title="preset", loc="best", frameon=False)
    if title:
        fig.suptitle(title)
    return fig
