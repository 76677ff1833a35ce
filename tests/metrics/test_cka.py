"""Tests for attnprobe.metrics.cka.

References used here are written independently of the library: dense numpy float64 with
an explicit centring matrix H for biased HSIC, and Song et al. (2012, JMLR 13, eq. 5) closed
form with ``1ᵀK̃1`` terms on zero-diagonal Grams for unbiased HSIC.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from attnprobe.errors import ConfigError, DataError, ShapeError
from attnprobe.metrics import cka as C
from attnprobe.metrics.cka import (
    MinibatchCKA,
    StreamingLinearCKA,
    cka,
    cka_from_grams,
    cka_matrix,
    cka_matrix_from_grams,
    cka_summary,
    hsic,
    linear_cka,
    linear_gram,
    minibatch_cka,
    paper_cka_summary,
    rbf_gram,
)
from tests.helpers import free_port, tf32_left_on

# Tiny tensors: one thread is faster and immune to OpenMP stalls on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")

PROP = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**32 - 1)


# --------------------------------------------------------------------------- references


def ref_hsic_biased(k: np.ndarray, l_: np.ndarray) -> float:
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l_ @ h)) / (n - 1) ** 2


def ref_hsic_unbiased(k: np.ndarray, l_: np.ndarray) -> float:
    n = k.shape[0]
    kt, lt = k.copy(), l_.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    val = (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
           - 2.0 / (n - 2) * (one @ kt @ lt @ one))
    return float(val) / (n * (n - 3))


def ref_cka(x: np.ndarray, y: np.ndarray, estimator: str = "biased") -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    k, l_ = x @ x.T, y @ y.T  # uncentred on purpose: both estimators must not care
    h = ref_hsic_biased if estimator == "biased" else ref_hsic_unbiased
    return h(k, l_) / np.sqrt(h(k, k) * h(l_, l_))


def ref_rbf(x: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    iu = np.triu_indices(len(x), 1)
    sigma = threshold * np.median(np.sqrt(d2[iu]))
    return np.exp(-d2 / (2 * sigma**2))


def related(seed: int, n: int, p: int, q: int, mean: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """x and a noisy nonlinear function of it, so CKA is neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = np.tanh(x @ rng.normal(size=(p, q))) + 0.5 * rng.normal(size=(n, q))
    return x + mean, y + mean


def orthogonal(seed: int, p: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(p, p)))
    return q * np.sign(np.diag(r))


ESTIMATORS = ["biased", "unbiased"]


# --------------------------------------------------------------------------- basic identities


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("n", [10, 300])  # Gram path and feature path for the linear kernel
def test_self_cka_is_one(kernel, estimator, n):
    x, _ = related(0, n, 12, 3)
    assert cka(x, x, kernel=kernel, estimator=estimator) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_matches_dense_reference(estimator):
    x, y = related(1, 40, 7, 5)
    assert cka(x, y, estimator=estimator) == pytest.approx(ref_cka(x, y, estimator), abs=1e-6)
    assert linear_cka(x, y, estimator=estimator) == pytest.approx(ref_cka(x, y, estimator), abs=1e-6)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_rbf_matches_dense_reference(estimator):
    x, y = related(2, 30, 6, 4)
    for thr in (0.5, 1.0, 2.0):
        k = rbf_gram(x, threshold=thr).numpy()
        np.testing.assert_allclose(k, ref_rbf(x, thr), atol=1e-6)
        h = ref_hsic_biased if estimator == "biased" else ref_hsic_unbiased
        kx, ky = ref_rbf(x, thr), ref_rbf(y, thr)
        want = h(kx, ky) / np.sqrt(h(kx, kx) * h(ky, ky))
        got = cka(x, y, kernel="rbf", estimator=estimator, threshold=thr)
        assert got == pytest.approx(want, abs=1e-6)


def test_unbiased_hsic_equals_song_closed_form():
    x, y = related(3, 25, 6, 4, mean=3.0)
    k, l_ = x @ x.T, np.exp(-((y[:, None] - y[None]) ** 2).sum(-1) / 10)
    assert hsic(k, l_, estimator="unbiased") == pytest.approx(ref_hsic_unbiased(k, l_), rel=1e-9)
    assert hsic(k, l_, estimator="biased") == pytest.approx(ref_hsic_biased(k, l_), rel=1e-9)
    # the feature path (no Gram) against the same closed form, here with n > p
    x2, y2 = related(4, 60, 5, 3, mean=2.0)
    acc = StreamingLinearCKA().update(x2, y2)
    k2, l2 = x2 @ x2.T, y2 @ y2.T
    want = (ref_hsic_unbiased(k2, l2), ref_hsic_unbiased(k2, k2), ref_hsic_unbiased(l2, l2))
    np.testing.assert_allclose(acc.hsic("unbiased"), want, rtol=1e-6)
    want_b = (ref_hsic_biased(k2, l2), ref_hsic_biased(k2, k2), ref_hsic_biased(l2, l2))
    np.testing.assert_allclose(acc.hsic("biased"), want_b, rtol=1e-6)


# --------------------------------------------------------------------------- invariances


@PROP
@given(seed=seeds, n=st.integers(8, 60), p=st.integers(2, 12),
       scale=st.floats(1e-3, 1e3), kernel=st.sampled_from(["linear", "rbf"]),
       estimator=st.sampled_from(ESTIMATORS))
def test_invariant_to_orthogonal_maps_and_isotropic_scaling(seed, n, p, scale, kernel, estimator):
    x, y = related(seed, n, p, 4)
    base = cka(x, y, kernel=kernel, estimator=estimator)
    moved = cka(scale * x @ orthogonal(seed + 1, p), y, kernel=kernel, estimator=estimator)
    assert moved == pytest.approx(base, abs=1e-6)


def test_not_invariant_to_arbitrary_invertible_maps():
    x, _ = related(5, 200, 4, 1)
    y = x[:, :1] + 0.1 * np.random.default_rng(0).normal(size=(200, 1))
    a = np.diag([1.0, 30.0, 30.0, 30.0])  # invertible, but it re-weights the directions
    before, after = cka(x, y), cka(x @ a, y)
    assert abs(before - after) > 0.1
    assert np.linalg.matrix_rank(a) == 4


# --------------------------------------------------------------------------- forms agree


@PROP
@given(seed=seeds, n=st.integers(4, 80), p=st.integers(1, 10), q=st.integers(1, 10),
       estimator=st.sampled_from(ESTIMATORS))
def test_gram_form_equals_feature_form(seed, n, p, q, estimator):
    x, y = related(seed, n, p, q, mean=5.0)
    # float64 GEMMs: the identity is exact, and unbiased HSIC at n ~ 4 cancels badly enough
    # to turn float32 rounding (1e-7) into ~1e-6 differences between the two forms
    from_grams = cka_from_grams(linear_gram(x, gemm_dtype="float64"),
                                linear_gram(y, gemm_dtype="float64"), estimator=estimator)
    from_features = linear_cka(x, y, estimator=estimator, gemm_dtype="float64")
    assert from_features == pytest.approx(from_grams, abs=1e-9)
    assert from_grams == pytest.approx(ref_cka(x - x.mean(0), y - y.mean(0), estimator), abs=1e-9)
    if n >= 20:  # default float32 GEMMs once the estimator is well conditioned
        assert cka(x, y, estimator=estimator) == pytest.approx(from_grams, abs=1e-6)


@PROP
@given(seed=seeds, n=st.integers(4, 90),
       cuts=st.lists(st.floats(0, 1), min_size=0, max_size=8),
       estimator=st.sampled_from(ESTIMATORS))
def test_streaming_equals_full_batch_for_any_split(seed, n, cuts, estimator):
    x, y = related(seed, n, 6, 4, mean=50.0)
    edges = [0, *sorted(int(c * n) for c in cuts), n]  # repeats give empty batches too
    exact, fast = StreamingLinearCKA(gemm_dtype="float64"), StreamingLinearCKA()
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        exact.update(x[a:b], y[a:b])
        fast.update(x[a:b], y[a:b])
    assert exact.n == fast.n == n
    want = ref_cka(x - x.mean(0), y - y.mean(0), estimator)
    assert exact.compute(estimator) == pytest.approx(want, abs=1e-9)
    if n >= 20 or estimator == "biased":  # unbiased at n ~ 4 amplifies float32 rounding
        assert fast.compute(estimator) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("gemm_dtype", ["float32", "float64"])
def test_merging_two_states_equals_one_state_over_all_data(gemm_dtype):
    x, y = related(6, 300, 9, 5, mean=-20.0)
    x[110:] += 3.0  # the two parts have different means
    new = lambda *d: StreamingLinearCKA(*d, gemm_dtype=gemm_dtype)  # noqa: E731
    whole = new().update(x, y)
    left = new().update(x[:70], y[:70]).update(x[70:110], y[70:110])
    merged = left.merge(new().update(x[110:], y[110:]))
    assert merged.n == 300
    for est in ESTIMATORS:
        assert merged.compute(est) == pytest.approx(whole.compute(est), abs=1e-7)
    if gemm_dtype == "float64":  # the merge algebra itself is exact up to float64 rounding
        np.testing.assert_allclose(merged.flat_state().numpy(), whole.flat_state().numpy(),
                                   rtol=1e-10, atol=1e-8)
    # empty states on either side change nothing; the flat state round-trips
    empty = new(9, 5)
    assert empty.merge(whole).compute() == pytest.approx(whole.compute(), abs=1e-12)
    assert whole.merge(new()).n == 300
    back = StreamingLinearCKA.from_flat_state(whole.flat_state(), 9, 5)
    assert back.compute("unbiased") == pytest.approx(whole.compute("unbiased"), abs=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_all_pairs_matrix_equals_pair_by_pair(kernel, estimator):
    rng = np.random.default_rng(7)
    base = rng.normal(size=(30, 6))
    xs = [base @ rng.normal(size=(6, p)) + 0.3 * rng.normal(size=(30, p)) for p in (4, 9, 16)]
    ys = [np.tanh(base @ rng.normal(size=(6, q))) for q in (3, 5, 8, 20)]
    m = cka_matrix(xs, ys, kernel=kernel, estimator=estimator)
    assert m.shape == (3, 4) and m.dtype == torch.float64
    want = np.array([[cka(x, y, kernel=kernel, estimator=estimator) for y in ys] for x in xs])
    np.testing.assert_allclose(m.numpy(), want, atol=1e-6)
    grams = cka_matrix_from_grams([linear_gram(x) for x in xs], [linear_gram(y) for y in ys],
                                  estimator=estimator)
    if kernel == "linear":
        np.testing.assert_allclose(grams.numpy(), want, atol=1e-6)


# --------------------------------------------------------------------------- estimators


def test_independent_gaussians_unbiased_near_zero_biased_not():
    rng = np.random.default_rng(8)
    biased, unbiased = [], []
    for _ in range(30):  # n small next to p: where the biased estimator is far off
        x, y = rng.normal(size=(24, 32)), rng.normal(size=(24, 32))
        biased.append(cka(x, y))
        unbiased.append(cka(x, y, estimator="unbiased"))
    assert np.mean(biased) > 0.4
    assert abs(np.mean(unbiased)) < 0.05


def test_minibatch_converges_to_unbiased_full_batch():
    x, y = related(9, 3200, 16, 16)
    full = cka(x, y, estimator="unbiased")
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]  # 100 batches
    mb = minibatch_cka(batches)
    assert mb == pytest.approx(full, abs=0.01)
    # averaging biased HSIC per batch instead would stay far off: why the estimator matters
    hb = np.mean([StreamingLinearCKA().update(a, b).hsic("biased") for a, b in batches], axis=0)
    assert abs(hb[0] / np.sqrt(hb[1] * hb[2]) - full) > 0.05
    # one batch holding everything is exactly the unbiased full-batch CKA
    assert minibatch_cka([(x[:300], y[:300])]) == pytest.approx(
        cka(x[:300], y[:300], estimator="unbiased"), abs=1e-6)


def test_minibatch_matrix_is_ratio_of_averages_pairwise():
    rng = np.random.default_rng(10)
    acc = MinibatchCKA()
    pairs = {}
    for _ in range(5):
        z = rng.normal(size=(16, 5))
        xs = [z, z @ rng.normal(size=(5, 7))]
        ys = [np.sin(z), rng.normal(size=(16, 3)), z[:, :2]]
        acc.update(xs, ys)
        for i, a in enumerate(xs):
            for j, b in enumerate(ys):
                pairs.setdefault((i, j), []).append((a, b))
    m = acc.compute()
    assert acc.batches == 5 and m.shape == (2, 3)
    for (i, j), batches in pairs.items():
        # same formula; the float32 Gram GEMMs are grouped differently (all layers of one width
        # vs one pair), which moves the last bits: a wrong average would be off by > 1e-3
        assert float(m[i, j]) == pytest.approx(minibatch_cka(batches), abs=1e-7)


# --------------------------------------------------------------------------- precision


def test_float32_inputs_with_large_means_keep_accuracy():
    x64, y64 = related(11, 300, 24, 16)
    x32 = (1e4 + x64).astype(np.float32)  # means 10^4 times the spread
    y32 = (1e4 + y64).astype(np.float32)
    # float64 reference on the same float32 numbers, centred before any product (even
    # float64 loses ~1e-4 of CKA on these inputs without centring first)
    xc = x32.astype(np.float64) - x32.mean(0, dtype=np.float64)
    yc = y32.astype(np.float64) - y32.mean(0, dtype=np.float64)
    ref = {e: ref_cka(xc, yc, e) for e in ESTIMATORS}
    xt, yt = torch.from_numpy(x32), torch.from_numpy(y32)
    for e in ESTIMATORS:
        assert linear_cka(xt, yt, estimator=e) == pytest.approx(ref[e], abs=1e-6)
        assert cka_from_grams(linear_gram(xt), linear_gram(yt), estimator=e) == \
            pytest.approx(ref[e], abs=1e-6)
        stream = StreamingLinearCKA()
        for i in range(0, 300, 47):
            stream.update(xt[i:i + 47], yt[i:i + 47])
        assert stream.compute(e) == pytest.approx(ref[e], abs=1e-6)
        assert float(cka_matrix([xt], [yt], estimator=e)[0, 0]) == pytest.approx(ref[e], abs=1e-6)
    assert minibatch_cka([(xt, yt)]) == pytest.approx(ref["unbiased"], abs=1e-6)
    # the same float32 GEMM without centring first is far off: the test has teeth
    k, l_ = (xt @ xt.T).double().numpy(), (yt @ yt.T).double().numpy()
    naive = ref_hsic_biased(k, l_) / np.sqrt(ref_hsic_biased(k, k) * ref_hsic_biased(l_, l_))
    assert abs(naive - ref["biased"]) > 1e-3


def test_tf32_guard_restores_setting():
    mm = torch.backends.cuda.matmul
    attr = "fp32_precision" if hasattr(mm, "fp32_precision") else "allow_tf32"
    before = getattr(mm, attr)
    try:
        setattr(mm, attr, "tf32" if attr == "fp32_precision" else True)
        with C._tf32_off(torch.device("cuda")):
            assert getattr(mm, attr) in ("ieee", False)
        assert getattr(mm, attr) in ("tf32", True)
    finally:
        setattr(mm, attr, before)


def test_torch_inputs_stay_torch_and_gemm_dtype_float64_agrees():
    x, y = related(12, 500, 8, 8)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    a = linear_cka(xt, yt, gemm_dtype="float64")
    assert a == pytest.approx(linear_cka(xt, yt), abs=1e-7)
    assert a == pytest.approx(ref_cka(x, y), abs=1e-10)


def test_low_precision_and_integer_inputs():
    x, y = related(16, 400, 8, 6, mean=4.0)
    want = ref_cka(x - x.mean(0), y - y.mean(0))
    xb, yb = torch.from_numpy(x).to(torch.bfloat16), torch.from_numpy(y).to(torch.bfloat16)
    exact = ref_cka(*(t.double().numpy() - t.double().numpy().mean(0) for t in (xb, yb)))
    assert cka(xb, yb) == pytest.approx(exact, abs=1e-6)  # exact on the rounded inputs
    assert abs(exact - want) < 0.05
    xi = np.round(x * 100).astype(np.int64)
    assert cka(xi, y) == pytest.approx(ref_cka(xi - xi.mean(0), y - y.mean(0)), abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_restores_tf32():
    x, y = related(17, 5000, 64, 48, mean=1e3)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    with tf32_left_on() as still_on:
        _cuda_equals_cpu(xt, yt)
        assert still_on()


def _cuda_equals_cpu(xt: torch.Tensor, yt: torch.Tensor) -> None:
    for e in ESTIMATORS:
        cpu = linear_cka(xt, yt, estimator=e)
        assert linear_cka(xt.cuda(), yt.cuda(), estimator=e) == pytest.approx(cpu, abs=1e-6)
        acc = StreamingLinearCKA(device="cuda")
        for i in range(0, 5000, 1000):
            acc.update(xt[i:i + 1000].cuda(), yt[i:i + 1000].cuda())
        assert acc.compute(e) == pytest.approx(cpu, abs=1e-6)
    # equal widths: small n (one product of all Grams) and large n (row blocks), float32 pieces
    for rows in (64, 200):
        xs, ys = [xt[:rows, :48], yt[:rows]], [yt[:rows], xt[:rows, 16:]]
        m_cpu = cka_matrix(xs, ys)
        m_gpu = cka_matrix([t.cuda() for t in xs], [t.cuda() for t in ys])
        assert m_gpu.device.type == "cuda"
        torch.testing.assert_close(m_gpu.cpu(), m_cpu, atol=1e-6, rtol=0)


def kornblith_demo_data() -> tuple[np.ndarray, np.ndarray]:
    # The data of Kornblith et al.'s demo notebook (google-research/google-research,
    # representation_similarity/Demo.ipynb): X first, then the noise added to it.
    rng = np.random.RandomState(1337)
    x = rng.randn(100, 10)
    return x, rng.randn(100, 10) + x


def test_rbf_kornblith_median_reproduces_the_reference_values():
    x, y = kornblith_demo_data()
    # 0.6548312: "RBF CKA" with gram_rbf(X, 0.5), biased, printed (to 5 digits, 0.65483) by
    # Kornblith et al.'s Demo.ipynb (google-research/representation_similarity); 0.5016103:
    # that notebook's gram_rbf(., 1.0) with cka(..., debiased=True), run on the same data.
    assert cka(x, y, kernel="rbf", threshold=0.5, median="kornblith") == pytest.approx(0.6548312, abs=5e-8)
    assert cka(x, y, kernel="rbf", threshold=1.0, estimator="unbiased",
               median="kornblith") == pytest.approx(0.5016103, abs=5e-8)
    # the median over distinct pairs is a (slightly) larger bandwidth: another value
    assert abs(cka(x, y, kernel="rbf", threshold=0.5) - 0.6548312) > 1e-4


@pytest.mark.parametrize("median", ["pairs", "kornblith"])
def test_rbf_median_rules_against_numpy(median):
    x, _ = related(21, 31, 5, 3)  # odd n: n(n-1)/2 pairs and n² entries, both even/odd cases below
    for rows in (31, 30):
        xs = x[:rows]
        sq = ((xs[:, None, :] - xs[None, :, :]) ** 2).sum(-1)
        if median == "pairs":
            sigma2 = np.median(np.sqrt(sq[np.triu_indices(rows, 1)])) ** 2  # median of distances, i < j
        else:
            sigma2 = np.median(sq)  # all n² squared distances, the zero diagonal included
        for thr in (0.5, 1.0):
            want = np.exp(-sq / (2 * thr ** 2 * sigma2))
            np.testing.assert_allclose(rbf_gram(xs, threshold=thr, median=median).numpy(), want, atol=1e-6)
    # the options reach every form: one minibatch == the full-batch unbiased CKA
    a, b = related(22, 12, 4, 3)
    one = minibatch_cka([(a, b)], kernel="rbf", median=median)
    assert one == pytest.approx(cka(a, b, kernel="rbf", estimator="unbiased", median=median), abs=1e-9)
    m = cka_matrix([a], [b], kernel="rbf", median=median)
    assert float(m[0, 0]) == pytest.approx(cka(a, b, kernel="rbf", median=median), abs=1e-9)


# --------------------------------------------------------------------------- summaries


def test_summary_of_known_matrix():
    m = np.array([[0.9, 0.2, 0.1, 0.0],
                  [0.3, 0.8, 0.7, 0.1],
                  [0.0, 0.95, 0.4, 0.5]])
    s = cka_summary(torch.from_numpy(m))
    assert s["diagonal_mean"] == pytest.approx((0.9 + 0.8 + 0.4) / 3)
    band = [0.9, 0.2, 0.3, 0.8, 0.7, 0.95, 0.4, 0.5]
    assert s["band_mean"] == pytest.approx(np.mean(band))
    off = [0.2, 0.1, 0.0, 0.3, 0.7, 0.1, 0.0, 0.95, 0.5]
    assert s["off_diagonal_mean"] == pytest.approx(np.mean(off))
    assert s["mean_row_max"] == pytest.approx((0.9 + 0.8 + 0.95) / 3)
    assert s["mean_best_match_shift"] == pytest.approx((0 + 0 + 1) / 3)


def test_paper_summaries_square_and_rectangular():
    sq = np.arange(16, dtype=float).reshape(4, 4) ** 2 / 256
    p = paper_cka_summary(sq)
    far = [sq[i, j] for i in range(4) for j in range(4) if abs(i - j) > 1]  # band |i-j| <= 1 left out
    assert p["paper_off_diagonal_mean"] == pytest.approx(np.mean(far))
    assert p["paper_off_diagonal_mean"] != pytest.approx(cka_summary(sq)["off_diagonal_mean"])
    # on a square matrix the band and the shift are attnprobe's
    assert p["paper_band_mean"] == pytest.approx(cka_summary(sq)["band_mean"])
    assert p["paper_mean_best_match_shift"] == pytest.approx(cka_summary(sq)["mean_best_match_shift"])

    # 5 x 3: ideal columns of rows 0..4 are 0, 1, 2, 2, 2 (row index clipped into the columns)
    m = np.array([[0.9, 0.2, 0.1],
                  [0.3, 0.8, 0.7],
                  [0.0, 0.6, 0.4],
                  [0.5, 0.1, 0.2],
                  [0.3, 0.2, 0.7]])
    p = paper_cka_summary(torch.from_numpy(m))
    band = [0.9, 0.2, 0.3, 0.8, 0.7, 0.6, 0.4, 0.1, 0.2, 0.2, 0.7]  # |j - ideal| <= 1 per row
    assert p["paper_band_mean"] == pytest.approx(np.mean(band))
    # argmax per row 0, 1, 1, 0, 2 against ideal 0, 1, 2, 2, 2
    assert p["paper_mean_best_match_shift"] == pytest.approx((0 + 0 + 1 + 2 + 0) / 5)
    assert cka_summary(m)["mean_best_match_shift"] == pytest.approx((0 + 0 + 1 + 3 + 2) / 5)  # unclipped
    far = [0.1, 0.0, 0.5, 0.3]  # |j - ideal| > 1: the rest of the matrix
    assert p["paper_off_diagonal_mean"] == pytest.approx(np.mean(far))
    assert len(band) + len(far) == m.size
    assert np.isnan(paper_cka_summary(np.eye(2))["paper_off_diagonal_mean"])  # nothing that far off


# --------------------------------------------------------------------------- errors


def test_clear_errors():
    x, y = related(13, 3, 4, 4)
    with pytest.raises(ShapeError, match="at least 4"):
        cka(x, y, estimator="unbiased")
    with pytest.raises(ShapeError, match="at least 4"):
        StreamingLinearCKA().update(x, y).compute("unbiased")
    with pytest.raises(ShapeError, match="same examples"):
        cka(np.ones((5, 2)), np.ones((6, 2)))
    with pytest.raises(ShapeError, match="feature matrix"):
        cka(np.ones((5, 2, 2)), np.ones((5, 2)))
    with pytest.raises(ConfigError, match="estimator"):
        cka(x, y, estimator="debiased")
    with pytest.raises(ConfigError, match="kernel"):
        cka(x, y, kernel="poly")
    with pytest.raises(ConfigError, match="threshold"):
        cka(x, y, kernel="rbf", threshold=0.0)
    for bad in (lambda: cka(x, y, kernel="rbf", median="all"), lambda: rbf_gram(x, median="pairs "),
                lambda: MinibatchCKA(median="n2")):
        with pytest.raises(ConfigError, match="unknown median option; expected 'pairs' | 'kornblith'; got"):
            bad()
    z, _ = related(14, 10, 3, 3)
    with pytest.raises(DataError, match="without variation"):
        cka(z, np.ones((10, 3)))
    with pytest.raises(DataError, match="NaN"):
        cka(np.full((10, 3), np.nan), z)
    with pytest.raises(ShapeError, match="feature counts"):
        StreamingLinearCKA().update(z, z).update(z[:, :2], z)
    with pytest.raises(ConfigError, match="dim_x"):
        StreamingLinearCKA().reduce_()


# --------------------------------------------------------------------------- distributed


def _gloo_worker(rank: int, world: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # two ranks on a small shared box
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        data = torch.load(os.path.join(folder, "data.pt"))
        x, y = data["x"], data["y"]
        rows = range(0, 70) if rank == 0 else range(70, len(x))  # uneven shares
        acc = StreamingLinearCKA(x.shape[1], y.shape[1])
        for chunk in torch.tensor(list(rows)).split(25):
            acc.update(x[chunk], y[chunk])
        acc.reduce_()
        out = {"n": acc.n, "biased": acc.compute("biased"), "unbiased": acc.compute("unbiased")}
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_streaming_reduce_over_two_gloo_processes(tmp_path):
    x, y = related(15, 160, 7, 5, mean=30.0)
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "data.pt")
    ctx = mp.spawn(_gloo_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 90  # two fresh interpreters importing torch on a busy box
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("2-process gloo reduce did not finish within 90 s")
    one = StreamingLinearCKA().update(x, y)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["n"] == 160
        for est in ESTIMATORS:  # float32 GEMMs over other batch splits: ~1e-8 apart
            assert got[est] == pytest.approx(one.compute(est), abs=1e-7)
            assert got[est] == pytest.approx(ref_cka(x - x.mean(0), y - y.mean(0), est), abs=1e-7)
