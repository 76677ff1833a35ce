"""Feature extraction for CKA: crops, store vs live outputs, named-axis units."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from attnprobe.errors import ConfigError, ShapeError, StoreError
from attnprobe.metrics.cka import cka
from attnprobe.metrics.features import (
    Crop,
    default_crop_size,
    draw_crops,
    live_outputs,
    model_blocks,
    model_channels,
    paired_live_outputs,
    pooled_features,
    store_blocks,
    store_case_ids,
    store_channels,
    store_outputs,
    token_features,
)
from attnprobe.store import capture_to_store
from tests.helpers import random_cases

ROI = (64, 64, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cases():
    return random_cases(seed=1, roi=ROI)


# --------------------------------------------------------------------------- crops


def test_crops_depend_only_on_seed_and_case_id():
    a = draw_crops((96, 96, 64), count=4, size=(64, 64, 32), seed=3, key="case7")
    draw_crops((96, 96, 64), count=4, size=(64, 64, 32), seed=3, key="other")  # no shared state
    b = draw_crops((96, 96, 64), count=4, size=(64, 64, 32), seed=3, key="case7")
    assert a == b and len(a) == 4
    assert a != draw_crops((96, 96, 64), count=4, size=(64, 64, 32), seed=4, key="case7")
    assert a != draw_crops((96, 96, 64), count=4, size=(64, 64, 32), seed=3, key="case8")
    for crop in a:
        assert crop.size == (64, 64, 32)
        assert all(0 <= s <= f - c for s, f, c in zip(crop.start, (96, 96, 64), crop.size))
    assert len({c.start for c in a}) > 1


def test_one_crop_is_the_whole_volume_and_default_sizes():
    assert draw_crops((64, 64, 32), count=1, seed=9, key="x") == [Crop((0, 0, 0), (64, 64, 32))]
    assert default_crop_size((96, 96, 64)) == (64, 64, 32)
    assert default_crop_size((128, 128, 32)) == (96, 96, 32)
    # every side would be 32 (single-voxel bottleneck): the longest axis stays whole
    assert default_crop_size((64, 32, 32)) == (64, 32, 32)
    assert default_crop_size((64, 64, 32)) == (64, 32, 32)
    with pytest.raises(ConfigError, match="larger than the prepared volume"):
        draw_crops((64, 64, 32), count=2, size=(96, 32, 32))
    with pytest.raises(ConfigError, match="number of crops"):
        draw_crops((64, 64, 32), count=0)


def test_crop_apply_cuts_the_last_three_axes():
    v = torch.arange(2 * 6 * 5 * 4).reshape(2, 6, 5, 4)
    got = Crop((1, 2, 0), (3, 2, 4)).apply(v)
    assert torch.equal(got, v[:, 1:4, 2:4, 0:4])
    with pytest.raises(ShapeError, match="does not fit"):
        Crop((4, 0, 0), (3, 2, 4)).apply(v)


# --------------------------------------------------------------------------- store vs live


def test_store_features_equal_live_features(smit, cases, tmp_path):
    path = capture_to_store(smit, cases, tmp_path / "smit.zarr", taps=["*.out"], dtype="float32")
    blocks = model_blocks(smit)
    assert store_blocks(path) == blocks and len(blocks) == 8
    assert store_channels(path) == model_channels(smit)
    assert store_case_ids(path) == ["case0", "case1", "case2"]
    stored = list(store_outputs(path))
    live = list(live_outputs(smit, cases))
    assert [(s.index, s.case_id, s.crop) for s in stored] == [(v.index, v.case_id, v.crop) for v in live]
    for s, v in zip(stored, live):
        for b in blocks:
            assert s.outputs[b].shape == v.outputs[b].shape and s.outputs[b].shape[0] == 1
            torch.testing.assert_close(s.outputs[b], v.outputs[b], rtol=0, atol=0)
            torch.testing.assert_close(pooled_features(s.outputs[b], grid=4),
                                       pooled_features(v.outputs[b], grid=4), rtol=0, atol=0)
    # a chosen order and a rank's share of it
    (only,) = list(store_outputs(path, ["case2", "case0"], indices=[1]))
    assert (only.index, only.case_id) == (1, "case0")
    torch.testing.assert_close(only.outputs["stage1.block0"], live[0].outputs["stage1.block0"])
    with pytest.raises(StoreError, match="not finished"):
        list(store_outputs(path, ["case9"]))


def test_store_without_block_outputs_is_refused(smit, cases, tmp_path):
    path = capture_to_store(smit, cases[:1], tmp_path / "attn.zarr", taps=["stage0.block0.attn"])
    with pytest.raises(StoreError, match="no block outputs"):
        store_blocks(path)


def test_both_models_get_identical_crops(smit, cases):
    twin = copy.deepcopy(smit)
    pairs = list(paired_live_outputs(smit, twin, cases[:2], crops=3, crop_size=(32, 64, 32), seed=5))
    assert [(r.index, r.crop) for r, _ in pairs] == [(i, k) for i in range(2) for k in range(3)]
    for ref, tgt in pairs:
        assert ref.key == tgt.key and ref.case_id == tgt.case_id
        for b in model_blocks(smit):
            assert torch.equal(ref.outputs[b], tgt.outputs[b])
    # the crops are the seeded ones, and they differ within a case
    boxes = draw_crops(ROI, count=3, size=(32, 64, 32), seed=5, key="case0")
    solo = list(live_outputs(smit, cases[:1], crops={"case0": boxes}))
    for k in range(3):
        assert torch.equal(solo[k].outputs["stage0.block0"], pairs[k][0].outputs["stage0.block0"])
    assert not torch.equal(pairs[0][0].outputs["stage0.block0"], pairs[1][0].outputs["stage0.block0"])


def test_two_input_sets_use_the_same_boxes(smit, cases):
    # the target set is the same volumes under other objects: same ids, same boxes -> same outputs
    other = [copy.copy(c) for c in cases[:2]]
    pairs = list(paired_live_outputs(smit, None, cases[:2], other, crops=2, crop_size=(32, 64, 32), seed=1))
    for ref, tgt in pairs:
        assert torch.equal(ref.outputs["stage2.block1"], tgt.outputs["stage2.block1"])
    with pytest.raises(ConfigError, match="not paired"):
        list(paired_live_outputs(smit, None, cases[:2], other[::-1]))


# --------------------------------------------------------------------------- units


def test_pooling_uses_the_named_spatial_axes_not_the_channel():
    """Channel-last outputs: pooling (x, y, z) and pooling (y, z, channel) give different CKA."""
    g = torch.Generator().manual_seed(0)
    n, size, ch = 12, 8, 8  # channels == spatial size: the wrong pooling even has the right shape
    base = torch.randn(n, size, size, size, ch, generator=g, dtype=torch.float64)
    # spatially smooth signal in x, y, z plus a channel pattern; target = a channel mix of it
    smooth = F.avg_pool3d(base.permute(0, 4, 1, 2, 3), 3, stride=1, padding=1).permute(0, 2, 3, 4, 1)
    mix = torch.randn(ch, ch, generator=g, dtype=torch.float64)
    x_out = smooth
    y_out = torch.tanh(smooth @ mix) + 0.3 * torch.randn(smooth.shape, generator=g, dtype=torch.float64)

    def right(t):  # (sample, channel, x, y, z) pooled over x, y, z
        return F.adaptive_avg_pool3d(t.permute(0, 4, 1, 2, 3), 2).reshape(n, -1)

    def wrong(t):  # the published bug: pooling the raw channel-last tensor
        return F.adaptive_avg_pool3d(t, 2).reshape(n, -1)

    ours = pooled_features(x_out, grid=2), pooled_features(y_out, grid=2)
    torch.testing.assert_close(ours[0], right(x_out))
    torch.testing.assert_close(ours[1], right(y_out))
    good = cka(*ours, estimator="unbiased")
    bad = cka(wrong(x_out), wrong(y_out), estimator="unbiased")
    assert good == pytest.approx(cka(right(x_out), right(y_out), estimator="unbiased"), abs=1e-12)
    assert abs(good - bad) > 1e-3


def test_token_features_rows_and_coarser_grid():
    t = torch.randn(2, 4, 6, 2, 3, dtype=torch.float64)
    rows = token_features(t)
    assert rows.shape == (2 * 4 * 6 * 2, 3)
    torch.testing.assert_close(rows[1 * 48 + (2 * 6 + 5) * 2 + 1], t[1, 2, 5, 1])  # (sample, x, y, z)
    coarse = token_features(t, grid=(2, 3, 1))
    assert coarse.shape == (2 * 2 * 3 * 1, 3)
    want = t.reshape(2, 2, 2, 3, 2, 1, 2, 3).mean(dim=(2, 4, 6)).reshape(-1, 3)
    torch.testing.assert_close(coarse, want)


def test_iterating_leaves_grad_mode_and_hooks_alone(smit, cases):
    it = live_outputs(smit, cases[:2])
    next(it)
    assert torch.is_grad_enabled()  # no_grad wraps the forward only, not the caller's code
    it.close()
    assert not smit._forward_hooks and not smit._forward_pre_hooks  # probe removed on close
