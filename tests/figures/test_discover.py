"""``draw_figures`` / ``attnprobe figures`` on a run folder holding every kind of output.

The run folder is written from small synthetic tables in the formats the commands write (no
model runs), so the test checks discovery, labelling, captions and the CLI, not the metrics.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from attnprobe.cli import figures as figures_cli
from attnprobe.errors import ConfigError, DataError
from attnprobe.figures.discover import draw_figures, find_sources
from attnprobe.metrics.flow import COUNTS, METRICS
from attnprobe.metrics.reuse import cka_dataarray, write_results
from attnprobe.metrics.sweep import SweepSpec, swept_input
from attnprobe.store import capture_to_store
from tests.helpers import assert_one_line_error, cli_runner, command_app, random_cases

matplotlib.use("Agg")

BLOCKS = [f"stage{s}.block{b}" for s in range(4) for b in range(2)]


def adi_frame(rng: np.random.Generator, *, cases: int = 3, paddings=(0, 16, 32)) -> pd.DataFrame:
    rows = []
    for c in range(cases):
        for p in paddings:
            for stage in range(4):
                for block in range(2):
                    for kind in ("input", "window", "all"):
                        for metric in METRICS:
                            rows.append({"case": f"case{c}", "padding": p, "pad_fraction": p / 64, "stage": stage,
                                         "block": block, "kind": kind, "metric": metric,
                                         "value": float(rng.uniform(0, 1)), COUNTS[0]: 10, COUNTS[1]: 5})
    return pd.DataFrame(rows)


def write_run(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, label in (("swin-base", "Swin UNETR (base)"), ("smit-base", None)):
        folder = root / "adi" / name
        folder.mkdir(parents=True)
        adi_frame(rng).to_csv(folder / "adi.csv", index=False)
        if label:
            (folder / "adi.json").write_text(json.dumps({"label": label}))
    for tgt in ("base", "act"):
        da = cka_dataarray(rng.uniform(0, 1, (8, 8)), BLOCKS, BLOCKS, attrs={"ref": "ct", "tgt": tgt, "n": 8,
                                                                         "estimator": "unbiased"})
        write_results(da, root / "cka" / tgt)
    for backbone in ("Swin UNETR", "SMIT"):
        for preset in ("act", "CT only", "base"):
            folder = root / "eval" / f"{backbone}-{preset}"
            folder.mkdir(parents=True)
            cases = pd.DataFrame({"case": [f"c{i}" for i in range(4)], "detected": [True, False, True, True],
                                  "iou": rng.uniform(0, 1, 4), "dice": rng.uniform(0, 1, 4),
                                  "hd95": [3.0, np.nan, 5.0, 8.0], "surface_dice": rng.uniform(0, 1, 4)})
            cases.to_csv(folder / "cases.csv", index=False)
            intervals = {"detection_rate_ci_low": 0.25, "detection_rate_ci_high": 1.0, "dice_mean": 0.5,
                         "dice_ci_low": 0.3, "dice_ci_high": 0.7, "hd95_mean": None} if backbone == "SMIT" else {}
            (folder / "summary.json").write_text(json.dumps({"n_detected": 3, "n_with_reference": 4,
                                                             "preset": preset, "backbone": backbone, **intervals}))
    folder = root / "extent"
    folder.mkdir()
    pd.DataFrame({"arch": ["swin_unetr"] * 8, "candidate": ["64x64x64"] * 4 + ["64x64x32"] * 4,
                  "stage": [0, 1, 2, 3] * 2, "efficiency_mean": rng.uniform(0, 1, 8), "n_cases": 5}).to_csv(
        folder / "efficiency.csv", index=False)
    (root / "tumors").mkdir()
    pd.DataFrame({"case": [f"c{i}" for i in range(6)], "mean": rng.uniform(0, 1, 6), "cv": rng.uniform(0, 1, 6),
                  "contrast": rng.uniform(0, 1, 6), "boundary_gradient": rng.uniform(0, 1, 6),
                  "cluster": [0, 0, 1, 1, 2, -1]}).to_csv(root / "tumors" / "tumors.csv", index=False)
    (root / "attention").mkdir()
    image = rng.uniform(0, 1, (16, 16, 8)).astype(np.float32)
    mask = np.zeros_like(image, dtype=bool)
    mask[..., 6:] = True
    np.savez_compressed(root / "attention" / "swin.npz", image=image, attention=image * 0.1, padding_mask=mask,
                        spacing=np.array([2.0, 2.0, 2.0]), case="c0", block="stage0.block0", padding=16,
                        label="Swin UNETR (base)")
    np.savez_compressed(root / "attention" / "other.npz", something=np.zeros(3))  # not an attention map
    for arch, preset in (("smit", "base"), ("swin_unetr", "act")):
        folder = root / "train" / f"{arch}-{preset}"
        folder.mkdir(parents=True)
        steps = np.arange(1, 13)
        log = pd.DataFrame({"epoch": (steps - 1) // 4 + 1, "step": steps, "loss": 1 / steps, "val_dice": np.nan,
                            "lr": 1e-3, "time": steps * 0.5})
        val = pd.DataFrame({"epoch": [3], "step": [12], "loss": [0.2], "val_dice": [0.6], "lr": [1e-3], "time": [6]})
        pd.concat([log, val]).to_csv(folder / "metrics.csv", index=False)
        (folder / "config.json").write_text(json.dumps({"arch": arch, "preset": preset}))
    pd.DataFrame({"epoch": [1], "acc": [0.5]}).to_csv(root / "train" / "metrics.csv", index=False)  # not ours
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("run"))


def test_find_sources_lists_every_kind(run_dir):
    found = find_sources(run_dir)
    assert [p.name for p in found.adi] == ["smit-base", "swin-base"]
    assert len(found.cka) == 2 and len(found.evaluations) == 6
    assert [p.name for p in found.attention] == ["swin.npz"]  # the other .npz holds no map
    assert found.efficiency and found.tumors and not found.stores
    assert [p.name for p in found.training] == ["smit-base", "swin_unetr-act"]


def test_draw_figures_writes_each_figure_with_a_one_line_caption(run_dir, tmp_path):
    out = tmp_path / "figs"
    result = draw_figures(run_dir, out)
    names = {f.name for f in result.figures}
    expected = {"adi_vs_padding", "sfr_vs_padding", "flow_Swin_UNETR_base", "flow_smit-base", "attention_swin",
                "cka_base", "cka_act", "feature_reuse_ct", "detection", "dice_hd95", "token_efficiency",
                "tumor_clusters_mean_cv", "tumor_clusters_contrast_boundary_gradient", "training_curves",
                "main_figure", "cka_panels"}  # the paper figures (attnprobe.figures.paper)
    assert names == expected, names
    assert not result.skipped
    for record in result.figures:
        assert record.path.is_file() and record.path.suffix == ".png"
        caption = (out / f"{record.name}.txt").read_text()
        assert caption.count("\n") == 1 and caption.strip() == record.caption and len(record.caption) > 40
        assert record.sources
    adi = next(f for f in result.figures if f.name == "adi_vs_padding")
    assert "3 cases" in adi.caption and "Swin UNETR (base)" in adi.caption and "smit-base" in adi.caption
    detection = next(f for f in result.figures if f.name == "detection")
    assert "Swin UNETR: 4" in detection.caption
    training = next(f for f in result.figures if f.name == "training_curves")
    assert "2 runs (up to 12 steps)" in training.caption and "2 validations" in training.caption


def test_evaluation_frame_carries_the_recorded_intervals(run_dir):
    from attnprobe.figures.discover import _evaluations, find_sources

    summary, _, _ = _evaluations(find_sources(run_dir))
    smit, swin = summary[summary.backbone == "SMIT"], summary[summary.backbone == "Swin UNETR"]
    assert (smit["detection_rate_ci_low"] == 0.25).all() and (smit["dice_ci_high"] == 0.7).all()
    assert swin["detection_rate_ci_low"].isna().all()  # runs without intervals draw bars only
    assert smit["hd95_mean"].isna().all()  # null in summary.json


def test_figures_go_to_another_format_and_the_output_folder_is_not_searched(run_dir, tmp_path):
    small = tmp_path / "run"
    shutil.copytree(run_dir / "tumors", small / "tumors")
    out = small / "figures_svg"  # inside the run folder: must not be picked up on a second run
    first = draw_figures(small, out, fmt="svg")
    second = draw_figures(small, out, fmt="svg")
    assert len(first) == len(second) == 2
    assert all(f.path.suffix == ".svg" for f in second.figures)


def test_a_broken_source_is_skipped_with_its_reason(tmp_path):
    root = tmp_path / "run"
    (root / "adi" / "bad").mkdir(parents=True)
    pd.DataFrame({"case": ["a"], "value": [1.0]}).to_csv(root / "adi" / "bad" / "adi.csv", index=False)
    (root / "tumors").mkdir()
    pd.DataFrame({"case": ["a"], "mean": [1.0], "cv": [0.1]}).to_csv(root / "tumors" / "tumors.csv", index=False)
    result = draw_figures(root, tmp_path / "out")
    assert not result.figures
    reasons = dict(result.skipped)
    assert "needs columns" in reasons["adi bad"]
    assert "cluster" in reasons["tumors tumors"]


def test_errors_for_a_missing_or_empty_folder_and_a_bad_format(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        draw_figures(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="nothing to draw"):
        draw_figures(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ConfigError, match="unknown figure format"):
        draw_figures(tmp_path / "empty", tmp_path / "out", fmt="jpg")  # type: ignore[arg-type]


def test_cli_draws_and_reports_one_line_errors(run_dir, tmp_path):
    run = cli_runner(command_app(figures_cli.register))
    ok = run("figures", run_dir, "--out", tmp_path / "cli", "--format", "pdf")
    assert ok.exit_code == 0, ok.output
    assert "wrote 16 figure(s)" in ok.output
    assert len(list((tmp_path / "cli").glob("*.pdf"))) == 16
    bad = run("figures", tmp_path / "missing", "--out", tmp_path / "x")
    assert_one_line_error(bad, "run folder does not exist")


def test_store_flow_titles_say_which_padding_the_store_holds(smit, tmp_path):
    cases = random_cases(seed=3, roi=(64, 64, 64))[:1]
    run = tmp_path / "run"
    capture_to_store(smit, cases, run / "capture" / "plain.zarr", taps=["stage3.*"])
    padded = [swept_input(cases[0], 32, SweepSpec(paddings=(32,)))]
    capture_to_store(smit, padded, run / "capture" / "swept.zarr", taps=["stage3.*"],
                     attrs={"padding": {"mode": "sweep", "amount": 32}})
    result = draw_figures(run, tmp_path / "figs")
    assert not result.skipped
    by_name = {f.name: f for f in result.figures}
    assert set(by_name) == {"store_flow_plain", "store_flow_swept"}
    assert "as captured" in by_name["store_flow_plain"].caption and "1 case." in by_name["store_flow_plain"].caption
    assert "at 32 voxels of input padding" in by_name["store_flow_swept"].caption


def test_recorded_runs_are_read_through_their_records(tmp_path):
    from attnprobe.results import RECORD_FILE, AdiRun, EvaluationRun

    rng = np.random.default_rng(3)
    AdiRun(frame=adi_frame(rng, cases=2), label="the record's name").save(tmp_path / "run" / "sweep_a")
    EvaluationRun(cases=pd.DataFrame({"case": ["a", "b"], "detected": [True, False], "dice": [0.7, 0.0],
                                      "hd95": [3.0, np.nan]}),
                  summary={"n_detected": 1, "n_with_reference": 2}, preset="act", backbone="SMIT").save(
        tmp_path / "run" / "folder_name_not_used")
    found = find_sources(tmp_path / "run")
    assert [p.name for p in found.adi] == ["sweep_a"] and [p.name for p in found.evaluations] == [
        "folder_name_not_used"]
    from attnprobe.figures.discover import _adi_run, _draw_adi, _evaluations, _Writer

    assert _adi_run(found.adi[0])[1] == "the record's name"
    summary, _cases, _sources = _evaluations(found)
    assert summary[["preset", "backbone"]].values.tolist() == [["act", "SMIT"]]
    # a record of an unknown schema version: the figure is skipped with the reason, never guessed
    meta = json.loads((tmp_path / "run" / "sweep_a" / RECORD_FILE).read_text())
    (tmp_path / "run" / "sweep_a" / RECORD_FILE).write_text(json.dumps({**meta, "schema_version": 7}))
    writer = _Writer(tmp_path, "png", None)
    _draw_adi(found, writer)
    assert not writer.records and "schema version 7" in writer.skipped[0][1]
