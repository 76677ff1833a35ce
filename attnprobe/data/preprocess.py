"""Preprocessing that carries an explicit real-voxel mask (docs/definitions.md "Padding tokens", §5).

Steps, all MONAI transforms applied to the image, the mask and (if any) the label together:

1. ``LoadImage`` (see :func:`attnprobe.data.io.load_volume`), then the **mask** is created as
   an all-ones volume on the image's grid — every loaded voxel is real.
2. ``EnsureChannelFirstd`` -> ``(1, x, y, z)``.
3. ``Orientationd`` to RAS: array axes ``x`` (right-left), ``y`` (anterior-posterior),
   ``z`` (superior-inferior; ``z`` indexes axial slices), indices increasing towards R, A, S.
4. ``Spacingd`` to ``config.spacing`` mm: image bilinear (border), mask and label nearest with
   zero padding, so a resampled voxel whose nearest source lies outside the volume is not real.
5. Intensity to [0, 1] on the image: ``ScaleIntensityRangePercentilesd`` (0–99.5 by default)
   or ``ScaleIntensityRanged`` (fixed ``a_min``/``a_max``), both clipped. Voxels the mask
   marks as not real are then set to 0, like every padding voxel.
6. ``SpatialCropd`` to the foreground box (image > 0 on real voxels) when ``crop_foreground``.
7. To the ROI, per axis: longer than the ROI -> ``SpatialCropd`` to the ROI centred on the
   label's bounding box (when a label with foreground is given) or else on the foreground's
   bounding box, shifted to stay inside the volume; shorter -> ``SpatialPadd`` with zeros
   (``"end"`` or ``"symmetric"``). ``roi="full"`` never crops and ``DivisiblePadd`` pads every
   axis up to a multiple of 32 instead.

The mask is never derived from intensities: a real voxel may be 0 after scaling, and padding
is 0 too; only the mask tells them apart.

Mapping predictions back (see :class:`CropPadBox`): the crop and pad offsets are exact in the
*resampled* grid (after steps 3–4), so :meth:`CropPadBox.to_resampled` is exact. Going on to
the native array (:meth:`CropPadBox.to_native`) resamples through the two affines and is exact
only when no resampling happened (``spacing=None`` or already at the target spacing); otherwise
it is an interpolation, as any inverse resampling is.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import numpy as np
import torch

from attnprobe.data.arrays import affine_spacing
from attnprobe.data.io import CaseRef, Split, as_volume, case_id_from_path, list_cases, load_volume
from attnprobe.errors import ConfigError, DataError, ShapeError

if TYPE_CHECKING:
    from monai.data import MetaTensor

__all__ = [
    "ROI_MULTIPLE",
    "Roi",
    "PadMode",
    "IntensityMode",
    "PreprocessConfig",
    "CropPadBox",
    "PreparedCase",
    "validate_roi",
    "prepare_case",
    "prepare_array",
    "iter_cases",
]

ROI_MULTIPLE = 32
"""Every model input size must be divisible by this (patch 2 x four 2x merges, docs/definitions.md)."""

Roi = tuple[int, int, int] | Literal["full"]
PadMode = Literal["end", "symmetric", "inplane-symmetric"]
"""Where padding goes: after the content, split on both sides, or split in-plane (x, y) and after
the content along z (the paper's fine-tuning code)."""


def pad_methods(pad_mode: str) -> tuple[str, str, str]:
    """MONAI's pad ``method`` of each axis (x, y, z) for a :data:`PadMode`."""
    if pad_mode == "inplane-symmetric":
        return ("symmetric", "symmetric", "end")
    return (pad_mode, pad_mode, pad_mode)


def pad_transforms(keys: Sequence[str], pad_mode: str, *, roi: Sequence[int] | None = None,
                   multiple: int = 32) -> list[Any]:
    """Dictionary pad transforms: to ``roi`` (or to a ``multiple`` of each size), per-axis method.

    One MONAI pad per method; the axes of the other method are left as they are (size -1 / k 1).
    """
    from monai.transforms import DivisiblePadd, SpatialPadd

    methods = pad_methods(pad_mode)
    steps: list[Any] = []
    for method in dict.fromkeys(methods):
        mine = [m == method for m in methods]
        if roi is not None:
            size = tuple(int(r) if on else -1 for r, on in zip(roi, mine))
            steps.append(SpatialPadd(keys=keys, spatial_size=size, method=method, mode="constant"))
        else:
            k = tuple(multiple if on else 1 for on in mine)
            steps.append(DivisiblePadd(keys=keys, k=k, method=method, mode="constant"))
    return steps
IntensityMode = Literal["percentile", "fixed"]
AXES = ("x", "y", "z")


def validate_roi(roi: object, *, what: str = "roi") -> tuple[int, int, int] | Literal["full"]:
    """Check a model ROI and return it as a tuple ``(x, y, z)`` (or ``"full"``).

    Parameters
    ----------
    roi
        ``"full"`` or three positive integers, each divisible by :data:`ROI_MULTIPLE`.
    what
        Name used in error messages (e.g. ``"models.ct.roi"``).

    Raises
    ------
    ConfigError
        Wrong length or type; or a size not divisible by 32 — the message names the axis and
        the nearest valid sizes.
    """
    if isinstance(roi, str):
        if roi == "full":
            return "full"
        raise ConfigError(f"Unknown {what}", expected="'full' or three sizes (x, y, z)", got=repr(roi))
    if (
        not isinstance(roi, Sequence)
        or len(roi) != 3
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in roi)
    ):
        raise ConfigError(
            f"Bad {what}",
            expected="three integer sizes (x, y, z), e.g. (96, 96, 64), or 'full'",
            got=repr(roi),
        )
    sizes = tuple(int(v) for v in roi)
    for axis, size in zip(AXES, sizes, strict=True):
        if size <= 0 or size % ROI_MULTIPLE:
            lo = max(ROI_MULTIPLE, (size // ROI_MULTIPLE) * ROI_MULTIPLE)
            hi = max(ROI_MULTIPLE, math.ceil(size / ROI_MULTIPLE) * ROI_MULTIPLE)
            nearest = f"{lo}" if lo == hi else f"{lo} or {hi}"
            raise ConfigError(
                f"{what} axis {axis} is {size}, not a positive multiple of {ROI_MULTIPLE}",
                expected=f"every {what} size divisible by {ROI_MULTIPLE} (Swin UNETR / SMIT geometry)",
                got=f"{what}={sizes}",
                fix=f"use {nearest} for axis {axis}",
            )
    return sizes  # type: ignore[return-value]


def _check_axcodes(code: object) -> str:
    pairs = ({"L", "R"}, {"A", "P"}, {"S", "I"})
    ok = (
        isinstance(code, str)
        and len(code) == 3
        and all(sum(c in pair for c in code.upper()) == 1 for pair in pairs)
    )
    if not ok:
        raise ConfigError(
            "Bad orientation",
            expected="three axis codes, one of L/R, one of A/P, one of S/I, e.g. 'RAS'",
            got=repr(code),
        )
    return str(code).upper()


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    """How volumes are brought to the model's input geometry (docs/conventions.md).

    Parameters
    ----------
    roi
        Model input size ``(x, y, z)`` in voxels, each divisible by 32; or ``"full"`` to keep
        the whole (cropped-to-foreground) volume padded up to multiples of 32.
    pad_mode
        Where padding goes on an axis shorter than the ROI: ``"symmetric"`` (both sides,
        the extra voxel at the end; MONAI's default) or ``"end"`` (after the content, as
        Swin's window padding does).
    spacing
        Target voxel size in mm, one number (isotropic) or ``(x, y, z)``; ``None`` keeps the
        native spacing.
    intensity
        ``"percentile"``: map the ``percentiles`` (default 0 and 99.5) to 0 and 1;
        ``"fixed"``: map ``a_min``..``a_max`` to 0..1. Both clip to [0, 1].
    percentiles
        Lower and upper percentile for ``intensity="percentile"``.
    a_min, a_max
        Window for ``intensity="fixed"`` (required there, not allowed otherwise).
    crop_foreground
        Crop to the bounding box of image > 0 (after scaling) before fitting to the ROI.
    orientation
        Axis codes of the output array; attnprobe's named dims assume ``"RAS"``.
    """

    roi: Roi = (96, 96, 96)
    pad_mode: PadMode = "end"
    spacing: float | tuple[float, float, float] | None = 1.0
    intensity: IntensityMode = "percentile"
    percentiles: tuple[float, float] = (0.0, 99.5)
    a_min: float | None = None
    a_max: float | None = None
    crop_foreground: bool = True
    orientation: str = "RAS"

    def __post_init__(self) -> None:
        # Normalise lists (from TOML/JSON) to tuples so configs stay hashable and comparable.
        object.__setattr__(self, "roi", validate_roi(self.roi))
        if self.pad_mode not in get_args(PadMode):
            raise ConfigError("Unknown pad_mode", expected="'end', 'symmetric' or 'inplane-symmetric'",
                              got=repr(self.pad_mode))
        object.__setattr__(self, "spacing", _normalise_spacing(self.spacing))
        if self.intensity not in get_args(IntensityMode):
            raise ConfigError(
                "Unknown intensity mode", expected="'percentile' or 'fixed'", got=repr(self.intensity)
            )
        if self.intensity == "fixed":
            if self.a_min is None or self.a_max is None or not (
                math.isfinite(self.a_min) and math.isfinite(self.a_max) and self.a_min < self.a_max
            ):
                raise ConfigError(
                    "intensity='fixed' needs a window",
                    expected="finite a_min < a_max",
                    got=f"a_min={self.a_min}, a_max={self.a_max}",
                    fix="e.g. PreprocessConfig(intensity='fixed', a_min=-175, a_max=250)",
                )
        else:
            if self.a_min is not None or self.a_max is not None:
                raise ConfigError(
                    "a_min/a_max apply only to intensity='fixed'",
                    expected="a_min=None and a_max=None with intensity='percentile'",
                    got=f"a_min={self.a_min}, a_max={self.a_max}",
                    fix="set intensity='fixed' or drop a_min/a_max",
                )
            lo, hi = (float(p) for p in self.percentiles)
            if not 0.0 <= lo < hi <= 100.0:
                raise ConfigError(
                    "Bad percentiles", expected="0 <= lower < upper <= 100", got=repr(self.percentiles)
                )
            object.__setattr__(self, "percentiles", (lo, hi))
        if not isinstance(self.crop_foreground, bool):
            raise ConfigError("crop_foreground must be a bool", expected="True or False",
                              got=repr(self.crop_foreground))
        object.__setattr__(self, "orientation", _check_axcodes(self.orientation))


def _normalise_spacing(spacing: object) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    values = (spacing,) * 3 if isinstance(spacing, (int, float)) and not isinstance(spacing, bool) else spacing
    try:
        out = tuple(float(v) for v in values)  # type: ignore[attr-defined]  # any iterable; TypeError caught
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) and v > 0 for v in out):
        raise ConfigError(
            "Bad spacing",
            expected="None, one positive number (mm, isotropic) or three (x, y, z)",
            got=repr(spacing),
        )
    return out


@dataclass(frozen=True, eq=False)
class CropPadBox:
    """Where the prepared array sits relative to the volume it came from.

    Two grids are recorded: the *native* array as loaded (file voxel order, before
    reorientation) and the *resampled* grid (after orientation and spacing, before any crop).
    The prepared array is ``resampled[crop_start:crop_stop]`` with ``pad_before`` /
    ``pad_after`` zeros around it, per axis ``(x, y, z)``.

    Attributes
    ----------
    native_shape, native_affine
        Shape and voxel->world affine (RAS mm, 4x4 float64) of the loaded array.
    resampled_shape, resampled_affine
        Same after ``Orientationd`` and ``Spacingd``.
    crop_start, crop_stop
        Kept region of the resampled grid, half-open, foreground and ROI crops combined.
    pad_before, pad_after
        Zeros added before and after the kept region.
    """

    native_shape: tuple[int, int, int]
    native_affine: np.ndarray
    resampled_shape: tuple[int, int, int]
    resampled_affine: np.ndarray
    crop_start: tuple[int, int, int]
    crop_stop: tuple[int, int, int]
    pad_before: tuple[int, int, int]
    pad_after: tuple[int, int, int]

    @property
    def kept_shape(self) -> tuple[int, int, int]:
        """Size of the kept region (resampled voxels that reached the prepared array)."""
        return tuple(b - a for a, b in zip(self.crop_start, self.crop_stop, strict=True))  # type: ignore[return-value]

    @property
    def prepared_shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(x, y, z)`` of the prepared array."""
        return tuple(  # type: ignore[return-value]
            k + a + b for k, a, b in zip(self.kept_shape, self.pad_before, self.pad_after, strict=True)
        )

    @property
    def kept_slices(self) -> tuple[slice, slice, slice]:
        """Slices of the prepared array holding the kept region (excludes pad voxels)."""
        return tuple(slice(a, a + k) for a, k in zip(self.pad_before, self.kept_shape, strict=True))  # type: ignore[return-value]

    def to_resampled(self, array: np.ndarray | torch.Tensor, *, fill: float = 0) -> np.ndarray | torch.Tensor:
        """Undo the crops and pads: put a prepared-grid array back on the resampled grid.

        Exact (no interpolation). Works on ``(..., x, y, z)`` numpy arrays or tensors; voxels
        cropped away get ``fill``.
        """
        if tuple(array.shape[-3:]) != self.prepared_shape:
            raise ShapeError(
                "Array does not have the prepared shape",
                expected=f"(..., {', '.join(map(str, self.prepared_shape))})",
                got=str(tuple(array.shape)),
            )
        lead = tuple(array.shape[:-3])
        out: np.ndarray | torch.Tensor
        if isinstance(array, torch.Tensor):
            out = torch.full(lead + self.resampled_shape, fill, dtype=array.dtype, device=array.device)
        else:
            out = np.full(lead + self.resampled_shape, fill, dtype=array.dtype)
        dst: tuple[Any, ...] = (..., *(slice(a, b) for a, b in zip(self.crop_start, self.crop_stop, strict=True)))
        src: tuple[Any, ...] = (..., *self.kept_slices)
        out[dst] = array[src]
        return out

    def to_native(
        self, array: np.ndarray | torch.Tensor, *, mode: Literal["nearest", "bilinear"] = "nearest"
    ) -> torch.Tensor:
        """Map a prepared-grid array ``(c, x, y, z)`` or ``(x, y, z)`` back to the native array.

        Undoes crop/pad exactly, then resamples from the resampled grid to the native grid
        through their affines (MONAI ``SpatialResample``), which also undoes the reorientation.
        Exact when no spacing change happened; otherwise an interpolation (use ``"nearest"``
        for labels). Voxels outside the prepared region become 0.

        Returns
        -------
        torch.Tensor
            float32, ``(c, *native_shape)`` (a channel axis is added for 3D input).
        """
        from monai.data import MetaTensor
        from monai.transforms import SpatialResample

        t = torch.as_tensor(array)
        if t.ndim == 3:
            t = t[None]
        back = self.to_resampled(t.to(torch.float32))
        img = MetaTensor(back, affine=torch.as_tensor(self.resampled_affine, dtype=torch.float64))
        out = SpatialResample(mode=mode, padding_mode="zeros")(
            img, dst_affine=torch.as_tensor(self.native_affine, dtype=torch.float64),
            spatial_size=self.native_shape,
        )
        return out.as_tensor() if isinstance(out, MetaTensor) else out


@dataclass(frozen=True, eq=False)
class PreparedCase:
    """One volume ready for the model, with its real-voxel mask.

    Frozen fields; the tensors themselves are ordinary (mutable) tensors.

    Attributes
    ----------
    case_id
        Id from the data source (``"array"`` by default for :func:`prepare_array`).
    image
        float32 ``(1, x, y, z)``, values in [0, 1], 0 on padding.
    mask
        bool ``(1, x, y, z)``, True where the voxel comes from the original volume, False where
        it was added by padding (or fell outside the volume when resampling).
    label
        uint8 ``(1, x, y, z)`` or ``None``; 0 on padding.
    spacing
        Voxel size ``(x, y, z)`` in mm of the prepared array.
    affine
        4x4 float64 voxel->world (RAS mm) of the prepared array (padding included).
    box
        :class:`CropPadBox` to map arrays back to the resampled and native grids.
    source
        Image file or DICOM folder, ``None`` for in-memory arrays.
    config
        The :class:`PreprocessConfig` used.
    """

    case_id: str
    image: torch.Tensor
    mask: torch.Tensor
    label: torch.Tensor | None
    spacing: tuple[float, float, float]
    affine: np.ndarray
    box: CropPadBox
    source: Path | None
    config: PreprocessConfig = field(repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(x, y, z)``."""
        return tuple(self.image.shape[1:])  # type: ignore[return-value]

    @property
    def n_real(self) -> int:
        """Number of real voxels."""
        return int(self.mask.sum())

    @property
    def pad_fraction(self) -> float:
        """Fraction of voxels that are padding."""
        return 1.0 - self.n_real / self.mask.numel()


# --- entry points --------------------------------------------------------------------------


def prepare_case(ref: CaseRef | str | os.PathLike[str], config: PreprocessConfig | None = None) -> PreparedCase:
    """Load one case and prepare it (module docstring has the steps).

    Parameters
    ----------
    ref
        A :class:`~attnprobe.data.io.CaseRef`, or a path to one NIfTI file / DICOM folder.
    config
        Defaults to ``PreprocessConfig()`` (96³ ROI, 1 mm, RAS, percentile scaling).

    Raises
    ------
    DataError, ShapeError
        Unreadable or non-3D files, NaNs, a label that does not match the image.
    """
    config = config or PreprocessConfig()
    if not isinstance(ref, CaseRef):
        path = Path(ref).expanduser()
        ref = CaseRef(case_id_from_path(path), path, None)
    image = load_volume(ref.image, role="image")
    label = load_volume(ref.label, role="label") if ref.label is not None else None
    if label is not None:
        _check_label_grid(image, label, where=f"case {ref.case_id!r} ({ref.label})")
    return _prepare(image, label, config=config, case_id=ref.case_id, source=ref.image)


def prepare_array(
    image: np.ndarray | torch.Tensor,
    *,
    label: np.ndarray | torch.Tensor | None = None,
    spacing: float | Sequence[float] | None = None,
    affine: np.ndarray | torch.Tensor | None = None,
    case_id: str = "array",
    config: PreprocessConfig | None = None,
) -> PreparedCase:
    """Prepare an in-memory volume exactly as :func:`prepare_case` prepares a file.

    Parameters
    ----------
    image
        ``(x, y, z)`` array.
    label
        Optional ``(x, y, z)`` integer label on the same grid.
    spacing
        Voxel size in mm (one number or ``(x, y, z)``); the array is taken to be RAS-ordered
        with its origin at 0. Default 1 mm. Give either ``spacing`` or ``affine``, not both.
    affine
        4x4 voxel->world (RAS mm) affine, for arrays that are not RAS-ordered.
    case_id
        Id stored on the result.
    config
        Defaults to ``PreprocessConfig()``.
    """
    config = config or PreprocessConfig()
    if spacing is not None and affine is not None:
        raise ConfigError(
            "Give spacing or affine, not both",
            expected="spacing=... (RAS-ordered array) or affine=... (any orientation)",
            got=f"spacing={spacing!r} and an affine",
        )
    if affine is None:
        sp = _normalise_spacing(1.0 if spacing is None else spacing)
        aff = np.diag([*sp, 1.0])  # type: ignore[misc, list-item]  # sp is never None for a given spacing
    else:
        aff = np.asarray(affine.cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise ShapeError("Bad affine", expected="a finite, invertible 4x4 matrix",
                             got=f"shape {aff.shape}")
    img = _array_to_meta(image, aff, role="image")
    lab = _array_to_meta(label, aff, role="label") if label is not None else None
    if lab is not None:
        _check_label_grid(img, lab, where="label array")
    return _prepare(img, lab, config=config, case_id=case_id, source=None)


def iter_cases(
    source: str | os.PathLike[str],
    config: PreprocessConfig | None = None,
    *,
    split: Split = "all",
    limit: int | None = None,
) -> Iterator[PreparedCase]:
    """Prepare the cases of a source one by one (lazily, so memory holds one case).

    Parameters
    ----------
    source
        Anything :func:`~attnprobe.data.io.list_cases` accepts.
    config
        Defaults to ``PreprocessConfig()``.
    split
        Datalist split (``"all"`` for folders).
    limit
        Stop after this many cases (``None``: all).
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError("Bad limit", expected="a positive integer or None", got=repr(limit))
    config = config or PreprocessConfig()
    refs = list_cases(source, split=split)
    for ref in refs[:limit]:
        yield prepare_case(ref, config)


# --- internals -----------------------------------------------------------------------------


def _array_to_meta(array, affine: np.ndarray, *, role: str) -> MetaTensor:
    t = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if t.ndim != 3:
        raise ShapeError(
            f"{role.capitalize()} array is not a 3D volume",
            expected="shape (x, y, z)",
            got=f"shape {tuple(t.shape)}",
            fix="drop channel/batch axes first (e.g. array[0])",
        )
    # clone: later in-place steps must never write into the caller's array.
    t = t.detach().cpu().to(torch.float32).clone()
    n_bad = int((~torch.isfinite(t)).sum())
    if n_bad:
        raise DataError(
            f"{role.capitalize()} array contains NaN or infinite values",
            expected="finite values only",
            got=f"{n_bad} non-finite of {t.numel()} voxels",
            fix="replace them first (e.g. numpy.nan_to_num)",
        )
    return as_volume(t, affine)


def _check_label_grid(image: MetaTensor, label: MetaTensor, *, where: str) -> None:
    if tuple(label.shape) != tuple(image.shape):
        raise ShapeError(
            f"Label of {where} is not on the image's grid",
            expected=f"shape {tuple(image.shape)} (the image's)",
            got=f"shape {tuple(label.shape)}",
            fix="resample the label to the image grid (nearest neighbour)",
        )
    a_img = np.asarray(image.affine, dtype=np.float64)
    a_lab = np.asarray(label.affine, dtype=np.float64)
    if not np.allclose(a_img, a_lab, atol=1e-3, rtol=1e-4):
        raise DataError(
            f"Label of {where} has a different affine from the image",
            expected=f"the image's affine {a_img[:3].round(3).tolist()}",
            got=f"{a_lab[:3].round(3).tolist()}",
            fix="resample the label to the image grid, or fix its header",
        )
    values = label.as_tensor()
    if bool(((values != values.round()) | (values < 0) | (values > 255)).any()):
        raise DataError(
            f"Label of {where} is not an integer label map",
            expected="integer classes in 0..255",
            got=f"values in [{float(values.min()):g}, {float(values.max()):g}], "
            f"non-integer: {bool((values != values.round()).any())}",
        )


def _bbox(selected: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """Half-open bounding box of True voxels in ``(1, x, y, z)``, or None when there are none."""
    from monai.transforms import CropForeground

    start, stop = CropForeground(allow_smaller=True).compute_bounding_box(selected.to(torch.uint8))
    start, stop = np.asarray(start, dtype=int), np.asarray(stop, dtype=int)
    if np.any(stop <= start):
        return None
    return start, stop


def _prepare(
    image: MetaTensor,
    label: MetaTensor | None,
    *,
    config: PreprocessConfig,
    case_id: str,
    source: Path | None,
) -> PreparedCase:
    from monai.transforms import (
        EnsureChannelFirstd,
        Orientationd,
        ScaleIntensityRanged,
        ScaleIntensityRangePercentilesd,
        Spacingd,
        SpatialCropd,
    )

    native_shape = tuple(int(s) for s in image.shape)
    native_affine = np.asarray(image.affine, dtype=np.float64).copy()

    # The mask starts as ones on the loaded grid: every loaded voxel is real by definition.
    # MONAI's dictionary transforms are typed Hashable -> Tensor; values here are MetaTensors.
    data: Any = {"image": image, "mask": torch.ones_like(image)}
    if label is not None:
        data["label"] = label
    keys = list(data)
    interp = ["bilinear" if k == "image" else "nearest" for k in keys]
    # Border for the image avoids dark rims; zeros for mask/label so outside never counts as real.
    pad_modes = ["border" if k == "image" else "zeros" for k in keys]

    data = EnsureChannelFirstd(keys=keys, channel_dim="no_channel")(data)
    for k in keys:
        # MONAI >= 1.6 moves the affine in crops/pads along spatial_ndim axes only; all three
        # must move (older MONAI has no such attribute and always uses the affine's rank).
        if getattr(data[k], "spatial_ndim", 3) != 3:
            data[k].spatial_ndim = 3
    # labels=None: take the axis labels from the MetaTensor's space (RAS for NIfTI and arrays).
    data = Orientationd(keys=keys, axcodes=config.orientation, labels=None)(data)
    if config.spacing is not None:
        data = Spacingd(keys=keys, pixdim=config.spacing, mode=interp, padding_mode=pad_modes)(data)
    resampled_shape = tuple(int(s) for s in data["image"].shape[1:])
    resampled_affine = np.asarray(data["image"].affine, dtype=np.float64).copy()

    scale: Any
    if config.intensity == "percentile":
        lo, hi = config.percentiles
        scale = ScaleIntensityRangePercentilesd(keys="image", lower=lo, upper=hi, b_min=0.0, b_max=1.0,
                                                clip=True)
    else:
        # a_min/a_max are floats in "fixed" mode (checked in PreprocessConfig.__post_init__).
        scale = ScaleIntensityRanged(keys="image", a_min=cast(float, config.a_min), a_max=cast(float, config.a_max), b_min=0.0,
                                     b_max=1.0, clip=True)
    data = scale(data)
    # Voxels that are not real are padding and read as 0, like all padding.
    data["image"] = data["image"] * (data["mask"] > 0.5)

    start = np.zeros(3, dtype=int)
    if config.crop_foreground:
        fg = _bbox((data["image"] > 0) & (data["mask"] > 0.5))
        if fg is not None:  # a blank volume keeps its extent rather than vanishing
            data = SpatialCropd(keys=keys, roi_start=fg[0].tolist(), roi_end=fg[1].tolist())(data)
            start += fg[0]

    if config.roi != "full":
        roi = np.asarray(config.roi, dtype=int)
        size = np.asarray(data["image"].shape[1:], dtype=int)
        if np.any(size > roi):
            lo_idx = np.floor(_crop_centre(data) - roi / 2.0).astype(int)
            # Shift the window back inside the volume; on axes that fit, keep everything.
            lo_idx = np.where(size > roi, np.clip(lo_idx, 0, size - roi), 0)
            hi_idx = np.where(size > roi, lo_idx + roi, size)
            data = SpatialCropd(keys=keys, roi_start=lo_idx.tolist(), roi_end=hi_idx.tolist())(data)
            start += lo_idx
    kept_shape = np.asarray(data["image"].shape[1:], dtype=int)

    roi_or_none = None if config.roi == "full" else tuple(int(r) for r in config.roi)
    for pad in pad_transforms(keys, config.pad_mode, roi=roi_or_none, multiple=ROI_MULTIPLE):
        data = pad(data)

    out_affine = np.asarray(data["image"].affine, dtype=np.float64).copy()
    out_shape = np.asarray(data["image"].shape[1:], dtype=int)
    mask = (data["mask"] > 0.5).as_tensor()
    # Pad offsets come from the affines, the one record every MONAI crop/pad keeps exact.
    origin = np.linalg.solve(resampled_affine, out_affine[:, 3])[:3]
    first = np.rint(origin).astype(int)  # resampled index of prepared voxel (0, 0, 0)
    pad_before = start - first
    pad_after = out_shape - kept_shape - pad_before
    if np.any(pad_before < 0) or np.any(pad_after < 0):
        raise RuntimeError(f"internal: inconsistent crop/pad bookkeeping {start=} {first=} {out_shape=}")

    box = CropPadBox(
        native_shape=native_shape,  # type: ignore[arg-type]
        native_affine=native_affine,
        resampled_shape=resampled_shape,  # type: ignore[arg-type]
        resampled_affine=resampled_affine,
        crop_start=tuple(int(v) for v in start),  # type: ignore[arg-type]
        crop_stop=tuple(int(v) for v in start + kept_shape),  # type: ignore[arg-type]
        pad_before=tuple(int(v) for v in pad_before),  # type: ignore[arg-type]
        pad_after=tuple(int(v) for v in pad_after),  # type: ignore[arg-type]
    )
    image_t = data["image"].as_tensor().to(torch.float32).contiguous()
    label_t = None
    if label is not None:
        label_t = data["label"].as_tensor().round().clamp(0, 255).to(torch.uint8).contiguous()
    # Rounded: the affine carries float noise (0.9999999998 mm) that nobody means.
    spacing = tuple(round(v, 6) for v in affine_spacing(out_affine))
    return PreparedCase(
        case_id=case_id,
        image=image_t,
        mask=mask.contiguous(),
        label=label_t,
        spacing=spacing,  # type: ignore[arg-type]
        affine=out_affine,
        box=box,
        source=source,
        config=config,
    )


def _crop_centre(data: dict) -> np.ndarray:
    """Centre (voxel units, float) to crop around: label box, else foreground box, else middle."""
    size = np.asarray(data["image"].shape[1:], dtype=float)
    if "label" in data:
        box = _bbox(data["label"] > 0)
        if box is not None:
            return (box[0] + box[1]) / 2.0
    box = _bbox((data["image"] > 0) & (data["mask"] > 0.5))
    if box is not None:
        return (box[0] + box[1]) / 2.0
    return size / 2.0
