"""The optimisation recipe of a :class:`~attnprobe.train.presets.TrainConfig`: loss and learning rate.

Both schedules are multipliers of ``config.lr`` applied by a ``LambdaLR`` stepped once per
optimisation step (docs/conventions.md compares them): ``"step"`` warms up linearly then decays
by a cosine per step; ``"epoch-paper"`` is the paper's per-epoch schedule.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

from attnprobe.train.presets import TrainConfig

__all__ = ["lr_factor", "paper_lr_factor", "make_loss", "make_scheduler", "scheduler_state"]


def lr_factor(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier before optimisation step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, then
    cosine decay from 1 to 0 over the remaining steps.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def paper_lr_factor(epoch: int, *, epochs: int, warmup_epochs: int) -> float:
    """Learning-rate multiplier of the paper's schedule in epoch ``epoch`` (0-based).

    Linear warm-up from 0 over ``warmup_epochs`` epochs (``epoch / (warmup_epochs - 1)``, so
    epoch 0 has lr 0), then cosine decay to 0 at ``epochs``; stepped once per epoch (the
    ``LinearWarmupCosineAnnealingLR`` of the Swin UNETR fine-tuning code with
    ``warmup_start_lr=0, eta_min=0``).
    """
    if epoch < warmup_epochs:
        return epoch / max(1, warmup_epochs - 1)
    span = max(1, epochs - warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (epoch - warmup_epochs) / span)))


def _step_factor(step: int, *, total_steps: int, warmup_steps: int) -> float:
    return lr_factor(step, total_steps=total_steps, warmup_steps=warmup_steps)


def _epoch_paper_factor(step: int, *, n_batches: int, epochs: int, warmup_epochs: int) -> float:
    # LambdaLR steps once per optimisation step; the factor only changes between epochs
    return paper_lr_factor(step // n_batches, epochs=epochs, warmup_epochs=warmup_epochs)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, *,
                   n_batches: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The ``LambdaLR`` of ``config.schedule`` for a run of ``n_batches`` steps per epoch."""
    if config.schedule == "epoch-paper":
        warmup = round(config.warmup_fraction * config.epochs)
        factor = functools.partial(_epoch_paper_factor, n_batches=n_batches, epochs=config.epochs,
                                   warmup_epochs=warmup)
    else:
        total_steps = n_batches * config.epochs
        warmup = max(1, round(config.warmup_fraction * total_steps)) if config.warmup_fraction > 0 else 0
        factor = functools.partial(_step_factor, total_steps=total_steps, warmup_steps=warmup)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The scheduler's state without its multiplier functions (rebuilt from the config on resume)."""
    # torch stores a plain function as None and a partial as its (empty) __dict__; either way: None
    return {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"} | {"lr_lambdas": [None]}


def make_loss(name: str) -> nn.Module:
    """The segmentation loss of a :class:`TrainConfig` (``docs/conventions.md``).

    ``"dicece"``: MONAI ``DiceCELoss`` with its defaults (softmax, one-hot target);
    ``"dicece-paper"``: the paper's ``DiceCELoss(squared_pred=True, smooth_nr=0, smooth_dr=1e-6)``.
    """
    from monai.losses import DiceCELoss

    if name == "dicece-paper":
        return DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6)
    return DiceCELoss(to_onehot_y=True, softmax=True)
