"""Shared pieces of the CKA modules: option types, input checks and the precision rules.

Precision (docs/cka.md)
-----------------------
Removing a large mean before any product is what keeps float32 accurate. Column means are
accumulated in float64; the centre, rounded to float32 (float64 for float64 inputs), is
subtracted in that precision (correctly rounded, exact where the mean dominates); the products
of the centred values run as float32 GEMMs with TF32 switched off; partial products are
summed in float64, and the small offset left by rounding the centre is removed exactly in
float64. ``gemm_dtype="float64"`` runs the GEMMs in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal, get_args

import numpy as np
import torch

from attnprobe.errors import ConfigError, DataError, ShapeError, check_option

Kernel = Literal["linear", "rbf"]
Estimator = Literal["biased", "unbiased"]
GemmDtype = Literal["float32", "float64"]
Median = Literal["pairs", "kornblith"]
KERNELS: tuple[str, ...] = get_args(Kernel)
ESTIMATORS: tuple[str, ...] = get_args(Estimator)
GEMM_DTYPES: tuple[str, ...] = get_args(GemmDtype)
MEDIANS: tuple[str, ...] = get_args(Median)

F64 = torch.float64
_ROW_CHUNK = 8192  # rows per float32 GEMM before the partial sum moves to float64
_COL_CHUNK = 16384  # features per float32 Gram GEMM before the partial sum moves to float64

# --------------------------------------------------------------------------- validation


def _gemm_torch_dtype(gemm_dtype: str) -> torch.dtype:
    check_option("gemm_dtype", gemm_dtype, GEMM_DTYPES)
    return torch.float32 if gemm_dtype == "float32" else F64


def _as_tensor(a: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """Numpy/torch/array-like -> detached real tensor, moved to ``device`` if given."""
    if isinstance(a, torch.Tensor) and a.is_floating_point() and (device is None or a.device == device):
        return a.detach()  # the common case, checked in as few calls as possible
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


def _features(x: Any, name: str, device: torch.device | None = None, index: int | None = None) -> torch.Tensor:
    """``x`` as a detached real (n, features) tensor on ``device``; errors call it ``name``, or
    ``name[index]`` for one layer of a list (formed only when needed: all-pairs CKA checks
    every layer of every call)."""
    if type(x) is torch.Tensor and x.ndim == 2 and x.is_floating_point() and (device is None or x.device == device):
        return x.detach()  # the common case, in one test
    if index is not None:
        name = f"{name}[{index}]"
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


_NO_GUARD = nullcontext()  # reusable: the CPU has no TF32 to switch off


def _tf32_off(device: torch.device) -> AbstractContextManager[None]:
    """Switch TF32 matmuls off on CUDA for the block and restore the old setting after; on
    other devices a no-op that costs one attribute test (small-n CKA enters it several times)."""
    return _tf32_guard() if device.type == "cuda" else _NO_GUARD


@contextmanager
def _tf32_guard() -> Iterator[None]:
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
    acc = x[:chunk].to(sub).sum(0).to(F64)  # a batch is usually one chunk: no zeros, no add
    for s in range(chunk, x.shape[0], chunk):
        acc += x[s:s + chunk].to(sub).sum(0).to(F64)
    _check_finite(acc, name)
    return (acc / max(x.shape[0], 1)).to(sub)


def _hsic_scale(n: int, estimator: str) -> float:
    return 1.0 / (n - 1) ** 2 if estimator == "biased" else 1.0 / (n * (n - 3))
