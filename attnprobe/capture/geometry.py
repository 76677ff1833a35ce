"""Token kinds in window order, pushed through the model's own geometry.

A real-voxel mask goes through the same steps as the features (docs/definitions.md):

1. patch embedding: a stage-0 token is real iff any voxel of its patch is real;
2. patch merging: a merged token is real iff any of its 8 children is real;
3. inside each block: pad at the end of each axis to a window multiple (those tokens are
   window padding), roll by ``-shift`` on shifted blocks, partition into windows,

using the adapter's pad and the model's own ``window_partition`` / window-shrinking
function, so the kinds can never drift from what the attention really sees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attnprobe.errors import ShapeError
from attnprobe.models.adapter import Adapter, BlockGeometry, Triple, as_triple
from attnprobe.models.registry import adapter_for
from attnprobe.tokens import INPUT_PAD, REAL, WINDOW_PAD


def check_mask(real_mask: torch.Tensor) -> torch.Tensor:
    """Accept ``(B, 1, X, Y, Z)`` or ``(B, X, Y, Z)`` masks; return ``(B, 1, X, Y, Z)`` bool."""
    if real_mask.ndim == 4:
        real_mask = real_mask[:, None]
    if real_mask.ndim != 5 or real_mask.shape[1] != 1:
        raise ShapeError(
            "real-voxel mask has the wrong shape",
            expected="(sample, 1, x, y, z) or (sample, x, y, z)",
            got=str(tuple(real_mask.shape)),
            fix="pass the mask that preprocessing returned next to the image",
        )
    return real_mask.bool()


def _merge_real(real: torch.Tensor, offsets: Sequence[Triple] | None) -> torch.Tensor:
    """Real flags ``(B, 1, X, Y, Z)`` of the tokens a 2x2x2 patch merging makes.

    A merged token is real iff a child it reads is real: all eight children by default, only
    ``offsets`` for a merging that reads fewer (MONAI < 1.5, ``compat="original"``).
    """
    if offsets is None or len(set(offsets)) == 8:
        return F.max_pool3d(real, kernel_size=2, stride=2, ceil_mode=True)
    _, _, x, y, z = real.shape
    real = F.pad(real, (0, z % 2, 0, y % 2, 0, x % 2))
    return torch.stack([real[:, :, i::2, j::2, k::2] for i, j, k in set(offsets)]).amax(dim=0)


def stage_token_kinds(adapter: Adapter, real_mask: torch.Tensor, n_stages: int, *,
                      merge_offsets: Sequence[Sequence[Triple] | None] | None = None) -> list[torch.Tensor]:
    """Kind of every token of every stage, ``(B, X_s, Y_s, Z_s)`` uint8 (REAL or INPUT_PAD).

    ``merge_offsets[s]`` are the children the merging after stage ``s`` reads (``None``: all).
    """
    real = check_mask(real_mask).float()
    p = adapter.patch_size
    real = F.max_pool3d(real, kernel_size=p, stride=p, ceil_mode=True)
    kinds = []
    for stage in range(n_stages):
        if stage:
            real = _merge_real(real, merge_offsets[stage - 1] if merge_offsets else None)
        kinds.append(torch.where(real[:, 0] > 0, REAL, INPUT_PAD).to(torch.uint8))
    return kinds


def _to_windows(adapter: Adapter, geom: BlockGeometry, grid: torch.Tensor, pad_value: float) -> torch.Tensor:
    """A per-token value ``(B, X, Y, Z, 1)`` pushed through the block's pad (with ``pad_value``) /
    roll by ``-shift`` / window partition, as ``(B, window, token)`` in the input's dtype."""
    x = adapter.pad_to_window(grid, geom.window, value=pad_value)
    if geom.shifted:
        x = torch.roll(x, shifts=tuple(-s for s in geom.shift), dims=(1, 2, 3))
    return adapter.window_partition(x, geom.window).reshape(grid.shape[0], geom.n_windows, geom.n_tokens)


def block_token_kinds(adapter: Adapter, geom: BlockGeometry, stage_kinds: torch.Tensor) -> torch.Tensor:
    """Token kinds of one block in window order, ``(B, window, token)`` uint8."""
    if tuple(stage_kinds.shape[1:]) != tuple(geom.grid):
        raise ShapeError(
            f"token grid of {geom.name} does not match the stage mask",
            expected=str(tuple(geom.grid)), got=str(tuple(stage_kinds.shape[1:])),
        )
    x = stage_kinds[..., None].to(torch.float32)
    return _to_windows(adapter, geom, x, float(WINDOW_PAD)).to(torch.uint8)


def token_positions(adapter: Adapter, geom: BlockGeometry) -> torch.Tensor:
    """Flat grid index (row-major over x, y, z) of every token in window order, ``(window, token)``.

    Window-padding slots get -1. Pushed through the same pad / roll / partition as the kinds,
    so attention can be mapped back onto the token grid (and from there onto voxels).
    """
    index = torch.arange(math.prod(geom.grid), dtype=torch.float64).reshape(1, *geom.grid, 1)
    return _to_windows(adapter, geom, index, -1.0)[0].long()


def token_kinds(
    model: nn.Module, real_mask: torch.Tensor, *, adapter: Adapter | None = None,
) -> tuple[dict[str, BlockGeometry], dict[str, torch.Tensor]]:
    """Geometry and token kinds of every block for one batch of masks.

    Parameters
    ----------
    model
        A model of a registered architecture.
    real_mask
        ``(sample, 1, x, y, z)`` bool, True on voxels from the original volume.

    Returns
    -------
    (geometry, kinds)
        Both keyed by block name (``stage{s}.block{b}``); kinds are ``(sample, window, token)``.
    """
    adapter = adapter or adapter_for(model)
    mask = check_mask(real_mask)
    geoms = adapter.geometry(model, as_triple(mask.shape[2:]))
    per_stage = grid_token_kinds(model, mask, adapter=adapter, n_stages=max(g.stage for g in geoms) + 1)
    geometry = {g.name: g for g in geoms}
    kinds = {g.name: block_token_kinds(adapter, g, per_stage[g.stage]) for g in geoms}
    return geometry, kinds


def grid_token_kinds(model: nn.Module, real_mask: torch.Tensor, *, adapter: Adapter | None = None,
                     n_stages: int | None = None) -> list[torch.Tensor]:
    """Kind of every token on every stage's grid, with the model's own patch merging.

    Parameters
    ----------
    model
        A model of a registered architecture.
    real_mask
        ``(sample, 1, x, y, z)`` bool, True on voxels from the original volume.
    n_stages
        Stages to return (default: every stage of the model).

    Returns
    -------
    list of torch.Tensor
        One ``(sample, x_s, y_s, z_s)`` uint8 tensor per stage, REAL or INPUT_PAD (window
        padding does not exist on the grid: it is made inside each block).
    """
    adapter = adapter or adapter_for(model)
    if n_stages is None:
        n_stages = max(ref.stage for ref in adapter.blocks(model)) + 1
    offsets = [adapter.merge_offsets(model, s) for s in range(n_stages - 1)]
    return stage_token_kinds(adapter, real_mask, n_stages, merge_offsets=offsets)


def check_input_shape(adapter: Adapter, spatial_shape: Triple) -> None:
    """Raise a clear error when an input size is not a multiple of the adapter's requirement."""
    m = adapter.input_multiple
    bad = [(axis, s) for axis, s in zip("xyz", spatial_shape) if s % m]
    if bad:
        near = {axis: (s // m * m or m, -(-s // m) * m) for axis, s in bad}
        raise ShapeError(
            f"input size {tuple(spatial_shape)} is not divisible by {m} on axis "
            f"{', '.join(a for a, _ in bad)}",
            expected=f"every spatial size a multiple of {m} for {adapter.name}",
            got=str(tuple(spatial_shape)),
            fix="use an ROI such as " + ", ".join(f"{a}: {lo} or {hi}" for a, (lo, hi) in near.items()),
        )
