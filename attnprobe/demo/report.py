"""The demo's report: a results section written from the files of a run folder.

:func:`write_report` reads what :func:`attnprobe.demo.pipeline.run_demo` wrote (``demo.json``,
``adi/*``, ``cka/*``, ``eval/*``, ``extent/*``, ``tumors/``, ``train/*``, ``figures/``) and
writes

- ``report.md``: Markdown with the figures linked (``figures/<name>.png``), and
- ``report.html``: one self-contained page, the same text with every PNG/SVG figure inline
  (base64 data URIs).

Every number in the text is computed from those files by the functions here, so the report
always describes the run it sits in. The document is built as a list of blocks (headings,
paragraphs, tables, figures) rendered twice; inline markup is limited to ``code`` and
``**bold**``.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnprobe.errors import DataError
from attnprobe.figures.discover import PRESET_ORDER, _json, _rel
from attnprobe.figures.style import count
from attnprobe.models import ARCH_LABELS
from attnprobe.results import RECORD_FILE, AdiRun, CkaRun, EvaluationRun, ExtentRun, RunRecord, TrainRun

__all__ = ["Block", "build_report", "render_markdown", "render_html", "write_report", "adi_table",
           "evaluation_table", "cka_table", "efficiency_table", "fmt_mean_sd"]


@dataclass(frozen=True)
class Block:
    """One element of the report: ``kind`` is ``h1``, ``h2``, ``p``, ``list``, ``table`` or ``figure``.

    ``text`` holds the heading/paragraph text, ``items`` the list items, ``header``/``rows`` the
    table, ``figure`` a :class:`~attnprobe.figures.discover.FigureRecord` (or anything with
    ``name``, ``path`` and ``caption``).
    """

    kind: str
    text: str = ""
    items: tuple[str, ...] = ()
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    figure: Any = None


# --------------------------------------------------------------------------- formatting


def fmt_mean_sd(values: Sequence[float] | np.ndarray, *, digits: int = 3) -> str:
    """``"0.123 ± 0.045"`` (sample sd); the mean alone for a single value; ``"–"`` for none."""
    v = np.asarray([x for x in np.asarray(values, dtype=float) if np.isfinite(x)])
    if v.size == 0:
        return "–"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def _pct(x: float | None, digits: int = 0) -> str:
    return "–" if x is None or not math.isfinite(float(x)) else f"{100 * float(x):.{digits}f}%"


def _num(x: Any, digits: int = 3) -> str:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return "–"
    return f"{value:.{digits}f}" if math.isfinite(value) else "–"


def _setting(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "(" + ", ".join(_setting(v) for v in value) + ")"
    return str(value)


def _trend(a: float, b: float, *, tol: float = 0.005) -> str:
    if not (math.isfinite(a) and math.isfinite(b)):
        return "changes"
    return "rises" if b > a + tol else "falls" if b < a - tol else "stays about the same"


# --------------------------------------------------------------------------- tables from files


def _adi_runs(run_dir: Path) -> list[tuple[str, pd.DataFrame, str]]:
    """(label, stage-level frame, input size) of every ``adi/*`` folder, in name order.

    The input size is the sweep's ROI as ``"x×y×z"`` when ``adi.json`` records it, else ``"model-ROI"``.
    """
    from attnprobe.metrics.aggregate import stage_means

    runs = []
    for folder in _runs_of(run_dir / "adi", AdiRun):
        run = AdiRun.load_any(folder)
        roi = run.attrs.get("roi")
        roi_text = "×".join(str(v) for v in roi) if isinstance(roi, list) else "model-ROI"
        runs.append((run.display_label(), stage_means(run.frame), roi_text))
    return runs


def _runs_of(parent: Path, record: type[RunRecord]) -> list[Path]:
    """Sub-folders of ``parent`` holding a run of ``record``'s kind (with record.json, or the files
    of a folder written before run records), in name order."""
    return [f for f in sorted(parent.glob("*")) if f.is_dir() and ((f / RECORD_FILE).is_file() or all(
        (f / m).is_file() for m in record.legacy_marker[:1]))]


def adi_table(stages: pd.DataFrame, *, metric: str = "adi", kind: str = "all") -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and rows: one row per stage, one column per padding, ``mean ± sd`` over cases.

    The header of each padding column carries the mean padding fraction of the input.
    """
    sel = stages[(stages["metric"] == metric) & (stages["kind"] == kind)]
    paddings = sorted(sel["padding"].astype(float).unique())
    header = ["stage"]
    for p in paddings:
        frac = sel.loc[np.isclose(sel["padding"].astype(float), p), "pad_fraction"].mean()
        header.append(f"p = {p:g} ({_pct(frac)} pad)")
    rows = []
    for stage in sorted(sel["stage"].unique()):
        cells = [str(int(stage))]
        for p in paddings:
            vals = sel.loc[(sel["stage"] == stage) & np.isclose(sel["padding"].astype(float), p), "value"]
            cells.append(fmt_mean_sd(vals.to_numpy(float)))
        rows.append(tuple(cells))
    return tuple(header), rows


def _stage_value(stages: pd.DataFrame, *, stage: int | None, padding: float, metric: str = "adi",
                 kind: str = "all") -> np.ndarray:
    sel = stages[(stages["metric"] == metric) & (stages["kind"] == kind)
                 & np.isclose(stages["padding"].astype(float), padding)]
    if stage is None:  # model value: mean over stages, per case
        return sel.groupby("case")["value"].mean().to_numpy(float)
    return sel.loc[sel["stage"] == stage, "value"].to_numpy(float)


def _evaluations(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for folder in _runs_of(run_dir / "eval", EvaluationRun):
        if not (folder / "summary.json").is_file():
            continue
        run = EvaluationRun.load_any(folder)
        labels = {k: v for k, v in (("preset", run.preset), ("backbone", run.backbone)) if v is not None}
        out.append({"name": folder.name, "summary": {**run.summary, **labels}, "cases": run.cases})
    return out


def evaluation_table(evals: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and rows: detection k/n, Dice mean ± sd, HD95 median [IQR] per backbone and preset."""
    def key(e: Mapping[str, Any]) -> tuple[str, int, str]:
        s = e["summary"]
        preset = str(s.get("preset", e["name"]))
        rank = PRESET_ORDER.index(preset) if preset in PRESET_ORDER else len(PRESET_ORDER)
        return str(s.get("backbone", "")), rank, preset

    header = ("backbone", "preset", "window (voxels)", "detected", "Dice", "HD95 (mm), median [IQR]",
              "surface Dice @2 mm")
    rows: list[tuple[str, ...]] = []
    for e in sorted(evals, key=key):
        s, cases = e["summary"], e["cases"]
        hd = cases["hd95"].to_numpy(float)
        hd = hd[np.isfinite(hd)]
        hd_text = "–" if hd.size == 0 else (
            f"{np.median(hd):.1f} [{np.percentile(hd, 25):.1f}–{np.percentile(hd, 75):.1f}] (n = {hd.size})")
        roi = s.get("roi")
        rows.append((str(s.get("backbone", "")), str(s.get("preset", e["name"])),
                     "×".join(str(v) for v in roi) if isinstance(roi, list) else "–",
                     f"{s.get('n_detected', 0)}/{s.get('n_with_reference', 0)} ({_pct(s.get('detection_rate'))})",
                     fmt_mean_sd(cases["dice"].to_numpy(float)), hd_text,
                     fmt_mean_sd(cases["surface_dice"].to_numpy(float)) if "surface_dice" in cases else "–"))
    return header, rows


def _cka_runs(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for folder in _runs_of(run_dir / "cka", CkaRun):
        run = CkaRun.load_any(folder)
        if run.summary:
            out.append({"name": folder.name, "summary": run.summary})
    return out


def cka_table(runs: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and rows: per comparison, the diagonal mean per stage and the matrix summaries."""
    stages = sorted({int(m.group(1)) for r in runs for b in r["summary"].get("diagonal", {})
                     if (m := re.match(r"stage(\d+)\.", b))})
    header = ("reference", "fine-tuned", *(f"stage {s}" for s in stages), "diagonal mean", "off-diagonal mean",
              "mean best-match shift (blocks)")
    rows = []
    for r in runs:
        s = r["summary"]
        attrs = s.get("attrs", {})
        diag = s.get("diagonal", {})
        per_stage = []
        for st in stages:
            vals = [v for b, v in diag.items() if b.startswith(f"stage{st}.")]
            per_stage.append(_num(np.mean(vals)) if vals else "–")
        rows.append((str(attrs.get("ref", "?")), str(attrs.get("tgt", r["name"])), *per_stage,
                     _num(s.get("diagonal_mean")), _num(s.get("off_diagonal_mean")),
                     _num(s.get("mean_best_match_shift"), 2)))
    return header, rows


def _efficiency(run_dir: Path) -> pd.DataFrame:
    frames = []
    for folder in _runs_of(run_dir / "extent", ExtentRun):
        run = ExtentRun.load_any(folder)
        frame = run.efficiency
        if "arch" not in frame.columns:
            frame = frame.assign(arch=run.arch or folder.name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def efficiency_table(eff: pd.DataFrame) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and rows: token efficiency per stage of every candidate crop, per architecture."""
    stages = sorted(eff["stage"].unique())
    header = ("backbone", "crop (voxels)", *(f"stage {s}" for s in stages), "empty windows, stage 0",
              "cases that fit axially")
    rows = []
    for (arch, crop), grp in eff.groupby(["arch", "candidate"], sort=False):
        by = grp.set_index("stage")
        rows.append((ARCH_LABELS.get(str(arch), str(arch)), str(crop).replace("x", "×"),
                     *(_pct(by.loc[s, "efficiency_mean"], 1) for s in stages),
                     _pct(by.loc[stages[0], "empty_window_fraction_mean"], 1),
                     _pct(by.loc[stages[0], "axial_coverage"])))
    return header, rows


# --------------------------------------------------------------------------- sections


def _figures_of(figures: Iterable[Any], *kinds: str) -> list[Block]:
    return [Block("figure", figure=f) for f in figures if getattr(f, "kind", None) in kinds]


def timing_sentence(demo: Mapping[str, Any]) -> str:
    """The run's measured wall and CPU time and the machine's load, from ``demo.json``."""
    machine = demo.get("machine", {})
    seconds = demo.get("seconds") or demo.get("seconds_before_report")
    cpu = demo.get("cpu_seconds") or demo.get("cpu_seconds_before_report")
    process = demo.get("process_seconds") or demo.get("process_seconds_before_report")
    start, end = machine.get("load_average_start"), machine.get("load_average_end")
    cpus = machine.get("cpus")
    text = f"The run took **{_num(seconds, 0)} s** of wall time"
    if isinstance(process, (int, float)):
        text += f" ({_num(process, 0)} s since the process started, imports included)"
    if isinstance(cpu, (int, float)):
        text += f" and {_num(cpu, 0)} s of CPU time (user + system, all threads)"
    text += f" on {cpus or '?'} CPU(s) with {machine.get('torch_threads', '?')} torch threads"
    if isinstance(start, list) and start:
        text += f"; the 1-minute load average was {start[0]:.2f} at the start"
        text += f" and {end[0]:.2f} at the end" if isinstance(end, list) and end else ""
        busiest = max(start[0], end[0] if isinstance(end, list) and end else 0.0)
        if isinstance(cpus, int) and busiest > cpus:
            text += f" (above {cpus}: other processes shared the CPUs, so the wall time is longer than on an idle machine)"
    return text + "."


def _intro(run_dir: Path, demo: Mapping[str, Any]) -> list[Block]:
    settings = demo.get("settings", {})
    phantoms = _json(run_dir / "data" / "phantoms.json")
    cases = phantoms.get("cases", [])
    splits = {s: sum(c.get("split") == s for c in cases) for s in ("training", "validation", "test")}
    extents = np.asarray([c.get("axial_extent_mm", np.nan) for c in cases], dtype=float)
    tier = settings.get("tier", "?")
    text = (f"This report was written by `attnprobe demo` (tier **{tier}**) from the files of this run folder. "
            + timing_sentence(demo))
    data = (f"**Data.** {len(cases)} synthetic pelvic phantoms (docs/definitions.md; T2-like MRI and HU-like CT renderings of "
            f"one anatomy, tumors from {len(phantoms.get('clusters', []))} appearance clusters), "
            f"{splits['training']} for fine-tuning, {splits['validation']} for validation and {splits['test']} for "
            f"testing, at {_num(settings.get('spacing_mm'), 1)} mm isotropic voxels. Axial extents are "
            f"{fmt_mean_sd(extents, digits=1)} mm (range {np.nanmin(extents):.0f}–{np.nanmax(extents):.0f} mm), "
            "so a cubic input is padded along z, as in pelvic MRI." if cases else "")
    blocks = [Block("h1", "attnprobe demo: results"), Block("p", text)]
    if data:
        blocks.append(Block("p", data))
    steps = (f"{count(settings.get('epochs'), 'epoch')} of" if settings.get("max_steps") is None
             else f"at most {settings.get('max_steps')}")
    blocks.append(Block("p", f"The models are tiny (feature size 12) and fine-tuned for {steps} optimisation steps on "
                             "synthetic data: the numbers show what the toolkit measures and reports, not the "
                             "paper's findings."))
    return blocks


def _models_section(run_dir: Path, demo: Mapping[str, Any], figures: Sequence[Any]) -> list[Block]:
    settings = demo.get("settings", {})
    items = []
    for arch, info in demo.get("pretrained", {}).items():
        meta = info.get("info", {}) or {}
        spec = meta.get("spec", {}) or {}
        items.append(
            f"{ARCH_LABELS.get(arch, arch)}: `{Path(info.get('file', '?')).name}` ({info.get('origin', '?')}, "
            f"{info.get('bytes', 0) / 1e6:.1f} MB), supervised tumor segmentation on {spec.get('n_cases', '?')} CT "
            f"phantoms of other cases (seed {spec.get('data_seed', '?')}) for {meta.get('steps', '?')} steps at "
            f"{'×'.join(str(v) for v in meta.get('roi', [])) or '?'} voxels, final loss {_num(meta.get('final_loss'))}.")
    ssl_items = []
    for arch, check in demo.get("ssl", {}).items():
        ssl_items.append(
            f"{ARCH_LABELS.get(arch, arch)}: the encoder re-exported as `{check.get('file')}` (self-supervised "
            f"layout `{check.get('format')}`) loads {check.get('matched')} of {check.get('encoder_keys')} encoder "
            f"tensors, {check.get('missing_backbone')} missing, "
            f"{'identical to' if check.get('identical') else 'DIFFERENT from'} the source; a naive "
            f"strip-`module.`-and-`strict=False` load would match {check.get('naive_matched')} keys.")
    runs = []
    for folder in _runs_of(run_dir / "train", TrainRun):
        train_run = TrainRun.load_any(folder)
        config, rows = train_run.config, train_run.metrics
        if not config or rows is None:
            continue
        steps = rows[rows["val_dice"].isna()] if "val_dice" in rows else rows
        loss = steps["loss"].to_numpy(float)
        runs.append((folder.name, str(config.get("preset")), "×".join(str(v) for v in config.get("roi", [])),
                     "tumor-aware" if config.get("tumor_aware") else "standard", str(int(steps["step"].max()))
                     if len(steps) else "0", _num(loss[0]) if loss.size else "–", _num(loss[-1]) if loss.size else "–"))
    blocks = [Block("h2", "1. Models"),
              Block("p", "**CT-pretrained checkpoints** (fine-tuned key layout, float16; see `fixtures/README.md`):"),
              Block("list", items=tuple(items))]
    if ssl_items:
        blocks += [Block("p", "**Self-supervised key layouts.** Real CT pretraining ships encoder-only checkpoints; "
                              "the demo re-exports each encoder in that layout and loads it back:"),
                   Block("list", items=tuple(ssl_items))]
    if runs:
        blocks += [Block("p", f"**Fine-tuning on MRI** ({count(settings.get('epochs'), 'epoch')}, "
                              f"{count(settings.get('num_samples'), 'pos/neg-balanced crop')} per volume, AdamW lr "
                              f"{settings.get('lr', '?')}, DiceCE): `base` trains on the pretrained cube, `act` on the "
                              "anisotropic crop with tumor-aware intensity augmentation."),
                   Block("table", header=("run", "preset", "crop", "augmentation", "steps", "first loss",
                                          "last loss"), rows=tuple(runs))]
    return blocks + _figures_of(figures, "training")


def _adi_section(run_dir: Path, demo: Mapping[str, Any], figures: Sequence[Any]) -> list[Block]:
    runs = _adi_runs(run_dir)
    if not runs:
        return []
    blocks = [Block("h2", "2. Attention dilution under padding")]
    for label, stages, roi_text in runs:
        adi = stages[(stages["metric"] == "adi") & (stages["kind"] == "all")]
        paddings = sorted(adi["padding"].astype(float).unique())
        lo, hi = paddings[0], paddings[-1]
        s0_lo, s0_hi = _stage_value(stages, stage=0, padding=lo), _stage_value(stages, stage=0, padding=hi)
        m_lo, m_hi = _stage_value(stages, stage=None, padding=lo), _stage_value(stages, stage=None, padding=hi)
        sfr_lo = _stage_value(stages, stage=0, padding=lo, metric="sfr")
        sfr_hi = _stage_value(stages, stage=0, padding=hi, metric="sfr")
        frac_hi = adi.loc[np.isclose(adi["padding"].astype(float), hi), "pad_fraction"].mean()
        at_hi = adi[np.isclose(adi["padding"].astype(float), hi)].groupby("stage")["value"].mean()
        worst = int(at_hi.idxmax()) if len(at_hi) else 0
        n = adi["case"].nunique()
        text = (f"**{label}** ({n} axially longest test cases, fixed {roi_text} input, content "
                f"shortened along z): "
                f"stage-0 ADI {_trend(np.mean(s0_lo), np.mean(s0_hi))} from {fmt_mean_sd(s0_lo)} at {lo:g} voxels "
                f"of padding to {fmt_mean_sd(s0_hi)} at {hi:g} voxels ({_pct(frac_hi)} of the input is padding); "
                f"the model value (mean over stages) goes from {fmt_mean_sd(m_lo)} to {fmt_mean_sd(m_hi)}, and at "
                f"{hi:g} voxels stage {worst} is the most diluted. The signal fidelity ratio of stage 0 "
                f"(attention of real queries on real keys) goes from {fmt_mean_sd(sfr_lo)} to {fmt_mean_sd(sfr_hi)}.")
        kinds = {k: _stage_value(stages, stage=0, padding=hi, kind=k) for k in ("input", "window")}
        if all(v.size for v in kinds.values()):
            text += (f" Split by padding kind at {hi:g} voxels, stage 0 has ADI {fmt_mean_sd(kinds['input'])} "
                     f"from input padding and {fmt_mean_sd(kinds['window'])} from window padding.")
        header, rows = adi_table(stages)
        blocks += [Block("p", text), Block("p", f"ADI per stage, all padding tokens, {label} (mean ± sd over {n} "
                                                f"cases):"), Block("table", header=header, rows=tuple(rows))]
    checks = [v for k, v in demo.get("checks", {}).items() if k.startswith("offline_vs_online")]
    if checks and not all(int(c.get("rows", 0)) > 0 for c in checks):
        blocks.append(Block("p", "**Online vs offline.** No row of the capture stores matched a row of the online "
                                 "sweep, so the agreement was not checked."))
    elif checks:
        worst_diff = max(float(c.get("max_abs_diff", math.nan)) for c in checks)
        n_rows = sum(int(c.get("rows", 0)) for c in checks)
        blocks.append(Block("p", f"**Online vs offline.** The sweep reduces attention inside the hooks; the same "
                                 f"metrics recomputed from the float32 capture stores (`capture/`, the sweep's own padded "
                                 f"inputs) agree to "
                                 f"{worst_diff:.1e} over {n_rows} rows (docs/definitions.md asks for 1e-5)."))
    return blocks + _figures_of(figures, "adi", "sfr", "flow", "attention", "store_flow")


def _cka_section(run_dir: Path, figures: Sequence[Any]) -> list[Block]:
    runs = _cka_runs(run_dir)
    if not runs:
        return []
    sentences = []
    for r in runs:
        s, attrs = r["summary"], r["summary"].get("attrs", {})
        diag = s.get("diagonal", {})
        first = [v for b, v in diag.items() if b.startswith("stage0.")]
        last_stage = max((int(m.group(1)) for b in diag if (m := re.match(r"stage(\d+)\.", b))), default=0)
        last = [v for b, v in diag.items() if b.startswith(f"stage{last_stage}.")]
        sentences.append(f"{attrs.get('tgt', r['name'])} keeps a mean diagonal CKA of {_num(s.get('diagonal_mean'))} "
                         f"with {attrs.get('ref', 'the pretrained model')} (stage 0 {_num(np.mean(first))}, stage "
                         f"{last_stage} {_num(np.mean(last))}; best-match shift {_num(s.get('mean_best_match_shift'), 2)}"
                         f" blocks)")
    n = runs[0]["summary"].get("attrs", {}).get("n", "?")
    header, rows = cka_table(runs)
    return [Block("h2", "3. Feature reuse after fine-tuning"),
            Block("p", f"Linear CKA (unbiased HSIC, block outputs pooled to 8³ by named axes) between every block of "
                       f"the CT-pretrained model and of each fine-tuned model, on the same n = {n} MRI inputs (test "
                       "cases cropped to the anisotropic crop around their tumor); the diagonal measures how much of "
                       "the pretrained representation survives. "
                       + "; ".join(sentences) + "."),
            Block("table", header=header, rows=tuple(rows))] + _figures_of(figures, "cka_panels", "cka", "reuse")


def _eval_section(run_dir: Path, figures: Sequence[Any]) -> list[Block]:
    evals = _evaluations(run_dir)
    if not evals:
        return []
    sentences = []
    for backbone in dict.fromkeys(str(e["summary"].get("backbone", "")) for e in evals):
        parts = []
        for e in evals:
            s = e["summary"]
            if str(s.get("backbone", "")) != backbone:
                continue
            parts.append(f"{s.get('preset', e['name'])} {s.get('n_detected', 0)}/{s.get('n_with_reference', 0)} "
                         f"(Dice {fmt_mean_sd(e['cases']['dice'].to_numpy(float))})")
        sentences.append(f"{backbone}: " + ", ".join(parts))
    header, rows = evaluation_table(evals)
    return [Block("h2", "4. Interventions: detection and segmentation"),
            Block("p", "Each model predicts the MRI test cases by sliding-window inference (overlap 0.5, Gaussian "
                       "blending) on its training window; predictions are scored on the label grid: 26-connected "
                       "components of 10 voxels or fewer dropped (in prediction and reference), fragments touching "
                       "one lesion merged, a tumor detected when they overlap it with IoU > 0.1 (LiTS-style), Dice "
                       "and HD95 (area-weighted surface elements) on the matched lesion. `CT only` is the pretrained "
                       "CT model without fine-tuning. Detected tumors: " + "; ".join(sentences) + "."),
            Block("table", header=header, rows=tuple(rows))] + _figures_of(figures, "detection", "dice_hd95",
                                                                            "predictions")


def _verdict(delta: Sequence[float | None], what: str) -> str:
    """Plain words for the change of ``what`` with its 95 % interval."""
    mean, low, high = delta
    if mean is None or low is None or high is None:
        return f"leaves the change of {what} without an interval"
    span = f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"
    if low > 0:
        return f"raises {what} by {span}"
    if high < 0:
        return f"lowers {what} by {span}"
    return f"does not change {what} measurably ({span})"


def _ablation_section(demo: Mapping[str, Any], figures: Sequence[Any]) -> list[Block]:
    runs = demo.get("ablation") or {}
    if not runs:
        return []
    sentences = []
    for arch, r in runs.items():
        dice = r.get("dice_none", {})
        pads = sorted(dice, key=int)
        drop = (f"the plain model's Dice goes from {_num(dice[pads[0]])} at padding {pads[0]} to "
                f"{_num(dice[pads[-1]])} at {pads[-1]}") if len(pads) > 1 else ""
        masked, mean = r.get("mask-all", {}), r.get("mean-ablate")
        text = (f"{arch} ({count(int(r.get('n_cases', 0)), 'case')}, padding {r.get('padding')} voxels): {drop}; "
                f"masking attention to padding keys in every block (ADI change "
                f"{_num((masked.get('adi') or [None])[0])}) {_verdict(masked.get('dice', [None] * 3), 'Dice')} and "
                f"{_verdict(masked.get('detection', [None] * 3), 'the detection rate')}")
        if mean:
            text += (f"; replacing padding tokens by the mean real token "
                     f"{_verdict(mean.get('dice', [None] * 3), 'Dice')}")
        sentences.append(text)
    return [Block("h2", "5. Causal test: remove the attention to padding"),
            Block("p", "Does the attention that flows onto padding *cause* the loss of accuracy? Each base "
                       "fine-tuned model predicts the MRI test cases (one forward on its ROI) with no edit, with "
                       "the padding keys masked before the softmax in every block (ADI becomes 0; the softmax "
                       "renormalises each real query over real keys). "
                       "Dice is over the whole volume (a missed tumor scores 0). "
                       "Changes are paired by case against the unedited forward, with bootstrap 95% intervals "
                       "(what each edit can and cannot show: docs/ablation.md of the attnprobe repository). "
                       + "; ".join(sentences) + ".")] + _figures_of(figures, "ablation", "adi_dice")


def _efficiency_section(run_dir: Path, demo: Mapping[str, Any], figures: Sequence[Any]) -> list[Block]:
    eff = _efficiency(run_dir)
    if eff.empty:
        return []
    sentences = []
    for arch, grp in eff.groupby("arch", sort=False):
        s0 = grp[grp["stage"] == grp["stage"].min()].set_index("candidate")["efficiency_mean"]
        if len(s0) >= 2:
            cube, best = s0.index[0], s0.idxmax()
            sentences.append(f"for {ARCH_LABELS.get(str(arch), arch)} the pretrained cube {cube.replace('x', '×')} "
                             f"spends {_pct(s0[cube])} of its stage-0 tokens on real voxels and the "
                             f"{best.replace('x', '×')} crop {_pct(s0[best])}")
    recs = demo.get("recommendations", {})
    rec_text = "; ".join(f"{ARCH_LABELS.get(a, a)}: **{'×'.join(str(v) for v in r['roi'])}**, the {r['reason']}"
                         for a, r in recs.items())
    header, rows = efficiency_table(eff)
    text = ("Token efficiency is the share of real tokens among all tokens a block attends over (window padding "
            "included), from the real-voxel mask pushed through each model's own window geometry, averaged over "
            "all cases: " + "; ".join(sentences) + ".")
    blocks = [Block("h2", "6. Token efficiency of the anisotropic crop"), Block("p", text),
              Block("table", header=header, rows=tuple(rows))]
    if rec_text:
        blocks.append(Block("p", f"Recommended crop from the axial extents: {rec_text}."))
    return blocks + _figures_of(figures, "efficiency")


def _tumor_section(run_dir: Path, demo: Mapping[str, Any], figures: Sequence[Any]) -> list[Block]:
    path = run_dir / "tumors" / "tumors.csv"
    if not path.is_file():
        return []
    wide = pd.read_csv(path)
    info = demo.get("tumors", {})
    k = info.get("k", len({c for c in wide["cluster"] if c != -1}))
    sil = info.get("silhouette", {}).get(str(k))
    text = (f"Per-case tumor statistics (mean, coefficient of variation, tumor-to-background contrast, boundary "
            f"gradient) of {len(wide)} MRI cases, standardised and clustered by k-means: the silhouette picks "
            f"**k = {k}**" + (f" (silhouette {_num(sil, 2)})" if sil is not None else "") + ".")
    if "phantom_cluster" in wide.columns:
        from sklearn.metrics import adjusted_rand_score

        ok = wide["cluster"] != -1
        ari = adjusted_rand_score(wide.loc[ok, "phantom_cluster"], wide.loc[ok, "cluster"]) if ok.sum() > 1 else math.nan
        text += (f" Against the {wide['phantom_cluster'].nunique()} appearance clusters the phantoms were drawn "
                 f"from, the adjusted Rand index is {_num(ari, 2)}. This heterogeneity is what tumor-aware "
                 "intensity augmentation (the `act` preset) targets.")
    return [Block("h2", "7. Tumor appearance clusters"), Block("p", text)] + _figures_of(figures, "tumors")


def _details_section(demo: Mapping[str, Any], figures: Sequence[Any]) -> list[Block]:
    timings = demo.get("timings", {})
    cpu = demo.get("cpu_timings", {})
    rows = tuple((name, f"{seconds:.1f}", f"{cpu[name]:.1f}" if name in cpu else "–")
                 for name, seconds in timings.items())
    versions = demo.get("versions", {})
    blocks = [Block("h2", "8. Run details")]
    if rows:
        blocks += [Block("p", "Wall time and CPU time (user + system, all threads) per step, in seconds:"),
                   Block("table", header=("step", "wall (s)", "CPU (s)"), rows=rows)]
    if versions:
        blocks.append(Block("p", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."))
    settings = demo.get("settings")
    if settings:
        blocks.append(Block("p", "Settings: " + ", ".join(f"`{k}={_setting(v)}`" for k, v in settings.items()) + "."))
    shown = {kind for _, kind in _KIND_PREFIXES}  # the kinds the sections above show
    rest = [f for f in figures if getattr(f, "kind", None) not in shown]
    return blocks + [Block("figure", figure=f) for f in rest]


def build_report(run_dir: str | Path, *, figures: Iterable[Any] | None = None) -> list[Block]:
    """The report's blocks for a demo run folder.

    Parameters
    ----------
    run_dir
        The folder :func:`attnprobe.demo.pipeline.run_demo` wrote.
    figures
        Figure records (``name``, ``path``, ``caption``, ``kind``); default: read back from
        ``run_dir/figures`` (every image with a caption ``.txt``).
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError("run folder does not exist", expected="the --out folder of attnprobe demo", got=str(root))
    demo = _json(root / "demo.json")
    figs = list(figures) if figures is not None else _figures_from_folder(root / "figures")
    main = _figures_of(figs, "main")
    if main:
        main = [Block("p", "**Main figure.** The three results on one page; the sections below give the numbers.")] + main
    return (_intro(root, demo) + main + _models_section(root, demo, figs) + _adi_section(root, demo, figs)
            + _cka_section(root, figs) + _eval_section(root, figs) + _ablation_section(demo, figs)
            + _efficiency_section(root, demo, figs)
            + _tumor_section(root, demo, figs) + _details_section(demo, figs))


@dataclass(frozen=True)
class _Fig:
    name: str
    path: Path
    caption: str
    kind: str


_KIND_PREFIXES = (("main_figure", "main"), ("predictions_", "predictions"), ("adi_vs_dice", "adi_dice"), ("cka_panels", "cka_panels"),
                  ("adi_vs", "adi"), ("sfr_vs", "sfr"), ("flow_", "flow"), ("attention_", "attention"),
                  ("store_flow_", "store_flow"), ("cka_", "cka"), ("feature_reuse", "reuse"),
                  ("detection", "detection"), ("dice_hd95", "dice_hd95"), ("token_efficiency", "efficiency"),
                  ("tumor_clusters", "tumors"), ("training_curves", "training"), ("ablation", "ablation"))


def _figures_from_folder(folder: Path) -> list[_Fig]:
    out = []
    for txt in sorted(folder.glob("*.txt")):
        image = next((txt.with_suffix(f".{e}") for e in ("png", "svg", "pdf") if txt.with_suffix(f".{e}").is_file()),
                     None)
        if image is None:
            continue
        kind = next((k for prefix, k in _KIND_PREFIXES if txt.stem.startswith(prefix)), "other")
        out.append(_Fig(txt.stem, image, txt.read_text().strip(), kind))
    return out


# --------------------------------------------------------------------------- rendering


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(blocks: Sequence[Block], *, base: Path) -> str:
    """Markdown of the blocks; figure paths relative to ``base`` (the report's folder)."""
    lines: list[str] = []
    for b in blocks:
        if b.kind == "h1":
            lines += [f"# {b.text}", ""]
        elif b.kind == "h2":
            lines += [f"## {b.text}", ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "list":
            lines += [f"- {item}" for item in b.items] + [""]
        elif b.kind == "table":
            lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            lines.append("|" + "|".join("---" for _ in b.header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif b.kind == "figure":
            f = b.figure
            rel = _rel(Path(f.path), base)
            lines += [f"![{f.name}]({rel})", "", f"*Figure {f.name}.* {f.caption}", ""]
    return "\n".join(lines).rstrip() + "\n"


def _inline_html(text: str) -> str:
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.5; color: #222; }
h1 { font-size: 1.8rem; } h2 { font-size: 1.35rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f3f3f3; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9rem; color: #444; } code { background: #f5f5f5; padding: 0 0.2rem; }
"""


def _figure_html(f: Any) -> str:
    path = Path(f.path)
    caption = f"<figcaption><em>Figure {html.escape(f.name)}.</em> {_inline_html(f.caption)}</figcaption>"
    mime = {".png": "image/png", ".svg": "image/svg+xml"}.get(path.suffix.lower())
    if mime is None or not path.is_file():
        return f'<figure><a href="{html.escape(path.as_posix())}">{html.escape(path.name)}</a>{caption}</figure>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(f.name)}" src="data:{mime};base64,{data}">{caption}</figure>')


def render_html(blocks: Sequence[Block], *, title: str = "attnprobe demo: results") -> str:
    """A self-contained HTML page of the blocks, figures inline as base64 data URIs."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2"):
            parts.append(f"<{b.kind}>{_inline_html(b.text)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{_inline_html(b.text)}</p>")
        elif b.kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "figure":
            parts.append(_figure_html(b.figure))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(run_dir: str | Path, *, figures: Iterable[Any] | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``run_dir``; return their paths."""
    root = Path(run_dir)
    blocks = build_report(root, figures=figures)
    md, page = root / "report.md", root / "report.html"
    md.write_text(render_markdown(blocks, base=root))
    page.write_text(render_html(blocks))
    return md, page
