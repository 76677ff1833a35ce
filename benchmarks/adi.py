"""Benchmark: online ADI during a padding sweep, and offline ADI from a capture store.

Measures, in one run on the CPU (or ``--device cuda``):

1. the wall time of a padding sweep with online reduction (:func:`attnprobe.metrics.sweep.padding_sweep`)
   against the very same forwards without any hook, and their ratio (the two alternate input
   by input, so other load on a shared machine hits both alike);
2. the peak resident memory of one plain and one hooked forward, each in a fresh process
   (CPU only);
3. offline ADI throughput from a store of the same cases (GB of attention read per second),
   for float16 and float32 stores.

Cases are synthetic MRI phantoms (:mod:`attnprobe.data.phantoms`) prepared at the ROI; the
model is a randomly initialised tiny Swin UNETR (feature 12) unless ``--preset`` says otherwise.
Also prints the stage ADI (padding kinds ``input`` and ``all``) of the sweep.

    python benchmarks/adi.py                     # ROI 64x64x64, sweep 0,16,32,48, 2 cases
    python benchmarks/adi.py --roi 64,64,32 --sweep 0,8,16,24 --cases 3
    python benchmarks/adi.py --roi 64,64,32 --sweep 0,8,16,24 --cases 3 --threads 1 --repeat 3 --online-only
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roi", default="64,64,64", help="model input x,y,z (multiples of 32)")
    parser.add_argument("--sweep", default="0,16,32,48", help="padding amounts along --axis (voxels)")
    parser.add_argument("--axis", default="z", choices=["x", "y", "z"])
    parser.add_argument("--cases", type=int, default=2, help="number of phantom cases")
    parser.add_argument("--preset", default="tiny", help="swin_unetr preset (tiny = feature 12)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--repeat", type=int, default=1, help="timed passes over the sweep (min/median over all)")
    parser.add_argument("--online-only", action="store_true",
                        help="only the online ratio: skip the peak-RSS processes and the offline stores")
    # Internal: one forward in a fresh process, print its peak RSS (see _peak_rss_of).
    parser.add_argument("--rss-of", choices=["plain", "hooked"], default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_child(args: argparse.Namespace) -> None:
    """One forward of a case at p = max sweep amount, plain or hooked; print the peak RSS."""
    from attnprobe.capture import Probe
    from attnprobe.metrics.reducers import FlowReducer, FlowTag
    from attnprobe.metrics.sweep import SweepSpec, swept_input
    from attnprobe.models import build_model

    torch.set_num_threads(args.threads)
    roi = tuple(int(v) for v in args.roi.split(","))
    torch.manual_seed(0)
    model = build_model("swin_unetr", preset=args.preset).eval()
    mask = torch.ones(1, *roi, dtype=torch.bool)
    case = SimpleNamespace(case_id="c", image=torch.rand(1, *roi), mask=mask, label=None)
    p = max(int(v) for v in args.sweep.split(","))
    item = swept_input(case, p, SweepSpec(paddings=(p,), axis=args.axis))
    with torch.no_grad():
        for _ in range(2):
            if args.rss_of == "plain":
                model(item.image[None])
            else:
                with Probe(model, ["*.attn"], sinks=[FlowReducer()], keep=False) as probe:
                    probe.run(item.image[None], mask=item.mask[None], tag=FlowTag(cases=("c",)))
    print(_peak_rss_mb())


def _peak_rss_of(kind: str, argv: list[str]) -> float:
    # A fresh process per measurement: the peak RSS of a long run mixes in everything before.
    out = subprocess.run([sys.executable, __file__, *argv, "--rss-of", kind], check=True, capture_output=True,
                         text=True)
    return float(out.stdout.strip().splitlines()[-1])


def _clock(device: torch.device) -> float:
    # CPU time of this process (all torch threads): other processes on a shared machine disturb it
    # far less than wall time; wall time on CUDA, after a synchronise.
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _args(argv)
    if args.rss_of is not None:
        _rss_child(args)
        return {}
    torch.set_num_threads(args.threads)
    from attnprobe.data.phantoms import make_phantom
    from attnprobe.data.preprocess import PreprocessConfig, prepare_array
    from attnprobe.metrics.offline import OfflineStats, store_flow
    from attnprobe.metrics.sweep import SweepSpec, padding_sweep, sweep_tables, swept_input
    from attnprobe.models import build_model
    from attnprobe.store import capture_to_store

    roi = tuple(int(v) for v in args.roi.split(","))
    spec = SweepSpec(paddings=tuple(int(v) for v in args.sweep.split(",")), axis=args.axis)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model("swin_unetr", preset=args.preset).eval().to(device)

    config = PreprocessConfig(roi=roi, pad_mode="end")
    cases = []
    for seed in range(args.cases):
        ph = make_phantom(seed, modality="mri")
        cases.append(prepare_array(ph.image, label=ph.label, affine=ph.affine, case_id=ph.case_id, config=config))
    n_forwards = len(cases) * len(spec.paddings)

    # Warm-up: first calls pay for allocator growth and kernel selection.
    with torch.no_grad():
        model(swept_input(cases[0], spec.paddings[0], spec).image[None].to(device))

    # Plain and hooked forwards alternate input by input, so load from other processes on a
    # shared machine hits both alike; the ratio is taken per input and summarised by its median.
    plain_times, hooked_times, parts = [], [], []
    for rep in range(args.repeat):
        for case in cases:
            for p in spec.paddings:
                item = swept_input(case, p, spec)
                _sync(device)
                t0 = _clock(device)
                with torch.no_grad():
                    model(item.image[None].to(device))
                _sync(device)
                plain_times.append(_clock(device) - t0)
                one = SweepSpec(paddings=(p,), axis=spec.axis, pad_mode=spec.pad_mode, mode=spec.mode)
                t0 = _clock(device)
                out = padding_sweep(model, [case], one, device=device)
                _sync(device)
                hooked_times.append(_clock(device) - t0)
                if rep == 0:
                    parts.append(out)
    frame = pd.concat(parts, ignore_index=True)
    n_forwards *= args.repeat
    plain_s, online_s = sum(plain_times), sum(hooked_times)
    median_ratio = statistics.median(h / p for h, p in zip(hooked_times, plain_times))
    min_ratio = min(hooked_times) / min(plain_times)

    rss_plain = rss_online = float("nan")
    if device.type == "cpu" and not args.online_only:
        rss_plain, rss_online = _peak_rss_of("plain", argv), _peak_rss_of("hooked", argv)

    offline = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in () if args.online_only else ("float16", "float32"):
            path = capture_to_store(model, cases, Path(tmp) / f"{dtype}.zarr", taps=["*.attn"], dtype=dtype,
                                    device=device)
            stats = OfflineStats()
            store_flow(path, stats=stats, device=device)
            offline[dtype] = {"gb_read": stats.attn_bytes / 1e9, "seconds": stats.seconds,
                              "gb_per_s": stats.gb_per_s, "chunks": stats.chunks,
                              "largest_chunk_mb": stats.largest_chunk_bytes / 2**20}

    stages = sweep_tables(frame).stages
    adi = stages[(stages["metric"] == "adi") & stages["kind"].isin(["input", "all"])]
    adi_table = (adi.groupby(["kind", "padding", "stage"])["value"].mean().unstack("stage").round(4))
    fractions = frame.groupby("padding")["pad_fraction"].mean().round(4).to_dict()

    result = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                    "device": str(device)},
        "setup": {"preset": args.preset, "roi": list(roi), "sweep": list(spec.paddings), "axis": spec.axis,
                  "cases": args.cases, "forwards": n_forwards},
        "online": {"plain_s": plain_s, "hooked_s": online_s, "ratio": online_s / plain_s,
                   "median_ratio": median_ratio, "min_ratio": min_ratio,
                   "plain_s_per_forward": plain_s / n_forwards, "hooked_s_per_forward": online_s / n_forwards,
                   "peak_rss_mb_plain": rss_plain, "peak_rss_mb_hooked": rss_online},
        "offline": offline,
        "pad_fraction": fractions,
        "stage_adi": {f"{k}@{p}": row.to_dict() for (k, p), row in adi_table.iterrows()},
    }
    print(f"padding sweep, {n_forwards} forwards ({args.repeat} x {args.cases} cases x {len(spec.paddings)} levels), "
          f"ROI {roi}, {args.preset}, {args.threads} threads, {device}")
    print(f"  plain forwards   {plain_s:7.2f} s  ({plain_s / n_forwards:.2f} s each)")
    print(f"  online reduction {online_s:7.2f} s  ({online_s / n_forwards:.2f} s each)")
    print(f"  hooked / plain (goal <= 1.10): total {online_s / plain_s:.2f}, median per input "
          f"{median_ratio:.2f}, fastest / fastest {min_ratio:.2f}  ({'CPU' if device.type == 'cpu' else 'wall'} time)")
    if not args.online_only:
        print(f"  peak RSS of one forward at p={max(spec.paddings)} (fresh process): plain {rss_plain:.0f} MB, "
              f"hooked {rss_online:.0f} MB")
    for dtype, o in offline.items():
        print(f"offline {dtype}: {o['gb_read']:.3f} GB in {o['seconds']:.2f} s = {o['gb_per_s']:.3f} GB/s "
              f"({o['chunks']} chunks, largest {o['largest_chunk_mb']:.1f} MiB)")
    print(f"pad fraction by padding: {fractions}")
    print("stage ADI (mean over cases):")
    print(adi_table.to_string())
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=float))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
