"""`attnprobe verify`: the table, --json, exit codes, --repair; `capture` refusing another capture."""

from __future__ import annotations

import json
import shutil

from attnprobe.cli.app import app
from attnprobe.store import capture_to_store
from tests.helpers import assert_one_line_error, cli_runner
from tests.store.store_helpers import make_cases, tiny_model

run = cli_runner(app)


def test_verify_reports_bad_samples_and_repairs_them(tmp_path):
    path = capture_to_store(tiny_model(), make_cases(2), tmp_path / "s.zarr", taps=["stage3.block0.out"])
    result = run("verify", path)
    assert result.exit_code == 0, result.output
    assert "2 of 2 samples done" in result.output and "0 bad sample(s)" in result.output
    chunk = path / "stage3.block0/out/c/1/0/0/0/0"
    chunk.write_bytes(chunk.read_bytes()[:-3])
    result = run("verify", path)
    assert result.exit_code == 1, result.output
    assert "case1" in result.output and "CRC32C" in result.output and "--repair" in result.output
    result = run("verify", path, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert [b["case"] for b in report["bad"]] == ["case1"] and not report["ok"]
    result = run("verify", path, "--repair")
    assert result.exit_code == 0, result.output
    assert "marked 1 sample(s) as not done" in result.output
    result = run("verify", path, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["done"] == 1


def test_verify_of_something_else_is_one_line(tmp_path):
    assert_one_line_error(run("verify", tmp_path / "missing.zarr"), "no store at")
    (tmp_path / "plain").mkdir()
    assert_one_line_error(run("verify", tmp_path / "plain"), "is not a zarr store")


def test_capture_refuses_to_resume_with_other_spacing_or_changed_files(swin_ckpt, datalist, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(datalist.parent, data)
    out = tmp_path / "run.zarr"
    args = ("capture", "--model", swin_ckpt, "--data", data / "datalist.json", "--out", out,
            "--taps", "stage3.block0.out", "--limit", "2")
    result = run(*args)
    assert result.exit_code == 0, result.output
    result = run(*args, "--spacing", "1.5")
    assert_one_line_error(result, "spacing: stored (1.0, 1.0, 1.0) vs now (1.5, 1.5, 1.5)", fold_whitespace=True)
    assert "intensity" not in result.output
    (data / "case1.nii.gz").write_bytes((data / "case0.nii.gz").read_bytes())
    assert_one_line_error(run(*args), "file of case case1: stored", fold_whitespace=True)
