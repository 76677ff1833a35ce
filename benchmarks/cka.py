"""Benchmark attnprobe's CKA against its GEMM bounds, and optionally against an older version.

Three goal ratios, each as ``median (min)`` over interleaved rounds, single-thread CPU time on
the CPU (``--threads 1``, the default) or CUDA events with ``--device cuda``:

(a) all-pairs linear CKA (``cka_matrix``, biased and unbiased) of two L-layer models over a
    grid of n examples x p features / the bare float32 Gram GEMMs ``X Xᵀ`` of the 2L layers
    (goal <= 1.3), and attnprobe's unbiased time / pytorch-cka's ``cka_from_features`` (goal
    <= 1.0; skipped when pytorch-cka is not installed), with the largest |difference| from a
    float64 reference (goal <= 1e-6), also on features whose means are 1e4 x their spread;
(b) streaming token CKA (``StreamingLinearCKA``) at batches of --batch tokens / its three
    GEMMs ``XᵀX``, ``YᵀY``, ``XᵀY`` per batch (goal <= 1.5);
(c) minibatch CKA (``MinibatchCKA``) / the per-batch float32 Grams of every layer (goal <= 1.5).

``--baseline FILE`` loads an older ``cka.py`` (e.g. ``git show main:attnprobe/metrics/cka.py``)
and adds its ratios as a "before" column. Peers (pytorch-cka, torch-cka, ...) are in
``benchmarks/peers.py``.

Usage::

    python benchmarks/cka.py                              # about 2 minutes on one core
    python benchmarks/cka.py --sizes 64x384,512x24576 --rounds 7
    python benchmarks/cka.py --baseline /tmp/cka_before.py
    python benchmarks/cka.py --parts a --sizes 64x384,128x384 --floor    # eager-PyTorch floor
    python benchmarks/cka.py --device cuda --threads 0
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

sys.path.append(str(Path(__file__).resolve().parent))

from _timing import race, ratio, setup_device  # noqa: E402

from attnprobe.metrics import cka as ours  # noqa: E402


def pytorch_cka() -> ModuleType | None:
    """pytorch-cka (import name ``cka``, which this file's own name would shadow), or None."""
    here = str(Path(__file__).resolve().parent)
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != here]
    try:
        mod = importlib.import_module("cka")
    except Exception:  # not installed or broken: the column is left out
        return None
    finally:
        sys.path[:] = saved
    return mod if hasattr(mod, "cka_from_features") else None


def load_baseline(path: str | None) -> ModuleType | None:
    if not path:
        return None
    spec = importlib.util.spec_from_file_location("cka_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def model_layers(seed: int, n: int, p: int, layers: int, mean: float, dev: torch.device) -> list[torch.Tensor]:
    """Features of ``layers`` related layers: a shared low-rank signal plus noise (+ a mean)."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 16, generator=g)
    out = []
    for _ in range(layers):
        x = shared @ torch.randn(16, p, generator=g) / 4 + torch.randn(n, p, generator=g)
        out.append((x + mean * (1 + torch.rand(p, generator=g))).to(dev))
    return out


def reference(xs: list[torch.Tensor], ys: list[torch.Tensor], estimator: str) -> torch.Tensor:
    """Float64 all-pairs CKA: float64 centring, float64 Grams, textbook HSIC."""
    def grams(ts):
        out = []
        for t in ts:
            c = t.double().cpu()
            c = c - c.mean(0)
            out.append(c @ c.T)
        return out

    def hsic(k, l_):
        n = k.shape[0]
        if estimator == "biased":
            h = torch.eye(n, dtype=torch.float64) - 1.0 / n
            return torch.trace(k @ h @ l_ @ h)
        kt, lt = k - torch.diag(torch.diag(k)), l_ - torch.diag(torch.diag(l_))
        one = torch.ones(n, dtype=torch.float64)
        return (torch.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * (one @ kt @ lt @ one))

    gx, gy = grams(xs), grams(ys)
    return torch.tensor([[float(hsic(k, l_) / (hsic(k, k) * hsic(l_, l_)).sqrt()) for l_ in gy] for k in gx],
                        dtype=torch.float64)


def floor_applies(n: int, p: int) -> bool:
    """Whether :func:`eager_floor` reproduces attnprobe's path for n examples of p features."""
    return n % 32 == 0 and 1024 < n * n <= 16384 and p <= 1024  # Grams of more than one piece


def eager_floor(xs: list[torch.Tensor], ys: list[torch.Tensor], estimator: str) -> torch.Tensor:
    """attnprobe's small-n all-pairs CKA (halved Grams, :func:`floor_applies` sizes) written as
    bare torch calls: no input checks, no choice between paths, no helper functions. Its time
    is what eager PyTorch needs for the same arithmetic; ``cka_matrix`` must return the same bits.
    """
    f = [t.detach() for t in xs + ys]
    n_l, l1, n = len(f), len(xs), f[0].shape[0]
    h = n // 2
    if estimator == "biased":
        a, b, s = 1.0 / (n * n), 2.0 / n, 1.0 / (n - 1) ** 2
    else:
        a, b, s = 1.0 / ((n - 1) * (n - 2)), 2.0 / (n - 2), 1.0 / (n * (n - 3))
    w = torch.stack(f)
    w.sub_(w.mean(1, keepdim=True))
    ab = torch.bmm(w[:, :h], w.transpose(1, 2))
    low = w[:, h:]
    c = torch.bmm(low, low.transpose(1, 2))
    if estimator == "unbiased":
        ab.diagonal(0, 1, 2).zero_()
        c.diagonal(0, 1, 2).zero_()
    k = torch.cat([ab, ab[..., h:].mT, c], dim=2)
    rows = k.view(n_l, h, 2, n).sum(-1, dtype=torch.float64).view(n_l, n)
    pieces = k.view(n_l, -1, 1024).transpose(0, 1)
    inner = torch.bmm(pieces, pieces.transpose(1, 2)).sum(0, dtype=torch.float64)
    tot = rows.sum(-1)
    full = inner.addmm_(rows, rows.T, beta=s, alpha=-b * s).addr_(tot, tot, alpha=a * s)
    d = full.diagonal()
    return full[:l1, l1:] / torch.outer(d[:l1], d[l1:]).sqrt_()


def part_a(args: argparse.Namespace, dev: torch.device, before: ModuleType | None) -> None:
    print(f"\n(a) all-pairs linear CKA, {args.layers} x {args.layers} layers; time / bare float32 Grams "
          f"(goal <= 1.3), median (min) of {args.rounds} rounds")
    peer = pytorch_cka()
    head = f"  {'n':>4} {'p':>6} {'Grams ms':>9} {'biased':>12} {'unbiased':>12}"
    if peer is not None:
        head += f" {'pytorch-cka':>12} {'unb./peer':>12}"
    if before is not None:
        head += f" {'before b.':>12} {'before u.':>12}"
    if args.floor:
        head += f" {'floor u.':>12} {'unb./floor':>12}"
    print(head + f" {'max |err| b/u (mean 1e4)':>30}")
    for n, p in args.sizes:
        xs = model_layers(0, n, p, args.layers, 0.0, dev)
        ys = model_layers(1, n, p, args.layers, 0.0, dev)
        fns = {
            "grams": lambda xs=xs, ys=ys: [x @ x.T for x in xs + ys],
            "biased": lambda xs=xs, ys=ys: ours.cka_matrix(xs, ys, estimator="biased"),
            "unbiased": lambda xs=xs, ys=ys: ours.cka_matrix(xs, ys, estimator="unbiased"),
        }
        if peer is not None:
            fns["peer"] = lambda xs=xs, ys=ys: peer.cka_from_features(list(xs), list(ys))
        if before is not None:
            fns["before_b"] = lambda xs=xs, ys=ys: before.cka_matrix(xs, ys, estimator="biased")
            fns["before_u"] = lambda xs=xs, ys=ys: before.cka_matrix(xs, ys, estimator="unbiased")
        floor = args.floor and floor_applies(n, p)
        if floor:
            fns["floor"] = lambda xs=xs, ys=ys: eager_floor(xs, ys, "unbiased")
        t, res = race(fns, dev, args.rounds)
        errs = []
        if n * p <= args.check_max:
            big_x = model_layers(2, n, p, 2, 1e4, dev)
            big_y = model_layers(3, n, p, 2, 1e4, dev)
            for est in ("biased", "unbiased"):
                got = ours.cka_matrix(big_x, big_y, estimator=est).cpu()
                errs.append(float((got - reference(big_x, big_y, est)).abs().max()))
        line = (f"  {n:4d} {p:6d} {t['grams'].median * 1e3:9.2f} {ratio(t['biased'], t['grams']):>12} "
                f"{ratio(t['unbiased'], t['grams']):>12}")
        if peer is not None:
            line += f" {ratio(t['peer'], t['grams']):>12} {ratio(t['unbiased'], t['peer']):>12}"
        if before is not None:
            line += f" {ratio(t['before_b'], t['grams']):>12} {ratio(t['before_u'], t['grams']):>12}"
        if floor:
            same = torch.equal(res["floor"], res["unbiased"])  # type: ignore[arg-type]
            line += f" {ratio(t['floor'], t['grams']):>12} {ratio(t['unbiased'], t['floor']):>12}"
            line += "" if same else " (floor differs from cka_matrix!)"
        elif args.floor:
            line += f" {'-':>12} {'-':>12}"
        err = " / ".join(f"{e:.1e}" for e in errs) if errs else "(skipped: --check-max)"
        print(line + f" {err:>30}")


def part_b(args: argparse.Namespace, dev: torch.device, before: ModuleType | None) -> None:
    n, c, b = args.tokens, args.channels, args.batch
    print(f"\n(b) streaming token CKA: {n} tokens x {c} channels, batches of {b}; time / its 3 GEMMs "
          f"per batch (goal <= 1.5)")
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(n, c, generator=g) + 100).to(dev)
    y = (x @ (torch.randn(c, c, generator=g).to(dev) / c**0.5)).tanh() + torch.randn(n, c, generator=g).to(dev)

    def three() -> None:
        for s in range(0, n, b):
            u, v = x[s:s + b], y[s:s + b]
            u.T @ u, v.T @ v, u.T @ v

    def stream(mod: ModuleType) -> float:
        acc = mod.StreamingLinearCKA(c, c)
        for s in range(0, n, b):
            acc.update(x[s:s + b], y[s:s + b])
        return acc.compute("unbiased")

    fns = {"three": three, "ours": lambda: stream(ours)}
    if before is not None:
        fns["before"] = lambda: stream(before)
    t, res = race(fns, dev, args.rounds)
    ref = ours.linear_cka(x.double(), y.double(), estimator="unbiased", gemm_dtype="float64")
    print(f"  3 GEMMs {t['three'].median * 1e3:.1f} ms;  ours / 3 GEMMs = {ratio(t['ours'], t['three'])}"
          + (f";  before / 3 GEMMs = {ratio(t['before'], t['three'])}" if before is not None else "")
          + f";  |ours - float64| = {abs(res['ours'] - ref):.1e}")


def part_c(args: argparse.Namespace, dev: torch.device, before: ModuleType | None) -> None:
    b, nb, p = args.mb_batch, args.mb_batches, args.mb_features
    print(f"\n(c) minibatch CKA: {args.layers} x {args.layers} layers, {nb} batches of {b}, {p} features; "
          f"time / per-batch float32 Grams (goal <= 1.5)")
    xs = model_layers(5, b * nb, p, args.layers, 0.0, dev)
    ys = model_layers(6, b * nb, p, args.layers, 0.0, dev)

    def grams() -> None:
        for s in range(0, b * nb, b):
            for t in xs + ys:
                u = t[s:s + b]
                u @ u.T

    def run(mod: ModuleType) -> torch.Tensor:
        acc = mod.MinibatchCKA()
        for s in range(0, b * nb, b):
            acc.update([t[s:s + b] for t in xs], [t[s:s + b] for t in ys])
        return acc.compute()

    fns = {"grams": grams, "ours": lambda: run(ours)}
    if before is not None:
        fns["before"] = lambda: run(before)
    t, _ = race(fns, dev, args.rounds)
    print(f"  Grams {t['grams'].median * 1e3:.1f} ms;  ours / Grams = {ratio(t['ours'], t['grams'])}"
          + (f";  before / Grams = {ratio(t['before'], t['grams'])}" if before is not None else ""))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--layers", type=int, default=8, help="layers per model")
    ap.add_argument("--sizes", default="64x384,512x384,64x24576,256x3072",
                    type=lambda s: [tuple(int(v) for v in item.split("x")) for item in s.split(",")],
                    help="n x p grid for part (a)")
    ap.add_argument("--check-max", type=int, default=2_000_000,
                    help="check accuracy only where n*p is at most this (the float64 reference is slow)")
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--batch", type=int, default=256, help="tokens per streaming update")
    ap.add_argument("--mb-batch", type=int, default=256)
    ap.add_argument("--mb-batches", type=int, default=8)
    ap.add_argument("--mb-features", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--parts", default="abc")
    ap.add_argument("--baseline", default=None, help="an older cka.py to compare with")
    ap.add_argument("--floor", action="store_true",
                    help="(a): also time the small-n path as bare torch calls (n = 64, 96 or 128, "
                         "p <= 1024), the floor of eager PyTorch for that arithmetic")
    args = ap.parse_args(argv)
    dev = setup_device(args.device, args.threads)
    before = load_baseline(args.baseline)
    clock = "CUDA events" if dev.type == "cuda" else f"thread CPU time, {torch.get_num_threads()} thread(s)"
    print(f"torch {torch.__version__}, {dev}, {clock}")
    if "a" in args.parts:
        part_a(args, dev, before)
    if "b" in args.parts:
        part_b(args, dev, before)
    if "c" in args.parts:
        part_c(args, dev, before)


if __name__ == "__main__":
    main()
