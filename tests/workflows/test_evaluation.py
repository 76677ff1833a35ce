"""Evaluation workflow: folder scoring, predict-and-score, the run record and run comparison."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from attnprobe.data.io import CaseRef, list_cases
from attnprobe.data.preprocess import PreprocessConfig
from attnprobe.errors import ConfigError, DataError
from attnprobe.results import EvaluationRun, Manifest
from attnprobe.train.evaluate import CaseResult
from attnprobe.train.inference import InferenceConfig
from attnprobe.workflows.evaluation import (
    CASE_COLUMNS,
    compare_runs,
    evaluation_run,
    labelled_cases,
    pair_folders,
    predict_and_score,
    score_pairs,
)


def _save(path, array):
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.diag([1.0, 1.0, 2.0, 1.0])), str(path))


@pytest.fixture
def folders(tmp_path):
    pred, labels = tmp_path / "pred", tmp_path / "labels"
    pred.mkdir(), labels.mkdir()
    ref = np.zeros((16, 16, 8), dtype=np.uint8)
    ref[4:10, 4:10, 2:6] = 1
    _save(labels / "a_label.nii.gz", ref)
    _save(pred / "a.nii.gz", ref)  # perfect
    _save(labels / "b_seg.nii.gz", ref)
    _save(pred / "b.nii.gz", np.zeros_like(ref))  # missed
    _save(pred / "c.nii.gz", ref)  # no label: skipped
    return pred, labels


def test_pair_folders_matches_by_case_and_scores(folders):
    pairs = pair_folders(*folders)
    assert list(pairs.pairs) == ["a", "b"] and pairs.unlabelled == ["c"]
    seen: list[str] = []
    results = score_pairs(pairs, {"scope": "volume"}, on_case=seen.append)
    assert seen == ["a", "b"]
    assert results[0].detected and results[0].dice == pytest.approx(1.0)
    assert not results[1].detected and results[1].dice == pytest.approx(0.0)


def test_a_label_without_prediction_is_refused(folders):
    pred, labels = folders
    (pred / "a.nii.gz").unlink()
    with pytest.raises(DataError, match="have no prediction"):
        pair_folders(pred, labels)


class _Threshold(nn.Module):
    """A stand-in segmenter (two logits from one voxel-wise convolution): fast, and the workflow
    only needs logits ``(sample, class, x, y, z)``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)

    def forward(self, x):
        return self.conv(x)


def test_predict_and_score_scores_labelled_cases_and_keeps_an_overlay(datalist, tmp_path):
    torch.manual_seed(0)
    model = _Threshold()
    refs = list_cases(datalist, split="test")
    unlabelled = CaseRef(case_id="nolabel", image=refs[0].image, label=None)
    seen: list[str] = []
    scores = predict_and_score(model, [*refs, unlabelled],
                               preprocess=PreprocessConfig(roi="full", spacing=3.0, pad_mode="end"),
                               inference=InferenceConfig(roi=(64, 64, 32)), overlay=tmp_path / "o" / "overlay.npz",
                               on_case=seen.append)
    assert [r.case for r in scores.results] == [refs[0].case_id] and scores.predicted_only == ["nolabel"]
    assert seen == [refs[0].case_id, "nolabel"]
    with np.load(tmp_path / "o" / "overlay.npz") as kept:
        assert kept["prediction"].shape == kept["label"].shape and str(kept["case"]) == refs[0].case_id
    assert [r.case_id for r in labelled_cases(datalist, split="all", limit=1)] == ["case0"]


def _result(case, dice, detected=True):
    return CaseResult(case=case, detected=detected, iou=dice, dice=dice, hd95=1.0, surface_dice=dice,
                      n_pred_components=1, n_ref_lesions=1, n_detected_lesions=int(detected), hd95_defined=True)


def test_evaluation_run_writes_the_cli_format(tmp_path):
    results = [_result("a", 0.8), _result("b", float("nan"), detected=False)]
    record = evaluation_run(results, info={"model": "m.pt"}, metric_options={"scope": "matched"},
                            n_resamples=50, preset="base", backbone="Swin UNETR", manifest=Manifest.start("t"))
    record.save(tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    keys = list(summary)
    assert keys.index("n_detected") < keys.index("model") < keys.index("scope")
    assert summary["n_detected"] == 1 and summary["model"] == "m.pt"
    back = EvaluationRun.load(tmp_path / "run")
    assert list(back.cases.columns) == list(CASE_COLUMNS) and back.preset == "base"
    assert pd.isna(back.cases.loc[1, "dice"])


def test_compare_runs_refuses_different_definitions_and_writes_compare_csv(tmp_path):
    for name, scope, dice in (("a", "matched", 0.5), ("b", "matched", 0.7), ("c", "volume", 0.7)):
        evaluation_run([_result(f"c{i}", dice + 0.01 * i) for i in range(4)], info={},
                       metric_options={"scope": scope}, n_resamples=20).save(tmp_path / name)
    with pytest.raises(ConfigError, match="different definitions"):
        compare_runs(tmp_path / "a", tmp_path / "c", tmp_path / "cmp", n_resamples=20, seed=0)
    assert not (tmp_path / "cmp").exists()
    record = compare_runs(tmp_path / "a", tmp_path / "b", tmp_path / "cmp", n_resamples=20, seed=0)
    assert (tmp_path / "cmp" / "compare.csv").is_file()
    dice = record.table.set_index("metric").loc["dice"]
    assert dice["n_pairs"] == 4 and dice["difference"] == pytest.approx(0.2)
    with pytest.raises(DataError, match="not an evaluation run"):
        compare_runs(tmp_path / "missing", tmp_path / "b", tmp_path / "cmp2", n_resamples=20, seed=0)
