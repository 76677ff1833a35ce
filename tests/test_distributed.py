"""torchrun with the gloo backend on CPU, 2 processes, against the single-process result."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from attnprobe import open_store
from attnprobe.store import block_names
from tests.helpers import free_port, launch


@pytest.mark.slow
def test_capture_two_ranks_equals_one(swin_ckpt, datalist, tmp_path):
    args = ["--model", swin_ckpt, "--data", datalist, "--taps", "stage1.*", "--taps", "stage3.block0.out",
            "--dtype", "float32"]
    launch("capture", *args, "--out", tmp_path / "one.zarr")
    launch("capture", *args, "--out", tmp_path / "two.zarr", nproc=2)
    one, two = open_store(tmp_path / "one.zarr"), open_store(tmp_path / "two.zarr")
    assert two["done"].values.all()
    assert list(one["case"].values) == list(two["case"].values)
    assert block_names(one) == block_names(two)
    for name in block_names(one):
        for var in one[name].dataset.data_vars:
            np.testing.assert_array_equal(one[name][var].values, two[name][var].values, err_msg=f"{name}/{var}")


@pytest.mark.slow
def test_adi_sweep_two_ranks_equals_one(swin_ckpt, datalist, tmp_path):
    import pandas as pd

    # z 32: the cases (20-32 voxels on z) get more padding at 16 (at 64 every amount gave the same input)
    args = ["--model", swin_ckpt, "--data", datalist, "--padding-sweep", "0,16", "--roi", "64,64,32"]
    launch("adi", *args, "--out", tmp_path / "one")
    launch("adi", *args, "--out", tmp_path / "two", nproc=2)
    one = pd.read_csv(tmp_path / "one" / "adi.csv")
    two = pd.read_csv(tmp_path / "two" / "adi.csv")
    pd.testing.assert_frame_equal(one, two)



@pytest.mark.slow
def test_an_error_is_one_line_per_rank_and_every_rank_exits_2(tmp_path):
    # Two ranks with the environment torchrun gives them, but without its agent, which stops the
    # other ranks once one fails: so each rank's own output and exit code can be read.
    cmd = [sys.executable, "-m", "attnprobe", "cka", "--ref", "nonexistent-model", "--tgt", "nonexistent-model",
           "--data", str(tmp_path), "--out", str(tmp_path / "out")]
    shared = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**shared, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    try:
        outputs = [out + err for out, err in (p.communicate(timeout=300) for p in procs)]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [2, 2], outputs
    errors = [[line for line in text.splitlines() if line.startswith("error:")] for text in outputs]
    assert len(errors[0]) == 1 and "Unknown model 'nonexistent-model'" in errors[0][0], outputs[0]
    assert errors[1] == [], outputs[1]
    ranked = [line for line in outputs[1].splitlines() if line.startswith("[rank 1] error:")]
    assert len(ranked) == 1 and "Unknown model 'nonexistent-model'" in ranked[0], outputs[1]
