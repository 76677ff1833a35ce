"""Attention-flow matrices ``[[A_rr, A_rp], [A_pr, A_pp]]`` per stage (docs/definitions.md).

Takes the stage-level tidy frame described in :mod:`attnprobe.figures.adi` and shows the
mean over cases of each flow cell at one padding amount.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from attnprobe.errors import DataError
from attnprobe.figures.adi import _KINDS, PaddingKind, _models, _select, _stage_frame
from attnprobe.figures.style import (
    SEQUENTIAL_CMAP,
    choice,
    count,
    figure_and_axes,
    require_unique,
    styled,
    unique_in_order,
)

__all__ = ["flow_matrices"]


@styled
def flow_matrices(
    stage_frame: pd.DataFrame,
    *,
    padding: float,
    kind: PaddingKind = "all",
    model: str | None = None,
    title: str | None = None,
) -> Figure:
    """2×2 attention-flow matrices ``[[A_rr, A_rp], [A_pr, A_pp]]`` per stage, mean over cases.

    Rows are the query class (real / padding), columns the key class; each cell is the mean
    over cases of the attention mass a query of the row class puts on keys of the column class
    (so rows sum to about 1). One heatmap per stage on a shared 0–1 colour scale, values
    annotated.

    Parameters
    ----------
    stage_frame
        Stage-level tidy frame (see :func:`adi_vs_padding`) holding metrics ``a_rr, a_rp,
        a_pr, a_pp``.
    padding
        Padding amount (voxels) to show; must be one of the frame's ``padding`` values.
    kind
        Padding kind: ``"input"``, ``"window"`` or ``"all"``.
    model
        Model to show when the frame has a ``model`` column with several models.
    title
        Figure title; ``None`` writes one from the model, padding amount and kind, and case count.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    DataError
        Missing columns or metrics, a padding amount or model not in the frame, or a case that
        appears twice in one cell.
    ConfigError
        Unknown ``kind``.
    """
    what = "flow_matrices"
    kind = choice(kind, "kind", _KINDS)
    frame = _stage_frame(stage_frame, what=what)
    models = _models(frame)
    if models != [None]:
        if model is None and len(models) > 1:
            raise DataError(f"{what} draws one model", expected="model= one of the frame's models",
                            got=f"model=None with models {models}", fix="pass model=...")
        chosen = models[0] if model is None else model
        frame = _select(frame, "model", [chosen], what=what)
        model = str(chosen)
    elif model is not None:
        raise DataError(f"{what}: model= given but the frame has no 'model' column",
                        expected="a 'model' column", got=f"columns {list(frame.columns)}",
                        fix="drop model= or add the column")
    paddings = np.sort(frame["padding"].unique().astype(float))
    hit = np.isclose(frame["padding"].to_numpy(float), float(padding))
    if not hit.any():
        raise DataError(f"{what}: padding amount not in the frame", expected=f"one of {paddings.tolist()}",
                        got=repr(padding), fix="pass padding= one of the swept amounts")
    frame = _select(frame[hit], "kind", [kind], what=what)
    cells = (("a_rr", "a_rp"), ("a_pr", "a_pp"))
    names = [m for row in cells for m in row]
    frame = frame[frame["metric"].isin(names)]
    present = set(frame["metric"])
    if present != set(names):
        raise DataError(f"{what} needs the four flow metrics", expected=", ".join(names),
                        got=f"metrics {sorted(present)}", fix="keep every metric of stage_means")
    require_unique(frame, ["case", "stage", "metric"], what=what,
                   fix="aggregate blocks to stages and keep one value per case")
    means = frame.groupby(["stage", "metric"])["value"].mean()
    stages = sorted(unique_in_order(frame["stage"]))
    n_cases = frame["case"].nunique()

    fig, axes = figure_and_axes(None, len(stages), what=what, figsize=(0.9 + 2.5 * len(stages), 3.3))
    image = None
    for axis, stage in zip(axes, stages):
        matrix = np.array([[means.get((stage, m), np.nan) for m in row] for row in cells], dtype=float)
        image = axis.imshow(matrix, cmap=SEQUENTIAL_CMAP, vmin=0.0, vmax=1.0, aspect="equal")
        for (r, c), v in np.ndenumerate(matrix):
            axis.text(c, r, "–" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center",
                      color="black" if np.isfinite(v) and v > 0.6 else "white")
        axis.set_xticks([0, 1], labels=["key:\nreal", "key:\npad"])
        axis.set_yticks([0, 1], labels=["query:\nreal", "query:\npad"] if axis is axes[0] else ["", ""])
        axis.tick_params(length=0)
        axis.grid(False)
        axis.set_title(f"stage {stage}")
    cbar = fig.colorbar(cast(AxesImage, image), ax=axes, shrink=0.85, pad=0.02)  # every panel drew one
    cbar.set_label("attention fraction (0–1)")
    head = f"{model}: " if model is not None else ""
    if title is None:
        title = (f"{head}Attention flow at padding = {float(padding):g} voxels "
                 f"({kind} padding; mean of {count(n_cases, 'case')})")
    fig.suptitle(title)
    return fig
