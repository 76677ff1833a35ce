"""Turn block outputs into CKA examples using named axes (docs/definitions.md, docs/cka.md).

Block outputs of both backbones are channel-last ``(sample, x, y, z, channel)``. Pooling by
position (``adaptive_avg_pool3d`` on the raw tensor) would average over ``y, z, channel``
instead of ``x, y, z`` -- a bug seen in published code. Here every axis is found by name.

- :func:`pool_examples` -- one pooled vector per sample: adaptive average pooling of the
  spatial axes to a grid (default 8), flattened to ``(sample, features)``.
- :func:`tokens_as_examples` -- every token an example: ``(sample*x*y*z, channel)``.

Both accept a tensor or numpy array with its dim names, or an xarray ``DataArray``.

Two options of :func:`pool_examples` reproduce the paper's code on request only
(``docs/conventions.md``): ``pooling="paper-swin-axes"`` pools the axes it pooled, and
``small_grid="stretch"`` blows axes shorter than the grid up to it as adaptive pooling does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

from attnprobe.errors import ConfigError, ShapeError, check_option

__all__ = ["Pooling", "SmallGrid", "POOLINGS", "SMALL_GRIDS", "pool_examples", "tokens_as_examples"]

Pooling = Literal["correct", "paper-swin-axes"]
SmallGrid = Literal["keep", "stretch"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
SMALL_GRIDS: tuple[str, ...] = get_args(SmallGrid)

SPATIAL = ("x", "y", "z")
# typed loosely: the 2D/3D pools take a tuple of output sizes as well as an int
_POOL: dict[int, Callable[..., torch.Tensor]] = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def _named(x: Any, dims: Sequence[str] | None) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Tensor plus dim names from (tensor|array, dims) or a DataArray."""
    if hasattr(x, "dims") and hasattr(x, "values") and not isinstance(x, torch.Tensor):
        own = tuple(str(d) for d in x.dims)
        if dims is not None and tuple(dims) != own:
            raise ShapeError("dims disagree with the DataArray's own dims", expected=str(own),
                             got=str(tuple(dims)), fix="leave dims=None for a DataArray")
        return torch.as_tensor(np.asarray(x.values)), own
    if dims is None:
        raise ShapeError("the axes of a plain tensor need names",
                         expected="dims, e.g. ('sample', 'x', 'y', 'z', 'channel')",
                         got="dims=None", fix="pass dims= or an xarray DataArray")
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    names = tuple(str(d) for d in dims)
    if len(names) != t.ndim:
        raise ShapeError("one name per axis is needed", expected=f"{t.ndim} names",
                         got=f"{len(names)}: {names}", fix="name every axis of the tensor")
    return t, names


def _order(names: tuple[str, ...], want: tuple[str, ...]) -> list[int]:
    """Axis positions of ``want`` in ``names``; refuses missing, extra or repeated names."""
    if len(set(names)) != len(names):
        raise ShapeError("dim names repeat", expected="distinct names", got=str(names),
                         fix="give every axis its own name")
    missing = [d for d in want if d not in names]
    extra = [d for d in names if d not in want]
    if missing or extra:
        raise ShapeError("block output has the wrong named dims", expected=str(want),
                         got=f"{names} (missing {missing}, unexpected {extra})",
                         fix="select or squeeze the other axes first (e.g. one block, one stage)")
    return [names.index(d) for d in want]


def _float(t: torch.Tensor) -> torch.Tensor:
    # half-precision averages lose digits; integer volumes cannot be averaged in place
    return t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float32)


def pool_examples(x: Any, dims: Sequence[str] | None = None, *, grid: int | Sequence[int] = 8,
                  sample: str = "sample", channel: str = "channel",
                  spatial: Sequence[str] = SPATIAL, pooling: Pooling = "correct",
                  small_grid: SmallGrid = "keep") -> torch.Tensor:
    """One feature vector per sample: adaptive average pooling over the named spatial axes.

    Parameters
    ----------
    x : tensor, array or xarray.DataArray
        A block output, e.g. shape ``(sample, x, y, z, channel)``; any axis order.
    dims : sequence of str, optional
        Names of the axes of ``x`` (taken from ``x.dims`` for a DataArray). Must be exactly
        ``{sample, channel, *spatial}``.
    grid : int or sequence of int
        Output size per pooled axis (default 8, i.e. 8³).
    sample, channel, spatial : str
        Names of the sample axis, the channel axis and the spatial axes.
    pooling : {"correct", "paper-swin-axes"}
        ``"correct"`` (default): pool the spatial axes ``(x, y, z)``, found by name.
        ``"paper-swin-axes"`` reproduces a bug of the paper's code, which handed Swin UNETR's
        channel-last block outputs ``(sample, x, y, z, channel)`` to ``adaptive_avg_pool3d``
        as if channel-first: axis 1 (``x``) is kept whole as "channels" and ``(y, z,
        channel)`` are pooled to the grid, so each feature averages a slab of y-z positions
        over a band of adjacent channels, at one x. Features ``(sample, x * gy * gz * gc)``,
        ordered ``(x, y, z, channel)`` row-major. Needs exactly three spatial axes; ``grid``
        then gives the sizes of ``(y, z, channel)``.
    small_grid : {"keep", "stretch"}
        For a pooled axis shorter than its grid. ``"keep"`` (default): the axis keeps its
        size. ``"stretch"``: pooled to the grid anyway, as the paper's code did; adaptive
        pooling to a larger size repeats values (output ``i`` of an axis of size ``s``
        averages inputs ``floor(i s / g)`` to ``ceil((i + 1) s / g) - 1``), which weighs the
        positions unevenly unless ``s`` divides ``g``.

    Returns
    -------
    torch.Tensor, shape (sample, features)
        ``"correct"``: ``channel * gx * gy * gz`` features ordered ``(channel, x, y, z)``
        row-major; float32 or float64.

    Raises
    ------
    ShapeError
        When a named axis is missing, unexpected or repeated.
    ConfigError
        Unknown ``pooling`` or ``small_grid``, a bad grid.
    """
    check_option("pooling", pooling, POOLINGS)
    check_option("small_grid", small_grid, SMALL_GRIDS)
    spatial = tuple(spatial)
    if len(spatial) not in _POOL:
        raise ConfigError("pooling supports 1 to 3 spatial axes", expected="1, 2 or 3 names",
                          got=str(spatial))
    if pooling == "paper-swin-axes" and len(spatial) != 3:
        raise ConfigError("pooling='paper-swin-axes' reproduces 3-D pooling of a 5-D block output",
                          expected="three spatial axes", got=str(spatial), fix="use pooling='correct'")
    t, names = _named(x, dims)
    if pooling == "correct":
        layout = (sample, channel, *spatial)  # the layout pooling expects
    else:
        layout = (sample, *spatial, channel)  # channel-last, read as (N, C, D, H, W) as the paper did
    t = _float(t.permute(_order(names, layout)))
    sizes = tuple(t.shape[2:])
    g = (grid,) * len(spatial) if isinstance(grid, int) else tuple(int(v) for v in grid)
    if len(g) != len(spatial) or min(g) < 1:
        raise ConfigError("grid must give a positive size per spatial axis",
                          expected=f"an int or {len(spatial)} ints >= 1", got=repr(grid))
    if min(sizes, default=1) < 1 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ShapeError("block output is empty", expected="at least one sample and token",
                         got=f"shape {tuple(t.shape)} in {layout} order")
    out = g if small_grid == "stretch" else tuple(min(gi, si) for gi, si in zip(g, sizes, strict=True))
    pooled = _POOL[len(spatial)](t, out)
    return pooled.reshape(pooled.shape[0], -1)


def tokens_as_examples(x: Any, dims: Sequence[str] | None = None, *, sample: str = "sample",
                       channel: str = "channel", spatial: Sequence[str] = SPATIAL) -> torch.Tensor:
    """Every token an example: ``(sample * x * y * z, channel)``.

    Parameters
    ----------
    x : tensor, array or xarray.DataArray
        A block output with named axes, any order.
    dims : sequence of str, optional
        Axis names (from ``x.dims`` for a DataArray); exactly ``{sample, channel, *spatial}``.
    sample, channel, spatial : str
        Axis names.

    Returns
    -------
    torch.Tensor, shape (sample * x * y * z, channel)
        Rows in ``(sample, x, y, z)`` row-major order, so two models' outputs on the same
        inputs give rows for the same tokens.
    """
    t, names = _named(x, dims)
    order = _order(names, (sample, *tuple(spatial), channel))
    t = t.permute(order)
    return t.reshape(-1, t.shape[-1])
