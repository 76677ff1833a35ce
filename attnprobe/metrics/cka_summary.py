"""Scalar summaries of an ``L1 x L2`` CKA matrix (docs/conventions.md)."""

from __future__ import annotations

from typing import Any

import torch

from attnprobe.errors import ShapeError
from attnprobe.metrics.cka_base import F64, _as_tensor, _check_finite

__all__ = ["cka_summary", "paper_cka_summary"]


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
