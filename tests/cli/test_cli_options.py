"""The shared preprocessing/device options: checkpoint defaults, one mismatch error, checks before loading.

Each test reproduces a reported failure (issues 13, 14, 18): options read only after the model
loaded, ROI/spacing/intensity ignored from the checkpoint, ``capture --device cuda`` ending in an
AssertionError, absurd sizes accepted, a padding sweep printing identical rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attnprobe.models
from attnprobe.cli.app import app
from attnprobe.cli.options import Preprocessing, checkpoint_facts, forward_bytes
from attnprobe.demo.pipeline import pretrained_dir
from attnprobe.models import build_model
from attnprobe.models.checkpoints import save_checkpoint
from tests.helpers import assert_one_line_error, cli_runner

run = cli_runner(app)
CT_FIXTURE = pretrained_dir() / "swin_unetr_ct_tiny.pt"  # info: roi 64x64x32, 2 mm, CT window
TRAINED = {"roi": [32, 32, 64], "spacing": 1.5, "intensity": "fixed", "a_min": 0.0, "a_max": 200.0,
           "pad_mode": "end"}


@pytest.fixture(scope="module")
def trained_meta_ckpt(tmp_path_factory) -> Path:
    """A tiny Swin UNETR saved with attnprobe's ``train`` metadata (what ``attnprobe train`` writes)."""
    torch.manual_seed(0)
    return save_checkpoint(build_model("swin_unetr", preset="tiny"), tmp_path_factory.mktemp("ck") / "trained.pt",
                           extra={"train": TRAINED})


@pytest.fixture()
def no_model_load(monkeypatch):
    """Loading a model fails the test: every check below must come before it."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(attnprobe.models, "load_checkpoint", forbidden)


# --- defaults from the checkpoint ----------------------------------------------------------------


def test_checkpoint_facts_read_both_metadata_kinds(trained_meta_ckpt, swin_ckpt):
    facts = checkpoint_facts(CT_FIXTURE)
    assert facts.roi == (64, 64, 32) and facts.feature_size == 12
    assert facts.stored == {"roi": (64, 64, 32), "spacing": 2.0, "intensity": "fixed", "a_min": -175.0,
                            "a_max": 250.0}
    assert checkpoint_facts(trained_meta_ckpt).stored["roi"] == (32, 32, 64)
    assert checkpoint_facts(swin_ckpt).stored == {}  # saved without training metadata


def test_unset_options_take_the_checkpoint_values_then_the_defaults(trained_meta_ckpt):
    stored = checkpoint_facts(trained_meta_ckpt).stored
    config = Preprocessing().resolve(stored)
    assert (config.roi, config.spacing, config.intensity, config.a_min, config.a_max) == \
        ((32, 32, 64), (1.5,) * 3, "fixed", 0.0, 200.0)
    plain = Preprocessing().resolve({}, model_roi=(64, 64, 32))
    assert (plain.roi, plain.spacing, plain.intensity, plain.pad_mode) == ((64, 64, 32), (1.0,) * 3, "percentile",
                                                                           "end")


@pytest.mark.parametrize("command", ["capture", "adi", "cka", "evaluate", "ablate"])
def test_a_mismatch_with_the_training_is_the_same_error_everywhere(command, trained_meta_ckpt, datalist, tmp_path,
                                                                    no_model_load):
    model = ("--ref", trained_meta_ckpt, "--tgt-data", datalist) if command == "cka" else ("--model", trained_meta_ckpt)
    out = tmp_path / ("x.zarr" if command == "capture" else "x")
    result = run(command, *model, "--data", datalist, "--out", out, "--spacing", "1")
    assert_one_line_error(result, "preprocessing differs from the model's training")
    assert "spacing=1.0 (trained with 1.5)" in result.output and "--allow-roi-mismatch" in result.output


def test_capture_uses_the_checkpoint_roi_spacing_and_intensity(datalist, tmp_path, monkeypatch):
    import attnprobe.store

    seen = {}

    def record(net, cases, out, **kwargs):  # no forward: only what capture would run with
        seen.update(kwargs["attrs"]["preprocessing"], store_roi=kwargs["roi"])
        return out

    monkeypatch.setattr(attnprobe.store, "capture_to_store", record)
    result = run("capture", "--model", CT_FIXTURE, "--data", datalist, "--out", tmp_path / "ct.zarr")
    assert result.exit_code == 0, result.output
    assert seen["roi"] == [64, 64, 32] == list(seen["store_roi"]) and seen["spacing"] == [2.0] * 3
    assert (seen["intensity"], seen["a_min"], seen["a_max"]) == ("fixed", -175.0, 250.0)


def test_inspect_shows_the_checkpoint_roi_not_the_preset_default():
    result = run("inspect", CT_FIXTURE)
    assert result.exit_code == 0, result.output
    roi_rows = [line for line in result.output.splitlines() if line.strip("│ ").startswith("roi")]
    assert roi_rows and "64x64x32" in roi_rows[0] and "96" not in roi_rows[0], result.output


# --- checks before loading -----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["capture", "adi", "cka", "evaluate", "ablate"])
def test_a_bad_roi_is_refused_before_the_model_loads(command, swin_ckpt, datalist, tmp_path, no_model_load):
    model = ("--ref", swin_ckpt, "--tgt-data", datalist) if command == "cka" else ("--model", swin_ckpt)
    result = run(command, *model, "--data", datalist, "--out", tmp_path / "x.zarr", "--roi", "96,96")
    assert_one_line_error(result, "cannot read --roi")


def test_capture_checks_the_device_like_the_others(swin_ckpt, datalist, tmp_path, monkeypatch, no_model_load):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = run("capture", "--model", swin_ckpt, "--data", datalist, "--out", tmp_path / "x.zarr", "--device", "cuda")
    assert_one_line_error(result, "no CUDA device is available")


@pytest.mark.parametrize("args", [("--roi", "100000,96,96"),
                                  ("--roi", "32,32,64", "--padding-sweep", "0,99968", "--sweep-mode", "grow")])
def test_absurd_sizes_are_refused_from_a_memory_estimate(args, swin_ckpt, datalist, tmp_path, no_model_load):
    command = "adi" if "--padding-sweep" in args else "capture"
    result = run(command, "--model", swin_ckpt, "--data", datalist, "--out", tmp_path / "x.zarr", *args)
    assert_one_line_error(result, "too large for this machine")
    assert "GiB" in result.output


def test_forward_estimate_grows_with_the_input():
    assert forward_bytes((64, 64, 32), feature_size=12) < 2**30 < forward_bytes((512, 512, 512), feature_size=48)


def test_a_sweep_whose_padding_fraction_never_changes_is_an_error(swin_ckpt, datalist, tmp_path):
    # the datalist's cases are 10-16 slices of 2 mm: 20-32 voxels at 1 mm, far below 64 - 16
    result = run("adi", "--model", swin_ckpt, "--data", datalist, "--out", tmp_path / "a", "--roi", "32,32,64",
                 "--padding-sweep", "0,16", "--limit", 1)
    assert_one_line_error(result, "does not change the input of case", fold_whitespace=True)
    assert "sweep-mode grow" in result.output
