"""Open and validate capture stores as xarray DataTrees."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

from attnprobe.errors import StoreError
from attnprobe.store.schema import CASE, DONE
from attnprobe.store.writer import check_schema


def open_store(path: str | os.PathLike[str], *, chunks: Any = None) -> xr.DataTree:
    """Open a capture store as a DataTree with one node per block.

    Parameters
    ----------
    path
        A store written by ``attnprobe capture``.
    chunks
        Passed to xarray: ``None`` for lazily indexed numpy arrays, ``{}`` or a mapping for
        dask-backed arrays (out-of-core analysis).

    Returns
    -------
    xarray.DataTree
        Root dataset with ``case`` and ``done`` over ``sample`` and the capture attrs;
        child nodes ``stage{s}.block{b}`` with ``attn (sample, window, head, query, key)``,
        ``attn_kind (sample, window, token)`` and ``out (sample, x, y, z, channel)``.

    Raises
    ------
    StoreError
        Missing path, not a zarr store, or a schema version this attnprobe cannot read.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"no store at {path}", expected="a folder written by attnprobe capture",
                         got="nothing at that path", fix="check the path")
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a non-store folder
        raise StoreError(f"{path} is not a zarr store", expected="a store written by attnprobe capture",
                         got=type(exc).__name__) from None
    check_schema(root, path)
    if CASE not in root or DONE not in root:
        raise StoreError(f"{path} is incomplete", expected="root arrays 'case' and 'done'",
                         got=str(sorted(root.array_keys())), fix="re-run the capture")
    return xr.open_datatree(str(path), engine="zarr", consolidated=False, chunks=chunks)


def as_tree(store: str | os.PathLike[str] | xr.DataTree, *, chunks: Any = None) -> xr.DataTree:
    """A DataTree as given, or the store at a path opened with :func:`open_store`."""
    return store if isinstance(store, xr.DataTree) else open_store(store, chunks=chunks)


def is_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zarr v3 group folder (it holds ``zarr.json``); a checkpoint is a file."""
    path = Path(path)
    return path.is_dir() and (path / "zarr.json").is_file()


def block_names(tree: xr.DataTree) -> list[str]:
    """Block nodes of a store in model order (stage, then block)."""
    names = [n for n in tree.children if n.startswith("stage")]
    return sorted(names, key=lambda n: tuple(int(p.lstrip("stageblock")) for p in n.split(".")))
