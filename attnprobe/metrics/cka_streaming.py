"""Linear CKA from feature cross-products, never ``n x n`` (docs/cka.md).

- :func:`linear_cka` -- one pair, memory ``O(p² + q² + pq)`` (``n >> p``).
- :class:`StreamingLinearCKA` -- exact linear CKA over huge ``n`` from float64 sufficient
  statistics, mergeable and all-reducible with ``torch.distributed``.

Both hold float64 sums about a centre (:class:`_Moments`). A stream keeps one centre (its
first batch's rounded mean): each batch is centred on its own mean for its three GEMMs, and its
sums join the state by addition; the rank-two terms of the shift between the two centres are
collected and applied many batches at a time, and the sums are re-expressed about the data
mean once, when a result is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, cast

import torch

from attnprobe.errors import ConfigError, ShapeError, check_option
from attnprobe.metrics.cka_base import (
    _ROW_CHUNK,
    ESTIMATORS,
    F64,
    Estimator,
    GemmDtype,
    _centre,
    _feature_pair,
    _gemm_torch_dtype,
    _hsic_scale,
    _need_n,
    _ratio,
    _sub_dtype,
    _tf32_off,
)

__all__ = ["linear_cka", "StreamingLinearCKA"]


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


class _Pending:
    """Batches added to ``XᵀX``, ``YᵀY``, ``XᵀY`` but not yet shifted onto the stream's centre.

    Per batch it keeps ``n``, the shifts ``a = centre - batch centre`` (x) and ``b`` (y), the
    small products ``Σw[d, e, 1, w·a, z·b]``, ``Σz[d, e, 1, w·a, z·b]``, ``[Σd, Σe]`` and
    ``[[Σd², Σde], [Σde, Σe²]]``. :meth:`add_to` applies :meth:`_Moments.about`'s expansion
    to all of them at once -- vector terms as products over the batch axis, the rank-two terms
    of the three matrices as one float64 GEMM each -- instead of ~70 small operations a batch.
    """

    LIMIT = 128  # batches between two flushes

    def __init__(self) -> None:
        self.n: list[float] = []
        self.a: list[torch.Tensor] = []
        self.b: list[torch.Tensor] = []
        self.rw: list[torch.Tensor] = []
        self.rz: list[torch.Tensor] = []
        self.t: list[torch.Tensor] = []
        self.quad: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.n)

    def add_to(self, m: _Moments) -> None:
        """Shift every pending batch onto ``m``'s centre and add it (the matrices are in already)."""
        if not self.n:
            return
        n = torch.tensor(self.n, dtype=F64, device=m.n.device)  # (B,)
        a, b = torch.stack(self.a), torch.stack(self.b)  # (B, p), (B, q)
        rx, ryx, sx, cxx_a, cxy_b = torch.stack(self.rw).unbind(1)  # each (B, p)
        rxy, ry, sy, cyx_a, cyy_b = torch.stack(self.rz).unbind(1)  # each (B, q)
        tx, ty = torch.stack(self.t).unbind(1)  # Σd, Σe per batch
        quad = torch.stack(self.quad)  # (B, 2, 2)

        def dot(u, v):  # per-batch inner products, (B,)
            return torch.linalg.vecdot(u, v)

        aa, bb, sxa, syb = dot(a, a), dot(b, b), dot(sx, a), dot(sy, b)
        m.n += n.sum()
        m.sx += sx.sum(0) - n @ a
        m.sy += sy.sum(0) - n @ b
        m.rx += rx.sum(0) - 2 * cxx_a.sum(0) + (2 * sxa - tx - n * aa) @ a + aa @ sx
        m.ry += ry.sum(0) - 2 * cyy_b.sum(0) + (2 * syb - ty - n * bb) @ b + bb @ sy
        m.rxy += rxy.sum(0) - 2 * cyx_a.sum(0) + (2 * sxa - tx - n * aa) @ b + aa @ sy
        m.ryx += ryx.sum(0) - 2 * cxy_b.sum(0) + (2 * syb - ty - n * bb) @ a + bb @ sx
        m.dd += (quad[:, 0, 0] - 4 * dot(a, rx) + 4 * dot(a, cxx_a) + 2 * aa * tx - 4 * aa * sxa
                 + n * aa * aa).sum()
        m.ee += (quad[:, 1, 1] - 4 * dot(b, ry) + 4 * dot(b, cyy_b) + 2 * bb * ty - 4 * bb * syb
                 + n * bb * bb).sum()
        m.de += (quad[:, 0, 1] - 2 * dot(b, rxy) - 2 * dot(a, ryx) + 4 * dot(a, cxy_b) + bb * tx + aa * ty
                 - 2 * bb * sxa - 2 * aa * syb + n * aa * bb).sum()
        # Σ(w-a)(w-a)ᵀ = Σwwᵀ + u aᵀ + a uᵀ with u = n a/2 - Σw; likewise for y and the cross term
        ux, uy = 0.5 * n[:, None] * a - sx, 0.5 * n[:, None] * b - sy
        m.cxx.addmm_(ux.T, a).addmm_(a.T, ux)
        m.cyy.addmm_(uy.T, b).addmm_(b.T, uy)
        m.cxy.addmm_((n[:, None] * a - sx).T, b).addmm_(a.T, sy, alpha=-1)
        self.__init__()  # type: ignore[misc]


def _add_batch(m: _Moments, pend: _Pending, w: torch.Tensor, z: torch.Tensor,
               a: torch.Tensor, b: torch.Tensor) -> None:
    """Add one batch, centred on its own mean (``w``, ``z``), to ``m`` about ``m``'s centre.

    ``a = m.cx - batch centre`` and ``b = m.cy - batch centre`` (float64). The batch's GEMMs
    do not depend on the stream's history, so any split of the data into ranks gives the same
    products. Its three ``p x p`` products are added now; everything that the shift between
    the two centres changes waits in ``pend`` (:meth:`_Pending.add_to`).
    """
    # the p x p work is the three GEMMs; everything else is (b, p) or smaller, in float64
    w64, z64 = w.to(F64), z.to(F64)
    d, e = torch.linalg.vecdot(w64, w64), torch.linalg.vecdot(z64, z64)
    cols = torch.stack([d, e, torch.ones_like(d), w64 @ a, z64 @ b], 1)
    de = cols[:, :2]
    # rows Σ[d, e, 1, w·a, z·b] w (5, p) while w64 is still in cache, before the p x p sums
    # evict it; this orientation of the float64 product runs ~2x faster than w64ᵀ cols
    pend.rw.append(cols.T @ w64)
    pend.rz.append(cols.T @ z64)
    pend.t.append(de.sum(0))
    pend.quad.append(de.T @ de)
    pend.n.append(float(w.shape[0]))
    pend.a.append(a)
    pend.b.append(b)
    m.cxx += w.T @ w  # the float32 products are promoted as they are added
    m.cyy += z.T @ z
    m.cxy += w.T @ z


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
    check_option("estimator", estimator, ESTIMATORS)
    xt, yt = _feature_pair(x, y)
    _need_n(xt.shape[0], estimator)
    m = _moments_of(xt, yt, _gemm_torch_dtype(gemm_dtype), chunk_rows)
    return _ratio(*_hsic_terms(m, estimator))


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
        self._pend = _Pending()  # deferred outer-product terms of the batches added since a flush
        if dim_x is not None and dim_y is not None:
            self._m = _Moments.zeros(int(dim_x), int(dim_y), self.device)
        elif (dim_x is None) != (dim_y is None):
            raise ConfigError("give both dim_x and dim_y or neither", expected="two ints or None",
                              got=f"dim_x={dim_x}, dim_y={dim_y}")

    @property
    def n(self) -> int:
        """Examples seen so far (over all ranks after :meth:`reduce_`)."""
        return 0 if self._m is None else int(round(float(self._m.n) + sum(self._pend.n)))

    @property
    def dims(self) -> tuple[int, int] | None:
        """``(p, q)`` once known."""
        return None if self._m is None else (self._m.cx.numel(), self._m.cy.numel())

    def _check_dims(self, p: int, q: int) -> None:
        if self.dims is not None and self.dims != (p, q):
            raise ShapeError("feature counts changed", expected=f"(p, q) = {self.dims}",
                             got=f"({p}, {q})", fix="stream one pair of taps per accumulator")

    def _flush(self) -> _Moments | None:
        """Add the deferred outer-product terms into the float64 state; returns the state."""
        if self._m is not None:
            self._pend.add_to(self._m)
        return self._m

    def update(self, x: Any, y: Any) -> StreamingLinearCKA:
        """Add a batch: ``x`` shape (b, p), ``y`` shape (b, q), same examples; returns self.

        Each chunk of ``chunk_rows`` rows is centred on its own rounded mean and costs three
        GEMMs; its float64 sums are added about the stream's centre (the first batch's mean)
        by plain addition plus rank-two terms that are applied many batches at a time.
        """
        xt, yt = _feature_pair(x, y)
        if self.device is not None:
            xt, yt = xt.to(self.device), yt.to(self.device)
        elif self._m is not None and self.n > 0 and xt.device != self._m.n.device:
            xt, yt = xt.to(self._m.n.device), yt.to(self._m.n.device)
        self._check_dims(xt.shape[1], yt.shape[1])
        b = xt.shape[0]
        if b == 0:
            if self._m is None:
                self._m = _Moments.zeros(xt.shape[1], yt.shape[1], xt.device)
            return self
        sub_x, sub_y = _sub_dtype(xt, self._dt), _sub_dtype(yt, self._dt)
        m = self._m
        if m is None or self.n == 0:  # a fresh state, on the data's device; the first batch fixes the centre
            m = self._m = _Moments.zeros(xt.shape[1], yt.shape[1], xt.device)
            self._pend = _Pending()
        first = self.n == 0
        with _tf32_off(xt.device):
            for s in range(0, b, self.chunk_rows):
                xs, ys = xt[s:s + self.chunk_rows], yt[s:s + self.chunk_rows]
                cx, cy = _centre(xs, sub_x, "x"), _centre(ys, sub_y, "y")
                if first:
                    m.cx, m.cy = cx.to(F64), cy.to(F64)
                    first = False
                w = (xs.to(sub_x) - cx).to(self._dt)
                z = (ys.to(sub_y) - cy).to(self._dt)
                _add_batch(m, self._pend, w, z, m.cx - cx.to(F64), m.cy - cy.to(F64))
                if len(self._pend) >= _Pending.LIMIT:
                    self._pend.add_to(m)
        return self

    def merge(self, other: StreamingLinearCKA) -> StreamingLinearCKA:
        """Fold another accumulator's examples into this one (in place); returns self."""
        theirs = other._flush()
        if theirs is None:
            return self
        self._check_dims(theirs.cx.numel(), theirs.cy.numel())
        mine = self._flush()
        if mine is None or self.n == 0:
            self._m = theirs.clone() if self.device is None else theirs.to(self.device).clone()
        elif other.n > 0:
            self._m = _merge(mine, theirs.to(mine.n.device))
        return self

    def flat_state(self) -> torch.Tensor:
        """The state as one float64 vector: ``n``, the centres and the sums about them.

        Use it to checkpoint or gather; for a distributed sum use :meth:`reduce_`, since
        sums about different centres do not add directly.
        """
        m = self._flush()
        if m is None:
            raise ConfigError("the accumulator has no dimensions yet", expected="dim_x, dim_y",
                              got="no data and no dims", fix="pass dim_x and dim_y")
        self._m = m.centred()  # the sums about the data mean, expanded once here
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

        m = self._flush()
        if m is None:
            raise ConfigError("reduce_ needs the feature counts on every rank",
                              expected="StreamingLinearCKA(dim_x, dim_y)",
                              got="a rank with no data and no dims",
                              fix="construct the accumulator with dim_x and dim_y")
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
        check_option("estimator", estimator, ESTIMATORS)
        m = self._flush()
        if m is None:
            _need_n(0, estimator)
        xy, xx, yy = _hsic_terms(cast(_Moments, m), estimator)  # _need_n(0, ...) raised when None
        return float(xy), float(xx), float(yy)

    def compute(self, estimator: Estimator = "biased") -> float:
        """Linear CKA of all examples seen, biased or unbiased."""
        check_option("estimator", estimator, ESTIMATORS)
        m = self._flush()
        if m is None:
            _need_n(0, estimator)
        return _ratio(*_hsic_terms(cast(_Moments, m), estimator))  # _need_n(0, ...) raised when None

