"""Paper figure/table: feature reuse, CKA of every block of a pretrained model with fine-tuned ones.

Both models see identical crops of the same cases; examples are block outputs pooled to 8³ by
named axes, CKA is linear with the unbiased HSIC (docs/cka.md). The cases are prepared at ``--roi``
(default: the reference model's ROI) around their tumor; an input that is mostly real tissue
(e.g. the anisotropic crop) keeps the padding share from dominating every block's features. Writes per target ``cka.nc``,
``cka.csv`` and ``summary.json`` under ``<out>/<tgt>/``, a heatmap per target, the
feature-reuse lines (diagonals) and ``reuse_table.csv`` (diagonal mean per stage).

    python analyses/feature_reuse.py --workspace runs/demo/attnprobe.toml --ref ct-swin_unetr \
        --tgt swin_unetr-base --tgt swin_unetr-act --data mri --roi 64,64,32 --crops 1 --spacing 2 \
        --out runs/analyses/feature_reuse
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402
import pandas as pd  # noqa: E402

from attnprobe.data.preprocess import iter_cases  # noqa: E402
from attnprobe.figures import cka_heatmap, feature_reuse_lines  # noqa: E402
from attnprobe.metrics.reuse import summarize  # noqa: E402
from attnprobe.workflows.cka import ModelComparison, save_cka  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Compare ``--ref`` with every ``--tgt``; return the files written."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--ref", required=True, help="reference (pretrained) model name")
    p.add_argument("--tgt", action="append", help="fine-tuned model name (repeatable)")
    p.add_argument("--data", required=True, help="dataset name from the workspace (or a datalist path)")
    p.add_argument("--crops", type=int, default=2, help="random crops per case (same boxes for both models)")
    p.add_argument("--crop-size", default=None, help="crop x,y,z (default: the whole prepared volume for 1 crop)")
    p.add_argument("--seed", type=int, default=0, help="crop seed")
    p.add_argument("--roi", default=None, help="input size x,y,z the cases are prepared at (default: the ref's ROI)")
    args = p.parse_args(argv)
    ws = common.workspace(args.workspace)
    data = common.dataset(ws, args.data)
    ref = common.load_model(ws, args.ref)
    roi = tuple(common.int_list(args.roi)) if args.roi else ref.roi
    config = common.preprocessing(ref, roi=roi, spacing=args.spacing)
    cases = list(iter_cases(data, config, split=data.split, limit=args.limit))
    crop = tuple(common.int_list(args.crop_size)) if args.crop_size else None
    written: dict[str, Path] = {}
    diagonals, rows = {}, []
    for name in common.names(args.tgt, "tgt"):
        tgt = common.load_model(ws, name)
        da = ModelComparison(ref.model, tgt.model, cases, crops=args.crops, crop_size=crop, seed=args.seed,
                             names=(args.ref, name)).run()
        save_cka(da, args.out / name)
        summary = summarize(da)
        diagonals[name] = pd.Series(summary["diagonal"])
        per_stage = pd.Series(summary["diagonal"]).groupby(lambda b: b.split(".")[0]).mean()
        rows.append({"ref": args.ref, "tgt": name, "diagonal_mean": summary["diagonal_mean"],
                     "off_diagonal_mean": summary["off_diagonal_mean"],
                     "mean_best_match_shift": summary["mean_best_match_shift"], **per_stage.to_dict()})
        written[f"cka_{name}"] = common.save_figure(
            cka_heatmap(da, ref_label=args.ref, tgt_label=name), args.out, f"cka_{name}",
            f"Linear CKA (unbiased, pooled 8³, n = {da.attrs.get('n')}) between every block of {args.ref} (rows) "
            f"and {name} (columns) on identical crops of {args.data}.")
    written["reuse"] = common.save_figure(
        feature_reuse_lines(diagonals, reference=args.ref), args.out, "feature_reuse",
        f"Feature reuse: CKA of each block with the same block of {args.ref}, for {', '.join(diagonals)}.")
    written["table"] = args.out / "reuse_table.csv"
    pd.DataFrame(rows).to_csv(written["table"], index=False)
    return written


if __name__ == "__main__":
    for key, path in main().items():
        print(f"{key}: {path}")
