"""``manifest.json``: how a run folder was made (command, arguments, versions, inputs, times).

Fields are listed in docs/results.md. Inputs are hashed so that a result can be traced to the
exact checkpoint, datalist, image files or store it was computed from.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from attnprobe.environment import versions
from attnprobe.results.files import sha256_file, sha256_tree
from attnprobe.results.folders import MANIFEST_FILE

__all__ = ["MANIFEST_FILE", "InputFile", "Manifest", "data_inputs", "describe_input", "utc_now"]


def utc_now() -> str:
    """The current time as ISO 8601 UTC with seconds (``2026-12-02T17:15:03Z``)."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(value: Any) -> Any:
    """JSON-friendly copy of an argument value (paths as strings, tuples as lists)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclass(frozen=True)
class InputFile:
    """One input of a run and its content hash.

    Attributes
    ----------
    role
        What the input is to the command (``checkpoint``, ``datalist``, ``store``, ``image`` ...).
    path
        Absolute path as given.
    sha256
        SHA-256 of the file; for a folder, one digest over its files (``hashed`` says which).
    hashed
        ``"file"``, ``"folder"`` (every file under it) or ``"store-metadata"`` (the ``zarr.json``
        files of a capture store: its attributes name the checkpoint hash and the cases).
    files
        Number of files the digest covers.
    """

    role: str
    path: str
    sha256: str | None
    hashed: str = "file"
    files: int = 1


def describe_input(path: str | os.PathLike[str], role: str) -> InputFile:
    """Hash one input: a file streams through SHA-256, a store its metadata, a folder every file.

    A path that does not exist (e.g. a dataset name) is recorded without a hash.
    """
    from attnprobe.store import is_store

    p = Path(path).expanduser()
    where = str(p.resolve()) if p.exists() else os.fspath(path)
    if p.is_file():
        return InputFile(role=role, path=where, sha256=sha256_file(p))
    if is_store(p):
        digest, n = sha256_tree(p, pattern="zarr.json")
        return InputFile(role=role, path=where, sha256=digest, hashed="store-metadata", files=n)
    if p.is_dir():
        digest, n = sha256_tree(p)
        return InputFile(role=role, path=where, sha256=digest, hashed="folder", files=n)
    return InputFile(role=role, path=where, sha256=None, hashed="missing", files=0)


def data_inputs(data: str | os.PathLike[str], *, role: str = "data") -> list[InputFile]:
    """The datalist (or folder) behind ``data`` (a path or an attnprobe.toml dataset name), and,
    for a datalist, every image and label file it lists."""
    from attnprobe.workspace import list_data, resolve_data

    source = resolve_data(data)
    path = Path(source.path)
    entries = [describe_input(path, role)]
    if path.is_file():
        seen: set[str] = set()
        for ref in list_data(source, split="all"):
            for kind, file in (("image", ref.image), ("label", ref.label)):
                if file is not None and str(file) not in seen:
                    seen.add(str(file))
                    entries.append(describe_input(file, f"{role}-{kind}"))
    return entries


@dataclass
class Manifest:
    """How a run folder was made.

    Attributes
    ----------
    command
        The attnprobe command (``adi``, ``cka``, ``evaluate`` ...).
    arguments
        Its options as given (JSON values).
    versions
        attnprobe, torch, monai and Python versions.
    compat
        Compat mode(s) the models ran in (``{"model": "original"}``, ``{"ref": ..., "tgt": ...}``);
        empty when no model ran.
    inputs
        Input files with their SHA-256 (:class:`InputFile`).
    started, finished
        ISO 8601 UTC times.
    """

    command: str
    arguments: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=versions)
    compat: dict[str, str] = field(default_factory=dict)
    inputs: list[InputFile] = field(default_factory=list)
    started: str = field(default_factory=utc_now)
    finished: str | None = None

    @classmethod
    def start(cls, command: str, arguments: Mapping[str, Any] | None = None) -> Manifest:
        """A manifest whose start time is now (call before computing).

        ``arguments`` may be a command's ``locals()``: imported modules, classes and functions
        in it are left out.
        """
        given = {k: v for k, v in (arguments or {}).items()
                 if not (k.startswith("_") or callable(v) or isinstance(v, types.ModuleType))}
        return cls(command=command, arguments=_plain(given))

    def add_input(self, path: str | os.PathLike[str], role: str) -> None:
        self.inputs.append(describe_input(path, role))

    def add_data(self, data: str | os.PathLike[str], role: str = "data") -> None:
        self.inputs.extend(data_inputs(data, role=role))

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["inputs"] = [asdict(i) for i in self.inputs]
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1, default=str) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        inputs = [InputFile(**{k: v for k, v in i.items() if k in InputFile.__dataclass_fields__})
                  for i in data.get("inputs", []) if isinstance(i, Mapping)]
        return cls(command=str(data.get("command", "")), arguments=dict(data.get("arguments") or {}),
                   versions=dict(data.get("versions") or {}), compat=dict(data.get("compat") or {}),
                   inputs=inputs, started=str(data.get("started", "")), finished=data.get("finished"))

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> Manifest | None:
        """The manifest of ``folder``, or None when it has none."""
        path = Path(folder) / MANIFEST_FILE
        if not path.is_file():
            return None
        return cls.from_dict(json.loads(path.read_text()))
