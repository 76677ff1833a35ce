"""torchrun with the gloo backend on CPU, 2 processes, against the single-process result."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from attnprobe import open_store
from attnprobe.store import block_names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc=2, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "attnprobe", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def single(*args, timeout=300):
    cmd = [sys.executable, "-m", "attnprobe", *map(str, args)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_capture_two_ranks_equals_one(swin_ckpt, datalist, tmp_path):
    args = ["--model", swin_ckpt, "--data", datalist, "--taps", "stage1.*", "--taps", "stage3.block0.out",
            "--dtype", "float32"]
    single("capture", *args, "--out", tmp_path / "one.zarr")
    torchrun("capture", *args, "--out", tmp_path / "two.zarr")
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

    args = ["--model", swin_ckpt, "--data", datalist, "--padding-sweep", "0,16", "--roi", "64,64,64"]
    single("adi", *args, "--out", tmp_path / "one")
    torchrun("adi", *args, "--out", tmp_path / "two")
    one = pd.read_csv(tmp_path / "one" / "adi.csv")
    two = pd.read_csv(tmp_path / "two" / "adi.csv")
    pd.testing.assert_frame_equal(one, two)
