"""attnprobe next to its peers: speed *and* exactness in one table.

CKA (all layer pairs of two L-layer models on n examples x p features):

- attnprobe ``cka_matrix`` (biased and unbiased);
- pytorch-cka (``cka.cka_from_features``: batched Grams, unbiased HSIC, in the input dtype);
- torch-cka (its unbiased ``CKA._HSIC`` on Grams with zeroed diagonal, as its ``compare`` loop
  does: both Grams recomputed for every pair);
- ckatorch (``cka_base``, float64, one pair per call, biased and unbiased).

Per size it prints each method's time as a ratio to attnprobe's (same estimator) and its
largest |difference| from a float64 reference, then a stress case whose features have means
1e4 x their spread. Capture (tiny Swin UNETR): attnprobe's in-memory ``Probe`` next to plain
forward hooks on the same modules, nnsight and torchlens, as ratios to a plain forward.

Peers come with the ``bench`` extra (``pip install -e ".[bench]"``); one that fails to
import is reported as "not installed". Timing: median (min) of interleaved rounds, single
thread CPU time on the CPU, CUDA events with ``--device cuda``.

    python benchmarks/peers.py
    python benchmarks/peers.py --sizes 64x384,512x384 --rounds 7 --parts cka
    python benchmarks/peers.py --device cuda --threads 0
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

# benchmarks/ goes last on the path: its cka.py must not shadow pytorch-cka's ``cka`` package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

from _timing import race, setup_device  # noqa: E402

from attnprobe.metrics.cka import cka_matrix  # noqa: E402


def _bench_cka():
    """benchmarks/cka.py under another name: ``cka`` is pytorch-cka's import name."""
    spec = importlib.util.spec_from_file_location("_bench_cka", Path(__file__).resolve().parent / "cka.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


_B = _bench_cka()
model_layers, reference = _B.model_layers, _B.reference


def _try_import(name: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception:  # a peer that is missing or broken must not stop the run
        return None


# --------------------------------------------------------------------------- CKA peers


def cka_methods(dev: torch.device) -> dict[str, tuple[str, Callable | None]]:
    """name -> (estimator, fn(xs, ys) -> (L1, L2) tensor) or (estimator, None) when missing."""
    out: dict[str, tuple[str, Callable | None]] = {
        "attnprobe biased": ("biased", lambda xs, ys: cka_matrix(xs, ys, estimator="biased")),
        "attnprobe unbiased": ("unbiased", lambda xs, ys: cka_matrix(xs, ys, estimator="unbiased")),
    }
    pcka = _try_import("cka")
    out["pytorch-cka"] = ("unbiased", None if pcka is None or not hasattr(pcka, "cka_from_features")
                          else lambda xs, ys: pcka.cka_from_features(list(xs), list(ys)))
    tcka = _try_import("torch_cka")
    if tcka is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inst = tcka.CKA(torch.nn.Identity(), torch.nn.Identity(), device=str(dev))
        except Exception:
            inst = None
    out["torch-cka"] = ("unbiased", None if tcka is None or inst is None else
                        lambda xs, ys: _torch_cka_loop(inst, xs, ys))
    ckt = _try_import("ckatorch")
    for est in ("biased", "unbiased"):
        out[f"ckatorch {est}"] = (est, None if ckt is None else (
            lambda xs, ys, u=(est == "unbiased"): torch.tensor(
                [[float(ckt.cka_base(x, y, unbiased=u)) for y in ys] for x in xs], dtype=torch.float64)))
    return out


def _torch_cka_loop(inst, xs, ys) -> torch.Tensor:
    """torch-cka's ``compare`` inner loop on given features, one batch."""
    hs = torch.zeros(len(xs), len(ys), 3)
    for i, x in enumerate(xs):
        k = x @ x.T
        k.fill_diagonal_(0.0)
        hs[i, :, 0] += inst._HSIC(k, k)
        for j, y in enumerate(ys):
            l_ = y @ y.T
            l_.fill_diagonal_(0.0)
            hs[i, j, 1] += inst._HSIC(k, l_)
            hs[i, j, 2] += inst._HSIC(l_, l_)
    return hs[:, :, 1] / (hs[:, :, 0].sqrt() * hs[:, :, 2].sqrt())


def cka_table(args: argparse.Namespace, dev: torch.device) -> None:
    methods = cka_methods(dev)
    missing = [k for k, (_, fn) in methods.items() if fn is None]
    live = {k: v for k, v in methods.items() if v[1] is not None}
    print(f"\nall-pairs CKA, {args.layers} x {args.layers} layers: time / attnprobe (same estimator), "
          f"max |CKA - float64 reference|; median (min) of {args.rounds} rounds")
    if missing:
        print(f"  not installed: {', '.join(missing)}")
    cases = [(n, p, 0.0) for n, p in args.sizes] + [(args.stress_n, args.stress_p, 1e4)]
    for n, p, mean in cases:
        xs = model_layers(0, n, p, args.layers, mean, dev)
        ys = model_layers(1, n, p, args.layers, mean, dev)
        fns = {k: (lambda fn=fn, xs=xs, ys=ys: fn(xs, ys)) for k, (_, fn) in live.items()}
        t, res = race(fns, dev, args.rounds)
        refs = {est: reference(xs, ys, est) for est in ("biased", "unbiased")}
        label = f"n={n} p={p}" + (" means 1e4 x spread" if mean else "")
        print(f"  {label}")
        for name, (est, _) in live.items():
            base = t[f"attnprobe {est}"]
            got = torch.as_tensor(res[name]).double().cpu()
            err = float((got - refs[est]).abs().max()) if got.shape == refs[est].shape else float("nan")
            err_s = "nan" if err != err else f"{err:.1e}"
            print(f"    {name:<20} {t[name].median * 1e3:9.2f} ms   x{t[name].median / base.median:6.2f} "
                  f"({t[name].min / base.min:5.2f})   max|err| {err_s}")


# --------------------------------------------------------------------------- capture peers


def capture_table(args: argparse.Namespace, dev: torch.device) -> None:
    from attnprobe.capture import Probe
    from attnprobe.models import build_model

    roi = tuple(int(v) for v in args.roi.split(","))
    torch.manual_seed(0)
    model = build_model("swin_unetr", preset=args.preset).to(dev).eval()
    x = torch.randn(1, 1, *roi, device=dev)
    with Probe(model) as probe:
        paths = [t.module_path for t in probe.taps]
    modules = dict(model.named_modules())
    print(f"\ncapture in memory, swin_unetr {args.preset}, ROI {roi}: {len(paths)} taps "
          f"(attention maps + block outputs); time / plain forward")

    def plain():
        with torch.no_grad():
            return model(x)

    def ours():
        with torch.no_grad(), Probe(model) as p:
            p.run(x)
            return p.cache

    def hooks():
        store, handles = [], []
        for path in paths:
            handles.append(modules[path].register_forward_hook(
                lambda m, i, o: store.append(o.detach() if torch.is_tensor(o) else o)))
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
        return store

    fns: dict[str, Callable[[], object]] = {"plain forward": plain, "attnprobe Probe": ours, "plain hooks": hooks}
    nns = _try_import("nnsight")
    if nns is not None:
        wrapped = nns.NNsight(model)

        def envoy(path):
            env = wrapped
            for part in path.split("."):
                env = env[int(part)] if part.isdigit() else getattr(env, part)
            return env

        def nnsight_run():
            saved = []  # nnsight runs the block's source itself: append, don't bind inside it
            with torch.no_grad(), wrapped.trace(x):
                for p in paths:
                    saved.append(envoy(p).output.save())
            return saved

        fns["nnsight"] = nnsight_run
    tl = _try_import("torchlens")
    if tl is not None and hasattr(tl, "trace"):
        fns["torchlens (all ops)"] = lambda: tl.trace(model, x)
    for name in ("nnsight", "torchlens (all ops)"):
        if name in fns:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fns[name]()
            except Exception as exc:  # report, do not crash
                print(f"  {name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
                del fns[name]
    for peer in ("nnsight", "torchlens"):
        if not any(k.startswith(peer) for k in fns) and _try_import(peer) is None:
            print(f"  {peer}: not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t, _ = race(fns, dev, args.capture_rounds)
    base = t["plain forward"]
    for name, tm in t.items():
        print(f"  {name:<22} {tm.median * 1e3:9.1f} ms   x{tm.median / base.median:5.2f} ({tm.min / base.min:4.2f})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--sizes", default="64x384,512x384,64x24576",
                    type=lambda s: [tuple(int(v) for v in item.split("x")) for item in s.split(",")])
    ap.add_argument("--stress-n", type=int, default=64)
    ap.add_argument("--stress-p", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--roi", default="64,64,32")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--capture-rounds", type=int, default=5)
    ap.add_argument("--parts", default="cka,capture")
    args = ap.parse_args(argv)
    dev = setup_device(args.device, args.threads)
    clock = "CUDA events" if dev.type == "cuda" else f"thread CPU time, {torch.get_num_threads()} thread(s)"
    print(f"torch {torch.__version__}, {dev}, {clock}")
    if "cka" in args.parts:
        cka_table(args, dev)
    if "capture" in args.parts:
        capture_table(args, dev)


if __name__ == "__main__":
    main()
