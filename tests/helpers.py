"""Helpers shared by the test modules: ``from tests.helpers import ...``.

``tests/conftest.py`` puts the repository root on ``sys.path``, so ``tests`` imports as a
namespace package under pytest's ``--import-mode=importlib``. Fixtures live in the conftest;
plain functions live here.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

# --- error messages ----------------------------------------------------------------------------


def assert_message(err: pytest.ExceptionInfo, *needles: str) -> None:
    """An attnprobe error message: it says what was expected and what was received, and holds
    every needle."""
    text = str(err.value)
    assert "expected" in text and "got" in text, text
    for needle in needles:
        assert needle in text, (needle, text)


# --- files -------------------------------------------------------------------------------------


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save ``array`` as float32 NIfTI (identity affine by default), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.eye(4) if affine is None else affine), path)
    return path


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts of strings."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --- the command line, in process --------------------------------------------------------------


def command_app(*register: Callable[[typer.Typer], object]) -> typer.Typer:
    """A Typer app with only the given commands, added as the real app adds them (so that a
    broken sibling command cannot hide the state of the one under test)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def main() -> None:
        """attnprobe"""

    for add in register:
        add(app)
    return app


def cli_runner(app: typer.Typer) -> Callable[..., Result]:
    """``run(*args)``: invoke ``app`` with the arguments as strings."""
    runner = CliRunner()

    def run(*args: object) -> Result:
        return runner.invoke(app, [str(a) for a in args])

    return run


def assert_one_line_error(result: Result, pattern: str, *, fold_whitespace: bool = False) -> None:
    """Exit code 2, no traceback, an ``error:`` line, and ``pattern`` in the output (with runs of
    white space folded to one space when ``fold_whitespace``: rich wraps long lines)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert any(line.startswith("error:") for line in result.output.splitlines()), result.output
    text = " ".join(result.output.split()) if fold_whitespace else result.output
    assert pattern in text, result.output


# --- torchrun ----------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*args: object, nproc: int | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m attnprobe ARGS``, or under torchrun with ``nproc`` processes; must exit 0."""
    prefix = [sys.executable]
    if nproc is not None:
        prefix += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
                   f"--master_port={free_port()}"]
    cmd = [*prefix, "-m", "attnprobe", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# --- inputs ------------------------------------------------------------------------------------


def random_cases(*, seed: int, roi: tuple[int, int, int]) -> list:
    """Three prepared random volumes ``case0..case2`` of different shapes, cropped/padded to ``roi``."""
    from attnprobe.data.preprocess import PreprocessConfig, prepare_array

    rng = np.random.default_rng(seed)
    config = PreprocessConfig(roi=roi, spacing=None)
    shapes = [(50, 60, 30), (64, 40, 20), (40, 64, 32)]
    return [prepare_array(rng.random(s, dtype=np.float32) + 0.1, case_id=f"case{i}", config=config)
            for i, s in enumerate(shapes)]
