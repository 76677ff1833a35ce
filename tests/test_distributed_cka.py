"""``attnprobe cka`` under torchrun (gloo on CPU, 2 processes) against the single-process result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from tests.helpers import launch


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    # pooled features gathered to rank 0 (3 cases x 2 crops: ranks hold 4 and 2 examples)
    # (plus the random-init baseline from the kept reference features, and the case bootstrap)
    ["--unit", "pooled", "--estimator", "unbiased", "--crops", "2", "--crop-size", "32,64,32",
     "--baseline-seeds", "1", "--bootstrap", "100", "--permutations", "50"],
    # token statistics all-reduced across ranks
    ["--unit", "tokens", "--estimator", "biased", "--baseline", "none"],
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
    assert set(one.coords) == set(two.coords)
    for name in set(one.coords) - {"ref", "tgt"}:  # baseline, intervals, p-values
        np.testing.assert_allclose(two.coords[name].values, one.coords[name].values, rtol=1e-10, atol=1e-12)
    for key in ("n", "n_inputs", "n_cases", "unit", "estimator"):
        assert one.attrs[key] == two.attrs[key], key
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s1["diagonal_mean"] == pytest.approx(s2["diagonal_mean"], rel=1e-12)
