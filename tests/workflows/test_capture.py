"""The capture workflow writes the store ``attnprobe capture`` writes (same data, same fingerprint)."""

from __future__ import annotations

import numpy as np
import pytest

from attnprobe import open_store
from attnprobe.cli import capture as capture_cli
from attnprobe.data.preprocess import PreprocessConfig
from attnprobe.models import load_checkpoint
from attnprobe.workflows.capture import capture_cases, capture_swept
from attnprobe.workflows.cases import lazy_cases, prepare_cases
from tests.helpers import cli_runner, command_app

pytestmark = pytest.mark.usefixtures("one_thread")
run = cli_runner(command_app(lambda app: app.command("capture")(capture_cli.capture)))
CONFIG = PreprocessConfig(roi=(64, 64, 32), spacing=1.0, intensity="percentile", pad_mode="end")
TAPS = ["stage0.block0.*", "stage3.*.out"]


def test_the_workflow_store_equals_the_cli_store(smit_ckpt, datalist, tmp_path):
    model = load_checkpoint(smit_ckpt)[0].eval()
    seen = []
    ours = capture_cases(model, lazy_cases(datalist, CONFIG, limit=2), tmp_path / "wf.zarr", config=CONFIG,
                         data=str(datalist), taps=TAPS, on_case=lambda c, skipped: seen.append((c, skipped)))
    assert seen == [("case0", False), ("case1", False)]
    theirs = tmp_path / "cli.zarr"
    result = run("capture", "--model", smit_ckpt, "--data", datalist, "--limit", 2, "--out", theirs,
                 *[a for t in TAPS for a in ("--taps", t)])
    assert result.exit_code == 0, result.output
    a, b = open_store(ours), open_store(theirs)
    for key in ("preprocessing", "padding", "data", "roi", "taps"):
        assert a.attrs[key] == b.attrs[key], key
    for block in ("stage0.block0", "stage3.block1"):
        for name in a[block].data_vars:
            np.testing.assert_array_equal(a[block][name].values, b[block][name].values)
    # the same capture: the CLI resumes the workflow's store instead of refusing it
    result = run("capture", "--model", smit_ckpt, "--data", datalist, "--limit", 2, "--out", ours,
                 *[a for t in TAPS for a in ("--taps", t)])
    assert result.exit_code == 0 and "(done before)" in result.output, result.output


def test_capture_swept_keeps_the_swept_inputs(smit, datalist, tmp_path):
    cases = prepare_cases(datalist, split="all", roi=(64, 64, 32), spacing_mm=1.0, limit=1)
    store = open_store(capture_swept(smit, cases, tmp_path / "p16.zarr", padding=16, taps=("stage3.*",)))
    assert store.attrs["padding"] == {"mode": "sweep", "amount": 16, "axis": "z", "pad_mode": "end"}
    mask = store["input_mask"].values[0]
    assert not mask[..., 16:].any()  # the last 16 voxels on z are padding
