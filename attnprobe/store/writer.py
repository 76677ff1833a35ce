"""Stream captures into a Zarr v3 store from a background thread, sample by sample.

The forward pass hands finished samples to a bounded queue (``max_pending`` samples), so
memory never holds more than a couple of samples of maps and the model does not wait
for the disk. A sample's ``done`` flag is written last, after its values were checked to be
finite; a capture killed halfway leaves every earlier sample readable and marked done, and a
rerun of the same capture (same fingerprint) skips them. docs/store.md describes the layout.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.array_spec import ArrayConfigParams

from attnprobe.errors import AttnprobeError, StoreError
from attnprobe.models.adapter import ATTN_DIMS, KIND_DIMS, OUT_DIMS, BlockGeometry
from attnprobe.store.fingerprint import fingerprint_diff
from attnprobe.store.integrity import check_done_chunks
from attnprobe.store.lock import StoreLock
from attnprobe.store.reader import is_store, open_checked
from attnprobe.store.schema import (
    ATTN,
    ATTN_KIND,
    BLOSC,
    CASE,
    DONE,
    FINGERPRINT_ATTR,
    OUT,
    SCHEMA_ATTR,
    SCHEMA_VERSION,
    StoreDType,
)

_STOP = object()

#: every chunk: Blosc LZ4 with bit shuffle, then a CRC32C of the compressed bytes (checked
#: before decoding); why this codec: schema.BLOSC, docs/store.md
COMPRESSORS = (BloscCodec(**BLOSC), Crc32cCodec())
#: chunks equal to the fill value are written too: a missing chunk always means damage
ARRAY_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}


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


class NonFiniteError(StoreError):
    """A sample whose maps or outputs hold NaN or infinity (never marked done)."""


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
        Root attributes (versions, architecture, checkpoint, ROI, taps ...).
    dtype
        Storage dtype of ``attn`` and ``out``.
    overwrite
        Delete an existing store instead of resuming into it.
    max_pending
        Samples that may wait in the queue before :meth:`submit` blocks.
    fingerprint
        What determines a sample (:func:`attnprobe.store.fingerprint.build_fingerprint`):
        written into a new store; an existing store is resumed only when its fingerprint is
        the same. ``None`` skips the comparison (ranks other than 0, after rank 0 checked).
    lock
        Hold ``STORE.lock`` while writing (rank 0 of a capture; other ranks share its lock).
    """

    #: :meth:`submit` takes CPU tensors too and casts them in the writer thread
    casts_tensors = True

    def __init__(self, path: str | Path, *, cases: Sequence[str], blocks: Mapping[str, tuple[BlockGeometry, set[str]]],
                 attrs: Mapping[str, Any], dtype: StoreDType = "float16", overwrite: bool = False,
                 max_pending: int = 2, fingerprint: Mapping[str, Any] | None = None, lock: bool = True) -> None:
        self.path = Path(path)
        self.dtype = dtype
        self.cases = list(cases)
        stamped: dict[str, Any] = _jsonable({**attrs, "cases": list(cases), "dtype": dtype})
        if fingerprint is not None:
            stamped[FINGERPRINT_ATTR] = _jsonable(fingerprint)
        self._lock = StoreLock(self.path) if lock else None
        if self._lock is not None:
            self._lock.acquire()
        try:
            if self.path.exists() and overwrite:
                # overwrite only ever removes a store attnprobe wrote (docs/results.md, "Output folders")
                if not (self.path.is_dir() and (is_store(self.path) or not any(self.path.iterdir()))):
                    raise StoreError(f"overwrite refused: {self.path} is not an attnprobe capture store",
                                     expected="a store written by attnprobe capture, or an empty folder",
                                     got="a file" if not self.path.is_dir() else "a folder of other files",
                                     fix="choose another path; nothing was removed")
                shutil.rmtree(self.path)
            if self.path.exists():
                self.root = self._open_existing(stamped)
            else:
                self.root = self._create(cases, blocks, stamped)
            # the layout is ours: root arrays and one group of arrays per block
            self._done = np.asarray(cast(zarr.Array, self.root[DONE])[:], dtype=bool)
            groups = {name: cast(zarr.Group, self.root[name]) for name in blocks}
            self._arrays = {
                (name, var): cast(zarr.Array, group[var]).with_config(ARRAY_CONFIG)
                for name, group in groups.items() for var in group.array_keys()
            }
            self._done_array = cast(zarr.Array, self.root[DONE]).with_config(ARRAY_CONFIG)
        except BaseException:
            self._release()
            raise
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="attnprobe-store-writer", daemon=True)
        self._thread.start()

    # ---- layout ---------------------------------------------------------------------
    def _create(self, cases: Sequence[str], blocks: Mapping[str, tuple[BlockGeometry, set[str]]],
                attrs: dict[str, Any]) -> zarr.Group:
        """Lay the store out in a hidden sibling folder, then rename it into place: a layout
        stopped halfway (disk full, Ctrl-C) never leaves a half store at ``path``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{self.path.name}.layout-{os.getpid()}")
        if staging.exists():
            shutil.rmtree(staging)
        try:
            self._layout(staging, cases, blocks, attrs)
            os.rename(staging, self.path)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError):
                raise StoreError(f"could not lay out {self.path}: {exc.strerror or exc}",
                                 fix="free disk space or choose another --out, then rerun (nothing was kept)") from exc
            raise
        return zarr.open_group(str(self.path), mode="r+")

    def _layout(self, where: Path, cases: Sequence[str], blocks: Mapping[str, tuple[BlockGeometry, set[str]]],
                attrs: dict[str, Any]) -> None:
        root = zarr.open_group(str(where), mode="w", zarr_format=3)
        n = len(cases)
        case = root.create_array(CASE, shape=(n,), dtype=str, chunks=(max(n, 1),), dimension_names=("sample",),
                                 compressors=COMPRESSORS)
        case[:] = np.asarray(list(cases), dtype=str)
        root.create_array(DONE, shape=(n,), dtype=bool, chunks=(1,), fill_value=False,
                          dimension_names=("sample",), compressors=COMPRESSORS)
        for name, (geom, kinds) in blocks.items():
            group = root.create_group(name)
            group.attrs.update(_jsonable({"stage": geom.stage, "block": geom.block, "grid": geom.grid,
                                          "window": geom.window, "shift": geom.shift, "heads": geom.heads}))
            for var, (shape, dims) in _array_specs(geom, kinds).items():
                dt = "uint8" if var == ATTN_KIND else self.dtype
                group.create_array(var, shape=(n, *shape), chunks=_chunks(var, shape, np.dtype(dt).itemsize),
                                   dtype=dt, fill_value=0, dimension_names=dims, compressors=COMPRESSORS)
        # the schema stamp goes last: a store without it was never completely laid out
        root.attrs.update({**attrs, SCHEMA_ATTR: SCHEMA_VERSION})

    def _open_existing(self, attrs: dict[str, Any]) -> zarr.Group:
        checked = open_checked(self.path)
        if checked.version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written with store schema {checked.version}, which cannot be resumed",
                expected=f"a schema-{SCHEMA_VERSION} store (chunk checksums and a capture fingerprint)",
                got=f"schema {checked.version}", fix="capture into a new --out (the old store stays readable)",
            )
        stored: dict[str, Any] = dict(checked.group.attrs)
        if FINGERPRINT_ATTR in attrs:
            diffs = fingerprint_diff(stored.get(FINGERPRINT_ATTR) or {}, attrs[FINGERPRINT_ATTR])
            if diffs:
                raise StoreError(
                    f"{self.path} holds another capture, so it cannot be resumed: {'; '.join(diffs)}",
                    fix="repeat the original options and data, use a new --out, or --overwrite to replace the store",
                )
        check_done_chunks(self.path, checked.rules, checked.done, checked.cases)
        return zarr.open_group(str(self.path), mode="r+")

    # ---- writing --------------------------------------------------------------------
    @property
    def done(self) -> np.ndarray:
        """Samples already complete (a copy)."""
        return self._done.copy()

    def submit(self, sample: int, arrays: Mapping[str, Mapping[str, Any]]) -> None:
        """Queue one sample: ``{block name: {var: array (or CPU tensor) without the sample axis}}``."""
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
                    self._write_sample(*item)
            except BaseException as exc:  # surfaced in the caller's thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _write_sample(self, sample: int, arrays: Mapping[str, Mapping[str, Any]]) -> None:
        arrays = {name: {var: self._as_numpy(var, value) for var, value in variables.items()}
                  for name, variables in arrays.items()}
        check_finite(arrays, self.cases[sample] if sample < len(self.cases) else str(sample), self.dtype)
        for name, variables in arrays.items():
            for var, value in variables.items():
                self._arrays[(name, var)][sample] = value
        self._done_array[sample] = True  # last: the sample is complete
        self._done[sample] = True

    def _as_numpy(self, var: str, value: Any) -> np.ndarray:
        """Arrays as given; tensors (CPU captures defer the cast to this thread, off the forward's
        critical path) cast to the storage dtype here."""
        if isinstance(value, np.ndarray):
            return value
        import torch

        dtype = torch.uint8 if var == ATTN_KIND else getattr(torch, self.dtype)
        return value.to(dtype=dtype).numpy()

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            if isinstance(err, AttnprobeError):
                raise err
            if isinstance(err, OSError):
                raise StoreError(f"writing to {self.path} failed: {err.strerror or err}",
                                 fix="free disk space or check permissions, then rerun the same capture "
                                     "(finished samples are kept)") from err
            raise StoreError(f"writing to {self.path} failed: {type(err).__name__}: {err}",
                             fix="rerun the same capture (finished samples are kept)") from err

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def close(self) -> None:
        """Wait for queued samples, stop the thread, release the lock and surface any write error."""
        try:
            if self._thread.is_alive():
                self._queue.put(_STOP)
                self._thread.join()
        finally:
            self._release()
        self._raise_pending()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def all_finite(value: np.ndarray) -> bool:
    """Whether an array holds no NaN or infinity, from its smallest and largest value.

    ``torch.aminmax`` propagates NaN and returns infinities as they are, in one pass without
    temporaries: several times faster than ``np.isfinite``, which allocates a mask (the
    writer checks every sample's maps, often hundreds of MiB).
    """
    if value.dtype.kind != "f" or value.size == 0:
        return True
    import torch

    if not value.flags.writeable:  # torch.from_numpy wants writeable memory
        return bool(np.isfinite(value).all())
    low, high = torch.aminmax(torch.from_numpy(value))
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def check_finite(arrays: Mapping[str, Mapping[str, np.ndarray]], case: str, dtype: str) -> None:
    """Raise :class:`NonFiniteError` naming the first block (in model order) with NaN or inf."""
    for name, variables in arrays.items():
        for var, value in variables.items():
            if not all_finite(value):
                hint = " or values beyond float16's range (capture with --dtype float32)" if dtype == "float16" else ""
                raise NonFiniteError(
                    f"sample {case} has non-finite values in block {name}, array {var}, so it is not marked done",
                    expected="finite attention maps and block outputs",
                    got=f"{int(np.isnan(value).sum())} NaN and {int(np.isinf(value).sum())} infinite values",
                    fix=f"check the checkpoint for NaN weights (attnprobe inspect) or the input{hint}",
                )
