"""``attnprobe demo`` end to end at its smallest tier, then ``attnprobe figures`` on its output.

The smoke tier runs every step (phantoms, CT checkpoints and their self-supervised layouts,
fine-tuning with base and act, capture, ADI sweep, attention map, CKA, evaluation, token
efficiency, tumor clusters, figures, report) on 6 small cases with one optimisation step per
run. The checks read numbers back from the step outputs and find them in the report.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from attnprobe.cli import demo as demo_cli
from attnprobe.cli import figures as figures_cli
from attnprobe.demo import DemoSettings, demo_plan, run_demo, settings_for
from attnprobe.demo.report import adi_table, fmt_mean_sd
from attnprobe.errors import ConfigError
from attnprobe.metrics.aggregate import stage_means
from attnprobe.workspace import load_workspace, resolve_model
from tests.helpers import assert_one_line_error, cli_runner, command_app

matplotlib.use("Agg")

KINDS = {"adi", "sfr", "flow", "attention", "cka", "reuse", "detection", "dice_hd95", "efficiency", "tumors",
         "store_flow", "training", "ablation"}


@pytest.fixture(scope="module")
def progress_events():
    return []


@pytest.fixture(scope="module")
def demo(tmp_path_factory, progress_events):
    out = tmp_path_factory.mktemp("demo") / "run"
    return run_demo(out, settings=settings_for("smoke"), on_progress=progress_events.append)


def test_progress_walks_the_plan_and_every_step_ends_complete(demo, progress_events):
    plan = demo_plan(settings_for("smoke"))
    assert [e.step for e in progress_events if e.completed == 0 and e.step not in
            [f.step for f in progress_events[:progress_events.index(e)]]] == plan
    for name in plan:
        mine = [e for e in progress_events if e.step == name]
        assert mine[0].completed == 0 and mine[-1].completed == mine[-1].total >= 1, name
        assert all(e.index == plan.index(name) + 1 and e.steps == len(plan) for e in mine), name
        done = [e.completed for e in mine]
        assert done == sorted(done) and all(e.completed <= e.total for e in mine), name
    # the units advance inside long steps: every sweep forward, every CKA crop, every evaluated case
    sweep = [e for e in progress_events if e.step == "ADI padding sweep smit-base"]
    assert [e.completed for e in sweep] == list(range(len(sweep))) and sweep[0].unit == "forwards"
    cka = [e for e in progress_events if e.step == "CKA smit"]
    assert [e.completed for e in cka] == list(range(cka[0].total + 1)) and cka[0].unit == "crops"
    figures = [e for e in progress_events if e.step == "figures"]
    assert figures[-1].total > 1


def test_every_step_leaves_its_files(demo):
    out = demo.out_dir
    for pattern in ("data/datalist_mri.json", "pretrained/swin_unetr_ct_tiny.pt", "pretrained/smit_ct_tiny.pt",
                    "ssl/model_swinvit.pt", "ssl/smit_ssl_student.pt", "train/swin_unetr-base/last.pt",
                    "train/smit-act/last.pt", "capture/swin_unetr-base.zarr/zarr.json", "adi/smit-base/adi.csv",
                    "adi/smit-act/adi.csv", "capture/smit-base-attention-p0.zarr/input/zarr.json", "cka/smit-act/cka.nc", "eval/swin_unetr-ct/cases.csv",
                    "eval/smit-act/summary.json", "extent/smit/efficiency.csv", "tumors/tumors.csv",
                    "ablation/smit-base/ablation.csv", "ablation/swin_unetr-base/summary.json",
                    "attnprobe.toml", "demo.json", "report.md", "report.html"):
        assert list(out.glob(pattern)), pattern
    assert set(demo.timings) >= {"phantoms", "fine-tune swin_unetr-act", "figures"}


def test_every_figure_kind_is_drawn_with_a_caption(demo):
    figures = demo.out_dir / "figures"
    drawn = {p.stem for p in figures.glob("*.png")}
    assert drawn == {p.stem for p in figures.glob("*.txt")}
    prefixes = ("adi_vs_padding", "sfr_vs_padding", "flow_", "attention_store_", "cka_", "feature_reuse_",
                "detection", "dice_hd95", "token_efficiency", "tumor_clusters_", "store_flow_", "training_curves",
                "ablation_", "main_figure", "cka_panels", "adi_vs_dice", "predictions_")
    for prefix in prefixes:
        assert any(name.startswith(prefix) for name in drawn), prefix
    assert len(demo.figures) == len(drawn)


def test_report_quotes_the_numbers_of_this_run(demo):
    out = demo.out_dir
    md = (out / "report.md").read_text()
    # ADI of stage 0 at padding 0, mean ± sd over cases, recomputed from adi.csv
    stages = stage_means(pd.read_csv(out / "adi" / "swin_unetr-base" / "adi.csv"))
    sel = stages[(stages.metric == "adi") & (stages.kind == "all") & (stages.stage == 0) & (stages.padding == 0)]
    assert len(sel) == 2
    assert fmt_mean_sd(sel["value"].to_numpy(float)) in md
    header, rows = adi_table(stages)
    assert " | ".join(rows[-1]) in md  # the whole stage-3 row of the table
    # detection k/n of every evaluation
    for summary_path in (out / "eval").glob("*/summary.json"):
        s = json.loads(summary_path.read_text())
        assert f"{s['n_detected']}/{s['n_with_reference']}" in md
    # CKA diagonal mean of every comparison
    for summary_path in (out / "cka").glob("*/summary.json"):
        assert f"{json.loads(summary_path.read_text())['diagonal_mean']:.3f}" in md
    # token efficiency of the anisotropic crop
    eff = pd.read_csv(out / "extent" / "swin_unetr" / "efficiency.csv")
    s0 = eff[(eff.stage == 0) & (eff.candidate == "64x64x32")]["efficiency_mean"].iloc[0]
    assert f"{100 * s0:.1f}%" in md
    assert re.search(r"took \*\*\d+ s\*\*", md)


def test_html_report_inlines_every_figure(demo):
    page = (demo.out_dir / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(demo.figures)
    assert "<table>" in page and "<code>" in page


def test_checkpoint_layouts_and_the_online_offline_check(demo):
    record = json.loads((demo.out_dir / "demo.json").read_text())
    for arch in ("swin_unetr", "smit"):
        ssl = record["ssl"][arch]
        assert ssl["identical"] and ssl["missing_backbone"] == 0 and ssl["matched"] == ssl["encoder_keys"] > 0
        assert ssl["format"] == ("monai_ssl" if arch == "swin_unetr" else "smit_ssl")
        check = record["checks"][f"offline_vs_online_{arch}"]
        assert check["rows"] > 0 and check["max_abs_diff"] < 1e-5
        # The store holds the sweep's padded inputs: its rows carry that amount, not 0.
        paddings = sorted(settings_for("smoke").paddings)
        assert check["paddings"] == [paddings[len(paddings) // 2]] != [0]
    assert record["ssl"]["swin_unetr"]["naive_matched"] == 0  # the strip-and-strict=False trap loads nothing
    for arch, info in record["pretrained"].items():
        assert info["bytes"] < 10e6, arch


def test_workspace_names_every_model_for_the_analyses(demo):
    ws = load_workspace(demo.out_dir / "attnprobe.toml")
    assert set(ws.models) == {"ct-swin_unetr", "swin_unetr-base", "swin_unetr-act", "ct-smit", "smit-base",
                              "smit-act"}
    assert ws.models["smit-act"].roi == (64, 64, 32) and ws.models["ct-smit"].roi == (64, 64, 64)
    assert resolve_model("swin_unetr-act", workspace=ws).checkpoint.is_file()
    assert {"mri", "ct"} <= set(ws.datasets)


def test_figures_command_on_the_demo_folder(demo, tmp_path):
    result = cli_runner(command_app(figures_cli.register))("figures", demo.out_dir, "--out", tmp_path / "f")
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "f").glob("*.png")} == {p.name for p in (demo.out_dir / "figures").glob("*.png")}


def test_attention_stores_keep_the_input_of_the_same_case(demo):
    from attnprobe.figures.paper import store_attention

    low, high = (store_attention(demo.out_dir / "capture" / f"smit-base-attention-p{p}.zarr")
                 for p in sorted({0, max(settings_for("smoke").paddings)}))
    assert low.case == high.case and low.padding == 0 and high.padding == max(settings_for("smoke").paddings)
    assert high.attention.shape == high.image.shape == high.mask.shape and (~high.mask).any()
    assert math.isclose(high.pad_fraction, float(1 - high.mask.mean()), rel_tol=1e-6) and low.pad_fraction < 1
    assert (high.attention >= 0).all() and high.label.any()


def test_demo_command_rejects_bad_options(tmp_path):
    run = cli_runner(command_app(demo_cli.register))
    assert_one_line_error(run("demo", "--quick", "--smoke", "--out", tmp_path), "--quick and --smoke exclude each other")
    help_text = run("demo", "--help").output
    assert "--quick" in help_text and "--smoke" not in help_text  # the test tier is hidden


def test_settings_are_checked():
    assert settings_for("quick").tier == "quick"
    with pytest.raises(ConfigError, match="unknown demo tier"):
        settings_for("huge")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown demo backbone"):
        DemoSettings(tier="smoke", n_cases=4, split=(0.5, 0, 0.5), backbones=("vit",))
    with pytest.raises(ConfigError, match="too few CKA examples"):
        settings_for("smoke", cka_cases=1, cka_crops=2)
    with pytest.raises(ConfigError, match="trainer preset"):
        settings_for("smoke", presets=("fancy",))


def test_report_builds_from_the_folder_alone(demo, tmp_path):
    from attnprobe.demo.report import build_report, render_markdown

    blocks = build_report(demo.out_dir)  # figures read back from figures/*.txt
    text = render_markdown(blocks, base=Path(demo.out_dir))
    assert text.count("![") == len(demo.figures)


def test_allocator_setting_is_harmless():
    import platform

    result = demo_cli.keep_freed_memory()
    assert isinstance(result, bool)
    if platform.libc_ver()[0] == "glibc":
        assert result  # glibc accepted both thresholds


def test_the_causal_test_is_run_and_stated_with_intervals(demo):
    import json

    out = demo.out_dir
    record = json.loads((out / "demo.json").read_text())["ablation"]
    assert set(record) == {"swin_unetr", "smit"}
    summary = pd.read_csv(out / "ablation" / "smit-base" / "summary.csv")
    top = summary[(summary.intervention == "mask-all") & (summary.padding == summary.padding.max())].iloc[0]
    assert top["adi_mean"] == 0.0  # nothing flows onto padding keys once they are masked
    smit = record["smit"]["mask-all"]["dice"]
    assert smit[0] == pytest.approx(top["delta_dice"]) and smit[1] <= smit[0] <= smit[2]
    md = (out / "report.md").read_text()
    assert "5. Causal test" in md and f"{smit[0]:+.3f} [{smit[1]:+.3f}, {smit[2]:+.3f}]" in md
