"""Offline ADI runs in bounded memory: peak RSS does not grow with the store."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.scale import MEASURE_PEAK, synthetic_store

# One interpreter imports attnprobe (and torch) once, then measures each run in a fork of itself:
# a fresh process per run, as the benchmark has (benchmarks/scale.py), without one import of torch
# per run. A fork starts with its parent's resident pages, so its growth is that of the run alone.
MEASURE = MEASURE_PEAK + """
for path in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            print(*measure(path), flush=True)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"the run on {path} failed")
"""


@pytest.mark.slow
def test_peak_memory_does_not_follow_store_size(tmp_path):
    sizes = (24, 120)
    raw = {mb: synthetic_store(tmp_path / f"s{mb}.zarr", mb) for mb in sizes}
    # allocator noise only adds (a late arena, a sampler tick at the wrong moment): the smaller
    # of two runs is the working set; one arena keeps glibc from parking memory per thread
    paths = [str(tmp_path / f"s{mb}.zarr") for mb in sizes for _ in range(2)]
    out = subprocess.run([sys.executable, "-c", MEASURE, *paths], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "MALLOC_ARENA_MAX": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")[:4]
    assert len(lines) == 4, out.stdout
    runs = [float(peak) - float(base) for base, peak, _ in (line.split() for line in lines)]
    growth = {mb: (min(runs[2 * i:2 * i + 2]), raw[mb] / 2**20) for i, mb in enumerate(sizes)}
    (small, small_mb), (large, large_mb) = growth[24], growth[120]
    # five times the data; the working set (a couple of chunks + the frame) stays put
    assert large - small < 0.5 * (large_mb - small_mb), growth
