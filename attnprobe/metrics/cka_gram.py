"""Gram matrices, HSIC and CKA from Grams, and all layer pairs at once (docs/cka.md).

- :func:`linear_gram`, :func:`rbf_gram`, :func:`gram` -- ``n x n`` Grams of ``(n, p)`` features.
- :func:`center_gram`, :func:`ucenter_gram`, :func:`hsic`, :func:`cka_from_grams`.
- :func:`cka` -- one pair of feature matrices (linear or RBF, biased or unbiased HSIC).
- :func:`cka_matrix`, :func:`cka_matrix_from_grams` -- all ``L1 x L2`` layer pairs.

The linear all-pairs path (:func:`cka_matrix`, also behind
:class:`~attnprobe.metrics.cka_minibatch.MinibatchCKA`) centres each layer's features once
(column sums in float32 within chunks of 8192 rows and in float64 across them, float32
subtraction), forms all Grams of equally wide layers in one batched float32 GEMM -- three of
the four blocks of each symmetric Gram (:func:`_halved_grams`) -- and never centres a Gram:
the centring enters as exact float64 corrections from the Grams' row sums
(:func:`_linear_terms`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from attnprobe.errors import DataError, ShapeError, check_option
from attnprobe.metrics.cka_base import (
    _COL_CHUNK,
    _ROW_CHUNK,
    ESTIMATORS,
    F64,
    KERNELS,
    MEDIANS,
    Estimator,
    GemmDtype,
    Kernel,
    Median,
    _as_tensor,
    _centre,
    _check_finite,
    _check_threshold,
    _device_of,
    _feature_pair,
    _features,
    _gemm_torch_dtype,
    _hsic_scale,
    _need_n,
    _ratio,
    _sub_dtype,
    _tf32_off,
)
from attnprobe.metrics.cka_streaming import linear_cka

__all__ = [
    "cka",
    "cka_from_grams",
    "hsic",
    "linear_gram",
    "rbf_gram",
    "gram",
    "center_gram",
    "ucenter_gram",
    "cka_matrix",
    "cka_matrix_from_grams",
]


# --------------------------------------------------------------------------- Grams


def linear_gram(x: Any, *, gemm_dtype: GemmDtype = "float32") -> torch.Tensor:
    """Linear Gram matrix of column-centred features.

    Parameters
    ----------
    x : array or tensor, shape (n, p)
        Features, one row per example.
    gemm_dtype : {"float32", "float64"}
        Dtype of the GEMMs; partial sums over feature chunks are added in float64.

    Returns
    -------
    torch.Tensor, shape (n, n), float64
        ``Xc Xcᵀ`` with ``Xc = X - mean(X)``. Centring does not change CKA and keeps float32
        products accurate when features have a large mean.

    Notes
    -----
    ``x`` minus its float32-rounded mean is formed in float32 (correctly rounded, and exact
    where the mean dominates); the remaining tiny offset is removed exactly by double-centring
    the float64 Gram.
    """
    xt = _features(x, "x")
    dt = _gemm_torch_dtype(gemm_dtype)
    sub = _sub_dtype(xt, dt)
    n, p = xt.shape
    centre = _centre(xt, sub, "x")
    k = torch.zeros(n, n, dtype=F64, device=xt.device)
    with _tf32_off(xt.device):
        for s in range(0, p, _COL_CHUNK):
            w = (xt[:, s:s + _COL_CHUNK].to(sub) - centre[s:s + _COL_CHUNK]).to(dt)
            k += w @ w.T
    k = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()
    return 0.5 * (k + k.T)  # exact symmetry keeps the U-centred Gram symmetric too


def _median(values: torch.Tensor) -> torch.Tensor:
    """The usual median of a 1-D tensor: the mean of the two middle values when the count is even."""
    m = values.numel()
    lo = torch.kthvalue(values, (m + 1) // 2).values
    hi = torch.kthvalue(values, m // 2 + 1).values
    return 0.5 * (lo + hi)


def _bandwidth_scale(sq_dist: torch.Tensor, median: Median) -> torch.Tensor:
    """The distance ``d`` that ``sigma = threshold * d`` scales (see :func:`rbf_gram`)."""
    if median == "pairs":
        n = sq_dist.shape[0]
        iu = torch.triu_indices(n, n, offset=1, device=sq_dist.device)
        return _median(sq_dist[iu[0], iu[1]].sqrt())
    # Kornblith et al.'s reference code: the median of the squared distances over all n² entries,
    # zero diagonal included; sigma² = threshold² x that median.
    return _median(sq_dist.reshape(-1)).sqrt()


def rbf_gram(x: Any, *, threshold: float = 1.0, median: Median = "pairs",
             gemm_dtype: GemmDtype = "float32") -> torch.Tensor:
    """RBF Gram matrix ``exp(-|xi - xj|² / (2 sigma²))``.

    Parameters
    ----------
    x : array or tensor, shape (n, p)
        Features, one row per example; ``n >= 2``.
    threshold : float
        ``sigma = threshold * d`` with ``d`` the median distance chosen by ``median``.
    median : {"pairs", "kornblith"}
        ``"pairs"`` (default): ``d`` = median of the distances ``|xi - xj|`` over the
        ``n(n-1)/2`` pairs ``i < j``. ``"kornblith"``: ``d² = `` median of the squared distances
        over all ``n²`` entries, the ``n`` zeros of the diagonal included, as in Kornblith et
        al.'s reference code (``sigma² = threshold² * median(|xi - xj|²)``); a slightly
        smaller bandwidth. See ``docs/conventions.md``.
    gemm_dtype : {"float32", "float64"}
        Dtype of the GEMM behind the distances.

    Returns
    -------
    torch.Tensor, shape (n, n), float64
    """
    threshold = _check_threshold(threshold)
    check_option("median", median, MEDIANS)
    k = linear_gram(x, gemm_dtype=gemm_dtype)
    _need_n(k.shape[0], "biased")
    diag = k.diagonal()
    sq = (diag[:, None] + diag[None, :] - 2 * k).clamp_min(0)
    sq.fill_diagonal_(0)
    scale = _bandwidth_scale(sq, median)
    if float(scale) <= 0:
        raise DataError("RBF bandwidth is zero", expected="a positive median pairwise distance",
                        got="more than half of all example pairs are identical",
                        fix="deduplicate examples or use kernel='linear'")
    sigma = threshold * scale
    return torch.exp(-sq / (2 * sigma * sigma))


def gram(x: Any, *, kernel: Kernel = "linear", threshold: float = 1.0, median: Median = "pairs",
         gemm_dtype: GemmDtype = "float32") -> torch.Tensor:
    """Gram matrix of ``x`` (shape (n, p)) for ``kernel`` in {"linear", "rbf"}; (n, n) float64.

    ``threshold`` and ``median`` set the RBF bandwidth (:func:`rbf_gram`); the linear kernel
    ignores them."""
    check_option("kernel", kernel, KERNELS)
    check_option("median", median, MEDIANS)
    if kernel == "linear":
        return linear_gram(x, gemm_dtype=gemm_dtype)
    return rbf_gram(x, threshold=threshold, median=median, gemm_dtype=gemm_dtype)


def _square(k: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    t = _as_tensor(k, name, device)
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ShapeError(f"{name} must be a square Gram matrix", expected="shape (n, n)",
                         got=f"shape {tuple(t.shape)}", fix="pass K = X Xᵀ, not the features")
    _check_finite(t, name)
    return t.to(F64)


def center_gram(k: Any) -> torch.Tensor:
    """Double-centred Gram ``H K H`` with ``H = I - 11ᵀ/n``; (n, n) -> (n, n) float64."""
    t = _square(k, "k")
    return t - t.mean(0, keepdim=True) - t.mean(1, keepdim=True) + t.mean()


def ucenter_gram(k: Any) -> torch.Tensor:
    """U-centred Gram (Song et al. 2012) whose inner products give unbiased HSIC.

    Parameters
    ----------
    k : array or tensor, shape (n, n), n >= 4

    Returns
    -------
    torch.Tensor, shape (n, n), float64
        Off the diagonal ``K̃_ij - r_i/(n-2) - c_j/(n-2) + S/((n-1)(n-2))`` with ``K̃`` the
        Gram with zeroed diagonal, ``r``/``c`` its row/column sums and ``S`` its total; zero
        on the diagonal.
    """
    t = _square(k, "k").clone()
    n = t.shape[0]
    _need_n(n, "unbiased")
    t.fill_diagonal_(0)
    row, col, total = t.sum(1, keepdim=True), t.sum(0, keepdim=True), t.sum()
    out = t - row / (n - 2) - col / (n - 2) + total / ((n - 1) * (n - 2))
    return out.fill_diagonal_(0)


def _centre_for(k: torch.Tensor, estimator: str) -> torch.Tensor:
    return center_gram(k) if estimator == "biased" else ucenter_gram(k)


def _gram_pair(gram_x: Any, gram_y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    dev = _device_of(gram_x, gram_y)
    kt, lt = _square(gram_x, "gram_x", dev), _square(gram_y, "gram_y", dev)
    if kt.shape != lt.shape:
        raise ShapeError("gram_x and gram_y must be Grams of the same examples",
                         expected="equal shapes",
                         got=f"{tuple(kt.shape)} and {tuple(lt.shape)}",
                         fix="compute both Grams on the same n examples")
    return kt, lt


def hsic(gram_x: Any, gram_y: Any, *, estimator: Estimator = "biased") -> float:
    """HSIC between two Gram matrices.

    Parameters
    ----------
    gram_x, gram_y : array or tensor, shape (n, n)
    estimator : {"biased", "unbiased"}
        ``"biased"``: ``tr(K H L H) / (n-1)²``. ``"unbiased"``: ``<K̂, L̂>_F / (n(n-3))`` with
        U-centred Grams (needs ``n >= 4``).

    Returns
    -------
    float
    """
    check_option("estimator", estimator, ESTIMATORS)
    kt, lt = _gram_pair(gram_x, gram_y)
    n = kt.shape[0]
    _need_n(n, estimator)
    val = (_centre_for(kt, estimator) * _centre_for(lt, estimator)).sum()
    return float(val) * _hsic_scale(n, estimator)


def cka_from_grams(gram_x: Any, gram_y: Any, *, estimator: Estimator = "biased") -> float:
    """CKA from two Gram matrices, shapes (n, n); ``HSIC(K,L) / sqrt(HSIC(K,K) HSIC(L,L))``."""
    check_option("estimator", estimator, ESTIMATORS)
    kt, lt = _gram_pair(gram_x, gram_y)
    _need_n(kt.shape[0], estimator)
    kc, lc = _centre_for(kt, estimator), _centre_for(lt, estimator)
    return _ratio((kc * lc).sum(), (kc * kc).sum(), (lc * lc).sum())



def cka(x: Any, y: Any, *, kernel: Kernel = "linear", estimator: Estimator = "biased",
        threshold: float = 1.0, median: Median = "pairs", gemm_dtype: GemmDtype = "float32") -> float:
    """Centered kernel alignment between two feature matrices of the same examples.

    Parameters
    ----------
    x : array or tensor, shape (n, p)
    y : array or tensor, shape (n, q)
        numpy arrays or torch tensors (any device; both on one device).
    kernel : {"linear", "rbf"}
        Linear kernel, or RBF with ``sigma = threshold * median pairwise distance``.
    estimator : {"biased", "unbiased"}
        Biased HSIC ``tr(KHLH)/(n-1)²`` or unbiased U-centred HSIC (``n >= 4``).
    threshold : float
        RBF bandwidth factor (ignored for the linear kernel).
    median : {"pairs", "kornblith"}
        Which median distance the RBF bandwidth scales (:func:`rbf_gram`); ``"kornblith"``
        reproduces Kornblith et al.'s reference values.
    gemm_dtype : {"float32", "float64"}
        Dtype of the GEMMs on centred features; sums are float64 either way.

    Returns
    -------
    float
        ``HSIC(K,L) / sqrt(HSIC(K,K) HSIC(L,L))``; 1 for ``y = x``. The unbiased estimate can
        be slightly negative.

    Notes
    -----
    The linear kernel uses feature cross-products (no ``n x n`` memory) when ``n`` exceeds
    both feature counts, and Grams otherwise; both are exact.
    """
    check_option("kernel", kernel, KERNELS)
    check_option("estimator", estimator, ESTIMATORS)
    check_option("median", median, MEDIANS)
    xt, yt = _feature_pair(x, y)
    n = xt.shape[0]
    _need_n(n, estimator)
    if kernel == "linear" and n > max(xt.shape[1], yt.shape[1]):
        return linear_cka(xt, yt, estimator=estimator, gemm_dtype=gemm_dtype)
    gx = gram(xt, kernel=kernel, threshold=threshold, median=median, gemm_dtype=gemm_dtype)
    gy = gram(yt, kernel=kernel, threshold=threshold, median=median, gemm_dtype=gemm_dtype)
    return cka_from_grams(gx, gy, estimator=estimator)


# --------------------------------------------------------------------------- all pairs


def _stack_centred(grams: Iterable[Any], estimator: str, name: str,
                   device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened centred Grams as rows (L, n²) plus their float64 squared norms (L,)."""
    rows = []
    for i, k in enumerate(grams):
        kt = _square(k, f"{name}[{i}]", device)
        _need_n(kt.shape[0], estimator)
        rows.append(_centre_for(kt, estimator).reshape(-1))
    if not rows:
        raise ShapeError(f"{name} is empty", expected="at least one layer", got="0 layers",
                         fix="pass a list of per-layer features or Grams")
    sizes = {r.numel() for r in rows}
    if len(sizes) != 1:
        raise ShapeError(f"all Grams in {name} must cover the same examples",
                         expected="one n for every layer",
                         got=f"n in {sorted(int(math.isqrt(s)) for s in sizes)}",
                         fix="compute every layer on the same examples")
    a = torch.stack(rows)
    return a, (a * a).sum(1)


def _hsic_stack(ks: Iterable[Any], ls: Iterable[Any], estimator: str,
                device: torch.device | None, normalise: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stacked product of flattened centred Grams: (L1, L2) cross terms and self terms.

    The product runs in float64: it costs ``L1 L2 n²``, small next to forming the Grams
    (``(L1 + L2) n² p``), and a float32 sum over ``n²`` terms would cost ~1e-6 of accuracy.
    """
    a, na = _stack_centred(ks, estimator, "grams_x", device)
    b, nb = _stack_centred(ls, estimator, "grams_y", a.device)
    if a.shape[1] != b.shape[1]:
        raise ShapeError("both models' Grams must cover the same examples",
                         expected=f"n = {math.isqrt(a.shape[1])}",
                         got=f"n = {math.isqrt(b.shape[1])}", fix="use the same examples")
    if normalise:  # unit rows: the product is the CKA matrix itself
        for norms, name in ((na, "x"), (nb, "y")):
            bad = (norms <= 0).nonzero().flatten().tolist()
            if bad:
                raise DataError(f"CKA is undefined for constant {name} layers",
                                expected="features that vary across examples",
                                got=f"zero centred Gram at layer(s) {bad}",
                                fix="drop those layers or check the taps")
        a, b = a / na.sqrt()[:, None], b / nb.sqrt()[:, None]
    return a @ b.T, na, nb


def cka_matrix_from_grams(grams_x: Sequence[Any], grams_y: Sequence[Any], *,
                          estimator: Estimator = "biased") -> torch.Tensor:
    """CKA of every layer pair from per-layer Grams, in one stacked matrix product.

    Parameters
    ----------
    grams_x : sequence of L1 arrays or tensors, each shape (n, n)
    grams_y : sequence of L2 arrays or tensors, each shape (n, n)
    estimator : {"biased", "unbiased"}

    Returns
    -------
    torch.Tensor, shape (L1, L2), float64
        Entry ``[i, j]`` is CKA(layer i of x, layer j of y).

    Notes
    -----
    Each centred Gram is flattened and scaled to unit norm; the whole matrix is then one
    float64 product ``(L1, n²) @ (n², L2)``.
    """
    check_option("estimator", estimator, ESTIMATORS)
    dev = _device_of(*grams_x, *grams_y)
    out, _, _ = _hsic_stack(grams_x, grams_y, estimator, dev, True)
    return out


def cka_matrix(xs: Sequence[Any], ys: Sequence[Any], *, kernel: Kernel = "linear",
               estimator: Estimator = "biased", threshold: float = 1.0, median: Median = "pairs",
               gemm_dtype: GemmDtype = "float32") -> torch.Tensor:
    """CKA of every layer pair of two models, e.g. pretrained vs fine-tuned blocks.

    Parameters
    ----------
    xs : sequence of L1 arrays or tensors, shapes (n, p_i)
        Per-layer features of model 1 on n examples.
    ys : sequence of L2 arrays or tensors, shapes (n, q_j)
        Per-layer features of model 2 on the same n examples.
    kernel, estimator, threshold, median, gemm_dtype
        As in :func:`cka`.

    Returns
    -------
    torch.Tensor, shape (L1, L2), float64

    Notes
    -----
    One Gram per layer (``L1 + L2`` Grams, not ``2 L1 L2``), then one matrix product of the
    stacked flattened Grams. Linear kernels centre the features once before a batched float32
    GEMM and never centre a Gram (:func:`_linear_terms`). Memory ``O((L1 + L2) n²)``.
    """
    check_option("kernel", kernel, KERNELS)
    check_option("estimator", estimator, ESTIMATORS)
    if kernel == "linear":
        return _normalised(*_linear_terms(xs, ys, estimator, gemm_dtype, check=False), feats=(xs, ys))
    gx, gy = _layer_grams(xs, ys, kernel=kernel, threshold=threshold, median=median, gemm_dtype=gemm_dtype)
    return cka_matrix_from_grams(gx, gy, estimator=estimator)


def _layer_grams(xs: Sequence[Any], ys: Sequence[Any], *, kernel: Kernel, threshold: float, median: Median,
                 gemm_dtype: GemmDtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One Gram per layer of each side (features named ``xs[i]`` / ``ys[j]``), all on one device."""
    dev = _device_of(*xs, *ys)

    def one(feats: Any, name: str) -> torch.Tensor:
        return gram(_features(feats, name, dev), kernel=kernel, threshold=threshold, median=median,
                    gemm_dtype=gemm_dtype)

    gx = [one(x, f"xs[{i}]") for i, x in enumerate(xs)]
    gy = [one(y, f"ys[{j}]") for j, y in enumerate(ys)]
    return gx, gy



# --------------------------------------------------------------------------- linear fast path

_BATCH_LAYER = 1 << 18  # layers up to this many feature values share one batched GEMM ...
_BATCH_TOTAL = 1 << 22  # ... of up to this many values (16 MiB in float32)
_SMALL_GRAM = 1 << 14  # n² up to which one (L1+L2)² product of the Grams is cheaper than two


def _raw_grams(feats: Sequence[torch.Tensor], names: Sequence[str], dt: torch.dtype) -> torch.Tensor:
    """Grams ``W Wᵀ`` of features centred about their rounded column means, stacked (L, n, n).

    Every layer is centred once, before its GEMM: column sums accumulated in float64 (float32
    within row chunks of :data:`_ROW_CHUNK`, as in :func:`_centre`), the mean rounded to the
    subtraction dtype and subtracted in it. Small layers of equal width and dtype share one
    batched GEMM (per-call overhead dominates there); large ones run one by one, so no big
    stacked copy is made. The Grams are *not* centred: the offset the rounded mean leaves is
    removed exactly by :func:`_linear_terms`. Features wider than :data:`_COL_CHUNK` add
    their partial Grams in float64.
    """
    n = feats[0].shape[0]
    dev = feats[0].device
    groups: dict[tuple[int, torch.dtype], list[int]] = {}
    for i, x in enumerate(feats):
        groups.setdefault((x.shape[1], _sub_dtype(x, dt)), []).append(i)
    parts: list[tuple[list[int], torch.Tensor]] = []
    with _tf32_off(dev):
        for (p, sub), members in groups.items():
            size = n * min(p, _COL_CHUNK)
            per = max(1, _BATCH_TOTAL // size) if size <= _BATCH_LAYER else 1
            for g in range(0, len(members), per):
                idx = members[g:g + per]
                parts.append((idx, _group_gram([feats[i] for i in idx], [names[i] for i in idx], sub, dt)))
    if len(parts) == 1:
        return parts[0][1]
    out_dtype = F64 if any(k.dtype == F64 for _, k in parts) else parts[0][1].dtype
    out = torch.empty(len(feats), n, n, dtype=out_dtype, device=dev)
    for idx, k in parts:
        if idx == list(range(idx[0], idx[-1] + 1)):
            out[idx[0]:idx[-1] + 1] = k
        else:
            out.index_copy_(0, torch.tensor(idx, device=dev), k.to(out_dtype))
    return out


def _column_sums(w: torch.Tensor) -> torch.Tensor:
    """Sums over dim -2 of ``w`` (g, n, c): float32 within row chunks, float64 across them."""
    n = w.shape[-2]
    acc = w[..., :_ROW_CHUNK, :].sum(-2).to(F64)
    for s in range(_ROW_CHUNK, n, _ROW_CHUNK):
        acc += w[..., s:s + _ROW_CHUNK, :].sum(-2)
    return acc


def _group_gram(xs: list[torch.Tensor], names: list[str], sub: torch.dtype,
                dt: torch.dtype) -> torch.Tensor:
    """Grams (g, n, n) of same-width layers from centred features, one GEMM per column chunk."""
    n, p = xs[0].shape
    if len(xs) == 1:  # a large layer: one pass for the sums, one for the centred copy
        x = xs[0].to(sub)
        sums = (x.new_ones(n) @ x).to(F64) if n <= _ROW_CHUNK else _column_sums(x)
        _finite_sums(sums[None], names)
        w = x - (sums / n).to(sub)
        if w.dtype != dt:
            w = w.to(dt)
        one: torch.Tensor | None = None
        for s in range(0, p, _COL_CHUNK):
            part = w[:, s:s + _COL_CHUNK]
            k = part @ part.T
            one = k if one is None else (one if one.dtype == F64 else one.to(F64)) + k
        return one[None]  # type: ignore[index]
    acc: torch.Tensor | None = None
    for s in range(0, p, _COL_CHUNK):
        e = min(p, s + _COL_CHUNK)
        if all(x.dtype == sub for x in xs):
            w = torch.stack([x[:, s:e] for x in xs])
        else:
            w = torch.empty(len(xs), n, e - s, dtype=sub, device=xs[0].device)
            for j, x in enumerate(xs):
                w[j].copy_(x[:, s:e])
        if n <= _ROW_CHUNK:  # one float32 reduction; NaN/inf surface in the result
            w.sub_(w.mean(1, keepdim=True))
        else:
            sums = _column_sums(w)
            _finite_sums(sums, names)
            w.sub_((sums / n).to(sub)[:, None, :])
        if w.dtype != dt:
            w = w.to(dt)
        k = torch.bmm(w, w.transpose(1, 2))
        if acc is None:
            acc = k
        else:
            acc = acc if acc.dtype == F64 else acc.to(F64)
            acc += k
    return acc  # type: ignore[return-value]


def _finite_sums(sums: torch.Tensor, names: list[str]) -> None:
    """Non-finite features show up as non-finite column sums; name the first such layer."""
    if not bool(torch.isfinite(sums).all()):
        bad = next(j for j in range(len(names)) if not bool(torch.isfinite(sums[j]).all()))
        _check_finite(sums[bad], names[bad])


def _linear_terms(xs: Sequence[Any], ys: Sequence[Any], estimator: str, gemm_dtype: str, *,
                  check: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear HSIC of all layer pairs: ``(L1, L2)`` cross terms and ``(L1,)``, ``(L2,)`` self terms.

    With ``K`` the Gram of (nearly) centred features -- its diagonal zeroed for the unbiased
    estimator -- ``r = K1`` and ``S = 1ᵀK1``, both estimators are
    ``<K, L> - b rₖᵀ rₗ + a Sₖ Sₗ`` (times :func:`_hsic_scale`): ``a = 1/n²``, ``b = 2/n``
    for ``tr(KHLH)``, and ``a = 1/((n-1)(n-2))``, ``b = 2/(n-2)`` for Song et al.'s unbiased
    form. The Gram inner products are one float64 product of the stacked flattened Grams; the
    corrections are exact in float64, and small because the features were centred first.
    ``check=False`` leaves the test for non-finite features to the caller (:func:`_normalised`).
    """
    dt = _gemm_torch_dtype(gemm_dtype)
    xs, ys = list(xs), list(ys)
    for side, name in ((xs, "xs"), (ys, "ys")):
        if not side:
            raise ShapeError(f"{name} is empty", expected="at least one layer", got="0 layers",
                             fix="pass a list of per-layer features")
    dev = _device_of(*xs, *ys)
    fx = [_features(x, "xs", dev, i) for i, x in enumerate(xs)]
    fy = [_features(y, "ys", dev, j) for j, y in enumerate(ys)]
    rows = {t.shape[0] for t in fx + fy}
    if len(rows) != 1:
        raise ShapeError("all layers must hold the same examples", expected="one n for every layer",
                         got=f"n in {sorted(rows)}", fix="compute every layer on the same examples")
    n = rows.pop()
    _need_n(n, estimator)
    l1 = len(fx)
    a, b = (1.0 / (n * n), 2.0 / n) if estimator == "biased" else (1.0 / ((n - 1) * (n - 2)), 2.0 / (n - 2))
    s = _hsic_scale(n, estimator)
    if n * n > _SMALL_GRAM:  # one model at a time: smaller buffers that the allocator reuses
        if _halvable(fx, dt) and _halvable(fy, dt):
            kk_xy, kk_x, kk_y, rx, ry = _halved_products(_halved_grams(fx, dt, estimator),
                                                         _halved_grams(fy, dt, estimator))
        else:
            kx = _raw_grams(fx, [f"xs[{i}]" for i in range(l1)], dt)
            ky = _raw_grams(fy, [f"ys[{j}]" for j in range(len(fy))], dt)
            if estimator == "unbiased":
                kx.diagonal(0, 1, 2).zero_()
                ky.diagonal(0, 1, 2).zero_()
            kk_xy, kk_x, kk_y, rx, ry, _, _ = _gram_products(kx, ky)
        sx, sy = rx.sum(-1), ry.sum(-1)
        if check and not (bool(torch.isfinite(sx).all()) and bool(torch.isfinite(sy).all())):
            _name_non_finite(fx, fy)
        xy = (kk_xy - b * (rx @ ry.T) + a * torch.outer(sx, sy)) * s
        xx = (kk_x - b * _self_dots(rx) + a * sx * sx) * s
        yy = (kk_y - b * _self_dots(ry) + a * sy * sy) * s
        return xy, xx, yy
    if _halvable(fx + fy, dt):
        inner, r = _halved_gram_terms(fx + fy, dt, estimator)
    else:
        k = _raw_grams(fx + fy, [f"xs[{i}]" for i in range(l1)] + [f"ys[{j}]" for j in range(len(fy))], dt)
        if estimator == "unbiased":
            k.diagonal(0, 1, 2).zero_()
        f = k.reshape(k.shape[0], -1).to(F64)
        r = f.view(-1, n, n).sum(-1)  # (L, n) row sums
        inner = f @ f.T
    tot = r.sum(-1)
    if check and not bool(torch.isfinite(tot).all()):  # non-finite features give non-finite sums
        _name_non_finite(fx, fy)
    # small n: one product for cross and self terms; fewer calls beat fewer flops
    full = inner.addmm_(r, r.T, beta=s, alpha=-b * s).addr_(tot, tot, alpha=a * s)
    diag = full.diagonal()
    return full[:l1, l1:], diag[:l1], diag[l1:]


def _halvable(feats: Sequence[torch.Tensor], dt: torch.dtype) -> bool:
    """All layers share one width and subtraction dtype, with few enough rows for one float32
    reduction of the column sums: their Grams can be formed as halved blocks."""
    kinds = {(x.shape[1], x.dtype): x for x in feats}  # one layer of each width and dtype
    subs = {(p, _sub_dtype(x, dt)) for (p, _), x in kinds.items()}
    return feats[0].shape[0] <= _ROW_CHUNK and len(subs) == 1


_UNCENTRED_MAX = 2.0  # trace(K) / trace(centred K) up to which a large layer skips its centred copy
_WIDE = 1024  # layers of more features (or more than _BATCH_LAYER values) form their Gram blocks one by one
_PEEK_ROWS, _PEEK_COLS = 8, 256  # the corner that predicts whether a large layer's mean is small


def _halved_grams(feats: Sequence[torch.Tensor], dt: torch.dtype, estimator: str) -> list[torch.Tensor]:
    """The upper rows ``[A B] = W₁Wᵀ`` (L, h, n) and the corner ``C = W₂W₂ᵀ`` (L, n-h, n-h) of
    the Grams of centred features.

    A Gram is symmetric, so with the examples split in halves ``W = [W₁; W₂]`` three of its
    four blocks ``A = W₁W₁ᵀ``, ``B = W₁W₂ᵀ``, ``C`` hold all of it -- three quarters of the
    GEMM work -- and ``<K, L> = <[A B], [A' B']> + <B, B'> + <C, C'>``. Layers are stacked,
    centred (float32 column means, subtracted in the subtraction dtype) and multiplied in
    batches of at most :data:`_BATCH_TOTAL` values per column chunk, as in :func:`_group_gram`;
    partial blocks of column chunks add in float64. Layers wider than :data:`_WIDE` features, or larger than
    :data:`_BATCH_LAYER` values, go one by one (:func:`_blocks_one_by_one`): one whose mean is
    small next to its spread skips the centred copy, the others are centred without a stacked
    copy. The unbiased estimator zeroes the diagonals of ``A`` and ``C``. For layers that
    pass :func:`_halvable`.
    """
    n, p = feats[0].shape
    sub = _sub_dtype(feats[0], dt)

    def centred(group: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        acc: list[torch.Tensor] = []
        for s in range(0, p, _COL_CHUNK):
            if p <= _COL_CHUNK and all(x.dtype == sub for x in group):
                w = torch.stack(list(group))
            else:
                w = torch.stack([x[:, s:s + _COL_CHUNK].to(sub) for x in group])
            w.sub_(w.mean(1, keepdim=True))  # one float32 reduction; NaN/inf surface in the sums
            if w.dtype != dt:
                w = w.to(dt)
            blocks = _two_blocks(w, n)
            acc = blocks if not acc else [a.to(F64) + b for a, b in zip(acc, blocks)]
        return acc

    with _tf32_off(feats[0].device):
        if p > _WIDE or n * p > _BATCH_LAYER:
            out = _blocks_one_by_one(feats, sub, dt)
        else:
            per = max(1, _BATCH_TOTAL // (n * min(p, _COL_CHUNK)))
            groups = [centred(feats[g:g + per]) for g in range(0, len(feats), per)]
            out = [torch.cat([grp[i] for grp in groups]) if len(groups) > 1 else groups[0][i] for i in range(2)]
    if estimator == "unbiased":  # the diagonal of [A B] is A's
        out[0].diagonal(0, 1, 2).zero_()
        out[1].diagonal(0, 1, 2).zero_()
    return out


def _two_blocks(w: torch.Tensor, n: int) -> list[torch.Tensor]:
    """``[A B]`` and ``C`` of stacked features ``w`` (g, n, c) split at row ``n // 2``."""
    bottom = w[:, n // 2:]
    return [torch.bmm(w[:, :n // 2], w.transpose(1, 2)), torch.bmm(bottom, bottom.transpose(1, 2))]


def _blocks_one_by_one(feats: Sequence[torch.Tensor], sub: torch.dtype, dt: torch.dtype) -> list[torch.Tensor]:
    """The Gram blocks ``[A B]`` and ``C`` of large layers, stacked (L, ., .), formed layer by layer.

    Centring a large layer costs a copy and two passes over it, about what its GEMM costs
    when ``n`` is small. Any centre is exact for the HSIC terms (the row-sum corrections of
    :func:`_linear_terms` remove it); centring only guards float32 against cancellation. So
    a layer whose first rows suggest a small mean (:func:`_means_look_small`) forms its blocks
    from the features as they are, and keeps them when its column means take at most half of
    its Gram's trace (``trace(K) <= 2 trace(HKH)``: float32 loses at most a bit;
    :func:`_mean_dominated` decides for all layers at once). Any other layer -- and any layer
    that fails the check, or holds NaN or inf -- is centred first (:func:`_centred_blocks`).
    """
    n = feats[0].shape[0]
    tried = [x.dtype == dt and small for x, small in zip(feats, _means_look_small(feats))]
    per_layer = [_feature_blocks(x, lambda part: part) if raw else _centred_blocks(x, sub, dt)
                 for x, raw in zip(feats, tried)]
    out = [torch.cat([blocks[i] for blocks in per_layer]) for i in range(2)]
    redo = [i for i, bad in enumerate(_mean_dominated(out, n).tolist()) if bad and tried[i]]
    for i in redo:
        for whole, block in zip(out, _centred_blocks(feats[i], sub, dt)):
            whole[i:i + 1] = block
    return out


def _feature_blocks(x: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """``[A B]`` and ``C`` (each (1, ., .)) of one layer, ``prepare`` applied to each column
    chunk before its GEMMs; partial blocks of column chunks add in float64."""
    n, p = x.shape
    blocks: list[torch.Tensor] = []
    for s in range(0, p, _COL_CHUNK):
        new = _two_blocks(prepare(x[:, s:s + _COL_CHUNK]).unsqueeze(0), n)
        blocks = new if not blocks else [a.to(F64) + b for a, b in zip(blocks, new)]
    return blocks


def _centred_blocks(x: torch.Tensor, sub: torch.dtype, dt: torch.dtype) -> list[torch.Tensor]:
    """The blocks ``[A B]`` and ``C`` of one layer's Gram after centring it (float32 column means,
    subtracted in ``sub``): one pass for the means and one for the centred copy of each
    column chunk, and no stacked copy first. NaN/inf surface in the row sums."""
    def centre(part: torch.Tensor) -> torch.Tensor:
        part = part.to(sub)
        return (part - part.mean(0)).to(dt)

    return _feature_blocks(x, centre)


def _means_look_small(feats: Sequence[torch.Tensor]) -> list[bool]:
    """Per layer, whether a corner of it (:data:`_PEEK_ROWS` rows x :data:`_PEEK_COLS`
    columns) suggests column means small next to the spread; one batched pass for all layers.

    Only a guess, to spare a layer with a large mean a wasted uncentred GEMM; when it says
    yes, :func:`_mean_dominated` still decides exactly from the Gram. The bound is half of
    that check's (``|mean|² <= spread``), as a few rows overstate the mean by ``spread / k``.
    NaN and infinities say no (the centred path reports them).
    """
    k = min(_PEEK_ROWS, feats[0].shape[0])
    if k < 2:
        return [True] * len(feats)
    heads = torch.stack([x[:k, :_PEEK_COLS].to(torch.float32) for x in feats])
    mean = heads.mean(1, keepdim=True)
    spread = (heads - mean).square_().sum((1, 2)) / (k - 1)
    return (mean.square().sum((1, 2)) <= 0.5 * spread).tolist()


def _mean_dominated(blocks: list[torch.Tensor], n: int) -> torch.Tensor:
    """Per layer (bool (L,)), whether the Gram in blocks ``[A B], C`` is too far from centred
    for float32: the column means take more than half of its trace, or it is not finite.

    Centring takes ``n |mean|² = 1ᵀK1 / n`` off the trace; both from the blocks, in float64.
    """
    ab, c_ = blocks
    h = ab.shape[1]
    trace = ab.diagonal(0, 1, 2).sum(-1, dtype=F64) + c_.diagonal(0, 1, 2).sum(-1, dtype=F64)
    total = (ab.sum((1, 2), dtype=F64) + ab[..., h:].sum((1, 2), dtype=F64)
             + c_.sum((1, 2), dtype=F64))
    centred_trace = trace - total / n
    ok = torch.isfinite(centred_trace) & (centred_trace > 0) & (trace <= _UNCENTRED_MAX * centred_trace)
    return ~ok


def _halved_gram_terms(feats: Sequence[torch.Tensor], dt: torch.dtype, estimator: str
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``<Kᵢ, Kⱼ>`` (L, L) and row sums (L, n) in float64, from :func:`_halved_grams` (small n).

    The blocks are laid out once as every entry of ``K``: rows ``[A B | Bᵀ C]`` (``h`` rows
    of ``2n`` entries) when ``n = 2h``, else ``[[A B], [Bᵀ C]]``. The inner products are one
    product of those flattened layouts (:func:`_stacked_inner`) and the row sums one float64
    sum over them (float32 sums would put an unbiased CKA at n = 4 up to 4e-6 off): few calls
    matter more than flops at small n. With ``n = 2h`` the row sums come in the order of
    examples ``0, h, 1, h + 1, ...``; the HSIC corrections only take their dot products and
    totals, so any order shared by all layers is right.
    """
    ab, c_ = _halved_grams(feats, dt, estimator)
    n_l, h, n = ab.shape
    b_t = ab[..., h:].mT
    if 2 * h == n:
        k = torch.cat([ab, b_t, c_], dim=2)
        rows = k.view(n_l, h, 2, n).sum(-1, dtype=F64).view(n_l, n)  # examples 0, h, 1, h+1, ...
    else:
        k = torch.cat([ab, torch.cat([b_t, c_], dim=2)], dim=1)
        rows = k.sum(-1, dtype=F64)
    return _stacked_inner(k.view(n_l, -1)), rows


_INNER_CHUNK = 1024  # float32 terms per partial inner product; partial products add in float64


def _stacked_inner(flat: torch.Tensor) -> torch.Tensor:
    """``flat @ flat.T`` (L, L) in float64 for rows ``flat`` (L, m).

    Float64 rows, and rows of at most :data:`_INNER_CHUNK` terms, multiply in float64. Longer
    float32 rows are cut into pieces of :data:`_INNER_CHUNK` terms (:func:`_in_pieces`),
    multiplied in one batched float32 GEMM (several times cheaper than float64 for so few
    rows) and added in float64: rounding grows with the piece, not with ``m`` (about 1e-7 of
    CKA; docs/cka.md).
    """
    if flat.dtype == F64 or flat.shape[1] <= _INNER_CHUNK:  # a short product costs little in float64
        flat = flat.to(F64)
        return flat @ flat.T
    pieces = _in_pieces(flat).transpose(0, 1)  # (P, L, chunk)
    with _tf32_off(flat.device):  # TF32 would keep 10 bits of these products
        return torch.bmm(pieces, pieces.transpose(1, 2)).sum(0, dtype=F64)


def _in_pieces(t: torch.Tensor) -> torch.Tensor:
    """The last dim of ``t`` (..., m) cut into pieces of :data:`_INNER_CHUNK` terms,
    (..., P, chunk), the last one padded with zeros."""
    pad = (-t.shape[-1]) % _INNER_CHUNK
    if pad:
        t = torch.nn.functional.pad(t, (0, pad))
    return t.unflatten(-1, (-1, _INNER_CHUNK))


def _row_sums(block: torch.Tensor) -> torch.Tensor:
    """Float64 sums over the last dim of float32 ``block`` (L, s, m): float32 within pieces of
    :data:`_INNER_CHUNK` terms, float64 across them -- no float64 copy of the block."""
    if block.dtype == F64:
        return block.sum(-1)
    if block.shape[-1] <= _INNER_CHUNK:
        return block.sum(-1).to(F64)
    return _in_pieces(block).sum(-1).sum(-1, dtype=F64)


def _halved_products(bx: list[torch.Tensor], by: list[torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What :func:`_gram_products` gives for two models' Grams, from their blocks ``[A B], C``."""
    h = bx[0].shape[1]
    pairs = (bx[0], by[0]), (bx[0][..., h:], by[0][..., h:]), (bx[1], by[1])
    (ca, xa, ya, rxa, rya, _, _), (cb, xb, yb, _, _, cxb, cyb), (cc, xc, yc, rxc, ryc, _, _) = (
        _gram_products(kx, ky) for kx, ky in pairs)
    rx = torch.cat([rxa, cxb + rxc], dim=1)
    ry = torch.cat([rya, cyb + ryc], dim=1)
    return ca + cb + cc, xa + xb + xc, ya + yb + yc, rx, ry


_POST_ROWS = 1 << 15  # Gram entries per layer taken at a time


def _gram_products(kx: torch.Tensor, ky: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``<Kᵢ, Lⱼ>``, ``|Kᵢ|²``, ``|Lⱼ|²``, the row sums and the column sums of stacked
    (possibly rectangular) Grams, all in float64.

    A block of rows at a time (at most :data:`_POST_ROWS` entries and :data:`_INNER_CHUNK`
    rows per layer): float32 Grams give their products as pieces of :data:`_INNER_CHUNK`
    terms in one batched float32 GEMM and their sums as float32 partial sums of as many terms,
    all added in float64 -- the rounding of :func:`_stacked_inner` -- so no float64 copy of
    the Grams is made: converting them cost more than the products themselves.
    """
    (l1, n, m), l2 = kx.shape, ky.shape[0]
    step = max(1, min(_INNER_CHUNK, _POST_ROWS // max(m, 1)))
    cross = kx.new_zeros(l1, l2, dtype=F64)
    sx, sy = kx.new_zeros(l1, dtype=F64), kx.new_zeros(l2, dtype=F64)
    rx, ry = kx.new_empty(l1, n, dtype=F64), kx.new_empty(l2, n, dtype=F64)
    cx, cy = kx.new_zeros(l1, m, dtype=F64), kx.new_zeros(l2, m, dtype=F64)
    for i in range(0, n, step):
        bx, by = kx[:, i:i + step], ky[:, i:i + step]
        rx[:, i:i + step] = _row_sums(bx)
        ry[:, i:i + step] = _row_sums(by)
        cx += bx.sum(1)  # at most _INNER_CHUNK rows; promoted to float64 as it is added
        cy += by.sum(1)
        fx, fy = bx.reshape(l1, -1), by.reshape(l2, -1)
        if fx.dtype == F64 or fy.dtype == F64:  # float64 Grams: only the products needed
            fx, fy = fx.to(F64), fy.to(F64)
            cross.addmm_(fx, fy.T)
            sx += _self_dots(fx)
            sy += _self_dots(fy)
        else:  # one product for cross and self terms: equal layers give equal terms
            inner = _stacked_inner(torch.cat([fx, fy]))
            selfs = inner.diagonal()
            cross += inner[:l1, l1:]
            sx += selfs[:l1]
            sy += selfs[l1:]
    return cross, sx, sy, rx, ry, cx, cy


def _self_dots(a: torch.Tensor) -> torch.Tensor:
    """Row-wise ``<a_i, a_i>`` as one batched product (no elementwise temporary)."""
    return torch.bmm(a[:, None, :], a[:, :, None]).reshape(-1)


def _name_non_finite(fx: Sequence[torch.Tensor], fy: Sequence[torch.Tensor]) -> None:
    for i, t in enumerate(fx):
        _check_finite(t.sum(0), f"xs[{i}]")
    for j, t in enumerate(fy):
        _check_finite(t.sum(0), f"ys[{j}]")


def _normalised(xy: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor,
                feats: tuple[Sequence[Any], Sequence[Any]] | None = None) -> torch.Tensor:
    """CKA matrix from HSIC terms; non-finite features and constant layers are errors."""
    if not torch.cat([xx, yy]).min().item() > 0:  # NaN fails the test too
        if feats is not None:
            _name_non_finite([_features(x, "x") for x in feats[0]], [_features(y, "y") for y in feats[1]])
        for norms, name in ((xx, "x"), (yy, "y")):
            bad = (~(norms > 0)).nonzero().flatten().tolist()
            if bad:
                raise DataError(f"CKA is undefined for constant {name} layers",
                                expected="features that vary across examples",
                                got=f"zero centred Gram at layer(s) {bad}",
                                fix="drop those layers or check the taps")
    return xy / torch.outer(xx, yy).sqrt_()
