"""Feature reuse: CKA of every block pair of two models, or of one model on two input sets (docs/cka.md).

Comparisons
-----------
- model vs model on the same inputs (:func:`compare_models`): pretrained vs fine-tuned
  (feature reuse = the diagonal), scratch vs pretrained;
- one model on two input sets paired by case id (:func:`compare_models` with ``tgt_cases``),
  e.g. CT vs MRI renderings of the same cases;
- two capture stores of the same cases (:func:`compare_stores`).

Every one of them feeds ``(ref, tgt)`` :class:`~attnprobe.metrics.features.BlockOutputs` pairs
to an accumulator over all ``L1 x L2`` block pairs:

- ``unit="pooled"`` (:class:`PooledPairs`): one pooled vector per example; CKA with the linear
  or RBF kernel and the biased, unbiased or minibatch estimator, from one stacked product of
  the per-block Grams (:func:`attnprobe.metrics.cka.cka_matrix`). Under torchrun the features
  are gathered to rank 0, in case order, before computing.
- ``unit="tokens"`` (:class:`TokenPairs`): every token an example; exact linear CKA streamed
  per block pair (:class:`~attnprobe.metrics.cka.StreamingLinearCKA`, never ``n x n``). Blocks
  of different stages are compared on the coarser token grid (the finer output is average
  pooled to it). Under torchrun the streaming states are all-reduced.

The result is an xarray DataArray ``cka`` with dims ``("ref", "tgt")`` whose coordinates are
block names; :func:`summarize` and :func:`write_results` turn it into ``cka.nc``, ``cka.csv``
and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import numpy as np
import torch

from attnprobe import dist
from attnprobe.errors import ConfigError, DataError, StoreError, check_option
from attnprobe.metrics.cka import (
    GemmDtype,
    Kernel,
    Median,
    MinibatchCKA,
    StreamingLinearCKA,
    _check_threshold,
    cka_matrix_from_grams,
    cka_summary,
    gram,
    paper_cka_summary,
)
from attnprobe.metrics.cka_stats import bootstrap_cka, permutation_pvalues
from attnprobe.metrics.features import (
    UNITS,
    BlockOutputs,
    CaseLike,
    Unit,
    live_outputs,
    model_blocks,
    model_channels,
    paired_live_outputs,
    pooled_features,
    store_case_ids,
    store_channels,
    store_outputs,
    token_features,
)
from attnprobe.metrics.pooling import POOLINGS, SMALL_GRIDS, Pooling, SmallGrid

if TYPE_CHECKING:
    import xarray as xr
    from torch import nn

__all__ = [
    "ReuseEstimator",
    "CKAConfig",
    "PooledPairs",
    "TokenPairs",
    "pair_accumulator",
    "pair_by_case_id",
    "compare",
    "compare_models",
    "compare_stores",
    "cka_dataarray",
    "summarize",
    "write_results",
    "OUTPUT_FILES",
]

ReuseEstimator = Literal["biased", "unbiased", "minibatch"]
Baseline = Literal["none", "random-init"]
OUTPUT_FILES = ("cka.nc", "cka.csv", "summary.json")
_MIN_BATCH = 4  # the unbiased HSIC of a minibatch needs n >= 4


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, kw_only=True)
class CKAConfig:
    """How two sets of block outputs are compared.

    Parameters
    ----------
    unit : {"pooled", "tokens"}
        Example unit: a pooled vector per input (crop), or every token.
    kernel : {"linear", "rbf"}
        Kernel; ``"tokens"`` supports only ``"linear"`` (streamed, exact).
    estimator : {"biased", "unbiased", "minibatch"}
        HSIC estimator; ``"minibatch"`` averages unbiased HSICs over batches of
        ``batch_size`` examples (pooled unit only).
    pool : int
        Grid of the adaptive average pooling per spatial axis (pooled unit).
    batch_size : int
        Examples per minibatch (``estimator="minibatch"``), at least 4.
    threshold : float
        RBF bandwidth = ``threshold`` x median pairwise distance.
    median : {"pairs", "kornblith"}
        Which median the RBF bandwidth scales: over the distinct pairs (default), or
        Kornblith et al.'s (all ``n²`` squared distances, zero diagonal included); see
        :func:`attnprobe.metrics.cka.rbf_gram`.
    gemm_dtype : {"float32", "float64"}
        Dtype of the large products (sums are float64 either way; see
        :mod:`attnprobe.metrics.cka`).
    pooling : {"correct", "paper-swin-axes"}
        Pooled unit: pool ``x, y, z`` (default), or reproduce the paper's wrong-axis pooling
        of channel-last outputs (:func:`attnprobe.metrics.pooling.pool_examples`).
    small_grid : {"keep", "stretch"}
        Pooled unit: an axis shorter than ``pool`` keeps its size (default) or is stretched
        to it, as the paper's code did.
    bootstrap : int
        Case-bootstrap resamples for the interval of every CKA value (0: none). Pooled unit
        with the biased or unbiased estimator only (:mod:`attnprobe.metrics.cka_stats`).
    permutations : int
        Pairing permutations for the p-value of every CKA value (0: none); same scope.
    level : float
        Coverage of the bootstrap interval.
    stats_seed : int
        Seed of the resampling and the permutations.
    """

    unit: Unit = "pooled"
    kernel: Kernel = "linear"
    estimator: ReuseEstimator = "unbiased"
    pool: int = 8
    batch_size: int = 32
    threshold: float = 1.0
    median: Median = "pairs"
    gemm_dtype: GemmDtype = "float32"
    pooling: Pooling = "correct"
    small_grid: SmallGrid = "keep"
    bootstrap: int = 1000
    permutations: int = 1000
    level: float = 0.95
    stats_seed: int = 0

    @property
    def has_stats(self) -> bool:
        """True when intervals / p-values are computed for this configuration."""
        return self.unit == "pooled" and self.estimator != "minibatch" and (self.bootstrap or self.permutations) > 0

    def min_examples(self) -> int:
        """Fewest examples the estimator is defined for (checked before any forward pass)."""
        return _MIN_BATCH if self.estimator in ("unbiased", "minibatch") else 2

    def __post_init__(self) -> None:
        for name, options in (("unit", UNITS), ("kernel", get_args(Kernel)),
                              ("estimator", get_args(ReuseEstimator)),
                              ("gemm_dtype", get_args(GemmDtype)), ("median", get_args(Median)),
                              ("pooling", POOLINGS), ("small_grid", SMALL_GRIDS)):
            check_option(name, getattr(self, name), options)
        if self.unit == "tokens" and (self.pooling, self.small_grid) != ("correct", "keep"):
            raise ConfigError("pooling options apply to the pooled unit only",
                              expected="--pooling correct --small-grid keep with --unit tokens",
                              got=f"--pooling {self.pooling} --small-grid {self.small_grid}",
                              fix="use --unit pooled to reproduce the paper's pooling")
        if self.unit == "tokens" and self.kernel != "linear":
            raise ConfigError("the tokens unit supports only the linear kernel",
                              expected="--kernel linear with --unit tokens",
                              got=f"--kernel {self.kernel}",
                              fix="use --kernel linear, or --unit pooled for the RBF kernel "
                                  "(an RBF Gram over every token would be n x n)")
        if self.unit == "tokens" and self.estimator == "minibatch":
            raise ConfigError("the tokens unit computes the exact CKA over all tokens",
                              expected="--estimator biased or unbiased with --unit tokens",
                              got="--estimator minibatch",
                              fix="use --estimator unbiased (streamed exactly, no minibatches needed)")
        if not isinstance(self.pool, int | np.integer) or self.pool < 1:
            raise ConfigError("bad pooling grid", expected="an integer >= 1, e.g. 8", got=repr(self.pool))
        if not isinstance(self.batch_size, int | np.integer) or self.batch_size < _MIN_BATCH:
            raise ConfigError("bad minibatch size", expected=f"an integer >= {_MIN_BATCH}",
                              got=repr(self.batch_size), fix="use e.g. --batch-size 32")
        _check_threshold(self.threshold)
        for name in ("bootstrap", "permutations"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 0 or 0 < value < 10:
                raise ConfigError(f"bad --{name} count", expected="0 (off) or an integer >= 10, e.g. 1000",
                                  got=repr(value))
        if not 0 < self.level < 1:
            raise ConfigError("bad interval level", expected="a coverage in (0, 1), e.g. 0.95", got=repr(self.level))

    def as_attrs(self) -> dict[str, Any]:
        """The options as netCDF-friendly attributes."""
        out: dict[str, Any] = {"unit": self.unit, "kernel": self.kernel, "estimator": self.estimator,
                               "gemm_dtype": self.gemm_dtype}
        if self.unit == "pooled":
            out.update(pool=int(self.pool), pooling=self.pooling, small_grid=self.small_grid)
        if self.estimator == "minibatch":
            out["batch_size"] = int(self.batch_size)
        if self.kernel == "rbf":
            out.update(threshold=float(self.threshold), median=self.median)
        if self.has_stats:
            out.update(bootstrap=int(self.bootstrap), permutations=int(self.permutations),
                       level=float(self.level), stats_seed=int(self.stats_seed))
        return out


# --------------------------------------------------------------------------- accumulators


def _check_blocks(item: BlockOutputs, blocks: Sequence[str], side: str) -> None:
    missing = [b for b in blocks if b not in item.outputs]
    if missing:
        raise DataError(f"{side} outputs of case {item.case_id!r} lack blocks",
                        expected=f"every block of {list(blocks)[:3]}...", got=f"missing {missing[:4]}")


def _check_pair(ref: BlockOutputs, tgt: BlockOutputs) -> None:
    if ref.key != tgt.key or ref.case_id != tgt.case_id:
        raise DataError("reference and target examples are not paired",
                        expected=f"the same case and crop ({ref.case_id!r}, crop {ref.crop})",
                        got=f"({tgt.case_id!r}, crop {tgt.crop})",
                        fix="pair the inputs by case id before comparing")


class PooledPairs:
    """All block pairs of two models, one pooled vector per example.

    Parameters
    ----------
    ref_blocks, tgt_blocks : sequence of str
        Block names of the two sides (``L1`` and ``L2``).
    config : CKAConfig
        ``unit`` must be ``"pooled"``.
    device : torch.device or str
        Where the Grams are computed.

    Notes
    -----
    Features are kept (float32, on the CPU) until :meth:`compute`: the biased and unbiased
    estimators need every example at once, and sorting them by ``(case index, crop)`` makes a
    sharded run give the single-process minibatches and order.
    """

    def __init__(self, ref_blocks: Sequence[str], tgt_blocks: Sequence[str], *, config: CKAConfig,
                 device: torch.device | str = "cpu") -> None:
        if config.unit != "pooled":
            raise ConfigError("PooledPairs needs unit='pooled'", expected="'pooled'", got=repr(config.unit))
        self.ref_blocks, self.tgt_blocks = list(ref_blocks), list(tgt_blocks)
        self.config = config
        self.device = torch.device(device)
        self._items: list[tuple[tuple[int, int], list[torch.Tensor], list[torch.Tensor]]] = []
        #: after :meth:`compute` on rank 0 (biased/unbiased): per-layer Grams and example keys
        self.grams: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self.keys: list[tuple[int, int]] = []

    @property
    def n(self) -> int:
        """Examples added on this rank."""
        return len(self._items)

    def with_targets(self, targets: Iterable[BlockOutputs]) -> PooledPairs:
        """A copy that keeps this accumulator's reference features and takes new target outputs
        (same examples, by case and crop): another target costs its forwards only."""
        ref = {key: xs for key, xs, _ in self._items}
        other = PooledPairs(self.ref_blocks, self.tgt_blocks, config=self.config, device=self.device)
        cfg = self.config
        kw: dict[str, Any] = dict(grid=cfg.pool, pooling=cfg.pooling, small_grid=cfg.small_grid)
        for tgt in targets:
            if tgt.key not in ref:
                raise DataError("a target example has no reference example", expected="the same (case, crop)",
                                got=f"({tgt.case_id!r}, crop {tgt.crop})")
            _check_blocks(tgt, self.tgt_blocks, "target")
            ys = [pooled_features(tgt.outputs[b], **kw).float().cpu() for b in self.tgt_blocks]
            other._items.append((tgt.key, ref[tgt.key], ys))
        if len(other._items) != len(self._items):
            raise DataError("the new targets do not cover every reference example",
                            expected=f"{len(self._items)} examples", got=f"{len(other._items)}")
        return other

    def update(self, ref: BlockOutputs, tgt: BlockOutputs) -> None:
        """Add one example: the pooled features of every block of both sides."""
        _check_pair(ref, tgt)
        _check_blocks(ref, self.ref_blocks, "reference")
        _check_blocks(tgt, self.tgt_blocks, "target")
        cfg = self.config
        kw: dict[str, Any] = dict(grid=cfg.pool, pooling=cfg.pooling, small_grid=cfg.small_grid)
        xs = [pooled_features(ref.outputs[b], **kw).float().cpu() for b in self.ref_blocks]
        ys = [pooled_features(tgt.outputs[b], **kw).float().cpu() for b in self.tgt_blocks]
        self._items.append((ref.key, xs, ys))

    def compute(self) -> tuple[torch.Tensor, int] | None:
        """CKA matrix ``(L1, L2)`` float64 and the number of examples; ``None`` off rank 0.

        Collective under torchrun: every rank must call it.
        """
        parts = dist.gather_objects(self._items)
        if not dist.is_main():
            return None
        items = sorted((it for part in parts for it in part), key=lambda it: it[0])
        keys = [it[0] for it in items]
        if len(set(keys)) != len(keys):
            raise DataError("an example was added twice", expected="distinct (case, crop) pairs",
                            got=f"{len(keys) - len(set(keys))} duplicates")
        if not items:
            raise DataError("no examples to compare", expected="at least one case", got="0")
        xs = [torch.cat([it[1][i] for it in items]).to(self.device) for i in range(len(self.ref_blocks))]
        ys = [torch.cat([it[2][j] for it in items]).to(self.device) for j in range(len(self.tgt_blocks))]
        n = xs[0].shape[0]
        cfg = self.config
        if cfg.estimator != "minibatch":
            kw: dict[str, Any] = dict(kernel=cfg.kernel, threshold=cfg.threshold, median=cfg.median, gemm_dtype=cfg.gemm_dtype)
            gx, gy = [gram(x, **kw) for x in xs], [gram(y, **kw) for y in ys]
            self.grams, self.keys = (gx, gy), keys  # kept for intervals and permutation tests
            return cka_matrix_from_grams(gx, gy, estimator=cfg.estimator), n
        acc = MinibatchCKA(kernel=cfg.kernel, threshold=cfg.threshold, median=cfg.median,
                           gemm_dtype=cfg.gemm_dtype)
        for lo, hi in _batches(n, cfg.batch_size):
            acc.update([x[lo:hi] for x in xs], [y[lo:hi] for y in ys])
        return acc.compute(), n


def _batches(n: int, size: int) -> list[tuple[int, int]]:
    """Consecutive ``[lo, hi)`` batches; a remainder under 4 examples joins the batch before."""
    bounds = [(lo, min(lo + size, n)) for lo in range(0, n, size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < _MIN_BATCH:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


class TokenPairs:
    """All block pairs of two models with every token an example, streamed exactly.

    One :class:`~attnprobe.metrics.cka.StreamingLinearCKA` per block pair holds float64
    sufficient statistics (``O(C_i C_j)`` memory), never an ``n x n`` Gram. Two blocks whose
    token grids differ are compared on the elementwise smaller grid: the finer output is
    average pooled (over its named spatial axes) to it, so both rows describe the same region.

    Parameters
    ----------
    ref_channels, tgt_channels : mapping of str to int
        Block name -> channel count of the two sides, in block order (``L1`` and ``L2``
        blocks). Known up front so that a rank without cases can still take part in the
        all-reduce.
    config : CKAConfig
        ``unit`` must be ``"tokens"``.
    device : torch.device or str
        Where the statistics live (CUDA under NCCL).
    """

    def __init__(self, ref_channels: Mapping[str, int], tgt_channels: Mapping[str, int], *,
                 config: CKAConfig, device: torch.device | str = "cpu") -> None:
        if config.unit != "tokens":
            raise ConfigError("TokenPairs needs unit='tokens'", expected="'tokens'", got=repr(config.unit))
        self.ref_blocks, self.tgt_blocks = list(ref_channels), list(tgt_channels)
        self.config = config
        self.device = torch.device(device)
        self._acc = [[StreamingLinearCKA(int(ref_channels[a]), int(tgt_channels[b]), device=self.device,
                                         gemm_dtype=config.gemm_dtype)
                      for b in self.tgt_blocks] for a in self.ref_blocks]
        self.examples = 0

    @property
    def n(self) -> int:
        """Inputs (cases x crops) added on this rank."""
        return self.examples

    def update(self, ref: BlockOutputs, tgt: BlockOutputs) -> None:
        """Add the tokens of one example to every block pair."""
        _check_pair(ref, tgt)
        _check_blocks(ref, self.ref_blocks, "reference")
        _check_blocks(tgt, self.tgt_blocks, "target")
        # Checked for every block pair before any update, so a mismatch leaves the state untouched.
        tgt_samples = [tgt.outputs[b].shape[0] for b in self.tgt_blocks]
        for a in self.ref_blocks:
            n = ref.outputs[a].shape[0]
            other = next((m for m in tgt_samples if m != n), None)
            if other is not None:
                raise DataError("reference and target hold different sample counts",
                                expected=str(n), got=str(other))
        cache: dict[tuple[str, str, tuple[int, ...]], torch.Tensor] = {}

        def rows(side: str, out: torch.Tensor, block: str, grid: tuple[int, ...]) -> torch.Tensor:
            key = (side, block, grid)
            if key not in cache:
                cache[key] = token_features(out.to(self.device), grid=grid)
            return cache[key]

        for i, a in enumerate(self.ref_blocks):
            x_out = ref.outputs[a]
            for j, b in enumerate(self.tgt_blocks):
                y_out = tgt.outputs[b]
                grid = tuple(min(u, v) for u, v in zip(x_out.shape[1:4], y_out.shape[1:4], strict=True))
                self._acc[i][j].update(rows("ref", x_out, a, grid), rows("tgt", y_out, b, grid))
        self.examples += 1

    def compute(self) -> tuple[torch.Tensor, int, np.ndarray] | None:
        """CKA matrix ``(L1, L2)`` float64, inputs seen, tokens per pair; ``None`` off rank 0.

        Collective under torchrun: every rank all-reduces every pair's state.
        """
        examples = torch.tensor([float(self.examples)], dtype=torch.float64, device=self.device)
        dist.all_reduce_sum_(examples)
        if dist.is_distributed():
            for row in self._acc:
                for acc in row:
                    acc.reduce_()
        if not dist.is_main():
            return None
        if float(examples) == 0:
            raise DataError("no examples to compare", expected="at least one case", got="0")
        est = cast(Literal["biased", "unbiased"], self.config.estimator)  # "minibatch" is refused with tokens
        values = torch.tensor([[acc.compute(est) for acc in row] for row in self._acc], dtype=torch.float64)
        tokens = np.array([[acc.n for acc in row] for row in self._acc], dtype=np.int64)
        return values, int(float(examples)), tokens


def pair_accumulator(ref_channels: Mapping[str, int], tgt_channels: Mapping[str, int], *,
                     config: CKAConfig, device: torch.device | str = "cpu") -> PooledPairs | TokenPairs:
    """The accumulator for ``config.unit`` over the blocks (keys, in order) of both sides."""
    if config.unit == "tokens":
        return TokenPairs(ref_channels, tgt_channels, config=config, device=device)
    return PooledPairs(list(ref_channels), list(tgt_channels), config=config, device=device)


# --------------------------------------------------------------------------- result


def cka_dataarray(matrix: Any, ref_blocks: Sequence[str], tgt_blocks: Sequence[str], *,
                  attrs: Mapping[str, Any] | None = None) -> xr.DataArray:
    """Wrap an ``(L1, L2)`` CKA matrix as a DataArray ``cka`` with dims ``("ref", "tgt")``.

    Parameters
    ----------
    matrix : array or tensor, shape (L1, L2)
    ref_blocks, tgt_blocks : sequence of str
        Block names, the coordinates of ``ref`` and ``tgt``.
    attrs : mapping, optional
        Attributes (model names, kernel, estimator, unit, n ...); ``None`` values are dropped,
        other non-scalars are stored as strings (netCDF attributes are scalars).
    """
    import xarray as xr

    values = np.asarray(matrix.detach().cpu() if isinstance(matrix, torch.Tensor) else matrix,
                        dtype=np.float64)
    if values.shape != (len(ref_blocks), len(tgt_blocks)):
        raise DataError("CKA matrix and block names disagree",
                        expected=f"shape ({len(ref_blocks)}, {len(tgt_blocks)})", got=str(values.shape))
    clean = {k: (v if isinstance(v, str | int | float | np.integer | np.floating) and not isinstance(v, bool)
                 else str(v)) for k, v in (attrs or {}).items() if v is not None}
    return xr.DataArray(values, dims=("ref", "tgt"), name="cka", attrs=clean,
                        coords={"ref": np.array(list(ref_blocks), dtype=str),
                                "tgt": np.array(list(tgt_blocks), dtype=str)})


def summarize(da: xr.DataArray) -> dict[str, Any]:
    """Summaries of a CKA DataArray.

    Parameters
    ----------
    da : xarray.DataArray, dims ("ref", "tgt")

    Returns
    -------
    dict
        ``diagonal_mean``, ``band_mean`` (``|i - j| <= 1``), ``off_diagonal_mean``,
        ``mean_row_max``, ``mean_best_match_shift`` (mean over ref blocks i of
        ``|argmax_j CKA_ij - i|``) and ``diagonal``: ref block name -> ``CKA_ii`` for
        ``i < min(L1, L2)``; then the paper's definitions under their own names,
        ``paper_off_diagonal_mean``, ``paper_band_mean`` and ``paper_mean_best_match_shift``
        (:func:`attnprobe.metrics.cka.paper_cka_summary`). NaN (e.g. no off-diagonal entry)
        becomes ``None``.
    """
    m = da.transpose("ref", "tgt")
    values = np.asarray(m.values, dtype=np.float64)
    scalars = {**cka_summary(values), **paper_cka_summary(values)}
    out: dict[str, Any] = {k: (None if math.isnan(v) else v) for k, v in scalars.items()}
    refs = [str(r) for r in m["ref"].values]
    diag = range(min(values.shape))
    out["diagonal"] = {refs[i]: float(values[i, i]) for i in diag}
    # uncertainty and baseline, where computed: per diagonal cell, plus the baseline's own summary
    def plain(v: Any) -> Any:  # JSON has no NaN: a value that could not be computed is null
        return bool(v) if isinstance(v, np.bool_) else (None if math.isnan(float(v)) else float(v))

    for name in STAT_COORDS:
        if name in m.coords:
            cell = np.asarray(m.coords[name].values)
            out[f"diagonal_{name}"] = {refs[i]: plain(cell[i, i]) for i in diag}
    if "baseline_mean" in m.coords:
        base = np.asarray(m.coords["baseline_mean"].values, dtype=np.float64)
        out["baseline_diagonal_mean"] = plain(np.mean([base[i, i] for i in diag]))
        if out["baseline_diagonal_mean"] is not None and out["diagonal_mean"] is not None:
            out["diagonal_mean_above_baseline"] = out["diagonal_mean"] - out["baseline_diagonal_mean"]
    return out


#: per-cell coordinates a CKA result may carry (see :func:`compare` and :func:`compare_models`)
STAT_COORDS = ("ci_low", "ci_high", "p_value", "baseline_mean", "baseline_sd", "above_baseline",
               "distinct_from_baseline")


def write_results(da: xr.DataArray, out: str | Path) -> dict[str, Path]:
    """Write ``cka.nc`` (h5netcdf), tidy ``cka.csv`` (ref, tgt, value) and ``summary.json``.

    Parameters
    ----------
    da : xarray.DataArray, dims ("ref", "tgt")
        Output of :func:`compare_models` / :func:`compare_stores`.
    out : path
        Folder, created if missing.

    Returns
    -------
    dict
        File name -> path written.
    """
    import pandas as pd

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    m = da.transpose("ref", "tgt")
    paths = {name: folder / name for name in OUTPUT_FILES}
    m.to_netcdf(paths["cka.nc"], engine="h5netcdf")
    refs, tgts = np.meshgrid(m["ref"].values.astype(str), m["tgt"].values.astype(str), indexing="ij")
    columns = {"ref": refs.ravel(), "tgt": tgts.ravel(), "value": m.values.ravel()}
    columns.update({name: np.asarray(m.coords[name].values).ravel() for name in STAT_COORDS if name in m.coords})
    pd.DataFrame(columns).to_csv(paths["cka.csv"], index=False)
    summary = {**summarize(m), "attrs": {k: (v.item() if isinstance(v, np.generic) else v)
                                         for k, v in m.attrs.items()}}
    paths["summary.json"].write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return paths


# --------------------------------------------------------------------------- comparisons


def pair_by_case_id(ref_ids: Sequence[str], tgt_ids: Sequence[str], *, what: str = "inputs") -> list[int]:
    """Positions in ``tgt_ids`` of every id of ``ref_ids``; both must hold the same cases.

    Raises
    ------
    DataError
        When a case is in one list only (the message names a few), or an id repeats.
    """
    for ids, side in ((ref_ids, "reference"), (tgt_ids, "target")):
        if len(set(ids)) != len(ids):
            raise DataError(f"case ids repeat in the {side} {what}", expected="unique case ids",
                            got=str(sorted({c for c in ids if list(ids).count(c) > 1})[:4]))
    ref_set, tgt_set = set(ref_ids), set(tgt_ids)
    only_ref = [c for c in ref_ids if c not in tgt_set]
    only_tgt = [c for c in tgt_ids if c not in ref_set]
    if only_ref or only_tgt:
        raise DataError(f"the reference and target {what} hold different cases",
                        expected="the same case ids on both sides (paired by case id)",
                        got=f"{len(only_ref)} only in the reference (e.g. {only_ref[:3]}), "
                            f"{len(only_tgt)} only in the target (e.g. {only_tgt[:3]})",
                        fix="use inputs of the same cases (or --limit to a shared subset)")
    where = {c: i for i, c in enumerate(tgt_ids)}
    return [where[c] for c in ref_ids]


def compare(pairs: Iterable[tuple[BlockOutputs, BlockOutputs]], *, ref_channels: Mapping[str, int],
            tgt_channels: Mapping[str, int], config: CKAConfig, device: torch.device | str = "cpu",
            attrs: Mapping[str, Any] | None = None,
            on_example: Callable[[BlockOutputs], None] | None = None,
            accumulator: PooledPairs | TokenPairs | None = None) -> xr.DataArray | None:
    """CKA of every block pair over paired examples.

    Parameters
    ----------
    pairs : iterable of (BlockOutputs, BlockOutputs)
        ``(ref, tgt)`` outputs of the same example; under torchrun, this rank's share.
    ref_channels, tgt_channels : mapping of str to int
        Blocks (in order) and their channel counts on each side.
    config : CKAConfig
    device : torch.device or str
        Where the statistics/Grams are computed.
    attrs : mapping, optional
        Extra attributes of the result (model names, sources ...).
    on_example : callable, optional
        Called with the reference outputs after each example (progress).
    accumulator : PooledPairs or TokenPairs, optional
        An empty accumulator to fill (the caller keeps it, e.g. to reuse its features).

    Returns
    -------
    xarray.DataArray or None
        ``cka`` with dims ``("ref", "tgt")`` and attrs including ``n`` (examples: inputs for
        the pooled unit; for tokens, inputs are ``n_inputs`` and the token counts per pair
        ``n_tokens_min``/``n_tokens_max``); ``None`` on ranks other than 0.
    """
    acc = accumulator or pair_accumulator(ref_channels, tgt_channels, config=config, device=device)
    for ref, tgt in pairs:
        acc.update(ref, tgt)
        if on_example is not None:
            on_example(ref)
    result = acc.compute()
    if result is None:
        return None
    meta: dict[str, Any] = {**config.as_attrs()}
    if isinstance(acc, TokenPairs):
        matrix, inputs, tokens = result  # type: ignore[misc]
        meta.update(n=int(tokens.min()), n_inputs=inputs, n_tokens_min=int(tokens.min()),
                    n_tokens_max=int(tokens.max()))
    else:
        matrix, n = result  # type: ignore[misc]
        meta.update(n=n, n_inputs=n)
    da = cka_dataarray(matrix, list(ref_channels), list(tgt_channels), attrs={**(attrs or {}), **meta})
    if isinstance(acc, PooledPairs) and acc.grams is not None and config.has_stats:
        _add_uncertainty(da, acc, config)
    return da


#: fewest cases (independent units) for which intervals and p-values are reported
MIN_STAT_CASES = 5


def _add_uncertainty(da: xr.DataArray, acc: PooledPairs, config: CKAConfig) -> None:
    """Bootstrap interval and permutation p-value of every cell, as 2-D coords of ``da``."""
    gx, gy = acc.grams  # type: ignore[misc]
    groups = [key[0] for key in acc.keys]  # the case, not the crop, is the independent unit
    da.attrs["n_groups"] = len(set(groups))
    if len(set(groups)) < MIN_STAT_CASES:
        # one case: every resample and re-pairing is the data itself; two to four: a handful of
        # distinct resamples -- an interval or p-value from them would only look like evidence
        da.attrs["stats_skipped"] = f"fewer than {MIN_STAT_CASES} cases ({len(set(groups))})"
        warnings.warn(f"CKA intervals and p-values need at least {MIN_STAT_CASES} cases; got "
                      f"{len(set(groups))} (crops of one case are not independent), so none are reported",
                      UserWarning, stacklevel=3)
        return
    if config.bootstrap:
        low, high = bootstrap_cka(gx, gy, groups=groups, estimator=config.estimator,  # type: ignore[arg-type]
                                  resamples=config.bootstrap, level=config.level, seed=config.stats_seed)
        da.coords["ci_low"] = (("ref", "tgt"), low)
        da.coords["ci_high"] = (("ref", "tgt"), high)
    if config.permutations:
        p = permutation_pvalues(gx, gy, groups=groups, estimator=config.estimator,  # type: ignore[arg-type]
                                permutations=config.permutations, seed=config.stats_seed, observed=da.values)
        da.coords["p_value"] = (("ref", "tgt"), p)


def compare_models(ref_model: nn.Module, tgt_model: nn.Module | None, ref_cases: Sequence[CaseLike],
                   tgt_cases: Sequence[CaseLike] | None = None, *, config: CKAConfig | None = None,
                   crops: int = 1, crop_size: Sequence[int] | None = None, seed: int = 0,
                   device: torch.device | str = "cpu", names: tuple[str, str] = ("ref", "tgt"),
                   attrs: Mapping[str, Any] | None = None,
                   on_case: Callable[[str], None] | None = None,
                   baseline: Baseline = "none", baseline_seeds: int = 3,
                   on_example: Callable[[str, int], None] | None = None) -> xr.DataArray | None:
    """CKA between the blocks of two models on identical inputs, or of one model on two input sets.

    Parameters
    ----------
    ref_model : torch.nn.Module
        Reference model (rows), e.g. the CT-pretrained backbone.
    tgt_model : torch.nn.Module or None
        Target model (columns), e.g. fine-tuned on MRI; ``None`` means ``ref_model``.
    ref_cases : sequence of CaseLike
        Prepared inputs (``image``, ``mask`` of shape ``(1, x, y, z)``).
    tgt_cases : sequence of CaseLike, optional
        Inputs of the target model, e.g. the MRI rendering of the same cases; paired with
        ``ref_cases`` by case id (same case set required). Default: ``ref_cases``.
    config : CKAConfig, optional
        Unit, kernel, estimator ...; default ``CKAConfig()``.
    crops : int
        Seeded random crops per case (the same boxes for both sides); 1 = the whole volume.
    crop_size : sequence of int, optional
        Crop size ``(x, y, z)``; default see :func:`attnprobe.metrics.features.default_crop_size`.
    seed : int
        Crop seed (crops depend on the seed and the case id only).
    device : torch.device or str
        Where models and statistics run.
    names : tuple of str
        Names of the two models stored in the attrs (``ref``, ``tgt``).
    attrs : mapping, optional
        Extra attributes.
    on_case : callable, optional
        Called with the case id after all crops of a case (progress).
    on_example : callable, optional
        Called with ``(case id, crop)`` after every example, baseline passes included
        (progress that advances per crop).
    baseline : {"none", "random-init"}
        ``"random-init"``: also compare the reference with ``baseline_seeds`` randomly
        initialised models of the target's architecture and configuration on the same inputs,
        and add ``baseline_mean``, ``baseline_sd``, ``above_baseline`` (and, with intervals,
        ``distinct_from_baseline``) as coordinates. CKA of pooled features on few examples is
        high even between unrelated networks; the baseline says how high (``docs/cka.md``).
    baseline_seeds : int
        Random initialisations averaged for the baseline.

    Returns
    -------
    xarray.DataArray or None
        See :func:`compare`; ``None`` on ranks other than 0. Under torchrun the cases are
        sharded across ranks (:func:`attnprobe.dist.shard`).
    """
    config = config or CKAConfig()
    check_examples(len(ref_cases) * crops, config, warn=lambda msg: warnings.warn(msg, UserWarning, stacklevel=3))
    tgt_model = ref_model if tgt_model is None else tgt_model
    if tgt_cases is not None:
        order = pair_by_case_id([c.case_id for c in ref_cases], [c.case_id for c in tgt_cases])
        tgt_cases = [tgt_cases[i] for i in order]
    if not ref_cases:
        raise DataError("no cases to compare", expected="at least one case", got="0")
    indices = dist.shard(ref_cases)
    pairs = paired_live_outputs(ref_model, tgt_model, ref_cases, tgt_cases, crops=crops, crop_size=crop_size,
                                seed=seed, indices=indices, device=device)

    def example_done(ref: BlockOutputs) -> None:
        if on_example is not None:
            on_example(ref.case_id, ref.crop)
        if on_case is not None and ref.crop == crops - 1:
            on_case(ref.case_id)

    meta = {"ref": names[0], "tgt": names[1], "ref_source": "model", "tgt_source": "model",
            "crops": int(crops), "seed": int(seed), "n_cases": len(ref_cases),
            "crop_size": (",".join(str(int(s)) for s in crop_size) if crop_size is not None
                          else "default" if crops > 1 else None),
            **(attrs or {})}
    ref_all, tgt_all = model_channels(ref_model), model_channels(tgt_model)
    ref_ch = {b: ref_all[b] for b in model_blocks(ref_model)}
    tgt_ch = {b: tgt_all[b] for b in model_blocks(tgt_model)}
    acc = pair_accumulator(ref_ch, tgt_ch, config=config, device=device)
    da = compare(pairs, ref_channels=ref_ch, tgt_channels=tgt_ch, config=config, device=device,
                 attrs=meta, on_example=example_done, accumulator=acc)
    if baseline == "none":
        return da
    if baseline != "random-init" or baseline_seeds < 1:
        raise ConfigError("bad baseline", expected="'none' or 'random-init' with at least one seed",
                          got=f"{baseline!r} with {baseline_seeds} seed(s)")
    plain = replace(config, bootstrap=0, permutations=0)
    runs = []
    for k in range(baseline_seeds):
        random_model = _random_init(tgt_model, seed=k)
        if isinstance(acc, PooledPairs):  # the reference features are kept: only the random model runs
            outputs = live_outputs(random_model, tgt_cases or ref_cases, crops=crops, crop_size=crop_size,
                                   seed=seed, indices=indices, device=device)
            result = acc.with_targets(_progress(outputs, example_done)).compute()
            runs.append(None if result is None else result[0].cpu().numpy())
        else:
            pairs = paired_live_outputs(ref_model, random_model, ref_cases, tgt_cases, crops=crops,
                                        crop_size=crop_size, seed=seed, indices=indices, device=device)
            run = compare(pairs, ref_channels=ref_ch, tgt_channels=tgt_ch, config=plain, device=device,
                          on_example=example_done)
            runs.append(None if run is None else run.values)
    if da is not None:  # rank 0
        _add_baseline(da, np.stack(runs))  # type: ignore[arg-type]
    return da


def _progress(outputs: Iterable[BlockOutputs], done: Callable[[BlockOutputs], None]) -> Iterator[BlockOutputs]:
    for out in outputs:
        yield out
        done(out)


#: torch seed of the first random-init baseline model (then +1, +2 ...)
BASELINE_SEED = 0xBA5E


def _random_init(model: nn.Module, *, seed: int) -> nn.Module:
    """A model of the same architecture, configuration and compat mode, randomly initialised."""
    from attnprobe.models import adapter_for, build_model

    config = getattr(model, "attnprobe_config", None)
    if config is None:
        raise ConfigError("a random-init baseline needs a model built by attnprobe",
                          expected="a model from attnprobe.models.build_model/load_checkpoint",
                          got=type(model).__name__, fix="pass baseline='none' (--baseline none)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BASELINE_SEED + seed)  # offset: seed 0 would recreate many a trained model's init
        return build_model(adapter_for(model).name, **config).eval()


def _add_baseline(da: xr.DataArray, runs: np.ndarray) -> None:
    """Baseline mean/sd over random initialisations, the reuse above it, and (with intervals)
    whether a value is distinct from it: its interval lies above every baseline run."""
    mean, sd = runs.mean(axis=0), (runs.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(runs.shape[1:]))
    da.coords["baseline_mean"] = (("ref", "tgt"), mean)
    da.coords["baseline_sd"] = (("ref", "tgt"), sd)
    da.coords["above_baseline"] = (("ref", "tgt"), da.values - mean)
    if "ci_low" in da.coords:
        da.coords["distinct_from_baseline"] = (("ref", "tgt"), da.coords["ci_low"].values > runs.max(axis=0))
    da.attrs.update(baseline="random-init", baseline_seeds=len(runs))


#: advisory minimum: below it pooled CKA mostly reflects the inputs' own similarity structure
RECOMMENDED_EXAMPLES = 10


def check_examples(n: int, config: CKAConfig, *, warn: Callable[[str], None] | None = None) -> None:
    """Refuse (before any forward pass) an example count the estimator is not defined for, and
    warn below :data:`RECOMMENDED_EXAMPLES`."""
    if config.unit != "pooled":  # tokens: every token is an example, counted only after the forwards
        return
    need = config.min_examples()
    if n < need:
        raise ConfigError(f"{n} example(s) are too few for the {config.estimator} CKA estimator",
                          expected=f"at least {need} examples (cases x --crops)", got=f"{n}",
                          fix="add cases, raise --crops, or use --estimator biased")
    if n < RECOMMENDED_EXAMPLES and warn is not None:
        warn(f"only {n} examples: CKA of so few is dominated by the inputs' own similarity; "
             f"use {RECOMMENDED_EXAMPLES}+ (more cases or --crops) and read it against the baseline")


def compare_stores(ref_store: str | Path | xr.DataTree, tgt_store: str | Path | xr.DataTree, *,
                   config: CKAConfig | None = None, limit: int | None = None,
                   device: torch.device | str = "cpu", names: tuple[str, str] = ("ref", "tgt"),
                   attrs: Mapping[str, Any] | None = None,
                   on_case: Callable[[str], None] | None = None) -> xr.DataArray | None:
    """CKA between the block outputs of two capture stores of the same cases.

    Parameters
    ----------
    ref_store, tgt_store : path or xarray.DataTree
        Capture stores holding ``out`` of their blocks; read one sample at a time.
    config : CKAConfig, optional
    limit : int, optional
        Use the first ``limit`` cases (reference store order).
    device, names, attrs, on_case
        As in :func:`compare_models`.

    Returns
    -------
    xarray.DataArray or None
        See :func:`compare`.

    Raises
    ------
    DataError
        The finished cases of the two stores differ (cases are paired by id).
    StoreError
        A store without block outputs, or stores of different input sizes.
    """
    from attnprobe.store import as_tree

    config = config or CKAConfig()
    ref_tree, tgt_tree = as_tree(ref_store), as_tree(tgt_store)
    ref_ids, tgt_ids = store_case_ids(ref_tree), store_case_ids(tgt_tree)
    pair_by_case_id(ref_ids, tgt_ids, what="stores")
    ref_roi, tgt_roi = ref_tree.attrs.get("roi"), tgt_tree.attrs.get("roi")
    if ref_roi is not None and tgt_roi is not None and list(ref_roi) != list(tgt_roi):
        raise StoreError("the two stores were captured at different input sizes",
                         expected="the same ROI, so both models saw the same inputs",
                         got=f"{list(ref_roi)} and {list(tgt_roi)}",
                         fix="capture both models with the same --roi")
    if limit is not None:
        if limit < 1:
            raise ConfigError("bad --limit", expected="a positive number of cases", got=str(limit))
        ref_ids = ref_ids[:limit]
    if not ref_ids:
        raise DataError("the stores hold no finished case", expected="at least one done sample", got="0")
    indices = dist.shard(ref_ids)
    ref_ch, tgt_ch = store_channels(ref_tree), store_channels(tgt_tree)
    pairs = zip(store_outputs(ref_tree, ref_ids, indices=indices, device=device),
                store_outputs(tgt_tree, ref_ids, indices=indices, device=device), strict=True)
    meta = {"ref": names[0], "tgt": names[1], "ref_source": "store", "tgt_source": "store",
            "crops": 1, "n_cases": len(ref_ids),
            "roi": None if ref_roi is None else ",".join(str(int(s)) for s in ref_roi), **(attrs or {})}
    return compare(pairs, ref_channels=ref_ch, tgt_channels=tgt_ch, config=config, device=device, attrs=meta,
                   on_example=None if on_case is None else (lambda r: on_case(r.case_id)))
