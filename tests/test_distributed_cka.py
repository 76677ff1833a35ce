"""``attnprobe cka`` under torchrun (gloo on CPU, 2 processes) against the single-process result.

The runs are made once for all distributed tests by the ``torchrun_runs`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr


@pytest.mark.slow
@pytest.mark.parametrize("group", [
    pytest.param("cka-pooled", marks=pytest.mark.torchrun("cka-pooled"), id="pooled"),
    pytest.param("cka-tokens", marks=pytest.mark.torchrun("cka-tokens"), id="tokens"),
])
def test_cka_two_ranks_equals_one(torchrun_runs, group):
    # the options of each group: tests/helpers.py (torchrun_group_jobs)
    folder, _ = torchrun_runs.check(group)
    one = xr.open_dataarray(folder / "one" / "cka.nc", engine="h5netcdf")
    two = xr.open_dataarray(folder / "two" / "cka.nc", engine="h5netcdf")
    assert one.dims == two.dims == ("ref", "tgt") and one.shape == (8, 8)
    assert list(one["ref"].values) == list(two["ref"].values)
    assert list(one["tgt"].values) == list(two["tgt"].values)
    np.testing.assert_allclose(two.values, one.values, rtol=1e-12, atol=1e-13)
    assert set(one.coords) == set(two.coords)
    for name in set(one.coords) - {"ref", "tgt"}:  # baseline, intervals, p-values
        np.testing.assert_allclose(two.coords[name].values, one.coords[name].values, rtol=1e-10, atol=1e-12)
    for key in ("n", "n_inputs", "n_cases", "unit", "estimator"):
        assert one.attrs[key] == two.attrs[key], key
    s1 = json.loads((folder / "one" / "summary.json").read_text())
    s2 = json.loads((folder / "two" / "summary.json").read_text())
    assert s1["diagonal_mean"] == pytest.approx(s2["diagonal_mean"], rel=1e-12)
