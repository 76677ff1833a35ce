"""``attnprobe cka`` end to end: checkpoints, two input sets, stores, one-line errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from attnprobe.cli import capture as capture_cli
from attnprobe.cli import cka as cka_cli
from attnprobe.models import build_model
from attnprobe.models.checkpoints import save_checkpoint
from tests import helpers
from tests.helpers import cli_runner, command_app

BLOCKS = [f"stage{s}.block{b}" for s in range(4) for b in range(2)]


# The cka command as the app registers it, plus capture to make stores.
APP = command_app(lambda app: app.command("capture")(capture_cli.capture), cka_cli.register)
run = cli_runner(APP)


def assert_one_line_error(result, pattern):
    """As in the other CLI tests, with the output's line wrapping undone (long paths wrap)."""
    helpers.assert_one_line_error(result, pattern, fold_whitespace=True)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def perturbed_swin(tmp_path_factory):
    """The conftest's tiny Swin UNETR with every weight nudged: a 'fine-tuned' copy."""
    torch.manual_seed(0)
    model = build_model("swin_unetr", preset="tiny")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return save_checkpoint(model, tmp_path_factory.mktemp("ck_cka") / "swin_tuned.pt")


@pytest.fixture(scope="module")
def other_rendering(datalist, tmp_path_factory):
    """A second datalist with the same case ids: another contrast of the same volumes."""
    root = tmp_path_factory.mktemp("mri")
    entries = []
    for entry in json.loads(datalist.read_text())["training"] + json.loads(datalist.read_text())["test"]:
        img = nib.load(str(datalist.parent / entry["image"]))
        data = np.asarray(img.dataobj, dtype=np.float32)
        nib.save(nib.Nifti1Image(np.sqrt(np.abs(data)) * 10, img.affine), str(root / entry["image"]))
        entries.append({"image": entry["image"], "case": entry["case"]})
    full = root / "other.json"
    full.write_text(json.dumps({"training": entries}))
    part = root / "part.json"
    part.write_text(json.dumps({"training": entries[:2]}))
    return full, part


def test_the_app_registers_cka():
    from attnprobe.cli.app import app

    assert any(c.name == "cka" and c.callback is cka_cli.cka_command for c in app.registered_commands)


def test_pretrained_vs_fine_tuned_end_to_end(swin_ckpt, perturbed_swin, datalist, tmp_path):
    out = tmp_path / "cka"
    result = run("cka", "--ref", swin_ckpt, "--tgt", perturbed_swin, "--data", datalist, "--limit", 2,
                 "--crops", 2, "--crop-size", "32,64,32", "--baseline-seeds", 2, "--out", out)
    assert result.exit_code == 0, result.output
    da = xr.open_dataarray(out / "cka.nc", engine="h5netcdf")
    assert da.name == "cka" and da.dims == ("ref", "tgt") and da.shape == (8, 8)
    assert list(da["ref"].values) == BLOCKS == list(da["tgt"].values)
    assert da.attrs["ref"] == str(swin_ckpt) and da.attrs["tgt"] == str(perturbed_swin)
    assert da.attrs["n"] == 4 and da.attrs["estimator"] == "unbiased" and da.attrs["kernel"] == "linear"
    assert da.attrs["unit"] == "pooled" and da.attrs["crops"] == 2 and da.attrs["roi"] == "64,64,32"
    diag = np.diag(da.values)
    assert np.isfinite(da.values).all() and (np.abs(da.values) <= 1 + 1e-9).all()
    assert not np.allclose(diag, 1.0, rtol=0, atol=1e-9)  # another model (itself: see below)
    table = pd.read_csv(out / "cka.csv")
    # 2 cases: too few for intervals and p-values (they are skipped, and the run says so)
    assert list(table.columns) == ["ref", "tgt", "value", "baseline_mean", "baseline_sd", "above_baseline"]
    assert len(table) == 64
    summary = json.loads((out / "summary.json").read_text())
    for key in ("diagonal_mean", "band_mean", "off_diagonal_mean", "mean_row_max", "mean_best_match_shift"):
        assert isinstance(summary[key], float)
    assert list(summary["diagonal"]) == BLOCKS
    assert summary["diagonal_mean"] == pytest.approx(diag.mean())
    assert "diagonal (same block)" in result.output and "stage3.block1" in result.output
    # on by default: the random-init baseline, intervals over the 2 cases, permutation p-values
    assert da.attrs["baseline"] == "random-init" and da.attrs["baseline_seeds"] == 2 and da.attrs["n_groups"] == 2
    assert summary["diagonal_mean_above_baseline"] == pytest.approx(
        summary["diagonal_mean"] - summary["baseline_diagonal_mean"])
    assert set(summary["diagonal_above_baseline"]) == set(BLOCKS) and "diagonal_ci_low" not in summary
    assert da.attrs["stats_skipped"] == "fewer than 5 cases (2)"
    text = " ".join(result.output.split())
    assert text.count("warning: only 4 examples") == 1 and "need at least 5 cases" in text


def test_a_model_against_itself(smit_ckpt, datalist, tmp_path):
    result = run("cka", "--ref", smit_ckpt, "--tgt", smit_ckpt, "--data", datalist, "--estimator", "biased",
                 "--kernel", "rbf", "--pool", 2, "--median", "kornblith", "--pooling", "paper-swin-axes",
                 "--small-grid", "stretch", "--baseline", "none", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["diagonal_mean"] == pytest.approx(1.0, abs=1e-12)
    assert summary["attrs"]["n"] == 3 and summary["attrs"]["pool"] == 2
    # the convention options reach the config and are recorded
    assert summary["attrs"]["median"] == "kornblith" and summary["attrs"]["pooling"] == "paper-swin-axes"
    assert summary["attrs"]["small_grid"] == "stretch"
    assert "paper_band_mean" in summary and "paper_off_diagonal_mean" in summary
    result = run("cka", "--ref", smit_ckpt, "--tgt", smit_ckpt, "--data", datalist, "--kernel", "rbf",
                 "--median", "n2", "--out", tmp_path / "bad")
    assert result.exit_code == 2 and "kornblith" in result.output


def test_one_model_on_two_input_sets(smit_ckpt, datalist, other_rendering, tmp_path):
    full, part = other_rendering
    result = run("cka", "--ref", smit_ckpt, "--data", datalist, "--tgt-data", full, "--unit", "tokens", "--baseline", "none",
                 "--out", tmp_path)
    assert result.exit_code == 0, result.output
    da = xr.open_dataarray(tmp_path / "cka.nc", engine="h5netcdf")
    assert da.attrs["tgt_data"] == str(full) and da.attrs["n_inputs"] == 3 and da.attrs["unit"] == "tokens"
    assert da.attrs["n_tokens_max"] == 3 * 32 * 32 * 16
    assert (np.diag(da.values) < 1 - 1e-6).all()
    result = run("cka", "--ref", smit_ckpt, "--data", datalist, "--tgt-data", part, "--out", tmp_path / "x")
    assert_one_line_error(result, "hold different cases")


def test_stores(smit_ckpt, swin_ckpt, datalist, tmp_path):
    stores = {}
    for name, ckpt, split in (("smit", smit_ckpt, "training"), ("swin", swin_ckpt, "training"),
                              ("smit_test", smit_ckpt, "test")):
        stores[name] = tmp_path / f"{name}.zarr"
        result = run("capture", "--model", ckpt, "--data", datalist, "--split", split, "--taps", "*.out",
                     "--out", stores[name])
        assert result.exit_code == 0, result.output
    out = tmp_path / "stores"
    result = run("cka", "--ref", stores["swin"], "--tgt", stores["smit"], "--unit", "tokens", "--estimator",
                 "biased", "--out", out)
    assert result.exit_code == 0, result.output
    da = xr.open_dataarray(out / "cka.nc", engine="h5netcdf")
    assert da.shape == (8, 8) and da.attrs["ref_source"] == "store" and da.attrs["n_inputs"] == 2
    assert np.isfinite(da.values).all()
    fresh = tmp_path / "refused"  # an empty --out: a used one is refused before these checks
    assert_one_line_error(run("cka", "--ref", stores["smit"], "--tgt", stores["smit_test"], "--out", fresh),
                          "hold different cases")
    assert_one_line_error(run("cka", "--ref", stores["smit"], "--tgt", smit_ckpt, "--data", datalist,
                              "--out", fresh), "both be models or both be capture stores")
    assert_one_line_error(run("cka", "--ref", stores["smit"], "--tgt", stores["swin"], "--crops", 2,
                              "--out", fresh), "--crops does not apply")
    assert_one_line_error(run("cka", "--ref", tmp_path / "missing.zarr", "--tgt", stores["swin"],
                              "--out", fresh), "no store at")


@pytest.mark.parametrize(("extra", "pattern"), [
    (["--unit", "tokens", "--kernel", "rbf"], "only the linear kernel"),
    (["--unit", "tokens", "--estimator", "minibatch"], "exact CKA over all tokens"),
    (["--batch-size", "2", "--estimator", "minibatch"], "minibatch size"),
    (["--crops", "0"], "bad --crops"),
    (["--crop-size", "32,y,2"], "cannot read --crop-size"),
    (["--bootstrap", "5"], "bad --bootstrap count"),
    (["--baseline-seeds", "0"], "bad --baseline-seeds"),
    # 3 cases x 1 crop: the unbiased estimator needs 4 -- refused before any forward pass
    ([], "too few for the unbiased CKA estimator"),
])
def test_bad_options_are_one_line_errors(smit_ckpt, datalist, tmp_path, extra, pattern):
    result = run("cka", "--ref", smit_ckpt, "--tgt", smit_ckpt, "--data", datalist, *extra, "--out", tmp_path)
    assert_one_line_error(result, pattern)


def test_missing_inputs_are_one_line_errors(smit_ckpt, datalist, tmp_path):
    assert_one_line_error(run("cka", "--ref", smit_ckpt, "--tgt", smit_ckpt, "--out", tmp_path), "need inputs")
    assert_one_line_error(run("cka", "--ref", smit_ckpt, "--data", datalist, "--out", tmp_path),
                          "nothing to compare")
    assert_one_line_error(run("cka", "--ref", "nonexistent-model", "--tgt", smit_ckpt, "--data", datalist,
                              "--out", tmp_path), "Unknown model")


def test_out_is_checked_before_anything_is_computed(smit_ckpt, datalist, tmp_path):
    target = tmp_path / "cka.txt"
    target.write_text("not a folder")
    result = run("cka", "--ref", smit_ckpt, "--tgt", smit_ckpt, "--data", datalist, "--estimator", "biased",
                 "--baseline", "none", "--out", target, "--overwrite")
    assert_one_line_error(result, "is a file")
    assert target.read_text() == "not a folder" and "loaded" not in result.output
