"""Open and validate capture stores as xarray DataTrees (docs/store.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import xarray as xr
import zarr

from attnprobe.errors import StoreError
from attnprobe.store.integrity import ArrayRule, CheckedStore, check_done_chunks, read_rules
from attnprobe.store.schema import CASE, DONE, check_schema


@dataclass
class CheckedRoot:
    """A store opened through :class:`CheckedStore`, with its case ids and done flags read."""

    path: Path
    version: int
    store: CheckedStore
    group: zarr.Group
    rules: dict[str, ArrayRule]
    cases: list[str]
    done: np.ndarray


def open_checked(path: str | os.PathLike[str], *, lenient_done: bool = False) -> CheckedRoot:
    """Open a store for reading: schema, root arrays, case ids and done flags, checked.

    Raises
    ------
    StoreError
        Missing path, not a store, an incomplete layout, another schema, a missing or
        corrupt ``case``/``done`` array. With ``lenient_done`` a damaged ``done`` chunk reads
        as done (so that :func:`attnprobe.store.verify.verify_store` reports that sample).
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"no store at {path}", expected="a folder written by attnprobe capture",
                         got="nothing at that path", fix="check the path")
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path} is not a zarr store", expected="a store written by attnprobe capture",
                         got="a folder without zarr.json" if path.is_dir() else "a file")
    try:
        plain = zarr.open_group(str(path), mode="r")
        attrs = dict(plain.attrs)
    except Exception as exc:  # zarr raises several types for a broken group
        raise StoreError(f"{path} is not a readable zarr store", expected="a store written by attnprobe capture",
                         got=type(exc).__name__) from None
    version = check_schema(attrs, path)
    rules = read_rules(path)
    lost = [name for name in (CASE, DONE) if name not in rules]
    if lost:
        raise StoreError(
            f"{path} has no {' and no '.join(repr(n) for n in lost)} array (deleted, or never written)",
            expected="root arrays 'case' and 'done' (which samples are complete)",
            got=f"root arrays {sorted(n for n in rules if '/' not in n)}",
            fix="re-capture into a new store: without them no sample can be trusted",
        )
    store = CheckedStore(path, rules)
    group = zarr.open_group(store=store, mode="r")
    cases = [str(c) for c in np.asarray(cast(zarr.Array, group[CASE])[:]).tolist()]
    store.cases = cases
    done = _read_done(group, len(cases), lenient_done)
    if done.shape != (len(cases),):
        raise StoreError(f"{path} is corrupt: 'done' and 'case' differ in length",
                         expected=f"{len(cases)} done flags", got=str(done.shape), fix="re-capture into a new store")
    store.done = done
    return CheckedRoot(path, version, store, group, rules, cases, done)


def _read_done(group: zarr.Group, n: int, lenient: bool) -> np.ndarray:
    try:
        return np.asarray(cast(zarr.Array, group[DONE])[:], dtype=bool)
    except StoreError:
        if not lenient:
            raise
    done = np.zeros(n, dtype=bool)
    for sample in range(n):  # one chunk per sample: find the damaged ones
        try:
            done[sample] = bool(cast(zarr.Array, group[DONE])[sample])
        except StoreError:
            done[sample] = True
    return done


def open_store(path: str | os.PathLike[str], *, chunks: Any = None) -> xr.DataTree:
    """Open a capture store as a DataTree with one node per block.

    Every chunk read through the tree is checked (presence for done samples, CRC32C); see
    :mod:`attnprobe.store.integrity`.

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
        Missing path, not a zarr store, a schema version this attnprobe cannot read, a
        missing chunk of a done sample; later, while reading, a chunk that fails its checksum.
    """
    checked = open_checked(path)
    check_done_chunks(checked.path, checked.rules, checked.done, checked.cases)
    # xarray's stubs do not list zarr stores, which its zarr engine accepts
    return xr.open_datatree(checked.store, engine="zarr", consolidated=False,  # type: ignore[arg-type]
                            chunks=chunks)


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
