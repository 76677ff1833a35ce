"""Paper figure/table: tumor appearance heterogeneity and its clusters (docs/conventions.md).

Per case: tumor mean intensity, coefficient of variation, tumor-to-background contrast,
boundary gradient, volume and the radial profile (±15 mm); the cases are clustered by k-means
on standardised features with k chosen by silhouette. Writes ``tumors.csv`` (one row per case
with its cluster), ``tumor_profiles.csv`` (tidy, radial profiles included), ``clusters.json``
(k, silhouette per k, cluster centres) and two scatter figures.

    python analyses/tumor_clusters.py --workspace runs/demo/attnprobe.toml --data mri-all \
        --out runs/analyses/tumor_clusters
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402

from attnprobe.data.io import list_cases  # noqa: E402
from attnprobe.figures import FEATURE_LABELS, tumor_clusters  # noqa: E402
from attnprobe.workflows.tumors import tumor_analysis  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Analyse and cluster the tumors of ``--data``; return the files written."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset name from the workspace (or a datalist path)")
    p.add_argument("--k-max", type=int, default=6, help="largest k tried")
    args = p.parse_args(argv)
    ws = common.workspace(args.workspace)
    data = common.dataset(ws, args.data)
    refs = [r for r in list_cases(data, split=data.split) if r.label is not None]
    refs = refs[:args.limit] if args.limit is not None else refs

    analysis = tumor_analysis(refs, k_range=(2, args.k_max))
    args.out.mkdir(parents=True, exist_ok=True)
    written = {"table": args.out / "tumors.csv", "profiles": args.out / "tumor_profiles.csv"}
    analysis.wide.to_csv(written["table"], index=False)
    analysis.tidy.to_csv(written["profiles"], index=False)
    c = analysis.clustering
    written["clusters"] = common.write_json(args.out / "clusters.json", {
        "k": c.k, "silhouette": {str(k): v for k, v in c.silhouette.items()}, "features": list(c.features),
        "centers": c.centers.reset_index().to_dict(orient="records")})
    for x, y in (("mean", "cv"), ("contrast", "boundary_gradient")):
        written[f"{x}_{y}"] = common.save_figure(
            tumor_clusters(analysis.wide, x=x, y=y), args.out, f"tumor_clusters_{x}_{y}",
            f"Tumor appearance of {len(analysis.wide)} cases of {args.data}: {FEATURE_LABELS[x]} against "
            f"{FEATURE_LABELS[y]}, coloured by k-means cluster (k = {c.k}, chosen by silhouette).")
    return written


if __name__ == "__main__":
    for key, path in main().items():
        print(f"{key}: {path}")
