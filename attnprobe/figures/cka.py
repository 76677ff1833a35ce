"""Figures of centered kernel alignment between two models' blocks (docs/cka.md).

- :func:`cka_heatmap`: the ``ref x tgt`` CKA matrix on a fixed 0–1 colour scale.
- :func:`feature_reuse_lines`: the diagonal (same block in both models) of several such
  matrices, one line per model compared with the pretrained one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from attnprobe.errors import ConfigError, DataError
from attnprobe.figures.style import (
    LINESTYLES,
    MARKERS,
    SEQUENTIAL_CMAP,
    figure_and_axes,
    palette,
    styled,
    unique_in_order,
)

__all__ = ["cka_heatmap", "feature_reuse_lines"]

_ANNOTATE_MAX = 10  # annotate cells when both sides have at most this many blocks ("auto")


def _mark_baseline(axis: Axes, m: xr.DataArray) -> str:
    """Hatch the cells whose interval does not clear the random-init baseline (coordinate
    ``distinct_from_baseline`` of :func:`attnprobe.metrics.reuse.compare_models`)."""
    if "distinct_from_baseline" not in m.coords:
        return ""
    from matplotlib.patches import Rectangle

    same = ~np.asarray(m.coords["distinct_from_baseline"].values, dtype=bool)
    for r, c in zip(*np.nonzero(same)):
        axis.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, hatch="////", edgecolor="white",
                                 linewidth=0, gid="cka-not-above-baseline"))
    seeds = m.attrs.get("baseline_seeds", "?")
    return (f"hatched: 95% CI not above the random-init baseline\n({seeds} seeds; "
            f"{int(same.sum())} of {same.size} cells)")


@styled
def cka_heatmap(
    matrix: xr.DataArray,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    ref_label: str = "reference",
    tgt_label: str = "target",
    annotate: bool | Literal["auto"] = "auto",
) -> Figure:
    """Heatmap of a CKA matrix between the blocks of two models.

    Rows are the reference model's blocks (top to bottom), columns the target's (left to
    right), so matching blocks lie on the main diagonal. The colour scale is fixed to 0–1
    (``viridis``); values outside it (the unbiased estimator can go slightly below 0) are
    drawn at the end colours and the colorbar shows an extension.

    Parameters
    ----------
    matrix
        CKA values with dims ``("ref", "tgt")`` (either order) whose coordinates are block
        names, e.g. ``stage1.block0.out``.
    ax
        Axes to draw into; ``None`` creates a figure.
    title
        Title (of the figure when ``ax`` is ``None``, else of ``ax``); ``None`` gives
        ``"CKA: <ref_label> vs <tgt_label>"``.
    ref_label, tgt_label
        Names of the two models, used in the axis labels.
    annotate
        Write each value in its cell; ``"auto"`` does so when both sides have at most 10
        blocks.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    DataError
        Not a 2-D ``DataArray`` with dims ``ref`` and ``tgt``, or values that are not finite.
    ConfigError
        Bad ``annotate`` value.
    """
    if not isinstance(matrix, xr.DataArray) or set(matrix.dims) != {"ref", "tgt"}:
        got = f"dims {tuple(matrix.dims)}" if isinstance(matrix, xr.DataArray) else type(matrix).__name__
        raise DataError("cka_heatmap takes a 2-D DataArray with dims ('ref', 'tgt')",
                        expected="xarray.DataArray dims ('ref', 'tgt') with block-name coords", got=got,
                        fix="wrap the matrix: xr.DataArray(m, dims=('ref', 'tgt'), coords={'ref': names1, 'tgt': names2})")
    if annotate not in (True, False, "auto"):
        raise ConfigError("bad annotate value", expected="True | False | 'auto'", got=repr(annotate),
                          fix="pass annotate='auto'")
    m = matrix.transpose("ref", "tgt")
    values = np.asarray(m.values, dtype=float)
    if not np.all(np.isfinite(values)):
        raise DataError("the CKA matrix holds non-finite values", expected="finite values",
                        got=f"{int((~np.isfinite(values)).sum())} NaN/inf cells",
                        fix="recompute CKA (the unbiased estimator needs n >= 4 examples)")
    refs = [str(v) for v in (m["ref"].values if "ref" in m.coords else range(values.shape[0]))]
    tgts = [str(v) for v in (m["tgt"].values if "tgt" in m.coords else range(values.shape[1]))]
    # Size from the content: cells of ~0.55 in (0.4 in for big matrices) plus room for the
    # block names (y labels flat, x labels at 45 degrees), the colorbar and the titles.
    cell = 0.55 if max(values.shape) <= _ANNOTATE_MAX else 0.4
    longest_ref, longest_tgt = max(map(len, refs)), max(map(len, tgts))
    figsize = (2.4 + 0.075 * longest_ref + cell * len(tgts), 1.5 + 0.055 * longest_tgt + cell * len(refs))
    fig, (axis,) = figure_and_axes(ax, 1, what="cka_heatmap", figsize=figsize)
    image = axis.imshow(values, cmap=SEQUENTIAL_CMAP, vmin=0.0, vmax=1.0, aspect="equal",
                        interpolation="nearest")
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
        (bool((values < 0).any()), bool((values > 1).any()))]
    cbar = fig.colorbar(image, ax=axis, extend=extend, shrink=0.9)
    cbar.set_label("CKA")
    if annotate is True or (annotate == "auto" and max(values.shape) <= _ANNOTATE_MAX):
        for (r, c), v in np.ndenumerate(values):
            axis.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize="x-small",
                      color="black" if v > 0.6 else "white")
    note = _mark_baseline(axis, m)
    axis.set_xticks(np.arange(len(tgts)), labels=tgts, rotation=45, ha="right", rotation_mode="anchor")
    axis.set_yticks(np.arange(len(refs)), labels=refs)
    axis.tick_params(length=0)
    axis.grid(False)
    axis.set_xlabel(f"{tgt_label} block" + (f"\n{note}" if note else ""))
    axis.set_ylabel(f"{ref_label} block")
    text = title if title is not None else f"CKA: {ref_label} vs {tgt_label}"
    if ax is None:
        fig.suptitle(text)  # a figure-wide title has room beyond a small matrix
    else:
        axis.set_title(text)
    return fig


def _series(name: str, values: Any) -> pd.Series:
    if isinstance(values, xr.DataArray):
        if values.ndim != 1 or values.dims[0] not in values.coords:
            raise DataError(f"diagonal {name!r} must be 1-D with block-name coordinates",
                            expected="a 1-D DataArray whose dim has coords (block names)",
                            got=f"dims {values.dims}, coords {list(values.coords)}",
                            fix="assign the block names as the coordinate of its dim")
        return values.to_series()
    if isinstance(values, pd.Series):
        return values
    raise DataError(f"diagonal {name!r} must be a pandas Series or a 1-D DataArray", expected="Series indexed by block",
                    got=type(values).__name__, fix="pass pd.Series(values, index=block_names)")


@styled
def feature_reuse_lines(
    diagonals: Mapping[str, pd.Series | xr.DataArray],
    *,
    ax: Axes | None = None,
    reference: str = "pretrained",
    title: str | None = None,
) -> Figure:
    """Feature reuse: CKA of each block with the same block of the reference model.

    One line per model (colour, marker and line style differ), blocks along x in the order
    they first appear across the diagonals; a block a model lacks is a gap in its line.

    Parameters
    ----------
    diagonals
        Model name -> diagonal CKA values (a ``pandas.Series`` or 1-D ``DataArray`` indexed by
        block name), e.g. the diagonal of :func:`cka_heatmap`'s matrix for each fine-tuned
        model against the pretrained one.
    ax
        Axes to draw into; ``None`` creates a figure.
    reference
        Name of the reference model, used in the y label.
    title
        Axes title; ``None`` gives ``"Feature reuse across blocks"``.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    DataError
        An empty mapping, a diagonal that is not a Series/1-D DataArray, or duplicate block
        names within one diagonal.
    """
    if not isinstance(diagonals, Mapping) or not diagonals:
        raise DataError("feature_reuse_lines needs at least one diagonal", expected="a non-empty dict name -> Series",
                        got=repr(type(diagonals).__name__), fix="pass {'fine-tuned': diag_series, ...}")
    series = {str(k): _series(str(k), v) for k, v in diagonals.items()}
    for name, s in series.items():
        if s.index.duplicated().any():
            raise DataError(f"diagonal {name!r} names a block twice", expected="unique block names",
                            got=f"duplicates {s.index[s.index.duplicated()].tolist()}", fix="pass one value per block")
    blocks = unique_in_order(str(b) for s in series.values() for b in s.index)
    longest = max(map(len, blocks))
    fig, (axis,) = figure_and_axes(ax, 1, what="feature_reuse_lines",
                                   figsize=(max(5.0, 1.6 + 0.6 * len(blocks)) + 0.09 * max(map(len, series)) + 0.6,
                                            3.2 + 0.055 * longest))
    colours = palette(len(series))
    x = np.arange(len(blocks))
    for i, (name, s) in enumerate(series.items()):
        y = s.rename(index=str).reindex(blocks).to_numpy(dtype=float)
        axis.plot(x, y, color=colours[i], marker=MARKERS[i % len(MARKERS)],
                  linestyle=LINESTYLES[i % len(LINESTYLES)], label=name)
    axis.set_xticks(x, labels=blocks, rotation=45, ha="right", rotation_mode="anchor")
    axis.set_xlim(-0.5, len(blocks) - 0.5)
    axis.set_ylim(0.0, 1.05)
    axis.set_xlabel("block")
    axis.set_ylabel(f"CKA with {reference}\n(same block)")
    axis.set_title(title if title is not None else "Feature reuse across blocks")
    axis.legend(title="model", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig
