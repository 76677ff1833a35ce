"""CKA of every block pair: two loaded models (or one on two input sets), or two capture stores (docs/cka.md).

Both comparisons are small classes with two steps, so a caller can size its progress display
between them: the constructor (:meth:`ModelComparison.prepare`, :meth:`StoreComparison.open`)
pairs the inputs and checks the number of examples before any forward pass; :attr:`total` is
the number of progress ticks; :meth:`run` computes the ``cka`` DataArray. Warnings about a
small number of examples are :class:`UserWarning`\\ s. :func:`save_cka` writes the
:class:`~attnprobe.results.CkaRun`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from attnprobe.metrics.reuse import CKAConfig

__all__ = ["ModelComparison", "StoreComparison", "model_pair_attrs", "share_baseline", "save_cka"]


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


@dataclass
class ModelComparison:
    """CKA between the block outputs of two models on identical inputs, or of one model on two input sets.

    Attributes
    ----------
    ref_model
        Reference model (rows).
    tgt_model
        Target model (columns); None: ``ref_model`` itself (with ``tgt_cases``, or its baseline).
    ref_cases, tgt_cases
        Inputs of each side; ``tgt_cases`` None: ``ref_cases``, else paired with them by case id.
    config
        Unit, kernel, estimator, intervals (:class:`~attnprobe.metrics.reuse.CKAConfig`).
    crops, crop_size, seed
        Seeded random crops per case, the same boxes for both sides.
    names
        ``ref`` and ``tgt`` names stored in the result's attributes.
    attrs
        Extra attributes of the result.
    baseline, baseline_seeds
        ``"random-init"``: also compare with ``baseline_seeds`` random models of the target's architecture.
    """

    ref_model: nn.Module
    tgt_model: nn.Module | None
    ref_cases: Sequence[Any]
    tgt_cases: Sequence[Any] | None = None
    config: CKAConfig | None = None
    crops: int = 1
    crop_size: Sequence[int] | None = None
    seed: int = 0
    names: tuple[str, str] = ("ref", "tgt")
    attrs: dict[str, Any] | None = None
    baseline: str = "none"
    baseline_seeds: int = 3

    @classmethod
    def prepare(cls, ref_model: nn.Module, tgt_model: nn.Module | None, *, data: str | os.PathLike[str],
                tgt_data: str | os.PathLike[str] | None, preprocessing: Any, split: str = "all",
                limit: int | None = None, config: CKAConfig | None = None, crops: int = 1,
                **options: Any) -> ModelComparison:
        """Cases of ``data`` (and ``tgt_data``, paired by case id) prepared with ``preprocessing``
        (a :class:`~attnprobe.data.preprocess.PreprocessConfig`), the first ``limit``; the number of
        examples is checked before any forward pass. ``options``: the other attributes.

        Raises
        ------
        DataError
            The two input sets hold other cases, or none.
        ConfigError
            An estimator undefined for this number of examples.
        """
        from attnprobe.metrics.reuse import check_examples, pair_by_case_id
        from attnprobe.workflows.cases import lazy_cases

        ref_cases = lazy_cases(data, preprocessing, split=split, limit=None)
        tgt_cases = None
        if tgt_data is not None:
            tgt_cases = lazy_cases(tgt_data, preprocessing, split=split, limit=None)
            order = pair_by_case_id([c.case_id for c in ref_cases], [c.case_id for c in tgt_cases],
                                    what="input sets")
            tgt_cases = [tgt_cases[i] for i in order]
        if limit is not None:
            ref_cases = ref_cases[:limit]
            tgt_cases = None if tgt_cases is None else tgt_cases[:limit]
        # before any forward pass: an estimator undefined for this n is refused, a small n is flagged
        check_examples(len(ref_cases) * crops, config or CKAConfig(), warn=_warn)
        return cls(ref_model, tgt_model, ref_cases, tgt_cases, config=config, crops=crops, **options)

    @property
    def total(self) -> int:
        """Progress ticks of :meth:`run` with ``on_example``: one per crop of this rank's cases and pass
        (the baseline's passes included)."""
        from attnprobe import dist

        per_pass = len(dist.shard(self.ref_cases)) * self.crops
        return per_pass * (1 + (self.baseline_seeds if self.baseline != "none" else 0))

    def run(self, *, device: Any = "cpu", on_example: Callable[[str, int], None] | None = None,
            on_case: Callable[[str], None] | None = None) -> Any:
        """The ``cka`` DataArray (dims ``ref``, ``tgt``; None on ranks other than 0 under torchrun).

        ``on_example`` is called with ``(case id, crop)`` after every example, ``on_case`` with the
        case id once all its crops ran (both also in the baseline passes).
        """
        from attnprobe.metrics.reuse import compare_models

        return compare_models(self.ref_model, self.tgt_model, list(self.ref_cases),
                              None if self.tgt_cases is None else list(self.tgt_cases), config=self.config,
                              crops=self.crops, crop_size=self.crop_size, seed=self.seed, device=device,
                              names=self.names, attrs=self.attrs, baseline=self.baseline,  # type: ignore[arg-type]
                              baseline_seeds=self.baseline_seeds, on_example=on_example, on_case=on_case)


def model_pair_attrs(ref_report: Any, tgt_report: Any, *, data: str, tgt_data: str | None, roi: Any) -> dict[str, Any]:
    """Attributes of a model comparison: both checkpoints (:class:`~attnprobe.models.LoadReport`), the data, the ROI."""
    return {"ref_path": str(ref_report.path), "tgt_path": str(tgt_report.path), "ref_arch": ref_report.arch,
            "tgt_arch": tgt_report.arch, "ref_compat": ref_report.compat, "tgt_compat": tgt_report.compat,
            "data": data, "tgt_data": tgt_data or data,
            "roi": roi if isinstance(roi, str) else ",".join(map(str, roi))}


@dataclass
class StoreComparison:
    """CKA between the block outputs of two capture stores of the same cases (paired by id).

    Attributes
    ----------
    ref_store, tgt_store
        The stores as given.
    ref_tree, tgt_tree
        Their opened ``xarray.DataTree``\\ s.
    config
        :class:`~attnprobe.metrics.reuse.CKAConfig`.
    case_ids
        The reference store's finished cases, the first ``limit``.
    limit
        At most this many cases (None: all).
    """

    ref_store: str | os.PathLike[str]
    tgt_store: str | os.PathLike[str]
    ref_tree: Any
    tgt_tree: Any
    config: CKAConfig | None
    case_ids: list[str]
    limit: int | None = None

    @classmethod
    def open(cls, ref_store: str | os.PathLike[str], tgt_store: str | os.PathLike[str], *,
             config: CKAConfig | None = None, limit: int | None = None) -> StoreComparison:
        """Open both stores, pair their cases and check the number of examples.

        Raises
        ------
        StoreError
            A missing or foreign store.
        DataError
            The stores hold other cases.
        """
        from attnprobe.metrics.features import store_case_ids
        from attnprobe.metrics.reuse import check_examples, pair_by_case_id
        from attnprobe.store import open_store

        ref_tree, tgt_tree = open_store(ref_store), open_store(tgt_store)
        ids = store_case_ids(ref_tree)
        pair_by_case_id(ids, store_case_ids(tgt_tree), what="stores")
        ids = ids[:limit] if limit else ids
        check_examples(len(ids), config or CKAConfig(), warn=_warn)
        return cls(ref_store, tgt_store, ref_tree, tgt_tree, config, list(ids), limit)

    @property
    def total(self) -> int:
        """Cases this rank reads (progress ticks of :meth:`run`)."""
        from attnprobe import dist

        return len(dist.shard(self.case_ids))

    def run(self, *, device: Any = "cpu", names: tuple[str, str] = ("ref", "tgt"),
            on_case: Callable[[str], None] | None = None) -> Any:
        """The ``cka`` DataArray (None on ranks other than 0); ``on_case`` is called with each case id."""
        from attnprobe.metrics.reuse import compare_stores

        return compare_stores(self.ref_tree, self.tgt_tree, config=self.config, limit=self.limit, device=device,
                              names=names,
                              attrs={"ref_path": str(self.ref_store), "tgt_path": str(self.tgt_store),
                                     "ref_compat": self.ref_tree.attrs.get("compat", "current"),
                                     "tgt_compat": self.tgt_tree.attrs.get("compat", "current")},
                              on_case=on_case)


_BASELINE_COORDS = ("baseline_mean", "baseline_sd")


def share_baseline(matrix: Any, baseline: Any) -> Any:
    """Copy the random-init baseline of the first comparison of a backbone onto a later one; return
    the baseline to share (None: ``matrix`` has none and none was given).

    The baseline compares the reference with random models of the target's architecture, so it
    is the same whichever fine-tuned target of that architecture it stands next to.
    """
    if baseline is None:
        if all(c in matrix.coords for c in _BASELINE_COORDS):
            return (matrix.coords["baseline_mean"].values, matrix.coords["baseline_sd"].values,
                    dict(baseline=matrix.attrs.get("baseline"), baseline_seeds=matrix.attrs.get("baseline_seeds")))
        return None
    mean, sd, attrs = baseline
    matrix.coords["baseline_mean"] = (("ref", "tgt"), mean)
    matrix.coords["baseline_sd"] = (("ref", "tgt"), sd)
    matrix.coords["above_baseline"] = (("ref", "tgt"), matrix.values - mean)
    matrix.attrs.update({k: v for k, v in attrs.items() if v is not None})
    return baseline


def save_cka(matrix: Any, out: str | os.PathLike[str], *, manifest: Any = None,
             replace: Iterable[str] = ()) -> list[Path]:
    """Save a CKA matrix as a :class:`~attnprobe.results.CkaRun` (cka.nc, cka.csv, summary.json,
    manifest.json, record.json; docs/results.md); return the data files written."""
    from attnprobe.results import CkaRun

    return CkaRun(matrix=matrix, manifest=manifest).save(out, replace=replace)
