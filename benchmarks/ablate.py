"""Cost of an edited forward (``attnprobe.capture.intervene.Intervene``) relative to the plain forward.

    python benchmarks/ablate.py                          # tiny Swin UNETR and SMIT, 64x64x32, CPU
    python benchmarks/ablate.py --arch smit --roi 64,64,64 --repeats 15
    python benchmarks/ablate.py --device cuda --preset swin_unetr --roi 96,96,96

For each edit -- ``mask-all`` (padding keys masked before every softmax), ``mean-ablate``
(input-padding output tokens of every block replaced by the mean real token), ``empty`` (an
intervention without edits: the bookkeeping hooks only) -- the plain forward and the edited
forward alternate input by input (so other load on a shared machine hits both alike), ``--repeats``
times after a warm-up; the ratio edited / plain is taken per pair and its median and min are
printed. The plain forward runs on the explicit-softmax path (flash attention off), the path the
edits need. The input is a random volume whose last ``--pad`` slices on z are padding.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from attnprobe.capture.edits import Intervention, MaskKeys, ReplaceTokens
from attnprobe.capture.intervene import Intervene
from attnprobe.models import build_model, get_adapter

EDITS = {
    "empty": (),
    "mask-all": (MaskKeys(blocks="*", kind="all"),),
    "mean-ablate": (ReplaceTokens(blocks="*", kind="input", value="mean-real"),),
}


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="both", choices=["both", "swin_unetr", "smit"])
    parser.add_argument("--preset", default="tiny", help="model preset (tiny: CPU-sized)")
    parser.add_argument("--roi", default="64,64,32", help="input x,y,z (multiples of 32)")
    parser.add_argument("--pad", type=int, default=12, help="padding slices at the end of z")
    parser.add_argument("--repeats", type=int, default=9, help="timed pairs per edit")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def bench(arch: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    device = torch.device(args.device)
    roi = tuple(int(v) for v in args.roi.split(","))
    torch.manual_seed(0)
    model = build_model(arch, preset=args.preset).eval().to(device)
    for module in get_adapter(arch).attention_modules(model):
        if hasattr(module, "use_flash_attention"):
            module.use_flash_attention = False  # the path every edit runs on
    mask = torch.ones(1, 1, *roi, dtype=torch.bool, device=device)
    if args.pad:
        mask[..., -args.pad:] = False
    x = torch.randn(1, 1, *roi, device=device) * mask
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for name, edits in EDITS.items():
            iv = Intervention(name=name, edits=edits)
            with Intervene(model, iv) as edit:
                edit.run(x, mask=mask)  # warm-up
            model(x)
            ratios, plain_s = [], []
            for _ in range(args.repeats):
                p = _timed(lambda: model(x), device)

                def edited(iv: Intervention = iv) -> None:
                    with Intervene(model, iv) as e:
                        e.run(x, mask=mask)

                e = _timed(edited, device)
                ratios.append(e / p)
                plain_s.append(p)
            out[name] = {"median_ratio": statistics.median(ratios), "min_ratio": min(ratios),
                         "plain_median_s": statistics.median(plain_s)}
    return out


def main(argv: list[str] | None = None) -> dict:
    args = _args(argv)
    torch.set_num_threads(args.threads)
    archs = ["swin_unetr", "smit"] if args.arch == "both" else [args.arch]
    results = {}
    print(f"edited / plain forward, {args.preset} preset, input {args.roi}, last {args.pad} z slices padding, "
          f"{args.repeats} interleaved pairs, device {args.device}, {args.threads} thread(s)")
    for arch in archs:
        results[arch] = bench(arch, args)
        for name, r in results[arch].items():
            print(f"  {arch:10s} {name:11s} median {r['median_ratio']:.3f}  min {r['min_ratio']:.3f}  "
                  f"(plain {1000 * r['plain_median_s']:.1f} ms)")
    return results


if __name__ == "__main__":
    main()
