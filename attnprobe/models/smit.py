"""SMIT: a 3D shifted-window transformer encoder with a UNETR-style decoder (docs/definitions.md).

SMIT (self-distilled masked image transformer; Jiang & Veeraraghavan, MICCAI 2022) is in no
package, so attnprobe carries this implementation, written from the published description (docs/compat.md). It loads
SMIT checkpoints by key name: module names and tensor shapes match the reference list
``reference/smit_2282_state_dict.json`` exactly.

Layout
------
- ``SMIT.transformer`` (:class:`SMITEncoder`): ``patch_embed.{proj,norm}`` (Conv3d, kernel and
  stride ``patch_size``, then LayerNorm), four stages ``layers.{i}`` (:class:`SMITStage`), each
  with ``blocks.{j}`` (:class:`SMITBlock`) and ``downsample`` (:class:`PatchMerging`, 8C -> 2C,
  also on the last stage), and one LayerNorm per stage output, ``norm0..norm3``.
- Decoder (MONAI UNETR blocks, residual, ``norm_name`` normalisation), wired as the channel
  counts of the reference state dict imply::

      encoder1(x_in)                      C    at full resolution
      encoder2(h0), h0 = norm0(stage 0)   C    at 1/2
      encoder3(h1), h1 = norm1(stage 1)   2C   at 1/4
      encoder4(h2), h2 = norm2(stage 2)   4C   at 1/8
      encoder10(h4), h4 = stage-3 merge   16C  at 1/32 (no norm: none in the checkpoint)
      decoder5(enc10, h3 = norm3(stage 3))  -> 8C at 1/16
        (with ``encoder5=True``, the paper's ``SMIT_3D_Seg``: decoder5(enc10, encoder5(h3)))
      decoder4(., enc4) -> 4C, decoder3(., enc3) -> 2C, decoder2(., enc2) -> C,
      decoder1(., enc1) -> C at full resolution, out -> out_channels

  ``hK`` are stage outputs *before* that stage's patch merging. Because ``h3`` feeds
  ``decoder5`` directly, the decoder width ``feature_size`` must equal ``embed_dim``.

Token layout and hook points
----------------------------
Inside the encoder tokens are channel-last ``(B, D, H, W, C)`` (the same tokens SMIT keeps as
``(B, L, C)``, with ``L`` row-major over ``(D, H, W)``; ``x.flatten(1, 3)`` gives SMIT's form).

- ``transformer.layers.{i}.blocks.{j}`` (:class:`SMITBlock`): input and output ``(B, D, H, W, C)``
  at the stage-``i`` token grid; a forward hook on the block sees its output.
- ``transformer.layers.{i}.blocks.{j}.attn.softmax`` (``nn.Softmax(dim=-1)``): post-softmax,
  pre-dropout probabilities ``(B*nW, heads, N, N)``, row ``b*nW + w``; windows row-major over
  the (padded, rolled) window grid; within a window ``n = (i_d*wh + i_h)*ww + i_w``.
- ``transformer.layers.{i}`` (:class:`SMITStage`): returns ``(out, merged)``, both channel-last.

Window geometry
---------------
Each block: ``norm1`` -> :func:`pad_to_window` (zeros at the END of each axis) ->
:func:`roll_shift` (``-shift``, odd blocks) -> :func:`window_partition` -> attention (shifted
windows masked with -100) -> :func:`window_reverse` -> roll back -> crop. The block calls exactly
these functions (through :func:`to_windows` / :func:`from_windows`), so geometry code that calls
them too cannot drift from the model.

Two compat modes (``SMITConfig.compat``, see ``docs/compat.md``):

- ``current``: on an axis whose token grid is <= the window, the window shrinks to the grid and
  the shift on that axis becomes 0 (:func:`effective_window`, MONAI's rule); windows merge back
  through the true inverse of the partition (:data:`MERGE`).
- ``original``: the original SMIT code, which every SMIT checkpoint was trained with: window and
  shift never change (:func:`original_window`), and windows merge back through
  :data:`MERGE_ORIGINAL`, which is not the inverse of the partition.

When a window shrinks, the relative position bias is read from the full-window table with the
offsets of the smaller window (the smaller window sits in a corner of the full one). MONAI
instead slices ``index[:n, :n]``, which agrees only when nothing but the first axis shrinks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from monai.networks.layers import DropPath
from torch import nn

from attnprobe.errors import CheckpointError, ConfigError, ShapeError
from attnprobe.models.compat import check_compat

__all__ = [
    "MASK_VALUE",
    "MERGE_ORDER",
    "NUM_STAGES",
    "PatchEmbed",
    "PatchMerging",
    "SMIT",
    "SMITBlock",
    "SMITConfig",
    "SMITEncoder",
    "SMITStage",
    "WindowAttention",
    "effective_window",
    "from_windows",
    "merge_patches",
    "padded_grid",
    "pad_to_window",
    "relative_position_index",
    "roll_shift",
    "shifted_window_mask",
    "smit_config_from_state_dict",
    "to_windows",
    "window_padding",
    "window_partition",
    "window_reverse",
]

Triple = tuple[int, int, int]

#: Additive attention mask between tokens of different shifted-window regions (as MONAI/Swin).
MASK_VALUE = -100.0
#: Sub-voxel offsets (along tensor axes D, H, W) in the order PatchMerging concatenates them.
MERGE_ORDER: tuple[Triple, ...] = (
    (0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1),
)
#: SMIT always has four stages (``norm0..norm3`` and the four skip connections need them).
NUM_STAGES = 4


# --------------------------------------------------------------------------------------------
# Window geometry: small functions shared by the block forward and external geometry code.
# --------------------------------------------------------------------------------------------

def _triple(value: int | Sequence[int], name: str) -> Triple:
    """Return ``value`` as three ints (an int is repeated)."""
    if isinstance(value, int):
        return (value, value, value)
    out = tuple(int(v) for v in value)
    if len(out) != 3:
        raise ShapeError(f"{name} must have three entries (D, H, W)", expected="3 ints",
                         got=f"{tuple(value)}", fix=f"pass {name} as (d, h, w)")
    return out


def effective_window(grid: Sequence[int], window: int | Sequence[int],
                     shift: int | Sequence[int]) -> tuple[Triple, Triple]:
    """Window and shift a block actually uses on a token grid.

    On any axis where the grid is <= the window, the window shrinks to the grid and the shift
    on that axis becomes 0 (MONAI's ``get_window_size`` rule).

    Parameters
    ----------
    grid
        Token grid ``(D, H, W)`` entering the block.
    window, shift
        Nominal window and shift of the block (int or three ints).

    Returns
    -------
    window, shift
        Two int triples.
    """
    grid3, win3, sh3 = _triple(grid, "grid"), _triple(window, "window"), _triple(shift, "shift")
    win_out, sh_out = [], []
    for g, w, s in zip(grid3, win3, sh3):
        if g <= w:
            win_out.append(g)
            sh_out.append(0)
        else:
            win_out.append(w)
            sh_out.append(s)
    return tuple(win_out), tuple(sh_out)  # type: ignore[return-value]


def original_window(grid: Sequence[int], window: int | Sequence[int],
                    shift: int | Sequence[int]) -> tuple[Triple, Triple]:
    """Window and shift of a block in the original SMIT code (``compat="original"``).

    The original never shrinks a window nor drops a shift on small grids. It pads the first axis
    by the last axis's amount and the last by the first's; where those differ its window
    partition fails, so this raises a :class:`ShapeError` saying so. Where they agree, the
    padding equals :func:`pad_to_window`'s.
    """
    grid3, win3, sh3 = _triple(grid, "grid"), _triple(window, "window"), _triple(shift, "shift")
    pads = window_padding(grid3, win3)
    if pads[0] != pads[2]:
        raise ShapeError(
            f"the original SMIT code cannot run a token grid of {grid3} with window {win3}: it pads "
            f"the first axis by the last axis's amount and vice versa ({pads[0]} vs {pads[2]}), and its "
            "window partition then fails",
            expected="an input whose token grid has the same remainder modulo the window on its first and "
            "last axes at every stage (e.g. 128x128x64 or 96x96x96)",
            got=f"grid {grid3}", fix="use such an input size, or compat='current' (a correct padding)",
        )
    return win3, sh3


def window_padding(grid: Sequence[int], window: Sequence[int]) -> Triple:
    """Number of window-padding tokens added at the END of each axis."""
    return tuple((-g) % w for g, w in zip(grid, window))  # type: ignore[return-value]


def padded_grid(grid: Sequence[int], window: Sequence[int]) -> Triple:
    """Token grid after :func:`pad_to_window` (each axis rounded up to a window multiple)."""
    return tuple(g + p for g, p in zip(grid, window_padding(grid, window)))  # type: ignore[return-value]


def pad_to_window(x: torch.Tensor, window: Sequence[int], *, value: float = 0) -> torch.Tensor:
    """Pad a channel-last grid ``(B, D, H, W, C)`` at the end of D, H, W to window multiples.

    The block pads with zeros *after* ``norm1``, so window-padding tokens enter attention as
    exact zeros. Geometry code may pad a label grid with another ``value`` (ints work too).
    """
    pd, ph, pw = window_padding(x.shape[1:4], window)
    if pd == ph == pw == 0:
        return x
    # F.pad lists the last axis first: C (none), W, H, D.
    return F.pad(x, (0, 0, 0, pw, 0, ph, 0, pd), value=value)


def roll_shift(x: torch.Tensor, shift: Sequence[int], *, inverse: bool = False) -> torch.Tensor:
    """Cyclic shift of a channel-last grid by ``-shift`` (or ``+shift`` with ``inverse``)."""
    if not any(shift):
        return x
    sign = 1 if inverse else -1
    return torch.roll(x, shifts=tuple(sign * s for s in shift), dims=(1, 2, 3))


#: Window geometry as einops patterns (``d, h, w`` are the three spatial axes, ``n*`` the window
#: grid, ``w*`` the offsets inside a window). Partition and its true inverse:
PARTITION = "b (nd wd) (nh wh) (nw ww) c -> (b nd nh nw) (wd wh ww) c"
MERGE = "(b nd nh nw) (wd wh ww) c -> b (nd wd) (nh wh) (nw ww) c"
#: The original SMIT merge-back (``compat="original"``): it reads the windows as
#: ``(b, nd, nh, nw, wd, wh, ww, c)``, permutes them to ``(b, nd, nw, wh, nh, wd, ww, c)`` and views
#: that as the grid -- not the inverse of :data:`PARTITION`, so most tokens land elsewhere. Every
#: SMIT checkpoint was trained through it (docs/compat.md).
MERGE_ORIGINAL = "(b nd nh nw) (wd wh ww) c -> b (nd nw wh nh wd ww) c"


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """Cut a padded channel-last grid ``(B, Dp, Hp, Wp, C)`` into windows ``(B*nW, N, C)``.

    Windows are batch-major and row-major over the window grid; inside a window the token
    index is ``n = (i_d*wh + i_h)*ww + i_w`` (:data:`PARTITION`).
    """
    wd, wh, ww = window
    return rearrange(x, PARTITION, wd=wd, wh=wh, ww=ww)


def window_reverse(windows: torch.Tensor, window: Sequence[int], *, batch: int,
                   padded: Sequence[int], compat: str = "current") -> torch.Tensor:
    """Windows ``(B*nW, N, C)`` back to the grid ``(B, Dp, Hp, Wp, C)``.

    ``compat="current"`` is the inverse of :func:`window_partition` (:data:`MERGE`);
    ``compat="original"`` is the original SMIT merge-back (:data:`MERGE_ORIGINAL`).
    """
    wd, wh, ww = window
    dp, hp, wp = padded
    sizes = dict(b=batch, nd=dp // wd, nh=hp // wh, nw=wp // ww, wd=wd, wh=wh, ww=ww)
    if compat == "original":
        flat = rearrange(windows, MERGE_ORIGINAL, **sizes)
        return flat.reshape(batch, dp, hp, wp, windows.shape[-1])
    return rearrange(windows, MERGE, **sizes)


def to_windows(x: torch.Tensor, window: Sequence[int], shift: Sequence[int], *,
               pad_value: float = 0) -> tuple[torch.Tensor, Triple]:
    """Pad, roll and partition a channel-last grid exactly as a block does.

    Parameters
    ----------
    x
        ``(B, D, H, W, C)``; any dtype.
    window, shift
        Effective window and shift (from :func:`effective_window`).
    pad_value
        Fill for window-padding tokens (the block uses 0).

    Returns
    -------
    windows
        ``(B*nW, N, C)``.
    padded
        The padded grid ``(Dp, Hp, Wp)``.
    """
    x = pad_to_window(x, window, value=pad_value)
    padded = tuple(x.shape[1:4])
    return window_partition(roll_shift(x, shift), window), padded  # type: ignore[return-value]


def from_windows(windows: torch.Tensor, window: Sequence[int], shift: Sequence[int], *,
                 batch: int, grid: Sequence[int], compat: str = "current") -> torch.Tensor:
    """Merge windows back (:func:`window_reverse` in ``compat``'s way), roll back, crop the padding.

    With ``compat="current"`` this is the inverse of :func:`to_windows`.
    """
    x = window_reverse(windows, window, batch=batch, padded=padded_grid(grid, window), compat=compat)
    x = roll_shift(x, shift, inverse=True)
    d, h, w = grid
    if tuple(x.shape[1:4]) == (d, h, w):
        return x
    return x[:, :d, :h, :w].contiguous()


def _region_labels(length: int, window: int, shift: int) -> torch.Tensor:
    """Per-axis shifted-window region of each rolled position: 0, 1 (wrapped edge), 2."""
    labels = torch.zeros(length, dtype=torch.int64)
    if shift > 0:
        labels[length - window:length - shift] = 1
        labels[length - shift:] = 2
    return labels


def shifted_window_mask(padded: Sequence[int], window: Sequence[int], shift: Sequence[int], *,
                        device: torch.device | str | None = None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """Additive attention mask of the shifted windows, ``(nW, N, N)``; ``None`` without shift.

    After the roll, tokens that were not neighbours (they wrapped around) share windows; pairs
    from different regions get ``MASK_VALUE`` (-100, not -inf, as in MONAI/Swin).
    """
    if not any(shift):
        return None
    ld, lh, lw = (_region_labels(p, w, s) for p, w, s in zip(padded, window, shift))
    region = (ld[:, None, None] * 9 + lh[None, :, None] * 3 + lw[None, None, :]).to(device)
    region = window_partition(region[None, ..., None], window)[..., 0]  # (nW, N)
    differ = region[:, :, None] != region[:, None, :]
    return torch.zeros(differ.shape, dtype=dtype, device=device).masked_fill_(differ, MASK_VALUE)


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    """Row of the relative-position-bias table for every (query, key) pair of a window.

    Returns
    -------
    torch.Tensor
        ``(N, N)`` int64; the table has ``(2wd-1)(2wh-1)(2ww-1)`` rows.
    """
    wd, wh, ww = window
    grids = torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing="ij")
    coords = torch.stack([g.flatten() for g in grids], dim=-1)  # (N, 3), row-major
    rel = coords[:, None, :] - coords[None, :, :] + torch.tensor([wd - 1, wh - 1, ww - 1])
    # mixed-radix number with digits in [0, 2w-1)
    return (rel[..., 0] * (2 * wh - 1) + rel[..., 1]) * (2 * ww - 1) + rel[..., 2]


def merge_patches(x: torch.Tensor) -> torch.Tensor:
    """Concatenate the 8 sub-voxels of each 2x2x2 cell in :data:`MERGE_ORDER`.

    ``(B, D, H, W, C)`` with even D, H, W -> ``(B, D/2, H/2, W/2, 8C)``.
    """
    return torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in MERGE_ORDER], dim=-1)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------

class Mlp(nn.Module):
    """Two-layer MLP ``fc1 -> GELU -> fc2`` with dropout after each linear."""

    def __init__(self, dim: int, hidden: int, *, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a relative position bias.

    Always computes the explicit softmax through ``self.softmax`` so a forward hook there
    sees ``(B*nW, heads, N, N)`` probabilities; ``use_flash_attention`` is ``False`` for
    uniformity with MONAI's attention and is ignored.

    Parameters
    ----------
    dim, num_heads
        Channels and heads (``dim % num_heads == 0``).
    window_size
        Full (nominal) window; the bias table covers its offsets.
    qkv_bias
        Learnable bias on the query/key/value projection.
    attn_drop, proj_drop
        Dropout on the probabilities and on the output.
    """

    relative_position_index: torch.Tensor  # a buffer (register_buffer)

    def __init__(self, dim: int, num_heads: int, window_size: Triple, *, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.window_size = _triple(window_size, "window_size")
        self.scale = (dim // num_heads) ** -0.5
        self.use_flash_attention = False
        rows = math.prod(2 * w - 1 for w in self.window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        # persistent: SMIT checkpoints carry it
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.softmax = nn.Softmax(dim=-1)

    def bias_index(self, window: Sequence[int]) -> torch.Tensor:
        """Table rows ``(N, N)`` for an effective window no larger than the full one."""
        window = tuple(window)
        if window == self.window_size:
            return self.relative_position_index
        # Put the small window in a corner of the full one: offsets (hence rows) are the same.
        full = self.window_size
        grids = torch.meshgrid(*(torch.arange(w) for w in window), indexing="ij")
        sel = ((grids[0] * full[1] + grids[1]) * full[2] + grids[2]).flatten()
        sel = sel.to(self.relative_position_index.device)
        return self.relative_position_index[sel][:, sel]

    def relative_position_bias(self, window: Sequence[int]) -> torch.Tensor:
        """Bias ``(heads, N, N)`` added to the logits of an effective window."""
        n = math.prod(window)
        bias = self.relative_position_bias_table[self.bias_index(window).reshape(-1)]
        return bias.reshape(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                window: Sequence[int] | None = None) -> torch.Tensor:
        """Attend within windows.

        Parameters
        ----------
        x
            Windows ``(B*nW, N, C)``, batch-major.
        mask
            ``(nW, N, N)`` additive mask or ``None``.
        window
            Effective window (``N == prod(window)``); default the full window.

        Returns
        -------
        torch.Tensor
            ``(B*nW, N, C)``.
        """
        window = self.window_size if window is None else tuple(window)
        bw, n, c = x.shape
        if n != math.prod(window) or c != self.dim:
            raise ShapeError("window tokens do not fit the attention module",
                             expected=f"(B*nW, {math.prod(window)}, {self.dim})",
                             got=f"{tuple(x.shape)}", fix="pass windows from to_windows()")
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*nW, heads, N, hd)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        logits = logits + self.relative_position_bias(window).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            if bw % nw != 0 or mask.shape[1:] != (n, n):
                raise ShapeError("attention mask does not fit the windows",
                                 expected=f"(nW, {n}, {n}) with nW dividing {bw}",
                                 got=f"{tuple(mask.shape)}", fix="build it with shifted_window_mask()")
            logits = logits.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None].to(logits.dtype)
            logits = logits.view(bw, self.num_heads, n, n)
        attn = self.attn_drop(self.softmax(logits))
        out = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))


class SMITBlock(nn.Module):
    """Shifted-window transformer block; input and output channel-last ``(B, D, H, W, C)``.

    ``x + attn(windows(norm1(x)))`` then ``x + mlp(norm2(x))``; windows via :func:`to_windows`.

    Parameters
    ----------
    dim, num_heads
        Channels and heads.
    window_size, shift_size
        Nominal window and shift (shift 0 for even blocks, window//2 for odd ones).
    mlp_ratio, qkv_bias, drop, attn_drop, drop_path
        The usual Swin options.
    compat
        ``"current"``: MONAI's window rules and a true inverse merge; ``"original"``: the original
        SMIT code's (:func:`original_window`, :data:`MERGE_ORIGINAL`).
    """

    def __init__(self, dim: int, num_heads: int, window_size: Triple, shift_size: Triple, *,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, compat: str = "current") -> None:
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.compat = check_compat(compat)
        self.window_size = _triple(window_size, "window_size")
        self.shift_size = _triple(shift_size, "shift_size")
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, self.window_size, qkv_bias=qkv_bias,
                                    attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def window_for(self, grid: Sequence[int]) -> tuple[Triple, Triple]:
        """Effective ``(window, shift)`` of this block on a token grid (the compat mode's rule)."""
        if self.compat == "original":
            return original_window(grid, self.window_size, self.shift_size)
        return effective_window(grid, self.window_size, self.shift_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[-1] != self.dim:
            raise ShapeError("SMIT block input must be channel-last",
                             expected=f"(B, D, H, W, {self.dim})", got=f"{tuple(x.shape)}",
                             fix="permute channel-first grids with x.permute(0, 2, 3, 4, 1)")
        batch, grid = x.shape[0], tuple(x.shape[1:4])
        window, shift = self.window_for(grid)
        windows, padded = to_windows(self.norm1(x), window, shift)
        mask = shifted_window_mask(padded, window, shift, device=x.device, dtype=windows.dtype)
        attended = self.attn(windows, mask=mask, window=window)
        merged = from_windows(attended, window, shift, batch=batch, grid=grid, compat=self.compat)
        x = x + self.drop_path(merged)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2x2 patch merging, 8C -> 2C: :func:`merge_patches`, LayerNorm, linear (no bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        # reduction first: keeps state-dict order identical to SMIT checkpoints
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(8 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or any(s % 2 for s in x.shape[1:4]):
            raise ShapeError("patch merging needs an even channel-last grid",
                             expected="(B, D, H, W, C) with even D, H, W", got=f"{tuple(x.shape)}",
                             fix="use inputs whose size is divisible by 32")
        return self.reduction(self.norm(merge_patches(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping 3D patches: Conv3d (kernel = stride = patch) then LayerNorm.

    ``(B, C_in, D, H, W)`` -> channel-last tokens ``(B, D/p, H/p, W/p, C)``.
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))


class SMITStage(nn.Module):
    """One encoder stage: ``blocks`` then ``downsample``.

    Returns ``(out, merged)``: the last block's output ``(B, D, H, W, C)`` and its patch merge
    ``(B, D/2, H/2, W/2, 2C)``.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: Triple, *,
                 mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float,
                 drop_path: Sequence[float], compat: str = "current") -> None:
        super().__init__()
        shift = (window_size[0] // 2, window_size[1] // 2, window_size[2] // 2)
        self.blocks = nn.ModuleList(
            SMITBlock(dim, num_heads, window_size, (0, 0, 0) if j % 2 == 0 else shift,
                      mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop,
                      drop_path=drop_path[j], compat=compat)
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            x = block(x)
        return x, self.downsample(x)


@dataclass(frozen=True)
class SMITConfig:
    """Architecture of a SMIT segmentation model (defaults: the rectal-MRI model of docs/definitions.md).

    Attributes
    ----------
    in_channels, out_channels
        Image channels and segmentation classes.
    embed_dim
        Stage-0 channels ``C``; stage ``i`` has ``C * 2**i``.
    depths, num_heads
        Blocks and heads per stage (four stages).
    window_size, patch_size
        Cubic window (in tokens) and patch (in voxels); odd blocks shift by ``window_size // 2``.
    mlp_ratio, qkv_bias
        MLP width factor; bias on the qkv projection.
    norm_name
        Decoder normalisation (MONAI name; ``"instance"`` has no parameters).
    feature_size
        Decoder width; ``None`` means ``embed_dim`` (48 in the reference). Must equal
        ``embed_dim`` because the stage-3 output feeds ``decoder5`` unchanged.
    drop_rate, attn_drop_rate, drop_path_rate
        Dropout after linears, on attention probabilities, and max stochastic depth.
    compat
        ``"current"`` or ``"original"`` (the original SMIT code's window merge and rules); see
        :mod:`attnprobe.models.compat`.
    encoder5
        The paper's ``SMIT_3D_Seg`` decoder: an ``encoder5`` block on the stage-3 skip before
        ``decoder5``. ``False`` is the layout of ``reference/smit_2282_state_dict.json``.
    """

    in_channels: int = 1
    out_channels: int = 2
    embed_dim: int = 48
    depths: tuple[int, ...] = (2, 2, 8, 2)
    num_heads: tuple[int, ...] = (4, 4, 8, 16)
    window_size: int = 4
    patch_size: int = 2
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_name: str | tuple = "instance"
    feature_size: int | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    compat: str = "current"
    encoder5: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise fields once, here
        check_compat(self.compat)
        try:
            set_(self, "depths", tuple(int(d) for d in self.depths))
            set_(self, "num_heads", tuple(int(h) for h in self.num_heads))
        except (TypeError, ValueError) as exc:
            raise ConfigError("depths and num_heads must be sequences of ints",
                              got=f"depths={self.depths!r}, num_heads={self.num_heads!r}",
                              fix="e.g. depths=(2, 2, 8, 2), num_heads=(4, 4, 8, 16)") from exc
        if self.feature_size is None:
            set_(self, "feature_size", self.embed_dim)
        for name in ("in_channels", "out_channels", "embed_dim", "window_size", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"SMITConfig.{name} must be a positive int", got=f"{value!r}")
        if len(self.depths) != NUM_STAGES or len(self.num_heads) != NUM_STAGES:
            raise ConfigError("SMIT has four stages", expected="4 depths and 4 head counts",
                              got=f"depths={self.depths}, num_heads={self.num_heads}")
        if any(d < 1 for d in self.depths) or any(h < 1 for h in self.num_heads):
            raise ConfigError("depths and num_heads must be >= 1",
                              got=f"depths={self.depths}, num_heads={self.num_heads}")
        for i, heads in enumerate(self.num_heads):
            dim = self.embed_dim * 2**i
            if dim % heads:
                raise ConfigError(f"stage {i} width is not divisible by its head count",
                                  expected=f"{dim} % num_heads[{i}] == 0", got=f"num_heads[{i}]={heads}",
                                  fix="pick heads that divide embed_dim * 2**stage")
        if self.feature_size != self.embed_dim:
            raise ConfigError("SMIT's decoder width must equal embed_dim",
                              expected=f"feature_size None or {self.embed_dim}",
                              got=f"{self.feature_size}", fix="leave feature_size unset")
        if self.mlp_ratio <= 0:
            raise ConfigError("mlp_ratio must be > 0", got=f"{self.mlp_ratio}")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1)", got=f"{getattr(self, name)}")

    @property
    def shift_size(self) -> int:
        """Shift of the odd blocks (``window_size // 2``)."""
        return self.window_size // 2

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Channels per stage, ``embed_dim * 2**i``."""
        return tuple(self.embed_dim * 2**i for i in range(NUM_STAGES))

    @property
    def input_divisor(self) -> int:
        """Every spatial input size must be a multiple of this (``patch_size * 2**4``)."""
        return self.patch_size * 2**NUM_STAGES


class SMITEncoder(nn.Module):
    """The SMIT transformer (``SMIT.transformer``).

    ``forward(x)`` takes ``(B, C_in, D, H, W)`` and returns five channel-first tensors:
    ``norm0..norm3`` of the four stage outputs (before merging; ``C*2**i`` channels at
    ``1/(p*2**i)``) and the last stage's merged output (``16C`` at ``1/(16p)``).
    """

    def __init__(self, config: SMITConfig) -> None:
        super().__init__()
        self.config = config
        window = _triple(config.window_size, "window_size")
        self.window_size = window
        self.shift_size = tuple(w // 2 for w in window)
        self.patch_embed = PatchEmbed(config.in_channels, config.embed_dim, config.patch_size)
        self.pos_drop = nn.Dropout(config.drop_rate)
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths)).tolist()
        self.layers = nn.ModuleList()
        start = 0
        for i, (depth, heads) in enumerate(zip(config.depths, config.num_heads)):
            self.layers.append(SMITStage(
                config.stage_dims[i], depth, heads, window, mlp_ratio=config.mlp_ratio,
                qkv_bias=config.qkv_bias, drop=config.drop_rate, attn_drop=config.attn_drop_rate,
                drop_path=rates[start:start + depth], compat=config.compat))
            start += depth
        for i, dim in enumerate(config.stage_dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.apply(_init_transformer_weights)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`ShapeError` unless ``x`` is ``(B, C_in, D, H, W)`` with sizes % 32 == 0."""
        cfg, k = self.config, self.config.input_divisor
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ShapeError("SMIT input must be a channel-first 3D batch",
                             expected=f"(B, {cfg.in_channels}, D, H, W)", got=f"{tuple(x.shape)}",
                             fix="add batch/channel axes or fix in_channels")
        if any(s % k for s in x.shape[2:]):
            raise ShapeError(f"every spatial size must be divisible by {k}",
                             expected=f"multiples of {k}", got=f"{tuple(x.shape[2:])}",
                             fix=f"pad with monai.transforms.DivisiblePad(k={k}) or crop")

    def stage_grids(self, spatial_size: Sequence[int]) -> tuple[Triple, ...]:
        """Token grid entering each stage's blocks for an input of ``spatial_size`` voxels."""
        size = _triple(spatial_size, "spatial_size")
        p, k = self.config.patch_size, self.config.input_divisor
        if any(s % k for s in size):
            raise ShapeError(f"every spatial size must be divisible by {k}",
                             expected=f"multiples of {k}", got=f"{size}",
                             fix=f"pad or crop to multiples of {k}")
        return tuple(tuple(s // (p * 2**i) for s in size) for i in range(NUM_STAGES))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        x = self.pos_drop(self.patch_embed(x))
        hidden = []
        for i, stage in enumerate(self.layers):
            out, x = stage(x)
            hidden.append(_channel_first(getattr(self, f"norm{i}")(out)))
        hidden.append(_channel_first(x))
        return hidden


def _channel_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 4, 1, 2, 3).contiguous()


def _is_instance_norm(norm_name: str | tuple) -> bool:
    name = norm_name[0] if isinstance(norm_name, tuple) else norm_name
    return str(name).lower() == "instance"


def _init_transformer_weights(module: nn.Module) -> None:
    # Swin-style init; checkpoints overwrite it anyway.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, WindowAttention):
        nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)


class SMIT(nn.Module):
    """SMIT segmentation model: :class:`SMITEncoder` plus a UNETR-style decoder.

    Build with ``SMIT(SMITConfig(...))`` or ``SMIT(embed_dim=12, ...)`` (keywords of
    :class:`SMITConfig`); ``SMIT()`` is the reference model (depths (2,2,8,2), heads
    (4,4,8,16), embed 48, window 4, 2 classes). ``forward`` maps ``(B, C_in, D, H, W)``, every
    size a multiple of 32, to logits ``(B, out_channels, D, H, W)``.

    With instance norm the input must exceed 32 voxels on at least one axis: a 32³ input leaves
    a 1x1x1 bottleneck that torch's instance norm refuses (a :class:`ShapeError` says so);
    ``SMIT.transformer`` alone takes any multiple of 32.

    Geometry for capture code: :meth:`stage_grids` and, per block, :meth:`SMITBlock.window_for`;
    per-block geometry (window counts, module paths) comes from the shared adapter API
    (:meth:`attnprobe.models.adapter.Adapter.geometry`, :class:`~attnprobe.models.adapter.BlockGeometry`).
    """

    def __init__(self, config: SMITConfig | None = None, /, **kwargs: Any) -> None:
        super().__init__()
        if config is not None and kwargs:
            raise ConfigError("pass either a SMITConfig or keyword options, not both",
                              got=f"config and {sorted(kwargs)}", fix="use dataclasses.replace(config, ...)")
        if config is None:
            try:
                config = SMITConfig(**kwargs)
            except TypeError as exc:
                raise ConfigError("unknown SMIT option", got=str(exc),
                                  fix="see SMITConfig for the accepted keywords") from exc
        elif not isinstance(config, SMITConfig):
            raise ConfigError("SMIT config must be a SMITConfig", got=type(config).__name__)
        self.config = config
        f, norm = config.embed_dim, config.norm_name  # feature_size equals embed_dim (SMITConfig)
        dims = config.stage_dims
        self.transformer = SMITEncoder(config)

        def basic(cin: int, cout: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(3, cin, cout, kernel_size=3, stride=1, norm_name=norm, res_block=True)

        def up(cin: int, cout: int) -> UnetrUpBlock:
            return UnetrUpBlock(3, cin, cout, kernel_size=3, upsample_kernel_size=2, norm_name=norm,
                                res_block=True)

        self.encoder1 = basic(config.in_channels, f)
        self.encoder2 = basic(dims[0], f)
        self.encoder3 = basic(dims[1], 2 * f)
        self.encoder4 = basic(dims[2], 4 * f)
        self.encoder10 = basic(2 * dims[3], 16 * f)
        if config.encoder5:
            self.encoder5 = basic(dims[3], 8 * f)
        self.decoder5 = up(16 * f, 8 * f)
        self.decoder4 = up(8 * f, 4 * f)
        self.decoder3 = up(4 * f, 2 * f)
        self.decoder2 = up(2 * f, f)
        self.decoder1 = up(f, f)
        self.out = UnetOutBlock(3, f, config.out_channels)

    @property
    def input_divisor(self) -> int:
        """Every spatial input size must be a multiple of this (32 for patch 2)."""
        return self.config.input_divisor

    def stage_grids(self, spatial_size: Sequence[int]) -> tuple[Triple, ...]:
        """Token grid of each stage; see :meth:`SMITEncoder.stage_grids`."""
        return self.transformer.stage_grids(spatial_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0, h1, h2, h3, h4 = self.transformer(x)
        if _is_instance_norm(self.config.norm_name) and math.prod(h4.shape[2:]) == 1:
            # torch's instance norm (no running stats) refuses a 1x1x1 map; say why in our terms
            raise ShapeError("the 1/32 bottleneck is a single voxel, which instance norm cannot normalise",
                             expected="an input larger than 32 on at least one axis",
                             got=f"{tuple(x.shape[2:])}",
                             fix="use a larger crop, or norm_name='batch' (or run SMIT.transformer alone)")
        enc1 = self.encoder1(x)
        enc2 = self.encoder2(h0)
        enc3 = self.encoder3(h1)
        enc4 = self.encoder4(h2)
        skip4 = self.encoder5(h3) if self.config.encoder5 else h3
        dec = self.decoder5(self.encoder10(h4), skip4)
        dec = self.decoder4(dec, enc4)
        dec = self.decoder3(dec, enc3)
        dec = self.decoder2(dec, enc2)
        dec = self.decoder1(dec, enc1)
        return self.out(dec)


# --------------------------------------------------------------------------------------------
# Config inference from a checkpoint's keys
# --------------------------------------------------------------------------------------------

_EMBED_KEY = "patch_embed.proj.weight"


def _shape(value: Any) -> tuple[int, ...]:
    # tensors, numpy arrays, or plain shape lists (e.g. the reference JSON)
    shape = getattr(value, "shape", value)
    return tuple(int(s) for s in shape)


def smit_config_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Infer :class:`SMITConfig` keywords from a state dict with SMIT key names.

    The encoder may sit under any prefix (``transformer.`` in segmentation checkpoints,
    ``module.backbone.`` in self-supervised ones). Values may be tensors or shapes.

    Returns
    -------
    dict
        ``in_channels, embed_dim, patch_size, depths, num_heads, window_size, mlp_ratio,
        qkv_bias``, plus ``out_channels`` and ``feature_size`` when the decoder is present.
        ``norm_name`` and drop rates cannot be read from weights and are left out.

    Raises
    ------
    CheckpointError
        When the keys or shapes do not describe a SMIT encoder.
    """
    embed_keys = [k for k in state_dict if k.endswith(_EMBED_KEY)]
    if len(embed_keys) != 1:
        raise CheckpointError("cannot find the SMIT patch embedding",
                              expected=f"exactly one key ending in '{_EMBED_KEY}'",
                              got=f"{len(embed_keys)} ({embed_keys[:3]})",
                              fix="pass the model weights (e.g. ckpt['state_dict'] or ckpt['student'])")
    prefix = embed_keys[0][: -len(_EMBED_KEY)]
    proj = _shape(state_dict[embed_keys[0]])
    if len(proj) != 5 or len(set(proj[2:])) != 1:
        raise CheckpointError("patch embedding is not a cubic Conv3d weight",
                              expected="(C, C_in, p, p, p)", got=f"{proj}")
    embed_dim, in_channels, patch_size = proj[0], proj[1], proj[2]

    blocks: dict[int, set[int]] = {}
    head = f"{prefix}layers."
    for key in state_dict:
        if key.startswith(head):
            parts = key[len(head):].split(".")
            if len(parts) > 2 and parts[1] == "blocks" and parts[0].isdigit() and parts[2].isdigit():
                blocks.setdefault(int(parts[0]), set()).add(int(parts[2]))
    stages = sorted(blocks)
    if stages != list(range(len(stages))) or not stages:
        raise CheckpointError("SMIT stages are not numbered 0..n-1", got=f"stages {stages}",
                              fix="check the key prefix")
    depths = []
    for i in stages:
        if sorted(blocks[i]) != list(range(len(blocks[i]))):
            raise CheckpointError(f"stage {i} blocks are not numbered 0..n-1", got=f"{sorted(blocks[i])}")
        depths.append(len(blocks[i]))

    def get(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise CheckpointError("SMIT checkpoint lacks a key", expected=key, got="missing",
                                  fix="pass a complete SMIT state dict")
        return _shape(state_dict[key])

    heads: list[int] = []
    window = None
    for i in stages:
        for j in range(depths[i]):
            rows, h = get(f"{head}{i}.blocks.{j}.attn.relative_position_bias_table")
            side = round(rows ** (1 / 3))
            if side**3 != rows or side % 2 == 0:
                raise CheckpointError("relative position bias table is not (2w-1)^3 long",
                                      expected="343 rows for window 4", got=f"{rows} rows")
            w = (side + 1) // 2
            if window not in (None, w) or (j > 0 and h != heads[-1]):
                raise CheckpointError(f"stage {i} blocks disagree on window or heads",
                                      got=f"window {w} vs {window}, heads {h}")
            window = w
            if j == 0:
                heads.append(h)

    dim0 = get(f"{head}0.blocks.0.norm1.weight")[0]
    hidden = get(f"{head}0.blocks.0.mlp.fc1.weight")[0]
    if dim0 != embed_dim:
        raise CheckpointError("stage 0 width differs from the patch embedding",
                              expected=f"{embed_dim}", got=f"{dim0}")
    config: dict[str, Any] = {
        "in_channels": in_channels, "embed_dim": embed_dim, "patch_size": patch_size,
        "depths": tuple(depths), "num_heads": tuple(heads), "window_size": window,
        "mlp_ratio": hidden / embed_dim,
        "qkv_bias": f"{head}0.blocks.0.attn.qkv.bias" in state_dict,
    }
    out_keys = [k for k in state_dict if k.endswith("out.conv.conv.weight")]
    enc_keys = [k for k in state_dict if k.endswith("encoder1.layer.conv1.conv.weight")]
    if len(out_keys) == 1 and len(enc_keys) == 1:
        config["out_channels"] = _shape(state_dict[out_keys[0]])[0]
        config["feature_size"] = _shape(state_dict[enc_keys[0]])[0]
        config["encoder5"] = any(".encoder5." in f".{k}" for k in state_dict)
    return config
