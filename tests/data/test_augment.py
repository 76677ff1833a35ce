"""Tumor-aware intensity augmentation and the standard augmentation pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandCropByPosNegLabeld

from attnprobe.data.augment import (
    RandTumorIntensity,
    RandTumorIntensityd,
    apply_tumor_intensity,
    standard_augmentation,
)
from attnprobe.errors import ConfigError, ShapeError


def _pair(shape=(8, 8, 8), channels=1, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.random((channels, *shape)).astype(np.float32)
    lab = np.zeros((1, *shape), dtype=np.uint8)
    lab[0, 2:6, 3:7, 1:5] = 1
    lab[0, 0, 0, 0] = 2  # another class: must stay untouched
    return img, lab


def _recover(inp, out, mask):
    """Scale and shift from two tumor voxels with different inputs."""
    a, b = inp[mask][:2].astype(np.float64), out[mask][:2].astype(np.float64)
    s = (b[0] - b[1]) / (a[0] - a[1])
    return s, b[0] - s * a[0]


def test_only_tumor_voxels_change_numpy():
    img, lab = _pair(channels=2)
    t = RandTumorIntensity(prob=1.0)
    t.set_random_state(seed=1)
    out = t(img, lab)
    mask = np.broadcast_to(lab == 1, img.shape)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out[~mask], img[~mask])  # exact elsewhere
    np.testing.assert_allclose(out[mask], t.scale * img[mask] + t.shift, rtol=1e-6)
    assert not np.array_equal(out[mask], img[mask])
    np.testing.assert_array_equal(img, _pair(channels=2)[0])  # input not modified


def test_tensor_and_metatensor_keep_type_and_meta():
    img, lab = _pair()
    aff = torch.diag(torch.tensor([1.5, 1.5, 2.5, 1.0], dtype=torch.float64))
    mt = MetaTensor(torch.as_tensor(img), affine=aff, meta={"patch_index": 3})
    out = apply_tumor_intensity(mt, MetaTensor(torch.as_tensor(lab)), scale=1.3, shift=-0.1)
    assert isinstance(out, MetaTensor)
    torch.testing.assert_close(out.affine, aff)
    assert out.meta["patch_index"] == 3
    mask = torch.as_tensor(np.broadcast_to(lab == 1, img.shape).copy())
    assert torch.equal(out.as_tensor()[~mask], mt.as_tensor()[~mask])
    plain = apply_tumor_intensity(torch.as_tensor(img), lab[0], scale=1.3, shift=-0.1)  # label without channel
    assert type(plain) is torch.Tensor
    assert torch.equal(plain, out.as_tensor())


def test_probability_binomial_band():
    img, lab = _pair(shape=(4, 4, 4))
    lab[0, 1:3, 1:3, 1:3] = 1
    t = RandTumorIntensity()  # prob 0.3 by default
    t.set_random_state(seed=1234)
    n = 2000
    hits = sum(not np.array_equal(t(img, lab), img) for _ in range(n))
    sigma = np.sqrt(0.3 * 0.7 / n)
    assert abs(hits / n - 0.3) < 4 * sigma


def test_scale_and_shift_within_ranges_and_cover_them():
    img, lab = _pair()
    mask = np.broadcast_to(lab == 1, img.shape)
    t = RandTumorIntensity(prob=1.0, scale_range=(0.5, 1.5), shift_range=(-0.2, 0.2))
    t.set_random_state(seed=7)
    ss, bs = [], []
    for _ in range(300):
        s, b = _recover(img, t(img, lab), mask)
        ss.append(s)
        bs.append(b)
    ss, bs = np.array(ss), np.array(bs)
    assert ss.min() >= 0.5 - 1e-5 and ss.max() <= 1.5 + 1e-5
    assert bs.min() >= -0.2 - 1e-5 and bs.max() <= 0.2 + 1e-5
    assert ss.min() < 0.6 and ss.max() > 1.4 and bs.min() < -0.16 and bs.max() > 0.16


def test_set_random_state_reproducible():
    img, lab = _pair()
    outs = []
    for seed in (5, 5, 6):
        t = RandTumorIntensity(prob=0.5)
        t.set_random_state(seed=seed)
        outs.append([t(img, lab) for _ in range(20)])
    assert all(np.array_equal(a, b) for a, b in zip(outs[0], outs[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(outs[0], outs[2], strict=True))


def test_dictionary_transform_shares_draw_across_keys():
    img, lab = _pair()
    img2 = img * 3.0
    d = {"image": img, "image2": img2, "label": lab, "other": img.copy()}
    t = RandTumorIntensityd(["image", "image2"], prob=1.0)
    t.set_random_state(seed=0)
    out = t(d)
    mask = np.broadcast_to(lab == 1, img.shape)
    np.testing.assert_allclose(out["image"][mask], t.scale * img[mask] + t.shift, rtol=1e-6)
    np.testing.assert_allclose(out["image2"][mask], t.scale * img2[mask] + t.shift, rtol=1e-6)
    np.testing.assert_array_equal(out["image"][~mask], img[~mask])
    assert out["label"] is lab and out["other"] is d["other"]
    assert d["image"] is img  # input dict not modified


def _volume():
    img = torch.rand(1, 24, 24, 16, generator=torch.Generator().manual_seed(0))
    lab = torch.zeros(1, 24, 24, 16)
    lab[0, 8:16, 8:16, 5:11] = 1
    return {"image": MetaTensor(img), "label": MetaTensor(lab)}


def test_keep_first_with_monai_crops():
    crop = RandCropByPosNegLabeld(["image", "label"], label_key="label", spatial_size=(8, 8, 6), pos=1.0, neg=0.0,
                                  num_samples=4)
    crop.set_random_state(seed=0)
    plain = crop(_volume())
    pipe = Compose([crop, RandTumorIntensityd("image", prob=1.0, keep_first=True)])
    crop.set_random_state(seed=0)  # after Compose(), which reseeds its members
    aug = pipe(_volume())
    assert len(aug) == 4
    for i, (p, a) in enumerate(zip(plain, aug, strict=True)):
        assert a["image"].meta["patch_index"] == i
        tumor = a["label"].as_tensor() == 1
        assert tumor.any()  # positive crops hold tumor
        assert torch.equal(a["image"].as_tensor()[~tumor], p["image"].as_tensor()[~tumor])
        same = torch.equal(a["image"].as_tensor(), p["image"].as_tensor())
        assert same == (i == 0)


def test_keep_first_by_key_and_by_counter():
    img, lab = _pair()
    t = RandTumorIntensityd("image", prob=1.0, keep_first=True)
    assert t({"image": img, "label": lab, "crop_index": 0})["image"] is img
    assert not np.array_equal(t({"image": img, "label": lab, "crop_index": 1})["image"], img)
    with pytest.raises(ConfigError):
        t({"image": img, "label": lab})  # numpy crops carry no index and no num_samples
    tc = RandTumorIntensityd("image", prob=1.0, keep_first=True, num_samples=3)
    changed = [not np.array_equal(tc({"image": img, "label": lab})["image"], img) for _ in range(6)]
    assert changed == [False, True, True, False, True, True]
    assert tc.last_crop_index == 2
    tc.reset_counter()
    assert tc({"image": img, "label": lab})["image"] is img


def test_errors():
    img, lab = _pair()
    with pytest.raises(ShapeError):
        RandTumorIntensity(prob=1.0)(img, lab[:, :-1])
    with pytest.raises(ShapeError):
        RandTumorIntensity(prob=0.0)(img, lab[:, :-1])  # validated even when not applied
    with pytest.raises(ConfigError):
        RandTumorIntensity(scale_range=(1.5, 0.5))
    with pytest.raises(ConfigError):
        RandTumorIntensity(prob=1.5)
    with pytest.raises(ConfigError):
        RandTumorIntensityd("image", label_key="seg", prob=1.0)({"image": img, "label": lab})


def test_standard_augmentation_seeded_and_label_safe():
    def run(seed):
        aug = standard_augmentation(("image", "label"), seed=seed)
        vol = _volume()
        return [aug({"image": vol["image"].clone(), "label": vol["label"].clone()}) for _ in range(12)]

    a, b, c = run(0), run(0), run(1)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["image"].as_tensor(), y["image"].as_tensor())
        assert torch.equal(x["label"].as_tensor(), y["label"].as_tensor())
    assert any(not torch.equal(x["image"].as_tensor(), y["image"].as_tensor()) for x, y in zip(a, c, strict=True))
    vol = _volume()
    for x in a:
        assert set(torch.unique(x["label"].as_tensor()).tolist()) <= {0.0, 1.0}
        assert x["label"].sum() == vol["label"].sum()  # spatial only: tumor size preserved
        assert tuple(x["image"].shape) == (1, 24, 24, 16)  # rot90 in-plane only keeps z last
    with pytest.raises(ConfigError):
        standard_augmentation(("image",), label_keys=("label",))
