"""Paper figure/table: tumor detection, Dice and HD95 per training preset and backbone.

Definitions: docs/conventions.md, "Evaluation".

Every ``--model`` (e.g. the runs of the ``base``, ``ta``, ``act`` and ``scratch`` presets of each
backbone) predicts every case of ``--data`` by sliding-window inference on its training window
(overlap 0.5, Gaussian blending); predictions are scored on the label grid (26-connected
components, those of 10 voxels or fewer dropped, detection at IoU > 0.1). Writes
``<model>/cases.csv`` and ``<model>/summary.json`` (as ``attnprobe evaluate``), the table
``interventions.csv`` (k/n detected, Dice, HD95 per preset and backbone) and the two figures.

    python analyses/interventions.py --workspace runs/demo/attnprobe.toml --model swin_unetr-base \
        --model swin_unetr-act --model smit-base --model smit-act --data mri --out runs/analyses/interventions
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402
import pandas as pd  # noqa: E402

from attnprobe.data.io import list_cases  # noqa: E402
from attnprobe.figures import detection_bars, dice_hd95_boxes  # noqa: E402
from attnprobe.train.evaluate import DEFAULT_DEFINITIONS  # noqa: E402
from attnprobe.train.inference import InferenceConfig  # noqa: E402
from attnprobe.workflows.evaluation import evaluation_run, predict_and_score  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Evaluate every ``--model``; return the files written."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="model name from the workspace (repeatable)")
    p.add_argument("--data", required=True, help="dataset name from the workspace (or a datalist path)")
    args = p.parse_args(argv)
    ws = common.workspace(args.workspace)
    data = common.dataset(ws, args.data)
    refs = [r for r in list_cases(data, split=data.split) if r.label is not None]
    refs = refs[:args.limit] if args.limit is not None else refs
    written: dict[str, Path] = {}
    rows, per_case = [], []
    for name in common.names(args.model, "model"):
        loaded = common.load_model(ws, name)
        config = common.preprocessing(loaded, roi="full", spacing=args.spacing)
        results = predict_and_score(loaded.model, refs, preprocess=config,
                                    inference=InferenceConfig(roi=loaded.roi)).results
        record = evaluation_run(results, info={"model": str(loaded.checkpoint), "preset": loaded.preset,
                                               "backbone": loaded.backbone, "roi": list(loaded.roi)},
                                metric_options=DEFAULT_DEFINITIONS, preset=loaded.preset, backbone=loaded.backbone)
        record.save(args.out / name)
        table, summary = record.cases, record.summary
        rows.append({"backbone": loaded.backbone, "preset": loaded.preset, "model": name,
                     "n_detected": summary["n_detected"], "n_cases": summary["n_with_reference"],
                     "detection_rate": summary["detection_rate"], "dice_mean": summary["dice_mean"],
                     "hd95_mean": summary["hd95_mean"], "surface_dice_mean": summary["surface_dice_mean"]})
        per_case.append(table.assign(preset=loaded.preset, backbone=loaded.backbone))
    summary_frame = pd.DataFrame(rows)
    written["table"] = args.out / "interventions.csv"
    summary_frame.to_csv(written["table"], index=False)
    n = len(refs)
    written["detection"] = common.save_figure(
        detection_bars(summary_frame), args.out, "detection",
        f"Tumor detection rate (IoU > 0.1 with the largest lesion; bars labelled k/n) per preset and backbone "
        f"on {n} cases of {args.data}.")
    written["dice_hd95"] = common.save_figure(
        dice_hd95_boxes(pd.concat(per_case, ignore_index=True)), args.out, "dice_hd95",
        f"Per-case Dice and HD95 (mm) per preset and backbone on {n} cases of {args.data}.")
    return written


if __name__ == "__main__":
    for key, path in main().items():
        print(f"{key}: {path}")
