"""CKA uncertainty (case bootstrap, pairing permutations) and the random-init baseline,
checked against plain numpy loops written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnprobe.errors import ConfigError
from attnprobe.metrics.cka import gram
from attnprobe.metrics.cka_stats import bootstrap_cka, permutation_pvalues
from attnprobe.metrics.reuse import BASELINE_SEED, CKAConfig, check_examples, compare_models

pytestmark = pytest.mark.usefixtures("one_thread")


def numpy_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Biased linear CKA from its definition: HSIC with H = I - 11^T/n."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


def data(n_cases=6, crops=2, seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n_cases * crops, 5)) for _ in range(2)]
    ys = [xs[0] @ rng.normal(size=(5, 4)) + 0.5 * rng.normal(size=(n_cases * crops, 4)),
          rng.normal(size=(n_cases * crops, 3))]
    groups = np.repeat(np.arange(n_cases), crops)  # case of each example, crops adjacent
    return xs, ys, groups


def grams(features):
    return [gram(torch.from_numpy(f)) for f in features]


def test_bootstrap_resamples_cases_not_crops():
    xs, ys, groups = data()
    low, high = bootstrap_cka(grams(xs), grams(ys), groups=groups, estimator="biased", resamples=200, seed=5)
    # the same draws by hand: whole cases with replacement, every crop of a drawn case
    rng = np.random.default_rng(5)
    members = [np.flatnonzero(groups == g) for g in range(6)]
    draws = []
    for _ in range(200):
        idx = np.concatenate([members[c] for c in rng.integers(0, 6, size=6)])
        draws.append([[numpy_cka(x[idx], y[idx]) for y in ys] for x in xs])
    want_low, want_high = np.percentile(np.array(draws), [2.5, 97.5], axis=0)
    np.testing.assert_allclose(low, want_low, atol=1e-10)
    np.testing.assert_allclose(high, want_high, atol=1e-10)
    observed = np.array([[numpy_cka(x, y) for y in ys] for x in xs])
    assert (low <= observed + 1e-12).all() and (observed <= high + 1e-12).all()


def test_permutation_p_values_match_a_loop():
    xs, ys, groups = data()
    p = permutation_pvalues(grams(xs), grams(ys), groups=groups, estimator="biased", permutations=100, seed=3)
    rng = np.random.default_rng(3)
    members = [np.flatnonzero(groups == g) for g in range(6)]
    observed = np.array([[numpy_cka(x, y) for y in ys] for x in xs])
    exceed = np.zeros_like(observed)
    for _ in range(100):
        idx = np.concatenate([members[c] for c in rng.permutation(6)])
        exceed += np.array([[numpy_cka(x, y[idx]) for y in ys] for x in xs]) >= observed - 1e-12
    np.testing.assert_allclose(p, (1 + exceed) / 101)
    assert p[0, 0] <= 0.05  # y0 is built from x0: re-pairing its cases rarely matches it


def test_degenerate_resamples_and_bad_settings():
    xs, ys, groups = data(n_cases=2, crops=1)
    low, high = bootstrap_cka(grams(xs), grams(ys), groups=groups, estimator="biased", resamples=50)
    assert np.isfinite(low).all()  # resamples of one case only (constant features) are skipped
    with pytest.raises(ConfigError, match="resamples >= 10"):
        bootstrap_cka(grams(xs), grams(ys), groups=groups, resamples=5)
    with pytest.raises(ConfigError, match="bootstrap"):
        CKAConfig(bootstrap=3)


def test_too_few_examples_are_refused_before_any_forward():
    with pytest.raises(ConfigError, match="--crops"):
        check_examples(3, CKAConfig(estimator="unbiased"))
    warnings = []
    check_examples(6, CKAConfig(estimator="biased"), warn=warnings.append)
    assert warnings and "baseline" in warnings[0]
    check_examples(3, CKAConfig(unit="tokens"))  # tokens are counted after the forwards


def test_random_init_baseline_equals_separate_random_models(smit, tmp_path):
    from attnprobe.data.preprocess import PreprocessConfig, prepare_array
    from attnprobe.models import build_model

    rng = np.random.default_rng(0)
    cases = [prepare_array(rng.random((40, 40, 20)).astype(np.float32), case_id=f"c{i}",
                           config=PreprocessConfig(roi=(64, 64, 32), spacing=None, crop_foreground=False))
             for i in range(5)]
    config = CKAConfig(estimator="biased", pool=2, bootstrap=50, permutations=20)
    da = compare_models(smit, None, cases, config=config, baseline="random-init", baseline_seeds=2)
    runs = []
    for k in range(2):
        torch.manual_seed(BASELINE_SEED + k)
        random_model = build_model("smit", **smit.attnprobe_config).eval()
        runs.append(compare_models(smit, random_model, cases, config=CKAConfig(estimator="biased", pool=2,
                                                                               bootstrap=0, permutations=0)).values)
    np.testing.assert_allclose(da.coords["baseline_mean"].values, np.mean(runs, axis=0), atol=1e-12)
    np.testing.assert_allclose(da.coords["above_baseline"].values, da.values - np.mean(runs, axis=0), atol=1e-12)
    np.testing.assert_allclose(np.diag(da.values), 1.0, atol=1e-9)  # a model against itself
    distinct = da.coords["distinct_from_baseline"].values
    np.testing.assert_array_equal(distinct, da.coords["ci_low"].values > np.max(runs, axis=0))
    assert da.attrs["baseline_seeds"] == 2 and da.attrs["n_groups"] == 5
    # fewer than 5 cases: no interval, no p-value, no "distinct" claim -- and a warning
    with pytest.warns(UserWarning, match="at least 5 cases"):
        few = compare_models(smit, None, cases[:4], config=config, baseline="random-init", baseline_seeds=1)
    assert not {"ci_low", "p_value", "distinct_from_baseline"} & set(few.coords) and "baseline_mean" in few.coords


def test_heatmap_hatches_what_the_baseline_explains():
    import xarray as xr

    from attnprobe.figures.cka import cka_heatmap

    blocks = ["stage0.block0", "stage1.block0"]
    da = xr.DataArray(np.array([[0.9, 0.5], [0.4, 0.8]]), dims=("ref", "tgt"), coords={"ref": blocks, "tgt": blocks},
                      attrs={"baseline_seeds": 3})
    da.coords["distinct_from_baseline"] = (("ref", "tgt"), np.array([[True, False], [False, True]]))
    fig = cka_heatmap(da)
    hatched = [p for p in fig.axes[0].patches if p.get_gid() == "cka-not-above-baseline"]
    assert sorted((p.get_x(), p.get_y()) for p in hatched) == [(-0.5, 0.5), (0.5, -0.5)]
    assert "2 of 4 cells" in fig.axes[0].get_xlabel()


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_batched_centring_equals_the_cka_module(estimator):
    from attnprobe.metrics.cka import cka_matrix_from_grams
    from attnprobe.metrics.cka_stats import _cka_batch, _stack

    xs, ys, _ = data(n_cases=5, crops=2)
    want = cka_matrix_from_grams(grams(xs), grams(ys), estimator=estimator).numpy()
    np.testing.assert_allclose(_cka_batch(_stack(grams(xs)), _stack(grams(ys)), estimator), want, atol=1e-12)


def test_token_unit_baseline_reruns_both_models(smit):
    from attnprobe.data.preprocess import PreprocessConfig, prepare_array

    rng = np.random.default_rng(1)
    cases = [prepare_array(rng.random((40, 40, 20)).astype(np.float32), case_id=f"c{i}",
                           config=PreprocessConfig(roi=(64, 64, 32), spacing=None, crop_foreground=False))
             for i in range(2)]
    da = compare_models(smit, None, cases, config=CKAConfig(unit="tokens", estimator="biased"),
                        baseline="random-init", baseline_seeds=1)
    assert "ci_low" not in da.coords  # no intervals for the streamed token unit
    base = da.coords["baseline_mean"].values
    assert np.isfinite(base).all() and (np.diag(da.values) - np.diag(base) > 0).all()
