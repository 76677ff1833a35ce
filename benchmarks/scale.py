"""Scaling: 1 vs 2 processes (torchrun, gloo) and offline-ADI memory vs store size.

    python benchmarks/scale.py                 # all parts, small defaults (a few minutes)
    python benchmarks/scale.py --parts memory --store-mb 256,1024

Parts:
- ``capture``: ``attnprobe capture`` of N generated NIfTI cases, 1 process vs
  ``torchrun --nproc_per_node 2`` (ratio of wall times, same store contents).
- ``cka``: ``attnprobe cka`` between two tiny models, 1 vs 2 processes.
- ``memory``: peak RSS of offline ADI (``store_flow``) in a fresh process, for synthetic
  stores of growing size; bounded memory means the peak does not grow with the store.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from attnprobe.models import build_model
from attnprobe.models.adapter import BlockGeometry
from attnprobe.models.checkpoints import save_checkpoint
from attnprobe.store import StoreWriter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], nproc: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1" if nproc > 1 else "2"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "attnprobe", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "attnprobe", *args]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(result.stderr[-2000:])
    return time.perf_counter() - start


def make_data(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        path = folder / f"case{i}.nii.gz"
        nib.save(nib.Nifti1Image(rng.normal(size=(48, 48, 24)).astype(np.float32), np.eye(4)), str(path))
        entries.append({"image": path.name, "case": f"case{i}"})
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"training": entries}))
    return datalist


def part_capture(work: Path, cases: int) -> None:
    datalist = make_data(work, cases)
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model("swin_unetr", preset="tiny"), work / "swin.pt")
    args = ["capture", "--model", str(ckpt), "--data", str(datalist), "--taps", "stage0.*"]
    one = run([*args, "--out", str(work / "one.zarr")], 1)
    two = run([*args, "--out", str(work / "two.zarr")], 2)
    print(f"capture {cases} cases: 1 process {one:.1f} s, 2 processes {two:.1f} s, speed-up x{one / two:.2f}")


def part_cka(work: Path, cases: int) -> None:
    datalist = make_data(work, cases)
    torch.manual_seed(0)
    ref = save_checkpoint(build_model("swin_unetr", preset="tiny"), work / "ref.pt")
    torch.manual_seed(1)
    tgt = save_checkpoint(build_model("swin_unetr", preset="tiny"), work / "tgt.pt")
    args = ["cka", "--ref", str(ref), "--tgt", str(tgt), "--data", str(datalist), "--unit", "tokens"]
    one = run([*args, "--out", str(work / "cka1")], 1)
    two = run([*args, "--out", str(work / "cka2")], 2)
    print(f"cka (tokens) {cases} cases: 1 process {one:.1f} s, 2 processes {two:.1f} s, speed-up x{one / two:.2f}")


def synthetic_store(path: Path, megabytes: int) -> int:
    """A store of random attention (float16, one stage-0-like block), about ``megabytes`` in size."""
    geom = BlockGeometry(stage=0, block=0, grid=(35, 35, 21), window=(7, 7, 7), shift=(0, 0, 0), heads=3,
                         channels=12)
    per_sample = geom.n_windows * geom.heads * geom.n_tokens**2 * 2
    n = max(1, megabytes * 2**20 // per_sample)
    rng = np.random.default_rng(0)
    kinds = rng.integers(0, 3, size=(geom.n_windows, geom.n_tokens), dtype=np.uint8)
    with StoreWriter(path, cases=[f"s{i}" for i in range(n)], blocks={"stage0.block0": (geom, {"attn"})},
                     attrs={"arch": "synthetic"}) as writer:
        for i in range(n):
            logits = rng.standard_normal((geom.n_windows, geom.heads, geom.n_tokens, geom.n_tokens), dtype=np.float32)
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            writer.submit(i, {"stage0.block0": {"attn": probs.astype(np.float16), "attn_kind": kinds}})
    return n * per_sample


#: Script text: ``measure(path)`` runs offline ADI on a store and returns (RSS before, peak RSS
#: during, rows), sampling /proc/self/statm every 5 ms (also used by tests/metrics/test_offline_memory.py).
MEASURE_PEAK = """
import os, sys, threading, time
from attnprobe.metrics.offline import store_flow

def rss_mib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def measure(path):
    peak, stop = [0.0], threading.Event()
    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.005)
    base = rss_mib()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    frame = store_flow(path)
    stop.set(); thread.join()
    return base, max(peak[0], rss_mib()), len(frame)
"""
PEAK = MEASURE_PEAK + "print(*measure(sys.argv[1]))\n"


def part_memory(work: Path, sizes: list[int]) -> None:
    print(f"{'store (MiB of attention)':>26} {'RSS before (MiB)':>18} {'peak RSS (MiB)':>16} {'growth (MiB)':>14}")
    for mb in sizes:
        path = work / f"s{mb}.zarr"
        raw = synthetic_store(path, mb)
        out = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "2"})
        if out.returncode:
            raise SystemExit(out.stderr[-2000:])
        base, peak, _ = out.stdout.split()
        print(f"{raw / 2**20:>26.0f} {float(base):>18.0f} {float(peak):>16.0f} {float(peak) - float(base):>14.0f}")
        shutil.rmtree(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="capture,cka,memory")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--store-mb", default="128,512")
    args = parser.parse_args()
    parts = args.parts.split(",")
    work = Path(tempfile.mkdtemp())
    try:
        if "capture" in parts:
            part_capture(work / "capture", args.cases) if (work / "capture").mkdir() is None else None
        if "cka" in parts:
            part_cka(work / "cka", args.cases) if (work / "cka").mkdir() is None else None
        if "memory" in parts:
            part_memory(work, [int(v) for v in args.store_mb.split(",")])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
