"""`attnprobe train` and `attnprobe evaluate` end to end, with hand-checked evaluation answers."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from attnprobe.cli.app import app
from attnprobe.data.phantoms import write_phantom_dataset
from attnprobe.models import build_model
from attnprobe.models.checkpoints import save_checkpoint
from tests.helpers import assert_one_line_error, cli_runner, read_csv_rows

run = cli_runner(app)


# --- train ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("ph"), n=3, seed=2, shape=(48, 48, 24),
                                 modalities=("mri",))["mri"]


def test_help_lists_the_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("train", "evaluate", "data"):
        assert command in result.output
    result = run("train", "--help")
    assert result.exit_code == 0 and "scratch" in result.output and "--model-preset" in result.output


def test_train_one_step_with_overwrite(phantoms, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("stale")
    (out / "notes.txt").write_text("keep me")
    args = ["train", "--preset", "act", "--model-preset", "tiny", "--init", "none", "--data", phantoms, "--out", out,
            "--epochs", 1, "--spacing", 2, "--num-samples", 1, "--max-steps", 1, "--val-split", "none", "--seed", 5]
    assert_one_line_error(run(*args), "already exists")
    result = run(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "crop 64x64x32" in result.output and "stopped after step 1" in result.output
    assert (out / "notes.txt").read_text() == "keep me"
    assert [r["step"] for r in read_csv_rows(out / "metrics.csv")] == ["1"]
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "act" and config["roi"] == [64, 64, 32] and config["tumor_aware"] is True
    from attnprobe.results import TrainRun
    from attnprobe.results.files import sha256_file

    record = TrainRun.load(out)  # the trainer's files stay as they are; the record adds the manifest
    assert record.preset == "act" and record.finished is False and record.metrics is not None
    assert {i.role: i.sha256 for i in record.manifest.inputs}["data"] == sha256_file(phantoms)


def test_train_refusals_are_one_line(phantoms, tmp_path):
    base = ["train", "--data", phantoms, "--out", tmp_path / "r", "--model-preset", "tiny"]
    assert_one_line_error(run(*base, "--preset", "base"), "pretrained weights")
    assert_one_line_error(run(*base, "--preset", "act", "--init", "none", "--roi", "64,64,40"), "divisible by 32")
    assert_one_line_error(run(*base, "--init", "none", "--resume"), "nothing to resume")
    assert_one_line_error(run(*base, "--init", "nowhere.pt"), "Unknown model")


# --- evaluate: existing segmentations ---------------------------------------------------------


def _save(path, array):
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.eye(4)), str(path))


@pytest.fixture
def seg_dirs(tmp_path):
    pred, labels = tmp_path / "pred", tmp_path / "labels"
    pred.mkdir()
    labels.mkdir()
    cube = np.zeros((20, 20, 20), np.uint8)
    cube[5:10, 5:10, 5:10] = 1
    long_ref = np.zeros_like(cube)
    long_ref[5:15, 5:10, 5:10] = 1  # 250 voxels
    long_pred = np.zeros_like(cube)
    long_pred[10:20, 5:10, 5:10] = 1  # 250 voxels, 125 shared
    _save(labels / "a_label.nii.gz", cube)
    _save(pred / "a.nii.gz", cube)  # perfect
    _save(labels / "b.nii.gz", cube)
    _save(pred / "b.nii.gz", np.zeros_like(cube))  # missed
    _save(labels / "c_seg.nii.gz", long_ref)
    _save(pred / "c.nii.gz", long_pred)  # half overlap
    _save(pred / "d.nii.gz", cube)  # no label: skipped
    return pred, labels


def test_evaluate_pred_labels_known_answers(seg_dirs, tmp_path):
    pred, labels = seg_dirs
    out = tmp_path / "eval"
    result = run("evaluate", "--pred", pred, "--labels", labels, "--out", out, "--n-resamples", 500)
    assert result.exit_code == 0, result.output
    assert "skipping 1 prediction" in result.output
    assert "scope matched, detection lits, surface surfel" in result.output
    cases = {r["case"]: r for r in read_csv_rows(out / "cases.csv")}
    assert list(next(iter(cases.values()))) == ["case", "detected", "iou", "dice", "hd95", "surface_dice"]
    a, b, c = cases["a"], cases["b"], cases["c"]
    assert (a["detected"], float(a["iou"]), float(a["dice"]), float(a["hd95"]), float(a["surface_dice"])) == \
        ("True", 1.0, 1.0, 0.0, 1.0)
    # matched scope (the default): a missed case has no Dice/HD95/surface Dice, it counts against detection
    assert (b["detected"], float(b["iou"]), b["dice"], b["hd95"], b["surface_dice"]) == ("False", 0.0, "", "", "")
    # Dice 2*125/(250+250) = 0.5, IoU 125/375 = 1/3 > 0.1 -> detected
    assert c["detected"] == "True" and float(c["dice"]) == 0.5 and float(c["iou"]) == pytest.approx(1 / 3)
    # c: the prediction is the reference moved 5 voxels along x: HD95 = 5 mm
    assert float(c["hd95"]) == pytest.approx(5.0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 3 and summary["n_detected"] == 2
    assert summary["detection_rate"] == pytest.approx(2 / 3) and summary["dice_mean"] == pytest.approx(0.75)
    assert summary["hd95_mean"] == pytest.approx(float(c["hd95"]) / 2)  # b has no HD95
    assert (summary["scope"], summary["detection"], summary["surface"]) == ("matched", "lits", "surfel")
    # bootstrap over the 3 cases: detection resamples of {1, 0, 1}, Dice of {1, 0.5} (b has none)
    assert 0.0 <= summary["detection_rate_ci_low"] <= 2 / 3 <= summary["detection_rate_ci_high"] == 1.0
    assert summary["dice_ci_low"] == 0.5 and summary["dice_ci_high"] == 1.0
    assert summary["n_resamples"] == 500 and summary["ci_level"] == 0.95
    assert "[0.5, 1]" in result.output  # the Dice interval is printed

    volume = run("evaluate", "--pred", pred, "--labels", labels, "--out", tmp_path / "vol", "--scope", "volume",
                 "--surface", "voxel", "--detection", "pairwise")
    assert volume.exit_code == 0, volume.output
    b = {r["case"]: r for r in read_csv_rows(tmp_path / "vol" / "cases.csv")}["b"]
    assert (b["detected"], float(b["iou"]), float(b["dice"]), b["hd95"], float(b["surface_dice"])) == \
        ("False", 0.0, 0.0, "", 0.0)
    summary = json.loads((tmp_path / "vol" / "summary.json").read_text())
    assert summary["dice_mean"] == pytest.approx(0.5)
    assert (summary["scope"], summary["detection"], summary["surface"]) == ("volume", "pairwise", "voxel")


def test_evaluate_pred_labels_errors(seg_dirs, tmp_path):
    pred, labels = seg_dirs
    (pred / "a.nii.gz").unlink()
    assert_one_line_error(run("evaluate", "--pred", pred, "--labels", labels, "--out", tmp_path / "e"),
                          "have no prediction")
    assert_one_line_error(run("evaluate", "--pred", pred, "--out", tmp_path / "e"), "choose one evaluation mode")
    assert_one_line_error(run("evaluate", "--pred", pred, "--labels", labels, "--model", "x", "--data", "y",
                              "--out", tmp_path / "e"), "choose one evaluation mode")


def test_evaluate_compare_two_runs(seg_dirs, tmp_path):
    pred, labels = seg_dirs
    better = tmp_path / "pred_b"
    better.mkdir()
    for path in pred.iterdir():
        (better / path.name).write_bytes(path.read_bytes())
    cube = np.zeros((20, 20, 20), np.uint8)
    cube[5:10, 5:10, 5:10] = 1
    _save(better / "b.nii.gz", cube)  # B finds the tumor A missed
    run_a, run_b, cmp = tmp_path / "run_a", tmp_path / "run_b", tmp_path / "cmp"
    for p_dir, out in ((pred, run_a), (better, run_b)):
        assert run("evaluate", "--pred", p_dir, "--labels", labels, "--out", out, "--n-resamples", 100).exit_code == 0
    result = run("evaluate", "--compare", run_a, run_b, "--out", cmp, "--n-resamples", 200)
    assert result.exit_code == 0, result.output
    rows = {r["metric"]: r for r in read_csv_rows(cmp / "compare.csv")}
    assert list(rows) == ["detection", "dice", "hd95"]
    det, dice = rows["detection"], rows["dice"]
    # one discordant pair (B only): exact McNemar p = 2 * C(1, 0) / 2 = 1
    assert (det["a_only"], det["b_only"], float(det["p_value"]), det["n_pairs"]) == ("0", "1", 1.0, "3")
    assert float(det["difference"]) == pytest.approx(1 / 3)
    # Dice pairs: a (1 vs 1) and c (0.5 vs 0.5); b has no Dice in A -> two zero differences
    assert dice["n_pairs"] == "2" and float(dice["p_value"]) == 1.0 and "are zero" in dice["note"]
    assert "exact McNemar p = 1 (A only 0, B only 1)" in result.output
    assert "Wilcoxon" in result.output and "compare.csv" in result.output

    # refusals, each on one line (into an empty --out: a used one is refused first)
    fresh = tmp_path / "cmp_refused"
    assert_one_line_error(run("evaluate", "--compare", run_a, pred, "--out", fresh), "not an evaluation run")
    (tmp_path / "few").mkdir()
    for name in ("cases.csv", "summary.json"):
        text = (run_a / name).read_text()
        (tmp_path / "few" / name).write_text("\n".join(text.splitlines()[:-1]) if name == "cases.csv" else text)
    assert_one_line_error(run("evaluate", "--compare", run_a, tmp_path / "few", "--out", fresh), "different cases")
    other = tmp_path / "other"
    assert run("evaluate", "--pred", pred, "--labels", labels, "--out", other, "--detection", "pairwise",
               "--n-resamples", 10).exit_code == 0
    assert_one_line_error(run("evaluate", "--compare", run_a, other, "--out", fresh), "different definitions")
    # a summary written before the definitions were options scored the old way (volume, pairwise, voxel)
    old = tmp_path / "old"
    old.mkdir()
    (old / "cases.csv").write_text((run_a / "cases.csv").read_text())
    summary = json.loads((run_a / "summary.json").read_text())
    for key in ("scope", "detection", "surface"):
        summary.pop(key)
    (old / "summary.json").write_text(json.dumps(summary))
    assert_one_line_error(run("evaluate", "--compare", run_a, old, "--out", fresh),
                          "scope: 'matched' vs 'volume'", fold_whitespace=True)
    assert_one_line_error(run("evaluate", "--compare", run_a, run_b, "--pred", pred, "--out", fresh),
                          "takes no model")


# --- evaluate: a model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    """A tiny model saved the way the trainer saves it (train metadata with ROI and preprocessing)."""
    torch.manual_seed(0)
    model = build_model("swin_unetr", preset="tiny")
    train_meta = {"arch": "swin_unetr", "preset": "act", "roi": [64, 64, 32], "intensity": "percentile",
                  "a_min": None, "a_max": None, "spacing": 1.0, "pad_mode": "end", "epoch": 1}
    return save_checkpoint(model, tmp_path_factory.mktemp("ck") / "trained.pt", extra={"train": train_meta})


def test_evaluate_model_writes_native_predictions(trained_ckpt, datalist, tmp_path):
    out = tmp_path / "eval"
    result = run("evaluate", "--model", trained_ckpt, "--data", datalist, "--split", "all", "--out", out,
                 "--write-predictions", "--scope", "volume")  # an untrained model detects nothing to match
    assert result.exit_code == 0, result.output
    cases = read_csv_rows(out / "cases.csv")
    assert [r["case"] for r in cases] == ["case0", "case1", "case2"]
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in cases)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 3 and summary["roi"] == [64, 64, 32] and summary["tta"] is False
    for i in range(3):
        image = nib.load(str(datalist.parent / f"case{i}.nii.gz"))
        pred = nib.load(str(out / "predictions" / f"case{i}.nii.gz"))
        prob = nib.load(str(out / "probabilities" / f"case{i}.nii.gz"))
        assert pred.shape == image.shape == prob.shape
        assert np.allclose(pred.affine, image.affine) and np.allclose(prob.affine, image.affine)
        p = np.asarray(prob.dataobj)
        assert p.min() >= 0.0 and p.max() <= 1.0 + 1e-6
        # a two-class model: the written label holds only background (0) and tumor (1)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
    # written predictions score the same through --pred/--labels (labels sit next to the images)
    labels = tmp_path / "labels"
    labels.mkdir()
    for i in range(3):
        (labels / f"case{i}_label.nii.gz").write_bytes((datalist.parent / f"case{i}_label.nii.gz").read_bytes())
    again = run("evaluate", "--pred", out / "predictions", "--labels", labels, "--out", tmp_path / "again",
                "--scope", "volume")
    assert again.exit_code == 0, again.output
    first, second = read_csv_rows(out / "cases.csv"), read_csv_rows(tmp_path / "again" / "cases.csv")
    assert len(first) == 3
    assert [(r["case"], r["dice"], r["detected"]) for r in second] == \
        [(r["case"], r["dice"], r["detected"]) for r in first]


def test_evaluate_refuses_roi_or_intensity_mismatch(trained_ckpt, datalist, tmp_path):
    base = ["evaluate", "--model", trained_ckpt, "--data", datalist, "--out", tmp_path / "e", "--scope", "volume"]
    assert_one_line_error(run(*base, "--roi", "64,64,64"), "differs from the model's training")
    assert_one_line_error(run(*base, "--intensity", "fixed", "--a-min", "0", "--a-max", "200"), "intensity")
    # allowed on request (with flip TTA: four passes of one small case)
    result = run(*base, "--intensity", "fixed", "--a-min", "0", "--a-max", "200", "--allow-roi-mismatch",
                 "--limit", 1, "--tta")
    assert result.exit_code == 0, result.output
    assert "warning: evaluating with intensity='fixed'" in result.output
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["tta"] is True and summary["split"] == "test"
    assert summary["preprocessing"]["intensity"] == "fixed" and math.isfinite(summary["dice_mean"])


def test_evaluate_refuses_to_replace_a_run_and_records_its_inputs(seg_dirs, tmp_path):
    from attnprobe.results import EvaluationRun
    from attnprobe.results.files import sha256_tree

    pred, labels = seg_dirs
    out = tmp_path / "eval"
    assert run("evaluate", "--pred", pred, "--labels", labels, "--out", out, "--n-resamples", 50).exit_code == 0
    first = (out / "cases.csv").read_bytes()
    assert_one_line_error(run("evaluate", "--pred", pred, "--labels", labels, "--out", out), "not empty")
    assert (out / "cases.csv").read_bytes() == first
    record = EvaluationRun.load(out)
    hashes = {i.role: i.sha256 for i in record.manifest.inputs}
    assert hashes == {"predictions": sha256_tree(pred)[0], "labels": sha256_tree(labels)[0]}
    result = run("evaluate", "--pred", pred, "--labels", labels, "--out", out, "--n-resamples", 50, "--overwrite")
    assert result.exit_code == 0, result.output
