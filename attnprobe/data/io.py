"""Find cases in a data source and read their volumes.

Three kinds of source are understood (docs/definitions.md):

**Datalist JSON** (MONAI / Medical Segmentation Decathlon style)::

    {"training":   [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz", "case": "a"}],
     "validation": [{"image": "imagesTr/b.nii.gz", "label": "labelsTr/b.nii.gz"}],
     "test":       ["imagesTs/c.nii.gz"]}

Relative paths are relative to the JSON file's folder; absolute paths are used as they are.
``"label"`` and ``"case"`` are optional; without ``"case"`` the id is the image's file name
without ``.nii``/``.nii.gz`` (or the folder name of a DICOM series). A ``"test"`` entry may
be a bare image path. Other top-level keys (``"name"``, ``"labels"``, ...) are ignored.

**Folder of NIfTI files** (``*.nii``, ``*.nii.gz``, not recursive). Each file is one case,
its id the file name without the suffix. A label is looked for, in this order, and more than
one match is an error:

1. ``<folder>/<id>_label.nii[.gz]`` or ``<folder>/<id>_seg.nii[.gz]`` (files named like this
   are labels, never images);
2. ``<folder>/labels/<id>.nii[.gz]``;
3. ``<parent>/<name with "images" replaced by "labels">/<id>.nii[.gz]`` when the folder's name
   contains ``images`` (``images/`` -> ``labels/``, ``imagesTr/`` -> ``labelsTr/``).

Cases without a label get ``label=None``.

**DICOM series**: a folder holding one series (DICOM files directly inside), or a folder of
such folders (one case per sub-folder, id = sub-folder name). Read with MONAI's ``LoadImage``
and ``ITKReader`` (``itk``) or, failing that, ``PydicomReader`` (``pydicom``); neither is an
attnprobe dependency, and reading without both raises a :class:`~attnprobe.errors.DataError`
that says so. Listing DICOM cases needs neither. DICOM labels (SEG, RTSTRUCT) are not read.

Volumes come back as MONAI ``MetaTensor`` of shape ``(x, y, z)`` in the file's own voxel order
with the voxel-to-world affine (RAS mm) in ``.affine``; reorientation happens in
:mod:`attnprobe.data.preprocess`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast, get_args

import numpy as np

from attnprobe.errors import ConfigError, DataError, ShapeError

if TYPE_CHECKING:
    from monai.data import MetaTensor

__all__ = [
    "CaseRef",
    "Split",
    "SPLITS",
    "list_cases",
    "load_volume",
    "case_id_from_path",
    "is_nifti",
    "as_volume",
    "save_nifti",
]

Split = Literal["all", "training", "validation", "test"]
SPLITS: tuple[str, ...] = ("training", "validation", "test")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
LABEL_SUFFIXES: tuple[str, ...] = ("_label", "_seg")


@dataclass(frozen=True)
class CaseRef:
    """One case of a data source: where its image and (optional) label live.

    Parameters
    ----------
    case_id
        Unique id within the source (from the datalist's ``"case"`` or the file name).
    image
        NIfTI file or DICOM series folder.
    label
        NIfTI label file on the image's grid, or ``None``.
    """

    case_id: str
    image: Path
    label: Path | None = None


def is_nifti(path: Path) -> bool:
    """Return whether ``path`` is named like a NIfTI file (``.nii`` or ``.nii.gz``)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def case_id_from_path(path: Path) -> str:
    """Derive a case id: file name without ``.nii``/``.nii.gz``, or a folder's name."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_cases(source: str | os.PathLike[str], *, split: Split = "all") -> list[CaseRef]:
    """List the cases of a datalist JSON, a NIfTI folder, a DICOM folder or one NIfTI file.

    Parameters
    ----------
    source
        Path to a datalist ``.json``, a folder, or a single ``.nii``/``.nii.gz`` file.
    split
        Which datalist list to return; ``"all"`` concatenates training, validation and test
        in that order. Folders and single files have no splits and accept only ``"all"``.

    Returns
    -------
    list[CaseRef]
        At least one case; every listed file exists.

    Raises
    ------
    DataError
        Missing source or file, malformed or empty datalist, folder without volumes,
        duplicate case ids, ambiguous labels.
    ConfigError
        Unknown ``split``, or a split other than ``"all"`` for a source without splits.
    """
    if split not in get_args(Split):
        raise ConfigError(
            "Unknown split",
            expected=" | ".join(repr(s) for s in get_args(Split)),
            got=repr(split),
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            "Data source does not exist",
            expected="a datalist .json, a folder of NIfTI files, a DICOM folder or a .nii[.gz] file",
            got=str(path),
            fix="check the path (relative paths are relative to the current folder)",
        )
    if path.is_file() and path.suffix.lower() == ".json":
        cases = _from_datalist(path, split)
    else:
        if split != "all":
            raise ConfigError(
                "Only a datalist JSON has splits",
                expected="split='all' for a folder or a single file",
                got=f"split={split!r} for {path}",
                fix="write a datalist JSON with training/validation/test lists, or use split='all'",
            )
        if path.is_file():
            if not is_nifti(path):
                raise DataError(
                    "Unsupported data file",
                    expected="a datalist .json or a .nii/.nii.gz file",
                    got=str(path),
                )
            cases = [CaseRef(case_id_from_path(path), path, None)]
        else:
            cases = _from_folder(path)
    _check_unique(cases, path)
    return cases


# --- datalist -----------------------------------------------------------------------------


def _from_datalist(path: Path, split: Split) -> list[CaseRef]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(
            f"Datalist {path} is not valid JSON",
            expected="a JSON object with training/validation/test lists",
            got=f"{err.msg} at line {err.lineno}, column {err.colno}",
        ) from err
    if not isinstance(data, dict):
        raise DataError(
            f"Datalist {path} has the wrong shape",
            expected='a JSON object like {"training": [{"image": ..., "label": ...}]}',
            got=type(data).__name__,
        )
    present = [s for s in SPLITS if s in data]
    if not present:
        raise DataError(
            f"Datalist {path} has no case lists",
            expected="at least one of the keys " + ", ".join(SPLITS),
            got="keys " + (", ".join(sorted(map(str, data))) or "none"),
        )
    wanted = present if split == "all" else [split]
    base = path.parent
    cases: list[CaseRef] = []
    missing: list[str] = []
    for name in wanted:
        entries = data.get(name, [])
        if not isinstance(entries, list):
            raise DataError(
                f"Datalist {path}: {name!r} is not a list",
                expected="a list of {\"image\": ..., \"label\": ...} objects or image paths",
                got=type(entries).__name__,
            )
        for i, entry in enumerate(entries):
            cases.append(_parse_entry(entry, base, where=f"{path} [{name!r}][{i}]", missing=missing))
    if missing:
        shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(
            f"{len(missing)} file(s) named in datalist {path} do not exist",
            expected=f"existing files; relative paths are relative to {base}",
            got=shown,
            fix="fix the paths in the datalist or move the files",
        )
    if not cases:
        raise DataError(
            f"Datalist {path} lists no cases",
            expected=f"at least one entry in split {split!r}",
            got="present and non-empty: "
            + (", ".join(f"{s} ({len(data[s])})" for s in present if isinstance(data[s], list) and data[s])
               or "none"),
        )
    return cases


def _parse_entry(entry: object, base: Path, *, where: str, missing: list[str]) -> CaseRef:
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, dict) or "image" not in entry:
        raise DataError(
            f"Datalist entry {where} has no image",
            expected='{"image": "path", "label": "path" (optional), "case": "id" (optional)}',
            got=repr(entry)[:200],
        )
    # Multi-channel entries (a list of paths) are out of scope: the models take one channel.
    image = _entry_path(entry["image"], base, where=where, what="image",
                        expected="one image path (single-channel)", missing=missing)
    label = None
    if entry.get("label") is not None:
        label = _entry_path(entry["label"], base, where=where, what="label",
                            expected="one label path or no label", missing=missing)
    case = entry.get("case")
    case_id = str(case) if case is not None else case_id_from_path(image)
    return CaseRef(case_id, image, label)


def _entry_path(raw: object, base: Path, *, where: str, what: str, expected: str, missing: list[str]) -> Path:
    """One path of a datalist entry, resolved against ``base``; a path not on disk goes to ``missing``."""
    if not isinstance(raw, str):
        raise DataError(f"Datalist entry {where} has an unsupported {what}", expected=expected,
                        got=repr(raw)[:200])
    path = _resolve(raw, base)
    if not path.exists():
        missing.append(str(path))
    return path


def _resolve(raw: str, base: Path) -> Path:
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = base / path
    # normpath drops the "./" Decathlon datalists carry, so ids and messages read cleanly.
    return Path(os.path.normpath(path))


# --- folders ------------------------------------------------------------------------------


def _from_folder(folder: Path) -> list[CaseRef]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p))
    if files:
        return _from_nifti_folder(folder, files)
    series = _dicom_series(folder)
    if series:
        return [CaseRef(s.name, s, None) for s in series]
    raise DataError(
        f"No volumes found in {folder}",
        expected="*.nii / *.nii.gz files, DICOM files, or one sub-folder per DICOM series",
        got=f"{sum(1 for _ in folder.iterdir())} entries, none of them a volume",
        fix="point at the folder that holds the images, or write a datalist JSON",
    )


def _is_label_name(path: Path) -> bool:
    return case_id_from_path(path).endswith(LABEL_SUFFIXES)


def _from_nifti_folder(folder: Path, files: list[Path]) -> list[CaseRef]:
    images = [p for p in files if not _is_label_name(p)]
    if not images:
        raise DataError(
            f"No images found in {folder}",
            expected="NIfTI files not named *_label / *_seg",
            got=f"{len(files)} label-named file(s)",
        )
    label_dirs = [folder / "labels"]
    if "images" in folder.name:
        label_dirs.append(folder.parent / folder.name.replace("images", "labels"))
    cases = []
    for image in images:
        cid = case_id_from_path(image)
        candidates = [folder / f"{cid}{tag}{ext}" for tag in LABEL_SUFFIXES for ext in NIFTI_SUFFIXES]
        candidates += [d / f"{cid}{ext}" for d in label_dirs for ext in NIFTI_SUFFIXES]
        found = [c for c in candidates if c.is_file()]
        if len(found) > 1:
            raise DataError(
                f"Case {cid!r} in {folder} has more than one label",
                expected="at most one of <id>_label, <id>_seg, labels/<id> (.nii or .nii.gz)",
                got=", ".join(str(f) for f in found),
                fix="remove the extra label files or write a datalist JSON",
            )
        cases.append(CaseRef(cid, image, found[0] if found else None))
    return cases


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    # DICOM Part 10 files carry "DICM" after a 128-byte preamble.
    return len(head) == 132 and head[128:] == b"DICM"


def _holds_dicom(folder: Path) -> bool:
    return any(p.is_file() and _is_dicom_file(p) for p in folder.iterdir())


def _dicom_series(folder: Path) -> list[Path]:
    if _holds_dicom(folder):
        return [folder]
    return sorted(p for p in folder.iterdir() if p.is_dir() and _holds_dicom(p))


def _check_unique(cases: Iterable[CaseRef], source: Path) -> None:
    seen: dict[str, CaseRef] = {}
    dups: list[str] = []
    for case in cases:
        if case.case_id in seen:
            dups.append(f"{case.case_id!r} ({seen[case.case_id].image} and {case.image})")
        else:
            seen[case.case_id] = case
    if dups:
        raise DataError(
            f"Duplicate case ids in {source}",
            expected="one id per case",
            got="; ".join(dups[:5]),
            fix='give each datalist entry a unique "case" key, or rename the files',
        )


# --- reading ------------------------------------------------------------------------------


def _dicom_reader():
    # Prefer ITK (handles series sorting and orientation robustly); pydicom is the fallback.
    if importlib.util.find_spec("itk") is not None:
        from monai.data import ITKReader

        return ITKReader()
    if importlib.util.find_spec("pydicom") is not None:
        from monai.data import PydicomReader

        return PydicomReader()
    return None


def load_volume(path: str | os.PathLike[str], *, role: Literal["image", "label"] = "image") -> MetaTensor:
    """Read one 3D volume with MONAI's ``LoadImage`` and check it.

    Parameters
    ----------
    path
        NIfTI file or DICOM series folder.
    role
        ``"image"`` or ``"label"``; only changes the wording of errors.

    Returns
    -------
    MetaTensor
        float32, shape ``(x, y, z)`` in the file's voxel order; ``.affine`` is voxel -> world
        (RAS, mm). Trailing singleton dimensions (``(x, y, z, 1)``) are dropped.

    Raises
    ------
    DataError
        Missing or unreadable file, no DICOM reader installed, NaN or infinite values.
    ShapeError
        Not a 3D volume (2 dims, or a non-singleton 4th dim as in a time series).
    """
    from monai.data import NibabelReader
    from monai.transforms import LoadImage

    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{role.capitalize()} file does not exist", expected="an existing file", got=str(path))
    if path.is_dir():
        reader = _dicom_reader()
        if reader is None:
            raise DataError(
                f"Cannot read DICOM series {path}",
                expected="the 'itk' or 'pydicom' package installed (MONAI's ITKReader / PydicomReader)",
                got="neither is installed",
                fix="pip install itk (or pydicom), or convert the series to NIfTI (e.g. with dcm2niix)",
            )
    elif is_nifti(path):
        reader = NibabelReader()
    else:
        raise DataError(
            f"Unsupported {role} file",
            expected="a .nii / .nii.gz file or a DICOM series folder",
            got=str(path),
        )
    try:
        vol = LoadImage(reader=reader, image_only=True, dtype=np.float32)(str(path))
    except Exception as err:  # any reader failure becomes one DataError naming the file
        raise DataError(
            f"Cannot read {role} {path}",
            expected="a readable NIfTI file or DICOM series",
            got=f"{type(err).__name__}: {err}",
        ) from err
    return _check_volume(vol, path, role)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write ``array`` as NIfTI with ``affine`` (voxel -> world, RAS mm) and return the path.

    Units are millimetres and the affine goes into both the qform and the sform (code 1,
    scanner coordinates), so every reader agrees on the geometry. Missing parent folders
    are created; the data type is the array's.
    """
    import nibabel as nib

    path = Path(path)
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def as_volume(data, affine, *, meta: dict | None = None) -> MetaTensor:
    """Wrap a ``(x, y, z)`` tensor as a channel-less 3D MONAI ``MetaTensor``.

    Marking it ``original_channel_dim="no_channel"`` matters: MONAI 1.6 otherwise takes the
    first axis for a channel (``spatial_ndim == 2``), and later pads then shift only two axes
    of the affine.
    """
    import torch
    from monai.data import MetaTensor

    extra = {k: v for k, v in (meta or {}).items() if k != "affine"}
    extra["original_channel_dim"] = "no_channel"
    vol = MetaTensor(torch.as_tensor(data), affine=torch.as_tensor(affine, dtype=torch.float64), meta=extra)
    if hasattr(vol, "spatial_ndim"):  # MONAI >= 1.6
        vol.spatial_ndim = 3
    return vol


def _check_volume(vol: MetaTensor, path: Path, role: str) -> MetaTensor:
    shape = tuple(vol.shape)
    # (x, y, z, 1[, 1]) is a 3D volume stored with extra singleton dims; drop them.
    while vol.ndim > 3 and vol.shape[-1] == 1:
        vol = cast("MetaTensor", vol[..., 0])  # MetaTensor indexing keeps the subclass
    if vol.ndim != 3:
        if vol.ndim < 3:
            fix = "provide a 3D volume; a single 2D slice cannot be used"
        else:
            fix = "split the series into 3D volumes (e.g. nibabel.funcs.four_to_three) and pick one"
        raise ShapeError(
            f"{role.capitalize()} {path} is not a 3D volume",
            expected="3 spatial dims (x, y, z), optionally with a trailing singleton dim",
            got=f"{len(shape)} dims, shape {shape}",
            fix=fix,
        )
    bad = ~_isfinite(vol)
    n_bad = int(bad.sum())
    if n_bad:
        raise DataError(
            f"{role.capitalize()} {path} contains NaN or infinite values",
            expected="finite values only",
            got=f"{n_bad} non-finite of {vol.numel()} voxels",
            fix="replace them (e.g. numpy.nan_to_num) and save the volume again",
        )
    return as_volume(vol.as_tensor(), vol.affine, meta=dict(vol.meta))


def _isfinite(t):
    import torch

    # as_tensor(): plain tensor, so the check does not carry metadata along.
    return torch.isfinite(t.as_tensor() if hasattr(t, "as_tensor") else t)
