"""Capture cost, as ratios to the plain forward measured in the same run (issue 17 goal: 1.5x).

    python benchmarks/capture.py                    # tiny preset, 64x64x32, CPU, one thread
    python benchmarks/capture.py --preset swin_unetr --roi 96,96,96 --device cuda

Rounds interleave the three measurements (plain forwards, hooked forwards, a capture of all
attention + output taps to a new Zarr store), so load changes on the machine hit all of
them alike. Prints per case: median and min wall time of each, as a ratio to the plain
forward (median of the per-round ratios, and min over min), the ratio of process CPU time
(all threads: on a busy machine the work ratio is steadier than wall time), plus bytes
written per case and the codec (docs/store.md).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from attnprobe.capture import Probe
from attnprobe.models import build_model
from attnprobe.store import capture_to_store

try:
    from attnprobe.store.writer import COMPRESSORS
except ImportError:  # attnprobe before store schema 2: zarr's default zstd, no checksums
    COMPRESSORS = ()


@dataclass
class Case:
    case_id: str
    image: torch.Tensor
    mask: torch.Tensor


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def clock(fn, device: str) -> tuple[float, float]:
    """Wall time and process CPU time (all threads) of one call."""
    if device == "cuda":
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--roi", default="64,64,32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the issue measures one)")
    parser.add_argument("--dtype", default="float16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    roi = tuple(int(v) for v in args.roi.split(","))
    torch.manual_seed(0)
    model = build_model("swin_unetr", preset=args.preset).to(args.device).eval()
    cases = [Case(f"c{i}", torch.randn(1, *roi), torch.ones(1, *roi, dtype=torch.bool)) for i in range(args.cases)]
    inputs = [c.image[None].to(args.device) for c in cases]
    tmp = Path(tempfile.mkdtemp())
    plain, hooked, capture, written = [], [], [], 0

    def forwards():
        with torch.no_grad():
            for x in inputs:
                model(x)

    def hooked_forwards():
        with torch.no_grad(), Probe(model, keep=False) as probe:
            for x in inputs:
                probe.run(x)

    try:
        forwards()  # warm-up
        for r in range(args.rounds):
            out = tmp / f"r{r}.zarr"
            plain.append(clock(forwards, args.device))
            hooked.append(clock(hooked_forwards, args.device))
            capture.append(clock(lambda out=out: capture_to_store(model, cases, out, device=args.device,
                                                                  dtype=args.dtype), args.device))
            written = folder_bytes(out)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"preset={args.preset} roi={roi} device={args.device} threads={torch.get_num_threads()} "
          f"torch={torch.__version__} cases={args.cases} rounds={args.rounds}")
    print(f"codecs: {', '.join(repr(c) for c in COMPRESSORS) or 'zarr default'} ({args.dtype})")
    print(f"{'per case':<28}{'median ms':>10}{'min ms':>9}{'ratio med':>11}{'ratio min':>11}{'CPU ratio':>11}")
    ratios = {}
    for name, runs in (("plain forward", plain), ("hooked forward (all taps)", hooked),
                       ("capture to zarr", capture)):
        times = [wall / args.cases for wall, _ in runs]
        per_round = [t / p[0] for (t, _), p in zip(runs, plain)]
        cpu = statistics.median(c / p[1] for (_, c), p in zip(runs, plain))
        ratios[name] = statistics.median(per_round)
        print(f"{name:<28}{statistics.median(times) * 1e3:10.1f}{min(times) * 1e3:9.1f}"
              f"{statistics.median(per_round):11.2f}{min(times) / min(w / args.cases for w, _ in plain):11.2f}"
              f"{cpu:11.2f}")
    print(f"written {written / args.cases / 2**20:.1f} MiB per case ({written / args.cases:.0f} bytes)")
    print(f"capture / plain forward (median of per-round ratios): {ratios['capture to zarr']:.2f}")


if __name__ == "__main__":
    main()
