"""Saving and restoring what resuming needs besides the weights (a ``last.pt``'s ``train.state``).

The state goes into ordinary attnprobe checkpoint metadata, which holds tensors and plain
builtins only (``torch.load(weights_only=True)`` reads it): RNG states are stored as tensors
and numbers, and mapping keys become strings (:func:`restore` turns the optimizer's back).
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch

from attnprobe.models.checkpoints import read_metadata
from attnprobe.train.recipe import scheduler_state
from attnprobe.train.state import ResumeState, TrainState

__all__ = ["capture", "restore", "read_train_metadata", "rng_state", "set_rng_state"]


def read_train_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``train`` metadata of a checkpoint written by :func:`~attnprobe.train.trainer.train`, or None for others."""
    train_meta = read_metadata(path).get("train")
    return dict(train_meta) if isinstance(train_meta, Mapping) else None


def capture(counters: TrainState, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler,
            scaler: torch.amp.GradScaler | None) -> ResumeState:
    """The run's resumable state now (the global RNG states included)."""
    return ResumeState(counters=dataclasses.replace(counters), optimizer=optimizer.state_dict(), scheduler=scheduler_state(scheduler),
                       scaler=scaler.state_dict() if scaler is not None else None, rng=rng_state())


def restore(saved: ResumeState, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler | None) -> TrainState:
    """Load the saved states into the run's objects and the global RNGs; return a copy of the counters."""
    optimizer.load_state_dict(_optimizer_state(saved.optimizer))
    scheduler.load_state_dict(dict(saved.scheduler))
    if scaler is not None and saved.scaler:
        scaler.load_state_dict(dict(saved.scaler))
    set_rng_state(saved.rng)
    return dataclasses.replace(saved.counters)


def rng_state() -> dict[str, Any]:
    """Global torch, NumPy, Python (and CUDA) RNG states as tensors and numbers."""
    np_state = cast(tuple, np.random.get_state())  # the legacy tuple (the default)
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]), "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gaussian": float(np_state[4]),
        "python": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": py_state[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Set the global RNGs from :func:`rng_state`'s mapping."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_pos"]),
                         int(state["numpy_has_gauss"]), float(state["numpy_cached_gaussian"])))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _optimizer_state(saved: Mapping[str, Any]) -> dict[str, Any]:
    # Checkpoint metadata turns mapping keys into strings; the optimizer matches params by int ids.
    return {"state": {int(k): v for k, v in saved["state"].items()}, "param_groups": saved["param_groups"]}
