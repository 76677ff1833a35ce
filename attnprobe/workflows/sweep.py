"""The ADI padding sweep: online over a model's forwards, or offline from a capture store.

- :func:`sweep_spec` and :func:`check_fraction_changes`: a sweep's amounts, checked before any
  forward (too many amounts, or amounts that leave a case's input unchanged, are refused).
- :func:`online_sweep`: block-level ADI and flow of prepared cases, swept or as prepared,
  gathered in case order under torchrun.
- :class:`StoreSweep`: the same frame from a capture store, chunk by chunk.
- :func:`save_adi`: the frame and its attributes as an :class:`~attnprobe.results.AdiRun`.
- :func:`offline_agreement`: the largest difference between a store's rows and the online ones.

Definitions: docs/definitions.md (ADI, flow, fixed-ROI and grow sweeps).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from attnprobe.metrics.sweep import SweepSpec

__all__ = ["MAX_SWEEP_LEVELS", "sweep_spec", "check_fraction_changes", "online_sweep", "online_attrs",
           "gather_in_case_order", "StoreSweep", "model_label", "save_adi", "offline_agreement"]

#: more amounts than this is a typo (a sweep runs one forward per case and amount)
MAX_SWEEP_LEVELS = 64


def sweep_spec(paddings: Sequence[int], *, axis: str = "z", pad_mode: str = "end",
               mode: str = "fixed-roi") -> SweepSpec:
    """A checked :class:`~attnprobe.metrics.sweep.SweepSpec` of at most :data:`MAX_SWEEP_LEVELS` amounts."""
    from attnprobe.errors import ConfigError

    spec = SweepSpec(paddings=tuple(paddings), axis=axis, pad_mode=pad_mode, mode=mode)  # type: ignore[arg-type]
    if len(spec.paddings) > MAX_SWEEP_LEVELS:
        raise ConfigError("padding sweep too long", expected=f"at most {MAX_SWEEP_LEVELS} amounts",
                          got=f"{len(spec.paddings)} amounts", fix="sweep fewer amounts")
    return spec


def check_fraction_changes(case: Any, spec: SweepSpec) -> None:
    """Refuse a sweep whose padding fraction is the same at every amount for ``case``.

    In ``fixed-roi`` mode, a case whose content is shorter than the ROI less the largest
    amount already has that much padding: every amount gives the same input, and the sweep
    would print identical rows.
    """
    from attnprobe.errors import ConfigError
    from attnprobe.metrics.sweep import swept_input
    from attnprobe.workflows.cases import content_length

    if len(spec.paddings) < 2:
        return
    fractions = [swept_input(case, p, spec).pad_fraction for p in spec.paddings]
    if max(fractions) - min(fractions) < 1e-9:
        size = int(case.image.shape[spec.axis_index + 1])
        content = content_length(case, spec.axis_index)
        raise ConfigError(
            f"the padding sweep does not change the input of case {case.case_id}: its padding fraction is "
            f"{fractions[0]:.3f} at every amount",
            expected=f"content longer than the ROI less the largest amount on {spec.axis} "
                     f"({size} - {max(spec.paddings)} = {size - max(spec.paddings)} voxels)",
            got=f"{content} voxels of content on {spec.axis} (after preprocessing)",
            fix="use a smaller --roi on that axis (the checkpoint's training ROI is the default), larger "
                "amounts, or --sweep-mode grow")


def _checked(cases: Iterable[Any], spec: SweepSpec) -> Iterator[Any]:
    for case in cases:
        check_fraction_changes(case, spec)
        yield case


def online_sweep(model: nn.Module, cases: Iterable[Any], spec: SweepSpec | None, *, heads: str = "mean",
                 pad_queries: str = "all-windows", device: Any = "cpu",
                 on_step: Callable[[str, int], None] | None = None, check_fractions: bool = True,
                 case_order: Sequence[str] | None = None) -> pd.DataFrame:
    """Block-level ADI and flow of ``cases``, over the sweep ``spec`` or as prepared (``spec`` None).

    Parameters
    ----------
    model
        Loaded model of a registered architecture.
    cases
        Prepared cases, consumed one at a time (a generator keeps one case in memory).
    spec
        The sweep; None runs each case once as prepared (padding 0).
    heads, pad_queries, device
        As in :func:`attnprobe.metrics.sweep.padding_sweep`.
    on_step
        Called with ``(case id, amount)`` after each forward.
    check_fractions
        Refuse a case whose input the sweep does not change (:func:`check_fraction_changes`).
    case_order
        Every case id in order: under torchrun each rank's rows are gathered on rank 0 in this
        order (:func:`gather_in_case_order`); None: this process's rows only.

    Returns
    -------
    pandas.DataFrame
        Tidy block-level frame (``metrics.aggregate.TIDY_COLUMNS``).
    """
    from attnprobe.metrics.sweep import padding_sweep, prepared_flow

    if spec is None:
        frame = prepared_flow(model, cases, heads=heads, pad_queries=pad_queries,  # type: ignore[arg-type]
                              device=device, on_step=on_step)
    else:
        frame = padding_sweep(model, _checked(cases, spec) if check_fractions else cases, spec,
                              heads=heads, pad_queries=pad_queries,  # type: ignore[arg-type]
                              device=device, on_step=on_step)
    return frame if case_order is None else gather_in_case_order(frame, list(case_order))


def gather_in_case_order(frame: pd.DataFrame, case_ids: list[str]) -> pd.DataFrame:
    """Every rank's rows on rank 0, in the order one process would have produced them."""
    from attnprobe import dist

    frames = dist.gather_objects(frame)
    if len(frames) == 1:
        return frame
    order = {case: i for i, case in enumerate(case_ids)}
    merged = pd.concat(frames, ignore_index=True)
    rank_of_row = merged["case"].map(order)
    return merged.iloc[rank_of_row.argsort(kind="stable").to_numpy()].reset_index(drop=True)


def online_attrs(*, model: str, report: Any, config: Any, spec: SweepSpec | None, heads: str, pad_queries: str,
                 axis: str, sweep_mode: str) -> dict[str, Any]:
    """Attributes of an online run (``adi.json``, ``adi.nc``): the model, its preprocessing, the sweep.

    ``report`` is the model's :class:`~attnprobe.models.LoadReport`; ``config`` its
    :class:`~attnprobe.data.preprocess.PreprocessConfig`.
    """
    levels = spec.paddings if spec is not None else (0,)
    return {"source": "model", "model": model, "checkpoint": report.path, "arch": report.arch,
            "compat": report.compat,
            "roi": str(config.roi), "heads": heads, "pad_queries": pad_queries,
            "padding_sweep": ",".join(map(str, levels)),
            "axis": axis, "pad_mode": config.pad_mode, "sweep_mode": sweep_mode if spec is not None else "none",
            "spacing": str(config.spacing), "intensity": config.intensity}


@dataclass
class StoreSweep:
    """ADI and flow of a capture store, read chunk by chunk (no model needed).

    Open with :meth:`open`; :attr:`total` is the number of cases :meth:`run` reads (progress).

    Attributes
    ----------
    path
        The store.
    tree
        Its opened ``xarray.DataTree`` (lazy).
    limit
        Read at most this many finished cases (None: all).
    stats
        Bytes, chunks and seconds read (:class:`~attnprobe.metrics.offline.OfflineStats`), filled by :meth:`run`.
    """

    path: str | os.PathLike[str]
    tree: Any
    limit: int | None = None
    stats: Any = field(default=None)

    @classmethod
    def open(cls, store: str | os.PathLike[str], *, limit: int | None = None) -> StoreSweep:
        """Open ``store`` (a missing or foreign one is a :class:`~attnprobe.errors.StoreError`)."""
        from attnprobe.metrics.offline import OfflineStats
        from attnprobe.store import open_store

        return cls(path=store, tree=open_store(store, chunks={}), limit=limit, stats=OfflineStats())

    @property
    def total(self) -> int:
        """Finished cases :meth:`run` reads."""
        done = int(self.tree.dataset["done"].values.sum())
        return min(done, self.limit or done)

    def run(self, *, heads: str = "mean", pad_queries: str = "all-windows", device: Any = "cpu",
            on_case: Callable[[str], None] | None = None) -> pd.DataFrame:
        """The tidy block-level frame of the store's cases; ``on_case`` is called with each case id."""
        from attnprobe.metrics.offline import store_flow_records
        from attnprobe.metrics.reducers import flows_to_frame

        records = store_flow_records(self.tree, heads=heads, pad_queries=pad_queries,  # type: ignore[arg-type]
                                     device=device, stats=self.stats, on_sample=on_case)
        return flows_to_frame(list(islice(records, self.limit)))

    def attrs(self, *, heads: str, pad_queries: str) -> dict[str, Any]:
        """Attributes of the run (``adi.json``): the store and how it was captured."""
        return {"source": "store", "store": str(self.path), "heads": heads, "pad_queries": pad_queries,
                "arch": self.tree.attrs.get("arch"),
                "compat": self.tree.attrs.get("compat", "current"),
                "roi": self.tree.attrs.get("roi")}


def model_label(model: str, checkpoint: Any) -> str:
    """What figures call a model: its training preset and backbone when the checkpoint records
    them, else the file name (the run folder's name for attnprobe's own ``last.pt``/``best.pt``)."""
    from attnprobe.results.runs import model_labels

    preset, backbone = model_labels(str(checkpoint) if checkpoint else model)
    if preset and backbone:
        return f"{backbone} ({preset})"
    path = Path(model)
    if not path.exists():
        return model  # a name from attnprobe.toml
    return path.parent.name if path.stem in ("last", "best") and path.parent.name else path.stem


def save_adi(frame: pd.DataFrame, out: str | os.PathLike[str], attrs: Mapping[str, Any], *,
             label: str | None = None, manifest: Any = None, replace: Iterable[str] = (),
             engine: str | None = None) -> Any:
    """Save a sweep as an :class:`~attnprobe.results.AdiRun` (adi.csv, adi.parquet, adi.nc, summary.csv,
    adi.json, manifest.json, record.json; docs/results.md) and return the record.

    ``engine``: the netCDF writer (default :func:`attnprobe.results.files.netcdf_engine`).
    """
    from attnprobe.results import AdiRun

    run = AdiRun(frame=frame, attrs=dict(attrs), label=label, manifest=manifest, engine=engine)
    run.save(out, replace=replace)
    return run


def offline_agreement(store: str | os.PathLike[str], online: pd.DataFrame) -> dict[str, Any]:
    """Largest difference between ADI/flow from a store (offline) and the online sweep.

    Compares every (case, padding, stage, block, kind, metric) row the store yields with the
    online row of the same cell (docs/definitions.md: the two must agree to 1e-5); the store's
    rows carry the padding amount it was captured at.
    """
    from attnprobe.metrics.offline import store_flow

    offline = store_flow(store)
    keys = ["case", "stage", "block", "kind", "metric"]
    offline = offline.assign(padding=offline["padding"].astype(float))
    online = online.assign(padding=online["padding"].astype(float))
    merged = offline[keys + ["padding", "value"]].merge(online[keys + ["padding", "value"]], on=keys + ["padding"],
                                                       suffixes=("_offline", "_online"))
    diff = (merged["value_offline"] - merged["value_online"]).abs()
    return {"rows": int(len(merged)), "max_abs_diff": float(diff.max()) if len(diff) else math.nan,
            "paddings": sorted({int(p) if float(p).is_integer() else float(p) for p in merged["padding"]}),
            "blocks": sorted({f"stage{s}.block{b}" for s, b in zip(merged["stage"], merged["block"])})}
