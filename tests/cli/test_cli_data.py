"""`attnprobe data phantoms` and `attnprobe data extent` end to end."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from attnprobe.cli.app import app
from tests.helpers import assert_one_line_error, cli_runner

run = cli_runner(app)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    result = run("data", "phantoms", "--n", 3, "--out", out, "--seed", 1, "--modality", "mri", "--shape", "32,32,16")
    assert result.exit_code == 0, result.output
    return out


def test_phantoms_write_a_datalist(phantom_dir):
    datalist = phantom_dir / "datalist_mri.json"
    assert datalist.is_file() and not (phantom_dir / "datalist_ct.json").exists()
    lists = json.loads(datalist.read_text())
    entries = [e for split in ("training", "validation", "test") for e in lists[split]]
    assert sorted(e["case"] for e in entries) == ["phantom_000", "phantom_001", "phantom_002"]
    assert all((phantom_dir / e["image"]).is_file() and (phantom_dir / e["label"]).is_file() for e in entries)


def test_phantoms_bad_shape_is_one_line():
    assert_one_line_error(run("data", "phantoms", "--out", "unused", "--shape", "32,32"), "--shape")


def test_extent_reports_and_writes_tables(phantom_dir, tmp_path):
    result = run("data", "extent", phantom_dir / "datalist_mri.json", "--arch", "swin_unetr", "--model-preset", "tiny",
                 "--candidates", "64x64x64,64x64x32", "--spacing", 2.0, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "recommended crop" in result.output and "64x64x32" in result.output
    extents = pd.read_csv(tmp_path / "extent.csv")
    eff = pd.read_csv(tmp_path / "efficiency.csv")
    assert len(extents) == 3 and set(eff.candidate) == {"64x64x64", "64x64x32"}
    assert set(eff.stage) == {0, 1, 2, 3} and (eff.n_cases == 3).all()
    # extents at 2 mm agree with the phantoms' own axial extents to within a voxel or two
    truth = {c["case"]: c["axial_extent_mm"] for c in json.loads((phantom_dir / "phantoms.json").read_text())["cases"]}
    for row in extents.itertuples():
        assert abs(row.extent_z_mm - truth[row.case]) <= 4.0
        assert row.extent_z_mm == 2.0 * row.size_z
    assert eff.efficiency_mean.between(0, 1).all() and eff.empty_window_fraction_mean.between(0, 1).all()


def test_extent_bad_candidates_are_one_line(phantom_dir):
    assert_one_line_error(run("data", "extent", phantom_dir / "datalist_mri.json", "--candidates", "96x96"),
                          "--candidates")
    assert_one_line_error(run("data", "extent", phantom_dir / "datalist_mri.json", "--candidates", "96x96x40"),
                          "divisible by 32")
    assert_one_line_error(run("data", "extent", phantom_dir / "datalist_mri.json", "--arch", "swin"),
                          "unknown architecture")


def test_phantoms_refuse_a_non_empty_out_and_foreign_files(phantom_dir, tmp_path):
    from attnprobe.results import kind_of

    assert kind_of(phantom_dir) == "phantoms"
    before = sorted(p.name for p in phantom_dir.iterdir())
    assert_one_line_error(run("data", "phantoms", "--n", 2, "--out", phantom_dir, "--seed", 5, "--shape", "32,32,16"),
                          "not empty")
    assert sorted(p.name for p in phantom_dir.iterdir()) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.nii.gz").write_bytes(b"scan")
    assert_one_line_error(run("data", "phantoms", "--n", 2, "--out", other, "--overwrite", "--shape", "32,32,16"),
                          "keep.nii.gz")
    assert (other / "keep.nii.gz").read_bytes() == b"scan"


def test_phantoms_overwrite_leaves_no_orphan_cases(tmp_path):
    out = tmp_path / "ph"
    assert run("data", "phantoms", "--n", 3, "--out", out, "--modality", "mri", "--shape", "16,16,8").exit_code == 0
    first = {p.name for p in out.rglob("*.nii.gz")}
    result = run("data", "phantoms", "--n", 2, "--out", out, "--modality", "mri", "--shape", "16,16,8", "--overwrite")
    assert result.exit_code == 0, result.output
    second = {p.name for p in out.rglob("*.nii.gz")}
    assert len(second) < len(first) and second <= first
