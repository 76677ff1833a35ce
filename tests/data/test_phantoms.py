"""Synthetic pelvic phantoms: determinism, shared anatomy, varying extents, NIfTI + datalist."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from attnprobe.data.phantoms import TUMOR_CLUSTERS, Phantom, make_phantom, write_phantom_dataset
from attnprobe.errors import ConfigError

SMALL = (48, 48, 24)


def test_same_seed_same_phantom_and_different_seed_differs():
    a = make_phantom(3, shape=SMALL)
    b = make_phantom(3, shape=SMALL)
    c = make_phantom(4, shape=SMALL)
    assert isinstance(a, Phantom)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.metadata == b.metadata and a.cluster == b.cluster and a.spacing == b.spacing
    assert not np.array_equal(a.image, c.image)
    # overriding the cluster changes the tumor's look, not the anatomy
    other = make_phantom(3, shape=SMALL, cluster=(a.cluster + 1) % len(TUMOR_CLUSTERS))
    np.testing.assert_array_equal(other.label, a.label)


def test_types_shapes_and_label_values():
    p = make_phantom(0, shape=SMALL)
    assert p.image.shape == SMALL and p.label.shape == SMALL
    assert p.image.dtype == np.float32 and p.label.dtype == np.uint8
    assert set(np.unique(p.label)) == {0, 1}
    # the shape option fixes the array and derives the axial spacing from the drawn extent
    assert p.spacing[2] == pytest.approx(p.axial_extent_mm / SMALL[2])
    assert p.metadata["tumor_volume_mm3"] == pytest.approx(p.label.sum() * np.prod(p.spacing))


def test_mri_and_ct_share_anatomy_but_not_contrast():
    mri = make_phantom(11, modality="mri", shape=SMALL)
    ct = make_phantom(11, modality="ct", shape=SMALL)
    np.testing.assert_array_equal(mri.label, ct.label)
    np.testing.assert_array_equal(mri.affine, ct.affine)
    assert mri.cluster == ct.cluster and mri.axial_extent_mm == ct.axial_extent_mm
    assert mri.metadata["tumor_center_mm"] == ct.metadata["tumor_center_mm"]
    # MRI: magnitude image (>= 0), bladder/fat bright; CT: air at -1000 and bone well above 300 HU
    assert mri.image.min() >= 0.0
    assert ct.image.min() < -900.0 and ct.image.max() > 600.0
    corner = (slice(0, 3), slice(0, 3), slice(None))  # outside the body: air
    assert np.median(ct.image[corner]) < -900.0
    assert np.median(mri.image[corner]) < 60.0


def test_tumor_appearance_follows_cluster():
    means = {}
    for cl in range(len(TUMOR_CLUSTERS)):
        p = make_phantom(5, cluster=cl, shape=SMALL)
        assert p.cluster == cl and p.metadata["cluster_name"] == TUMOR_CLUSTERS[cl].name
        means[cl] = float(p.image[p.label == 1].mean())
    bright = [i for i, c in enumerate(TUMOR_CLUSTERS) if c.name.startswith("bright")]
    dark = [i for i, c in enumerate(TUMOR_CLUSTERS) if c.name.startswith("dark")]
    assert min(means[i] for i in bright) > max(means[i] for i in dark)


def test_axial_extent_varies_between_cases():
    ps = [make_phantom(s, spacing=(3.0, 3.0, 2.5)) for s in range(12)]
    ext = np.array([p.axial_extent_mm for p in ps])
    nz = {p.image.shape[2] for p in ps}
    assert ext.min() >= 40.0 - 2.5 and ext.max() <= 120.0 + 2.5
    assert ext.max() - ext.min() > 30.0
    assert len(nz) > 4  # the axial voxel count varies too, so padding to a cubic ROI matters
    assert {p.image.shape[:2] for p in ps} == {(40, 40)}


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError):
        make_phantom(0, modality="pet")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        make_phantom(-1)
    with pytest.raises(ConfigError):
        make_phantom(0, axial_range_mm=(20.0, 60.0))
    with pytest.raises(ConfigError):
        write_phantom_dataset("unused", n=4, split=(0.5, 0.5, 0.5))


def test_dataset_nifti_round_trip_ras_and_datalists(tmp_path: Path):
    paths = write_phantom_dataset(tmp_path / "ph", n=10, seed=1, shape=SMALL, split=(0.6, 0.2, 0.2))
    assert set(paths) == {"mri", "ct"}
    lists = {m: json.loads(p.read_text()) for m, p in paths.items()}
    manifest = json.loads((tmp_path / "ph" / "phantoms.json").read_text())
    by_case = {c["case"]: c for c in manifest["cases"]}

    for m, dl in lists.items():
        assert {k: len(v) for k, v in dl.items()} == {"training": 6, "validation": 2, "test": 2}
        cases = [e["case"] for v in dl.values() for e in v]
        assert sorted(cases) == sorted(by_case)  # every case once
        for section, entries in dl.items():
            for e in entries:
                assert by_case[e["case"]]["split"] == section
                for key in ("image", "label"):
                    assert not Path(e[key]).is_absolute()
                    assert (paths[m].parent / e[key]).is_file()
    # same split and same label files for both modalities: one anatomy
    assert lists["mri"]["test"] == [
        {**e, "image": e["image"].replace("images_ct", "images_mri")} for e in lists["ct"]["test"]]

    entry = lists["mri"]["training"][0]
    img = nib.load(paths["mri"].parent / entry["image"])
    lab = nib.load(paths["mri"].parent / entry["label"])
    ct = nib.load(paths["ct"].parent / lists["ct"]["training"][0]["image"])
    for im in (img, lab, ct):
        assert nib.aff2axcodes(im.affine) == ("R", "A", "S")
        assert im.header.get_qform(coded=True)[1] == 1 and im.header.get_sform(coded=True)[1] == 1
    assert lab.get_data_dtype() == np.uint8 and img.get_data_dtype() == np.float32

    # the files hold exactly what make_phantom renders for the recorded seed and cluster
    meta = by_case[entry["case"]]
    ref = make_phantom(meta["seed"], cluster=meta["cluster"], shape=SMALL)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), ref.image)
    np.testing.assert_array_equal(np.asanyarray(lab.dataobj), ref.label)
    np.testing.assert_allclose(img.affine, ref.affine)
    assert lab.header.get_zooms() == pytest.approx(ref.spacing)


def test_monai_loads_datalist_in_ras_without_reorienting(tmp_path: Path):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    paths = write_phantom_dataset(tmp_path, n=3, seed=2, shape=SMALL, modalities=("mri",), split=(1.0, 0.0, 0.0))
    entry = json.loads(paths["mri"].read_text())["training"][0]
    d = {k: str(tmp_path / entry[k]) for k in ("image", "label")}
    loaded = Compose([LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"])])(d)
    oriented = Orientationd(["image", "label"], axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(
        dict(loaded))
    np.testing.assert_array_equal(np.asarray(oriented["image"]), np.asarray(loaded["image"]))
    assert tuple(oriented["label"].shape) == (1, *SMALL)
