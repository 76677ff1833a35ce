"""Offline ADI runs in bounded memory: peak RSS does not grow with the store."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.scale import PEAK, synthetic_store


@pytest.mark.slow
def test_peak_memory_does_not_follow_store_size(tmp_path):
    growth = {}
    for mb in (24, 120):
        raw = synthetic_store(tmp_path / f"s{mb}.zarr", mb)
        runs = []
        # allocator noise only adds (a late arena, a sampler tick at the wrong moment): the smaller
        # of two runs is the working set; one arena keeps glibc from parking memory per thread
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / f"s{mb}.zarr")], capture_output=True,
                                 text=True, timeout=300, env={**os.environ, "MALLOC_ARENA_MAX": "1"})
            assert out.returncode == 0, out.stderr[-2000:]
            base, peak, rows = out.stdout.split()
            runs.append(float(peak) - float(base))
        growth[mb] = (min(runs), raw / 2**20)
    (small, small_mb), (large, large_mb) = growth[24], growth[120]
    # five times the data; the working set (a couple of chunks + the frame) stays put
    assert large - small < 0.5 * (large_mb - small_mb), growth
