"""``attnprobe cka`` under torchrun (gloo on CPU, 2 processes) against the single-process result."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*args, nproc: int | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m attnprobe ARGS``, or under torchrun with ``nproc`` processes."""
    prefix = [sys.executable]
    if nproc is not None:
        prefix += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
                   f"--master_port={free_port()}"]
    cmd = [*prefix, "-m", "attnprobe", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    # pooled features gathered to rank 0 (3 cases x 2 crops: ranks hold 4 and 2 examples)
    ["--unit", "pooled", "--estimator", "unbiased", "--crops", "2", "--crop-size", "32,64,32"],
    # token statistics all-reduced across ranks
    ["--unit", "tokens", "--estimator", "biased"],
], ids=["pooled", "tokens"])
def test_cka_two_ranks_equals_one(swin_ckpt, smit_ckpt, datalist, tmp_path, options):
    args = ["cka", "--ref", swin_ckpt, "--tgt", smit_ckpt, "--data", datalist, *options]
    launch(*args, "--out", tmp_path / "one")
    launch(*args, "--out", tmp_path / "two", nproc=2)
    one = xr.open_dataarray(tmp_path / "one" / "cka.nc", engine="h5netcdf")
    two = xr.open_dataarray(tmp_path / "two" / "cka.nc", engine="h5netcdf")
    assert one.dims == two.dims == ("ref", "tgt") and one.shape == (8, 8)
    assert list(one["ref"].values) == list(two["ref"].values)
    assert list(one["tgt"].values) == list(two["tgt"].values)
    np.testing.assert_allclose(two.values, one.values, rtol=1e-12, atol=1e-13)
    for key in ("n", "n_inputs", "n_cases", "unit", "estimator"):
        assert one.attrs[key] == two.attrs[key], key
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s1["diagonal_mean"] == pytest.approx(s2["diagonal_mean"], rel=1e-12)
