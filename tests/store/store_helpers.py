"""Small stores for integrity tests: a tiny Swin UNETR on 64x32x32 inputs (its smallest), two blocks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from attnprobe.models import build_model

TAPS = ("stage0.block1.*", "stage3.block0.out")


@dataclass
class Case:
    case_id: str
    image: torch.Tensor
    mask: torch.Tensor


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("swin_unetr", preset="tiny").eval()


def make_cases(n: int = 3, shape=(64, 32, 32)) -> list[Case]:
    g = torch.Generator().manual_seed(1)
    cases = []
    for i in range(n):
        mask = torch.zeros(1, *shape, dtype=torch.bool)
        mask[..., : 16 + 4 * i] = True
        cases.append(Case(f"case{i}", torch.randn(1, *shape, generator=g) * mask, mask))
    return cases


def store_values(path: Path) -> dict[str, np.ndarray]:
    """Every array of a store, decoded (for identity checks)."""
    root = zarr.open_group(str(path), mode="r")
    out = {}
    for name, arr in root.arrays():
        out[name] = arr[:]
    for gname, group in root.groups():
        for name, arr in group.arrays():
            out[f"{gname}/{name}"] = arr[:]
    return out


def assert_same_store(a: Path, b: Path) -> None:
    va, vb = store_values(a), store_values(b)
    assert sorted(va) == sorted(vb)
    for key in va:
        np.testing.assert_array_equal(va[key], vb[key], err_msg=key)
    ra, rb = dict(zarr.open_group(str(a)).attrs), dict(zarr.open_group(str(b)).attrs)
    assert ra == rb


def chunk_files(path: Path) -> list[Path]:
    """Chunk files of a store, by kind: every file under a 'c' folder."""
    return sorted(p for p in path.rglob("*") if p.is_file() and "c" in p.relative_to(path).parts)
