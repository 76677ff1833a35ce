"""Feature-reuse comparisons: all block pairs, units, estimators, pairing, outputs."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from attnprobe.data.preprocess import PreprocessConfig, prepare_array
from attnprobe.errors import ConfigError, DataError
from attnprobe.metrics.cka import MinibatchCKA, cka, cka_matrix
from attnprobe.metrics.features import (
    BlockOutputs,
    Crop,
    draw_crops,
    live_outputs,
    model_blocks,
    model_channels,
    pooled_features,
    token_features,
)
from attnprobe.metrics.pooling import pool_examples
from attnprobe.metrics.reuse import (
    CKAConfig,
    PooledPairs,
    TokenPairs,
    cka_dataarray,
    compare,
    compare_models,
    compare_stores,
    pair_by_case_id,
    summarize,
    write_results,
)
from attnprobe.store import capture_to_store
from tests.helpers import random_cases

ROI = (64, 64, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cases():
    return random_cases(seed=2, roi=ROI)


def synthetic(index: int, grids: dict[str, tuple[int, int, int, int]], seed: int) -> BlockOutputs:
    """Random block outputs (sample=1, x, y, z, channel) with a shared low-rank signal."""
    g = torch.Generator().manual_seed(seed * 1000 + index)
    outputs = {}
    for name, (gx, gy, gz, c) in grids.items():
        common = torch.randn(1, gx, gy, gz, 2, generator=g, dtype=torch.float64)
        outputs[name] = common @ torch.randn(2, c, generator=g, dtype=torch.float64) \
            + 0.5 * torch.randn(1, gx, gy, gz, c, generator=g, dtype=torch.float64)
    return BlockOutputs(index=index, case_id=f"c{index}", crop=0, outputs=outputs)


REF_GRIDS = {"stage0.block0": (4, 4, 2, 3), "stage1.block0": (2, 2, 1, 5), "stage1.block1": (2, 2, 1, 5)}
TGT_GRIDS = {"stage0.block0": (4, 4, 2, 4), "stage1.block0": (2, 2, 1, 6)}


def channels(grids):
    return {k: v[-1] for k, v in grids.items()}


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"unit": "tokens", "kernel": "rbf"}, "only the linear kernel"),
    ({"unit": "tokens", "estimator": "minibatch"}, "exact CKA over all tokens"),
    ({"batch_size": 3}, "minibatch size"),
    ({"unit": "voxels"}, "unknown unit"),
    ({"estimator": "debiased"}, "unknown estimator"),
    ({"pool": 0}, "pooling grid"),
    ({"gemm_dtype": "float16"}, "unknown gemm_dtype"),
    ({"median": "all"}, "unknown median option; expected 'pairs' | 'kornblith'; got 'all'"),
    ({"pooling": "paper"}, "unknown pooling"),
    ({"small_grid": "repeat"}, "unknown small_grid"),
    ({"unit": "tokens", "pooling": "paper-swin-axes"}, "pooled unit only"),
])
def test_config_refuses_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CKAConfig(**kwargs)


def test_config_records_the_convention_options():
    attrs = CKAConfig(kernel="rbf", median="kornblith", pooling="paper-swin-axes", small_grid="stretch").as_attrs()
    assert attrs["median"] == "kornblith" and attrs["pooling"] == "paper-swin-axes" and attrs["small_grid"] == "stretch"
    defaults = CKAConfig().as_attrs()
    assert defaults["pooling"] == "correct" and defaults["small_grid"] == "keep" and "median" not in defaults


def test_pooled_pairs_use_the_configured_pooling():
    g = torch.Generator().manual_seed(4)
    outs = [torch.randn(1, 3, 3, 2, 16, generator=g, dtype=torch.float64) for _ in range(6)]
    block = "stage3.block0"
    for pooling, small_grid in (("correct", "keep"), ("paper-swin-axes", "stretch")):
        cfg = CKAConfig(estimator="biased", pool=8, pooling=pooling, small_grid=small_grid)
        acc = PooledPairs([block], [block], config=cfg)
        for i, out in enumerate(outs):
            item = BlockOutputs(index=i, case_id=f"c{i}", crop=0, outputs={block: out})
            acc.update(item, item)
        assert acc._items[0][1][0].shape == ((1, 16 * 3 * 3 * 2) if pooling == "correct" else (1, 3 * 8 * 8 * 8))
        want = pool_examples(outs[0], ("sample", "x", "y", "z", "channel"), grid=8, pooling=pooling,
                             small_grid=small_grid).float()
        torch.testing.assert_close(acc._items[0][1][0], want)


# --------------------------------------------------------------------------- live models


def test_a_model_against_itself_has_a_unit_diagonal_with_crops(smit, cases):
    twin = copy.deepcopy(smit)
    da = compare_models(smit, twin, cases, config=CKAConfig(estimator="unbiased"), crops=2,
                        crop_size=(32, 64, 32), seed=3, names=("pre", "twin"))
    assert da.dims == ("ref", "tgt") and da.shape == (8, 8)
    assert list(da["ref"].values) == model_blocks(smit) == list(da["tgt"].values)
    np.testing.assert_allclose(np.diag(da.values), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(da.values, da.values.T, atol=1e-12)
    assert da.attrs["n"] == 6 and da.attrs["crops"] == 2 and da.attrs["ref"] == "pre"
    assert da.attrs["unit"] == "pooled" and da.attrs["estimator"] == "unbiased"


def test_a_crop_shifted_copy_is_not_identical(smit, cases):
    boxes = {c.case_id: draw_crops(ROI, count=2, size=(32, 64, 32), seed=3, key=c.case_id) for c in cases}
    shifted = {k: [Crop(((b.start[0] + 16) % 33, b.start[1], b.start[2]), b.size) for b in v]
               for k, v in boxes.items()}
    assert shifted != boxes
    pairs = zip(live_outputs(smit, cases, crops=boxes), live_outputs(smit, cases, crops=shifted))
    ch = model_channels(smit)
    da = compare(pairs, ref_channels=ch, tgt_channels=ch, config=CKAConfig(estimator="biased"))
    assert (np.diag(da.values) < 0.999).all()
    same = zip(live_outputs(smit, cases, crops=boxes), live_outputs(smit, cases, crops=boxes))
    da = compare(same, ref_channels=ch, tgt_channels=ch, config=CKAConfig(estimator="biased"))
    np.testing.assert_allclose(np.diag(da.values), 1.0, atol=1e-12)


def test_one_model_on_two_input_sets_paired_by_case_id(smit, cases):
    # target set: the same cases in another order with a monotone intensity change
    other = [prepare_array(np.sqrt(c.image[0].numpy()) + 0.1, case_id=c.case_id,
                           config=PreprocessConfig(roi=ROI, spacing=None, crop_foreground=False))
             for c in cases[::-1]]
    da = compare_models(smit, None, cases, other, config=CKAConfig(unit="tokens"))
    assert da.shape == (8, 8) and ((da.values > 0.2) & (da.values < 1 - 1e-6)).all()
    with pytest.raises(DataError, match="different cases"):
        compare_models(smit, None, cases, other[:2], config=CKAConfig(unit="tokens"))


# --------------------------------------------------------------------------- accumulators


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_streamed_tokens_equal_full_batch_linear_cka(estimator):
    examples = [(synthetic(i, REF_GRIDS, 1), synthetic(i, TGT_GRIDS, 2)) for i in range(3)]
    config = CKAConfig(unit="tokens", estimator=estimator, gemm_dtype="float64")
    acc = TokenPairs(channels(REF_GRIDS), channels(TGT_GRIDS), config=config)
    for ref, tgt in examples:
        acc.update(ref, tgt)
    matrix, inputs, tokens = acc.compute()
    assert inputs == 3 and matrix.shape == (3, 2)
    for i, a in enumerate(REF_GRIDS):
        for j, b in enumerate(TGT_GRIDS):
            grid = tuple(min(u, v) for u, v in zip(REF_GRIDS[a][:3], TGT_GRIDS[b][:3]))
            x = torch.cat([token_features(r.outputs[a], grid=grid) for r, _ in examples])
            y = torch.cat([token_features(t.outputs[b], grid=grid) for _, t in examples])
            assert tokens[i, j] == x.shape[0] == 3 * int(np.prod(grid))
            want = cka(x, y, kernel="linear", estimator=estimator, gemm_dtype="float64")
            assert float(matrix[i, j]) == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_pooled_result_does_not_depend_on_the_update_order():
    examples = [(synthetic(i, REF_GRIDS, 3), synthetic(i, TGT_GRIDS, 4)) for i in range(7)]
    config = CKAConfig(estimator="unbiased", pool=2)
    first = PooledPairs(list(REF_GRIDS), list(TGT_GRIDS), config=config)
    for ref, tgt in examples:
        first.update(ref, tgt)
    shuffled = PooledPairs(list(REF_GRIDS), list(TGT_GRIDS), config=config)
    for ref, tgt in random.Random(0).sample(examples, len(examples)):  # e.g. ranks' shares interleaved
        shuffled.update(ref, tgt)
    (a, n), (b, _) = first.compute(), shuffled.compute()
    assert n == 7
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    xs = [torch.cat([pooled_features(r.outputs[k], grid=2) for r, _ in examples]) for k in REF_GRIDS]
    ys = [torch.cat([pooled_features(t.outputs[k], grid=2) for _, t in examples]) for k in TGT_GRIDS]
    torch.testing.assert_close(a, cka_matrix([x.float() for x in xs], [y.float() for y in ys],
                                             estimator="unbiased"))


def test_minibatch_estimator_runs_over_batches_of_the_given_size():
    examples = [(synthetic(i, REF_GRIDS, 5), synthetic(i, TGT_GRIDS, 6)) for i in range(10)]
    config = CKAConfig(estimator="minibatch", batch_size=4, pool=2, kernel="rbf")
    da = compare(examples, ref_channels=channels(REF_GRIDS), tgt_channels=channels(TGT_GRIDS), config=config)
    assert da.shape == (3, 2) and np.isfinite(da.values).all() and da.attrs["batch_size"] == 4
    # batches [0, 4) and [4, 10): a remainder under 4 joins the batch before it
    xs = [torch.cat([pooled_features(r.outputs[k], grid=2) for r, _ in examples]).float() for k in REF_GRIDS]
    ys = [torch.cat([pooled_features(t.outputs[k], grid=2) for _, t in examples]).float() for k in TGT_GRIDS]
    want = MinibatchCKA(kernel="rbf")
    for lo, hi in ((0, 4), (4, 10)):
        want.update([x[lo:hi] for x in xs], [y[lo:hi] for y in ys])
    np.testing.assert_allclose(da.values, want.compute().numpy(), rtol=1e-12)


def test_unpaired_examples_are_refused():
    acc = PooledPairs(list(REF_GRIDS), list(TGT_GRIDS), config=CKAConfig())
    with pytest.raises(DataError, match="not paired"):
        acc.update(synthetic(0, REF_GRIDS, 1), synthetic(1, TGT_GRIDS, 1))


# --------------------------------------------------------------------------- pairing, stores


def test_pair_by_case_id():
    assert pair_by_case_id(["a", "b", "c"], ["c", "a", "b"]) == [1, 2, 0]
    with pytest.raises(DataError, match="different cases") as err:
        pair_by_case_id(["a", "b"], ["a", "z"], what="stores")
    assert "'b'" in str(err.value) and "'z'" in str(err.value)
    with pytest.raises(DataError, match="repeat"):
        pair_by_case_id(["a", "a"], ["a", "a"])


def test_stores_of_the_same_cases_match_live_and_other_cases_are_refused(smit, cases, tmp_path):
    a = capture_to_store(smit, cases, tmp_path / "a.zarr", taps=["*.out"], dtype="float32")
    b = capture_to_store(smit, cases[::-1], tmp_path / "b.zarr", taps=["*.out"], dtype="float32")
    config = CKAConfig(unit="tokens", estimator="biased")
    from_stores = compare_stores(a, b, config=config)  # paired by id although stored in other orders
    live = compare_models(smit, None, cases, cases[::-1], config=config)
    np.testing.assert_allclose(from_stores.values, live.values, rtol=1e-12)
    np.testing.assert_allclose(np.diag(from_stores.values), 1.0, atol=1e-12)
    assert from_stores.attrs["ref_source"] == "store" and from_stores.attrs["n_inputs"] == 3
    c = capture_to_store(smit, cases[:2], tmp_path / "c.zarr", taps=["*.out"], dtype="float32")
    with pytest.raises(DataError, match="different cases"):
        compare_stores(a, c, config=config)


# --------------------------------------------------------------------------- results


def test_write_results(tmp_path):
    values = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.5]])
    da = cka_dataarray(values, ["stage0.block0", "stage0.block1"], ["stage0.block0", "stage0.block1", "stage1.block0"],
                       attrs={"ref": "ct", "tgt": "mri", "n": 5, "roi": (96, 96, 64), "skip": None})
    paths = write_results(da, tmp_path / "out")
    back = xr.open_dataarray(paths["cka.nc"], engine="h5netcdf")
    assert back.name == "cka" and back.dims == ("ref", "tgt")
    assert list(back["tgt"].values) == ["stage0.block0", "stage0.block1", "stage1.block0"]
    np.testing.assert_array_equal(back.values, values)
    assert back.attrs["ref"] == "ct" and back.attrs["n"] == 5 and "skip" not in back.attrs
    table = pd.read_csv(paths["cka.csv"])
    assert list(table.columns) == ["ref", "tgt", "value"] and len(table) == 6
    assert table.query("ref == 'stage0.block1' and tgt == 'stage1.block0'")["value"].item() == 0.5
    summary = json.loads(paths["summary.json"].read_text())
    assert summary["diagonal"] == {"stage0.block0": 0.9, "stage0.block1": 0.8}
    assert summary["diagonal_mean"] == pytest.approx(0.85)
    assert summary["band_mean"] == pytest.approx((0.9 + 0.2 + 0.3 + 0.8 + 0.5) / 5)
    assert summary["off_diagonal_mean"] == pytest.approx((0.2 + 0.1 + 0.3 + 0.5) / 4)
    assert summary["mean_row_max"] == pytest.approx(0.85)
    assert summary["mean_best_match_shift"] == 0.0
    assert summary["attrs"]["tgt"] == "mri"
    # the paper's summaries under their own names (2 x 3: ideal columns 0, 1)
    assert summary["paper_band_mean"] == pytest.approx((0.9 + 0.2 + 0.3 + 0.8 + 0.5) / 5)
    assert summary["paper_off_diagonal_mean"] == pytest.approx(0.1)  # only (0, 2) lies beyond the band
    assert summary["paper_mean_best_match_shift"] == 0.0
    one = summarize(cka_dataarray([[0.7]], ["a"], ["b"]))
    assert one["paper_off_diagonal_mean"] is None
    assert one["off_diagonal_mean"] is None and one["diagonal"] == {"a": 0.7}


def test_progress_advances_per_crop_in_every_pass(smit, cases):
    """``on_example`` ticks once per crop, the random-init baseline's passes included, so a run
    with many crops of few cases never looks stuck (``attnprobe cka --crops 8``)."""
    ticks: list[tuple[str, int]] = []
    compare_models(smit, None, cases[:2], crops=2, crop_size=(32, 64, 32), seed=0, baseline="random-init",
                   baseline_seeds=1, config=CKAConfig(estimator="biased"),
                   on_example=lambda case, crop: ticks.append((case, crop)))
    one_pass = [(c, k) for c in ("case0", "case1") for k in (0, 1)]
    assert ticks == one_pass * 2
