"""Minibatch CKA (Nguyen, Raghu & Kornblith 2021): unbiased HSIC averaged over minibatches.

Linear kernels take the all-pairs fast path of :mod:`attnprobe.metrics.cka_gram` (one batched
GEMM per batch, no ``n x n`` centring); RBF kernels build their Grams per batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from attnprobe.errors import DataError, ShapeError, check_option
from attnprobe.metrics.cka_base import (
    KERNELS,
    MEDIANS,
    GemmDtype,
    Kernel,
    Median,
    _check_threshold,
    _device_of,
    _gemm_torch_dtype,
    _hsic_scale,
)
from attnprobe.metrics.cka_gram import _hsic_stack, _layer_grams, _linear_terms

__all__ = ["MinibatchCKA", "minibatch_cka"]


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
        self.kernel = check_option("kernel", kernel, KERNELS)
        self.threshold = _check_threshold(threshold)
        self.median = check_option("median", median, MEDIANS)
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
        if self.kernel == "linear":  # already scaled HSIC: one batched GEMM, no Gram centring
            xy, xx, yy = _linear_terms(lx, ly, "unbiased", self.gemm_dtype)
            s = 1.0
        else:
            dev = _device_of(*lx, *ly)
            gx, gy = _layer_grams(lx, ly, kernel=self.kernel, threshold=self.threshold, median=self.median,
                                  gemm_dtype=self.gemm_dtype)
            xy, xx, yy = _hsic_stack(gx, gy, "unbiased", dev, False)
            s = _hsic_scale(gx[0].shape[0], "unbiased")
        if self._xy is None or self._xx is None or self._yy is None:  # the first batch
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

