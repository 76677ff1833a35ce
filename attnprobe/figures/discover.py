"""Find what a run folder holds and draw every figure it can (``attnprobe figures RUN_DIR``).

The folder is searched recursively for the files the commands write; each kind of file feeds
figures of :mod:`attnprobe.figures`:

==========================================  ===============================================
files found                                 figures
==========================================  ===============================================
``adi.csv`` / ``adi.parquet``               ADI and SFR per stage vs padding (one panel per
(``attnprobe adi``)                         run folder), attention-flow matrices per run
``cka.nc`` / ``cka.csv`` + ``summary.json`` CKA heatmap per comparison; feature-reuse lines
(``attnprobe cka``)                         per reference model
``cases.csv`` + ``summary.json``            detection rate (k/n) and Dice/HD95 boxes per
(``attnprobe evaluate``)                    preset and backbone
``efficiency.csv`` (``attnprobe data        token efficiency per stage of each crop
extent``)
``tumors.csv`` (per-case features with a    tumor appearance clusters (two feature pairs)
``cluster`` column)
``*.npz`` with ``image`` and ``attention``  attention on the volume (three slices)
capture stores (``*.zarr``) with maps       attention-flow matrices computed from the store
``metrics.csv`` (+ ``config.json``;         training loss per step (and validation Dice) per
``attnprobe train``)                        preset and backbone
==========================================  ===============================================

Each figure is saved as ``<name>.<fmt>`` next to ``<name>.txt``, a one-line caption that
says what is drawn, over how many cases and from which files. A figure whose data do not fit
(e.g. a sweep without flow metrics) is skipped with the reason, never fatal.

Run folders are read only through their records (:mod:`attnprobe.results`, docs/results.md):
a folder with ``record.json`` is classified by its ``kind`` and read with that record's
``load`` (schema version checked); a folder written before run records is recognised by its
file names and read with the record's ``load_legacy``. Labels (a run's display name, the preset
and backbone of an evaluation) are what the record says, else the folder name.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from attnprobe.errors import AttnprobeError, ConfigError, DataError
from attnprobe.figures.style import count
from attnprobe.results import (
    RECORD_FILE,
    AblationRun,
    AdiRun,
    CkaRun,
    EvaluationRun,
    ExtentRun,
    TrainRun,
    kind_of,
)

__all__ = ["FigureFormat", "FIGURE_FORMATS", "FigureRecord", "FigureSet", "RunContents", "find_sources",
           "draw_figures"]

FigureFormat = Literal["png", "pdf", "svg"]
FIGURE_FORMATS: tuple[FigureFormat, ...] = get_args(FigureFormat)

PRESET_ORDER = ("CT only", "scratch", "base", "ta", "act")
"""Left-to-right order of known presets in the evaluation figures (others follow)."""


@dataclass(frozen=True)
class FigureRecord:
    """One figure written.

    Attributes
    ----------
    name
        File stem (``adi_vs_padding``, ``cka_swin_unetr-base`` ...).
    path
        The image file.
    caption
        The one-line caption (also in ``<name>.txt``).
    kind
        Figure kind: ``adi``, ``sfr``, ``flow``, ``attention``, ``cka``, ``reuse``,
        ``detection``, ``dice_hd95``, ``efficiency``, ``tumors``, ``store_flow``, ``training``.
    sources
        Files the figure was drawn from, relative to the run folder.
    """

    name: str
    path: Path
    caption: str
    kind: str
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class FigureSet:
    """Result of :func:`draw_figures`: the figures written and the ones skipped, with why."""

    figures: tuple[FigureRecord, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    def __iter__(self) -> Iterator[FigureRecord]:
        return iter(self.figures)

    def __len__(self) -> int:
        return len(self.figures)


@dataclass
class RunContents:
    """Files of a run folder that figures can be drawn from (paths, sorted)."""

    root: Path
    adi: list[Path] = field(default_factory=list)
    cka: list[Path] = field(default_factory=list)
    evaluations: list[Path] = field(default_factory=list)
    efficiency: list[Path] = field(default_factory=list)
    tumors: list[Path] = field(default_factory=list)
    attention: list[Path] = field(default_factory=list)
    stores: list[Path] = field(default_factory=list)
    training: list[Path] = field(default_factory=list)
    ablation: list[Path] = field(default_factory=list)

    def empty(self) -> bool:
        """True when nothing drawable was found."""
        return not any((self.adi, self.cka, self.evaluations, self.efficiency, self.tumors, self.attention,
                        self.stores, self.training, self.ablation))


# --------------------------------------------------------------------------- finding


def _walk(root: Path, skip: Path | None) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk`` that does not enter stores (``*.zarr``), hidden folders or ``skip``."""
    from attnprobe.store import is_store

    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        keep = []
        for d in sorted(dirs):
            path = here / d
            if d.startswith(".") or (skip is not None and path.resolve() == skip):
                continue
            if d.endswith(".zarr") or is_store(path):
                yield path, [], ["<store>"]
                continue
            keep.append(d)
        dirs[:] = keep
        yield here, keep, sorted(files)


def find_sources(run_dir: str | os.PathLike[str], *, skip: str | os.PathLike[str] | None = None) -> RunContents:
    """Find the files of ``run_dir`` (recursively) that figures can be drawn from.

    Parameters
    ----------
    run_dir
        A run folder, e.g. ``runs/`` with the outputs of several commands.
    skip
        A folder not to search (the figure output folder).

    Raises
    ------
    DataError
        ``run_dir`` is not a folder.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError("run folder does not exist", expected="a folder with attnprobe outputs", got=str(root),
                        fix="pass the --out folder of attnprobe demo/adi/cka/evaluate")
    found = RunContents(root=root)
    skip_path = Path(skip).resolve() if skip is not None else None
    for folder, _dirs, files in _walk(root, skip_path):
        names = set(files)
        if "<store>" in names:
            found.stores.append(folder)
            continue
        if RECORD_FILE in names:
            _add_recorded(found, folder, names)
            continue
        if "ablation.csv" in names and "summary.csv" in names:
            found.ablation.append(folder)  # its adi.csv is block flow of edited forwards, not a sweep
            continue
        if "adi.parquet" in names or "adi.csv" in names:
            found.adi.append(folder)
        if "cka.nc" in names or "cka.csv" in names:
            found.cka.append(folder)
        if "cases.csv" in names and "summary.json" in names:
            found.evaluations.append(folder)
        if "efficiency.csv" in names:
            found.efficiency.append(folder / "efficiency.csv")
        if "tumors.csv" in names:
            found.tumors.append(folder / "tumors.csv")
        found.attention.extend(folder / f for f in files if f.endswith(".npz") and _is_attention(folder / f))
        if "metrics.csv" in names and _is_training_log(folder / "metrics.csv"):
            found.training.append(folder)
    return found


def _add_recorded(found: RunContents, folder: Path, names: set[str]) -> None:
    """File a run folder by its record's kind (the record is checked when it is read)."""
    kind = kind_of(folder)
    by_kind = {"adi": found.adi, "cka": found.cka, "evaluation": found.evaluations, "train": found.training,
               "ablation": found.ablation}
    if kind in by_kind:
        by_kind[kind].append(folder)
    elif kind == "extent":
        found.efficiency.append(folder / "efficiency.csv")
    elif kind is None:  # an unreadable record.json: reading it gives the clear error
        found.adi.append(folder)
    # other files next to a record (tumors.csv, attention .npz) are still drawn
    if "tumors.csv" in names:
        found.tumors.append(folder / "tumors.csv")
    found.attention.extend(folder / f for f in sorted(names) if f.endswith(".npz") and _is_attention(folder / f))


def _is_training_log(path: Path) -> bool:
    # The trainer's header; other tools' metrics.csv files are left alone.
    try:
        with path.open() as fh:
            header = fh.readline().strip().split(",")
    except (OSError, UnicodeDecodeError):
        return False
    return {"step", "loss", "val_dice"} <= set(header)


def _is_attention(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {"image", "attention"} <= set(data.files)
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------- readers


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _adi_run(folder: Path) -> tuple[pd.DataFrame, str]:
    """Block frame (head means) and display label of an ADI run folder."""
    run = AdiRun.load_any(folder)
    frame = run.frame
    if "head" in frame.columns:  # per-head runs: the figures draw head means
        keys = [c for c in frame.columns if c not in ("head", "value", "n_real_queries", "n_pad_queries")]
        frame = frame.groupby(keys, sort=False, dropna=False)["value"].mean().reset_index()
    return frame, run.display_label()


def _cka_array(folder: Path) -> Any:
    return CkaRun.load_any(folder).matrix


_INTERVAL_KEYS = ("detection_rate_ci_low", "detection_rate_ci_high", "dice_mean", "dice_ci_low", "dice_ci_high",
                  "hd95_mean", "hd95_ci_low", "hd95_ci_high")


def _evaluations(found: RunContents) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    rows, cases, sources = [], [], []
    for folder in found.evaluations:
        run = EvaluationRun.load_any(folder)
        summary = run.summary
        preset, backbone = str(run.preset or folder.name), str(run.backbone or "model")
        n_det, n_ref = summary.get("n_detected"), summary.get("n_with_reference")
        if n_det is None or not n_ref:
            continue
        # means and bootstrap intervals, where the run recorded them (older runs have none)
        extra = {k: summary[k] for k in _INTERVAL_KEYS if summary.get(k) is not None}
        rows.append({"preset": preset, "backbone": backbone, "n_detected": int(n_det), "n_cases": int(n_ref),
                     **extra})
        per_case = run.cases
        if {"case", "dice", "hd95"} <= set(per_case.columns):
            cases.append(per_case.assign(preset=preset, backbone=backbone))
        sources += [_rel(folder / "summary.json", found.root), _rel(folder / "cases.csv", found.root)]
    summary_frame = pd.DataFrame(rows, columns=["preset", "backbone", "n_detected", "n_cases", *_INTERVAL_KEYS])
    case_frame = pd.concat(cases, ignore_index=True) if cases else pd.DataFrame()
    return summary_frame, case_frame, sources


def _preset_order(presets: Iterable[str]) -> list[str]:
    present = list(dict.fromkeys(presets))
    return [p for p in PRESET_ORDER if p in present] + [p for p in present if p not in PRESET_ORDER]


def _efficiency(found: RunContents) -> pd.DataFrame:
    from attnprobe.models import ARCH_LABELS

    frames = []
    for path in found.efficiency:
        run = ExtentRun.load_any(path.parent)
        frame = run.efficiency
        if "efficiency_mean" in frame.columns and "efficiency" not in frame.columns:
            frame = frame.rename(columns={"efficiency_mean": "efficiency"})
        if "candidate" in frame.columns and "crop" not in frame.columns:
            frame = frame.rename(columns={"candidate": "crop"})
        if "arch" not in frame.columns and len(found.efficiency) > 1:
            frame = frame.assign(arch=run.arch or path.parent.name)
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    if "arch" in data.columns:
        data = data.assign(arch=[ARCH_LABELS.get(str(a), str(a)) for a in data["arch"]])
    return data


# --------------------------------------------------------------------------- drawing


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "figure"


class _Writer:
    """Saves figures with their captions, keeps the records, and collects skipped figures."""

    def __init__(self, out: Path, fmt: FigureFormat,
                 on_figure: Callable[[FigureRecord], None] | None) -> None:
        self.out, self.fmt, self.on_figure = out, fmt, on_figure
        self.records: list[FigureRecord] = []
        self.skipped: list[tuple[str, str]] = []
        self.names: set[str] = set()

    def unique(self, name: str) -> str:
        base, k = _slug(name), 2
        name = base
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def draw(self, name: str, kind: str, make: Callable[..., Any], caption: str,
             sources: Iterable[str]) -> None:
        import matplotlib.pyplot as plt

        from attnprobe.figures.style import paper_style

        try:
            fig = make()
        except AttnprobeError as exc:
            self.skipped.append((name, str(exc)))
            return
        name = self.unique(name)
        path = self.out / f"{name}.{self.fmt}"
        try:
            with paper_style():  # the theme's 200 dpi and white background for savefig
                fig.savefig(path, format=self.fmt, bbox_inches="tight")
        finally:
            plt.close(fig)
        text = " ".join(caption.split())
        (self.out / f"{name}.txt").write_text(text + "\n")
        record = FigureRecord(name=name, path=path, caption=text, kind=kind, sources=tuple(sources))
        self.records.append(record)
        if self.on_figure is not None:
            self.on_figure(record)


def _n_cases(frame: pd.DataFrame) -> int:
    return int(frame["case"].nunique()) if "case" in frame.columns else 0


def _draw_adi(found: RunContents, w: _Writer) -> None:
    from attnprobe.figures import adi_vs_padding, flow_matrices
    from attnprobe.metrics.aggregate import stage_means

    stages, sources = [], []
    for folder in found.adi:
        try:
            frame, label = _adi_run(folder)
            stage = stage_means(frame)
        except (AttnprobeError, OSError, ValueError, KeyError) as exc:
            w.skipped.append((f"adi {folder.name}", str(exc)))
            continue
        stages.append(stage.assign(model=label))
        sources.append(_rel(folder, found.root))
    if not stages:
        return
    frame = pd.concat(stages, ignore_index=True)
    models = list(dict.fromkeys(frame["model"]))
    if len(models) == 1:
        frame = frame.drop(columns="model")
    n = _n_cases(frame)
    paddings = sorted(frame["padding"].astype(float).unique())
    names = ", ".join(models)
    span = f"{paddings[0]:g}–{paddings[-1]:g}" if len(paddings) > 1 else f"{paddings[0]:g}"
    w.draw("adi_vs_padding", "adi", lambda: adi_vs_padding(frame, metric="adi", kind="all"),
           f"Attention dilution index (ADI, entropy share of padding keys, 0–1) per stage against input padding "
           f"({span} voxels along z), mean with 95% case-bootstrap bands, n = {count(n, 'case')}; all padding tokens (input and window); "
           f"model(s): {names}.", sources)
    w.draw("sfr_vs_padding", "sfr", lambda: adi_vs_padding(frame, metric="sfr", kind="all"),
           f"Signal fidelity ratio (SFR = A_rr, attention of real queries on real keys) per stage against input "
           f"padding ({span} voxels along z), mean with 95% case-bootstrap bands, n = {count(n, 'case')}; model(s): {names}.", sources)
    top = paddings[-1]
    for model in models:
        sub = frame if len(models) == 1 else frame[frame["model"] == model]
        m = None if len(models) == 1 else model
        w.draw(f"flow_{model}", "flow", lambda sub=sub, m=m: flow_matrices(sub, padding=top, model=m),
               f"Attention flow [[A_rr, A_rp], [A_pr, A_pp]] per stage at {top:g} voxels of input padding, "
               f"mean over {count(_n_cases(sub), 'case')} (rows: query real/padding; columns: key real/padding); "
               f"{model}.",
               sources)


def _draw_attention(found: RunContents, w: _Writer) -> None:
    from attnprobe.figures import attention_on_volume

    for path in found.attention:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        label = str(arrays.get("label", path.stem))
        block = str(arrays.get("block", "a block"))
        case = str(arrays.get("case", "one case"))
        padding = float(arrays["padding"]) if "padding" in arrays else math.nan
        mask = arrays.get("padding_mask")
        spacing = arrays.get("spacing", np.ones(3))
        slices = tuple(int(v) for v in np.ravel(arrays["slices"])[:3]) if "slices" in arrays else None
        pad_text = f", {padding:g} voxels of axial padding (hatched)" if math.isfinite(padding) else ""

        def make(arrays: dict[str, Any] = arrays, mask: Any = mask, spacing: Any = spacing, label: str = label,
                 block: str = block, slices: Any = slices) -> Any:
            return attention_on_volume(arrays["image"], arrays["attention"], padding_mask=mask, slices=slices,
                                       spacing=tuple(float(s) for s in np.ravel(spacing)[:3]),
                                       title=f"{label}: attention received in {block}")

        where = "slices through the tumor centre" if slices is not None else "central slices"
        w.draw(f"attention_{path.stem}", "attention", make,
               f"Attention each token of {block} receives (mean over the real queries of its window and over heads), "
               f"drawn on {where} of case {case}{pad_text}; {label}.", [_rel(path, found.root)])


def _cka_labels(da: Any, folder: Path) -> tuple[str, str]:
    ref = str(da.attrs.get("ref", "reference"))
    tgt = str(da.attrs.get("tgt", folder.name))
    return ref, tgt


def _draw_cka(found: RunContents, w: _Writer) -> None:
    from attnprobe.figures import cka_heatmap, feature_reuse_lines

    by_ref: dict[str, dict[str, pd.Series]] = {}
    sources_by_ref: dict[str, list[str]] = {}
    for folder in found.cka:
        try:
            da = _cka_array(folder)
        except (AttnprobeError, OSError, ValueError, KeyError) as exc:
            w.skipped.append((f"cka {folder.name}", str(exc)))
            continue
        ref, tgt = _cka_labels(da, folder)
        n = da.attrs.get("n", da.attrs.get("n_inputs", "?"))
        unit = da.attrs.get("unit", "pooled")
        estimator = da.attrs.get("estimator", "?")
        source = _rel(folder, found.root)
        w.draw(f"cka_{folder.name}", "cka",
               lambda da=da, ref=ref, tgt=tgt: cka_heatmap(da, ref_label=ref, tgt_label=tgt),
               f"Linear CKA ({estimator} HSIC, {unit} examples, n = {n}) between every block output of {ref} (rows) "
               f"and {tgt} (columns) on the same inputs; the diagonal is feature reuse.", [source])
        m = da.transpose("ref", "tgt")
        refs, tgts = [str(v) for v in m["ref"].values], [str(v) for v in m["tgt"].values]
        shared = [b for b in refs if b in tgts]
        if shared:
            diag = pd.Series([float(m.sel(ref=b, tgt=b)) for b in shared], index=shared)
            by_ref.setdefault(ref, {})[tgt] = diag
            sources_by_ref.setdefault(ref, []).append(source)
    for ref, diagonals in by_ref.items():
        w.draw(f"feature_reuse_{ref}", "reuse",
               lambda diagonals=diagonals, ref=ref: feature_reuse_lines(diagonals, reference=ref),
               f"Feature reuse: CKA of each block output with the same block of {ref}, for "
               f"{', '.join(diagonals)}.", sources_by_ref[ref])


def _draw_evaluation(found: RunContents, w: _Writer) -> None:
    from attnprobe.figures import detection_bars, dice_hd95_boxes

    summary, cases, sources = _evaluations(found)
    if summary.empty:
        return
    order = _preset_order(summary["preset"])
    n_text = ", ".join(f"{b}: {int(summary[summary.backbone == b].n_cases.max())}"
                       for b in dict.fromkeys(summary["backbone"]))
    w.draw("detection", "detection", lambda: detection_bars(summary, preset_order=order),
           f"Tumor detection rate (a case counts when the prediction overlaps its largest lesion with IoU > 0.1, "
           f"fragments merged LiTS-style unless the run says otherwise; bars labelled k/n; error bars: bootstrap "
           f"95% intervals over cases where recorded) per training preset and backbone; cases per backbone: "
           f"{n_text}.", sources)
    if not cases.empty:
        w.draw("dice_hd95", "dice_hd95", lambda: dice_hd95_boxes(cases, summary=summary, preset_order=order),
               f"Per-case Dice and HD95 (mm) of the segmentations per training preset and backbone "
               f"({count(len(cases), 'case evaluation')}; HD95 undefined for empty predictions, left out; "
               f"diamonds: means with bootstrap 95% intervals where recorded).", sources)


def _draw_ablation(found: RunContents, w: _Writer) -> None:
    from attnprobe.figures.ablation import ablation_deltas

    for folder in found.ablation:
        try:
            run = AblationRun.load_any(folder)
        except (AttnprobeError, OSError, ValueError, KeyError) as exc:
            w.skipped.append((f"ablation {folder.name}", str(exc)))
            continue
        summary, label = run.summary, run.display_label()
        n = int(summary["delta_dice_n"].max()) if "delta_dice_n" in summary.columns else 0
        w.draw(f"ablation_{folder.name}", "ablation", lambda s=summary: ablation_deltas(s),
               f"Causal test on {label}: change in Dice and in tumor detection against the unedited forward "
               f"(paired by case), per padding, one line per intervention (masked: attention to padding keys "
               f"removed before the softmax; mean-ablate: padding tokens replaced by the mean real token); "
               f"bands: bootstrap 95% intervals over {count(n, 'case')}.", [_rel(folder / "summary.csv", found.root)])


def _draw_efficiency(found: RunContents, w: _Writer) -> None:
    from attnprobe.figures import token_efficiency

    if not found.efficiency:
        return
    try:
        data = _efficiency(found)
    except (AttnprobeError, OSError, ValueError, KeyError) as exc:
        w.skipped.append(("token_efficiency", str(exc)))
        return
    n = int(data["n_cases"].max()) if "n_cases" in data.columns else None
    crops = ", ".join(dict.fromkeys(str(c).replace("x", "×") for c in data.get("crop", [])))
    w.draw("token_efficiency", "efficiency", lambda: token_efficiency(data),
           f"Token efficiency (real tokens / all tokens, window padding included) per stage for the crops "
           f"{crops}{', mean over ' + count(n, 'case') if n else ''}.", [_rel(p, found.root) for p in found.efficiency])


def _draw_tumors(found: RunContents, w: _Writer) -> None:
    from attnprobe.figures import FEATURE_LABELS, tumor_clusters

    for path in found.tumors:
        wide = pd.read_csv(path)
        if "cluster" not in wide.columns:
            w.skipped.append((f"tumors {path.parent.name}", "no 'cluster' column"))
            continue
        k = len({c for c in wide["cluster"] if c != -1})
        for x, y in (("mean", "cv"), ("contrast", "boundary_gradient")):
            if {x, y} <= set(wide.columns):
                w.draw(f"tumor_clusters_{x}_{y}", "tumors", lambda x=x, y=y, wide=wide: tumor_clusters(wide, x=x, y=y),
                       f"Tumor appearance of {count(len(wide), 'case')}: {FEATURE_LABELS.get(x, x)} against "
                       f"{FEATURE_LABELS.get(y, y)}, coloured by k-means cluster (k = {k}, chosen by silhouette).",
                       [_rel(path, found.root)])


def _draw_stores(found: RunContents, w: _Writer) -> None:
    from attnprobe.figures import flow_matrices
    from attnprobe.metrics.aggregate import stage_means
    from attnprobe.metrics.offline import recorded_padding, store_flow
    from attnprobe.store import open_store

    for store in found.stores:
        try:
            tree = open_store(store, chunks={})  # opened once, as store_flow opens a path
            frame = stage_means(store_flow(tree))
        except (AttnprobeError, OSError, ValueError, KeyError) as exc:
            w.skipped.append((f"store {store.name}", str(exc)))
            continue
        padding = float(frame["padding"].max())
        name = store.name.removesuffix(".zarr")
        frame = frame.assign(model=name)
        n = count(_n_cases(frame), "case")
        if recorded_padding(tree.attrs) is not None:
            where = f"at {padding:g} voxels of input padding (the amount recorded in the store)"
            title = f"{name}: attention flow at {padding:g} voxels of padding (offline, mean of {n})"
        else:
            # No amount recorded: the padding is whatever the cases' real-voxel masks left.
            where = "with the padding of the cases as captured (their real-voxel masks)"
            title = f"{name}: attention flow, padding as captured (offline, mean of {n})"
        w.draw(f"store_flow_{name}", "store_flow", lambda frame=frame, padding=padding, name=name, title=title:
               flow_matrices(frame, padding=padding, model=name, title=title),
               f"Attention flow [[A_rr, A_rp], [A_pr, A_pp]] per captured stage computed offline from the "
               f"capture store {name}, {where}, mean over {n}.", [_rel(store, found.root)])


def _draw_training(found: RunContents, w: _Writer) -> None:
    from attnprobe.figures import training_curves
    from attnprobe.models import ARCH_LABELS

    runs, sources = [], []
    for folder in found.training:
        try:
            run = TrainRun.load_any(folder)
        except (AttnprobeError, OSError, ValueError) as exc:
            w.skipped.append((f"training {folder.name}", str(exc)))
            continue
        frame = run.metrics
        if frame is None or frame.empty:
            continue  # a run killed before its first step
        preset = str(run.preset or folder.name)
        arch = run.arch
        backbone = ARCH_LABELS.get(str(arch), str(arch)) if arch else "model"
        runs.append(frame.assign(preset=preset, backbone=backbone))
        sources.append(_rel(folder / "metrics.csv", found.root))
    if not runs:
        return
    frame = pd.concat(runs, ignore_index=True)
    n_val = int(frame["val_dice"].notna().sum()) if "val_dice" in frame.columns else 0
    steps = int(frame.loc[frame["val_dice"].isna(), "step"].max()) if "val_dice" in frame.columns else 0
    validation = f"; markers: validation Dice ({count(n_val, 'validation')})" if n_val else "; no validation ran"
    w.draw("training_curves", "training", lambda: training_curves(frame),
           f"Training loss (Dice + cross-entropy) per optimiser step of {count(len(runs), 'run')} (up to "
           f"{steps} steps), thin: per step, bold: 5-step trailing mean, one colour per preset{validation}.",
           sources)


def draw_figures(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                 fmt: FigureFormat = "png", stores: bool = True,
                 on_figure: Callable[[FigureRecord], None] | None = None,
                 on_group: Callable[[int, int], None] | None = None) -> FigureSet:
    """Draw every figure the files of ``run_dir`` allow into ``out_dir``.

    Parameters
    ----------
    run_dir
        Folder searched recursively (module docstring lists what is recognised).
    out_dir
        Output folder (created); never searched itself.
    fmt
        ``"png"``, ``"pdf"`` or ``"svg"``.
    stores
        Also reduce capture stores (offline attention flow; reads every map of the store).
    on_figure
        Called with each :class:`FigureRecord` as it is written (progress).
    on_group
        Called with ``(groups done, groups)`` after each group of figures (ADI, CKA, ...).

    Returns
    -------
    FigureSet
        Figures written (with captions) and figures skipped (with reasons).

    Raises
    ------
    ConfigError
        Unknown ``fmt``.
    DataError
        ``run_dir`` is not a folder, or holds nothing to draw.
    """
    if fmt not in FIGURE_FORMATS:
        raise ConfigError("unknown figure format", expected=" | ".join(FIGURE_FORMATS), got=repr(fmt),
                          fix="pass --format png, pdf or svg")
    out = Path(out_dir)
    found = find_sources(run_dir, skip=out)
    if (found if stores else replace(found, stores=[])).empty():
        raise DataError(f"nothing to draw in {run_dir}",
                        expected="outputs of attnprobe adi (adi.csv), cka (cka.nc/cka.csv), evaluate (cases.csv + "
                                 "summary.json), train (metrics.csv), data extent (efficiency.csv), tumors.csv, "
                                 "attention .npz or capture stores (*.zarr)",
                        got="none of those files", fix="pass the folder given as --out to those commands")
    out.mkdir(parents=True, exist_ok=True)
    from attnprobe.figures.paper import draw_paper_figures

    writer = _Writer(out, fmt, on_figure)
    groups: list[Callable[[RunContents, _Writer], None]] = [
        _draw_adi, _draw_attention, _draw_cka, _draw_evaluation, _draw_efficiency, _draw_tumors, _draw_training,
        _draw_ablation, *((_draw_stores,) if stores else ()), draw_paper_figures]
    for done, group in enumerate(groups, start=1):
        group(found, writer)
        if on_group is not None:
            on_group(done, len(groups))
    return FigureSet(figures=tuple(writer.records), skipped=tuple(writer.skipped))
