"""``attnprobe adi`` end to end on NIfTI files: sweep outputs, the offline store path, errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from attnprobe.cli import adi as adi_cli
from attnprobe.metrics.aggregate import TIDY_COLUMNS
from tests.helpers import cli_runner, command_app

ROI = "32,32,64"  # smallest Swin UNETR input the decoder's instance norms accept
# The adi command as the real app registers it, without building the other commands.
APP = command_app(adi_cli.register)
run = cli_runner(APP)


def test_the_app_registers_adi():
    from attnprobe.cli.app import app

    assert any(c.name == "adi" and c.callback is adi_cli.adi for c in app.registered_commands)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, swin_ckpt) -> dict[str, Path]:
    """Two NIfTI cases with labels (one longer, one shorter than the ROI on z) and the tiny Swin UNETR
    checkpoint of the conftest (seed 0)."""
    root = tmp_path_factory.mktemp("adi_cli")
    rng = np.random.default_rng(0)
    entries = []
    for i, shape in enumerate([(40, 36, 70), (36, 40, 50)]):
        image = rng.random(shape, dtype=np.float32) + 0.05
        label = np.zeros(shape, np.uint8)
        label[12:22, 12:22, 20:30] = 1
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / f"case{i}_label.nii.gz")
        entries.append({"image": f"case{i}.nii.gz", "label": f"case{i}_label.nii.gz"})
    (root / "data.json").write_text(json.dumps({"training": entries}))
    return {"root": root, "data": root / "data.json", "model": swin_ckpt}


def invoke(*args: object):
    return run("adi", *args)


@pytest.fixture(scope="module")
def sweep(workspace):
    out = workspace["root"] / "sweep"
    result = invoke("--model", workspace["model"], "--data", workspace["data"], "--out", out, "--roi", ROI,
                    "--padding-sweep", "0,16")
    assert result.exit_code == 0, result.output
    return {"out": out, "result": result}


def test_sweep_writes_every_output(sweep):
    out = sweep["out"]
    for name in ("adi.csv", "adi.parquet", "adi.nc", "summary.csv"):
        assert (out / name).is_file(), name
    frame = pd.read_csv(out / "adi.csv")
    assert list(frame.columns) == [*TIDY_COLUMNS, "n_real_queries", "n_pad_queries"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "adi.parquet"), frame, check_dtype=False)
    assert set(frame["case"]) == {"case0", "case1"} and set(frame["padding"]) == {0, 16}
    assert set(frame["kind"]) == {"input", "window", "all"}
    fractions = frame.groupby(["case", "padding"])["pad_fraction"].first().to_dict()
    # case0 fills the ROI; case1 is 50 voxels on z, so 14 of 64 are padding before any sweep.
    assert fractions == {("case0", 0): 0.0, ("case0", 16): 0.25, ("case1", 0): 14 / 64, ("case1", 16): 0.25}

    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ["padding", "stage", "kind", "metric", "mean", "std", "n", "pad_fraction"]
    assert len(summary) == 2 * 4 * 3 * 8
    # A_pr/A_pp have no value without padding queries (case0 at p=0 has no input padding; at
    # stage 3 every token of case1 covers a real voxel too): the summary counts only the cases
    # with a value.
    pad_rows = summary["metric"].isin(["a_pr", "a_pp"])
    assert (summary.loc[~pad_rows, "n"] == 2).all()
    assert summary.query("padding == 0 and kind == 'input' and metric == 'a_pr'")["n"].tolist() == [1, 1, 1, 0]

    ds = xr.open_dataset(out / "adi.nc")  # netCDF4 via h5netcdf, or netCDF3 without h5py
    assert dict(ds.sizes) == {"case": 2, "padding": 2, "stage": 4, "block": 2, "kind": 3}
    assert ds.attrs["padding_sweep"] == "0,16" and ds.attrs["axis"] == "z"
    assert ds.attrs["pad_queries"] == "all-windows"  # the paper's rule is the default
    np.testing.assert_allclose(ds["adi"].sel(case="case1", padding=16, stage=0, block=1, kind="all").item(),
                               frame.query("case == 'case1' and padding == 16 and stage == 0 and block == 1 "
                                           "and kind == 'all' and metric == 'adi'")["value"].item())
    ds.close()

    text = sweep["result"].stdout
    assert "ADI by stage" in text and "stage0" in text and "stage3" in text and "pad frac" in text


def test_store_path_equals_online_path(workspace, sweep, tmp_path):
    from attnprobe.data.io import list_cases
    from attnprobe.data.preprocess import PreprocessConfig, prepare_case
    from attnprobe.models import load_checkpoint
    from attnprobe.store import capture_to_store

    # Capture the cases exactly as `adi` prepares them (same ROI, end padding, 1 mm, percentiles).
    # case1 only: the one with padding from preprocessing (one forward less).
    config = PreprocessConfig(roi=(32, 32, 64), pad_mode="end")
    cases = [prepare_case(ref, config) for ref in list_cases(workspace["data"])[1:]]
    model, _ = load_checkpoint(workspace["model"])
    store = capture_to_store(model, cases, tmp_path / "cap.zarr", taps=["*.attn"], dtype="float32")

    result = invoke("--store", store, "--out", tmp_path / "offline")
    assert result.exit_code == 0, result.output
    assert "n/a" not in result.stdout  # the store records each sample's voxel padding fraction
    offline = pd.read_csv(tmp_path / "offline" / "adi.csv")
    # With end padding, sweep step p=0 is the prepared case itself.
    online = pd.read_csv(sweep["out"] / "adi.csv").query("padding == 0 and case == 'case1'").reset_index(drop=True)
    ids = ["case", "padding", "stage", "block", "kind", "metric", "n_real_queries", "n_pad_queries"]
    pd.testing.assert_frame_equal(offline[ids], online[ids])
    np.testing.assert_allclose(offline["value"], online["value"], rtol=0, atol=1e-5)

    # --pad-queries reaches the offline path and is recorded; only A_pr/A_pp (and counts) move.
    from attnprobe.metrics.offline import store_flow

    result = invoke("--store", store, "--out", tmp_path / "kept", "--pad-queries", "real-windows")
    assert result.exit_code == 0, result.output
    kept = pd.read_csv(tmp_path / "kept" / "adi.csv")
    np.testing.assert_allclose(kept["value"], store_flow(store, pad_queries="real-windows")["value"], atol=1e-12)
    moved = (kept["value"] - offline["value"]).abs() > 1e-9
    assert set(kept.loc[moved, "metric"]) == {"a_pr", "a_pp"}
    with xr.open_dataset(tmp_path / "kept" / "adi.nc") as ds:
        assert ds.attrs["pad_queries"] == "real-windows"
    result = invoke("--store", store, "--out", tmp_path / "bad", "--pad-queries", "all")
    assert result.exit_code == 2 and "all-windows" in result.output

    # A store given as --model goes the same way (no model is loaded).
    result = invoke("--model", store, "--out", tmp_path / "as_model", "--limit", "1")
    assert result.exit_code == 0, result.output
    again = pd.read_csv(tmp_path / "as_model" / "adi.csv")
    np.testing.assert_allclose(again["value"], offline["value"], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sweep-mode", "grow", "--padding-sweep", "0,16"], "not divisible by 32"),
        (["--padding-sweep", "0,64"], "leaves no content"),
        (["--padding-sweep", "0,a"], "cannot read --padding-sweep"),
        (["--padding-sweep", "0,-16"], "bad padding sweep"),
        (["--roi", "30,32,64"], "not a positive multiple of 32"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(workspace, tmp_path, extra, message):
    result = invoke("--model", workspace["model"], "--data", workspace["data"], "--out", tmp_path, "--roi", ROI,
                    *extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "adi.csv").exists()


def test_inconsistent_options_are_errors(workspace, tmp_path):
    result = invoke("--model", workspace["model"], "--out", tmp_path)
    assert result.exit_code == 2 and "--model and --data" in result.stderr
    result = invoke("--store", tmp_path / "nothing.zarr", "--out", tmp_path, "--padding-sweep", "0,16")
    assert result.exit_code == 2 and "--padding-sweep needs a model" in result.stderr
    result = invoke("--store", tmp_path / "nothing.zarr", "--out", tmp_path)
    assert result.exit_code == 2 and "no store" in result.stderr
    if not torch.cuda.is_available():
        result = invoke("--model", workspace["model"], "--data", workspace["data"], "--out", tmp_path,
                        "--device", "cuda")
        assert result.exit_code == 2 and "no CUDA device" in result.stderr


def test_netcdf3_fallback_without_h5py(sweep, tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "h5py" else real_find_spec(name, *a))
    assert adi_cli._netcdf_engine() == "scipy"
    frame = pd.read_csv(sweep["out"] / "adi.csv")
    adi_cli._write_outputs(frame, tmp_path, {"axis": "z", "roi": (32, 32, 64)})
    with xr.open_dataset(tmp_path / "adi.nc") as ds:
        assert ds.attrs["roi"] == "(32, 32, 64)"
        np.testing.assert_allclose(ds["adi"].sel(case="case0", padding=16, stage=1, block=0, kind="input").item(),
                                   frame.query("case == 'case0' and padding == 16 and stage == 1 and block == 0 "
                                               "and kind == 'input' and metric == 'adi'")["value"].item())


def test_a_second_run_into_the_same_out_is_refused_and_the_first_survives(sweep, workspace, tmp_path):
    out = sweep["out"]
    first = (out / "adi.csv").read_bytes()
    result = invoke("--model", workspace["model"], "--data", workspace["data"], "--out", out, "--roi", ROI,
                    "--padding-sweep", "0")
    assert result.exit_code == 2 and "is not empty" in result.stderr and "--overwrite" in result.stderr
    assert (out / "adi.csv").read_bytes() == first
    # the run is recorded: kind, schema, manifest with the checkpoint's hash and the datalist's
    from attnprobe.results import AdiRun
    from attnprobe.results.files import sha256_file

    run = AdiRun.load(out)
    assert run.label == Path(workspace["model"]).stem and run.attrs["padding_sweep"] == "0,16"
    hashes = {i.role: i.sha256 for i in run.manifest.inputs}
    assert hashes["checkpoint"] == sha256_file(workspace["model"])
    assert hashes["data"] == sha256_file(workspace["data"])
    assert run.manifest.command == "adi" and run.manifest.compat == {"model": "current"}


def test_overwrite_refuses_a_folder_with_foreign_files(sweep, workspace, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(sweep["out"], out)
    (out / "notes.txt").write_text("mine")
    result = invoke("--model", workspace["model"], "--data", workspace["data"], "--out", out, "--roi", ROI,
                    "--overwrite")
    assert result.exit_code == 2 and "did not write" in result.stderr and "notes.txt" in result.stderr
    assert (out / "notes.txt").read_text() == "mine" and (out / "adi.csv").exists()


def test_a_run_checkpoint_is_labelled_by_its_run_folder_not_last(tmp_path):
    # figures used to say "model(s): last, last" for two fine-tuned runs
    from attnprobe.models import build_model
    from attnprobe.models.checkpoints import save_checkpoint
    from attnprobe.workflows.sweep import model_label as _model_label

    path = tmp_path / "mri-act" / "last.pt"
    path.parent.mkdir()
    save_checkpoint(build_model("swin_unetr", preset="tiny"), path)
    assert _model_label(str(path), str(path)) == "mri-act"
    other = tmp_path / "ct_tiny.pt"
    save_checkpoint(build_model("swin_unetr", preset="tiny"), other)
    assert _model_label(str(other), str(other)) == "ct_tiny"
    assert _model_label("ct", None) == "ct"  # a name from attnprobe.toml
