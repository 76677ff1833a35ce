"""Centered kernel alignment (CKA) between two sets of features (docs/definitions.md, docs/cka.md).

Features of one tap for ``n`` examples are ``X (n, p)`` and ``Y (n, q)``. Everything is pure
torch, runs on the device of its inputs and accumulates in float64. This module gathers the
public API of four smaller ones:

- :mod:`attnprobe.metrics.cka_gram` -- Grams, HSIC, :func:`cka`, and all layer pairs of two
  models (:func:`cka_matrix`, :func:`cka_matrix_from_grams`);
- :mod:`attnprobe.metrics.cka_streaming` -- :func:`linear_cka` from feature cross-products and
  :class:`StreamingLinearCKA` over huge ``n``, mergeable and all-reducible;
- :mod:`attnprobe.metrics.cka_minibatch` -- :class:`MinibatchCKA`, :func:`minibatch_cka`;
- :mod:`attnprobe.metrics.cka_summary` -- :func:`cka_summary`, :func:`paper_cka_summary`.

The precision rules (centre before the GEMM, float32 GEMMs, float64 sums) are in
:mod:`attnprobe.metrics.cka_base`.
"""

from __future__ import annotations

from attnprobe.metrics.cka_base import (
    Estimator,
    GemmDtype,
    Kernel,
    Median,
    _check_threshold,
    _tf32_off,
)
from attnprobe.metrics.cka_gram import (
    center_gram,
    cka,
    cka_from_grams,
    cka_matrix,
    cka_matrix_from_grams,
    gram,
    hsic,
    linear_gram,
    rbf_gram,
    ucenter_gram,
)
from attnprobe.metrics.cka_minibatch import MinibatchCKA, minibatch_cka
from attnprobe.metrics.cka_streaming import StreamingLinearCKA, linear_cka
from attnprobe.metrics.cka_summary import cka_summary, paper_cka_summary

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

# private helpers other modules and tests reach through this name
_PRIVATE = (_check_threshold, _tf32_off)
