"""`attnprobe capture` and `attnprobe inspect` end to end, and their one-line errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import zarr

from attnprobe import open_store
from attnprobe.cli.app import app
from tests.helpers import assert_one_line_error, cli_runner

run = cli_runner(app)


def assert_nothing_marked_done(store):
    """Cases are prepared lazily, so a bad case may come after the store was laid out."""
    if store.exists():
        assert not open_store(store)["done"].values.any()


def test_help_lists_the_command_group():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("capture", "inspect"):
        assert command in result.output


@pytest.mark.parametrize("fixture", ["swin_ckpt", "smit_ckpt"])
def test_capture_end_to_end(request, fixture, datalist, tmp_path):
    ckpt = request.getfixturevalue(fixture)
    out = tmp_path / "run.zarr"
    result = run("capture", "--model", ckpt, "--data", datalist, "--out", out, "--taps", "stage0.block0.*",
                 "--taps", "stage3.*.out")
    assert result.exit_code == 0, result.output
    assert "(done before)" not in result.output, result.output
    tree = open_store(out)
    assert tree["done"].values.all() and list(tree["case"].values) == ["case0", "case1", "case2"]
    assert tree.attrs["roi"] == [64, 64, 32]
    assert tree.attrs["preprocessing"]["pad_mode"] == "end"
    kinds = tree["stage0.block0"]["attn_kind"].values
    assert (kinds == 1).any() and (kinds == 0).any()  # small volumes padded to the ROI
    # a rerun resumes: nothing left to do, the store is unchanged
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert before
    result = run("capture", "--model", ckpt, "--data", datalist, "--out", out, "--taps", "stage0.block0.*",
                 "--taps", "stage3.*.out")
    assert result.exit_code == 0, result.output
    assert "(done before)" in result.output, result.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_inspect_prints_the_report(swin_ckpt):
    result = run("inspect", swin_ckpt)
    assert result.exit_code == 0, result.output
    assert "swin_unetr" in result.output and "matched" in result.output and "feature_size" in result.output


def test_unknown_arch(swin_ckpt):
    assert_one_line_error(run("inspect", swin_ckpt, "--arch", "swinunetr"), "did you mean swin_unetr")


def test_not_a_checkpoint_and_truncated(tmp_path, swin_ckpt):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    assert_one_line_error(run("inspect", junk), "cannot read junk.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(swin_ckpt.read_bytes()[:5000])
    assert_one_line_error(run("inspect", cut), "truncated")


def test_checkpoint_for_another_architecture(smit_ckpt):
    assert_one_line_error(run("inspect", smit_ckpt, "--arch", "swin_unetr"), "patch embedding")


def test_roi_not_divisible_by_32(swin_ckpt, datalist, tmp_path):
    out = tmp_path / "s.zarr"
    result = run("capture", "--model", swin_ckpt, "--data", datalist, "--out", out, "--roi", "64,64,40")
    assert_one_line_error(result, "roi axis z is 40, not a positive multiple of 32", fold_whitespace=True)
    assert not out.exists()


@pytest.mark.parametrize("shape", [(20, 20), (20, 20, 10, 3)])
def test_nifti_with_wrong_rank(swin_ckpt, tmp_path, shape):
    path = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, dtype=np.float32), np.eye(4)), str(path))
    out = tmp_path / "s.zarr"
    result = run("capture", "--model", swin_ckpt, "--data", tmp_path, "--out", out)
    assert_one_line_error(result, "is not a 3D volume", fold_whitespace=True)
    assert_one_line_error(result, f"got {len(shape)} dims, shape {shape}", fold_whitespace=True)
    assert_nothing_marked_done(out)


def test_nifti_with_nans(swin_ckpt, tmp_path):
    data = np.ones((20, 20, 10), dtype=np.float32)
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    out = tmp_path / "s.zarr"
    assert_one_line_error(run("capture", "--model", swin_ckpt, "--data", tmp_path, "--out", out), "NaN")
    assert_nothing_marked_done(out)


def test_empty_datalist(swin_ckpt, tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"training": []}))
    assert_one_line_error(run("capture", "--model", swin_ckpt, "--data", path, "--out", tmp_path / "s.zarr"),
                          "empty")


def test_tap_pattern_matching_nothing_suggests_names(swin_ckpt, datalist, tmp_path):
    out = tmp_path / "s.zarr"
    result = run("capture", "--model", swin_ckpt, "--data", datalist, "--out", out, "--taps", "stage0.blok0.attn")
    assert_one_line_error(result, "did you mean stage0.block0.attn")
    assert not out.exists()


def test_store_of_another_schema_version(swin_ckpt, datalist, tmp_path):
    out = tmp_path / "s.zarr"
    args = ("capture", "--model", swin_ckpt, "--data", datalist, "--out", out, "--taps", "stage3.*", "--limit", "1")
    assert run(*args).exit_code == 0
    zarr.open_group(str(out), mode="r+").attrs["attnprobe_schema"] = 0
    assert_one_line_error(run(*args), "schema")


def test_inspect_says_which_compat_and_why(swin_ckpt, tmp_path):
    import torch

    result = run("inspect", swin_ckpt)
    assert "compat" in result.output and "current (recorded in the checkpoint)" in " ".join(result.output.split())
    # a checkpoint attnprobe did not write: 'original', one notice line saying how to change it
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": torch.load(swin_ckpt, weights_only=True)["state_dict"]}, foreign)
    result = run("inspect", foreign)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "original (checkpoint not written by attnprobe" in text
    assert "note: foreign.pt: computing this checkpoint with compat='original'" in text and "--compat current" in text
    assert "CompatNotice" not in result.output  # a line, not a Python warning
    result = run("inspect", foreign, "--compat", "current")
    assert "current (requested)" in " ".join(result.output.split()) and "note:" not in result.output
    result = run("inspect", foreign, "--compat", "legacy")
    assert result.exit_code == 2 and "original" in result.output and "current" in result.output


def test_capture_records_the_compat_and_refuses_to_mix_modes(smit_ckpt, datalist, tmp_path):
    # 128x64x64 is an input the original SMIT code can run (docs/compat.md); 64x64x32 is not
    out = tmp_path / "s.zarr"
    args = ("capture", "--model", smit_ckpt, "--data", datalist, "--out", out, "--taps", "stage3.*.out",
            "--limit", "1")
    result = run(*args, "--roi", "128,64,64", "--compat", "original")
    assert result.exit_code == 0, result.output
    assert open_store(out).attrs["compat"] == "original"
    assert_one_line_error(run(*args, "--roi", "128,64,64"), "compat: stored original vs now current")  # the checkpoint records 'current'
    assert_one_line_error(run(*args, "--roi", "64,64,32", "--compat", "original", "--overwrite"),
                          "original SMIT code cannot run", fold_whitespace=True)


def test_overwrite_never_deletes_a_folder_that_is_not_a_store(swin_ckpt, datalist, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "paper.docx").write_text("unrelated")
    result = run("capture", "--model", swin_ckpt, "--data", datalist, "--out", out, "--overwrite")
    assert_one_line_error(result, "did not write")
    assert "paper.docx" in result.output and (out / "paper.docx").read_text() == "unrelated"
