"""Stream captures into a Zarr v3 store from a background thread, sample by sample.

The forward pass hands finished samples to a bounded queue (``max_pending`` samples), so
memory never holds more than a couple of samples of maps and the model does not wait
for the disk. A sample's ``done`` flag is written last; a capture killed halfway leaves
every earlier sample readable and marked done, and a rerun skips them.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr

from attnprobe.errors import StoreError
from attnprobe.models.adapter import ATTN_DIMS, KIND_DIMS, OUT_DIMS, BlockGeometry
from attnprobe.store.schema import (
    ATTN,
    ATTN_KIND,
    CASE,
    DONE,
    OUT,
    RESUME_KEYS,
    SCHEMA_ATTR,
    SCHEMA_VERSION,
    StoreDType,
)

_STOP = object()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def _array_specs(geom: BlockGeometry, kinds: set[str]) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    specs: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {}
    n, w = geom.n_tokens, geom.n_windows
    if "attn" in kinds:
        specs[ATTN] = ((w, geom.heads, n, n), ATTN_DIMS)
        specs[ATTN_KIND] = ((w, n), KIND_DIMS)
    if "out" in kinds:
        specs[OUT] = ((*geom.grid, geom.channels), OUT_DIMS)
    return specs


def _chunks(var: str, shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """One sample per chunk; attention maps also split over windows to keep chunks near 8 MiB,
    so offline reductions can stream window chunks."""
    if var != ATTN:
        return (1, *shape)
    per_window = int(np.prod(shape[1:])) * itemsize
    windows = max(1, min(shape[0], CHUNK_BYTES // max(per_window, 1)))
    return (1, windows, *shape[1:])


CHUNK_BYTES = 8 << 20


def check_schema(root: zarr.Group, path: Path) -> None:
    version = root.attrs.get(SCHEMA_ATTR)
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written with store schema {version!r}",
            expected=f"schema {SCHEMA_VERSION} (this attnprobe)",
            got=f"schema {version!r}",
            fix="re-capture into a new store, or open it with the attnprobe version that wrote it",
        )


class StoreWriter:
    """Create (or resume) a capture store and write samples to it in the background.

    Parameters
    ----------
    path
        Store directory (``*.zarr``).
    cases
        Case id of every sample, in sample order.
    blocks
        Geometry of each captured block and which tap kinds (``attn``/``out``) it holds.
    attrs
        Root attributes (versions, architecture, checkpoint, ROI, taps ...). The keys in
        ``RESUME_KEYS`` must match an existing store for a resume.
    dtype
        Storage dtype of ``attn`` and ``out``.
    overwrite
        Delete an existing store instead of resuming into it.
    max_pending
        Samples that may wait in the queue before :meth:`submit` blocks.
    """

    def __init__(self, path: str | Path, *, cases: Sequence[str], blocks: Mapping[str, tuple[BlockGeometry, set[str]]],
                 attrs: Mapping[str, Any], dtype: StoreDType = "float16", overwrite: bool = False,
                 max_pending: int = 2) -> None:
        self.path = Path(path)
        self.dtype = dtype
        attrs = _jsonable({**attrs, "cases": list(cases), "dtype": dtype})
        if self.path.exists() and overwrite:
            shutil.rmtree(self.path)
        if self.path.exists():
            self.root = self._open_existing(attrs)
        else:
            self.root = self._create(cases, blocks, attrs)
        self._done = np.asarray(cast(zarr.Array, self.root[DONE])[:], dtype=bool)
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="attnprobe-store-writer", daemon=True)
        self._thread.start()

    # ---- layout ---------------------------------------------------------------------
    def _create(self, cases: Sequence[str], blocks: Mapping[str, tuple[BlockGeometry, set[str]]],
                attrs: Mapping[str, Any]) -> zarr.Group:
        root = zarr.open_group(str(self.path), mode="w", zarr_format=3)
        n = len(cases)
        case = root.create_array(CASE, shape=(n,), dtype=str, chunks=(max(n, 1),), dimension_names=("sample",))
        case[:] = np.asarray(list(cases), dtype=str)
        root.create_array(DONE, shape=(n,), dtype=bool, chunks=(1,), fill_value=False,
                          dimension_names=("sample",))
        for name, (geom, kinds) in blocks.items():
            group = root.create_group(name)
            group.attrs.update(_jsonable({"stage": geom.stage, "block": geom.block, "grid": geom.grid,
                                          "window": geom.window, "shift": geom.shift, "heads": geom.heads}))
            for var, (shape, dims) in _array_specs(geom, kinds).items():
                dt = "uint8" if var == ATTN_KIND else self.dtype
                group.create_array(var, shape=(n, *shape), chunks=_chunks(var, shape, np.dtype(dt).itemsize),
                                   dtype=dt, fill_value=0, dimension_names=dims)
        # the schema stamp goes last: a store without it was never completely laid out
        root.attrs.update({**attrs, SCHEMA_ATTR: SCHEMA_VERSION})
        return root

    def _open_existing(self, attrs: Mapping[str, Any]) -> zarr.Group:
        try:
            root = zarr.open_group(str(self.path), mode="r+")
        except Exception as exc:  # zarr raises several types for a non-store folder
            raise StoreError(
                f"{self.path} exists but is not a zarr store", expected="a store written by attnprobe capture",
                got=f"{type(exc).__name__}", fix="choose another --out or delete the folder",
            ) from None
        check_schema(root, self.path)
        for key in RESUME_KEYS:
            if key in attrs and root.attrs.get(key) != attrs[key]:
                raise StoreError(
                    f"{self.path} holds another capture ({key} differs), so it cannot be resumed",
                    expected=f"{key} = {str(root.attrs.get(key))[:80]}",
                    got=f"{key} = {str(attrs[key])[:80]}",
                    fix="use a new --out path, or --overwrite to replace the store",
                )
        return root

    # ---- writing --------------------------------------------------------------------
    @property
    def done(self) -> np.ndarray:
        """Samples already complete (a copy)."""
        return self._done.copy()

    def submit(self, sample: int, arrays: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Queue one sample: ``{block name: {var: array without the sample axis}}``."""
        self._raise_pending()
        self._queue.put((sample, arrays))
        self._raise_pending()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._error is None:
                    sample, arrays = item
                    for name, variables in arrays.items():
                        # the layout is ours (_create): groups of arrays, DONE an array
                        group = cast(zarr.Group, self.root[name])
                        for var, value in variables.items():
                            cast(zarr.Array, group[var])[sample] = value
                    cast(zarr.Array, self.root[DONE])[sample] = True
                    self._done[sample] = True
            except BaseException as exc:  # surfaced in the caller's thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise StoreError(f"writing to {self.path} failed: {err}", fix="check disk space and permissions") from err

    def close(self) -> None:
        """Wait for queued samples, stop the thread and surface any write error."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise_pending()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
