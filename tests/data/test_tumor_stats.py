"""Tumor appearance statistics on hand-built volumes, and clustering of phantoms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from attnprobe.data.phantoms import TUMOR_CLUSTERS, make_phantom
from attnprobe.data.tumor_stats import analyze_tumors, cluster_cases, tumor_statistics, tumor_tables
from attnprobe.errors import DataError, ShapeError


def _cube_case(spacing=(1.0, 1.0, 2.0)):
    """Tumor cube with a checkerboard of 180/220 inside a 100-valued halo, 0 far away.

    Known values: mean 200, std 20 -> CV 0.1; the 5 mm shell lies inside the halo -> shell mean
    100, Weber contrast (200 - 100) / 100 = 1.
    """
    shape = (40, 40, 30)
    img = np.zeros(shape, dtype=np.float32)
    lab = np.zeros(shape, dtype=np.uint8)
    img[8:32, 8:32, 5:25] = 100.0  # halo: >= 8 voxels (8 mm in-plane, 10 mm along z) around the tumor
    sl = (slice(16, 24), slice(16, 24), slice(13, 17))
    lab[sl] = 1
    checker = (np.indices((8, 8, 4)).sum(0) % 2).astype(np.float32)
    img[sl] = 180.0 + 40.0 * checker
    return img, lab, spacing


def test_known_mean_cv_and_contrast():
    img, lab, sp = _cube_case()
    s = tumor_statistics(img, lab, spacing=sp, case="cube")
    assert s.mean == pytest.approx(200.0)
    assert s.cv == pytest.approx(0.1)
    assert s.shell_mean == pytest.approx(100.0)
    assert s.contrast == pytest.approx(1.0)
    assert s.n_voxels == 8 * 8 * 4 and s.volume_mm3 == pytest.approx(8 * 8 * 4 * 2.0)
    assert tumor_statistics(img, lab, spacing=sp, contrast="michelson").contrast == pytest.approx(100.0 / 300.0)
    assert tumor_statistics(img, lab, spacing=sp, contrast="difference").contrast == pytest.approx(100.0)
    # a wider shell reaches the zero background and lowers the shell mean
    assert tumor_statistics(img, lab, spacing=sp, shell_mm=15.0).shell_mean < 100.0
    # a mask can keep voxels out of the shell
    mask = np.ones_like(lab, dtype=bool)
    mask[:, :, :13] = False
    assert tumor_statistics(img, lab, spacing=sp, shell_mm=15.0, mask=mask).shell_mean != pytest.approx(
        tumor_statistics(img, lab, spacing=sp, shell_mm=15.0).shell_mean)


def test_boundary_gradient_of_a_step_uses_spacing():
    # half-space tumor (x < 10), intensity step 2 -> 1: central differences give 1 / (2 * s_x)
    # on both one-voxel bands; y and z are constant, the array border is not surface
    img = np.ones((20, 6, 5), dtype=np.float64)
    img[:10] = 2.0
    lab = np.zeros(img.shape, dtype=np.uint8)
    lab[:10] = 1
    for sx in (0.5, 1.0, 2.0):
        s = tumor_statistics(img, lab, spacing=(sx, 1.0, 3.0))
        assert s.boundary_gradient == pytest.approx(1.0 / (2.0 * sx))


def test_radial_profile_sign_and_range():
    shape = (40, 40, 40)
    idx = np.indices(shape)
    r = np.sqrt(((idx - 20) ** 2).sum(0))
    lab = (r <= 6).astype(np.uint8)
    img = np.where(lab == 1, 200.0, 100.0)
    s = tumor_statistics(img, lab, spacing=(1.0, 1.0, 1.0))
    d, prof = s.radial_distance_mm, s.radial_profile
    assert d.shape == (20,) and d[0] == pytest.approx(-14.25) and d[-1] == pytest.approx(14.25)
    assert np.all(prof[(d < 0) & np.isfinite(prof)] == 200.0)
    assert np.all(prof[d > 0] == 100.0)
    assert np.isnan(prof[0])  # deeper than the 6 mm radius: no voxel
    assert np.isfinite(prof[(d > -6) & (d < 0)]).all()


def test_errors():
    img, lab, sp = _cube_case()
    with pytest.raises(DataError):
        tumor_statistics(img, np.zeros_like(lab), spacing=sp)
    with pytest.raises(ShapeError):
        tumor_statistics(img, lab[:-1], spacing=sp)


def test_cluster_cases_finds_planted_blobs_and_skips_nan():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0, 0, 0], [10, 0, 5, 0], [0, 10, 0, 5]], dtype=float)
    truth = np.repeat([0, 1, 2], 6)
    x = centers[truth] + rng.normal(scale=0.5, size=(18, 4))
    wide = pd.DataFrame(x, columns=["mean", "cv", "contrast", "boundary_gradient"])
    wide.insert(0, "case", [f"c{i}" for i in range(18)])
    res = cluster_cases(wide)
    assert res.k == 3
    assert adjusted_rand_score(truth, res.labels.to_numpy()) == 1.0
    assert set(res.silhouette) == {2, 3, 4, 5, 6}
    wide.loc[0, "cv"] = np.nan
    res = cluster_cases(wide)
    assert res.labels.iloc[0] == -1 and res.k == 3
    with pytest.raises(DataError):
        cluster_cases(wide.iloc[:3])


def test_clustering_recovers_phantom_clusters():
    n_cl = len(TUMOR_CLUSTERS)
    phantoms = [make_phantom(100 + i, cluster=i % n_cl) for i in range(6 * n_cl)]
    res = analyze_tumors(phantoms)
    truth = [p.cluster for p in phantoms]
    assert res.clustering.k == n_cl
    assert adjusted_rand_score(truth, res.wide["cluster"]) == 1.0
    # tables: tidy long format, wide with a cluster column
    assert list(res.tidy.columns) == ["case", "feature", "distance_mm", "value"]
    n_bins = len(res.stats[0].radial_profile)
    assert len(res.tidy) == len(phantoms) * (6 + n_bins)
    assert res.tidy.loc[res.tidy.feature == "radial_profile", "distance_mm"].notna().all()
    assert {"case", "mean", "cv", "contrast", "boundary_gradient", "cluster"} <= set(res.wide.columns)
    tidy, wide = tumor_tables(res.stats)
    pd.testing.assert_frame_equal(wide, res.wide.drop(columns="cluster"))
