"""Checks for the one-case arrays that the analysis functions take (numpy or torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from attnprobe.errors import ConfigError, ShapeError

__all__ = ["affine_spacing", "check_spacing", "volume_3d"]


def affine_spacing(affine: Any) -> tuple[float, float, float]:
    """Voxel size along each array axis: the lengths of the affine's first three columns."""
    a = np.asarray(affine, dtype=float)
    return tuple(float(v) for v in np.sqrt((a[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def volume_3d(a: Any, name: str, *, kind: str = "volume", fix: str) -> np.ndarray:
    """``a`` as a numpy ``(x, y, z)`` array; a torch tensor is copied to the CPU.

    A leading singleton channel axis is dropped. ``name``, ``kind`` and ``fix`` word the
    :class:`~attnprobe.errors.ShapeError` raised for anything else than one 3D volume.
    """
    if hasattr(a, "detach"):  # torch tensor / MetaTensor
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.ndim == 4 and arr.shape[0] == 1:  # tolerate a singleton channel axis
        arr = arr[0]
    if arr.ndim != 3:
        raise ShapeError(f"{name} must be a 3D {kind}.", expected="(x, y, z) or (1, x, y, z)",
                         got=str(tuple(arr.shape)), fix=fix)
    return arr


def check_spacing(spacing: Sequence[float], *, example: str = "(1.5, 1.5, 2.5)") -> np.ndarray:
    """Voxel spacing as a float64 array of three positive finite sizes in mm (x, y, z).

    ``example`` is the spacing the error message suggests.
    """
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ConfigError("Bad voxel spacing.", expected="three positive numbers (x, y, z) in mm",
                          got=repr(spacing), fix=f"pass the image's voxel size, e.g. spacing={example}")
    return sp
