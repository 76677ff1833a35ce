"""torchrun with the gloo backend on CPU, 2 processes, against the single-process result.

The runs are made once for all such tests by the ``torchrun_runs`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from attnprobe import open_store
from attnprobe.store import block_names
from tests.helpers import free_port


@pytest.mark.slow
@pytest.mark.torchrun("capture")
def test_capture_two_ranks_equals_one(torchrun_runs):
    folder, _ = torchrun_runs.check("capture")
    one, two = open_store(folder / "one.zarr"), open_store(folder / "two.zarr")
    assert two["done"].values.all()
    assert list(one["case"].values) == list(two["case"].values)
    assert block_names(one) == block_names(two)
    for name in block_names(one):
        for var in one[name].dataset.data_vars:
            np.testing.assert_array_equal(one[name][var].values, two[name][var].values, err_msg=f"{name}/{var}")


@pytest.mark.slow
@pytest.mark.torchrun("adi")
def test_adi_sweep_two_ranks_equals_one(torchrun_runs):
    import pandas as pd

    folder, _ = torchrun_runs.check("adi")
    one = pd.read_csv(folder / "one" / "adi.csv")
    two = pd.read_csv(folder / "two" / "adi.csv")
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
