"""The workspace file ``attnprobe.toml``: short names for models and datasets (docs/definitions.md).

Example::

    # attnprobe.toml — paths are relative to this file's folder
    [models.ct]
    arch = "swin_unetr"
    checkpoint = "checkpoints/model_swinvit.pt"
    roi = [96, 96, 96]

    [models.mri]
    arch = "swin_unetr"
    checkpoint = "checkpoints/mri_finetuned.pt"
    roi = [96, 96, 64]

    [datasets.rectal]
    path = "data/rectal.json"
    split = "test"

Only the ``models`` and ``datasets`` tables are read; any other key is an error, so a typo
cannot go unnoticed. Every model needs ``checkpoint``; ``arch`` and ``roi`` are optional.
Every dataset needs ``path``; ``split`` defaults to ``"all"``.

Wherever a name is accepted, an existing path works too (a checkpoint file, a capture store,
a datalist, a folder); a name declared in the workspace wins over a same-named path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import get_args

from attnprobe.data.io import CaseRef, Split, list_cases
from attnprobe.errors import CheckpointError, ConfigError, DataError

__all__ = [
    "WORKSPACE_FILENAME",
    "ModelRef",
    "DatasetRef",
    "Workspace",
    "find_workspace",
    "load_workspace",
    "resolve_model",
    "resolve_data",
    "list_data",
]

WORKSPACE_FILENAME = "attnprobe.toml"

_MODEL_KEYS = {"arch", "checkpoint", "roi"}
_DATASET_KEYS = {"path", "split"}
_TOP_KEYS = {"models", "datasets"}


@dataclass(frozen=True)
class ModelRef:
    """A model to load: its name, architecture, checkpoint and input ROI.

    Attributes
    ----------
    name
        Workspace name, or the file/folder name when resolved from a path.
    arch
        Architecture key (e.g. ``"swin_unetr"``, ``"smit"``), ``None`` when not declared.
    checkpoint
        Absolute path of the checkpoint file (or capture store).
    roi
        Model input ``(x, y, z)`` in voxels, ``None`` when not declared.
    """

    name: str
    arch: str | None
    checkpoint: Path
    roi: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class DatasetRef:
    """A data source: datalist JSON, NIfTI/DICOM folder or one file, plus the split to use.

    Path-like (``os.fspath(ref) == str(ref.path)``), so it can be passed straight to
    :func:`attnprobe.data.io.list_cases`; pass ``split=ref.split`` there to honour the
    declared split.
    """

    name: str
    path: Path
    split: Split = "all"

    def __fspath__(self) -> str:
        return os.fspath(self.path)


@dataclass(frozen=True)
class Workspace:
    """A parsed ``attnprobe.toml``.

    Attributes
    ----------
    path
        The TOML file.
    models, datasets
        Read-only mappings from name to :class:`ModelRef` / :class:`DatasetRef`.
    """

    path: Path
    models: Mapping[str, ModelRef]
    datasets: Mapping[str, DatasetRef]

    @property
    def root(self) -> Path:
        """Folder that relative paths in the file are relative to."""
        return self.path.parent

    # Mappings are unhashable; identity of a workspace is its file.
    def __hash__(self) -> int:
        return hash(self.path)


def find_workspace(start: str | os.PathLike[str] | None = None) -> Path | None:
    """Find ``attnprobe.toml`` in ``start`` or the nearest folder above it.

    Parameters
    ----------
    start
        Folder (or file, meaning its folder) to start from; default the current folder.

    Returns
    -------
    Path or None
        The absolute path of the file, or ``None`` when no folder up to the root has one.
    """
    here = Path(start).expanduser() if start is not None else Path.cwd()
    here = here.resolve()
    if here.is_file():
        here = here.parent
    for folder in (here, *here.parents):
        candidate = folder / WORKSPACE_FILENAME
        if candidate.is_file():
            return candidate
    return None


def load_workspace(path: str | os.PathLike[str]) -> Workspace:
    """Read and check a workspace file.

    Raises
    ------
    ConfigError
        Missing file, TOML syntax error, unknown keys, wrong types, a bad ROI.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError("Workspace file does not exist", expected=f"a {WORKSPACE_FILENAME} file",
                          got=str(path))
    toml = _toml_module()
    try:
        with path.open("rb") as fh:
            raw = toml.load(fh)
    except toml.TOMLDecodeError as err:
        raise ConfigError(f"Workspace file {path} is not valid TOML", expected="TOML syntax",
                          got=str(err), fix=f"fix or remove {path}") from err
    except UnicodeDecodeError as err:  # a binary file: tomllib decodes before parsing
        raise ConfigError(f"Workspace file {path} is not valid TOML", expected="a UTF-8 text file",
                          got=f"binary data ({err.reason} at byte {err.start})", fix=f"fix or remove {path}") from err
    except OSError as err:
        raise ConfigError(f"Workspace file {path} cannot be read", expected="a readable file",
                          got=f"{type(err).__name__}: {err.strerror or err}", fix=f"fix or remove {path}") from err
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ConfigError(
            f"Unknown keys in workspace file {path}",
            expected="only [models.NAME] and [datasets.NAME] tables",
            got=", ".join(sorted(unknown)),
        )
    root = path.parent
    models = {
        name: _parse_model(name, table, root, path)
        for name, table in _tables(raw.get("models", {}), "models", path).items()
    }
    datasets = {
        name: _parse_dataset(name, table, root, path)
        for name, table in _tables(raw.get("datasets", {}), "datasets", path).items()
    }
    return Workspace(path=path, models=MappingProxyType(models), datasets=MappingProxyType(datasets))


def resolve_model(
    name_or_path: str | os.PathLike[str],
    *,
    workspace: Workspace | str | os.PathLike[str] | None = None,
) -> ModelRef:
    """Turn a model name or a checkpoint path into a :class:`ModelRef`.

    Parameters
    ----------
    name_or_path
        A name from ``[models.NAME]`` of the workspace, or an existing checkpoint file or
        capture store (relative paths are relative to the current folder).
    workspace
        A :class:`Workspace`, the path of a workspace file, or ``None`` to search upward from
        the current folder with :func:`find_workspace`.

    Raises
    ------
    ConfigError
        Neither a known name nor an existing path; the message lists the known names.
    CheckpointError
        A declared model whose checkpoint file does not exist.
    """
    key = os.fspath(name_or_path)
    ws = _workspace_for(key, workspace)
    if ws is not None and key in ws.models:
        ref = ws.models[key]
        if not ref.checkpoint.exists():
            raise CheckpointError(
                f"Checkpoint of model {key!r} does not exist",
                expected=f"a file at the path given in {ws.path} (relative to its folder)",
                got=str(ref.checkpoint),
                fix="fix 'checkpoint' in the workspace file or put the checkpoint there",
            )
        return ref
    path = Path(key).expanduser()
    if path.exists():
        return ModelRef(name=_name_of(path), arch=None, checkpoint=path.resolve(), roi=None)
    raise _unknown("model", key, ws, None if ws is None else ws.models,
                   fix="use one of the known names, or give the path of a checkpoint file or capture store")


def resolve_data(
    name_or_path: str | os.PathLike[str],
    *,
    workspace: Workspace | str | os.PathLike[str] | None = None,
) -> DatasetRef:
    """Turn a dataset name or a data path into a :class:`DatasetRef`.

    Parameters
    ----------
    name_or_path
        A name from ``[datasets.NAME]``, or an existing datalist JSON, folder or NIfTI file.
    workspace
        As in :func:`resolve_model`.

    Raises
    ------
    ConfigError
        Neither a known name nor an existing path; the message lists the known names.
    DataError
        A declared dataset whose path does not exist.
    """
    key = os.fspath(name_or_path)
    ws = _workspace_for(key, workspace)
    if ws is not None and key in ws.datasets:
        ref = ws.datasets[key]
        if not ref.path.exists():
            raise DataError(
                f"Data of dataset {key!r} does not exist",
                expected=f"a datalist, folder or file at the path given in {ws.path} (relative to its folder)",
                got=str(ref.path),
                fix="fix 'path' in the workspace file",
            )
        return ref
    path = Path(key).expanduser()
    if path.exists():
        return DatasetRef(name=_name_of(path), path=path.resolve())
    raise _unknown("dataset", key, ws, None if ws is None else ws.datasets,
                   fix="use one of the known names, or give the path of a datalist JSON, a NIfTI/DICOM folder "
                       "or a file")


def list_data(
    data: str | os.PathLike[str] | DatasetRef,
    *,
    split: Split | None = None,
    limit: int | None = None,
) -> list[CaseRef]:
    """The cases of a dataset name or data path (:func:`resolve_data`, then ``list_cases``).

    Parameters
    ----------
    data
        A dataset name, a datalist JSON, folder or NIfTI file, or an already resolved
        :class:`DatasetRef`.
    split
        Split to list; ``None`` means the dataset's declared split (``"all"`` for a path).
    limit
        Keep at most the first ``limit`` cases (taken as given: a slice, no check).

    Raises
    ------
    ConfigError, DataError
        As :func:`resolve_data` and :func:`attnprobe.data.io.list_cases`.
    """
    source = data if isinstance(data, DatasetRef) else resolve_data(data)
    refs = list_cases(source, split=split if split is not None else source.split)
    return refs[:limit] if limit is not None else refs


# --- internals -----------------------------------------------------------------------------


def _toml_module():
    # tomllib is stdlib from Python 3.11; on 3.10 the same API ships as the tomli package.
    try:
        import tomllib

        return tomllib
    except ModuleNotFoundError:
        try:
            import tomli

            return tomli
        except ModuleNotFoundError:
            raise ConfigError(
                "Cannot read workspace files on this Python",
                expected="Python >= 3.11 (tomllib) or the 'tomli' package",
                got="neither",
                fix="pip install tomli, or use Python 3.11+",
            ) from None


def _workspace(workspace: Workspace | str | os.PathLike[str] | None) -> Workspace | None:
    if isinstance(workspace, Workspace):
        return workspace
    if workspace is not None:
        return load_workspace(workspace)
    found = find_workspace()
    return load_workspace(found) if found is not None else None


def _workspace_for(key: str, workspace: Workspace | str | os.PathLike[str] | None) -> Workspace | None:
    """The workspace to look ``key`` up in; a broken file found by search is skipped when ``key`` is an
    existing path (a command that names only paths does not need the file), and reported otherwise."""
    if workspace is not None:
        return _workspace(workspace)
    try:
        return _workspace(None)
    except ConfigError:
        if Path(key).expanduser().exists():
            return None
        raise


def _unknown(kind: str, key: str, ws: Workspace | None, names: Mapping[str, object] | None, *,
             fix: str) -> ConfigError:
    """The error for a name that is neither declared in the workspace nor an existing path."""
    if ws is None:
        expected = f"a {kind} name from an {WORKSPACE_FILENAME} (none found from {Path.cwd()} upward) or an existing path"
    else:
        listed = ", ".join(sorted(names or {})) or "none declared"
        expected = f"a {kind} name from {ws.path} (known: {listed}) or an existing path"
    return ConfigError(f"Unknown {kind} {key!r}", expected=expected, got=repr(key), fix=fix)


def _name_of(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".json", ".nii", ".pt", ".pth", ".ckpt", ".safetensors", ".zarr"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _tables(section: object, kind: str, path: Path) -> dict[str, dict]:
    if not isinstance(section, dict) or not all(isinstance(v, dict) for v in section.values()):
        raise ConfigError(
            f"[{kind}] in {path} has the wrong shape",
            expected=f"one table per entry, like [{kind}.NAME]",
            got=repr(section)[:200],
        )
    return section


def _check_keys(table: dict, allowed: set[str], required: set[str], where: str, path: Path) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(
            f"Unknown keys in [{where}] of {path}",
            expected="keys among " + ", ".join(sorted(allowed)),
            got=", ".join(sorted(unknown)),
        )
    missing = required - set(table)
    if missing:
        raise ConfigError(
            f"[{where}] in {path} lacks required keys",
            expected=", ".join(sorted(required)),
            got="keys " + (", ".join(sorted(table)) or "none"),
        )


def _relative_path(value: object, root: Path, where: str, path: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"Bad path in [{where}] of {path}", expected="a non-empty string", got=repr(value))
    p = Path(value).expanduser()
    # Relative to the workspace file, not the current folder: the file must mean the same
    # thing wherever a command is run from.
    return Path(os.path.normpath(p if p.is_absolute() else root / p))


def _parse_model(name: str, table: dict, root: Path, path: Path) -> ModelRef:
    where = f"models.{name}"
    _check_keys(table, _MODEL_KEYS, {"checkpoint"}, where, path)
    arch = table.get("arch")
    if arch is not None and (not isinstance(arch, str) or not arch):
        raise ConfigError(f"Bad arch in [{where}] of {path}", expected="a non-empty string", got=repr(arch))
    roi = table.get("roi")
    if roi is not None:
        # Imported here: the data module pulls in torch, which name lookups do not need.
        from attnprobe.data.preprocess import validate_roi

        roi = validate_roi(roi, what=f"{where}.roi")
        if roi == "full":
            raise ConfigError(f"Bad roi in [{where}] of {path}", expected="three sizes [x, y, z]",
                              got="'full'")
        roi = tuple(roi)
    return ModelRef(name=name, arch=arch, checkpoint=_relative_path(table["checkpoint"], root, where, path),
                    roi=roi)


def _parse_dataset(name: str, table: dict, root: Path, path: Path) -> DatasetRef:
    where = f"datasets.{name}"
    _check_keys(table, _DATASET_KEYS, {"path"}, where, path)
    split = table.get("split", "all")
    if split not in get_args(Split):
        raise ConfigError(f"Bad split in [{where}] of {path}",
                          expected=" | ".join(repr(s) for s in get_args(Split)), got=repr(split))
    return DatasetRef(name=name, path=_relative_path(table["path"], root, where, path), split=split)
