"""Paper figure: attention flow between real and padding tokens, and attention drawn on a volume.

For one model: the 2x2 flow matrices ``[[A_rr, A_rp], [A_pr, A_pp]]`` per stage at one padding
amount (mean over cases), and, for one case, the attention each token of one block receives
(mean over the real queries of its window and the heads) mapped back onto the voxels, with
the padding hatched.

    python analyses/attention_flow.py --workspace runs/demo/attnprobe.toml --model swin_unetr-base \
        --data mri --padding 32 --out runs/analyses/attention_flow
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402
import numpy as np  # noqa: E402

from attnprobe.data.preprocess import iter_cases  # noqa: E402
from attnprobe.figures import attention_on_volume, flow_matrices  # noqa: E402
from attnprobe.metrics.aggregate import stage_means  # noqa: E402
from attnprobe.metrics.sweep import SweepSpec  # noqa: E402
from attnprobe.workflows.attention import attention_volume  # noqa: E402
from attnprobe.workflows.sweep import online_sweep  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Draw the flow matrices and the attention map; return the files written."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model name from the workspace")
    p.add_argument("--data", required=True, help="dataset name from the workspace (or a datalist path)")
    p.add_argument("--padding", type=int, default=32, help="padding along z in voxels")
    p.add_argument("--block", default="stage0.block0", help="block whose attention is drawn on the volume")
    p.add_argument("--case", type=int, default=0, help="index of the case drawn on the volume")
    args = p.parse_args(argv)
    ws = common.workspace(args.workspace)
    data = common.dataset(ws, args.data)
    loaded = common.load_model(ws, args.model)
    config = common.preprocessing(loaded, roi=loaded.roi, spacing=args.spacing)
    cases = list(iter_cases(data, config, split=data.split, limit=args.limit))
    stages = stage_means(online_sweep(loaded.model, cases, SweepSpec(paddings=(args.padding,))))
    written = {"flow": common.save_figure(
        flow_matrices(stages, padding=args.padding), args.out, f"flow_{args.model}",
        f"Attention flow per stage of {args.model} at {args.padding} voxels of axial padding, mean over "
        f"{len(cases)} cases (rows: query real/padding; columns: key real/padding).")}
    case = cases[min(args.case, len(cases) - 1)]
    vol = attention_volume(loaded.model, case, padding=args.padding, block=args.block)
    fig = attention_on_volume(vol["image"], vol["attention"], padding_mask=vol["padding_mask"],
                              spacing=tuple(float(s) for s in case.spacing),
                              title=f"{args.model}: attention received in {args.block}")
    written["attention"] = common.save_figure(
        fig, args.out, f"attention_{args.model}",
        f"Attention each token of {args.block} receives (mean over real queries and heads) on case "
        f"{case.case_id} with {args.padding} voxels of axial padding (hatched), {args.model}.")
    np.savez_compressed(args.out / f"attention_{args.model}.npz", image=vol["image"], attention=vol["attention"],
                        padding_mask=vol["padding_mask"], spacing=np.asarray(case.spacing),
                        case=case.case_id, block=args.block, padding=args.padding, label=args.model)
    return written


if __name__ == "__main__":
    for key, path in main().items():
        print(f"{key}: {path}")
