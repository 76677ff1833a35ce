"""Capture cost, as ratios to the plain forward measured in the same run.

    python benchmarks/capture.py                    # tiny preset, 64x64x32, CPU
    python benchmarks/capture.py --preset swin_unetr --roi 96,96,96 --device cuda

Prints: plain forward time, hooked forward (all taps, no storage), capture of all
attention + output taps to Zarr (float16), each as a ratio to the plain forward, plus
peak RSS and bytes written.
"""

from __future__ import annotations

import argparse
import resource
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


@dataclass
class Case:
    case_id: str
    image: torch.Tensor
    mask: torch.Tensor


def timed(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--roi", default="64,64,32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    roi = tuple(int(v) for v in args.roi.split(","))
    torch.manual_seed(0)
    model = build_model("swin_unetr", preset=args.preset).to(args.device).eval()
    x = torch.randn(1, 1, *roi, device=args.device)
    with torch.no_grad():
        model(x)  # warm-up
        plain = timed(lambda: model(x), args.repeats, args.device)
        with Probe(model, keep=False) as probe:
            hooked = timed(lambda: probe.run(x), args.repeats, args.device)
    cases = [Case(f"c{i}", torch.randn(1, *roi), torch.ones(1, *roi, dtype=torch.bool)) for i in range(args.cases)]
    out = Path(tempfile.mkdtemp()) / "bench.zarr"
    start = time.perf_counter()
    capture_to_store(model, cases, out, device=args.device)
    capture = (time.perf_counter() - start) / args.cases
    written = folder_bytes(out)
    shutil.rmtree(out.parent)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"preset={args.preset} roi={roi} device={args.device} torch={torch.__version__}")
    print(f"{'plain forward':<34}{plain * 1e3:9.1f} ms   x1.00")
    print(f"{'hooked forward (all taps)':<34}{hooked * 1e3:9.1f} ms   x{hooked / plain:.2f}")
    print(f"{'capture to zarr (per case)':<34}{capture * 1e3:9.1f} ms   x{capture / plain:.2f}")
    print(f"peak RSS {peak_mb:.0f} MiB; written {written / 2**20:.1f} MiB for {args.cases} cases "
          f"({written / args.cases / 2**20:.1f} MiB per case)")


if __name__ == "__main__":
    main()
