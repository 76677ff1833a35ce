"""The sweep workflow: its frame is what ``attnprobe adi`` writes; its checks refuse bad sweeps."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from attnprobe.cli import adi as adi_cli
from attnprobe.data.preprocess import PreprocessConfig
from attnprobe.errors import ConfigError
from attnprobe.metrics.sweep import SweepSpec
from attnprobe.models import load_checkpoint
from attnprobe.results import AdiRun
from attnprobe.workflows.cases import content_length, longest_cases, prepared
from attnprobe.workflows.sweep import (
    MAX_SWEEP_LEVELS,
    StoreSweep,
    check_fraction_changes,
    offline_agreement,
    online_sweep,
    save_adi,
    sweep_spec,
)
from attnprobe.workspace import list_data
from tests.helpers import cli_runner, command_app

pytestmark = pytest.mark.usefixtures("one_thread")
run = cli_runner(command_app(adi_cli.register))
# what the CLI resolves for the conftest checkpoints (they record no training preprocessing)
CONFIG = PreprocessConfig(roi=(64, 64, 32), spacing=1.0, intensity="percentile", pad_mode="end")


@pytest.fixture(scope="module")
def swin(swin_ckpt):
    return load_checkpoint(swin_ckpt)[0].eval()


def test_online_sweep_equals_what_the_cli_writes(swin, swin_ckpt, datalist, tmp_path):
    out = tmp_path / "cli"
    result = run("adi", "--model", swin_ckpt, "--data", datalist, "--padding-sweep", "0,16", "--limit", 1,
                 "--out", out)
    assert result.exit_code == 0, result.output
    refs = list_data(datalist, limit=1)
    steps = []
    frame = online_sweep(swin, prepared(refs, CONFIG), sweep_spec([0, 16]),
                         on_step=lambda case, p: steps.append((case, p)), case_order=[r.case_id for r in refs])
    assert steps == [("case0", 0), ("case0", 16)]
    written = AdiRun.load(out)
    pd.testing.assert_frame_equal(frame, written.frame, check_exact=True)
    # the record the workflow saves reads back as the CLI's, label and attributes included
    run_ = save_adi(frame, tmp_path / "wf", written.attrs, label=written.label)
    again = AdiRun.load(tmp_path / "wf")
    pd.testing.assert_frame_equal(again.frame, written.frame, check_exact=True)
    assert again.label == written.label and again.attrs == written.attrs and run_.folder == tmp_path / "wf"


def test_a_sweep_that_does_not_change_a_case_is_refused():
    mask = torch.zeros(1, 8, 8, 32)
    mask[..., :8] = 1  # 8 voxels of content on z: padding 0 and 16 leave 24 voxels of padding either way
    case = type("Case", (), {"case_id": "short", "image": mask.clone(), "mask": mask})()
    assert content_length(case) == 8 and content_length(case, axis=0) == 8
    with pytest.raises(ConfigError, match="does not change the input of case short"):
        check_fraction_changes(case, SweepSpec(paddings=(0, 16)))
    check_fraction_changes(case, SweepSpec(paddings=(0, 28)))  # 28 > 24: the fraction changes
    with pytest.raises(ConfigError, match="padding sweep too long"):
        sweep_spec(range(MAX_SWEEP_LEVELS + 1))


def test_longest_cases_rank_by_real_extent_on_z():
    cases = []
    for name, length in (("a", 4), ("b", 9), ("c", 9), ("d", 1)):
        mask = torch.zeros(1, 4, 4, 16)
        mask[..., :length] = 1
        cases.append(type("Case", (), {"case_id": name, "mask": mask})())
    assert [c.case_id for c in longest_cases(cases, 3)] == ["b", "c", "a"]  # stable among equals


def test_store_sweep_counts_and_reads_the_finished_cases(swin, datalist, tmp_path):
    from attnprobe.workflows.capture import capture_cases
    from attnprobe.workflows.cases import lazy_cases

    store = capture_cases(swin, lazy_cases(datalist, CONFIG, limit=2), tmp_path / "s.zarr", config=CONFIG,
                          data=datalist, taps=["stage3.*"], dtype="float32")
    sweep = StoreSweep.open(store, limit=1)
    seen = []
    frame = sweep.run(on_case=seen.append)
    assert sweep.total == 1 and seen == ["case0"] and set(frame["case"]) == {"case0"}
    assert set(frame["stage"]) == {3} and sweep.stats.attn_bytes > 0
    assert sweep.attrs(heads="mean", pad_queries="all-windows")["source"] == "store"
    # the stored maps give the online values (docs/definitions.md: to 1e-5)
    agreement = offline_agreement(store, online_sweep(swin, lazy_cases(datalist, CONFIG, limit=2), None))
    assert agreement["rows"] > 0 and agreement["blocks"] == ["stage3.block0", "stage3.block1"]
    assert agreement["max_abs_diff"] < 1e-5
