"""Several ``attnprobe`` commands in one torchrun launch (and the same commands in one process).

Each rank of a torchrun launch imports torch, MONAI and attnprobe (seconds of CPU each), which
cost more than the tiny runs the distributed tests compare. So the tests' distributed runs go
through one launch: ``torchrun ... tests/torchrun_jobs.py JOBS.json RESULTS_DIR`` runs every job
of ``JOBS.json`` (a list of ``{"name": ..., "args": [...]}``, optionally with ``"keep": [FILE, COPY]``:
rank 0 copies a file the job wrote before the next job may change it) in order, in one process group, as
``python -m attnprobe ARGS`` would, and writes ``RESULTS_DIR/NAME.rankR.json`` with the exit code
and that rank's stdout and stderr. The process group outlives the commands (they join it and
never leave it), so the jobs run one after the other on every rank. A job that fails on a rank
ends that rank at once (exit 1): torchrun then stops the others, so no rank waits in a
collective the failed one will never reach; the jobs after it have no results.

:func:`run_command` runs one command in the calling process (the tests' single-process runs).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import traceback
from pathlib import Path


def run_command(args: list[str]) -> dict:
    """``attnprobe ARGS`` in this process: ``{"code", "stdout", "stderr"}`` (code 0 on success).

    Output is read from ``sys.stdout``/``sys.stderr`` while the command runs (rich and click look
    them up at each write). An exception that escapes the command becomes code 1 with its
    traceback at the end of stderr.
    """
    from attnprobe.cli.app import app

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = app([str(a) for a in args], prog_name="attnprobe", standalone_mode=False)
        except SystemExit as exc:  # sys.exit inside a command
            code = exc.code
        except BaseException:  # noqa: BLE001 - reported to the test, not swallowed
            traceback.print_exc(file=err)
            code = 1
    return {"code": int(code or 0), "stdout": out.getvalue(), "stderr": err.getvalue()}


def main(jobs_path: str, results_dir: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    results = Path(results_dir)
    for job in json.loads(Path(jobs_path).read_text()):
        result = run_command(job["args"])
        (results / f"{job['name']}.rank{rank}.json").write_text(json.dumps(result))
        if result["code"] != 0:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        if job.get("keep") and rank == 0:  # the commands return once rank 0's files are written
            shutil.copyfile(*job["keep"])


if __name__ == "__main__":
    main(*sys.argv[1:])
