"""The fast linear paths (batched all-pairs Grams, minibatch, streaming) against float64 brute force.

The references form uncentred float64 Grams of the very same float32 inputs and centre them
with an explicit ``H`` (biased) or Song et al.'s closed form (unbiased), so a path that skipped
or botched the centring, or lost precision to a large mean, shows up here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnprobe.errors import DataError, ShapeError
from attnprobe.metrics import cka_base, cka_gram
from attnprobe.metrics.cka import MinibatchCKA, StreamingLinearCKA, cka_matrix

pytestmark = pytest.mark.usefixtures("one_thread")
ESTIMATORS = ("biased", "unbiased")


def ref_hsic(k: np.ndarray, l_: np.ndarray, estimator: str) -> float:
    n = k.shape[0]
    if estimator == "biased":
        h = np.eye(n) - 1.0 / n
        return float(np.trace(k @ h @ l_ @ h)) / (n - 1) ** 2
    kt, lt = k - np.diag(np.diag(k)), l_ - np.diag(np.diag(l_))
    one = np.ones(n)
    val = (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
           - 2.0 / (n - 2) * (one @ kt @ lt @ one))
    return float(val) / (n * (n - 3))


def ref_cka(x: torch.Tensor, y: torch.Tensor, estimator: str) -> float:
    xd, yd = x.double().numpy(), y.double().numpy()
    xd, yd = xd - xd.mean(0), yd - yd.mean(0)  # float64 centring: the reference's only job
    k, l_ = xd @ xd.T, yd @ yd.T
    return ref_hsic(k, l_, estimator) / np.sqrt(ref_hsic(k, k, estimator) * ref_hsic(l_, l_, estimator))


def layers(seed: int, n: int, widths: list[int], mean: float) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 4, generator=g, dtype=torch.float64)
    out = []
    for p in widths:
        x = shared @ torch.randn(4, p, generator=g, dtype=torch.float64) + torch.randn(n, p, generator=g,
                                                                                       dtype=torch.float64)
        out.append((x + mean * (1 + torch.rand(p, generator=g, dtype=torch.float64))).float())
    return out


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("mean", [0.0, 1e4])
@pytest.mark.parametrize("large_n_path", [False, True])
def test_all_pairs_match_float64_brute_force(estimator, mean, large_n_path, monkeypatch):
    # two equal widths (one batched GEMM), one other width, and one layer wider than a column
    # chunk (partial Grams added in float64): every grouping path of _raw_grams; and both ways
    # of forming the Gram products (one stacked product / row blocks per model)
    monkeypatch.setattr(cka_base, "_COL_CHUNK", 64)
    monkeypatch.setattr("attnprobe.metrics.cka_gram._COL_CHUNK", 64)
    if large_n_path:
        monkeypatch.setattr("attnprobe.metrics.cka_gram._SMALL_GRAM", 0)
        monkeypatch.setattr("attnprobe.metrics.cka_gram._POST_ROWS", 100)  # 4 rows a block
    xs = layers(0, 24, [12, 12, 30, 150], mean)
    ys = layers(1, 24, [12, 40, 150], mean)
    got = cka_matrix(xs, ys, estimator=estimator)
    want = np.array([[ref_cka(x, y, estimator) for y in ys] for x in xs])
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    assert got.dtype == torch.float64 and got.shape == (4, 3)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("mean", [0.0, 1e4])
@pytest.mark.parametrize(("n", "path"), [(24, "small"), (25, "small"), (25, "large-chunks"), (26, "large"),
                                         (27, "large")])
def test_all_pairs_of_equal_widths_use_three_gram_blocks(estimator, mean, n, path, monkeypatch):
    # equal widths take the halved-Gram path (A, B, C blocks); even n lays them out as rows
    # [A B | Bᵀ C], odd n splits unevenly; the large-n path forms the block products in row
    # blocks (rectangular B included)
    if path == "small":  # the Gram inner products as float32 pieces of 64 terms (n = 25: 625 = 9 x 64 + 49, padded)
        monkeypatch.setattr(cka_gram, "_INNER_CHUNK", 64)
    else:  # float32 Grams: products and row sums as float32 pieces of 8 terms (rows of 13 to 27: padded)
        monkeypatch.setattr(cka_gram, "_SMALL_GRAM", 0)
        monkeypatch.setattr(cka_gram, "_POST_ROWS", 60)  # 2 rows a block
        monkeypatch.setattr(cka_gram, "_INNER_CHUNK", 8)
    if path == "large-chunks":  # column chunks (blocks added in float64: float64 Grams) in batches of two layers
        monkeypatch.setattr(cka_gram, "_COL_CHUNK", 8)
        monkeypatch.setattr(cka_gram, "_BATCH_TOTAL", 2 * 25 * 8)
    xs = layers(4, n, [20, 20, 20], mean)
    ys = layers(5, n, [20, 20], mean)
    assert cka_gram._halvable(xs + ys, torch.float32)
    got = cka_matrix(xs, ys, estimator=estimator)
    want = np.array([[ref_cka(x, y, estimator) for y in ys] for x in xs])
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    # ... and agrees with the full-Gram path
    monkeypatch.setattr(cka_gram, "_halvable", lambda feats, dt: False)
    np.testing.assert_allclose(got.numpy(), cka_matrix(xs, ys, estimator=estimator).numpy(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("mean", [0.0, 1e4])
@pytest.mark.parametrize("n", [4, 5, 7])
def test_all_pairs_at_the_fewest_examples(estimator, mean, n):
    # at n = 4 the unbiased corrections are as large as <K, L> itself, so the row sums must be
    # float64: float32 sums of these few terms put CKA up to 4e-6 off
    xs = layers(0, n, [48, 48, 48], mean)
    ys = layers(100, n, [48, 48], mean)
    got = cka_matrix(xs, ys, estimator=estimator)
    want = np.array([[ref_cka(x, y, estimator) for y in ys] for x in xs])
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize(("mean", "raw", "centred"), [
    (0.0, 3, 0),  # small means: blocks from the features as they are
    (0.3, 3, 0),
    (1e4, 0, 3),  # the first rows show a large mean: centred at once
    ("late", 3, 3),  # the first rows look centred, the Gram check finds the mean: centred after all
])
def test_large_layers_skip_the_centred_copy_only_when_the_mean_is_small(estimator, mean, raw, centred,
                                                                        monkeypatch):
    # every layer counts as large and forms its Gram blocks on its own; exact either way
    monkeypatch.setattr(cka_gram, "_WIDE", 0)
    calls = {"all": 0, "centred": 0}
    real_blocks, real_centred = cka_gram._feature_blocks, cka_gram._centred_blocks

    def blocks_spy(x, prepare):
        calls["all"] += 1
        return real_blocks(x, prepare)

    def centred_spy(x, sub, dt):
        calls["centred"] += 1
        return real_centred(x, sub, dt)

    monkeypatch.setattr(cka_gram, "_feature_blocks", blocks_spy)
    monkeypatch.setattr(cka_gram, "_centred_blocks", centred_spy)
    xs = layers(6, 25, [20, 20], 0.0 if mean == "late" else mean)
    ys = layers(7, 25, [20], 0.0 if mean == "late" else mean)
    if mean == "late":  # a large offset in the rows past the peeked corner
        for t in xs + ys:
            t[cka_gram._PEEK_ROWS:] += 1e3
    got = cka_matrix(xs, ys, estimator=estimator)
    assert (calls["all"] - calls["centred"], calls["centred"]) == (raw, centred)
    want = np.array([[ref_cka(x, y, estimator) for y in ys] for x in xs])
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script inside torch.autograd.forward_ad
@pytest.mark.parametrize("large_n_path", [False, True])
def test_all_pairs_errors_name_the_layer_and_keep_no_graph(large_n_path, monkeypatch):
    if large_n_path:
        monkeypatch.setattr(cka_gram, "_SMALL_GRAM", 0)
    xs = layers(8, 24, [12, 12], 0.0)
    ys = layers(9, 24, [12], 0.0)
    nan = xs[1].clone()
    nan[3, 2] = float("nan")
    with pytest.raises(DataError, match=r"xs\[1\] holds NaN or inf"):
        cka_matrix([xs[0], nan], ys)
    with pytest.raises(DataError, match=r"constant y layers.*got zero centred Gram at layer\(s\) \[1\]"):
        cka_matrix(xs, [ys[0], torch.full((24, 12), 3.0)])
    with pytest.raises(ShapeError, match="same examples"):
        cka_matrix(xs, [ys[0][:20]])
    with pytest.raises(ShapeError, match=r"ys\[0\] must be a feature matrix"):
        cka_matrix(xs, [ys[0][None]])
    with pytest.raises(ShapeError, match="ys is empty"):
        cka_matrix(xs, [])
    # inputs that record autograd, and numpy arrays: same numbers, no graph
    want = cka_matrix(xs, ys)
    got = cka_matrix([x.clone().requires_grad_() for x in xs], [y.numpy() for y in ys])
    assert not got.requires_grad
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-6)
    with torch.autograd.forward_ad.dual_level():  # nor forward-mode tangents
        dual = torch.autograd.forward_ad.make_dual(xs[0].clone(), torch.ones_like(xs[0]))
        assert torch.autograd.forward_ad.unpack_dual(cka_matrix([dual, xs[1]], ys)).tangent is None


def test_all_pairs_large_layers_run_one_by_one():
    # layers too big to batch take the one-layer path; same answer as the batched one
    xs = layers(2, 16, [20000], 1e4)
    ys = layers(3, 16, [20000, 8], 1e4)
    got = cka_matrix(xs, ys, estimator="unbiased")
    want = [ref_cka(xs[0], y, "unbiased") for y in ys]
    np.testing.assert_allclose(got[0].numpy(), want, rtol=0, atol=1e-6)


def test_minibatch_linear_matches_brute_force_average():
    xs, ys = layers(4, 60, [10, 25], 1e4), layers(5, 60, [10], 1e4)
    acc = MinibatchCKA()
    for s in range(0, 60, 20):
        acc.update([x[s:s + 20] for x in xs], [y[s:s + 20] for y in ys])

    def gram(a, s):  # float64 centring first: unbiased HSIC ignores it, float64 rounding does not
        u = a[s:s + 20].double().numpy()
        u = u - u.mean(0)
        return u @ u.T

    def avg(a, b):
        return np.mean([ref_hsic(gram(a, s), gram(b, s), "unbiased") for s in range(0, 60, 20)])

    want = [[avg(x, ys[0]) / np.sqrt(avg(x, x) * avg(ys[0], ys[0]))] for x in xs]
    np.testing.assert_allclose(acc.compute().numpy(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_streaming_small_batches_with_large_drifting_means(estimator):
    x, y = layers(6, 400, [9], 1e4)[0], layers(7, 400, [5], 1e4)[0]
    x[200:] += 50.0  # the second half's mean is far from the stream's centre (its first batch)
    acc = StreamingLinearCKA()
    for s in range(0, 400, 16):
        acc.update(x[s:s + 16], y[s:s + 16])
    assert acc.n == 400
    assert acc.compute(estimator) == pytest.approx(ref_cka(x, y, estimator), abs=1e-6)


def test_streaming_split_and_merge_equal_one_pass():
    x, y = layers(8, 300, [7], 1e3)[0], layers(9, 300, [6], 1e3)[0]
    one = StreamingLinearCKA()
    for s in range(0, 300, 25):
        one.update(x[s:s + 25], y[s:s + 25])
    left, right = StreamingLinearCKA(), StreamingLinearCKA()
    for s in range(0, 300, 25):
        (left if s < 125 else right).update(x[s:s + 25], y[s:s + 25])
    merged = left.merge(right)
    for est in ESTIMATORS:  # same batch products, so agreement to float64 rounding
        assert merged.compute(est) == pytest.approx(one.compute(est), rel=1e-11)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_layer_against_an_equal_copy_is_one_to_float64_round_off(estimator):
    # comparing a model with itself (two stores of the same cases) gives 1 to float64
    # round-off, not float32's: self and cross products must come from GEMMs of the same
    # shapes (three quarters of XᵀX and YᵀY with a full XᵀY broke this for streaming)
    x = layers(10, 1500, [12], 3.0)[0]
    acc = StreamingLinearCKA()
    for s in range(0, 1500, 500):
        acc.update(x[s:s + 500], x[s:s + 500].clone())
    assert acc.compute(estimator) == pytest.approx(1.0, abs=1e-12)
    assert cka_matrix([x], [x.clone()], estimator=estimator).item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_benchmark_floor_returns_the_library_bits(estimator: str) -> None:
    """``benchmarks/cka.py --floor`` times the small-n path as bare torch calls; its time is a
    floor of the library's only while it does the very same arithmetic."""
    from benchmarks.cka import eager_floor, floor_applies, model_layers

    cpu = torch.device("cpu")
    for n, p in ((64, 384), (96, 200)):
        assert floor_applies(n, p)
        xs, ys = model_layers(0, n, p, 3, 0.0, cpu), model_layers(1, n, p, 2, 5.0, cpu)
        assert torch.equal(eager_floor(xs, ys, estimator), cka_matrix(xs, ys, estimator=estimator))
    assert not floor_applies(32, 384) and not floor_applies(64, 3072)
