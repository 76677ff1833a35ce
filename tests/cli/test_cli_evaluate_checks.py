"""``attnprobe evaluate`` refuses what would waste work or score the wrong thing (issues 14 case 5, 18):
intensity images given as predictions, and unlabelled data scored only after inference."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import attnprobe.models
from attnprobe.cli.app import app
from attnprobe.errors import DataError
from attnprobe.train.evaluate import check_label_map
from tests.helpers import assert_one_line_error, cli_runner

run = cli_runner(app)


def _save(path, array, dtype=np.uint8):
    nib.save(nib.Nifti1Image(array.astype(dtype), np.eye(4)), str(path))


@pytest.fixture
def folders(tmp_path):
    pred, labels = tmp_path / "pred", tmp_path / "labels"
    pred.mkdir()
    labels.mkdir()
    cube = np.zeros((16, 16, 16), np.uint8)
    cube[4:9, 4:9, 4:9] = 1
    _save(labels / "a_label.nii.gz", cube)
    return pred, labels, cube


def test_an_intensity_image_is_not_accepted_as_a_prediction(folders, tmp_path):
    pred, labels, cube = folders
    rng = np.random.default_rng(0)
    _save(pred / "a.nii.gz", rng.normal(100, 20, cube.shape), dtype=np.float32)  # the image, not a segmentation
    result = run("evaluate", "--pred", pred, "--labels", labels, "--out", tmp_path / "e")
    assert_one_line_error(result, "the prediction of case 'a' is not a label map")
    assert "fractional values" in result.output


def test_an_integer_image_with_foreign_classes_is_refused(folders, tmp_path):
    pred, labels, cube = folders
    _save(pred / "a.nii.gz", (np.arange(cube.size).reshape(cube.shape) % 200), dtype=np.int16)
    result = run("evaluate", "--pred", pred, "--labels", labels, "--out", tmp_path / "e")
    assert_one_line_error(result, "has classes its reference does not have")


def test_a_label_map_stored_as_float_is_fine(folders, tmp_path):
    pred, labels, cube = folders
    _save(pred / "a.nii.gz", cube, dtype=np.float32)
    result = run("evaluate", "--pred", pred, "--labels", labels, "--out", tmp_path / "e", "--n-resamples", 10,
                 "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_detected"] == 1


def test_check_label_map_directly():
    ref = np.zeros((4, 4, 4), np.uint8)
    ref[1, 1, 1] = 1
    check_label_map(ref.astype(np.float32), ref)
    check_label_map(np.zeros_like(ref), np.zeros_like(ref))
    for bad in (ref * 0.5, np.full(ref.shape, np.nan), ref * 3):
        with pytest.raises(DataError):
            check_label_map(bad, ref)


def test_unlabelled_data_is_refused_before_inference(tmp_path, swin_ckpt, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("inference started on data without labels")

    monkeypatch.setattr(attnprobe.models, "load_checkpoint", forbidden)
    images = tmp_path / "images"
    images.mkdir()
    _save(images / "case0.nii.gz", np.ones((16, 16, 8)), dtype=np.float32)
    result = run("evaluate", "--model", swin_ckpt, "--data", images, "--out", tmp_path / "e")
    assert_one_line_error(result, "has a label: there is nothing to score")
    assert "--write-predictions" in result.output and str(tmp_path / "e" / "predictions") in result.output
