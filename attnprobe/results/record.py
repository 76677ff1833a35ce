"""The base of every run record: ``record.json``, ``manifest.json``, schema check on load.

A run folder holds the files users read (CSV, netCDF, JSON) plus ``manifest.json`` (how it was
made) and ``record.json`` (``kind``, ``schema_version`` and the files it owns), written last:
a folder with ``record.json`` is complete. Layouts are described in docs/results.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from attnprobe.errors import DataError
from attnprobe.results.files import TMP_PREFIX, atomic_write_text
from attnprobe.results.folders import MANIFEST_FILE, RECORD_FILE, remove_entries
from attnprobe.results.manifest import Manifest, utc_now

R = TypeVar("R", bound="RunRecord")


def read_record_meta(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parsed ``record.json`` of ``folder``; None when there is none.

    Raises
    ------
    DataError
        ``record.json`` exists but is not a JSON object with ``kind`` and ``schema_version``.
    """
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} cannot be read", expected="the record.json of an attnprobe run folder",
                        got=str(exc), fix="rerun the command that wrote the folder") from None
    if not isinstance(meta, dict) or "kind" not in meta or "schema_version" not in meta:
        raise DataError(f"{path} is not a run record", expected="a JSON object with kind and schema_version",
                        got=str(meta)[:80], fix="rerun the command that wrote the folder")
    return meta


def kind_of(folder: str | os.PathLike[str]) -> str | None:
    """``"capture"`` for a capture store, the ``kind`` of a run folder's record, else None."""
    from attnprobe.store import is_store

    if is_store(folder):
        return "capture"
    try:
        meta = read_record_meta(folder)
    except DataError:
        return None
    return None if meta is None else str(meta["kind"])


@contextlib.contextmanager
def staged(folder: Path) -> Iterator[Path]:
    """A temporary folder inside ``folder``; on success each file in it replaces its namesake in
    ``folder`` (one :func:`os.replace` per file), on error it is removed and ``folder`` is untouched."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=folder))
    try:
        yield tmp
        for path in sorted(tmp.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class RunRecord(ABC):
    """Base of the run records (:mod:`attnprobe.results`); subclasses set ``kind``,
    ``schema_version`` and ``files`` and implement ``_write`` / ``_read`` / ``_read_legacy``.

    Attributes
    ----------
    label
        Display name of the run (figures, report); None: the folder's name.
    manifest
        How it was made (None for folders written before run records).
    legacy
        True when read from a folder without ``record.json``.
    """

    kind: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1
    files: ClassVar[tuple[str, ...]] = ()
    #: files whose presence marks a folder of this kind written before run records
    legacy_marker: ClassVar[tuple[str, ...]] = ()

    label: str | None = field(default=None, kw_only=True)
    manifest: Manifest | None = field(default=None, kw_only=True)
    legacy: bool = field(default=False, kw_only=True, compare=False)
    folder: Path | None = field(default=None, kw_only=True, compare=False)

    # -- each kind implements --------------------------------------------------------------
    @abstractmethod
    def _write(self, tmp: Path) -> list[str]:
        """Write the data files into ``tmp`` (staged); return their names."""

    def _meta(self) -> dict[str, Any]:
        """Extra ``record.json`` fields of this kind."""
        return {}

    @classmethod
    @abstractmethod
    def _read(cls: type[R], folder: Path, meta: dict[str, Any]) -> R:
        """Read the data files of a folder with ``record.json`` (``meta``: its contents)."""

    @classmethod
    def _read_legacy(cls: type[R], folder: Path) -> R:
        """Read a folder written before run records; kinds that had no such folders refuse."""
        raise DataError(f"{folder} has no {RECORD_FILE}, and {_a(cls.kind)} run has no older layout to read",
                        expected=f"a folder with {RECORD_FILE}", got=_listing(folder),
                        fix="rerun the command that writes it")

    # -- common -----------------------------------------------------------------------------
    def display_label(self) -> str:
        """The record's label, else its folder's name."""
        if self.label:
            return self.label
        return self.folder.name if self.folder is not None else self.kind

    def save(self, folder: str | os.PathLike[str], *, replace: Iterable[str] = (),
             extra_files: Iterable[str] = ()) -> list[Path]:
        """Write the run into ``folder`` atomically, file by file, ``record.json`` last.

        Parameters
        ----------
        replace
            Entries of an earlier attnprobe result in ``folder`` (from
            :func:`~attnprobe.results.folders.check_out`): those the new run does not write are
            removed once its files are in place.
        extra_files
            Entries the command already wrote into ``folder`` that belong to the run
            (``predictions/``, ``ablation.png``).

        Returns
        -------
        list of Path
            The data files written, in the order of ``files``.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / RECORD_FILE).unlink(missing_ok=True)  # incomplete until the new record is written
        with staged(out) as tmp:
            names = self._write(tmp)
        extra = [n for n in extra_files if (out / n).exists()]
        manifest = self.manifest or Manifest.start(self.kind)
        if manifest.finished is None:
            manifest.finished = utc_now()
        atomic_write_text(out / MANIFEST_FILE, manifest.to_json())
        owned = [*names, *extra]
        remove_entries(out, replace, keep=[*owned, MANIFEST_FILE, RECORD_FILE])
        import attnprobe

        meta = {"kind": self.kind, "schema_version": self.schema_version, "files": owned, "label": self.label,
                "attnprobe_version": attnprobe.__version__, **self._meta()}
        atomic_write_text(out / RECORD_FILE, json.dumps(meta, indent=1, default=str) + "\n")
        self.folder = out
        return [out / n for n in names]

    @classmethod
    def load(cls: type[R], folder: str | os.PathLike[str]) -> R:
        """Read a run folder written with ``record.json`` (this kind, this schema version).

        Raises
        ------
        DataError
            No ``record.json`` (a folder of attnprobe before run records: see
            :meth:`load_legacy`), another kind, or another schema version.
        """
        path = Path(folder)
        meta = read_record_meta(path)
        if meta is None:
            if path.is_dir() and any((path / m).exists() for m in cls.legacy_marker):
                raise DataError(f"{path} is {_a(cls.kind)} run without record.json (written before run records)",
                                expected=f"{_a(cls.kind)} run of schema version {cls.schema_version}",
                                got="no record.json", fix=f"read it with {cls.__name__}.load_legacy, or rerun "
                                                           "the command that wrote it")
            raise DataError(f"{path} is not {_a(cls.kind)} run", expected=f"a folder with {RECORD_FILE}",
                            got=_listing(path), fix="pass the --out folder of the command")
        return cls._checked(path, meta)

    @classmethod
    def _checked(cls: type[R], path: Path, meta: dict[str, Any]) -> R:
        kind, version = str(meta["kind"]), meta["schema_version"]
        if kind != cls.kind:
            raise DataError(f"{path} is {_a(kind)} run, not {_a(cls.kind)} run",
                            expected=f"record kind {cls.kind!r}", got=f"kind {kind!r} (schema version {version})",
                            fix=f"pass the --out folder of {_a(cls.kind)} run")
        if version != cls.schema_version:
            newer = isinstance(version, int) and version > cls.schema_version
            writer = meta.get("attnprobe_version", "?")
            raise DataError(f"{path} is {_a(kind)} run of schema version {version}",
                            expected=f"{kind} schema version {cls.schema_version}",
                            got=f"version {version} (attnprobe {writer})",
                            fix="upgrade attnprobe to read it" if newer else
                            f"rerun the command with this attnprobe, or read it with attnprobe {writer}")
        record = cls._read(path, meta)
        record.label = meta.get("label")
        record.manifest = Manifest.read(path)
        record.folder = path
        return record

    @classmethod
    def load_legacy(cls: type[R], folder: str | os.PathLike[str]) -> R:
        """Read a folder this kind's command wrote before run records (no ``record.json``).

        The label and other attributes are inferred from the files as the readers did then
        (docs/results.md, "Folders without record.json").
        """
        path = Path(folder)
        if not any((path / m).is_file() for m in cls.legacy_marker):
            raise DataError(f"{path} is not {_a(cls.kind)} run", expected=" or ".join(cls.legacy_marker),
                            got=_listing(path), fix="pass the --out folder of the command")
        record = cls._read_legacy(path)
        record.legacy, record.folder = True, path
        return record

    @classmethod
    def load_any(cls: type[R], folder: str | os.PathLike[str]) -> R:
        """:meth:`load` when the folder has ``record.json``, else :meth:`load_legacy`."""
        path = Path(folder)
        return cls.load(path) if (path / RECORD_FILE).is_file() else cls.load_legacy(path)


def _a(kind: str) -> str:
    """``kind`` with its indefinite article (``an adi``, ``a cka``)."""
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"


def _listing(path: Path) -> str:
    if not path.is_dir():
        return "no folder"
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names[:5]) or "an empty folder"


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file ({} when missing or not an object)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
