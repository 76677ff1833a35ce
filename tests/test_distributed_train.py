"""``attnprobe train`` under torchrun (DDP, gloo on CPU, 2 ranks) against one process.

Both runs use the same global batch (``--batch-size 2``: one volume per rank per step). They
agree up to floating-point order, not bitwise: with identical weights, one forward of two crops
and two forwards of one crop go through differently blocked GEMMs and convolutions (step 1's loss
differs by ~1e-7), and DDP sums gradients per rank, then across ranks. AdamW then divides by
``sqrt(v) + 1e-8`` while about half of this tiny model's gradient entries are below 1e-7, so
last-bit differences in those entries show in their updates. Measured on 2 CPU cores: losses
agree to ~1e-7 relative, the weights after 3 steps differ by ~3.5% of the weight update (max
6.5e-4 with lr 3e-4); training two ranks without the all-reduce gives ~83% and losses that differ
by ~2e-4 from step 2 on, so the tolerances below (1e-5 on losses, 10% of the update) separate
the two. Resuming under DDP is bitwise (checked by hand: 2 steps + resume == 3 uninterrupted
steps on 2 ranks); here the resumed DDP run is the one compared with the single process.
"""

from __future__ import annotations

import pytest
import torch

from attnprobe.models import load_checkpoint
from attnprobe.train.presets import resolve_train_config
from attnprobe.train.trainer import initial_model, rank_batches, read_train_metadata
from tests.helpers import read_csv_rows


def test_rank_batches_split_each_single_process_batch():
    order = [4, 0, 3, 1, 2]
    assert rank_batches(order, 2) == [([4, 0], 2, 2), ([3, 1], 2, 2), ([2], 1, 1)]
    assert rank_batches(order, 2, rank=0, world_size=2) == [([4], 1, 2), ([3], 1, 2), ([2], 1, 1)]
    # rank 1 has nothing in the last step: it runs volume 2 with weight 0
    assert rank_batches(order, 2, rank=1, world_size=2) == [([0], 1, 2), ([1], 1, 2), ([2], 0, 1)]
    for n in range(1, 10):
        order = list(range(n))[::-1]
        for batch_size in range(1, 5):
            single = rank_batches(order, batch_size)
            for world in range(1, batch_size + 1):
                parts = [rank_batches(order, batch_size, rank=r, world_size=world) for r in range(world)]
                for t, (batch, _, size) in enumerate(single):
                    shares = [p[t][0] for p in parts if p[t][1] > 0]
                    # disjoint shares that make up the batch, and DDP's average of the weights is 1
                    assert sorted(v for s in shares for v in s) == sorted(batch)
                    assert all(p[t][2] == size for p in parts)
                    assert sum(p[t][1] * world / size for p in parts) == pytest.approx(world)


@pytest.mark.slow
@pytest.mark.torchrun("train")
def test_two_ranks_follow_one_process_and_resume(torchrun_runs):
    # the runs (tests/helpers.py, torchrun_group_jobs): 7 phantom cases, 5 of them for training, and
    # batch 2: steps of 2, 2 and 1 volumes (the last one on rank 0 only); the 2-rank run stops after
    # step 2, then resumes
    folder, (stopped, resumed) = torchrun_runs.check("train")
    one, two = folder / "one", folder / "two"
    assert stopped.stderr.count("2 ranks") == 1 and stopped.stdout.count("stopped after step 2") == 1
    assert read_train_metadata(folder / "stopped.pt")["state"]["global_step"] == 2  # last.pt then
    assert resumed.stdout.count("finished: 1 epochs, 3 steps") == 1

    # rank 0 alone wrote the files: one row per step and one for validation, as in one process
    r1, r2 = read_csv_rows(one / "metrics.csv"), read_csv_rows(two / "metrics.csv")
    assert [(r["epoch"], r["step"], r["lr"], r["val_dice"] == "") for r in r1] == \
        [(r["epoch"], r["step"], r["lr"], r["val_dice"] == "") for r in r2] == \
        [("1", "1", "0.0003", True), ("1", "2", "0.0003", True), ("1", "3", "0.00015", True),
         ("1", "3", "0.0", False)]
    for a, b in zip(r1, r2):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-5, abs=0)
    assert float(r2[-1]["val_dice"]) == pytest.approx(float(r1[-1]["val_dice"]), abs=1e-3)
    meta = read_train_metadata(two / "last.pt")
    assert meta["world_size"] == 2 and meta["state"]["global_step"] == 3 and meta["n_val"] == 1
    assert (two / "best.pt").is_file() and (two / "config.json").is_file()

    config = resolve_train_config("act", model_preset="tiny", epochs=1, spacing=2.0, num_samples=1, batch_size=2,
                                  seed=5)
    start = initial_model(config, allow_random_init=True)[0].state_dict()
    w1 = load_checkpoint(one / "last.pt")[0].state_dict()
    w2 = load_checkpoint(two / "last.pt")[0].state_dict()
    keys = [k for k, v in start.items() if v.is_floating_point()]
    update = torch.sqrt(sum(((w1[k] - start[k]) ** 2).sum() for k in keys))
    gap = torch.sqrt(sum(((w2[k] - w1[k]) ** 2).sum() for k in keys))
    assert update > 0 and gap / update < 0.1, float(gap / update)
