"""Cases for the workflows: listed lazily, prepared at a ROI, ranked by their real extent.

Every workflow takes prepared cases (``image``/``mask`` ``(1, x, y, z)``, docs/definitions.md);
this module makes them from a datalist, a folder or a workspace dataset name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from attnprobe.data.preprocess import PreparedCase, PreprocessConfig

__all__ = ["lazy_cases", "prepare_cases", "prepared", "content_length", "longest_cases"]


def lazy_cases(data: str | os.PathLike[str], config: PreprocessConfig, *, split: str | None = "all",
               limit: int | None = None) -> list[Any]:
    """Cases of a datalist, folder or dataset name, each preprocessed when first touched.

    Parameters
    ----------
    data
        Datalist JSON, folder of NIfTI files, or a dataset name of the workspace.
    config
        Preprocessing of every case.
    split
        Datalist split; ``"all"`` (or None) defers to the split a workspace dataset declares.
    limit
        At most this many cases (None: all).

    Returns
    -------
    list of :class:`~attnprobe.data.lazy.LazyCase`

    Raises
    ------
    DataError
        No case left after ``split`` and ``limit``.
    """
    from attnprobe.data.lazy import LazyCase
    from attnprobe.errors import DataError
    from attnprobe.workspace import list_data

    refs = list_data(data, split=None if split in (None, "all") else split, limit=limit)  # type: ignore[arg-type]
    if not refs:
        raise DataError(f"no cases in {data}", expected="at least one case", got="0 after --limit/--split")
    return [LazyCase(ref, config) for ref in refs]


def prepare_cases(data: str | os.PathLike[str], *, split: str = "test", roi: Sequence[int] | str,
                  spacing_mm: float | None, limit: int | None = None) -> list[PreparedCase]:
    """Prepare the cases of a datalist at a ROI, padding at the end of each axis (docs/definitions.md)."""
    from attnprobe.data.preprocess import iter_cases

    roi_value = roi if isinstance(roi, str) else tuple(int(v) for v in roi)
    config = PreprocessConfig(roi=roi_value, spacing=spacing_mm, pad_mode="end")  # type: ignore[arg-type]
    return list(iter_cases(data, config, split=split, limit=limit))  # type: ignore[arg-type]


def prepared(refs: Iterable[Any], config: PreprocessConfig, *,
             on_case: Callable[[str], None] | None = None) -> Iterator[PreparedCase]:
    """Prepare ``refs`` (:class:`~attnprobe.data.io.CaseRef`) one at a time, as they are consumed.

    ``on_case`` is called with each case id before its preprocessing starts (progress).
    """
    from attnprobe.data.preprocess import prepare_case

    for ref in refs:
        if on_case is not None:
            on_case(ref.case_id)
        yield prepare_case(ref, config)


def content_length(case: Any, axis: int = 2) -> int:
    """Voxels along ``axis`` (0..2; 2 is z) that hold real content at some position of the other axes."""
    others = tuple(d for d in range(3) if d != axis)
    return int(case.mask[0].bool().any(dim=others).sum())


def longest_cases(cases: Sequence[Any], n: int, *, axis: int = 2) -> list[Any]:
    """The ``n`` cases with the most real voxels along ``axis`` (``2``: z), longest first (stable)."""
    return sorted(cases, key=lambda case: content_length(case, axis), reverse=True)[:n]
