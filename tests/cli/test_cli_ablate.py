"""``attnprobe ablate`` end to end on labelled phantoms: the run's files, the figure, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from attnprobe.cli import ablate as ablate_cli
from attnprobe.data.phantoms import write_phantom_dataset
from attnprobe.train.ablation import ABLATION_COLUMNS
from tests.helpers import assert_one_line_error, cli_runner, command_app

pytestmark = pytest.mark.usefixtures("one_thread")

APP = command_app(ablate_cli.register)
run = cli_runner(APP)
ROI = "64,64,32"
COMMON = ("--roi", ROI, "--spacing", "3", "--n-resamples", "50", "--padding-sweep", "0,16")


def test_the_app_registers_ablate():
    from attnprobe.cli.app import app

    assert any(c.name == "ablate" and c.callback is ablate_cli.ablate for c in app.registered_commands)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate_phantoms")
    return write_phantom_dataset(root, n=2, seed=3, modalities=("mri",), split=(1.0, 0.0, 0.0))["mri"]


# MONAI's window attention is slow on one thread: Swin UNETR runs a shorter list (suite time)
@pytest.mark.parametrize(("ckpt", "names"), [("swin_ckpt", "none,mask-stage1,mask-all"),
                                             ("smit_ckpt", "none,mask-stage1,mask-all,mean-ablate")])
def test_ablate_writes_a_run(phantoms, tmp_path, ckpt, names, request):
    out = tmp_path / "run"
    result = run("ablate", "--model", request.getfixturevalue(ckpt), "--data", phantoms, "--out", out,
                 "--interventions", names, *COMMON)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "ablation.csv")
    assert tuple(table.columns) == ABLATION_COLUMNS
    assert set(table["intervention"]) == set(names.split(","))
    assert set(table["padding"]) == {0, 16} and table["case"].nunique() == 2
    assert set(table["metric"]) == {"detected", "iou", "dice", "hd95", "surface_dice", "adi", "moved"}
    k = len(names.split(","))
    assert len(table) == 2 * 2 * k * 7
    adi = table[table["metric"] == "adi"].set_index(["case", "padding", "intervention"])["value"]
    assert (adi.xs("mask-all", level="intervention") == 0).all()
    assert (adi.xs("none", level="intervention").xs(16, level="padding") > 0).all()
    moved = table[table["metric"] == "moved"].set_index(["intervention"])["value"]
    assert moved["none"].isna().all() and (moved["mask-all"] > 0).all()
    # the ADI of the same forwards, block by block
    blocks = pd.read_csv(out / "adi.csv")
    sel = blocks[(blocks["metric"] == "adi") & (blocks["kind"] == "all") & (blocks["stage"] == 1)]
    assert (sel.loc[sel["intervention"].isin(["mask-stage1", "mask-all"]), "value"] == 0).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interventions"]["mask-stage1"] == [{"site": "attn", "blocks": "stage1.*", "kind": "all"}]
    rows = pd.DataFrame(summary["summary"])
    assert len(rows) == 2 * k and {"delta_dice", "delta_dice_ci_low", "delta_detection", "dice_ci_low"} <= set(rows)
    none = rows[rows["intervention"] == "none"]
    assert (none["delta_adi"] == 0).all()
    assert (out / "ablation.png").stat().st_size > 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv")[["intervention", "padding"]],
                                  rows[["intervention", "padding"]])
    from attnprobe.results import AblationRun

    record = AblationRun.load(out)
    assert record.display_label() == Path(request.getfixturevalue(ckpt)).stem
    assert "ablation.png" in json.loads((out / "record.json").read_text())["files"]
    assert record.manifest.compat and record.manifest.inputs[0].role == "checkpoint"


def test_labels_follow_the_sweep(phantoms, tmp_path, swin_ckpt):
    """The swept label is cropped like the image: the tumor stays inside the real content."""
    from attnprobe.data.preprocess import PreprocessConfig, prepare_case
    from attnprobe.metrics.sweep import SweepSpec, swept_input
    from attnprobe.workspace import list_data

    ref = list_data(str(phantoms))[0]
    case = prepare_case(ref, PreprocessConfig(roi=(64, 64, 32), spacing=3.0))
    for p in (0, 16):
        item = swept_input(case, p, SweepSpec(paddings=(p,)))
        assert item.label is not None and item.label.shape == item.image.shape
        assert not (item.label.bool() & ~item.mask).any()
        assert int(item.label.sum()) > 0


@pytest.mark.parametrize(("args", "needle"), [
    (("--interventions", "none,mask-stage9"), "unknown intervention 'mask-stage9'"),
    (("--interventions", "none,mask-al"), "did you mean mask-all"),
    (("--interventions", "none,none"), "bad --interventions"),
    (("--padding-sweep", "0,x"), "cannot read --padding-sweep"),
    (("--padding-sweep", "0,32"), "leaves no content"),
    (("--key-kind", "both"), "Invalid value"),
    (("--roi", "64,64,40"), "not a positive multiple of 32"),  # before the model loads
])
def test_bad_options_are_one_line_errors(phantoms, tmp_path, swin_ckpt, args, needle):
    result = run("ablate", "--model", swin_ckpt, "--data", phantoms, "--out", tmp_path / "x", *COMMON, *args)
    if needle == "Invalid value":  # typer's own check of a Literal choice, also exit 2
        assert result.exit_code == 2 and needle in result.output, result.output
    else:
        assert_one_line_error(result, needle, fold_whitespace=True)


def test_unlabelled_data_is_refused(tmp_path, swin_ckpt, datalist):
    data = json.loads(datalist.read_text())
    for entry in data["training"] + data["test"]:
        entry.pop("label")
        entry["image"] = str(datalist.parent / entry["image"])
    path = tmp_path / "nolabel.json"
    path.write_text(json.dumps(data))
    result = run("ablate", "--model", swin_ckpt, "--data", path, "--out", tmp_path / "x", *COMMON)
    assert_one_line_error(result, "have no label", fold_whitespace=True)
