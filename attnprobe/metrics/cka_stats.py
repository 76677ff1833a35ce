"""Uncertainty of a CKA matrix: case bootstrap intervals and pairing-permutation p-values.

Both work on the per-layer Gram matrices of the examples, so no forward pass is repeated. When
several examples come from one case (random crops), they are resampled and permuted together:
the case, not the crop, is the independent unit (``groups``). Definitions: ``docs/cka.md``.

- **Bootstrap** (:func:`bootstrap_cka`): draw cases with replacement, take all their examples,
  recompute every CKA; the percentile interval of the resamples. With the unbiased estimator a
  repeated example adds its self-similarity off the diagonal, so intervals lean slightly high.
- **Permutation test** (:func:`permutation_pvalues`): shuffle which target case is paired with
  which reference case (crops keep their order), recompute; the p-value of block pair (i, j) is
  ``(1 + #{permuted CKA_ij >= observed CKA_ij}) / (1 + permutations)``. It asks whether the
  pairing matters at all, i.e. whether CKA_ij exceeds what unpaired inputs of these two
  feature sets give.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from attnprobe.errors import ConfigError, DataError
from attnprobe.metrics.cka import Estimator, cka_matrix_from_grams

__all__ = ["bootstrap_cka", "permutation_pvalues", "check_groups"]


def check_groups(groups: Sequence[Any], n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Group label of each example -> (labels, example indices of each group in first-seen order)."""
    labels = np.asarray(list(groups))
    if labels.shape != (n,):
        raise DataError("one group label per example is needed", expected=f"{n} labels", got=f"{labels.shape}")
    order = list(dict.fromkeys(labels.tolist()))
    members = [np.flatnonzero(labels == g) for g in order]
    return labels, members


def _subset(stack: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows and columns ``index`` of every Gram of a stack ``(L, n, n)``."""
    return stack.index_select(1, index).index_select(2, index)


def _centred(stack: torch.Tensor, estimator: str) -> torch.Tensor:
    """Double-centred (biased) or U-centred (unbiased, Song et al. 2012) Grams ``(L, n, n)``.

    Scale factors of HSIC are left out: they cancel in the CKA ratio.
    """
    n = stack.shape[-1]
    if estimator == "biased":
        rows = stack.mean(dim=-1, keepdim=True)
        return stack - rows - rows.transpose(-1, -2) + stack.mean(dim=(-1, -2), keepdim=True)
    k = stack.clone()
    k.diagonal(dim1=-2, dim2=-1).zero_()
    rows = k.sum(dim=-1, keepdim=True) / (n - 2)
    total = k.sum(dim=(-1, -2), keepdim=True) / ((n - 1) * (n - 2))
    k = k - rows - rows.transpose(-1, -2) + total
    k.diagonal(dim1=-2, dim2=-1).zero_()
    return k


def _cka_batch(gx: torch.Tensor, gy: torch.Tensor, estimator: str) -> np.ndarray:
    """All-pairs CKA ``(L1, L2)`` of two Gram stacks in one product; NaN where a layer is
    constant (a resample of one case only)."""
    kx = _centred(gx, estimator).flatten(1)
    ky = _centred(gy, estimator).flatten(1)
    cross = kx @ ky.T
    norms = torch.sqrt((kx * kx).sum(1))[:, None] * torch.sqrt((ky * ky).sum(1))[None, :]
    tiny = torch.finfo(norms.dtype).tiny
    return torch.where(norms > tiny, cross / norms.clamp_min(tiny), torch.nan).cpu().numpy()


def _stack(grams: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(g, dtype=torch.float64) for g in grams])


def bootstrap_cka(grams_x: Sequence[torch.Tensor], grams_y: Sequence[torch.Tensor], *, groups: Sequence[Any],
                  estimator: Estimator = "unbiased", resamples: int = 1000, level: float = 0.95,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of every CKA_ij, resampling groups (cases) with replacement.

    Parameters
    ----------
    grams_x, grams_y : sequence of tensors, each (n, n)
        Uncentred Grams of the reference (L1) and target (L2) layers on the same n examples.
    groups : sequence, length n
        Case of each example.
    estimator : {"biased", "unbiased"}
    resamples : int
        Bootstrap resamples (>= 10).
    level : float
        Interval coverage, e.g. 0.95.
    seed : int
        Seed of the resampling (numpy ``default_rng``).

    Returns
    -------
    (low, high) : two arrays (L1, L2)
    """
    if resamples < 10 or not 0 < level < 1:
        raise ConfigError("bad bootstrap settings", expected="resamples >= 10 and 0 < level < 1",
                          got=f"resamples={resamples}, level={level}")
    n = grams_x[0].shape[0]
    _, members = check_groups(groups, n)
    rng = np.random.default_rng(seed)
    gx, gy = _stack(grams_x), _stack(grams_y)
    draws = []
    for _ in range(resamples):
        chosen = rng.integers(0, len(members), size=len(members))
        index = torch.as_tensor(np.concatenate([members[c] for c in chosen]), device=gx.device)
        draws.append(_cka_batch(_subset(gx, index), _subset(gy, index), estimator))
    stack = np.stack(draws)
    tail = (1 - level) / 2 * 100
    with warnings.catch_warnings():  # a cell that is NaN in every resample stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(stack, [tail, 100 - tail], axis=0)
    return low, high


def permutation_pvalues(grams_x: Sequence[torch.Tensor], grams_y: Sequence[torch.Tensor], *,
                        groups: Sequence[Any], estimator: Estimator = "unbiased", permutations: int = 1000,
                        seed: int = 0, observed: np.ndarray | None = None) -> np.ndarray:
    """One-sided p-value of every CKA_ij under random re-pairing of the target's cases.

    Parameters
    ----------
    grams_x, grams_y, groups, estimator
        As in :func:`bootstrap_cka`; every group must hold the same number of examples (crops).
    permutations : int
        Random permutations (>= 10).
    seed : int
    observed : array (L1, L2), optional
        The unpermuted CKA matrix (computed when omitted).

    Returns
    -------
    numpy.ndarray (L1, L2)
        p-values in ``[1 / (permutations + 1), 1]``.
    """
    if permutations < 10:
        raise ConfigError("bad permutation count", expected=">= 10", got=str(permutations))
    n = grams_x[0].shape[0]
    _, members = check_groups(groups, n)
    sizes = {len(m) for m in members}
    if len(sizes) != 1:
        raise DataError("every case needs the same number of examples to permute cases",
                        expected="equal crops per case", got=f"sizes {sorted(sizes)}")
    if observed is None:
        observed = cka_matrix_from_grams(list(grams_x), list(grams_y), estimator=estimator).cpu().numpy()
    observed = np.asarray(observed, dtype=np.float64)
    rng = np.random.default_rng(seed)
    stack_x, stack_y = _stack(grams_x), _stack(grams_y)
    identity = torch.as_tensor(np.concatenate(members), device=stack_x.device)
    gx = _subset(stack_x, identity)  # examples ordered case by case, crops in order
    exceed = np.zeros_like(observed, dtype=np.int64)
    for _ in range(permutations):
        perm = rng.permutation(len(members))
        index = torch.as_tensor(np.concatenate([members[c] for c in perm]), device=stack_x.device)
        exceed += _cka_batch(gx, _subset(stack_y, index), estimator) >= observed - 1e-12
    return (1 + exceed) / (1 + permutations)
