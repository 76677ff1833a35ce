"""One record per kind of run folder (docs/results.md lists files, columns and versions)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from attnprobe.results.files import netcdf_engine
from attnprobe.results.record import RunRecord, read_json


def _read_table(folder: Path, stem: str) -> pd.DataFrame:
    """``<stem>.parquet`` when it and pyarrow are there (exact dtypes), else ``<stem>.csv`` (case ids as text)."""
    parquet = folder / f"{stem}.parquet"
    if parquet.is_file():
        try:
            return pd.read_parquet(parquet)
        except ImportError:
            pass
    return pd.read_csv(folder / f"{stem}.csv", dtype={"case": str})


def _json_scalar(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


# --------------------------------------------------------------------------- adi


@dataclass
class AdiRun(RunRecord):
    """``attnprobe adi``: block-level ADI and attention flow over a padding sweep.

    Attributes
    ----------
    frame
        Tidy block-level table (``adi.csv``; columns of ``metrics.aggregate.TIDY_COLUMNS``).
    attrs
        Run attributes (source, model, checkpoint, arch, compat, roi, heads, pad_queries, padding
        sweep ...), also in ``adi.json`` and as ``adi.nc`` attributes.
    """

    kind: ClassVar[str] = "adi"
    schema_version: ClassVar[int] = 1
    files: ClassVar[tuple[str, ...]] = ("adi.csv", "adi.parquet", "adi.nc", "summary.csv", "adi.json")
    legacy_marker: ClassVar[tuple[str, ...]] = ("adi.csv", "adi.parquet")

    frame: pd.DataFrame
    attrs: dict[str, Any] = field(default_factory=dict)
    engine: str | None = field(default=None, compare=False)

    def _write(self, tmp: Path) -> list[str]:
        from attnprobe.metrics.aggregate import to_xarray
        from attnprobe.metrics.sweep import sweep_tables

        tables = sweep_tables(self.frame)
        self.frame.to_csv(tmp / "adi.csv", index=False)
        self.frame.to_parquet(tmp / "adi.parquet", index=False)
        tables.summary.to_csv(tmp / "summary.csv", index=False)
        ds = to_xarray(self.frame)
        # netCDF attributes must be plain scalars or strings.
        ds.attrs.update({k: (v if isinstance(v, (int, float)) else str(v))
                         for k, v in self.attrs.items() if v is not None})
        for name in ("case", "kind"):
            if name in ds.coords:
                ds = ds.assign_coords({name: ds[name].astype(str)})
        self.engine = self.engine or netcdf_engine()
        ds.to_netcdf(tmp / "adi.nc", engine=self.engine)  # type: ignore[call-overload]
        (tmp / "adi.json").write_text(json.dumps({**self.attrs, "label": self.label}, indent=1, default=str))
        return list(self.files)

    @property
    def summary(self) -> pd.DataFrame:
        """Stage-level summary over cases (``summary.csv``)."""
        from attnprobe.metrics.sweep import sweep_tables

        return sweep_tables(self.frame).summary

    @property
    def stages(self) -> pd.DataFrame:
        """Stage means per case (``metrics.aggregate.stage_means``)."""
        from attnprobe.metrics.aggregate import stage_means

        return stage_means(self.frame)

    @classmethod
    def _read(cls, folder: Path, meta: dict[str, Any]) -> AdiRun:
        attrs = read_json(folder / "adi.json")
        attrs.pop("label", None)
        return cls(frame=_read_table(folder, "adi"), attrs=attrs)

    @classmethod
    def _read_legacy(cls, folder: Path) -> AdiRun:
        # before records: the demo's adi.json named the run ("label", else "model"), the CLI wrote none
        attrs = read_json(folder / "adi.json")
        label = attrs.pop("label", None) or attrs.get("model")
        return cls(frame=_read_table(folder, "adi"), attrs=attrs, label=str(label) if label else None)


# --------------------------------------------------------------------------- cka


@dataclass
class CkaRun(RunRecord):
    """``attnprobe cka``: the CKA matrix of every block pair (docs/cka.md).

    Attributes
    ----------
    matrix
        ``xarray.DataArray`` with dims ``("ref", "tgt")``, its attributes (options, ``ref``/``tgt``
        names, n ...) and the interval/baseline coordinates.
    summary
        ``summary.json``: diagonal, band and shift summaries, plus ``attrs`` (set on save).
    """

    kind: ClassVar[str] = "cka"
    schema_version: ClassVar[int] = 1
    files: ClassVar[tuple[str, ...]] = ("cka.nc", "cka.csv", "summary.json")
    legacy_marker: ClassVar[tuple[str, ...]] = ("cka.nc", "cka.csv")

    matrix: Any
    summary: dict[str, Any] = field(default_factory=dict)

    def _write(self, tmp: Path) -> list[str]:
        from attnprobe.metrics.reuse import write_results

        paths = write_results(self.matrix, tmp)
        self.summary = read_json(paths["summary.json"])
        return list(self.files)

    @property
    def ref_label(self) -> str:
        return str(self.matrix.attrs.get("ref", "reference"))

    @property
    def tgt_label(self) -> str:
        return str(self.matrix.attrs.get("tgt", self.display_label()))

    @classmethod
    def _matrix(cls, folder: Path) -> Any:
        import xarray as xr

        nc = folder / "cka.nc"
        if nc.is_file():
            with xr.open_dataarray(nc, engine="h5netcdf") as da:
                return da.load()
        long = pd.read_csv(folder / "cka.csv")
        value = "value" if "value" in long.columns else "cka"
        refs = list(dict.fromkeys(long["ref"].astype(str)))
        tgts = list(dict.fromkeys(long["tgt"].astype(str)))
        wide = long.assign(ref=long["ref"].astype(str), tgt=long["tgt"].astype(str)).pivot(
            index="ref", columns="tgt", values=value).loc[refs, tgts]
        attrs = read_json(folder / "summary.json").get("attrs", {})
        return xr.DataArray(wide.to_numpy(float), dims=("ref", "tgt"), coords={"ref": refs, "tgt": tgts},
                            attrs=attrs if isinstance(attrs, dict) else {})

    @classmethod
    def _read(cls, folder: Path, meta: dict[str, Any]) -> CkaRun:
        return cls(matrix=cls._matrix(folder), summary=read_json(folder / "summary.json"))

    @classmethod
    def _read_legacy(cls, folder: Path) -> CkaRun:
        return cls._read(folder, {})


# --------------------------------------------------------------------------- evaluation


@dataclass
class EvaluationRun(RunRecord):
    """``attnprobe evaluate``: per-case scores and their summary.

    Attributes
    ----------
    cases
        ``cases.csv``: one row per scored case (``workflows.evaluation.CASE_COLUMNS``).
    summary
        ``summary.json``: summary statistics with bootstrap intervals, the run's inputs
        (model, data, split, roi, preprocessing) and the metric definitions.
    preset, backbone
        Training preset and architecture label of the evaluated model (None: not known,
        e.g. ``--pred`` folders); figures group by them.
    """

    kind: ClassVar[str] = "evaluation"
    schema_version: ClassVar[int] = 1
    files: ClassVar[tuple[str, ...]] = ("cases.csv", "summary.json")
    legacy_marker: ClassVar[tuple[str, ...]] = ("cases.csv", "summary.json")

    cases: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    backbone: str | None = None

    def _write(self, tmp: Path) -> list[str]:
        self.cases.to_csv(tmp / "cases.csv", index=False)
        (tmp / "summary.json").write_text(json.dumps({k: _json_scalar(v) for k, v in self.summary.items()},
                                                     indent=1, default=str))
        return list(self.files)

    def _meta(self) -> dict[str, Any]:
        return {"preset": self.preset, "backbone": self.backbone}

    @classmethod
    def _read(cls, folder: Path, meta: dict[str, Any]) -> EvaluationRun:
        return cls(cases=pd.read_csv(folder / "cases.csv", dtype={"case": str}),
                   summary=read_json(folder / "summary.json"), preset=meta.get("preset"),
                   backbone=meta.get("backbone"))

    @classmethod
    def _read_legacy(cls, folder: Path) -> EvaluationRun:
        from attnprobe.errors import DataError

        if not (folder / "cases.csv").is_file() or not (folder / "summary.json").is_file():
            raise DataError(f"{folder} is not an evaluation run", expected="a folder with cases.csv and summary.json",
                            got=", ".join(sorted(p.name for p in folder.iterdir())[:5]),
                            fix="pass an --out folder of attnprobe evaluate")
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{folder / 'summary.json'} is not JSON", expected="summary.json of attnprobe evaluate",
                            got=str(e)) from e
        preset, backbone = summary.get("preset"), summary.get("backbone")
        if preset is None or backbone is None:
            meta_preset, meta_backbone = model_labels(summary.get("model"))
            preset, backbone = preset or meta_preset, backbone or meta_backbone
        return cls(cases=pd.read_csv(folder / "cases.csv", dtype={"case": str}), summary=summary,
                   preset=preset, backbone=backbone)


def model_labels(checkpoint: Any) -> tuple[str | None, str | None]:
    """(training preset, architecture label) from the training metadata of a checkpoint file."""
    from attnprobe.errors import AttnprobeError
    from attnprobe.models import ARCH_LABELS

    if not isinstance(checkpoint, str) or not Path(checkpoint).is_file():
        return None, None
    try:
        from attnprobe.train.trainer import read_train_metadata

        meta = read_train_metadata(checkpoint)
    except AttnprobeError:
        return None, None
    if not meta:
        return None, None
    arch = meta.get("arch")
    return meta.get("preset"), (ARCH_LABELS.get(str(arch), str(arch)) if arch else None)


@dataclass
class ComparisonRun(RunRecord):
    """``attnprobe evaluate --compare``: paired differences of two evaluation runs (``compare.csv``)."""

    kind: ClassVar[str] = "comparison"
    schema_version: ClassVar[int] = 1
    files: ClassVar[tuple[str, ...]] = ("compare.csv",)
    legacy_marker: ClassVar[tuple[str, ...]] = ("compare.csv",)

    table: pd.DataFrame

    def _write(self, tmp: Path) -> list[str]:
        self.table.to_csv(tmp / "compare.csv", index=False)
        return list(self.files)

    @classmethod
    def _read(cls, folder: Path, meta: dict[str, Any]) -> ComparisonRun:
        return cls(table=pd.read_csv(folder / "compare.csv"))

    _read_legacy = _read  # type: ignore[assignment]


# --------------------------------------------------------------------------- ablation


@dataclass
class AblationRun(RunRecord):
    """``attnprobe ablate``: segmentation and ADI under interventions (docs/ablation.md).

    Attributes
    ----------
    table
        ``ablation.csv``: ``case, padding, pad_fraction, intervention, metric, value``.
    adi
        ``adi.csv``: block-level flow of the edited forwards, with ``intervention``.
    summary
        ``summary.csv``: per intervention and padding, summary and paired change against none.
    info
        The run's options and what every intervention edits (``summary.json`` without ``summary``).
    """

    kind: ClassVar[str] = "ablation"
    schema_version: ClassVar[int] = 1
    files: ClassVar[tuple[str, ...]] = ("ablation.csv", "adi.csv", "summary.csv", "summary.json")
    legacy_marker: ClassVar[tuple[str, ...]] = ("ablation.csv",)

    table: pd.DataFrame
    adi: pd.DataFrame
    summary: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)

    def _write(self, tmp: Path) -> list[str]:
        from attnprobe.train.ablation import AblationResult, write_ablation

        write_ablation(AblationResult(table=self.table, adi=self.adi, results={}), self.summary, tmp, info=self.info)
        return list(self.files)

    @classmethod
    def _read(cls, folder: Path, meta: dict[str, Any]) -> AblationRun:
        info = read_json(folder / "summary.json")
        info.pop("summary", None)
        return cls(table=pd.read_csv(folder / "ablation.csv", dtype={"case": str}),
                   adi=pd.read_csv(folder / "adi.csv", dtype={"case": str}),
                   summary=pd.read_csv(folder / "summary.csv"), info=info)

    @classmethod
    def _read_legacy(cls, folder: Path) -> AblationRun:
        run = cls._read(folder, {})
        label = run.info.get("label")
        run.label = str(label) if label is not None else Path(str(run.info.get("model", folder.name))).stem
        return run


# --------------------------------------------------------------------------- extent


@dataclass
class ExtentRun(RunRecord):
    """``attnprobe data extent``: axial extents and token efficiency of candidate crops.

    Attributes
    ----------
    extents
        ``extent.csv``: one row per case.
    efficiency
        ``efficiency.csv``: per candidate crop and stage, efficiency statistics over cases.
    arch, model_preset
        The architecture whose token geometry was measured.
    """

    kind: ClassVar[str] = "extent"
    schema_version: ClassVar[int] = 1
    files: ClassVar[tuple[str, ...]] = ("extent.csv", "efficiency.csv")
    legacy_marker: ClassVar[tuple[str, ...]] = ("efficiency.csv",)

    extents: pd.DataFrame
    efficiency: pd.DataFrame
    arch: str | None = None
    model_preset: str | None = None

    def _write(self, tmp: Path) -> list[str]:
        self.extents.to_csv(tmp / "extent.csv", index=False)
        self.efficiency.to_csv(tmp / "efficiency.csv", index=False)
        return list(self.files)

    def _meta(self) -> dict[str, Any]:
        return {"arch": self.arch, "model_preset": self.model_preset}

    @classmethod
    def _read(cls, folder: Path, meta: dict[str, Any]) -> ExtentRun:
        extents = folder / "extent.csv"
        return cls(extents=pd.read_csv(extents, dtype={"case": str}) if extents.is_file() else pd.DataFrame(),
                   efficiency=pd.read_csv(folder / "efficiency.csv"), arch=meta.get("arch"),
                   model_preset=meta.get("model_preset"))

    @classmethod
    def _read_legacy(cls, folder: Path) -> ExtentRun:
        return cls._read(folder, {})


# --------------------------------------------------------------------------- training


@dataclass
class TrainRun(RunRecord):
    """``attnprobe train``: the run folder the trainer writes (``config.json``, ``metrics.csv``,
    ``last.pt``, ``best.pt``); the record adds the manifest, the trainer's files stay its own.

    Attributes
    ----------
    config
        ``config.json``: the training config and data sources.
    metrics
        ``metrics.csv``: one row per logged step/epoch.
    """

    kind: ClassVar[str] = "train"
    schema_version: ClassVar[int] = 1
    files: ClassVar[tuple[str, ...]] = ("config.json", "metrics.csv", "last.pt", "best.pt")
    legacy_marker: ClassVar[tuple[str, ...]] = ("metrics.csv",)

    config: dict[str, Any] = field(default_factory=dict)
    metrics: pd.DataFrame | None = None
    finished: bool | None = None

    def _write(self, tmp: Path) -> list[str]:
        return []  # the trainer writes (and resumes) its own files

    def _meta(self) -> dict[str, Any]:
        return {"finished": self.finished}

    def save(self, folder, *, replace=(), extra_files=()):
        """Record the trainer's files present in ``folder`` (nothing of them is rewritten)."""
        return super().save(folder, replace=(), extra_files=[*self.files, *extra_files])

    @property
    def preset(self) -> str | None:
        return self.config.get("preset")

    @property
    def arch(self) -> str | None:
        return self.config.get("arch")

    @classmethod
    def _read(cls, folder: Path, meta: dict[str, Any]) -> TrainRun:
        metrics = folder / "metrics.csv"
        return cls(config=read_json(folder / "config.json"),
                   metrics=pd.read_csv(metrics) if metrics.is_file() else None, finished=meta.get("finished"))

    @classmethod
    def _read_legacy(cls, folder: Path) -> TrainRun:
        return cls._read(folder, {})


# --------------------------------------------------------------------------- phantoms


@dataclass
class PhantomSet(RunRecord):
    """``attnprobe data phantoms``: a synthetic dataset (NIfTI files, datalists, ``phantoms.json``);
    the record lists its entries so ``--overwrite`` recognises it."""

    kind: ClassVar[str] = "phantoms"
    schema_version: ClassVar[int] = 1
    legacy_marker: ClassVar[tuple[str, ...]] = ("phantoms.json",)

    entries: list[str] = field(default_factory=list)

    def _write(self, tmp: Path) -> list[str]:
        return []

    def save(self, folder, *, replace=(), extra_files=()):
        return super().save(folder, replace=replace, extra_files=[*self.entries, *extra_files])

    @classmethod
    def _read(cls, folder: Path, meta: dict[str, Any]) -> PhantomSet:
        return cls(entries=[str(f) for f in meta.get("files", [])])

    @classmethod
    def _read_legacy(cls, folder: Path) -> PhantomSet:
        return cls(entries=sorted(p.name for p in folder.iterdir()))


RECORDS: dict[str, type[RunRecord]] = {r.kind: r for r in (AdiRun, CkaRun, EvaluationRun, ComparisonRun,
                                                            AblationRun, ExtentRun, TrainRun, PhantomSet)}
"""Record class of every run-folder kind (``capture`` stores keep the store schema)."""
