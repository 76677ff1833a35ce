"""Evaluation: predict and score cases, score existing segmentations, compare two evaluation runs.

The definitions (detection, Dice, HD95, surface Dice, bootstrap intervals) are those of
:mod:`attnprobe.train.evaluate` (docs/conventions.md, "Evaluation"); the run folders are
:class:`~attnprobe.results.EvaluationRun` and :class:`~attnprobe.results.ComparisonRun`
(docs/results.md). Callers (the ``evaluate`` command, the demo, ``analyses/``) resolve their
options, data and model first and call these functions with plain values; progress comes back
through ``on_case``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from attnprobe.data.arrays import affine_spacing
from attnprobe.data.io import CaseRef
from attnprobe.data.preprocess import PreprocessConfig
from attnprobe.errors import ConfigError, DataError
from attnprobe.results import ComparisonRun, EvaluationRun, Manifest
from attnprobe.train.evaluate import CaseResult
from attnprobe.train.inference import InferenceConfig

__all__ = [
    "CASE_COLUMNS",
    "FolderPairs",
    "Scores",
    "nifti_ids",
    "pair_folders",
    "score_pairs",
    "labelled_cases",
    "predict_and_score",
    "evaluation_run",
    "read_evaluation",
    "compare_runs",
]

CASE_COLUMNS = ("case", "detected", "iou", "dice", "hd95", "surface_dice")
"""Columns of ``cases.csv``."""

#: definitions that must agree for two runs to be compared case by case
SAME_DEFINITIONS = ("scope", "detection", "surface", "min_component_voxels", "iou_threshold", "tolerance_mm")
#: what attnprobe computed before these were options (summaries written then lack the keys)
PRE_OPTION_DEFINITIONS = {"scope": "volume", "detection": "pairwise", "surface": "voxel"}

OnCase = Callable[[str], None]


# --------------------------------------------------------------------------- segmentation folders


def nifti_ids(folder: Path, *, strip_label_suffix: bool) -> dict[str, Path]:
    """Case id -> NIfTI file of a folder (id = name without ``.nii``/``.nii.gz``).

    With ``strip_label_suffix`` a name ending in ``_label``/``_seg`` gives the id without it.
    """
    from attnprobe.data.io import LABEL_SUFFIXES, case_id_from_path, is_nifti

    if not folder.is_dir():
        raise DataError("not a folder", expected="a folder of NIfTI files", got=str(folder))
    ids: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p)):
        case = case_id_from_path(path)
        if strip_label_suffix:
            for suffix in LABEL_SUFFIXES:
                if case.endswith(suffix) and len(case) > len(suffix):
                    case = case[: -len(suffix)]
        if case in ids:
            raise DataError(f"two files for case {case!r} in {folder}", expected="one file per case",
                            got=f"{ids[case].name} and {path.name}")
        ids[case] = path
    if not ids:
        raise DataError(f"no NIfTI files in {folder}", expected="*.nii or *.nii.gz files", got="none")
    return ids


@dataclass(frozen=True)
class FolderPairs:
    """Predictions matched to labels by case id.

    Attributes
    ----------
    pairs
        Case id -> ``(prediction, label)`` file, in label order.
    unlabelled
        Case ids of predictions without a label (skipped).
    """

    pairs: dict[str, tuple[Path, Path]]
    unlabelled: list[str] = field(default_factory=list)


def pair_folders(pred_dir: Path, label_dir: Path) -> FolderPairs:
    """Match a folder of predictions to a folder of labels; every label needs a prediction."""
    preds = nifti_ids(pred_dir, strip_label_suffix=False)
    labels = nifti_ids(label_dir, strip_label_suffix=True)
    missing = sorted(set(labels) - set(preds))
    if missing:
        raise DataError(f"{len(missing)} label(s) have no prediction in {pred_dir}",
                        expected="a prediction file named like each label (same case id)",
                        got=", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
                        fix="predict those cases, or remove their labels from the folder")
    return FolderPairs(pairs={case: (preds[case], label) for case, label in labels.items()},
                       unlabelled=sorted(set(preds) - set(labels)))


def score_pairs(pairs: FolderPairs, metric_options: Mapping[str, Any], *,
                on_case: OnCase | None = None) -> list[CaseResult]:
    """Score every prediction against its label on the label's grid (same shape and affine)."""
    from attnprobe.data.io import load_volume
    from attnprobe.train.evaluate import check_label_map, evaluate_case

    results = []
    for case, (pred_path, label_path) in pairs.pairs.items():
        ref = load_volume(label_path, role="label")
        pred = load_volume(pred_path, role="label")
        if tuple(pred.shape) != tuple(ref.shape) or not np.allclose(
                np.asarray(pred.affine), np.asarray(ref.affine), atol=1e-3, rtol=1e-4):
            raise DataError(f"prediction of case {case!r} is not on its label's grid",
                            expected=f"shape {tuple(ref.shape)} and the label's affine",
                            got=f"shape {tuple(pred.shape)}", fix="resample the prediction to the label grid")
        check_label_map(pred.numpy(), ref.numpy(), case=case)
        results.append(evaluate_case(pred.numpy(), ref.numpy(), spacing=affine_spacing(ref.affine),
                                     case=case, **metric_options))
        if on_case is not None:
            on_case(case)
    return results


# --------------------------------------------------------------------------- model predictions


def labelled_cases(data: str | os.PathLike[str], *, split: str, limit: int | None = None) -> list[CaseRef]:
    """The labelled cases among the first ``limit`` cases of a datalist split."""
    from attnprobe.data.io import list_cases

    refs = list_cases(data, split=split)  # type: ignore[arg-type]
    refs = refs[:limit] if limit is not None else refs
    return [ref for ref in refs if ref.label is not None]


@dataclass
class Scores:
    """What :func:`predict_and_score` produced.

    Attributes
    ----------
    results
        One :class:`~attnprobe.train.evaluate.CaseResult` per labelled case, in input order.
    predicted_only
        Case ids predicted but not scored (no label).
    """

    results: list[CaseResult]
    predicted_only: list[str] = field(default_factory=list)


def _save_overlay(path: Path, ref: CaseRef, label: Any, predicted: Any) -> None:
    """The first scored case on the native grid, for the prediction-vs-reference figure."""
    from attnprobe.data.io import load_volume

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, image=load_volume(ref.image, role="image").numpy().astype(np.float32),
                        label=label.numpy().astype(np.uint8), prediction=np.asarray(predicted, dtype=np.uint8),
                        spacing=np.asarray(affine_spacing(label.affine), dtype=float), case=str(ref.case_id))


def predict_and_score(
    model: nn.Module,
    refs: Sequence[CaseRef],
    *,
    preprocess: PreprocessConfig,
    inference: InferenceConfig,
    device: Any = None,
    metric_options: Mapping[str, Any] | None = None,
    write_to: str | os.PathLike[str] | None = None,
    overlay: str | os.PathLike[str] | None = None,
    on_case: OnCase | None = None,
) -> Scores:
    """Predict every case by sliding-window inference and score it on its label's native grid.

    Parameters
    ----------
    model
        A loaded segmentation model (moved to ``device`` when one is given).
    refs
        Cases to predict; those without a label are predicted but not scored.
    preprocess
        Whole-volume preprocessing (``roi="full"``); the prediction is mapped back to the native grid.
    inference
        Sliding window (ROI, overlap, TTA).
    device
        Device to run on (None: where the model is).
    metric_options
        Keywords of :func:`attnprobe.train.evaluate.evaluate_case` (scope, detection ...).
    write_to
        Folder for ``predictions/`` and ``probabilities/`` NIfTI files (None: not written).
    overlay
        An ``.npz`` file to keep the first scored case in (``image``, ``label``, ``prediction``
        on the native grid, ``spacing``, ``case``).
    on_case
        Called with the case id after each case.
    """
    from attnprobe.data.io import load_volume
    from attnprobe.data.preprocess import prepare_case
    from attnprobe.train.evaluate import check_label_map, evaluate_case
    from attnprobe.train.inference import predict_case, write_prediction

    if device is not None:
        model.to(device)
    options = dict(metric_options or {})
    scores = Scores(results=[])
    for ref in refs:
        prediction = predict_case(model, prepare_case(ref, preprocess), config=inference, device=device)
        if write_to is not None:
            write_prediction(prediction, write_to, probabilities=True)
        if ref.label is None:
            scores.predicted_only.append(ref.case_id)
        else:
            label = load_volume(ref.label, role="label")
            native = prediction.native_label()
            check_label_map(native, label.numpy(), case=ref.case_id)
            scores.results.append(evaluate_case(native, label.numpy(), spacing=affine_spacing(label.affine),
                                                case=ref.case_id, **options))
            if overlay is not None and len(scores.results) == 1:
                _save_overlay(Path(overlay), ref, label, native)
        if on_case is not None:
            on_case(ref.case_id)
    return scores


# --------------------------------------------------------------------------- run records


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (np.integer, np.floating)):
        return _plain(value.item())
    return value


def evaluation_run(results: Sequence[CaseResult], *, info: Mapping[str, Any],
                   metric_options: Mapping[str, Any], n_resamples: int = 2000, seed: int = 0,
                   preset: str | None = None, backbone: str | None = None,
                   manifest: Manifest | None = None) -> EvaluationRun:
    """The evaluation record of scored cases: ``cases.csv`` and the bootstrap summary.

    ``summary.json`` holds the summary, then ``info`` (model, data, roi ...), then the metric
    definitions. ``preset``/``backbone`` default to the checkpoint's training metadata when
    ``info["model"]`` names a checkpoint file.
    """
    from attnprobe.results.runs import model_labels
    from attnprobe.train.evaluate import summarize

    frame = pd.DataFrame([{c: getattr(r, c) for c in CASE_COLUMNS} for r in results], columns=list(CASE_COLUMNS))
    summary = {k: _plain(v) for k, v in summarize(results, n_resamples=n_resamples, seed=seed).items()}
    if preset is None and backbone is None:
        preset, backbone = model_labels(info.get("model"))
    return EvaluationRun(cases=frame, summary={**summary, **info, **metric_options}, preset=preset,
                         backbone=backbone, label=preset, manifest=manifest)


# --------------------------------------------------------------------------- comparison


def read_evaluation(folder: Path) -> EvaluationRun:
    """An evaluation run folder (with or without ``record.json``)."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not an evaluation run", expected="a folder with cases.csv and summary.json",
                        got="no folder", fix="pass two --out folders of attnprobe evaluate")
    return EvaluationRun.load_any(folder)


def _check_definitions(info_a: Mapping[str, Any], info_b: Mapping[str, Any]) -> None:
    # a summary without a definition key was scored before it was an option: its old behaviour
    a, b = ({**PRE_OPTION_DEFINITIONS, **info} for info in (info_a, info_b))
    differ = [f"{k}: {a[k]!r} vs {b[k]!r}" for k in SAME_DEFINITIONS if k in a and k in b and a[k] != b[k]]
    differ += [f"{k}: recorded in one run only" for k in SAME_DEFINITIONS if (k in a) != (k in b)]
    if differ:
        raise ConfigError("the two runs were scored with different definitions", expected="the same options",
                          got="; ".join(differ), fix="re-evaluate one run with the other's options")


def compare_runs(run_a: Path, run_b: Path, out: Path, *, n_resamples: int, seed: int, overwrite: bool = False,
                 manifest: Manifest | None = None) -> ComparisonRun:
    """Pair the cases of two evaluation runs and write ``compare.csv`` into ``out``.

    Exact McNemar on detection, Wilcoxon signed-rank on Dice and HD95, effect sizes with
    bootstrap intervals (:func:`attnprobe.train.stats.compare_cases`). The two runs must have
    been scored with the same definitions.
    """
    from attnprobe.results import check_out
    from attnprobe.train.stats import compare_cases

    first, second = read_evaluation(run_a), read_evaluation(run_b)
    _check_definitions(first.summary, second.summary)
    target = check_out(out, overwrite=overwrite, kinds=("comparison",))
    table = compare_cases(first.cases, second.cases, n_resamples=n_resamples, seed=seed)
    if manifest is not None:
        manifest.add_input(run_a / "cases.csv", "run-a")
        manifest.add_input(run_b / "cases.csv", "run-b")
    record = ComparisonRun(table=table, manifest=manifest)
    record.save(out, replace=target.replace)
    return record
