"""The --out / --overwrite rule (issue 14, cases 1 and 4)."""

from __future__ import annotations

import json
import os

import pytest
import zarr

from attnprobe.errors import ConfigError
from attnprobe.results import RECORD_FILE, EvaluationRun, check_out
from attnprobe.results.folders import remove_entries


def _unrelated(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "thesis.tex").write_text("years of work")
    return folder / "thesis.tex"


def test_new_and_empty_folders_are_accepted(tmp_path):
    assert check_out(tmp_path / "new" / "deeper", overwrite=False, kinds=("adi",)).replace == frozenset()
    assert not (tmp_path / "new").exists()  # the check leaves nothing behind; writers create the folder
    assert check_out(tmp_path / "new" / "deeper", overwrite=True, kinds=("adi",)).replace == frozenset()


def test_a_non_empty_folder_needs_overwrite(tmp_path):
    (tmp_path / "adi.csv").write_text("a\n1\n")
    with pytest.raises(ConfigError, match="not empty.*adi.csv.*--overwrite"):
        check_out(tmp_path, overwrite=False, kinds=("adi",))
    assert (tmp_path / "adi.csv").read_text() == "a\n1\n"


def test_overwrite_refuses_unknown_files_and_removes_nothing(tmp_path):
    precious = _unrelated(tmp_path)
    (tmp_path / "adi.csv").write_text("a\n1\n")
    with pytest.raises(ConfigError, match="did not write.*thesis.tex") as err:
        check_out(tmp_path, overwrite=True, kinds=("adi",))
    assert "adi.csv" not in str(err.value).split("unknown")[1]  # only the unknown files are named
    assert precious.read_text() == "years of work" and (tmp_path / "adi.csv").exists()


def test_overwrite_of_a_store_folder_with_foreign_files_is_refused_for_capture(tmp_path):
    precious = _unrelated(tmp_path / "data")
    with pytest.raises(ConfigError, match="thesis.tex"):
        check_out(tmp_path / "data", overwrite=True, kinds=(), store=True)
    assert precious.exists()


def test_a_capture_store_is_recognised(tmp_path):
    store = tmp_path / "s.zarr"
    zarr.open_group(str(store), mode="w", zarr_format=3).attrs["attnprobe_schema"] = 1
    # capture resumes it without --overwrite, and may replace it with
    assert check_out(store, overwrite=False, kinds=(), store=True).replace == frozenset()
    assert check_out(store, overwrite=True, kinds=(), store=True).replace
    # another command refuses to write into a store unless --overwrite
    with pytest.raises(ConfigError, match="is a capture store"):
        check_out(store, overwrite=False, kinds=("adi",))
    # a new store path is not created before its writer lays it out
    check_out(tmp_path / "new.zarr", overwrite=False, kinds=(), store=True)
    assert not (tmp_path / "new.zarr").exists()


def test_a_file_as_out_is_refused_even_with_overwrite(tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="is a file"):
            check_out(path, overwrite=overwrite, kinds=("cka",))
    assert path.read_text() == "keep"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_folder_is_refused_before_computing(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write"):
            check_out(folder, overwrite=False, kinds=("adi",))
    finally:
        folder.chmod(0o700)


def test_a_recorded_run_owns_only_the_files_its_record_lists(tmp_path):
    import pandas as pd

    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "a.nii.gz").write_bytes(b"x")
    EvaluationRun(cases=pd.DataFrame({"case": ["a"], "dice": [0.5]}), summary={"n": 1}).save(
        tmp_path, extra_files=["predictions", "probabilities"])
    listed = json.loads((tmp_path / RECORD_FILE).read_text())["files"]
    assert listed == ["cases.csv", "summary.json", "predictions"]  # probabilities/ was not written
    out = check_out(tmp_path, overwrite=True, kinds=("evaluation",))
    assert out.replace == {"cases.csv", "summary.json", "predictions", "record.json", "manifest.json"}
    # a file the record does not list is someone else's, even with a name the command uses
    (tmp_path / "probabilities").mkdir()
    with pytest.raises(ConfigError, match="probabilities"):
        check_out(tmp_path, overwrite=True, kinds=("evaluation",))
    (tmp_path / "probabilities").rmdir()
    remove_entries(tmp_path, out.replace, keep=["cases.csv"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.csv"]


def test_an_out_that_cannot_be_created_is_refused_before_computing(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="cannot write to --out"):
        check_out(tmp_path / "file.txt" / "run", overwrite=False, kinds=("adi",))
