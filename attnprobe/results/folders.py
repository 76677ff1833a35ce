"""The one rule for ``--out`` and ``--overwrite`` (docs/results.md, "Output folders").

- ``--out`` must be a folder (or a new path) that can be written; this is checked before
  anything is computed.
- A folder holding anything is refused unless ``--overwrite``.
- ``--overwrite`` only replaces what attnprobe wrote: a capture store (recognised by its Zarr
  attributes), a run folder with ``record.json`` (only the files that record lists), files of
  the same command written by an attnprobe version before run records, or an empty folder.
  Anything else is refused with an error naming the unknown files, and nothing is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from attnprobe.errors import ConfigError
from attnprobe.results.files import TMP_PREFIX

RECORD_FILE = "record.json"
MANIFEST_FILE = "manifest.json"

#: files each command wrote before run folders had a record.json (recognised for --overwrite)
LEGACY_FILES: dict[str, frozenset[str]] = {
    "adi": frozenset({"adi.csv", "adi.parquet", "adi.nc", "summary.csv", "adi.json"}),
    "cka": frozenset({"cka.nc", "cka.csv", "summary.json"}),
    "evaluation": frozenset({"cases.csv", "summary.json", "compare.csv", "predictions", "probabilities"}),
    "ablation": frozenset({"ablation.csv", "adi.csv", "summary.csv", "summary.json", "ablation.png"}),
    "extent": frozenset({"extent.csv", "efficiency.csv"}),
    "comparison": frozenset({"compare.csv"}),
}


@dataclass(frozen=True)
class OutFolder:
    """An output folder that passed :func:`check_out`.

    Attributes
    ----------
    path
        The folder.
    replace
        Entries (names in ``path``) of an earlier attnprobe result that saving replaces or removes.
    store
        True when ``path`` is a capture store to be replaced as a whole.
    """

    path: Path
    replace: frozenset[str] = frozenset()
    store: bool = False


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(TMP_PREFIX))


def _recorded_files(folder: Path) -> frozenset[str] | None:
    """Names a run record in ``folder`` owns (its files, record.json, manifest.json), or None."""
    path = folder / RECORD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        return None
    return frozenset(str(f).split("/")[0] for f in data["files"]) | {RECORD_FILE, MANIFEST_FILE}


def owned_entries(folder: Path, kinds: Iterable[str] = ()) -> tuple[frozenset[str], list[str]]:
    """Split the entries of ``folder`` into those attnprobe wrote and the unknown ones.

    ``kinds`` are the record kinds whose pre-record files (:data:`LEGACY_FILES`) count as
    attnprobe's when the folder has no ``record.json``.
    """
    names = _entries(folder)
    owned = _recorded_files(folder)
    if owned is None:
        # a save that crashed has removed record.json but may have left manifest.json
        owned = frozenset({MANIFEST_FILE}).union(*(LEGACY_FILES.get(k, frozenset()) for k in kinds))
    return frozenset(n for n in names if n in owned), [n for n in names if n not in owned]


def _check_writable(folder: Path, option: str) -> None:
    """Write-test ``folder``; folders created for the test are removed again, so a refused run leaves nothing."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise ConfigError(f"cannot write to {option} {folder}", expected="a folder this user can write",
                          got=exc.strerror or str(exc), fix=f"pass another {option} or fix the permissions") from None
    finally:
        for path in created:  # innermost first; writers create what they need when they write
            try:
                path.rmdir()
            except OSError:
                break


def check_out(out: str | os.PathLike[str], *, overwrite: bool, kinds: Iterable[str], option: str = "--out",
              store: bool = False) -> OutFolder:
    """Check ``--out`` before computing anything; nothing is created or removed.

    Parameters
    ----------
    out
        The output folder.
    overwrite
        The command's ``--overwrite``.
    kinds
        Record kinds the command writes (their pre-record file names are recognised).
    store
        The command writes a capture store (``capture``): an existing store is the command's
        own business (resume), and ``--overwrite`` may replace a store as a whole.

    Raises
    ------
    ConfigError
        ``out`` is a file, cannot be written, holds files without ``--overwrite``, or holds files
        attnprobe did not write (with ``--overwrite``); the message names them.
    """
    from attnprobe.store import is_store

    folder = Path(out).expanduser()
    kinds = tuple(kinds)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{option} is a file, not a folder", expected="a folder or a new path", got=str(folder),
                          fix=f"pass a folder as {option} (--overwrite never replaces a file)")
    if folder.is_dir() and (names := _entries(folder)):
        if is_store(folder):
            if not store and not overwrite:
                raise ConfigError(f"{option} {folder} is a capture store", expected="a new or empty folder",
                                  got="a store", fix=f"pass another {option}, or --overwrite to replace the store")
            if not store:
                return OutFolder(folder, frozenset(names), store=True)
            return OutFolder(folder, frozenset(names) if overwrite else frozenset(), store=True)
        if not overwrite:
            raise ConfigError(f"{option} {folder} is not empty", expected="a new or empty folder",
                              got=_listing(names), fix=f"pass another {option}, or --overwrite to replace "
                                                       "an earlier attnprobe result there")
        owned, unknown = owned_entries(folder, kinds)
        if unknown:
            raise ConfigError(f"--overwrite refused: {folder} holds files attnprobe did not write",
                              expected="a run folder of attnprobe (record.json), a capture store or an empty folder",
                              got=f"unknown {_listing(unknown)}",
                              fix=f"move those files away or pass another {option}; nothing was removed")
        _check_writable(folder, option)
        return OutFolder(folder, owned)
    # a new store is laid out by its writer: only its parent is created here
    _check_writable(folder.parent if store and not folder.exists() else folder, option)
    return OutFolder(folder)


def _listing(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def remove_entries(folder: Path, names: Iterable[str], *, keep: Iterable[str] = ()) -> None:
    """Remove ``names`` from ``folder`` except ``keep`` (files or folders an earlier run wrote)."""
    kept = set(keep)
    for name in names:
        if name in kept:
            continue
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def clear_store(out: OutFolder) -> None:
    """Remove a capture store that :func:`check_out` recognised, for ``--overwrite``."""
    if out.store and out.replace:
        shutil.rmtree(out.path)
