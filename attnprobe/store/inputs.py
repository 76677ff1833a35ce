"""Optional input arrays of a capture store: the crop each sample saw, so maps can be drawn on it.

Every new store holds ``pad_fraction (sample,)`` float64, the share of each input's voxels
that are padding (offline metrics report it). A store written with ``keep_inputs=True`` also
holds, next to the block groups (docs/store.md)::

    input        (sample, in_x, in_y, in_z)  float32  the model input (channel 0)
    input_mask   (sample, in_x, in_y, in_z)  bool     True on real voxels, False on padding
    input_label  (sample, in_x, in_y, in_z)  uint8    the label on the same grid (0 when none)
    input_spacing (sample, axis)             float64  voxel size (mm) of the input
    crop_box     (sample, part, axis)        int32    crop_start, crop_stop, pad_before, pad_after
                                                       of the input in its resampled volume
                                                       (-1 where unknown, e.g. swept inputs)

The arrays are additive: stores without them read as before, and :func:`read_input` returns
None for them. Every rank writes only its own samples (one chunk per sample), as the block
arrays do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr

from attnprobe.store.writer import COMPRESSORS  # CRC32C on every chunk (docs/store.md)

__all__ = ["INPUT_ARRAYS", "PAD_FRACTION", "StoreInput", "create_sample_arrays", "write_sample", "has_inputs",
           "read_input"]

PAD_FRACTION = "pad_fraction"
INPUT, INPUT_MASK, INPUT_LABEL, INPUT_SPACING, CROP_BOX = "input", "input_mask", "input_label", "input_spacing", "crop_box"
INPUT_ARRAYS = (INPUT, INPUT_MASK, INPUT_LABEL, INPUT_SPACING, CROP_BOX)
_DIMS = ("sample", "in_x", "in_y", "in_z")  # not x/y/z: block outputs use those names at other sizes


@dataclass(frozen=True)
class StoreInput:
    """The input of one store sample.

    Attributes
    ----------
    case_id
        The sample's case.
    image, mask, label
        ``(x, y, z)`` arrays: input intensities, real-voxel mask, label (0 when none).
    spacing
        Voxel size ``(x, y, z)`` in mm.
    crop_box
        ``{"crop_start", "crop_stop", "pad_before", "pad_after"}`` (voxels of the resampled
        volume), or None when the capture did not know it.
    """

    case_id: str
    image: np.ndarray
    mask: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    crop_box: dict[str, tuple[int, int, int]] | None


def _array(root: zarr.Group, name: str) -> zarr.Array:
    """A root array of a store; the layout is ours, so the name holds an array, not a group."""
    return cast(zarr.Array, root[name])


def create_sample_arrays(path: str | Path, n: int, spatial: tuple[int, int, int], *, keep_inputs: bool) -> None:
    """Lay out ``pad_fraction`` and (``keep_inputs``) the input arrays in a new store (rank 0,
    before any sample is written); a resumed store keeps the layout it has."""
    root = zarr.open_group(str(path), mode="r+")
    if bool(np.asarray(_array(root, "done")[:]).any()):
        return  # resumed: samples were written without these arrays or with them already
    if PAD_FRACTION not in root:
        root.create_array(PAD_FRACTION, shape=(n,), chunks=(1,), dtype="float64", fill_value=float("nan"),
                          dimension_names=("sample",), compressors=COMPRESSORS)
    if not keep_inputs or INPUT in root:
        return
    chunks = (1, *spatial)
    root.create_array(INPUT, shape=(n, *spatial), chunks=chunks, dtype="float32", fill_value=0.0,
                      dimension_names=_DIMS, compressors=COMPRESSORS)
    root.create_array(INPUT_MASK, shape=(n, *spatial), chunks=chunks, dtype=bool, fill_value=False,
                      dimension_names=_DIMS, compressors=COMPRESSORS)
    root.create_array(INPUT_LABEL, shape=(n, *spatial), chunks=chunks, dtype="uint8", fill_value=0,
                      dimension_names=_DIMS, compressors=COMPRESSORS)
    root.create_array(INPUT_SPACING, shape=(n, 3), chunks=(1, 3), dtype="float64", fill_value=1.0,
                      dimension_names=("sample", "axis"), compressors=COMPRESSORS)
    root.create_array(CROP_BOX, shape=(n, 4, 3), chunks=(1, 4, 3), dtype="int32", fill_value=-1,
                      dimension_names=("sample", "part", "axis"), compressors=COMPRESSORS)


def has_inputs(path_or_root: Any) -> bool:
    """Whether a store (path or open zarr group) holds the input arrays."""
    root = path_or_root if isinstance(path_or_root, zarr.Group) else zarr.open_group(str(path_or_root), mode="r")
    return INPUT in root


def write_sample(root: zarr.Group, sample: int, case: Any, *, spacing: Any = None) -> None:
    """Write one sample's padding fraction and, when the store keeps inputs, its input:
    ``case.image``/``mask``/``label`` ``(1, x, y, z)``, its spacing (``spacing``, else
    ``case.spacing``, else 1 mm) and, when the case has a ``box``
    (:class:`~attnprobe.data.preprocess.CropPadBox`), where the crop sits."""
    mask = case.mask.detach().cpu().bool()
    if PAD_FRACTION in root:
        _array(root, PAD_FRACTION)[sample] = (mask.numel() - int(mask.sum())) / mask.numel()
    if INPUT not in root:
        return
    _array(root, INPUT)[sample] = np.asarray(case.image[0].detach().cpu().numpy(), dtype=np.float32)
    _array(root, INPUT_MASK)[sample] = np.asarray(case.mask[0].detach().cpu().numpy(), dtype=bool)
    label = getattr(case, "label", None)
    if label is not None:
        _array(root, INPUT_LABEL)[sample] = np.asarray(label[0].detach().cpu().numpy(), dtype=np.uint8)
    sp = spacing if spacing is not None else getattr(case, "spacing", (1.0, 1.0, 1.0))
    _array(root, INPUT_SPACING)[sample] = np.asarray([float(v) for v in sp], dtype=np.float64)
    box = getattr(case, "box", None)
    if box is not None:
        _array(root, CROP_BOX)[sample] = np.asarray(
            [box.crop_start, box.crop_stop, box.pad_before, box.pad_after], dtype=np.int32)


def read_input(path: str | Path, sample: int) -> StoreInput | None:
    """The input of sample ``sample`` of a store, or None when the store keeps no inputs."""
    root = zarr.open_group(str(path), mode="r")
    if INPUT not in root:
        return None
    box = np.asarray(_array(root, CROP_BOX)[sample])
    crop = None if (box < 0).all() else {k: (int(box[i, 0]), int(box[i, 1]), int(box[i, 2])) for i, k in
                                         enumerate(("crop_start", "crop_stop", "pad_before", "pad_after"))}
    sp = np.asarray(_array(root, INPUT_SPACING)[sample])
    return StoreInput(case_id=str(np.asarray(_array(root, "case")[sample])),
                      image=np.asarray(_array(root, INPUT)[sample]), mask=np.asarray(_array(root, INPUT_MASK)[sample]),
                      label=np.asarray(_array(root, INPUT_LABEL)[sample]),
                      spacing=(float(sp[0]), float(sp[1]), float(sp[2])),
                      crop_box=crop)
