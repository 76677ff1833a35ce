"""Kill ``adi`` and ``cka`` at random points; the rerun must give what an uninterrupted run gives.

The kills are in-process: the k-th ``os.replace`` of the save into ``--out`` raises (a process
killed between two files), a writer dies half way through its file, or the model's forward
raises in the middle of the computation. Saves are atomic (docs/results.md, "Output folders"):
after a kill ``--out`` holds no ``record.json`` and no half file; a folder left by a save that
did not finish is replaced with ``--overwrite``; a kill before the save leaves ``--out`` empty
and a plain rerun works.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from monai.networks.nets.swin_unetr import WindowAttention

from attnprobe.cli import adi as adi_cli
from attnprobe.cli import cka as cka_cli
from attnprobe.results.files import TMP_PREFIX
from tests.helpers import assert_one_line_error, cli_runner, command_app
from tests.reliability.conftest import TOTALS, count_error

pytestmark = pytest.mark.usefixtures("one_thread")

run = cli_runner(command_app(adi_cli.register, cka_cli.register))
SEEDS = range(2)
# Files whose bytes hold the run's time (manifest.json) or nothing of the result (record.json).
TIMED = {"manifest.json", "record.json"}


class InjectedCrash(Exception):
    """Stands in for a process that died here."""


@pytest.fixture(scope="module")
def commands(swin_ckpt, datalist):
    """The two commands at their smallest settings (``--out`` appended by the tests)."""
    return {
        "adi": ["adi", "--model", swin_ckpt, "--data", datalist, "--roi", "32,32,64", "--limit", 1,
                "--padding-sweep", "0"],
        "cka": ["cka", "--ref", swin_ckpt, "--tgt", swin_ckpt, "--data", datalist, "--limit", 2, "--crops", 1,
                "--crop-size", "32,64,32", "--baseline", "none", "--estimator", "biased"],
    }


@pytest.fixture(scope="module")
def references(commands, tmp_path_factory):
    """Uninterrupted runs and the number of ``os.replace`` calls each save makes into ``--out``."""
    refs = {}
    original = os.replace
    for name, args in commands.items():
        out = tmp_path_factory.mktemp(f"ref_{name}") / "out"
        calls = []

        def counting(src, dst, *a, _out=out, _calls=calls, **k):
            if Path(dst).parent == _out:
                _calls.append(dst)
            return original(src, dst, *a, **k)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "replace", counting)
            result = run(*args, "--out", out)
        assert result.exit_code == 0, result.output
        refs[name] = (out, len(calls))
    return refs


def assert_same_result(out: Path, ref: Path) -> None:
    """Same files, same bytes (except the run's times), and no temporary file left."""
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in ref.iterdir())
    for name in set(names) - TIMED:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def assert_no_partial_result(out: Path, ref: Path) -> None:
    """What a kill left: no record.json, no temporary, every file there whole (as the reference)."""
    if not out.exists():
        return
    names = [p.name for p in out.iterdir()]
    assert "record.json" not in names, names
    assert not [n for n in names if n.startswith(TMP_PREFIX)], names
    for name in set(names) - TIMED:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), f"half file {name}"


def rerun(args, out: Path, ref: Path) -> None:
    """A plain rerun when the kill left nothing, else refused until ``--overwrite``; then identical."""
    if out.exists() and any(out.iterdir()):
        refused = run(*args, "--out", out)
        assert_one_line_error(refused, "not empty")
        result = run(*args, "--out", out, "--overwrite")
    else:
        result = run(*args, "--out", out)
    assert result.exit_code == 0, result.output
    assert_same_result(out, ref)
    TOTALS["survived"] += 1


def killed(args, out: Path, monkeypatch) -> None:
    """Run with the fault in place; the crash must come out (not be swallowed into exit 0)."""
    TOTALS["faults"] += 1
    result = run(*args, "--out", out)
    monkeypatch.undo()
    assert result.exit_code != 0, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        count_error(result.exception)


@pytest.mark.parametrize("name", ["adi", "cka"])
@pytest.mark.parametrize("seed", SEEDS)
def test_a_save_killed_at_a_random_rename_leaves_no_partial_result(name, seed, commands, references, tmp_path,
                                                                 monkeypatch):
    ref, n_calls = references[name]
    kill_at = random.Random(seed).randrange(1, n_calls + 1)
    out = tmp_path / "out"
    original = os.replace
    count = [0]

    def dying(src, dst, *a, **k):
        if Path(dst).parent == out:
            count[0] += 1
            if count[0] == kill_at:
                raise InjectedCrash(f"killed at rename {kill_at} of {n_calls} ({Path(dst).name})")
        return original(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", dying)
    killed(commands[name], out, monkeypatch)
    assert count[0] == kill_at
    assert_no_partial_result(out, ref)
    rerun(commands[name], out, ref)


def test_a_writer_killed_half_way_leaves_no_half_file(commands, references, tmp_path, monkeypatch):
    """The netCDF writer writes half a file and dies: the half file must never reach ``--out``."""
    import xarray as xr

    name = "adi"  # cka saves through the same RunRecord.save
    ref, _ = references[name]
    out = tmp_path / "out"

    def half(self, path=None, *a, **k):
        Path(path).write_bytes(b"\x89HDF\r\n" + b"\0" * 500)  # a header and no more
        raise InjectedCrash("killed half way through a netCDF file")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", half)
    monkeypatch.setattr(xr.DataArray, "to_netcdf", half)
    killed(commands[name], out, monkeypatch)
    assert_no_partial_result(out, ref)
    rerun(commands[name], out, ref)


@pytest.mark.parametrize(("name", "seed"), [("adi", 0), ("adi", 1), ("cka", 0)])
def test_a_run_killed_in_its_forward_leaves_out_empty(name, seed, commands, references, tmp_path, monkeypatch):
    ref, _ = references[name]
    kill_at = random.Random(seed).randrange(1, 9)  # a forward runs 8 blocks
    out = tmp_path / "out"
    original = WindowAttention.forward
    count = [0]

    def dying(self, *a, **k):
        count[0] += 1
        if count[0] == kill_at:
            raise InjectedCrash(f"killed in window attention {kill_at}")
        return original(self, *a, **k)

    monkeypatch.setattr(WindowAttention, "forward", dying)
    killed(commands[name], out, monkeypatch)
    assert count[0] == kill_at
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    rerun(commands[name], out, ref)
