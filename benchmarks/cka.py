"""Benchmark attnprobe.metrics.cka against straightforward implementations and GEMM bounds.

Three parts, one run:

(a) all block pairs of two 8-block models on n pooled examples: the stacked all-pairs
    ``cka_matrix`` vs a straightforward float32 implementation that builds both n x n Grams
    for every pair, vs the time of the one stacked matmul alone (a lower bound);
(b) token-level linear CKA (n tokens x C channels) with ``StreamingLinearCKA`` vs the n x n
    approach (run where it fits in memory, otherwise reported infeasible) and vs the bare
    ``XᵀY`` float32 GEMM (a lower bound: any exact method must read both matrices);
(c) float32 GEMMs on float64-centred features vs float64 GEMMs: speed and agreement.

Usage::

    python benchmarks/cka.py                      # small defaults, about a minute on 2 cores
    python benchmarks/cka.py --tokens 1000000     # token-level at 10^6
    python benchmarks/cka.py --device cuda --tokens 1000000 --pooled 256
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from attnprobe.metrics.cka import (
    StreamingLinearCKA,
    center_gram,
    cka_matrix,
    cka_matrix_from_grams,
    linear_cka,
    linear_gram,
)

# SwinUNETR (feature_size 48) on 96³ inputs: stage widths, and token grids 48, 24, 12, 6 per
# stage; pooled to 8³ where the grid allows it, two blocks per stage
SWIN_BLOCKS = [(48, 8), (48, 8), (96, 8), (96, 8), (192, 8), (192, 8), (384, 6), (384, 6)]


def race(fns: dict[str, Callable[[], object]], device: torch.device,
         repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Best wall time (seconds) and last result of each function.

    Rounds interleave the candidates (A B C, A B C, ...) so that load from other processes
    on a shared machine hits all of them alike.
    """
    best = dict.fromkeys(fns, float("inf"))
    out: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            out[name] = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, out


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:10.2f} ms"


# --------------------------------------------------------------------------- straightforward


def naive_cka_f32(x: torch.Tensor, y: torch.Tensor) -> float:
    """Textbook linear CKA in float32: both n x n Grams, centred with H, for one pair."""
    x, y = x.float(), y.float()
    n = x.shape[0]
    h = torch.eye(n, device=x.device) - 1.0 / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((k * l_).sum() / (k.norm() * l_.norm()))


def naive_pairs(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([[naive_cka_f32(x, y) for y in ys] for x in xs], dtype=torch.float64)


# --------------------------------------------------------------------------- parts


def part_a(args: argparse.Namespace, dev: torch.device) -> None:
    n = args.pooled
    g = torch.Generator(device="cpu").manual_seed(0)
    blocks = SWIN_BLOCKS[: args.blocks]
    widths = [c * s**3 for c, s in blocks]
    print(f"\n(a) all pairs: {len(blocks)} x {len(blocks)} blocks, n = {n} pooled examples, "
          f"features per block {widths}")
    shared = torch.randn(n, 32, generator=g)
    xs = [(shared @ torch.randn(32, p, generator=g) + torch.randn(n, p, generator=g)).to(dev)
          for p in widths]
    ys = [(shared @ torch.randn(32, p, generator=g) + 2 * torch.randn(n, p, generator=g)).to(dev)
          for p in widths]
    grams_x = [linear_gram(x) for x in xs]
    grams_y = [linear_gram(y) for y in ys]
    a = torch.stack([center_gram(k).reshape(-1) for k in grams_x])
    b = torch.stack([center_gram(k).reshape(-1) for k in grams_y])
    gx32 = [k.float() for k in grams_x]
    gy32 = [k.float() for k in grams_y]

    def naive_from_grams() -> list[list[float]]:
        out = []
        for k in gx32:
            row = []
            for l_ in gy32:
                h = torch.eye(n, device=k.device) - 1.0 / n
                kc, lc = h @ k @ h, h @ l_ @ h
                row.append(float((kc * lc).sum() / (kc.norm() * lc.norm())))
            out.append(row)
        return out

    t, res = race({
        "ours": lambda: cka_matrix(xs, ys),
        "naive": lambda: naive_pairs(xs, ys),
        "grams": lambda: [linear_gram(x) for x in xs + ys],
        "ours_g": lambda: cka_matrix_from_grams(grams_x, grams_y),
        "naive_g": naive_from_grams,
    }, dev, args.repeats)
    tm, _ = race({"mm64": lambda: a @ b.T, "mm32": lambda: a.float() @ b.float().T}, dev,
                 max(args.repeats, 20))
    diff = float((res["ours"].cpu() - res["naive"]).abs().max())
    g = 2 * len(blocks)
    print(f"  ours: features -> matrix ({g} Grams + 1 matmul)   {ms(t['ours'])}")
    print(f"    the same {g} Grams on their own                 {ms(t['grams'])}")
    print(f"  straightforward float32, pair by pair ({2 * len(blocks) ** 2} Grams)"
          f" {ms(t['naive'])}   straightforward / ours = {t['naive'] / t['ours']:6.1f}x")
    print(f"  from given Grams: ours (1 stacked matmul)      {ms(t['ours_g'])}")
    print(f"  from given Grams: straightforward pairwise     {ms(t['naive_g'])}   "
          f"straightforward / ours = {t['naive_g'] / t['ours_g']:6.1f}x")
    print(f"  the stacked matmul alone, float64 (bound)      {ms(tm['mm64'])}   "
          f"ours-from-Grams / bound = {t['ours_g'] / tm['mm64']:6.1f}x")
    print(f"  the stacked matmul alone, float32              {ms(tm['mm32'])}")
    print(f"  max |ours - straightforward float32|           {diff:.1e}")


def token_data(args: argparse.Namespace, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two related (n, C) token feature matrices."""
    g = torch.Generator(device="cpu").manual_seed(1)
    n, c = args.tokens, args.channels
    x = torch.randn(n, c, generator=g).to(dev)
    w = torch.randn(c, c, generator=g).to(dev) / c**0.5
    return x, (x @ w).tanh_() + 0.5 * torch.randn(n, c, generator=g).to(dev)


def part_b(args: argparse.Namespace, dev: torch.device, x: torch.Tensor, y: torch.Tensor) -> None:
    n, c = x.shape
    print(f"\n(b) token-level linear CKA: n = {n} tokens x {c} channels, batches of {args.batch}")

    def stream() -> float:
        acc = StreamingLinearCKA(c, c, device=dev)
        for s in range(0, n, args.batch):
            acc.update(x[s:s + args.batch], y[s:s + args.batch])
        return acc.compute("biased")

    t, res = race({
        "stream": stream,
        "xty": lambda: x.T @ y,
        "three": lambda: (x.T @ x, y.T @ y, x.T @ y),
    }, dev, args.repeats)
    print(f"  streaming (exact, float64 state)             {ms(t['stream'])}   "
          f"CKA = {res['stream']:.6f}")
    print(f"  bare XᵀY float32 GEMM (lower bound)          {ms(t['xty'])}   "
          f"streaming / bound = {t['stream'] / t['xty']:6.1f}x")
    print(f"  XᵀX + YᵀY + XᵀY float32 GEMMs                {ms(t['three'])}   "
          f"streaming / 3 GEMMs = {t['stream'] / t['three']:6.1f}x")
    gram_bytes = 2 * 4 * n * n
    if gram_bytes <= args.naive_max_gb * 2**30:
        tn, rn = race({"naive": lambda: naive_cka_f32(x, y)}, dev, args.repeats)
        print(f"  n x n Grams at n = {n}                       {ms(tn['naive'])}   "
              f"CKA = {rn['naive']:.6f}")
    else:
        print(f"  n x n Grams at n = {n}: infeasible (two float32 Grams = "
              f"{gram_bytes / 2**30:,.0f} GiB > --naive-max-gb {args.naive_max_gb})")
    m = min(args.naive_n, n)
    ts, rs = race({
        "stream": lambda: StreamingLinearCKA().update(x[:m], y[:m]).compute(),
        "naive": lambda: naive_cka_f32(x[:m], y[:m]),
    }, dev, args.repeats)
    v_ref = linear_cka(x[:m].double(), y[:m].double(), gemm_dtype="float64")
    print(f"  at n = {m}: streaming {ms(ts['stream'])}  vs  n x n Grams {ms(ts['naive'])}   "
          f"n x n / streaming = {ts['naive'] / ts['stream']:6.1f}x")
    print(f"    error vs float64: streaming {abs(rs['stream'] - v_ref):.1e}, "
          f"n x n float32 Grams {abs(rs['naive'] - v_ref):.1e}")


def part_c(args: argparse.Namespace, dev: torch.device, x: torch.Tensor, y: torch.Tensor) -> None:
    print(f"\n(c) float32 GEMMs on centred features vs float64 GEMMs "
          f"(n = {x.shape[0]}, {x.shape[1]} channels, inputs offset by 1e3)")
    x.add_(1e3)  # large means, where centring before the GEMM matters (in place: saves memory)
    y.add_(1e3)
    k = min(x.shape[0], args.gemm_rows)  # a float64 copy of all rows may not fit at 10^6
    xs, ys = x[:k] - x[:k].mean(0), y[:k] - y[:k].mean(0)
    xd, yd = xs.double(), ys.double()
    t, res = race({
        "f32": lambda: linear_cka(x, y, gemm_dtype="float32"),
        "f64": lambda: linear_cka(x, y, gemm_dtype="float64"),
        "g32": lambda: xs.T @ ys,
        "g64": lambda: xd.T @ yd,
    }, dev, args.repeats)
    print(f"  linear_cka, float32 GEMMs (default)          {ms(t['f32'])}   CKA = {res['f32']:.9f}")
    print(f"  linear_cka, float64 GEMMs                    {ms(t['f64'])}   CKA = {res['f64']:.9f}")
    print(f"  float64 / float32 time = {t['f64'] / t['f32']:5.2f}x, "
          f"|difference| = {abs(res['f32'] - res['f64']):.1e}")
    print(f"  bare XᵀY GEMM on {k} rows: float32 {ms(t['g32'])}, float64 {ms(t['g64'])}, "
          f"float64 / float32 = {t['g64'] / t['g32']:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--blocks", type=int, default=8, help="blocks per model (<= 8)")
    ap.add_argument("--pooled", type=int, default=64, help="pooled examples for part (a)")
    ap.add_argument("--tokens", type=int, default=200_000, help="tokens for parts (b), (c)")
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--batch", type=int, default=16384, help="tokens per streaming update")
    ap.add_argument("--naive-n", type=int, default=4096, help="n for the small n x n comparison")
    ap.add_argument("--naive-max-gb", type=float, default=2.0,
                    help="run the n x n approach at full n only if its Grams fit in this")
    ap.add_argument("--gemm-rows", type=int, default=200_000,
                    help="rows for the bare float32/float64 GEMM comparison in part (c)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many interleaved runs")
    ap.add_argument("--parts", default="abc", help="which parts to run, e.g. 'a' or 'bc'")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default); 1 steadies timings on a busy box")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    print(f"torch {torch.__version__}, device {dev}, {torch.get_num_threads()} threads")
    if "a" in args.parts:
        part_a(args, dev)
    if "b" in args.parts or "c" in args.parts:
        x, y = token_data(args, dev)
        if "b" in args.parts:
            part_b(args, dev, x, y)
        if "c" in args.parts:
            part_c(args, dev, x, y)


if __name__ == "__main__":
    main()
