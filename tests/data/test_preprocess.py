"""Preprocessing with an explicit real-voxel mask (docs/definitions.md, "Token kinds")."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from attnprobe.data.io import CaseRef
from attnprobe.data.preprocess import (
    PreparedCase,
    PreprocessConfig,
    iter_cases,
    prepare_array,
    prepare_case,
    validate_roi,
)
from attnprobe.errors import ConfigError, DataError, ShapeError
from tests.helpers import assert_message, write_nifti

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def check_invariants(pc: PreparedCase) -> None:
    """Types, shapes, and the mask agreeing with the crop/pad box and the affine."""
    assert pc.image.dtype == torch.float32 and pc.mask.dtype == torch.bool
    assert pc.image.shape == pc.mask.shape == (1, *pc.box.prepared_shape)
    if pc.label is not None:
        assert pc.label.dtype == torch.uint8 and pc.label.shape == pc.image.shape
        assert not pc.label[~pc.mask].any()
    assert float(pc.image.min()) >= 0.0 and float(pc.image.max()) <= 1.0
    assert not pc.image[~pc.mask].any()  # padding reads as 0
    # The prepared affine is the resampled affine shifted by (crop_start - pad_before) voxels.
    shift = np.asarray(pc.box.crop_start) - np.asarray(pc.box.pad_before)
    expected = pc.box.resampled_affine.copy()
    expected[:3, 3] += pc.box.resampled_affine[:3, :3] @ shift
    np.testing.assert_allclose(pc.affine, expected, atol=1e-6)


# --- orientation and spacing -----------------------------------------------------------------


def test_lps_volume_is_reoriented_and_the_mask_follows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.random((10, 12, 6)).astype(np.float32) + 0.1
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])  # x index runs to the left, y to posterior: LPS
    path = write_nifti(tmp_path / "lps.nii.gz", arr, aff)
    cfg = PreprocessConfig(roi=(32, 32, 32), pad_mode="end", spacing=None, crop_foreground=False,
                           intensity="fixed", a_min=0.0, a_max=2.0)
    pc = prepare_case(CaseRef("lps", path, None), cfg)
    check_invariants(pc)
    assert nib.aff2axcodes(pc.affine) == ("R", "A", "S")
    expected = arr[::-1, ::-1, :] / 2.0  # flipping x and y makes it RAS
    np.testing.assert_allclose(pc.image[0, :10, :12, :6].numpy(), expected, atol=1e-6)
    assert pc.mask[0, :10, :12, :6].all() and pc.n_real == arr.size
    # World position of a voxel is unchanged by reorientation.
    np.testing.assert_allclose(pc.affine @ [0, 0, 0, 1], aff @ [9, 11, 0, 1])


def test_anisotropic_spacing_resampled_to_1mm(tmp_path: Path) -> None:
    arr = np.random.default_rng(8).random((10, 20, 8)).astype(np.float32)
    aff = np.diag([2.0, 1.0, 3.0, 1.0])
    path = write_nifti(tmp_path / "aniso.nii.gz", arr, aff)
    pc = prepare_case(path, PreprocessConfig(roi=(32, 32, 32), crop_foreground=False))
    check_invariants(pc)
    assert pc.case_id == "aniso" and pc.source == path
    assert pc.spacing == (1.0, 1.0, 1.0)
    # The grid spans first to last voxel centre: (n - 1) * old / new + 1 voxels per axis.
    assert pc.box.resampled_shape == (19, 20, 22)
    assert pc.n_real == 19 * 20 * 22
    np.testing.assert_allclose(pc.box.resampled_affine @ [0, 0, 0, 1], aff @ [0, 0, 0, 1])


def test_singleton_fourth_dim_pads_all_three_axes(tmp_path: Path) -> None:
    # Regression: a squeezed (x, y, z, 1) volume once lost track of its third spatial axis,
    # so symmetric padding moved the affine along x and y only.
    arr = np.random.default_rng(9).random((20, 25, 40, 1)).astype(np.float32) + 0.5
    pc = prepare_case(write_nifti(tmp_path / "v.nii.gz", arr),
                      PreprocessConfig(roi=(32, 32, 64), spacing=None, crop_foreground=False,
                                           pad_mode="symmetric"))
    check_invariants(pc)
    assert pc.box.pad_before == (6, 3, 12)
    np.testing.assert_allclose(pc.affine[:3, 3], [-6.0, -3.0, -12.0])


def test_spacing_config_forms() -> None:
    assert PreprocessConfig(spacing=1).spacing == (1.0, 1.0, 1.0)
    assert PreprocessConfig(spacing=[1, 1, 2.5]).spacing == (1.0, 1.0, 2.5)
    with pytest.raises(ConfigError) as err:
        PreprocessConfig(spacing=(1.0, -1.0, 1.0))
    assert_message(err, "positive")


# --- the real-voxel mask through pad and crop --------------------------------------------------


@pytest.mark.parametrize(
    "pad_mode, start",
    [("end", (0, 0, 0)), ("symmetric", (6, 3, 12))],  # symmetric: (32-20)//2, (32-25)//2, (64-40)//2
)
def test_mask_marks_exactly_the_real_voxels(pad_mode: str, start: tuple[int, int, int]) -> None:
    arr = np.random.default_rng(1).random((20, 25, 40)).astype(np.float32) + 0.5
    arr[:, :, :20] = 0.0  # real voxels of intensity 0 must still count as real
    cfg = PreprocessConfig(roi=(32, 32, 64), pad_mode=pad_mode, spacing=None, crop_foreground=False)
    pc = prepare_array(arr, spacing=1.0, config=cfg)
    check_invariants(pc)
    assert pc.shape == (32, 32, 64)
    assert pc.n_real == arr.size
    region = tuple(slice(s, s + n) for s, n in zip(start, arr.shape, strict=True))
    expected = torch.zeros(32, 32, 64, dtype=torch.bool)
    expected[region] = True
    assert torch.equal(pc.mask[0], expected)
    assert pc.box.pad_before == start
    assert pc.box.kept_slices == region
    assert (pc.image[0][region] == 0).sum() >= 20 * 25 * 20  # zeros inside stay real
    np.testing.assert_allclose(pc.pad_fraction, 1 - arr.size / (32 * 32 * 64))
    # Undoing crop/pad puts the mask back exactly on the (untouched) grid.
    assert bool(pc.box.to_resampled(pc.mask).all())


def test_roi_crop_keeps_the_label_inside() -> None:
    arr = np.random.default_rng(2).random((100, 40, 40)).astype(np.float32) + 0.5
    label = np.zeros(arr.shape, dtype=np.uint8)
    label[60:70, 5:15, 30:38] = 1
    cfg = PreprocessConfig(roi=(32, 32, 32), spacing=None, crop_foreground=False)
    pc = prepare_array(arr, label=label, config=cfg)
    check_invariants(pc)
    assert pc.shape == (32, 32, 32) and pc.mask.all()
    assert int(pc.label.sum()) == int(label.sum())
    # x: centred on the label box (65 - 16); y and z: clamped to stay inside the volume.
    assert pc.box.crop_start == (49, 0, 8)
    # Without a label the window centres on the foreground (here: the whole volume).
    plain = prepare_array(arr, config=cfg)
    assert plain.box.crop_start == (34, 4, 4)


def test_roi_crop_label_at_the_edge() -> None:
    arr = np.ones((100, 40, 40), dtype=np.float32)
    label = np.zeros(arr.shape, dtype=np.uint8)
    label[95:100, 0:3, 10:20] = 2
    cfg = PreprocessConfig(roi=(32, 32, 32), spacing=None, crop_foreground=False, intensity="fixed",
                           a_min=0.0, a_max=1.0)
    pc = prepare_array(arr, label=label, config=cfg)
    check_invariants(pc)
    assert pc.box.crop_start[:2] == (68, 0)  # shifted back inside the volume
    assert int((pc.label == 2).sum()) == int((label == 2).sum())


def test_foreground_crop_then_pad() -> None:
    arr = np.zeros((60, 60, 60), dtype=np.float32)
    arr[10:40, 20:30, 5:55] = np.random.default_rng(3).random((30, 10, 50)) + 1.0
    pc = prepare_array(arr, config=PreprocessConfig(roi=(32, 32, 32), spacing=None, pad_mode="symmetric"))
    check_invariants(pc)
    # Foreground box (30, 10, 50); z is then cropped to 32 around its centre.
    assert pc.box.crop_start == (10, 20, 14) and pc.box.crop_stop == (40, 30, 46)
    assert pc.n_real == 30 * 10 * 32
    assert pc.box.pad_before == (1, 11, 0) and pc.box.pad_after == (1, 11, 0)


@pytest.mark.filterwarnings("ignore:Divide by zero")  # MONAI warns on a constant volume, rightly
def test_blank_volume_is_kept_whole() -> None:
    pc = prepare_array(np.zeros((10, 10, 10)), config=PreprocessConfig(roi=(32, 32, 32), spacing=None))
    check_invariants(pc)
    assert pc.n_real == 1000 and not pc.image.any()


def test_full_roi_pads_to_multiples_of_32() -> None:
    arr = np.random.default_rng(4).random((33, 41, 25)).astype(np.float32) + 0.5
    for pad_mode, before in (("end", (0, 0, 0)), ("symmetric", (15, 11, 3))):
        cfg = PreprocessConfig(roi="full", pad_mode=pad_mode, spacing=None)
        pc = prepare_array(arr, config=cfg)
        check_invariants(pc)
        assert pc.shape == (64, 64, 32)
        assert pc.n_real == arr.size and pc.box.pad_before == before


# --- intensity ---------------------------------------------------------------------------------


def test_percentile_scaling() -> None:
    arr = np.random.default_rng(5).normal(100.0, 20.0, (40, 40, 40)).astype(np.float32)
    pc = prepare_array(arr, config=PreprocessConfig(roi=(64, 64, 64), spacing=None, crop_foreground=False))
    check_invariants(pc)
    real = pc.image[pc.mask]
    assert float(real.min()) == 0.0 and float(real.max()) == 1.0
    # Everything at or above the 99.5th percentile is clipped to 1: about 0.5 % of voxels.
    assert 0.004 <= float((real >= 1.0).float().mean()) <= 0.006
    order = np.argsort(arr.ravel())
    kept = pc.image[0][pc.box.kept_slices].numpy().ravel()
    assert np.all(np.diff(kept[order]) >= -1e-6)  # monotone in the input


def test_fixed_window_scaling() -> None:
    arr = np.linspace(0.0, 300.0, 8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    arr[0, 0, 0], arr[1, 0, 0] = 150.0, 175.0
    cfg = PreprocessConfig(roi=(32, 32, 32), spacing=None, crop_foreground=False, intensity="fixed",
                           a_min=100.0, a_max=200.0)
    pc = prepare_array(arr, config=cfg)
    check_invariants(pc)
    img = pc.image[0][pc.box.kept_slices].numpy()
    np.testing.assert_allclose(img, np.clip((arr - 100.0) / 100.0, 0.0, 1.0), atol=1e-6)
    assert img[0, 0, 0] == pytest.approx(0.5) and img[1, 0, 0] == pytest.approx(0.75)


# --- files, arrays and round trips -------------------------------------------------------------


def test_real_nibabel_mri_through_prepare_case() -> None:
    path = NIBABEL_DATA / "anatomical.nii"  # 3D T1 MRI, 33 x 41 x 25 at 2 mm
    if not path.exists():
        pytest.skip(f"{path} not shipped with this nibabel")
    pc = prepare_case(path)
    check_invariants(pc)
    assert pc.shape == (96, 96, 96) and pc.spacing == (1.0, 1.0, 1.0)
    assert pc.box.native_shape == (33, 41, 25)
    assert pc.box.resampled_shape == (65, 81, 49)  # 2 mm -> 1 mm
    assert pc.n_real == int(np.prod(pc.box.kept_shape)) > 0
    assert nib.aff2axcodes(pc.affine) == ("R", "A", "S")
    assert float(pc.image.max()) == 1.0
    # 2 mm -> 1 mm puts every native voxel centre on a resampled one: the mask maps back whole.
    whole = prepare_case(path, PreprocessConfig(roi=(96, 96, 64), crop_foreground=False))
    assert bool((whole.box.to_native(whole.mask) == 1).all())


def test_label_maps_back_to_native_grid(tmp_path: Path) -> None:
    arr = np.random.default_rng(6).random((30, 36, 20)).astype(np.float32) + 0.5
    label = np.zeros(arr.shape, dtype=np.float32)
    label[3:9, 20:30, 4:7] = 1
    label[20:25, 5:8, 10:12] = 3
    aff = np.diag([-1.5, -1.5, 4.0, 1.0])
    image = write_nifti(tmp_path / "c.nii.gz", arr, aff)
    lab = write_nifti(tmp_path / "c_label.nii.gz", label, aff)
    for spacing, roi in ((None, (32, 64, 32)), ((0.75, 0.75, 2.0), (64, 96, 64))):  # exact ratios
        pc = prepare_case(CaseRef("c", image, lab), PreprocessConfig(roi=roi, spacing=spacing,
                                                                       crop_foreground=False))
        check_invariants(pc)
        back = pc.box.to_native(pc.label)
        assert back.shape == (1, 30, 36, 20)
        np.testing.assert_array_equal(back[0].numpy(), label)


def test_prepare_array_matches_prepare_case(tmp_path: Path) -> None:
    arr = np.random.default_rng(7).random((20, 30, 16)).astype(np.float32)
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    before = arr.copy()
    cfg = PreprocessConfig(roi=(32, 32, 32))
    from_file = prepare_case(write_nifti(tmp_path / "v.nii.gz", arr, aff), cfg)
    from_array = prepare_array(arr, spacing=(1.0, 1.0, 2.0), config=cfg)
    from_affine = prepare_array(torch.from_numpy(arr), affine=aff, case_id="v", config=cfg)
    for other in (from_array, from_affine):
        torch.testing.assert_close(other.image, from_file.image)
        assert torch.equal(other.mask, from_file.mask)
        np.testing.assert_allclose(other.affine, from_file.affine)
    assert from_array.case_id == "array" and from_array.source is None and from_affine.case_id == "v"
    np.testing.assert_array_equal(arr, before)  # the caller's array is untouched


def test_iter_cases_is_lazy_and_limited(tmp_path: Path) -> None:
    entries = []
    for i in range(3):
        write_nifti(tmp_path / f"v{i}.nii.gz", np.random.default_rng(i).random((8, 8, 8)) + 1)
        entries.append({"image": f"v{i}.nii.gz", "case": f"c{i}"})
    (tmp_path / "d.json").write_text(json.dumps({"training": entries}))
    cfg = PreprocessConfig(roi=(32, 32, 32), spacing=None)
    out = list(iter_cases(tmp_path / "d.json", cfg, limit=2))
    assert [c.case_id for c in out] == ["c0", "c1"]
    assert all(isinstance(c, PreparedCase) and c.n_real == 512 for c in out)
    with pytest.raises(ConfigError):
        next(iter_cases(tmp_path / "d.json", cfg, limit=0))


# --- configuration and bad input ---------------------------------------------------------------


def test_config_is_frozen_and_normalised() -> None:
    cfg = PreprocessConfig(roi=[96, 96, 64])  # type: ignore[arg-type]
    assert cfg.roi == (96, 96, 64) and hash(cfg) == hash(PreprocessConfig(roi=(96, 96, 64)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.roi = (32, 32, 32)  # type: ignore[misc]
    with pytest.raises(TypeError):
        PreprocessConfig((96, 96, 96))  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize(
    "roi, needles",
    [
        ((96, 96, 100), ("axis z is 100", "96 or 128", "(96, 96, 100)")),
        ((20, 96, 96), ("axis x is 20", "use 32 for axis x")),
        ((96, 0, 96), ("axis y is 0",)),
        ((96, 96), ("three integer sizes",)),
        ("cube", ("'full'",)),
    ],
)
def test_bad_roi(roi: object, needles: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as err:
        PreprocessConfig(roi=roi)  # type: ignore[arg-type]
    assert_message(err, *needles)
    with pytest.raises(ConfigError):
        validate_roi(roi)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"pad_mode": "middle"}, "'end', 'symmetric' or 'inplane-symmetric'"),
        ({"intensity": "zscore"}, "'percentile' or 'fixed'"),
        ({"intensity": "fixed"}, "a_min < a_max"),
        ({"intensity": "fixed", "a_min": 5.0, "a_max": 5.0}, "a_min < a_max"),
        ({"a_min": 0.0, "a_max": 1.0}, "intensity='percentile'"),
        ({"percentiles": (99.5, 0.5)}, "lower < upper"),
        ({"orientation": "RAR"}, "one of L/R"),
    ],
)
def test_bad_config(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        PreprocessConfig(**kwargs)
    assert_message(err, needle)


@pytest.mark.parametrize(
    "array, cls, needle",
    [
        (np.ones((10, 10)), ShapeError, "(10, 10)"),
        (np.ones((1, 10, 10, 10)), ShapeError, "(1, 10, 10, 10)"),
        (np.full((4, 4, 4), np.nan), DataError, "64 non-finite"),
    ],
)
def test_prepare_array_bad_input(array: np.ndarray, cls: type, needle: str) -> None:
    with pytest.raises(cls) as err:
        prepare_array(array)
    assert_message(err, needle)


def test_prepare_array_bad_label_and_arguments() -> None:
    arr = np.ones((8, 8, 8))
    with pytest.raises(ShapeError) as err:
        prepare_array(arr, label=np.zeros((8, 8, 7)))
    assert_message(err, "(8, 8, 7)")
    with pytest.raises(DataError) as err:
        prepare_array(arr, label=np.full((8, 8, 8), 0.5))
    assert_message(err, "integer")
    with pytest.raises(ConfigError) as err:
        prepare_array(arr, spacing=1.0, affine=np.eye(4))
    assert_message(err, "not both")
    with pytest.raises(ShapeError) as err:
        prepare_array(arr, affine=np.eye(3))
    assert_message(err, "(3, 3)")


@pytest.mark.parametrize(
    "shape, cls, needle",
    [((12, 12), ShapeError, "2 dims"), ((12, 12, 6, 2), ShapeError, "4 dims")],
)
def test_prepare_case_bad_nifti(tmp_path: Path, shape: tuple[int, ...], cls: type, needle: str) -> None:
    path = write_nifti(tmp_path / "bad.nii.gz", np.ones(shape))
    with pytest.raises(cls) as err:
        prepare_case(path)
    assert_message(err, needle)


def test_prepare_case_nan_missing_and_mismatched_label(tmp_path: Path) -> None:
    arr = np.ones((8, 8, 8), dtype=np.float32)
    arr[2, 2, 2] = np.nan
    with pytest.raises(DataError) as err:
        prepare_case(write_nifti(tmp_path / "nan.nii.gz", arr))
    assert_message(err, "NaN", "1 non-finite")
    with pytest.raises(DataError) as err:
        prepare_case(CaseRef("m", tmp_path / "missing.nii.gz", None))
    assert_message(err, "missing.nii.gz")
    good = write_nifti(tmp_path / "good.nii.gz", np.ones((8, 8, 8)))
    shifted = write_nifti(tmp_path / "lab.nii.gz", np.zeros((8, 8, 8)), np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(DataError) as err:
        prepare_case(CaseRef("g", good, shifted))
    assert_message(err, "different affine")


def test_iter_cases_empty_datalist(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text(json.dumps({"training": [], "test": []}))
    with pytest.raises(DataError) as err:
        list(iter_cases(tmp_path / "d.json"))
    assert_message(err, "no cases")
