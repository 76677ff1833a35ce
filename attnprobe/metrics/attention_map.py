"""Attention of one block mapped back onto the token grid and the input voxels."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from attnprobe.capture.geometry import token_positions
from attnprobe.errors import ShapeError
from attnprobe.models.adapter import Adapter, BlockGeometry
from attnprobe.tokens import REAL


def received_attention(
    probs: torch.Tensor,
    kinds: torch.Tensor,
    geom: BlockGeometry,
    adapter: Adapter,
    *,
    query: Literal["real-mean"] | int = "real-mean",
) -> torch.Tensor:
    """Attention mass each token of the grid receives, ``(x, y, z)`` in token units.

    Parameters
    ----------
    probs
        One sample's attention ``(window, head, query, key)``; heads are averaged.
    kinds
        Token kinds ``(window, token)`` of the same sample.
    geom, adapter
        Geometry of the block and its architecture's window functions.
    query
        ``"real-mean"``: in every window, the attention rows of its real queries averaged,
        then each key's share placed at that key's grid position (every grid token sits in
        exactly one window); an ``int``: the row of one query, given as a flat grid index
        (row-major over x, y, z).

    Returns
    -------
    torch.Tensor
        ``(x, y, z)`` float32 on the token grid of the block's stage; window-padding keys are
        dropped (they have no place on the grid).
    """
    if probs.ndim != 4 or probs.shape[0] != geom.n_windows or probs.shape[-1] != geom.n_tokens:
        raise ShapeError("attention of one sample has the wrong shape",
                         expected=f"(window={geom.n_windows}, head, {geom.n_tokens}, {geom.n_tokens})",
                         got=str(tuple(probs.shape)))
    mean = probs.float().mean(dim=1)  # (window, query, key)
    positions = token_positions(adapter, geom).to(mean.device)  # (window, token)
    if query == "real-mean":
        real = (kinds.to(mean.device) == REAL).float()  # (window, token)
        counts = real.sum(dim=1, keepdim=True)
        # a window without a real query sums no row, so its keys get 0
        rows = (mean * real[..., None]).sum(dim=1) / counts.clamp(min=1)  # (window, key)
    else:
        hit = positions == int(query)
        if not hit.any():
            raise ShapeError("query index is not a token of this grid", expected=f"0 <= q < {positions.max() + 1}",
                             got=str(query))
        w, t = hit.nonzero()[0].tolist()
        rows = torch.zeros(geom.n_windows, geom.n_tokens, device=mean.device)
        rows[w] = mean[w, t]
    keep = positions >= 0
    grid = torch.zeros(math.prod(geom.grid), device=mean.device)
    grid[positions[keep]] = rows[keep]  # every grid token sits in exactly one window slot
    return grid.reshape(geom.grid)


def to_voxels(token_map: torch.Tensor, spatial_shape: tuple[int, int, int]) -> torch.Tensor:
    """Spread a token-grid map onto the input voxels (each token covers its patch)."""
    return F.interpolate(token_map[None, None].float(), size=tuple(spatial_shape), mode="nearest")[0, 0]
