"""SMIT through the adapter: checkpoint layouts, reference state dict, capture."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from attnprobe.models import build_model, load_checkpoint
from attnprobe.models.checkpoints import save_checkpoint

REFERENCE = Path(os.environ.get("ATTNPROBE_REFERENCE_DIR", Path(__file__).resolve().parents[3] / "shared/reference"))
REFERENCE_JSON = REFERENCE / "smit_2282_state_dict.json"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("smit", preset="tiny", depths=(2, 2, 4, 2)).eval()


@pytest.mark.skipif(not REFERENCE_JSON.exists(), reason="shared/reference not beside the checkout")
def test_reference_checkpoint_loads_completely(tmp_path):
    shapes = json.loads(REFERENCE_JSON.read_text())
    torch.manual_seed(0)
    sd = {k: (torch.zeros(s, dtype=torch.long) if k.endswith("relative_position_index") else torch.randn(s))
          for k, s in shapes.items()}
    path = tmp_path / "smit_2282.pt"
    torch.save({"state_dict": sd}, path)
    model, report = load_checkpoint(path)  # architecture guessed from the keys
    assert report.arch == "smit"
    assert len(report.matched) == 253 and not report.missing and not report.unexpected
    assert tuple(report.config["depths"]) == (2, 2, 8, 2)
    assert tuple(report.config["num_heads"]) == (4, 4, 8, 16)
    assert report.config["embed_dim"] == 48 and report.config["window_size"] == 4
    assert torch.equal(model.state_dict()["transformer.layers.2.blocks.7.mlp.fc2.weight"],
                       sd["transformer.layers.2.blocks.7.mlp.fc2.weight"])
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == shapes


def test_self_supervised_student_layout(tiny, tmp_path):
    student = {"module.backbone." + k[len("transformer."):]: v
               for k, v in tiny.state_dict().items() if k.startswith("transformer.")}
    student["module.head.last_layer.weight"] = torch.zeros(4, 4)
    path = tmp_path / "ssl.pth"
    torch.save({"student": student, "teacher": {}, "epoch": 10}, path)
    model, report = load_checkpoint(path, "smit", preset="tiny")
    assert report.format == "smit_ssl"
    assert tuple(report.config["depths"]) == (2, 2, 4, 2)
    assert not report.missing_backbone and report.missing  # decoder stays initialised, reported
    assert all(not k.startswith("transformer.") for k in report.missing)
    # the self-supervised head has no place in a segmentation model: listed, not an error
    assert report.ignored == ("module.head.last_layer.weight",) and not report.unexpected
    for key, value in tiny.state_dict().items():
        if key.startswith("transformer."):
            assert torch.equal(model.state_dict()[key], value)


@pytest.mark.parametrize("wrap", ["state_dict", "module", "plain", "attnprobe"])
def test_fine_tuned_layouts_round_trip(tiny, tmp_path, wrap):
    path = tmp_path / "m.pt"
    sd = tiny.state_dict()
    if wrap == "state_dict":
        torch.save({"state_dict": sd}, path)
    elif wrap == "module":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    elif wrap == "plain":
        torch.save(sd, path)
    else:
        save_checkpoint(tiny, path)
    # the files come from a model built as 'current'; only attnprobe's own file says so itself
    compat = "current" if wrap != "attnprobe" else None
    model, report = load_checkpoint(path, "smit" if wrap != "attnprobe" else None, compat=compat)
    assert report.compat == "current"
    assert report.compat_reason == ("requested" if compat else "recorded in the checkpoint")
    assert not report.missing and not report.unexpected
    x = torch.randn(1, 1, 64, 64, 32)
    with torch.no_grad():
        assert torch.equal(model(x), tiny(x))


def test_swin_checkpoint_is_not_taken_for_smit(tmp_path):
    swin = build_model("swin_unetr", preset="tiny")
    path = tmp_path / "swin.pt"
    torch.save(swin.state_dict(), path)
    _, report = load_checkpoint(path)
    assert report.arch == "swin_unetr"
    from attnprobe.errors import CheckpointError

    with pytest.raises(CheckpointError):
        load_checkpoint(path, "smit")
