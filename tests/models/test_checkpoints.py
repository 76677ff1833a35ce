"""Checkpoint formats, hyper-parameter inference and refusals."""

from __future__ import annotations

import pytest
import torch

from attnprobe.errors import CheckpointError, ConfigError
from attnprobe.models import build_model, get_adapter, load_checkpoint
from attnprobe.models.checkpoints import save_checkpoint
from fixtures import checkpoints as layouts


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    return build_model("swin_unetr", preset="tiny", depths=(2, 2, 4, 2), num_heads=(3, 6, 6, 12)).eval()


def backbone(model):
    return {k: v for k, v in model.state_dict().items() if k.startswith("swinViT.")}


@pytest.mark.parametrize("layout", ["swin_finetuned", "swin_module", "plain", "safetensors", "swin_ssl"])
def test_every_layout_round_trips(source, layout, tmp_path):
    suffix = ".safetensors" if layout == "safetensors" else ".pt"
    path = layouts.LAYOUTS[layout](source, tmp_path / f"ckpt{suffix}")
    # no preset and no hint: sizes come from the keys alone; the source computes 'current'
    model, report = load_checkpoint(path, "swin_unetr", compat="current")
    assert report.config["feature_size"] == 12
    assert tuple(report.config["depths"]) == (2, 2, 4, 2)
    assert tuple(report.config["num_heads"]) == (3, 6, 6, 12)
    assert report.config["window_size"] == 7
    assert not report.missing_backbone
    for key, value in backbone(source).items():
        assert torch.equal(model.state_dict()[key], value), key
    if layout == "swin_ssl":
        assert report.format == "monai_ssl"
        assert "rotation_head.weight" in report.ignored and not report.unexpected
        assert all(not k.startswith("swinViT.") for k in report.missing)  # only the decoder is new
    else:
        assert not report.missing and not report.unexpected
        x = torch.randn(1, 1, 64, 64, 32)
        with torch.no_grad():
            assert torch.equal(model(x), source(x))


def test_architecture_is_guessed_and_attnprobe_checkpoints_carry_config(source, tmp_path):
    path = save_checkpoint(source, tmp_path / "m.pt", extra={"preset": "base"})
    model, report = load_checkpoint(path)
    assert report.arch == "swin_unetr" and tuple(report.config["roi"]) == (64, 64, 32)
    assert report.metadata["preset"] == "base"
    assert len(report.sha256) == 64


def test_v2_is_inferred(tmp_path):
    model = build_model("swin_unetr", preset="tiny_v2")
    path = layouts.plain(model, tmp_path / "v2.pt")
    _, report = load_checkpoint(path, "swin_unetr")
    assert report.config["use_v2"] is True


def test_ssl_into_v2_reports_the_new_conv_blocks_as_non_backbone(source, tmp_path):
    path = layouts.swin_ssl(build_model("swin_unetr", preset="tiny"), tmp_path / "ssl.pt")
    model, report = load_checkpoint(path, "swin_unetr", use_v2=True)
    assert any(k.startswith("swinViT.layers1c.") for k in report.missing)
    assert not report.missing_backbone


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="cannot read notes.pt"):
        load_checkpoint(bad)


def test_truncated_checkpoint(source, tmp_path):
    path = layouts.swin_finetuned(source, tmp_path / "full.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)


def test_pickled_objects_are_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_checkpoint(path, "swin_unetr")


def test_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(8, 1, 3, 3, 3), "fc.weight": torch.zeros(2, 8)}, path)
    with pytest.raises(CheckpointError, match="no registered architecture|patch embedding"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="patch embedding"):
        load_checkpoint(path, "swin_unetr")


def test_missing_backbone_keys_are_an_error_unless_allowed(source, tmp_path):
    sd = {k: v for k, v in source.state_dict().items() if ".layers4." not in k}
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="backbone weight\\(s\\) are missing"):
        load_checkpoint(path, "swin_unetr", depths=(2, 2, 4, 2), num_heads=(3, 6, 6, 12))
    _, report = load_checkpoint(path, "swin_unetr", allow_partial=True, depths=(2, 2, 4, 2),
                                num_heads=(3, 6, 6, 12))
    assert report.missing_backbone and all(".layers4." in k for k in report.missing_backbone)


def test_naive_prefix_strip_loads_nothing_and_says_so(source, tmp_path):
    # the known trap: keys without any recognised prefix
    sd = {k.replace("swinViT.", "backbone.vit."): v for k, v in source.state_dict().items()}
    path = tmp_path / "renamed.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path, "swin_unetr")


def test_shape_mismatch_names_the_tensor(source, tmp_path):
    path = layouts.plain(source, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path, "swin_unetr", num_heads=(3, 6, 12, 24))


def test_unknown_architecture_suggests():
    with pytest.raises(ConfigError, match="did you mean swin_unetr"):
        get_adapter("swin_unter")
