"""Tumor appearance of a dataset: per-case features and their k-means clusters, from image and label files.

Features and clustering are :func:`attnprobe.data.tumor_stats.analyze_tumors` (docs/conventions.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from attnprobe.data.io import CaseRef
from attnprobe.data.tumor_stats import TumorAnalysis

__all__ = ["tumor_analysis", "with_phantom_clusters"]


def _volumes(refs: Iterable[CaseRef]) -> Iterator[tuple[str, np.ndarray, np.ndarray, tuple[float, float, float]]]:
    from attnprobe.data.arrays import affine_spacing
    from attnprobe.data.io import load_volume

    for ref in refs:
        if ref.label is None:
            continue
        image = load_volume(ref.image, role="image")
        label = load_volume(ref.label, role="label")
        yield ref.case_id, image.numpy(), label.numpy(), affine_spacing(image.affine)


def tumor_analysis(refs: Iterable[CaseRef], **options: Any) -> TumorAnalysis:
    """Tumor statistics of the labelled cases among ``refs`` (read one at a time) and their clustering.

    ``options`` are keywords of :func:`attnprobe.data.tumor_stats.analyze_tumors` (``k_range`` ...).
    """
    from attnprobe.data.tumor_stats import analyze_tumors

    return analyze_tumors(_volumes(refs), **options)


def with_phantom_clusters(wide: Any, phantoms_json: str | os.PathLike[str]) -> Any:
    """``wide`` with a ``phantom_cluster`` column: each case's generating cluster (-1: not a phantom)."""
    truth = {c["case"]: int(c["cluster"]) for c in json.loads(Path(phantoms_json).read_text())["cases"]}
    return wide.assign(phantom_cluster=[truth.get(c, -1) for c in wide["case"]])
