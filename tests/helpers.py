"""Helpers shared by the test modules: ``from tests.helpers import ...``.

``tests/conftest.py`` puts the repository root on ``sys.path``, so ``tests`` imports as a
namespace package under pytest's ``--import-mode=importlib``. Fixtures live in the conftest;
plain functions live here.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


def torchrun_prefix(nproc: int) -> list[str]:
    """``-m torch.distributed.run`` with ``nproc`` processes on a free local port."""
    return ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}"]


def torchrun_env() -> dict[str, str]:
    """The environment of a launched run: one torch thread per process, unbuffered output."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun_group_jobs(group: str, root: Path, *, swin: Path, smit: Path, datalist: Path,
                        phantoms: Callable[[], Path]) -> tuple[list[list[object]], list[list[object]]]:
    """The runs a distributed test compares: (single-process runs, runs on 2 ranks), in order.

    Each run is the argument list of one ``attnprobe`` command, writing under ``root``.
    ``phantoms()`` makes (once) the phantom MRI datalist the training runs read.
    """
    if group == "capture":
        args = ["capture", "--model", swin, "--data", datalist, "--taps", "stage1.*", "--taps",
                "stage3.block0.out", "--dtype", "float32"]
        return [[*args, "--out", root / "one.zarr"]], [[*args, "--out", root / "two.zarr"]]
    if group == "adi":
        # z 32: the cases (20-32 voxels on z) get more padding at 16 (at 64 every amount gave the same input)
        args = ["adi", "--model", swin, "--data", datalist, "--padding-sweep", "0,16", "--roi", "64,64,32"]
        return [[*args, "--out", root / "one"]], [[*args, "--out", root / "two"]]
    if group in ("cka-pooled", "cka-tokens"):
        options = {
            # pooled features gathered to rank 0 (3 cases x 2 crops: ranks hold 4 and 2 examples)
            # (plus the random-init baseline from the kept reference features, and the case bootstrap)
            "cka-pooled": ["--unit", "pooled", "--estimator", "unbiased", "--crops", "2", "--crop-size", "32,64,32",
                           "--baseline-seeds", "1", "--bootstrap", "100", "--permutations", "50"],
            # token statistics all-reduced across ranks
            "cka-tokens": ["--unit", "tokens", "--estimator", "biased", "--baseline", "none"],
        }[group]
        args = ["cka", "--ref", swin, "--tgt", smit, "--data", datalist, *options]
        return [[*args, "--out", root / "one"]], [[*args, "--out", root / "two"]]
    if group == "train":
        # 5 training volumes and batch 2: steps of 2, 2 and 1 volumes (the last one on rank 0 only);
        # on 2 ranks: stopped after step 2, then resumed to the end
        args = ["train", "--preset", "act", "--model-preset", "tiny", "--init", "none", "--data", phantoms(),
                "--epochs", 1, "--spacing", 2, "--num-samples", 1, "--batch-size", 2, "--seed", 5]
        return [[*args, "--out", root / "one"]], [[*args, "--out", root / "two", "--max-steps", 2],
                                                  [*args, "--out", root / "two", "--resume"]]
    raise KeyError(f"no torchrun group {group!r}")


@dataclass
class RunOutput:
    """What a run printed (for a run on several ranks: every rank's output, rank 0 first)."""

    stdout: str
    stderr: str


@dataclass
class TorchrunRuns:
    """The runs of the ``torchrun_runs`` fixture: every group's single-process runs (made in the
    test process) and its 2-rank runs (all groups in one torchrun launch)."""

    root: Path
    single: dict[str, list[dict]]
    two: dict[str, list[str]]
    results: Path
    launch_output: str

    def check(self, group: str) -> tuple[Path, list[RunOutput]]:
        """``(folder, outputs of the 2-rank runs)`` of ``group``; fails the test, with the output,
        when one of its runs did not exit 0 (or never ran because an earlier job failed)."""
        for i, result in enumerate(self.single[group]):
            if result["code"] != 0:
                pytest.fail(f"{group}: single-process run {i} exited {result['code']}:\n"
                            f"{result['stdout'][-3000:]}{result['stderr'][-3000:]}")
        outputs = []
        for name in self.two[group]:
            ranks = [self.results / f"{name}.rank{r}.json" for r in range(2)]
            if not all(p.is_file() for p in ranks):
                pytest.fail(f"{name}: the 2-rank run did not finish on every rank:\n{self.launch_output[-6000:]}")
            done = [json.loads(p.read_text()) for p in ranks]
            for r, result in enumerate(done):
                if result["code"] != 0:
                    pytest.fail(f"{name}: rank {r} exited {result['code']}:\n"
                                f"{result['stdout'][-3000:]}{result['stderr'][-3000:]}")
            outputs.append(RunOutput("".join(d["stdout"] for d in done), "".join(d["stderr"] for d in done)))
        return self.root / group, outputs


def run_torchrun_groups(groups: list[str], root: Path, *, timeout: int = 1200,
                        **inputs: object) -> TorchrunRuns:
    """Every group's 2-rank runs in one torchrun launch and, while it runs, its single-process runs
    in this process (one torch thread, as each rank has; torch's and numpy's random state and the
    warning filters are restored afterwards). See ``tests/torchrun_jobs.py``."""
    import torch

    from tests.torchrun_jobs import run_command

    jobs, single, two = [], {}, {}
    for group in groups:
        (root / group).mkdir(parents=True)
        ones, twos = torchrun_group_jobs(group, root / group, **inputs)
        single[group] = ones
        two[group] = [f"{group}.{i}" for i in range(len(twos))]
        jobs += [{"name": name, "args": [str(a) for a in args]} for name, args in zip(two[group], twos)]
        if group == "train":  # last.pt of the stopped run, before the resumed run replaces it
            jobs[-2]["keep"] = [str(root / group / "two" / "last.pt"), str(root / group / "stopped.pt")]
    results = root / "results"
    results.mkdir(parents=True)
    (root / "jobs.json").write_text(json.dumps(jobs))
    script = Path(__file__).with_name("torchrun_jobs.py")
    log = root / "launch.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, *torchrun_prefix(2), str(script), str(root / "jobs.json"),
                                 str(results)], stdout=fh, stderr=subprocess.STDOUT, env=torchrun_env(),
                                start_new_session=True)
    try:
        threads = torch.get_num_threads()
        state = np.random.get_state()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                single = {g: [run_command([str(a) for a in args]) for args in runs] for g, runs in single.items()}
        finally:
            torch.set_num_threads(threads)
            np.random.set_state(state)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return TorchrunRuns(root, single, two, results, log.read_text())


# --- inputs ------------------------------------------------------------------------------------


def random_cases(*, seed: int, roi: tuple[int, int, int]) -> list:
    """Three prepared random volumes ``case0..case2`` of different shapes, cropped/padded to ``roi``."""
    from attnprobe.data.preprocess import PreprocessConfig, prepare_array

    rng = np.random.default_rng(seed)
    config = PreprocessConfig(roi=roi, spacing=None)
    shapes = [(50, 60, 30), (64, 40, 20), (40, 64, 32)]
    return [prepare_array(rng.random(s, dtype=np.float32) + 0.1, case_id=f"case{i}", config=config)
            for i, s in enumerate(shapes)]


# --- devices -----------------------------------------------------------------------------------


@contextmanager
def tf32_left_on() -> Iterator[Callable[[], bool]]:
    """CUDA matmuls with TF32 switched on, as many training scripts leave them, for the block;
    yields a check that the setting is still on (attnprobe must restore it after its own float32
    GEMMs). The setting from before is put back at the end."""
    import torch

    mm = torch.backends.cuda.matmul
    flag = "fp32_precision" if hasattr(mm, "fp32_precision") else "allow_tf32"
    before = getattr(mm, flag)
    setattr(mm, flag, "tf32" if flag == "fp32_precision" else True)
    try:
        yield lambda: getattr(mm, flag) in ("tf32", True)
    finally:
        setattr(mm, flag, before)
