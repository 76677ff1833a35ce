"""Figure of a padding ablation (``attnprobe ablate``, ``docs/ablation.md``).

:func:`ablation_deltas`: the change of a segmentation metric against the plain forward
(``none``) vs input padding, one line per intervention, with the percentile bootstrap 95 %
interval over cases as a band. The input is the summary frame of
:func:`attnprobe.train.ablation.ablation_summary`; nothing is computed here.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    figure_and_axes,
    palette,
    require_frame,
    require_unique,
    styled,
    unique_in_order,
)

__all__ = ["DELTA_LABELS", "ablation_deltas"]

DELTA_LABELS: dict[str, str] = {
    "dice": "Δ Dice vs no edit",
    "detection": "Δ detection rate vs no edit",
    "hd95": "Δ HD95 vs no edit (mm)",
    "adi": "Δ model ADI vs no edit",
}
_FIX = "pass the frame of attnprobe.train.ablation.ablation_summary (or summary.csv of attnprobe ablate)"


@styled
def ablation_deltas(summary: pd.DataFrame, *, metrics: Sequence[str] = ("dice", "detection"),
                    ax: Axes | Sequence[Axes] | None = None, show_baseline: bool = False) -> Figure:
    """Change of each metric against ``none`` vs padding, one line per intervention.

    Parameters
    ----------
    summary
        One row per (intervention, padding) with ``delta_{m}``, ``delta_{m}_ci_low`` and
        ``delta_{m}_ci_high`` for every metric shown.
    metrics
        Panels, among ``dice``, ``detection``, ``hd95``, ``adi``.
    ax
        One Axes per metric, or ``None`` for a new figure.
    show_baseline
        Also draw the ``none`` line (zero by construction).

    Returns
    -------
    matplotlib.figure.Figure
    """
    what = "ablation_deltas"
    metrics = [choice(m, "metric", DELTA_LABELS) for m in metrics]
    columns = ["intervention", "padding"] + [f"delta_{m}{s}" for m in metrics for s in ("", "_ci_low", "_ci_high")]
    frame = require_frame(summary, columns, what=what, fix=_FIX)
    require_unique(frame, ["intervention", "padding"], what=what, fix=_FIX)
    names = [n for n in unique_in_order(frame["intervention"]) if show_baseline or n != "none"]
    if not names:
        raise DataError(f"{what}: nothing to draw besides the baseline", expected="an intervention other than 'none'",
                        got=str(unique_in_order(frame["intervention"])), fix="run more than the 'none' intervention")
    fig, axes = figure_and_axes(ax, len(metrics), what=what, figsize=(1.0 + 4.2 * len(metrics), 4.3))
    colours = palette(len(names))
    paddings = np.sort(frame["padding"].unique().astype(float))
    for metric, axis in zip(metrics, axes):
        for i, name in enumerate(names):
            rows = frame[frame["intervention"] == name].sort_values("padding")
            x = rows["padding"].to_numpy(float)
            y = rows[f"delta_{metric}"].to_numpy(float)
            low, high = rows[f"delta_{metric}_ci_low"].to_numpy(float), rows[f"delta_{metric}_ci_high"].to_numpy(float)
            axis.plot(x, y, color=colours[i], marker=MARKERS[i % len(MARKERS)],
                      linestyle=LINESTYLES[i % len(LINESTYLES)], label=name)
            if np.isfinite(low).any():
                axis.fill_between(x, low, high, color=colours[i], alpha=0.15, linewidth=0)
        axis.axhline(0.0, color="0.3", linewidth=0.8)
        axis.xaxis.set_major_locator(FixedLocator(paddings.tolist()))
        axis.set_xlabel("input padding (voxels)")
        axis.set_ylabel(DELTA_LABELS[metric])
    n = frame["n_cases"].max() if "n_cases" in frame.columns else None
    handles, labels = axes[0].get_legend_handles_labels()
    if ax is None:
        fig.legend(handles, labels, title="intervention", loc="outside lower center", ncols=min(len(labels), 4))
        fig.suptitle("change against the unedited forward, bootstrap 95 % interval over "
                     + (f"{int(n)} cases" if n is not None and np.isfinite(n) else "cases"))
    else:
        axes[-1].legend(handles, labels, title="intervention", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig
