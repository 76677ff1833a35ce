"""Training workflow: the trainer call and the run record next to its files."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from attnprobe.results import Manifest, TrainRun, kind_of
from attnprobe.train.presets import resolve_train_config
from attnprobe.workflows.training import init_arch, run_training


@pytest.fixture
def fake_trainer(monkeypatch):
    """The trainer replaced by one that writes its files and reports what it was given."""
    calls = []

    def train(config, data, out_dir, **kwargs):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"preset": config.preset}))
        (out / "metrics.csv").write_text("step,loss,val_dice\n1,0.5,\n")
        calls.append(kwargs)
        return SimpleNamespace(out_dir=out, finished=False)

    monkeypatch.setattr("attnprobe.train.trainer.train", train)
    return calls


def test_run_training_records_the_run_with_a_manifest(fake_trainer, datalist, tmp_path):
    config = resolve_train_config("scratch", arch="swin_unetr", model_preset="tiny", epochs=1)
    result = run_training(config, datalist, tmp_path / "run", manifest=Manifest.start("train", {"epochs": 1}),
                          stop_after_steps=1, overwrite=True)
    assert fake_trainer == [{"val_data": None, "on_step": None, "on_epoch": None, "log": None,
                             "stop_after_steps": 1, "overwrite": True}]
    assert kind_of(result.out_dir) == "train"
    record = TrainRun.load(result.out_dir)
    assert record.finished is False and record.label == "scratch" and record.preset == "scratch"
    assert "data" in {i.role for i in record.manifest.inputs}


def test_run_training_without_a_manifest_writes_no_record(fake_trainer, datalist, tmp_path):
    config = resolve_train_config("scratch", arch="swin_unetr", model_preset="tiny", epochs=1)
    result = run_training(config, datalist, tmp_path / "run")
    assert kind_of(result.out_dir) is None and not (tmp_path / "run" / "manifest.json").exists()


def test_init_arch_reads_the_checkpoint_unless_given(swin_ckpt):
    assert init_arch(str(swin_ckpt))[0] == "swin_unetr"
    assert init_arch(str(swin_ckpt), "smit")[0] == "smit"
