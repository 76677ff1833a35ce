"""Error messages as a user sees them (issues 13, 14, 18): one plain line, exit 2 for bad input and
1 for a failed run, details with --verbose; each test reproduces a reported failure first."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from attnprobe.cli.app import app
from attnprobe.cli.common import one_line_errors, plain_numbers
from attnprobe.errors import ConfigError
from tests.helpers import assert_one_line_error, cli_runner, command_app

run = cli_runner(app)
ROOT = Path(__file__).resolve().parents[2]


@one_line_errors
def bad_input() -> None:
    raise ConfigError("Unknown keys", expected="only [models.NAME] and [datasets.NAME] tables", got="bad",
                      fix="see [bold]the docs[/]")


@one_line_errors
def reader_failure() -> None:
    raise ConfigError("Cannot read image x.nii.gz", expected="a readable NIfTI file",
                      got="RuntimeError: no reader\nTraceback (most recent call last):\n  File 'reader.py'\nValueError")


@one_line_errors
def crashes() -> None:
    raise RuntimeError("CUDA out of memory")


demo = cli_runner(command_app(lambda a: a.command("bad")(bad_input), lambda a: a.command("reader")(reader_failure),
                              lambda a: a.command("crash")(crashes)))


def test_markup_in_messages_is_printed_as_text():
    result = demo("bad")
    assert result.exit_code == 2
    assert "expected only [models.NAME] and [datasets.NAME] tables" in result.output
    assert "[bold]the docs[/]" in result.output


def test_reader_tracebacks_are_one_line_unless_verbose():
    result = demo("reader")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output and "--verbose" in result.output
    verbose = demo("reader", "--verbose")
    assert verbose.exit_code == 2 and "Traceback (most recent call last)" in verbose.output


def test_a_failed_run_exits_1_with_one_line():
    result = demo("crash")
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == "error: the run failed: RuntimeError: CUDA out of memory " \
                                            "(details: rerun with --verbose)"
    assert "Traceback" in demo("crash", "--verbose").output


def test_an_unreadable_image_prints_one_line(swin_ckpt, tmp_path):
    image = tmp_path / "bad.nii.gz"
    image.write_bytes(b"\x00not a nifti" * 50)
    result = run("adi", "--model", swin_ckpt, "--data", image, "--out", tmp_path / "a", "--roi", "32,32,64")
    assert_one_line_error(result, "Cannot read image")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and lines[-1].endswith("(details: rerun with --verbose)"), result.output


def test_numbers_in_messages_are_plain():
    assert plain_numbers("no rows with padding in [np.float64(48.0), np.int64(3)]") == \
        "no rows with padding in [48.0, 3]"


def test_piped_help_is_not_cut():
    for command in ("capture", "adi", "cka", "evaluate", "ablate", "train", "inspect", "figures", "demo"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "…" not in result.output, (command, result.output)
        assert "Example: attnprobe" in " ".join(result.output.split()), command


def test_venv_is_ignored_by_git():
    assert ".venv/" in (ROOT / ".gitignore").read_text().split()


# --- attnprobe.toml --------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00binary", b"[models.ct\ncheckpoint = "])
def test_a_broken_workspace_file_blocks_only_names(content, swin_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "attnprobe.toml").write_bytes(content)
    paths_only = run("inspect", swin_ckpt)
    assert paths_only.exit_code == 0, paths_only.output
    by_name = run("capture", "--model", "ct", "--data", "cases", "--out", "x.zarr")
    assert_one_line_error(by_name, "is not valid TOML")


# --- inspect and checkpoints -----------------------------------------------------------------------


def test_inspect_on_an_image_says_it_is_an_image(tmp_path):
    for name in ("ct.nii.gz", "renamed.pt"):
        path = tmp_path / name
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "x.nii.gz")
        path.write_bytes((tmp_path / "x.nii.gz").read_bytes())
        assert_one_line_error(run("inspect", path), f"{name} is a NIfTI image, not a checkpoint")


def test_inspect_with_the_wrong_arch_names_the_one_the_keys_look_like(swin_ckpt):
    result = run("inspect", swin_ckpt, "--arch", "smit")
    assert_one_line_error(result, "its keys look like a swin_unetr checkpoint")
    assert "--arch swin_unetr" in result.output


@pytest.fixture(scope="module")
def nan_ckpt(tmp_path_factory, swin_ckpt) -> Path:
    raw = torch.load(swin_ckpt, weights_only=True)
    key = next(k for k, v in raw["state_dict"].items() if v.is_floating_point())
    raw["state_dict"][key][...] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    torch.save(raw, path)
    return path


def test_inspect_reports_non_finite_tensors(nan_ckpt):
    result = run("inspect", nan_ckpt)
    assert result.exit_code == 0
    assert re.search(r"non-finite\s+│\s+1 tensor\(s\) with NaN/inf", result.output), result.output
    assert "warning: 1 tensor(s) hold NaN or inf values" in result.output
    json_result = run("inspect", nan_ckpt, "--json")
    assert '"non_finite": [' in json_result.stdout and '"values":' in json_result.stdout


def test_adi_refuses_a_checkpoint_with_nan_weights(nan_ckpt, datalist, tmp_path):
    result = run("adi", "--model", nan_ckpt, "--data", datalist, "--out", tmp_path / "a", "--roi", "32,32,64")
    assert_one_line_error(result, "has non-finite weights")
    assert not (tmp_path / "a").exists()


def test_adi_store_and_model_conflict(swin_ckpt, tmp_path):
    result = run("adi", "--store", tmp_path / "s.zarr", "--model", swin_ckpt, "--out", tmp_path / "a")
    assert_one_line_error(result, "--store and --model exclude each other")


# --- --json ----------------------------------------------------------------------------------------


def test_adi_prints_json_on_request(swin_ckpt, datalist, tmp_path):
    import json

    adi = run("adi", "--model", swin_ckpt, "--data", datalist, "--out", tmp_path / "a", "--roi", "32,32,64",
              "--limit", 1, "--json")
    assert adi.exit_code == 0, adi.output
    doc = json.loads(adi.stdout)  # nothing else on stdout
    assert {"padding", "stage", "kind", "metric", "mean"} <= set(doc["summary"][0]) and len(doc["files"]) == 4
