"""Trainer presets, a real two-step run on phantoms, and bitwise resume after a simulated kill.

Runs use the tiny Swin UNETR (feature 12), 64x64x32 crops, one crop per volume and 2 mm
voxels so that a step takes a few seconds on two CPU cores.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnprobe.data.phantoms import write_phantom_dataset
from attnprobe.errors import ConfigError
from attnprobe.models import build_model, load_checkpoint
from attnprobe.models.checkpoints import save_checkpoint
from attnprobe.train.presets import TrainConfig, anisotropic_roi, pretrained_roi, resolve_train_config
from attnprobe.train.trainer import dice_score, initial_model, lr_factor, read_train_metadata, train
from tests.helpers import read_csv_rows

FAST = {"spacing": 2.0, "num_samples": 1, "seed": 3}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """4 small MRI phantoms: 2 training, 1 validation, 1 test."""
    out = tmp_path_factory.mktemp("phantoms")
    return write_phantom_dataset(out, n=4, seed=0, shape=(48, 48, 24), modalities=("mri",))["mri"]


def _config(**kw):
    return resolve_train_config(kw.pop("preset", "act"), model_preset="tiny", epochs=1, **{**FAST, **kw})


@pytest.fixture(scope="module")
def reference_run(phantoms, tmp_path_factory):
    """An uninterrupted run: 1 epoch = 2 steps, then validation."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    steps = []
    result = train(_config(), phantoms, out, allow_random_init=True, on_step=steps.append)
    return result, steps


def _weights(path):
    return load_checkpoint(path)[0].state_dict()


# --- presets ----------------------------------------------------------------------------------


def test_preset_rois_and_epochs():
    assert pretrained_roi("swin_unetr") == (96, 96, 96) and anisotropic_roi("swin_unetr") == (96, 96, 64)
    assert pretrained_roi("smit") == (128, 128, 128) and anisotropic_roi("smit") == (128, 128, 64)
    # tiny presets: half the depth of the 64^3 cube
    assert pretrained_roi("swin_unetr", "tiny") == (64, 64, 64)
    assert anisotropic_roi("swin_unetr", "tiny") == (64, 64, 32) == anisotropic_roi("smit", "tiny")

    act = resolve_train_config("act", init="ct", epochs=7)
    assert act.roi == (96, 96, 64) and act.tumor_aware and act.epochs == 7 and act.init == "ct"
    base = resolve_train_config("base", arch="smit", init="ct")
    assert base.roi == (128, 128, 128) and not base.tumor_aware
    assert resolve_train_config("ta", init="ct").tumor_aware
    scratch = resolve_train_config("scratch", init="ct", epochs=7)
    assert scratch.epochs == 14 and scratch.base_epochs == 7 and scratch.init is None
    # explicit ROI and a declared pretrained ROI win
    assert resolve_train_config("act", roi=(64, 64, 32), init="ct").roi == (64, 64, 32)
    assert resolve_train_config("base", declared_roi=(128, 128, 128), init="ct").roi == (128, 128, 128)
    with pytest.raises(ConfigError, match="unknown trainer preset"):
        resolve_train_config("fancy")
    with pytest.raises(ConfigError, match="axis z"):
        resolve_train_config("act", roi=(96, 96, 40))
    with pytest.raises(ConfigError, match="random weights"):
        TrainConfig(preset="scratch", init="ct")
    # a config survives the trip through checkpoint metadata
    assert TrainConfig.from_dict(act.as_dict()) == act


def test_lr_schedule_and_dice():
    factors = [lr_factor(s, total_steps=10, warmup_steps=2) for s in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0] and factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))
    a = torch.zeros(4, 4, 4)
    b = a.clone()
    a[:2], b[1:3] = 1, 1
    assert dice_score(a, b) == 0.5 and dice_score(torch.zeros(3), torch.zeros(3)) == 1.0


def test_initial_model_scratch_and_init(tmp_path):
    scratch = _config(preset="scratch", init="ignored")
    model, report = initial_model(scratch)
    assert report is None and model.attnprobe_config["roi"] == (64, 64, 64)
    torch.manual_seed(3)  # set_determinism(seed) then build: the same random weights
    fresh = build_model("swin_unetr", preset="tiny")
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="pretrained weights"):
        initial_model(_config(preset="base"))
    # init from a checkpoint with another head: backbone loaded, head re-initialised for 2 classes
    torch.manual_seed(1)
    source = build_model("swin_unetr", preset="tiny", out_channels=3)
    path = save_checkpoint(source, tmp_path / "ct.pt")
    messages = []
    model, report = initial_model(_config(preset="act", init=str(path)), log=messages.append)
    assert report is not None and report.missing_backbone == () and len(report.matched) > 0
    assert any("re-initialised" in m for m in messages)
    sd = model.state_dict()
    assert sd["out.conv.conv.weight"].shape[0] == 2
    key = "swinViT.layers1.0.blocks.0.attn.qkv.weight"
    assert torch.equal(sd[key], source.state_dict()[key])


# --- runs -------------------------------------------------------------------------------------


def test_run_writes_checkpoints_and_metrics(reference_run):
    result, steps = reference_run
    assert result.finished and result.steps_done == 2 and result.epochs_done == 1
    assert [s.step for s in steps] == [1, 2] and all(math.isfinite(s.loss) for s in steps)
    for name in ("config.json", "metrics.csv", "last.pt", "best.pt"):
        assert (result.out_dir / name).is_file()
    rows = read_csv_rows(result.metrics)
    assert list(rows[0]) == ["epoch", "step", "loss", "val_dice", "lr", "time"]
    assert [(r["epoch"], r["step"], r["val_dice"] != "") for r in rows] == [("1", "1", False), ("1", "2", False),
                                                                            ("1", "2", True)]
    assert 0.0 <= float(rows[-1]["val_dice"]) <= 1.0 and float(rows[-1]["val_dice"]) == result.best_dice

    meta = read_train_metadata(result.best)
    assert meta["arch"] == "swin_unetr" and meta["preset"] == "act" and meta["roi"] == [64, 64, 32]
    assert meta["intensity"] == "percentile" and meta["epoch"] == 1 and meta["val_dice"] == result.best_dice
    assert "state" not in meta and "state" in read_train_metadata(result.last)
    model, report = load_checkpoint(result.best)
    assert model.attnprobe_config["roi"] == [64, 64, 32] and report.metadata["train"]["model_preset"] == "tiny"


class _Killed(Exception):
    pass


def test_resume_after_kill_is_bitwise_identical(reference_run, phantoms, tmp_path):
    reference, _ = reference_run
    out = tmp_path / "killed"

    def kill_after_step_1(info):
        if info.step == 1:  # last.pt of step 1 is on disk; the process dies here
            raise _Killed

    with pytest.raises(_Killed):
        train(_config(), phantoms, out, allow_random_init=True, checkpoint_every=1, on_step=kill_after_step_1)
    assert read_train_metadata(out / "last.pt")["state"]["global_step"] == 1
    # a row logged after the last checkpoint (a kill between the two) must not survive resuming
    with open(out / "metrics.csv", "a") as fh:
        fh.write("1,2,9.9,,0.1,1.0\n")

    # a different setting is refused, the same command resumes
    with pytest.raises(ConfigError, match="seed"):
        train(_config(seed=4), phantoms, out, resume=True, allow_random_init=True)
    resumed = train(_config(), phantoms, out, resume=True, allow_random_init=True)
    assert resumed.finished and resumed.steps_done == 2

    ref_w, res_w = _weights(reference.last), _weights(resumed.last)
    assert ref_w.keys() == res_w.keys()
    assert all(torch.equal(ref_w[k], res_w[k]) for k in ref_w)  # bitwise
    assert all(torch.equal(a, b) for a, b in zip(_weights(reference.best).values(), _weights(resumed.best).values()))
    strip = [{k: v for k, v in r.items() if k != "time"} for r in read_csv_rows(reference.metrics)]
    assert [{k: v for k, v in r.items() if k != "time"} for r in read_csv_rows(resumed.metrics)] == strip
    # resuming a finished run does nothing
    again = train(_config(), phantoms, out, resume=True, allow_random_init=True)
    assert again.steps_done == 2 and len(read_csv_rows(out / "metrics.csv")) == len(strip)


def test_refuses_existing_run_folder(phantoms, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("old")
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="already exists"):
        train(_config(), phantoms, out, allow_random_init=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(_config(), phantoms, tmp_path / "new", resume=True)
    # (--overwrite, which replaces the run files only, runs in tests/cli/test_cli_train.py)
