"""Data sources: datalist JSON, NIfTI folders, DICOM folders, and reading volumes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from attnprobe.data.io import CaseRef, list_cases, load_volume
from attnprobe.errors import ConfigError, DataError, ShapeError
from tests.helpers import assert_message, write_nifti

HAS_DICOM_READER = any(importlib.util.find_spec(m) is not None for m in ("itk", "pydicom"))


def small(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((6, 7, 5)).astype(np.float32)


# --- datalist ------------------------------------------------------------------------------


@pytest.fixture
def datalist(tmp_path: Path) -> Path:
    root = tmp_path / "task"
    for name in ("a", "b", "c", "d"):
        write_nifti(root / "imagesTr" / f"{name}.nii.gz", small())
        write_nifti(root / "labelsTr" / f"{name}.nii.gz", np.zeros((6, 7, 5)))
    outside = write_nifti(tmp_path / "elsewhere" / "e.nii", small())
    spec = {
        "name": "toy", "labels": {"0": "background"},  # extra Decathlon keys are ignored
        "training": [
            {"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"},
            {"image": "imagesTr/b.nii.gz", "label": "labelsTr/b.nii.gz", "case": "case-b"},
        ],
        "validation": [{"image": "imagesTr/c.nii.gz"}],
        "test": ["imagesTr/d.nii.gz", {"image": str(outside)}],
    }
    path = root / "dataset.json"
    path.write_text(json.dumps(spec))
    return path


def test_datalist_paths_relative_to_json_folder(datalist: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path / "elsewhere")  # the current folder must not matter
    cases = list_cases(datalist, split="training")
    root = datalist.parent
    assert cases == [
        CaseRef("a", root / "imagesTr" / "a.nii.gz", root / "labelsTr" / "a.nii.gz"),
        CaseRef("case-b", root / "imagesTr" / "b.nii.gz", root / "labelsTr" / "b.nii.gz"),
    ]


def test_datalist_splits_and_absolute_paths(datalist: Path, tmp_path: Path) -> None:
    assert [c.case_id for c in list_cases(datalist)] == ["a", "case-b", "c", "d", "e"]
    assert [c.case_id for c in list_cases(str(datalist), split="validation")] == ["c"]
    test = list_cases(datalist, split="test")
    assert [c.case_id for c in test] == ["d", "e"]
    assert test[1].image == tmp_path / "elsewhere" / "e.nii"
    assert all(c.label is None for c in test)


def test_datalist_missing_file_names_it(datalist: Path) -> None:
    (datalist.parent / "labelsTr" / "a.nii.gz").unlink()
    with pytest.raises(DataError) as err:
        list_cases(datalist)
    assert_message(err, "labelsTr/a.nii.gz", "relative to")


@pytest.mark.parametrize(
    "content, needle",
    [
        ({"training": []}, "no cases"),
        ({"numTraining": 3}, "no case lists"),
        ([1, 2], "wrong shape"),
        ({"training": [{"label": "x.nii.gz"}]}, "no image"),
        ({"training": [{"image": ["t1.nii.gz", "t2.nii.gz"]}]}, "single-channel"),
    ],
)
def test_datalist_bad_content(tmp_path: Path, content: object, needle: str) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError) as err:
        list_cases(path)
    assert_message(err, needle)


def test_datalist_requested_split_empty(datalist: Path) -> None:
    spec = json.loads(datalist.read_text())
    del spec["validation"]
    datalist.write_text(json.dumps(spec))
    with pytest.raises(DataError) as err:
        list_cases(datalist, split="validation")
    assert_message(err, "'validation'", "training (2)")


def test_datalist_invalid_json_and_duplicates(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"training": [')
    with pytest.raises(DataError) as err:
        list_cases(bad)
    assert_message(err, "line 1")
    write_nifti(tmp_path / "x" / "a.nii.gz", small())
    write_nifti(tmp_path / "y" / "a.nii.gz", small())
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"training": [{"image": "x/a.nii.gz"}, {"image": "y/a.nii.gz"}]}))
    with pytest.raises(DataError) as err:
        list_cases(dup)
    assert_message(err, "'a'", '"case"')


def test_unknown_split_and_split_on_folder(datalist: Path) -> None:
    with pytest.raises(ConfigError) as err:
        list_cases(datalist, split="train")  # type: ignore[arg-type]
    assert_message(err, "'training'", "'train'")
    with pytest.raises(ConfigError) as err:
        list_cases(datalist.parent / "imagesTr", split="training")
    assert_message(err, "split='all'")


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        list_cases(tmp_path / "nope.json")
    assert_message(err, "nope.json")


# --- NIfTI folders -------------------------------------------------------------------------


def test_folder_label_conventions(tmp_path: Path) -> None:
    data = tmp_path / "images"
    for name in ("p1", "p2", "p3", "p4"):
        write_nifti(data / f"{name}.nii.gz", small())
    write_nifti(data / "p1_label.nii.gz", np.zeros((6, 7, 5)))
    write_nifti(data / "p2_seg.nii", np.zeros((6, 7, 5)))
    write_nifti(data / "labels" / "p3.nii.gz", np.zeros((6, 7, 5)))
    write_nifti(tmp_path / "labels" / "p4.nii", np.zeros((6, 7, 5)))  # images/ -> labels/ sibling
    (data / "notes.txt").write_text("ignored")
    cases = {c.case_id: c for c in list_cases(data)}
    assert sorted(cases) == ["p1", "p2", "p3", "p4"]  # label-named files are not cases
    assert cases["p1"].label == data / "p1_label.nii.gz"
    assert cases["p2"].label == data / "p2_seg.nii"
    assert cases["p3"].label == data / "labels" / "p3.nii.gz"
    assert cases["p4"].label == tmp_path / "labels" / "p4.nii"


def test_folder_without_labels_and_single_file(tmp_path: Path) -> None:
    a = write_nifti(tmp_path / "vols" / "a.nii", small())
    write_nifti(tmp_path / "vols" / "b.nii.gz", small())
    assert list_cases(tmp_path / "vols") == [CaseRef("a", a, None), CaseRef("b", tmp_path / "vols" / "b.nii.gz")]
    assert list_cases(a) == [CaseRef("a", a, None)]


def test_folder_ambiguous_label(tmp_path: Path) -> None:
    write_nifti(tmp_path / "a.nii.gz", small())
    write_nifti(tmp_path / "a_seg.nii.gz", np.zeros((6, 7, 5)))
    write_nifti(tmp_path / "labels" / "a.nii.gz", np.zeros((6, 7, 5)))
    with pytest.raises(DataError) as err:
        list_cases(tmp_path)
    assert_message(err, "a_seg.nii.gz", "labels/a.nii.gz")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no volumes here")
    with pytest.raises(DataError) as err:
        list_cases(tmp_path)
    assert_message(err, "*.nii")


# --- DICOM ---------------------------------------------------------------------------------


def fake_dicom(path: Path) -> None:
    # Only the Part-10 preamble and magic: enough for listing, not for reading.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)


def test_dicom_series_listing(tmp_path: Path) -> None:
    for series in ("s1", "s2"):
        for i in range(3):
            fake_dicom(tmp_path / "dicom" / series / f"IM{i:04d}")  # no extension, magic only
    (tmp_path / "dicom" / "empty").mkdir()
    cases = list_cases(tmp_path / "dicom")
    assert [(c.case_id, c.image) for c in cases] == [("s1", tmp_path / "dicom" / "s1"),
                                                      ("s2", tmp_path / "dicom" / "s2")]
    # A folder that is itself one series is one case.
    assert [c.case_id for c in list_cases(tmp_path / "dicom" / "s1")] == ["s1"]


@pytest.mark.skipif(HAS_DICOM_READER, reason="a DICOM reader (itk or pydicom) is installed")
def test_dicom_without_reader_says_what_is_needed(tmp_path: Path) -> None:
    fake_dicom(tmp_path / "s1" / "a.dcm")
    with pytest.raises(DataError) as err:
        load_volume(tmp_path / "s1")
    assert_message(err, "itk", "pydicom", "dcm2niix")


@pytest.mark.skipif(importlib.util.find_spec("itk") is None, reason="itk is not installed; DICOM reading untested")
def test_dicom_series_reads_with_itk(tmp_path: Path) -> None:
    import itk

    arr = (np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4))  # ITK arrays are (z, y, x)
    series = tmp_path / "s1"
    series.mkdir()
    try:
        itk.imwrite(itk.image_from_array(arr), str(series / "vol.dcm"))
    except Exception as exc:  # pragma: no cover - depends on the ITK build's DICOM IO
        pytest.skip(f"this ITK build cannot write DICOM: {exc}")
    vol = load_volume(series)
    assert vol.ndim == 3 and vol.numel() == arr.size
    assert float(vol.max()) == float(arr.max())


# --- reading -------------------------------------------------------------------------------


def test_load_volume_keeps_voxel_order_and_affine(tmp_path: Path) -> None:
    arr = small()
    aff = np.diag([-2.0, -1.0, 3.0, 1.0])
    vol = load_volume(write_nifti(tmp_path / "a.nii.gz", arr, aff))
    assert tuple(vol.shape) == arr.shape
    np.testing.assert_allclose(vol.numpy(), arr)
    np.testing.assert_allclose(np.asarray(vol.affine), aff)


def test_load_volume_drops_singleton_fourth_dim(tmp_path: Path) -> None:
    vol = load_volume(write_nifti(tmp_path / "a.nii.gz", small()[..., None]))
    assert tuple(vol.shape) == (6, 7, 5)


@pytest.mark.parametrize("shape, needle", [((6, 7), "2 dims"), ((6, 7, 5, 3), "4 dims")])
def test_load_volume_rejects_non_3d(tmp_path: Path, shape: tuple[int, ...], needle: str) -> None:
    path = write_nifti(tmp_path / "bad.nii.gz", np.ones(shape))
    with pytest.raises(ShapeError) as err:
        load_volume(path)
    assert_message(err, needle, str(shape))


def test_load_volume_rejects_nan_and_missing(tmp_path: Path) -> None:
    arr = small()
    arr[1, 2, 3] = np.nan
    arr[0, 0, 0] = np.inf
    with pytest.raises(DataError) as err:
        load_volume(write_nifti(tmp_path / "nan.nii.gz", arr))
    assert_message(err, "2 non-finite")
    with pytest.raises(DataError) as err:
        load_volume(tmp_path / "missing.nii.gz")
    assert_message(err, "missing.nii.gz")
    (tmp_path / "x.mha").write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_volume(tmp_path / "x.mha")
    assert_message(err, ".nii")


def test_load_volume_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"not a nifti")
    with pytest.raises(DataError) as err:
        load_volume(path)
    assert_message(err, "broken.nii.gz")
