"""The trainer's resumable state: last.pt's ``train.state`` layout, and capture/restore of the RNGs
and optimiser (fast, no training run; the kill/resume run is in test_trainer.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from attnprobe.errors import CheckpointError
from attnprobe.train import checkpointing
from attnprobe.train.state import ResumeState, TrainState

# The key order of train.state in every last.pt written so far; old checkpoints must keep resuming.
LAYOUT = ["epoch", "batch", "global_step", "best_dice", "best_epoch", "elapsed", "metrics_rows", "epoch_loss_sum",
          "optimizer", "scheduler", "scaler", "rng"]


def _objects(seed, steps=1):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    for _ in range(steps):
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def test_layout_is_the_checkpoint_layout_and_old_extra_keys_are_ignored():
    counters = TrainState(epoch=1, batch=2, global_step=5, best_dice=0.5, best_epoch=1, elapsed=3.0,
                          metrics_rows=6, epoch_loss_sum=1.5)
    saved = ResumeState(counters, optimizer={"state": {}, "param_groups": []}, scheduler={}, scaler=None, rng={})
    meta = saved.to_metadata()
    assert list(meta) == LAYOUT
    # an older last.pt also held epoch_loss_n, and no scaler
    old = {**{k: v for k, v in meta.items() if k != "scaler"}, "epoch_loss_n": 2}
    back = ResumeState.from_metadata(old)
    assert back.counters == counters and back.scaler is None
    with pytest.raises(CheckpointError, match="incomplete train state; .*got no global_step, rng"):
        ResumeState.from_metadata({k: v for k, v in meta.items() if k not in ("global_step", "rng")})


def test_capture_then_restore_replays_the_rngs_and_the_optimiser():
    _, optimizer, scheduler = _objects(0)
    counters = TrainState(global_step=1, batch=1)
    saved = checkpointing.capture(counters, optimizer, scheduler, None)
    counters.global_step = 99  # the capture is a snapshot
    assert saved.counters.global_step == 1
    draws = (torch.rand(3), np.random.rand(3), random.random())

    _, optimizer2, scheduler2 = _objects(1, steps=3)  # other weights, moments, schedule and RNG history
    assert scheduler2.last_epoch == 3
    restored = checkpointing.restore(saved, optimizer2, scheduler2, None)
    assert restored == saved.counters and restored is not saved.counters
    assert torch.equal(torch.rand(3), draws[0]) and np.array_equal(np.random.rand(3), draws[1])
    assert random.random() == draws[2]
    assert scheduler2.last_epoch == 1 and scheduler2.get_last_lr() == pytest.approx([1e-2 * 0.5])
    exp_avg = [s["exp_avg"] for s in optimizer.state_dict()["state"].values()]
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(exp_avg, optimizer2.state_dict()["state"].values()))
