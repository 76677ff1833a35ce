"""Tests for attnprobe.metrics.pooling: named-axis pooling of channel-last block outputs."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnprobe.errors import ConfigError, ShapeError
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


# ---- the paper's pooling, on request -------------------------------------------------------------


def test_paper_swin_axes_keeps_x_whole_and_pools_y_z_channel_by_hand():
    # (sample, x, y, z, channel) = (2, 3, 4, 2, 6); grid 2: y 4 -> 2 (pairs), z 2 -> 2 (kept as
    # is), channel 6 -> 2 (triples); x (read as "channels") is never pooled
    s, x, y, z, c = torch.meshgrid(*(torch.arange(k, dtype=torch.float64) for k in (2, 3, 4, 2, 6)),
                                   indexing="ij")
    t = 10000 * s + 1000 * c + 100 * x + 10 * y + z
    got = pool_examples(t, DIMS, grid=2, pooling="paper-swin-axes")
    assert got.shape == (2, 3 * 2 * 2 * 2)
    want = torch.empty(2, 3, 2, 2, 2, dtype=torch.float64)
    for si in range(2):
        for xi in range(3):
            for yi in range(2):
                for zi in range(2):
                    for ci in range(2):
                        ys, cs = (2 * yi, 2 * yi + 1), (3 * ci, 3 * ci + 1, 3 * ci + 2)
                        want[si, xi, yi, zi, ci] = (10000 * si + 100 * xi + 10 * sum(ys) / 2 + zi
                                                    + 1000 * sum(cs) / 3)
    torch.testing.assert_close(got, want.reshape(2, -1))
    # features are (x, y, z, channel) row-major: the first feature mixes channels 0..2 at x=0
    assert got[0, 0].item() == pytest.approx(1000 * 1 + 10 * 0.5)
    # axis order of the input does not matter: the layout is found by name, then misread
    moved = pool_examples(t.permute(4, 2, 0, 3, 1), ("channel", "y", "sample", "z", "x"), grid=2,
                          pooling="paper-swin-axes")
    torch.testing.assert_close(moved, got)


def test_stretch_repeats_short_axes_by_hand():
    # one spatial axis of 3 tokens pooled to 8: output i averages inputs floor(3i/8) .. ceil(3(i+1)/8)-1
    t = torch.tensor([[1.0, 10.0, 100.0]]).reshape(1, 3, 1)  # (sample, x, channel)
    got = pool_examples(t, ("sample", "x", "channel"), grid=8, spatial=("x",), small_grid="stretch")
    want = [1.0, 1.0, 5.5, 10.0, 10.0, 55.0, 100.0, 100.0]
    torch.testing.assert_close(got, torch.tensor([want]))
    kept = pool_examples(t, ("sample", "x", "channel"), grid=8, spatial=("x",))  # default: kept as is
    torch.testing.assert_close(kept, torch.tensor([[1.0, 10.0, 100.0]]))
    # 2 -> 8 is pure repetition (4 copies each)
    two = pool_examples(t[:, :2], ("sample", "x", "channel"), grid=8, spatial=("x",), small_grid="stretch")
    torch.testing.assert_close(two, torch.tensor([[1.0] * 4 + [10.0] * 4]))


def test_paper_options_together_are_the_papers_one_liner():
    # adaptive_avg_pool3d(out, 8) straight on the channel-last (B, X, Y, Z, C) block output, as
    # the paper's code did: stage-3-like sizes, shorter than 8 on y and z
    t = torch.randn(2, 3, 3, 2, 16, dtype=torch.float64)
    got = pool_examples(t, DIMS, grid=8, pooling="paper-swin-axes", small_grid="stretch")
    torch.testing.assert_close(got, F.adaptive_avg_pool3d(t, 8).reshape(2, -1))
    assert got.shape == (2, 3 * 8 * 8 * 8)
    correct = pool_examples(t, DIMS, grid=8)
    assert correct.shape == (2, 16 * 3 * 3 * 2)


def test_pooling_options_are_checked():
    t = torch.zeros(1, 2, 2, 2, 3)
    with pytest.raises(ConfigError, match=re.escape("unknown pooling option; expected 'correct' | 'paper-swin-axes'")):
        pool_examples(t, DIMS, pooling="paper")
    with pytest.raises(ConfigError, match="unknown small_grid option"):
        pool_examples(t, DIMS, small_grid="repeat")
    with pytest.raises(ConfigError, match="three spatial axes"):
        pool_examples(t[..., 0, :], ("sample", "x", "y", "channel"), spatial=("x", "y"), pooling="paper-swin-axes")

