"""Centered kernel alignment (CKA) between two sets of features (docs/definitions.md, docs/cka.md).

Features of one tap for ``n`` examples are ``X (n, p)`` and ``Y (n, q)``. Everything here is
pure torch, runs on the device of its inputs and accumulates in float64.

Forms
-----
- :func:`cka` -- one pair of feature matrices (linear or RBF kernel, biased or unbiased HSIC).
- :func:`cka_from_grams`, :func:`hsic` -- the same from ``n x n`` Gram matrices.
- :func:`linear_cka` -- linear CKA from feature cross-products, never ``n x n`` (``n >> p``).
- :func:`cka_matrix`, :func:`cka_matrix_from_grams` -- all ``L1 x L2`` layer pairs of two
  models from one stacked matrix product.
- :class:`MinibatchCKA`, :func:`minibatch_cka` -- Nguyen, Raghu & Kornblith (2021): unbiased
  HSIC averaged over minibatches, then the ratio.
- :class:`StreamingLinearCKA` -- exact linear CKA over huge ``n`` from float64 sufficient
  statistics, mergeable and all-reducible with ``torch.distributed``.
- :func:`cka_summary` -- scalar summaries of an ``L1 x L2`` CKA matrix; :func:`paper_cka_summary`
  -- the paper's definitions of three of them (``docs/conventions.md``).

Precision
---------
Removing a large mean before any product is what keeps float32 accurate. Column means are
accumulated in float64; the centre, rounded to float32 (float64 for float64 inputs), is
subtracted in that precision (correctly rounded, exact where the mean dominates); the products
of the centred values run as float32 GEMMs with TF32 switched off; partial products are
summed in float64, and the small offset left by rounding the centre is removed exactly in
float64 (the sums record their centre). ``gemm_dtype="float64"`` runs the GEMMs in float64.
Float64 GEMMs are used only for the small stacked all-pairs product.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Literal, NoReturn, TypeVar, get_args

import numpy as np
import torch

from attnprobe.errors import ConfigError, DataError, ShapeError

__all__ = [
    "Kernel",
    "Estimator",
    "GemmDtype",
    "Median",
    "cka",
    "linear_cka",
    "cka_from_grams",
    "hsic",
    "linear_gram",
    "rbf_gram",
    "gram",
    "center_gram",
    "ucenter_gram",
    "cka_matrix",
    "cka_matrix_from_grams",
    "MinibatchCKA",
    "minibatch_cka",
    "StreamingLinearCKA",
    "cka_summary",
    "paper_cka_summary",
]

Kernel = Literal["linear", "rbf"]
Estimator = Literal["biased", "unbiased"]
GemmDtype = Literal["float32", "float64"]
Median = Literal["pairs", "kornblith"]

F64 = torch.float64
_ROW_CHUNK = 8192  # rows per float32 GEMM before the partial sum moves to float64
_COL_CHUNK = 16384  # features per float32 Gram GEMM before the partial sum moves to float64


# --------------------------------------------------------------------------- validation


_S = TypeVar("_S", bound=str)


def _choice(value: _S, name: str, options: tuple[str, ...]) -> _S:
    if value not in options:
        raise ConfigError(f"unknown {name}", expected=" or ".join(repr(o) for o in options),
                          got=repr(value), fix=f"pass {name}= one of those")
    return value


def _gemm_torch_dtype(gemm_dtype: str) -> torch.dtype:
    _choice(gemm_dtype, "gemm_dtype", get_args(GemmDtype))
    return torch.float32 if gemm_dtype == "float32" else F64


def _as_tensor(a: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """Numpy/torch/array-like -> detached real tensor, moved to ``device`` if given."""
    t = a.detach() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    if t.is_complex() or t.dtype == torch.bool:
        raise ShapeError(f"{name} must hold real numbers", expected="a float or integer array",
                         got=str(t.dtype), fix=f"cast {name} to float32 or float64")
    if not t.is_floating_point():
        t = t.to(F64)
    if device is not None and t.device != device:
        if isinstance(a, torch.Tensor):
            raise ConfigError(f"{name} is on another device", expected=str(device),
                              got=str(t.device), fix="move both inputs to one device")
        t = t.to(device)
    return t


def _check_finite(t: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"{name} holds NaN or inf", expected="finite values",
                        got="non-finite entries", fix="drop or repair those examples first")


def _features(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    t = _as_tensor(x, name, device)
    if t.ndim != 2:
        raise ShapeError(f"{name} must be a feature matrix", expected="shape (n, features)",
                         got=f"shape {tuple(t.shape)}",
                         fix="flatten each example first, e.g. attnprobe.metrics.pooling")
    return t  # finiteness is checked on the column sums, not in an extra pass


def _device_of(*items: Any) -> torch.device | None:
    for a in items:
        if isinstance(a, torch.Tensor):
            return a.device
    return None


def _feature_pair(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    dev = _device_of(x, y)
    xt, yt = _features(x, "x", dev), _features(y, "y", dev)
    if xt.shape[0] != yt.shape[0]:
        raise ShapeError("x and y must hold the same examples", expected="equal row counts",
                         got=f"x has {xt.shape[0]} rows, y has {yt.shape[0]}",
                         fix="pass features of the same n examples, in the same order")
    return xt, yt


def _need_n(n: int, estimator: str) -> None:
    if estimator == "unbiased" and n < 4:
        raise ShapeError("unbiased HSIC needs at least 4 examples", expected="n >= 4",
                         got=f"n = {n}", fix="use more examples or estimator='biased'")
    if n < 2:
        raise ShapeError("HSIC needs at least 2 examples", expected="n >= 2", got=f"n = {n}",
                         fix="use more examples")


def _no_examples(estimator: str) -> NoReturn:
    _need_n(0, estimator)
    raise RuntimeError("internal: _need_n(0) did not raise")


def _check_threshold(threshold: float) -> float:
    if not (isinstance(threshold, int | float) and math.isfinite(threshold) and threshold > 0):
        raise ConfigError("RBF threshold must be a positive number", expected="threshold > 0",
                          got=repr(threshold), fix="use the default 1.0 or another positive value")
    return float(threshold)


def _ratio(xy: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> float:
    xx_f, yy_f = float(xx), float(yy)
    if xx_f <= 0 or yy_f <= 0:
        raise DataError("CKA is undefined for features without variation",
                        expected="non-constant features for x and y",
                        got=f"HSIC(x,x) = {xx_f:.3g}, HSIC(y,y) = {yy_f:.3g}",
                        fix="check the tap: a constant feature map carries no signal")
    return float(xy) / math.sqrt(xx_f * yy_f)


# --------------------------------------------------------------------------- precision


@contextmanager
def _tf32_off(device: torch.device) -> Iterator[None]:
    """Switch TF32 matmuls off on CUDA for the block and restore the old setting after."""
    if device.type != "cuda":
        yield
        return
    mm = torch.backends.cuda.matmul
    if hasattr(mm, "fp32_precision"):  # torch >= 2.9 API; the old flag is being deprecated
        old = mm.fp32_precision
        mm.fp32_precision = "ieee"
        try:
            yield
        finally:
            mm.fp32_precision = old
    else:
        old_flag = mm.allow_tf32
        mm.allow_tf32 = False
        try:
            yield
        finally:
            mm.allow_tf32 = old_flag


def _sub_dtype(x: torch.Tensor, dt: torch.dtype) -> torch.dtype:
    """Dtype in which to subtract the centre: float64 only if input or GEMMs are float64."""
    return F64 if (x.dtype == F64 or dt == F64) else torch.float32


def _centre(x: torch.Tensor, sub: torch.dtype, name: str, chunk: int = _ROW_CHUNK) -> torch.Tensor:
    """Column means, rounded to ``sub``: the exact centre that will be subtracted.

    Any centre is exact algebraically (the moments record it and correct for it in float64);
    it only has to be close to the data so that ``x - c`` cancels the large common part.
    Non-finite inputs show up here as a non-finite sum, saving a separate pass.
    """
    acc = torch.zeros(x.shape[1], dtype=F64, device=x.device)
    for s in range(0, x.shape[0], chunk):
        acc += x[s:s + chunk].to(sub).sum(0).to(F64)
    _check_finite(acc, name)
    return (acc / max(x.shape[0], 1)).to(sub)


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
    _choice(median, "median", get_args(Median))
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
    _choice(kernel, "kernel", get_args(Kernel))
    _choice(median, "median", get_args(Median))
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


def _hsic_scale(n: int, estimator: str) -> float:
    return 1.0 / (n - 1) ** 2 if estimator == "biased" else 1.0 / (n * (n - 3))


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
    _choice(estimator, "estimator", get_args(Estimator))
    kt, lt = _gram_pair(gram_x, gram_y)
    n = kt.shape[0]
    _need_n(n, estimator)
    val = (_centre_for(kt, estimator) * _centre_for(lt, estimator)).sum()
    return float(val) * _hsic_scale(n, estimator)


def cka_from_grams(gram_x: Any, gram_y: Any, *, estimator: Estimator = "biased") -> float:
    """CKA from two Gram matrices, shapes (n, n); ``HSIC(K,L) / sqrt(HSIC(K,K) HSIC(L,L))``."""
    _choice(estimator, "estimator", get_args(Estimator))
    kt, lt = _gram_pair(gram_x, gram_y)
    _need_n(kt.shape[0], estimator)
    kc, lc = _centre_for(kt, estimator), _centre_for(lt, estimator)
    return _ratio((kc * lc).sum(), (kc * kc).sum(), (lc * lc).sum())


# --------------------------------------------------------------------------- linear moments


@dataclass
class _Moments:
    """Sufficient statistics of linear (biased and unbiased) HSIC, as sums about a centre.

    With ``w = x - cx``, ``z = y - cy``, ``d = |w|²``, ``e = |z|²`` per example: ``sx = Σ w``,
    ``sy = Σ z``, ``cxx = Σ wwᵀ``, ``cyy = Σ zzᵀ``, ``cxy = Σ wzᵀ``, ``rx = Σ d w``,
    ``ry = Σ e z``, ``rxy = Σ d z``, ``ryx = Σ e w``, ``dd = Σ d²``, ``ee = Σ e²``,
    ``de = Σ d e``. Any centre is exact; one near the mean keeps the sums well conditioned.
    """

    n: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    sx: torch.Tensor
    sy: torch.Tensor
    cxx: torch.Tensor
    cyy: torch.Tensor
    cxy: torch.Tensor
    rx: torch.Tensor
    ry: torch.Tensor
    rxy: torch.Tensor
    ryx: torch.Tensor
    dd: torch.Tensor
    ee: torch.Tensor
    de: torch.Tensor

    CENTRES = ("cx", "cy")

    @classmethod
    def zeros(cls, p: int, q: int, device: torch.device | None) -> _Moments:
        z = lambda *s: torch.zeros(*s, dtype=F64, device=device)  # noqa: E731
        return cls(z(()), z(p), z(q), z(p), z(q), z(p, p), z(q, q), z(p, q), z(p), z(q), z(q),
                   z(p), z(()), z(()), z(()))

    def _map(self, fn) -> _Moments:
        return _Moments(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device) -> _Moments:
        return self._map(lambda t: t.to(device))

    def clone(self) -> _Moments:
        return self._map(torch.clone)

    def flat(self, *, sums_only: bool = False) -> torch.Tensor:
        """All fields as one float64 vector (without the centres when ``sums_only``)."""
        names = [f.name for f in fields(self) if not (sums_only and f.name in self.CENTRES)]
        return torch.cat([getattr(self, k).reshape(-1) for k in names])

    @classmethod
    def from_flat(cls, flat: torch.Tensor, p: int, q: int, *,
                  centres: tuple[torch.Tensor, torch.Tensor] | None = None) -> _Moments:
        """Inverse of :meth:`flat`; pass ``centres`` for a ``sums_only`` vector."""
        out = cls.zeros(p, q, flat.device)
        names = [f.name for f in fields(cls) if not (centres is not None and f.name in cls.CENTRES)]
        need = sum(getattr(out, k).numel() for k in names)
        if flat.numel() != need:
            raise ShapeError("flat CKA state has the wrong length", expected=f"{need} values",
                             got=f"{flat.numel()}", fix="pass dim_x/dim_y of the saved state")
        off = 0
        for k in names:
            t = getattr(out, k)
            t.copy_(flat[off:off + t.numel()].reshape(t.shape))
            off += t.numel()
        if centres is not None:
            out.cx, out.cy = centres
        return out

    def mean(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.n.clamp_min(1)
        return self.cx + self.sx / n, self.cy + self.sy / n

    def about(self, cx: torch.Tensor, cy: torch.Tensor) -> _Moments:
        """The same sums taken about new centres (exact re-expansion in float64).

        With ``δ = cx_new - cx``, ``ε = cy_new - cy``, ``w' = w - δ`` and
        ``d' = d - 2 w·δ + |δ|²``, every sum expands into the stored ones. Sums of parts taken
        about one common centre add up exactly (Chan et al.'s parallel update, carried to
        the fourth-order row-norm terms).
        """
        n, a, b = self.n, cx - self.cx, cy - self.cy
        aa, bb = a @ a, b @ b
        sxa, syb = self.sx @ a, self.sy @ b
        tx, ty = self.cxx.trace(), self.cyy.trace()  # Σ d, Σ e
        cxx_a, cyy_b = self.cxx @ a, self.cyy @ b
        cxy_b, cyx_a = self.cxy @ b, self.cxy.T @ a
        return _Moments(
            n=n, cx=cx, cy=cy,
            sx=self.sx - n * a,
            sy=self.sy - n * b,
            cxx=self.cxx - torch.outer(self.sx, a) - torch.outer(a, self.sx) + n * torch.outer(a, a),
            cyy=self.cyy - torch.outer(self.sy, b) - torch.outer(b, self.sy) + n * torch.outer(b, b),
            cxy=self.cxy - torch.outer(self.sx, b) - torch.outer(a, self.sy) + n * torch.outer(a, b),
            rx=self.rx - a * tx - 2 * cxx_a + 2 * sxa * a + aa * self.sx - n * aa * a,
            ry=self.ry - b * ty - 2 * cyy_b + 2 * syb * b + bb * self.sy - n * bb * b,
            rxy=self.rxy - b * tx - 2 * cyx_a + 2 * sxa * b + aa * self.sy - n * aa * b,
            ryx=self.ryx - a * ty - 2 * cxy_b + 2 * syb * a + bb * self.sx - n * bb * a,
            dd=(self.dd - 4 * (a @ self.rx) + 4 * (a @ cxx_a) + 2 * aa * tx - 4 * aa * sxa
                + n * aa * aa),
            ee=(self.ee - 4 * (b @ self.ry) + 4 * (b @ cyy_b) + 2 * bb * ty - 4 * bb * syb
                + n * bb * bb),
            de=(self.de - 2 * (b @ self.rxy) - 2 * (a @ self.ryx) + 4 * (a @ cxy_b)
                + bb * tx + aa * ty - 2 * bb * sxa - 2 * aa * syb + n * aa * bb),
        )

    def added(self, other: _Moments) -> _Moments:
        """Field-wise sum of two sets of sums about the same centre."""
        kw = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        kw.update(cx=self.cx, cy=self.cy)
        return _Moments(**kw)

    def centred(self) -> _Moments:
        """The sums about the data mean (``sx``, ``sy`` ~ 0)."""
        return self if float(self.n) == 0 else self.about(*self.mean())


def _merge(a: _Moments, b: _Moments) -> _Moments:
    """Union of two parts, kept about the union's mean for conditioning."""
    n = a.n + b.n
    if float(n) == 0:
        return a
    (ma_x, ma_y), (mb_x, mb_y) = a.mean(), b.mean()
    mx, my = (a.n * ma_x + b.n * mb_x) / n, (a.n * ma_y + b.n * mb_y) / n
    return a.about(mx, my).added(b.about(mx, my))


def _moments_of(x: torch.Tensor, y: torch.Tensor, dt: torch.dtype, chunk: int) -> _Moments:
    """Sums of one batch about its (rounded) mean: GEMMs in ``dt`` per row chunk, float64 sums.

    ``x - c`` is taken in float32 for float32 inputs (correctly rounded, exact where the
    mean dominates); only ``p``-, ``p²``- and chunk-sized results are float64.
    """
    n, p = x.shape
    q = y.shape[1]
    sub_x, sub_y = _sub_dtype(x, dt), _sub_dtype(y, dt)
    cx, cy = _centre(x, sub_x, "x", chunk), _centre(y, sub_y, "y", chunk)
    m = _Moments.zeros(p, q, x.device)
    m.n = torch.tensor(float(n), dtype=F64, device=x.device)
    m.cx, m.cy = cx.to(F64), cy.to(F64)
    with _tf32_off(x.device):
        for s in range(0, n, chunk):
            w = (x[s:s + chunk].to(sub_x) - cx).to(dt)
            z = (y[s:s + chunk].to(sub_y) - cy).to(dt)
            d, e = (w * w).sum(1), (z * z).sum(1)
            # in-place += promotes each float32 partial to float64 without a temporary
            m.sx += w.sum(0)
            m.sy += z.sum(0)
            m.cxx += w.T @ w
            m.cyy += z.T @ z
            m.cxy += w.T @ z
            m.rx += w.T @ d
            m.ry += z.T @ e
            m.rxy += z.T @ d
            m.ryx += w.T @ e
            d, e = d.to(F64), e.to(F64)
            m.dd += d @ d
            m.ee += e @ e
            m.de += d @ e
    m.cxx = 0.5 * (m.cxx + m.cxx.T)
    m.cyy = 0.5 * (m.cyy + m.cyy.T)
    return m


def _hsic_terms(m: _Moments, estimator: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(HSIC(x,y), HSIC(x,x), HSIC(y,y)) from the sums, re-centred on the mean first."""
    n = int(round(float(m.n)))
    _need_n(n, estimator)
    m = m.centred()
    sxy, sxx, syy = (m.cxy * m.cxy).sum(), (m.cxx * m.cxx).sum(), (m.cyy * m.cyy).sum()
    if estimator == "biased":
        s = _hsic_scale(n, estimator)
        return sxy * s, sxx * s, syy * s
    # Song et al. (2012) with centred rows: tr(K̃L̃) = ||XᵀY||² - Σde, 1ᵀK̃1 = -tr(XᵀX),
    # 1ᵀK̃L̃1 = Σde (U-centring makes HSIC_u blind to the centring itself)
    tx, ty = m.cxx.trace(), m.cyy.trace()
    c1, c2, s = 1.0 / ((n - 1) * (n - 2)), 2.0 / (n - 2), 1.0 / (n * (n - 3))

    def term(cross, diag, ta, tb):
        return (cross - diag + ta * tb * c1 - c2 * diag) * s

    return term(sxy, m.de, tx, ty), term(sxx, m.dd, tx, tx), term(syy, m.ee, ty, ty)


def linear_cka(x: Any, y: Any, *, estimator: Estimator = "biased",
               gemm_dtype: GemmDtype = "float32", chunk_rows: int = _ROW_CHUNK) -> float:
    """Linear CKA from feature cross-products; memory ``O(p² + q² + pq)``, never ``n x n``.

    Parameters
    ----------
    x : array or tensor, shape (n, p)
    y : array or tensor, shape (n, q)
    estimator : {"biased", "unbiased"}
    gemm_dtype : {"float32", "float64"}
        Dtype of the ``XᵀX``, ``YᵀY``, ``XᵀY`` GEMMs on centred features.
    chunk_rows : int
        Rows per GEMM; partial products are summed in float64.

    Returns
    -------
    float
    """
    _choice(estimator, "estimator", get_args(Estimator))
    xt, yt = _feature_pair(x, y)
    _need_n(xt.shape[0], estimator)
    m = _moments_of(xt, yt, _gemm_torch_dtype(gemm_dtype), chunk_rows)
    return _ratio(*_hsic_terms(m, estimator))


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
    _choice(kernel, "kernel", get_args(Kernel))
    _choice(estimator, "estimator", get_args(Estimator))
    _choice(median, "median", get_args(Median))
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
    _choice(estimator, "estimator", get_args(Estimator))
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
    stacked flattened centred Grams. Memory ``O((L1 + L2) n²)``.
    """
    _choice(kernel, "kernel", get_args(Kernel))
    gx, gy = _layer_grams(xs, ys, kernel=kernel, threshold=threshold, median=median, gemm_dtype=gemm_dtype)
    return cka_matrix_from_grams(gx, gy, estimator=estimator)


def _layer_grams(xs: Sequence[Any], ys: Sequence[Any], *, kernel: Kernel, threshold: float, median: Median,
                 gemm_dtype: GemmDtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One Gram per layer of each side (features named ``xs[i]`` / ``ys[j]``), all on one device."""
    dev = _device_of(*xs, *ys)
    kw: dict[str, Any] = dict(kernel=kernel, threshold=threshold, median=median, gemm_dtype=gemm_dtype)
    gx = [gram(_features(x, f"xs[{i}]", dev), **kw) for i, x in enumerate(xs)]
    gy = [gram(_features(y, f"ys[{j}]", dev), **kw) for j, y in enumerate(ys)]
    return gx, gy


# --------------------------------------------------------------------------- minibatch


def _layers(a: Any) -> list[Any]:
    """One feature matrix -> [it]; a sequence of per-layer matrices -> list."""
    if isinstance(a, torch.Tensor | np.ndarray) and a.ndim == 2:
        return [a]
    return list(a)


class MinibatchCKA:
    """Minibatch CKA (Nguyen, Raghu & Kornblith 2021) for all layer pairs of two models.

    Each :meth:`update` adds the unbiased HSIC of every pair (and of every layer with itself)
    on one minibatch; :meth:`compute` returns the ratio of the batch averages,
    ``mean HSIC(K,L) / sqrt(mean HSIC(K,K) · mean HSIC(L,L))``.

    Parameters
    ----------
    kernel : {"linear", "rbf"}
        RBF bandwidth is set per minibatch from its median distance.
    threshold : float
        RBF bandwidth factor.
    median : {"pairs", "kornblith"}
        Which median distance the RBF bandwidth scales (:func:`rbf_gram`).
    gemm_dtype : {"float32", "float64"}
    """

    def __init__(self, *, kernel: Kernel = "linear", threshold: float = 1.0, median: Median = "pairs",
                 gemm_dtype: GemmDtype = "float32") -> None:
        self.kernel = _choice(kernel, "kernel", get_args(Kernel))
        self.threshold = _check_threshold(threshold)
        self.median: Median = _choice(median, "median", get_args(Median))
        _gemm_torch_dtype(gemm_dtype)
        self.gemm_dtype = gemm_dtype
        self.batches = 0
        self._xy: torch.Tensor | None = None
        self._xx: torch.Tensor | None = None
        self._yy: torch.Tensor | None = None

    def update(self, xs: Any, ys: Any) -> MinibatchCKA:
        """Add one minibatch.

        Parameters
        ----------
        xs : array/tensor (b, p) or sequence of L1 of them
        ys : array/tensor (b, q) or sequence of L2 of them
            Features of the same ``b >= 4`` examples; layer counts fixed across batches.
        """
        lx, ly = _layers(xs), _layers(ys)
        dev = _device_of(*lx, *ly)
        gx, gy = _layer_grams(lx, ly, kernel=self.kernel, threshold=self.threshold, median=self.median,
                              gemm_dtype=self.gemm_dtype)
        xy, xx, yy = _hsic_stack(gx, gy, "unbiased", dev, False)
        b = gx[0].shape[0]
        s = _hsic_scale(b, "unbiased")
        if self._xy is None or self._xx is None or self._yy is None:  # all three are set together
            self._xy, self._xx, self._yy = xy * s, xx * s, yy * s
        else:
            if xy.shape != self._xy.shape:
                raise ShapeError("layer counts changed between minibatches",
                                 expected=f"{tuple(self._xy.shape)} layer pairs",
                                 got=f"{tuple(xy.shape)}", fix="pass the same layers every batch")
            self._xy += xy.to(self._xy.device) * s
            self._xx += xx.to(self._xx.device) * s
            self._yy += yy.to(self._yy.device) * s
        self.batches += 1
        return self

    def compute(self) -> torch.Tensor:
        """CKA matrix, shape (L1, L2), float64, from the batch-averaged unbiased HSICs."""
        if self._xy is None or self._xx is None or self._yy is None:
            raise ShapeError("no minibatch was added", expected="at least one update()",
                             got="0 batches", fix="call update(xs, ys) first")
        xx, yy = self._xx / self.batches, self._yy / self.batches
        if bool((xx <= 0).any()) or bool((yy <= 0).any()):
            raise DataError("CKA is undefined for constant layers",
                            expected="features that vary within the minibatches",
                            got="zero self-HSIC", fix="drop those layers or check the taps")
        return (self._xy / self.batches) / torch.sqrt(xx[:, None] * yy[None, :])


def minibatch_cka(batches: Iterable[tuple[Any, Any]], *, kernel: Kernel = "linear",
                  threshold: float = 1.0, median: Median = "pairs", gemm_dtype: GemmDtype = "float32") -> float:
    """Minibatch CKA of one pair of taps.

    Parameters
    ----------
    batches : iterable of (x, y)
        ``x`` of shape (b, p) and ``y`` of shape (b, q) for the same ``b >= 4`` examples.
    kernel, threshold, median, gemm_dtype
        As in :class:`MinibatchCKA`.

    Returns
    -------
    float
        Ratio of the batch-averaged unbiased HSICs.
    """
    acc = MinibatchCKA(kernel=kernel, threshold=threshold, median=median, gemm_dtype=gemm_dtype)
    for x, y in batches:
        acc.update(x, y)
    return float(acc.compute()[0, 0])


# --------------------------------------------------------------------------- streaming


class StreamingLinearCKA:
    """Exact linear CKA over arbitrarily many examples, one batch at a time.

    Holds float64 sufficient statistics -- ``n``, a centre at the running mean, and sums about
    it: ``Σx``, ``XᵀX``, ``YᵀY``, ``XᵀY`` and the row-norm terms the unbiased estimator needs
    -- in ``O(p² + q² + pq)`` memory, never ``n x n``. Any batch split, merge order or
    all-reduce gives the full-batch result up to rounding.

    Parameters
    ----------
    dim_x, dim_y : int, optional
        Feature counts ``p`` and ``q``. Taken from the first batch if omitted; required for a
        rank that may call :meth:`reduce_` without having seen data.
    device : torch.device or str, optional
        Where the state lives; defaults to the first batch's device.
    gemm_dtype : {"float32", "float64"}
    chunk_rows : int
        Rows per GEMM inside :meth:`update`.

    Examples
    --------
    >>> acc = StreamingLinearCKA()
    >>> for x, y in loader:            # x (b, p), y (b, q), e.g. tokens as examples
    ...     acc.update(x, y)
    >>> acc.reduce_()                  # under torch.distributed: combine all ranks
    >>> acc.compute("unbiased")
    """

    def __init__(self, dim_x: int | None = None, dim_y: int | None = None, *,
                 device: torch.device | str | None = None, gemm_dtype: GemmDtype = "float32",
                 chunk_rows: int = _ROW_CHUNK) -> None:
        self._dt = _gemm_torch_dtype(gemm_dtype)
        self.gemm_dtype = gemm_dtype
        if chunk_rows < 1:
            raise ConfigError("chunk_rows must be positive", expected=">= 1", got=str(chunk_rows))
        self.chunk_rows = int(chunk_rows)
        self.device = torch.device(device) if device is not None else None
        self._m: _Moments | None = None
        if dim_x is not None and dim_y is not None:
            self._m = _Moments.zeros(int(dim_x), int(dim_y), self.device)
        elif (dim_x is None) != (dim_y is None):
            raise ConfigError("give both dim_x and dim_y or neither", expected="two ints or None",
                              got=f"dim_x={dim_x}, dim_y={dim_y}")

    @property
    def n(self) -> int:
        """Examples seen so far (over all ranks after :meth:`reduce_`)."""
        return 0 if self._m is None else int(round(float(self._m.n)))

    @property
    def dims(self) -> tuple[int, int] | None:
        """``(p, q)`` once known."""
        return None if self._m is None else (self._m.cx.numel(), self._m.cy.numel())

    def _check_dims(self, p: int, q: int) -> None:
        if self.dims is not None and self.dims != (p, q):
            raise ShapeError("feature counts changed", expected=f"(p, q) = {self.dims}",
                             got=f"({p}, {q})", fix="stream one pair of taps per accumulator")

    def update(self, x: Any, y: Any) -> StreamingLinearCKA:
        """Add a batch: ``x`` shape (b, p), ``y`` shape (b, q), same examples; returns self."""
        xt, yt = _feature_pair(x, y)
        if self.device is not None:
            xt, yt = xt.to(self.device), yt.to(self.device)
        self._check_dims(xt.shape[1], yt.shape[1])
        if xt.shape[0] == 0:
            if self._m is None:
                self._m = _Moments.zeros(xt.shape[1], yt.shape[1], xt.device)
            return self
        batch = _moments_of(xt, yt, self._dt, self.chunk_rows)
        if self._m is None or self.n == 0:
            self._m = batch
        else:
            self._m = _merge(self._m, batch.to(self._m.n.device))
        return self

    def merge(self, other: StreamingLinearCKA) -> StreamingLinearCKA:
        """Fold another accumulator's examples into this one (in place); returns self."""
        if other._m is None:
            return self
        self._check_dims(other._m.cx.numel(), other._m.cy.numel())
        if self._m is None or self.n == 0:
            self._m = other._m.clone() if self.device is None else other._m.to(self.device).clone()
        else:
            self._m = _merge(self._m, other._m.to(self._m.n.device))
        return self

    def flat_state(self) -> torch.Tensor:
        """The state as one float64 vector: ``n``, the centres and the sums about them.

        Use it to checkpoint or gather; for a distributed sum use :meth:`reduce_`, since
        sums about different centres do not add directly.
        """
        if self._m is None:
            raise ConfigError("the accumulator has no dimensions yet", expected="dim_x, dim_y",
                              got="no data and no dims", fix="pass dim_x and dim_y")
        return self._m.flat()

    @classmethod
    def from_flat_state(cls, flat: torch.Tensor, dim_x: int, dim_y: int,
                        **kwargs: Any) -> StreamingLinearCKA:
        """Rebuild an accumulator from :meth:`flat_state` output."""
        out = cls(**kwargs)
        out._m = _Moments.from_flat(flat.to(F64), int(dim_x), int(dim_y))
        return out

    def reduce_(self, group: Any = None) -> StreamingLinearCKA:
        """All-reduce the state over a ``torch.distributed`` group, in place; returns self.

        Two ``all_reduce`` sums of float64 vectors: first ``(n, Σx, Σy)`` to get the global
        mean, then every rank's sums re-expressed about that mean, which then add up
        exactly. Afterwards every rank holds the state of all examples. Call it once per
        accumulation (the state must be on a device the backend supports, e.g. CUDA for NCCL).
        """
        import torch.distributed as dist

        if self._m is None:
            raise ConfigError("reduce_ needs the feature counts on every rank",
                              expected="StreamingLinearCKA(dim_x, dim_y)",
                              got="a rank with no data and no dims",
                              fix="construct the accumulator with dim_x and dim_y")
        m = self._m
        p, q = m.cx.numel(), m.cy.numel()
        head = torch.cat([m.n.reshape(1), m.n * m.cx + m.sx, m.n * m.cy + m.sy])
        dist.all_reduce(head, op=dist.ReduceOp.SUM, group=group)
        n = head[0]
        if float(n) == 0:
            return self
        mx, my = head[1:1 + p] / n, head[1 + p:] / n
        flat = m.about(mx, my).flat(sums_only=True)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        self._m = _Moments.from_flat(flat, p, q, centres=(mx, my))
        return self

    def hsic(self, estimator: Estimator = "biased") -> tuple[float, float, float]:
        """``(HSIC(X,Y), HSIC(X,X), HSIC(Y,Y))`` for the linear kernel."""
        _choice(estimator, "estimator", get_args(Estimator))
        if self._m is None:
            _no_examples(estimator)
        xy, xx, yy = _hsic_terms(self._m, estimator)
        return float(xy), float(xx), float(yy)

    def compute(self, estimator: Estimator = "biased") -> float:
        """Linear CKA of all examples seen, biased or unbiased."""
        _choice(estimator, "estimator", get_args(Estimator))
        if self._m is None:
            _no_examples(estimator)
        return _ratio(*_hsic_terms(self._m, estimator))


# --------------------------------------------------------------------------- summaries


def _summary_matrix(matrix: Any) -> torch.Tensor:
    c = _as_tensor(matrix, "matrix").to(F64).cpu()
    if c.ndim != 2 or c.numel() == 0:
        raise ShapeError("a CKA matrix must be 2-D and non-empty", expected="shape (L1, L2)",
                         got=f"shape {tuple(c.shape)}", fix="pass the output of cka_matrix")
    _check_finite(c, "matrix")
    return c


def cka_summary(matrix: Any) -> dict[str, float]:
    """Summaries of an ``L1 x L2`` CKA matrix (rows: model 1 layers, columns: model 2).

    Parameters
    ----------
    matrix : array or tensor, shape (L1, L2)

    Returns
    -------
    dict
        ``diagonal_mean`` (mean of ``C[i, i]``, ``i < min(L1, L2)``; feature reuse when
        comparing a model with its fine-tuned self), ``band_mean`` (entries with
        ``|i - j| <= 1``), ``off_diagonal_mean`` (``i != j``; NaN for a 1x1 matrix),
        ``mean_row_max`` (mean over i of ``max_j C[i, j]``) and ``mean_best_match_shift``
        (mean over i of ``|argmax_j C[i, j] - i|``).
    """
    c = _summary_matrix(matrix)
    i = torch.arange(c.shape[0])[:, None]
    j = torch.arange(c.shape[1])[None, :]
    off = c[i != j]
    best = c.argmax(1)
    return {
        "diagonal_mean": float(c.diagonal().mean()),
        "band_mean": float(c[(i - j).abs() <= 1].mean()),
        "off_diagonal_mean": float(off.mean()) if off.numel() else float("nan"),
        "mean_row_max": float(c.max(1).values.mean()),
        "mean_best_match_shift": float((best - torch.arange(c.shape[0])).abs().to(F64).mean()),
    }


def paper_cka_summary(matrix: Any) -> dict[str, float]:
    """The paper's definitions of three summaries of an ``L1 x L2`` CKA matrix.

    They differ from :func:`cka_summary` in two ways. The off-diagonal mean leaves out the
    whole band ``|i - j| <= 1``, not only ``i = j``. On a rectangular matrix, row ``i`` is
    matched against its "ideal" column ``i* = min(i, L2 - 1)`` (``i`` clipped into the column
    range) instead of ``i`` itself, so rows past the last column still have a band and a
    finite shift; the off-diagonal entries are the rest of the matrix (``|j - i*| > 1``), so
    band and off-diagonal split it. On a square matrix ``i* = i``: the band mean and the
    shift equal :func:`cka_summary`'s.

    Parameters
    ----------
    matrix : array or tensor, shape (L1, L2)
        Rows: blocks of model 1; columns: blocks of model 2.

    Returns
    -------
    dict
        ``paper_off_diagonal_mean`` (mean of ``C[i, j]`` with ``|j - i*| > 1``; NaN when no
        entry is that far off, e.g. 2x2), ``paper_band_mean`` (mean of ``C[i, j]`` with
        ``|j - i*| <= 1``) and ``paper_mean_best_match_shift`` (mean over ``i`` of
        ``|argmax_j C[i, j] - i*|``).

    Notes
    -----
    The paper also reports "drift" and "diagonal contrast"; their definitions could not be
    found in public code, so they are not computed here (``docs/conventions.md``).
    """
    c = _summary_matrix(matrix)
    rows, cols = c.shape
    i = torch.arange(rows)[:, None]
    j = torch.arange(cols)[None, :]
    ideal = i.clamp(max=cols - 1)
    band = (j - ideal).abs() <= 1
    off = c[~band]
    return {
        "paper_off_diagonal_mean": float(off.mean()) if off.numel() else float("nan"),
        "paper_band_mean": float(c[band].mean()),
        "paper_mean_best_match_shift": float((c.argmax(1) - ideal[:, 0]).abs().to(F64).mean()),
    }
