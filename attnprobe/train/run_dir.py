"""The trainer's run folder: which files it owns, when it may be used, and ``metrics.csv``.

A run owns :data:`RUN_FILES` only: ``overwrite`` removes those and leaves anything else in the
folder. ``metrics.csv`` has the columns :data:`METRIC_COLUMNS` (see :mod:`attnprobe.train.trainer`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from attnprobe.errors import ConfigError
from attnprobe.train.presets import TrainConfig

__all__ = ["RUN_FILES", "METRIC_COLUMNS", "MetricsLog", "check_run_dir", "start_run_dir", "check_same_run",
           "truncate_metrics"]

#: files a run writes (the ones ``overwrite=True`` removes)
RUN_FILES = ("config.json", "metrics.csv", "last.pt", "best.pt")
METRIC_COLUMNS = ("epoch", "step", "loss", "val_dice", "lr", "time")


def check_run_dir(out_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse a folder the run may not use (nothing is deleted here)."""
    if resume:
        if not (out_dir / "last.pt").is_file():
            raise ConfigError(f"nothing to resume in {out_dir}", expected="a run folder with last.pt",
                              got="no last.pt", fix="drop --resume to start a new run")
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("run output is not a folder", expected="a folder or a new path", got=str(out_dir))
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"run folder {out_dir} already exists and is not empty",
                          expected="a new or empty folder", got=", ".join(sorted(p.name for p in out_dir.iterdir())[:5]),
                          fix="pass --resume to continue it, --overwrite to replace it, or another --out")


def start_run_dir(out_dir: Path) -> None:
    """Create the folder and remove an earlier run's files (only those; anything else stays)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)


def check_same_run(stored: Mapping[str, Any], config: TrainConfig, data: Mapping[str, Any]) -> None:
    """Refuse to resume a run whose stored config or data differ from this call's."""
    old = TrainConfig.from_dict(stored).as_dict()
    new = config.as_dict()
    diffs = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
    diffs += [f"{k}: {stored.get(k)!r} -> {v!r}" for k, v in data.items() if stored.get(k) != v]
    if diffs:
        raise ConfigError("--resume with settings that differ from the run's", expected="the same command as before",
                          got="; ".join(diffs), fix="repeat the original options, or start a new run")


def truncate_metrics(path: Path, rows: int) -> None:
    """Keep the header and the first ``rows`` rows of ``metrics.csv`` (write the header if it is new)."""
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    header = ",".join(METRIC_COLUMNS) + "\n"
    path.write_text(header + "".join(lines[1:1 + rows]))


class MetricsLog:
    """``metrics.csv`` open for appending, one flushed row at a time.

    With ``write=False`` (every rank but 0 under torchrun) rows go nowhere, so that the
    other ranks run the same code and keep the same counters.
    """

    def __init__(self, path: Path, *, write: bool) -> None:
        self.path, self.enabled = path, write
        self._fh: TextIO | None = None

    def __enter__(self) -> MetricsLog:
        self._fh = self.path.open("a", newline="") if self.enabled else open(os.devnull, "w")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def row(self, epoch: int, step: int, loss: float, val_dice: float | None, lr: float, elapsed: float) -> None:
        """Append one row (``val_dice`` None for a step row)."""
        if self._fh is None:
            raise RuntimeError("MetricsLog.row outside its with-block")
        csv.writer(self._fh).writerow([epoch, step, _fmt(loss), _fmt(val_dice), _fmt(lr), f"{elapsed:.3f}"])
        self._fh.flush()


def _fmt(value: float | None) -> str:
    return "" if value is None else repr(float(value))
