"""Tests for attnprobe.metrics.pooling: named-axis pooling of channel-last block outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnprobe.errors import ShapeError
from attnprobe.metrics.pooling import pool_examples, tokens_as_examples

DIMS = ("sample", "x", "y", "z", "channel")


def coded_block(samples: int = 2, size: int = 4, channels: int = 4) -> torch.Tensor:
    """Channel-last tensor whose value spells its index: 1000c + 100x + 10y + z + 10000s."""
    s, x, y, z, c = torch.meshgrid(*(torch.arange(k, dtype=torch.float64) for k in
                                     (samples, size, size, size, channels)), indexing="ij")
    return 10000 * s + 1000 * c + 100 * x + 10 * y + z


def test_pools_spatial_axes_not_channel_catching_the_channel_last_bug():
    # channels == spatial size, so the wrong-axis result even has the right shape
    t = coded_block(samples=2, size=4, channels=4)
    got = pool_examples(t, DIMS, grid=2)
    assert got.shape == (2, 4 * 2 * 2 * 2)
    # correct: average 2x2x2 spatial blocks; block g of an axis of 4 has mean index 2g + 0.5
    g = torch.arange(2, dtype=torch.float64) * 2 + 0.5
    s, c, gx, gy, gz = torch.meshgrid(torch.arange(2.0, dtype=torch.float64),
                                      torch.arange(4.0, dtype=torch.float64), g, g, g, indexing="ij")
    want = (10000 * s + 1000 * c + 100 * gx + 10 * gy + gz).reshape(2, -1)
    torch.testing.assert_close(got, want)
    assert got[0, 0].item() == pytest.approx(100 * 0.5 + 10 * 0.5 + 0.5)  # c=0, first cell
    # the published bug: adaptive_avg_pool3d straight on (B, X, Y, Z, C) pools y, z, channel
    wrong = F.adaptive_avg_pool3d(t, 2).reshape(2, -1)
    assert wrong.shape == got.shape
    assert not torch.allclose(wrong, got)
    assert wrong[0, 0].item() == pytest.approx(1000 * 0.5 + 10 * 0.5 + 0.5)  # channels mixed


def test_axis_order_does_not_matter():
    t = coded_block(samples=3, size=6, channels=5)
    ref = pool_examples(t, DIMS, grid=3)
    moved = t.permute(4, 3, 0, 2, 1)  # (channel, z, sample, y, x)
    got = pool_examples(moved, ("channel", "z", "sample", "y", "x"), grid=3)
    torch.testing.assert_close(got, ref)


def test_grid_per_axis_and_short_axes_keep_their_size():
    t = torch.randn(2, 6, 4, 3, 7)
    got = pool_examples(t, DIMS, grid=(3, 8, 1))  # y has 4 < 8 tokens: stays 4, not stretched
    assert got.shape == (2, 7 * 3 * 4 * 1)
    # (sample, channel, x, y, z) = (2, 7, 6, 4, 3): x averages pairs (6 -> 3), y is kept (4),
    # z averages all three (3 -> 1)
    want = t.permute(0, 4, 1, 2, 3).reshape(2, 7, 3, 2, 4, 1, 3).mean(dim=(3, 6)).reshape(2, -1)
    torch.testing.assert_close(got, want)
    full = pool_examples(t, DIMS, grid=8)  # every axis shorter than 8: no pooling at all
    torch.testing.assert_close(full, t.permute(0, 4, 1, 2, 3).reshape(2, -1))


def test_dataarray_input():
    xr = pytest.importorskip("xarray")
    t = coded_block(samples=2, size=4, channels=3)
    da = xr.DataArray(t.numpy().transpose(0, 4, 1, 2, 3),
                      dims=("sample", "channel", "x", "y", "z"))
    torch.testing.assert_close(pool_examples(da, grid=2), pool_examples(t, DIMS, grid=2))
    tok = tokens_as_examples(da)
    torch.testing.assert_close(tok, tokens_as_examples(t, DIMS))
    with pytest.raises(ShapeError, match="disagree"):
        pool_examples(da, DIMS)


def test_tokens_as_examples_order_and_shape():
    t = coded_block(samples=2, size=3, channels=4)
    tok = tokens_as_examples(t.permute(4, 0, 3, 1, 2), ("channel", "sample", "z", "x", "y"))
    assert tok.shape == (2 * 27, 4)
    row = 1 * 27 + 2 * 9 + 0 * 3 + 1  # sample 1, x 2, y 0, z 1 in row-major order
    np.testing.assert_allclose(tok[row].numpy(), 10000 + 1000 * np.arange(4) + 200 + 0 + 1)


def test_refuses_missing_extra_or_unnamed_dims():
    t = torch.zeros(2, 4, 4, 4, 8)
    with pytest.raises(ShapeError, match="missing \\['channel'\\]"):
        pool_examples(t, ("sample", "x", "y", "z", "c"))
    with pytest.raises(ShapeError, match="one name per axis"):
        pool_examples(t, ("sample", "x", "y", "z"))
    with pytest.raises(ShapeError, match="need names"):
        pool_examples(t)
    with pytest.raises(ShapeError, match="repeat"):
        tokens_as_examples(t, ("sample", "x", "x", "z", "channel"))
    with pytest.raises(ShapeError, match="unexpected \\['block'\\]"):
        tokens_as_examples(torch.zeros(1, 2, 4, 4, 4, 8), ("block", *DIMS))
