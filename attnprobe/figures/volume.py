"""Attention drawn on the input volume: three orthogonal slices with an overlay.

The figure takes the attention already in voxel space, an array with the image's ``(x, y, z)``
shape. Mapping token-level attention (window order, per stage) back to voxels -- undoing the
window partition and shift, then spreading each token's mass over its ``2 * 2**stage`` voxel
patch and cropping the window padding -- depends on the model's geometry, so it is done by the
capture/metrics code that owns that geometry, not here. This module only draws.

Axes follow MONAI's RAS array order (docs/definitions.md): ``x`` (R–L), ``y`` (A–P), ``z`` (S–I, axial).
Slices are drawn with the first displayed axis horizontal and the second vertical, index 0 at
the bottom-left (``origin="lower"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Patch

from attnprobe.errors import ConfigError, DataError, ShapeError
from attnprobe.figures.style import styled

__all__ = ["attention_on_volume", "ATTENTION_CMAP"]

_PAD_COLOUR = "#56b4e9"  # sky blue of the colour-blind palette: distinct from the attention map


def _alpha_cmap(name: str = "inferno", *, max_alpha: float = 0.6) -> ListedColormap:
    # Transparent at 0 so the anatomy shows where attention is absent; at most 60% opaque so
    # the anatomy still shows through where attention is dense (it usually is).
    import matplotlib as mpl

    base = mpl.colormaps[name](np.linspace(0.15, 1.0, 256))
    base[:, 3] = max_alpha * np.linspace(0.0, 1.0, 256) ** 0.5
    return ListedColormap(base, name=f"{name}_alpha")


ATTENTION_CMAP = _alpha_cmap()
"""Attention overlay colormap: ``inferno`` (colour-blind-safe) with alpha rising from 0."""

# (panel name, fixed axis, displayed horizontal axis, displayed vertical axis)
_VIEWS = (("axial", 2, 0, 1), ("coronal", 1, 0, 2), ("sagittal", 0, 1, 2))
_AXIS_NAMES = ("x", "y", "z")


def _volume(a: Any, name: str, *, dtype: Any = float) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise DataError(f"{name} is not a numeric array", expected="an (x, y, z) numpy array",
                        got=type(a).__name__, fix=f"pass {name} as a numpy array") from err
    if arr.ndim != 3:
        raise ShapeError(f"{name} must be a 3-D volume", expected="shape (x, y, z)", got=f"shape {arr.shape}",
                         fix="drop channel/batch dims, e.g. image[0]")
    return arr


def _attention_range(att: np.ndarray, *, robust: bool) -> tuple[float, float]:
    """Colour limits: 0 to the 98th percentile of the non-zero values (robust) or to the maximum."""
    peak = float(att.max())
    if peak <= 0:
        return 0.0, 1.0
    if not robust:
        return 0.0, peak
    # Zeros are windows no real query looks into (all padding): they would pull the
    # percentile down in volumes with much padding.
    hi = float(np.percentile(att[att > 0], 98.0))
    return 0.0, hi if hi > 0 else peak


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    # (horizontal, vertical) -> imshow wants (rows=vertical, cols=horizontal): transpose.
    return np.take(volume, index, axis=axis).T


def _padding_overlay(axis: Any, mask2d: np.ndarray) -> None:
    """Hatch and outline the padding region of one slice (mask2d is (rows, cols), True = pad)."""
    if not mask2d.any():
        return
    # Edge-replicated border with coordinates at the outer voxel edges, so the hatched region
    # reaches the image border instead of stopping at the last voxel centre.
    z = np.pad(mask2d.astype(float), 1, mode="edge")
    rows, cols = mask2d.shape
    xs = np.concatenate([[-0.5], np.arange(cols, dtype=float), [cols - 0.5]])
    ys = np.concatenate([[-0.5], np.arange(rows, dtype=float), [rows - 0.5]])
    import matplotlib as mpl

    with mpl.rc_context({"hatch.color": _PAD_COLOUR, "hatch.linewidth": 0.8}):
        axis.contourf(xs, ys, z, levels=[0.5, 1.5], colors="none", hatches=["////"])
    if not mask2d.all():
        axis.contour(xs, ys, z, levels=[0.5], colors=[_PAD_COLOUR], linewidths=1.0)


@styled
def attention_on_volume(
    image: np.ndarray,
    attention: np.ndarray,
    *,
    padding_mask: np.ndarray | None = None,
    slices: Sequence[int] | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str | None = "Attention on the input volume",
    attention_label: str = "attention mass per voxel (a.u.)",
    robust: bool = True,
) -> Figure:
    """Axial, coronal and sagittal slices of a volume with the attention mass overlaid.

    The image is drawn in grey (one intensity scale for the three panels), the attention on
    top with a transparent-to-opaque ``inferno`` colormap (one scale for the three panels,
    shown in a colorbar), and the padding region hatched and outlined.

    A few voxels can hold far more mass than the rest (a token attending to itself, a hot
    spot at the padding boundary), and a scale up to that maximum leaves everything else one
    dim colour. With ``robust=True`` (as in xarray's plotting) the scale runs from 0 to the
    98th percentile of the non-zero attention: higher values saturate (the colorbar's top is
    extended). The low end stays at 0 so that colours keep ratios: nearly uniform attention
    looks nearly uniform instead of being stretched into a pattern.

    Parameters
    ----------
    image
        Intensities, shape ``(x, y, z)``.
    attention
        Attention mass already mapped to voxel space, same shape as ``image`` and >= 0 (see
        the module docstring: the mapping from tokens to voxels is done elsewhere).
    padding_mask
        Boolean ``(x, y, z)`` array, True on padding voxels (the complement of the real-voxel
        mask tracked through preprocessing), or ``None`` to draw no padding.
    slices
        Voxel indices ``(x, y, z)`` of the sagittal, coronal and axial planes; ``None`` takes
        the centre of each axis.
    spacing
        Voxel size in mm along ``(x, y, z)``; sets each panel's aspect ratio.
    title
        Figure title, or ``None`` for none.
    attention_label
        Colorbar label.
    robust
        Scale from 0 to the 98th percentile instead of 0 to the maximum.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ShapeError
        Arrays that are not 3-D or whose shapes differ.
    DataError
        Non-numeric arrays, non-finite or negative attention.
    ConfigError
        Slice indices out of range, or bad spacing.
    """
    img = _volume(image, "image")
    att = _volume(attention, "attention")
    if att.shape != img.shape:
        raise ShapeError("attention must have the image's shape", expected=f"shape {img.shape}",
                         got=f"shape {att.shape}", fix="map the attention to voxel space first")
    if not np.all(np.isfinite(att)) or (att < 0).any():
        raise DataError("attention must be finite and non-negative", expected="values >= 0",
                        got=f"min {np.nanmin(att):g}, {int((~np.isfinite(att)).sum())} non-finite",
                        fix="pass attention probabilities (mass), not logits")
    mask = None
    if padding_mask is not None:
        mask = _volume(padding_mask, "padding_mask", dtype=bool)
        if mask.shape != img.shape:
            raise ShapeError("padding_mask must have the image's shape", expected=f"shape {img.shape}",
                             got=f"shape {mask.shape}", fix="pass the padding mask of this volume")
    index = tuple(s // 2 for s in img.shape) if slices is None else tuple(int(i) for i in slices)
    if len(index) != 3 or any(not 0 <= i < n for i, n in zip(index, img.shape)):
        raise ConfigError("slice indices out of range", expected=f"(x, y, z) with 0 <= index < {img.shape}",
                          got=repr(slices), fix="pass slices=(x, y, z) inside the volume, or None")
    sp = np.asarray(spacing, dtype=float)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or (sp <= 0).any():
        raise ConfigError("spacing must be three positive sizes in mm", expected="(sx, sy, sz) > 0",
                          got=repr(spacing), fix="pass e.g. spacing=(1.0, 1.0, 1.0)")

    finite = img[np.isfinite(img)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    vmin, vmax = _attention_range(att, robust=robust)

    import matplotlib.pyplot as plt

    # Panel widths in proportion to their physical extents keep the three views at one scale.
    extents = img.shape * sp
    widths = [extents[h] for _, _, h, _ in _VIEWS]
    fig, axes = plt.subplots(1, 3, figsize=(11.0, 4.2), layout="constrained",
                             gridspec_kw={"width_ratios": widths})
    overlay = None
    for axis, (name, fixed, h, v) in zip(axes, _VIEWS):
        k = index[fixed]
        aspect = sp[v] / sp[h]
        axis.imshow(_slice(img, fixed, k), cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect,
                    interpolation="nearest")
        overlay = axis.imshow(_slice(att, fixed, k), cmap=ATTENTION_CMAP, vmin=vmin, vmax=vmax, origin="lower",
                              aspect=aspect, interpolation="nearest")
        if mask is not None:
            _padding_overlay(axis, _slice(mask, fixed, k))
        axis.set_title(f"{name} ({_AXIS_NAMES[fixed]} = {k})")
        axis.set_xlabel(f"{_AXIS_NAMES[h]} (voxels)")
        axis.set_ylabel(f"{_AXIS_NAMES[v]} (voxels)")
        axis.grid(False)
    cbar = fig.colorbar(cast(AxesImage, overlay), ax=list(axes), shrink=0.8, pad=0.02, extend="max" if robust else "neither")
    cbar.set_label(attention_label)
    if mask is not None:
        fig.legend(handles=[Patch(facecolor="none", edgecolor=_PAD_COLOUR, hatch="////", label="padding")],
                   loc="outside lower center", frameon=False)
    if title:
        fig.suptitle(title)
    return fig
