"""Paper figure/table: attention dilution (ADI) per stage as input padding grows (docs/definitions.md).

For each model and each test case, the input keeps the model ROI while its real content is
shortened along z by p voxels (the fixed-ROI sweep); ADI, SFR and the flow metrics are reduced
inside the hooks. Writes, per model, the block-level ``adi_<model>.csv`` and the stage-level
summary (mean, sd, n over cases), plus the ADI and SFR figures with captions.

    python analyses/padding_sweep.py --workspace runs/demo/attnprobe.toml \
        --model swin_unetr-base --model smit-base --data mri --longest 3 --out runs/analyses/padding_sweep
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402
import pandas as pd  # noqa: E402

from attnprobe.data.preprocess import iter_cases  # noqa: E402
from attnprobe.figures import adi_vs_padding  # noqa: E402
from attnprobe.metrics.aggregate import stage_means, sweep_summary  # noqa: E402
from attnprobe.metrics.sweep import SweepSpec  # noqa: E402
from attnprobe.workflows.cases import longest_cases  # noqa: E402
from attnprobe.workflows.sweep import online_sweep  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Run the sweep for every ``--model`` on ``--data``; return the files written."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="model name from the workspace (repeatable)")
    p.add_argument("--data", required=True, help="dataset name from the workspace (or a datalist path)")
    p.add_argument("--paddings", default="0,16,32,48", help="padding amounts in voxels along z")
    p.add_argument("--longest", type=int, default=None,
                   help="keep the N cases with the longest real axial extent (content that fills the ROI at p = 0)")
    args = p.parse_args(argv)
    ws = common.workspace(args.workspace)
    data = common.dataset(ws, args.data)
    spec = SweepSpec(paddings=tuple(common.int_list(args.paddings)))
    written: dict[str, Path] = {}
    stages = []
    for name in common.names(args.model, "model"):
        loaded = common.load_model(ws, name)
        spec.check_shape(loaded.roi)
        config = common.preprocessing(loaded, roi=loaded.roi, spacing=args.spacing)
        cases = list(iter_cases(data, config, split=data.split, limit=args.limit))
        if args.longest is not None:
            cases = longest_cases(cases, args.longest)
        frame = online_sweep(loaded.model, cases, spec, check_fractions=False)
        args.out.mkdir(parents=True, exist_ok=True)
        written[f"adi_{name}"] = args.out / f"adi_{name}.csv"
        frame.to_csv(written[f"adi_{name}"], index=False)
        stages.append(stage_means(frame).assign(model=name))
    frame = pd.concat(stages, ignore_index=True)
    summary = pd.concat([sweep_summary(g.drop(columns="model")).assign(model=m)
                         for m, g in frame.groupby("model", sort=False)], ignore_index=True)
    written["summary"] = args.out / "adi_summary.csv"
    summary.to_csv(written["summary"], index=False)
    n = frame["case"].nunique()
    for metric, what in (("adi", "ADI (entropy share of padding keys)"), ("sfr", "SFR (real-to-real attention)")):
        written[metric] = common.save_figure(
            adi_vs_padding(frame, metric=metric), args.out, f"{metric}_vs_padding",
            f"{what} per stage against input padding along z ({args.paddings} voxels, fixed ROI), mean ± sd "
            f"over {n} cases of {args.data}; models: {', '.join(args.model)}.")
    return written


if __name__ == "__main__":
    for key, path in main().items():
        print(f"{key}: {path}")
