"""What a training run carries from step to step, saves for resuming, and reports.

:class:`TrainState` holds the run's counters; :class:`ResumeState` is everything ``last.pt``
keeps besides the weights (the counters plus optimizer, scheduler, scaler and RNG states), in
the checkpoint's ``train.state`` layout (described in :mod:`attnprobe.train.trainer`).
:class:`StepInfo`, :class:`EpochInfo` and :class:`TrainResult` are what a run reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnprobe.errors import CheckpointError
from attnprobe.models.checkpoints import LoadReport
from attnprobe.train.presets import TrainConfig

__all__ = ["TrainState", "ResumeState", "StepInfo", "EpochInfo", "TrainResult"]


@dataclass
class TrainState:
    """The counters of a run (saved in ``last.pt``; a resumed run starts from them).

    Attributes
    ----------
    epoch
        Completed epochs, i.e. the 0-based index of the epoch in progress.
    batch
        Steps done in the epoch in progress (a resumed run skips them).
    global_step
        Steps done in total.
    best_dice, best_epoch
        Best validation Dice so far and its 1-based epoch (None before any validation).
    elapsed
        Seconds of training so far, summed over resumed sessions.
    metrics_rows
        Rows of ``metrics.csv`` that belong to this state (resuming cuts the file back to them).
    epoch_loss_sum
        Sum of the step losses of the epoch in progress (its mean is the validation row's loss).
    """

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    best_dice: float | None = None
    best_epoch: int | None = None
    elapsed: float = 0.0
    metrics_rows: int = 0
    epoch_loss_sum: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The counters by name, in the order ``last.pt`` stores them."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ResumeState:
    """Everything ``last.pt`` holds for resuming besides the weights (its ``train.state``).

    Attributes
    ----------
    counters
        The run's :class:`TrainState` at the step boundary that was saved.
    optimizer, scheduler, scaler
        ``state_dict()`` of each (``scaler`` None without AMP; the scheduler without its
        multiplier functions, which the config rebuilds).
    rng
        Global torch, NumPy, Python (and CUDA) RNG states as tensors and numbers.
    """

    counters: TrainState
    optimizer: Mapping[str, Any]
    scheduler: Mapping[str, Any]
    scaler: Mapping[str, Any] | None
    rng: Mapping[str, Any]

    def to_metadata(self) -> dict[str, Any]:
        """The ``train.state`` mapping of ``last.pt``: counters first, then the object states."""
        return {**self.counters.as_dict(), "optimizer": self.optimizer, "scheduler": self.scheduler,
                "scaler": self.scaler, "rng": self.rng}

    @classmethod
    def from_metadata(cls, saved: Mapping[str, Any], *, path: str | Path = "last.pt") -> ResumeState:
        """Read a ``train.state`` mapping; keys an older version stored besides these (``epoch_loss_n``) are ignored.

        Raises
        ------
        CheckpointError
            A counter or a required state is missing.
        """
        names = [f.name for f in dataclasses.fields(TrainState)]
        missing = [k for k in (*names, "optimizer", "scheduler", "rng") if k not in saved]
        if missing:
            raise CheckpointError(f"{path} holds an incomplete train state", expected="a last.pt written by train",
                                  got=f"no {', '.join(missing)}", fix="start a new run with --overwrite")
        return cls(counters=TrainState(**{k: saved[k] for k in names}), optimizer=saved["optimizer"],
                   scheduler=saved["scheduler"], scaler=saved.get("scaler"), rng=saved["rng"])


@dataclass(frozen=True)
class StepInfo:
    """Reported after every optimisation step."""

    epoch: int
    step: int
    total_steps: int
    batch: int
    n_batches: int
    loss: float
    lr: float
    elapsed: float


@dataclass(frozen=True)
class EpochInfo:
    """Reported at the end of every epoch."""

    epoch: int
    step: int
    mean_loss: float
    val_dice: float | None
    best_dice: float | None
    elapsed: float


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`~attnprobe.train.trainer.train`.

    Attributes
    ----------
    out_dir, last, best, metrics
        Run folder and files (``best`` is None when no validation ran).
    finished
        False when the run stopped early (``stop_after_steps``) and can be resumed.
    epochs_done, steps_done
        Completed epochs and optimisation steps (over all sessions).
    best_dice, best_epoch
        Best validation Dice and its (1-based) epoch, None without validation.
    load_report
        Report of the initial checkpoint load (None for random init or a resumed run).
    config
        The run's configuration.
    """

    out_dir: Path
    last: Path
    best: Path | None
    metrics: Path
    finished: bool
    epochs_done: int
    steps_done: int
    best_dice: float | None
    best_epoch: int | None
    load_report: LoadReport | None
    config: TrainConfig
