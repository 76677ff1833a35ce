"""Atomic writes and streaming hashes for run folders (docs/results.md).

Every file of a run folder is written to a temporary name in the same folder and then moved
over the final name with :func:`os.replace`, so a crash leaves the old file or the new one,
never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".attnprobe-tmp-"
"""Temporary files start with this (a crash may leave one behind; it is never read)."""

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    Write the file at the yielded path (e.g. ``frame.to_csv(tmp)``, ``ds.to_netcdf(tmp)``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary name, fsync, then rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, read in 1 MiB pieces (any size, bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(folder: str | os.PathLike[str], *, pattern: str = "*") -> tuple[str, int]:
    """One SHA-256 over the files of ``folder`` matching ``pattern`` (recursively).

    The digest covers each file's relative path and its own SHA-256, in sorted path order, so it
    does not depend on the walk order. Returns ``(digest, number of files)``.
    """
    root = Path(folder)
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob(pattern) if p.is_file() and not p.name.startswith(TMP_PREFIX))
    for p in files:
        digest.update(p.relative_to(root).as_posix().encode("utf-8") + b"\0")
        digest.update(sha256_file(p).encode("ascii") + b"\n")
    return digest.hexdigest(), len(files)


def netcdf_engine() -> str:
    """h5netcdf (netCDF4) when its h5py writer is installed, else scipy's netCDF3 writer."""
    # h5netcdf >= 1.8 reads without h5py but cannot write; netCDF3 holds these tables too.
    return "h5netcdf" if importlib.util.find_spec("h5py") is not None else "scipy"
