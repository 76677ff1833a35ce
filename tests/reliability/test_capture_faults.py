"""Kill a capture at random points; the rerun must give the store an uninterrupted run gives.

Most kills are in-process: the k-th chunk or metadata write of the capture raises (the
writer thread dies as a killed process would, the finished samples stay). One test kills a
real capture process with SIGKILL.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from zarr.storage import LocalStore

from attnprobe.errors import AttnprobeError
from attnprobe.store import capture_to_store, open_store
from attnprobe.store.verify import verify_store
from tests.reliability.conftest import TOTALS, count_error
from tests.store.store_helpers import TAPS, assert_same_store

ROOT = Path(__file__).resolve().parents[2]


class InjectedCrash(Exception):
    """Stands in for a process that died at this write."""


@pytest.fixture(scope="module")
def writes_per_capture(reference, model, cases, tmp_path_factory, monkeypatch_module):
    """How many store writes a whole capture makes (the range kills are drawn from)."""
    calls = []
    original = LocalStore.set

    async def counting(self, key, value):
        calls.append(key)
        return await original(self, key, value)

    monkeypatch_module.setattr(LocalStore, "set", counting)
    capture_to_store(model, cases, tmp_path_factory.mktemp("count") / "s.zarr", taps=TAPS)
    monkeypatch_module.undo()
    return len(calls)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.parametrize("seed", range(3))
def test_a_capture_killed_at_a_random_write_resumes_to_the_same_store(
        seed, reference, model, cases, writes_per_capture, tmp_path, monkeypatch):
    kill_at = random.Random(seed).randrange(1, writes_per_capture)
    original = LocalStore.set
    count = [0]

    async def dying(self, key, value):
        count[0] += 1
        if count[0] == kill_at:
            raise InjectedCrash(f"killed at write {kill_at} ({key})")
        return await original(self, key, value)

    out = tmp_path / "s.zarr"
    monkeypatch.setattr(LocalStore, "set", dying)
    TOTALS["faults"] += 1
    with pytest.raises((InjectedCrash, AttnprobeError)):
        capture_to_store(model, cases, out, taps=TAPS)
    monkeypatch.undo()
    if out.exists():  # what the kill left is consistent: every sample marked done is intact
        assert verify_store(out).ok
    assert not out.with_name(out.name + ".lock").exists()
    capture_to_store(model, cases, out, taps=TAPS)
    assert_same_store(reference, out)
    TOTALS["survived"] += 1


def test_disk_full_while_writing_a_sample_is_one_line_and_resumable(reference, model, cases, tmp_path, monkeypatch):
    original = LocalStore.set

    async def full(self, key, value):
        if "/c/" in key and key.startswith("stage3"):
            raise OSError(28, "No space left on device")
        return await original(self, key, value)

    out = tmp_path / "s.zarr"
    monkeypatch.setattr(LocalStore, "set", full)
    TOTALS["faults"] += 1
    with pytest.raises(AttnprobeError, match="No space left on device") as info:
        capture_to_store(model, cases, out, taps=TAPS)
    count_error(info.value)
    monkeypatch.undo()
    assert not open_store(out)["done"].values.any()
    capture_to_store(model, cases, out, taps=TAPS)
    assert_same_store(reference, out)
    TOTALS["survived"] += 1


SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from attnprobe.store import capture_to_store
    from tests.store.store_helpers import TAPS, make_cases, tiny_model

    def progress(case_id, skipped):
        print(case_id, flush=True)
        time.sleep(30)  # the parent kills us here, after the first sample

    capture_to_store(tiny_model(), make_cases(2), {out!r}, taps=TAPS, on_sample=progress)
""")


def test_a_real_sigkill_leaves_a_resumable_store(reference, model, cases, tmp_path):
    out = tmp_path / "s.zarr"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(root=str(ROOT), out=str(out))],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "case0", line
        time.sleep(0.2)
        TOTALS["faults"] += 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.with_name(out.name + ".lock").exists()  # left by the killed process: taken over below
    assert verify_store(out).ok
    calls = []
    capture_to_store(model, cases, out, taps=TAPS, on_sample=lambda c, s: calls.append((c, s)))
    assert calls[0][0] == "case0"
    assert_same_store(reference, out)
    TOTALS["survived"] += 1
