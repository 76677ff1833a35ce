"""Paper figure/table: token efficiency of cubic vs anisotropic crops, and a crop recommendation.

Each case is prepared whole (foreground crop, no ROI), its axial extent measured, and its
real-voxel mask fitted to each candidate crop and pushed through the architecture's own token
geometry: efficiency = real tokens / all tokens per stage (window padding included). Writes
``extent.csv``, ``efficiency_<arch>.csv`` (per case) and ``efficiency.csv`` (means per crop and
stage), the recommendation in ``recommendation.json`` and the figure.

    python analyses/token_efficiency.py --workspace runs/demo/attnprobe.toml --data mri-all \
        --arch swin_unetr --arch smit --model-preset tiny --spacing 2 --out runs/analyses/token_efficiency
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402
import pandas as pd  # noqa: E402

from attnprobe.data.preprocess import iter_cases  # noqa: E402
from attnprobe.figures import token_efficiency  # noqa: E402
from attnprobe.workflows.extent import study_crops  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Measure extents and crop efficiency for every ``--arch``; return the files written."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset name from the workspace (or a datalist path)")
    p.add_argument("--arch", action="append", help="architecture (repeatable): swin_unetr, smit")
    p.add_argument("--model-preset", default=None, help="architecture preset, e.g. tiny")
    p.add_argument("--candidates", default=None, help="crops like 96x96x96,96x96x64 (default: the pretrained "
                                                      "cube and every shallower multiple of 32)")
    args = p.parse_args(argv)
    ws = common.workspace(args.workspace)
    data = common.dataset(ws, args.data)
    config = common.preprocessing(None, roi="full", spacing=args.spacing)
    cases = list(iter_cases(data, config, split=data.split, limit=args.limit))
    args.out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    summaries, recommendations, extents = [], {}, None
    for arch in common.names(args.arch, "arch"):
        crops = ([tuple(int(v) for v in c.split("x")) for c in args.candidates.split(",")] if args.candidates
                 else None)
        study = study_crops(cases, crops, arch=arch, model_preset=args.model_preset,
                            spacing_z=config.spacing[2] if config.spacing else 1.0)
        extents = study.extents
        written[f"per_case_{arch}"] = args.out / f"efficiency_{arch}.csv"
        study.per_case.to_csv(written[f"per_case_{arch}"], index=False)
        summaries.append(study.efficiency.assign(arch=arch))
        rec = study.recommendation
        recommendations[arch] = {"roi": list(rec.roi), "reason": rec.reason, "stage0_efficiency": rec.stage0_efficiency}
    written["extent"] = args.out / "extent.csv"
    extents.to_csv(written["extent"], index=False)
    summary = pd.concat(summaries, ignore_index=True)
    written["efficiency"] = args.out / "efficiency.csv"
    summary.to_csv(written["efficiency"], index=False)
    written["recommendation"] = common.write_json(args.out / "recommendation.json", recommendations)
    frame = summary.rename(columns={"candidate": "crop", "efficiency_mean": "efficiency"})
    frame = frame.assign(arch=[common.ARCH_LABELS.get(a, a) for a in frame["arch"]])
    written["figure"] = common.save_figure(
        token_efficiency(frame), args.out, "token_efficiency",
        f"Token efficiency (real / all tokens, window padding included) per stage of each crop, mean over "
        f"{len(cases)} cases of {args.data}.")
    return written


if __name__ == "__main__":
    for key, path in main().items():
        print(f"{key}: {path}")
