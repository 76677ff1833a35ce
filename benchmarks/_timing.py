"""Timing shared by the benchmarks: interleaved rounds, median and min, CPU or CUDA.

On the CPU each call is timed in single-thread CPU time (``time.thread_time``), which other
processes on a shared machine disturb far less than wall time; on CUDA with CUDA events.
Rounds interleave the candidates, in a new (seeded) order each round (A B C, C A B, B C A, ...),
so that load hits all of them alike and none always follows the same neighbour.
Work shorter than :data:`MIN_SLOT` is called several times per round (as ``timeit`` does) and
reported per call: one call of a fraction of a millisecond times its first-touch costs and
the clock's granularity as much as the work.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)


MIN_SLOT = 0.02  # seconds: shorter work is repeated within a round and timed per call


def _time_once(fn: Callable[[], object], device: torch.device, number: int = 1) -> tuple[float, object]:
    """Seconds per call of ``fn`` over ``number`` back-to-back calls, and the last result."""
    out: object = None
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(number):
            out = fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3 / number, out
    t0 = time.thread_time()
    for _ in range(number):
        out = fn()
    return (time.thread_time() - t0) / number, out


def race(fns: dict[str, Callable[[], object]], device: torch.device, rounds: int,
         warmup: int = 3) -> tuple[dict[str, Timing], dict[str, object]]:
    """Time every candidate ``rounds`` times, interleaved; returns timings (seconds per call)
    and last results. Each candidate is called enough times per round to fill :data:`MIN_SLOT`,
    judged from its fastest warm-up call (the first call of a size pays one-off costs)."""
    out: dict[str, object] = {}
    fastest = dict.fromkeys(fns, float("inf"))
    for _ in range(max(warmup, 1)):
        for name, fn in fns.items():
            dt, out[name] = _time_once(fn, device)
            fastest[name] = min(fastest[name], dt)
    number = {name: max(1, min(1000, int(MIN_SLOT / max(dt, 1e-7)))) for name, dt in fastest.items()}
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = random.Random(0)
    names = list(fns)
    for _ in range(rounds):
        # a new order each round: no candidate always runs right after the same one
        order.shuffle(names)
        for name in names:
            dt, out[name] = _time_once(fns[name], device, number[name])
            times[name].append(dt)
    return {k: Timing(v) for k, v in times.items()}, out


def ratio(a: Timing, b: Timing) -> str:
    """``median (min)`` of a / b."""
    return f"{a.median / b.median:5.2f} ({a.min / b.min:4.2f})"


def setup_device(name: str, threads: int) -> torch.device:
    """The device to run on; on the CPU, ``threads`` torch threads (1 for CPU-time ratios)."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if threads > 0:
        torch.set_num_threads(threads)
    return device
