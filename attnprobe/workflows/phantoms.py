"""Synthetic phantom datasets written as a run folder (:class:`~attnprobe.results.PhantomSet`).

The phantoms themselves are :mod:`attnprobe.data.phantoms` (docs/definitions.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attnprobe.results import Manifest, PhantomSet

__all__ = ["write_phantoms"]


def write_phantoms(out_dir: str | os.PathLike[str], *, n: int, seed: int, replace: Iterable[str] = (),
                   manifest: Manifest | None = None, **options: Any) -> dict[str, Path]:
    """Write ``n`` phantom cases and one datalist per modality; return modality -> datalist path.

    Parameters
    ----------
    out_dir
        Output folder.
    n, seed
        Number of cases and dataset seed (same seed, same data).
    replace
        Entries of an earlier phantom dataset in ``out_dir`` (from
        :func:`~attnprobe.results.check_out`); they are removed first, so that a new ``n`` or
        seed leaves no orphan cases behind.
    manifest
        With a manifest, the folder is recorded as a :class:`~attnprobe.results.PhantomSet`.
    **options
        Other keywords of :func:`attnprobe.data.phantoms.write_phantom_dataset` (modalities,
        spacing, shape, split, axial_range_mm ...).
    """
    from attnprobe.data.phantoms import write_phantom_dataset
    from attnprobe.results.folders import remove_entries

    out = Path(out_dir)
    remove_entries(out, replace)
    paths = write_phantom_dataset(out, n=n, seed=seed, **options)
    if manifest is not None:
        entries = sorted(p.name for p in out.iterdir() if p.name not in ("record.json", "manifest.json"))
        PhantomSet(entries=entries, manifest=manifest).save(out)
    return {str(k): Path(v) for k, v in paths.items()}
