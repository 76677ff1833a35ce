"""Sliding-window prediction, flip TTA and the way back to the native grid, with analytic models."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from attnprobe.data.preprocess import PreprocessConfig, prepare_array
from attnprobe.errors import ConfigError, ShapeError
from attnprobe.train.inference import InferenceConfig, predict_case, sliding_window_probs, write_prediction


class Threshold(nn.Module):
    """Pointwise logits (20 (0.5 - x), 20 (x - 0.5)): class 1 where the intensity exceeds 0.5."""

    def forward(self, x):
        return torch.cat([20 * (0.5 - x), 20 * (x - 0.5)], dim=1)


class Ramp(nn.Module):
    """Ignores its input: class-1 logit grows along x, so flips change the answer."""

    def forward(self, x):
        ramp = torch.arange(x.shape[2], dtype=x.dtype).view(1, 1, -1, 1, 1).expand_as(x)
        return torch.cat([torch.zeros_like(x), 0.1 * ramp], dim=1)


def test_pointwise_model_is_reproduced_by_the_sliding_window():
    image = torch.rand(1, 80, 70, 40, generator=torch.Generator().manual_seed(0))
    probs = sliding_window_probs(Threshold(), image, config=InferenceConfig(roi=(64, 64, 32)), device="cpu")
    expected = torch.softmax(Threshold()(image[None]), dim=1)
    assert probs.shape == (1, 2, 80, 70, 40)
    # any window blending of a pointwise model gives the pointwise answer
    assert torch.allclose(probs, expected, atol=1e-5)
    # flips commute with a pointwise model
    tta = sliding_window_probs(Threshold(), image, config=InferenceConfig(roi=(64, 64, 32), tta=True), device="cpu")
    assert torch.allclose(tta, expected, atol=1e-5)


def test_tta_averages_the_unflipped_outputs():
    image = torch.zeros(1, 64, 64, 32)
    config = InferenceConfig(roi=(64, 64, 32), tta=True, tta_flips=((), (0,)))
    probs = sliding_window_probs(Ramp(), image, config=config, device="cpu")[0, 1]
    i = torch.arange(64, dtype=torch.float32)
    # identity pass: sigmoid(0.1 i); flipped pass, flipped back: sigmoid(0.1 (63 - i))
    expected = 0.5 * (torch.sigmoid(0.1 * i) + torch.sigmoid(0.1 * (63 - i)))
    assert torch.allclose(probs[:, 5, 7], expected, atol=1e-5)


def _case():
    rng = np.random.default_rng(0)
    native = rng.uniform(0.0, 1.0, size=(30, 20, 12)).astype(np.float32)
    # LPS-like axes (x and y flipped) and 2x1x3 mm voxels: preprocessing reorients to RAS
    affine = np.diag([-2.0, -1.0, 3.0, 1.0])
    affine[:3, 3] = [10.0, -5.0, 2.0]
    config = PreprocessConfig(roi="full", spacing=None, intensity="fixed", a_min=0.0, a_max=1.0,
                              crop_foreground=False)
    return native, affine, prepare_array(native, affine=affine, case_id="c1", config=config)


def test_predict_case_maps_back_to_the_native_grid_exactly():
    native, affine, case = _case()
    assert case.shape == (32, 32, 32) and case.pad_fraction > 0
    pred = predict_case(Threshold(), case, config=InferenceConfig(roi=(32, 32, 32)), device="cpu")
    assert pred.label.shape == case.shape and pred.probs.shape == (2, *case.shape)
    assert not pred.label[~case.mask[0]].any()  # padding is never tumor
    label = pred.native_label()
    assert label.shape == native.shape and label.dtype == np.uint8
    # no resampling happened, so the way back is exact: the label is the threshold of the native image
    assert np.array_equal(label, (native > 0.5).astype(np.uint8))
    probs = pred.native_probs()
    assert np.allclose(probs[1], 1 / (1 + np.exp(-20 * (2 * native - 1))), atol=1e-4)


def test_write_prediction_uses_the_native_affine(tmp_path):
    native, affine, case = _case()
    pred = predict_case(Threshold(), case, config=InferenceConfig(roi=(32, 32, 32)), device="cpu")
    paths = write_prediction(pred, tmp_path, probabilities=True)
    assert paths["prediction"] == tmp_path / "predictions" / "c1.nii.gz"
    lab = nib.load(str(paths["prediction"]))
    prob = nib.load(str(paths["probabilities"]))
    assert lab.shape == prob.shape == native.shape
    assert np.allclose(lab.affine, affine) and np.allclose(prob.affine, affine)
    assert np.array_equal(np.asarray(lab.dataobj), (native > 0.5).astype(np.uint8))
    # softmax of Threshold's logits: class 1 is sigmoid(40 (x - 0.5)) of the native intensity
    want = 1 / (1 + np.exp(-20 * (2 * native.astype(np.float64) - 1)))
    assert prob.get_data_dtype() == np.float32
    np.testing.assert_allclose(prob.get_fdata(), want, atol=1e-4)
    both = write_prediction(pred, tmp_path / "all", probabilities=True, channels=[0, 1])
    two = nib.load(str(both["probabilities"]))
    assert two.shape == (*native.shape, 2)
    two = two.get_fdata()
    np.testing.assert_allclose(two[..., 1], want, atol=1e-4)
    np.testing.assert_allclose(two[..., 0], 1 - want, atol=1e-4)
    np.testing.assert_allclose(two.sum(axis=-1), 1.0, atol=1e-5)
    with pytest.raises(ConfigError):
        write_prediction(pred, tmp_path, probabilities=True, channels=[2])


def test_bad_inference_options():
    with pytest.raises(ConfigError):
        InferenceConfig(roi=(64, 64, 40))
    with pytest.raises(ConfigError):
        InferenceConfig(roi=(64, 64, 32), overlap=1.0)
    with pytest.raises(ConfigError):
        InferenceConfig(roi=(64, 64, 32), tta_flips=((3,),))
    with pytest.raises(ShapeError):
        sliding_window_probs(Threshold(), torch.zeros(2, 2, 8, 8, 8), config=InferenceConfig(roi=(32, 32, 32)),
                             device="cpu")
