"""Detection and segmentation metrics on hand-built volumes with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from attnprobe.errors import ConfigError, ShapeError
from attnprobe.train.evaluate import (
    CaseResult,
    evaluate_case,
    remove_small_components,
    results_table,
    summarize,
)


def _cube(shape=(24, 24, 24), start=(6, 6, 6), n=8):
    m = np.zeros(shape, dtype=bool)
    m[start[0]:start[0] + n, start[1]:start[1] + n, start[2]:start[2] + n] = True
    return m


@pytest.mark.parametrize("axis", [0, 2])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.1, 2.5)])
def test_shifted_cube_dice_and_hd95(axis, spacing):
    n, k = 8, 2
    ref = _cube(n=n)
    start = [6, 6, 6]
    start[axis] += k
    pred = _cube(start=tuple(start), n=n)
    r = evaluate_case(pred, ref, spacing=spacing)
    # overlap is n*n*(n-k) voxels of n**3 each: Dice = 2 n^2 (n-k) / (2 n^3) = (n-k)/n
    assert r.dice == pytest.approx(2 * n * n * (n - k) / (2 * n**3))
    # the far face of each cube (n^2 of ~6n^2 surface voxels, well over 5 %) is exactly k voxels
    # along the shift axis from the other surface and nothing is farther: HD95 = k * spacing[axis]
    assert r.hd95 == pytest.approx(k * spacing[axis])
    assert r.hd95_defined and r.detected and r.n_ref_lesions == r.n_detected_lesions == 1
    assert r.iou == pytest.approx(n * n * (n - k) / (n * n * (n + k)))


def _brute_force(pred, ref, spacing, tol):
    """Surfaces by the definition (a voxel with a face neighbour outside), all pairwise distances."""
    def surface(m):
        pad = np.pad(m, 1)
        inside_all = np.ones_like(m)
        for ax in range(3):
            for step in (-1, 1):
                inside_all &= np.roll(pad, step, axis=ax)[1:-1, 1:-1, 1:-1]
        return np.argwhere(m & ~inside_all) * np.asarray(spacing)

    sp_, sr_ = surface(pred), surface(ref)
    d = cdist(sp_, sr_)
    d_pr, d_rp = d.min(1), d.min(0)
    hd = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    sd = ((d_pr <= tol).sum() + (d_rp <= tol).sum()) / (len(d_pr) + len(d_rp))
    return hd, sd


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI-internal deprecation in get_mask_edges
def test_hd95_and_surface_dice_match_brute_force_and_monai():
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(3)
    # no voxel offset lies exactly at the 2 mm tolerance with this spacing (0.8, 1.2 would give
    # sqrt(1.6^2 + 1.2^2) = 2.0, where rounding decides "within")
    sp = (0.7, 1.1, 2.9)
    for _ in range(3):
        field = ndimage.gaussian_filter(rng.random((22, 20, 14)), 2.0)
        ref = field > np.quantile(field, 0.7)
        pred = ndimage.binary_dilation(ref, iterations=1) & (rng.random(ref.shape) > 0.1)
        r = evaluate_case(pred, ref, spacing=sp, min_component_voxels=0)
        hd, sd = _brute_force(pred, ref, sp, 2.0)
        assert r.hd95 == pytest.approx(hd)
        assert r.surface_dice == pytest.approx(sd)

        def onehot(m):
            return torch.as_tensor(np.stack([~m, m])[None].astype(np.float32))

        assert r.hd95 == pytest.approx(
            compute_hausdorff_distance(onehot(pred), onehot(ref), percentile=95, spacing=sp).item(), rel=1e-5)
        assert r.surface_dice == pytest.approx(
            compute_surface_dice(onehot(pred), onehot(ref), class_thresholds=[2.0], spacing=sp).item(), rel=1e-5)


def test_two_lesions_one_missed():
    ref = _cube(shape=(40, 24, 24), start=(4, 6, 6), n=8) | _cube(shape=(40, 24, 24), start=(26, 6, 6), n=6)
    pred = _cube(shape=(40, 24, 24), start=(4, 6, 6), n=8)  # finds the larger lesion only
    r = evaluate_case(pred, ref, spacing=(1.0, 1.0, 1.0))
    assert (r.n_ref_lesions, r.n_detected_lesions, r.n_pred_components) == (2, 1, 1)
    assert r.detected  # "largest": the primary tumor was found
    assert evaluate_case(pred, ref, spacing=(1, 1, 1), case_detection="any").detected
    assert not evaluate_case(pred, ref, spacing=(1, 1, 1), case_detection="all").detected
    small_only = _cube(shape=(40, 24, 24), start=(26, 6, 6), n=6)
    r2 = evaluate_case(small_only, ref, spacing=(1, 1, 1))
    assert r2.n_detected_lesions == 1 and not r2.detected and r2.iou == 0.0
    s = summarize([r, r2])
    assert s["n_lesions"] == 4 and s["n_detected_lesions"] == 2 and s["lesion_detection_rate"] == 0.5
    assert s["n_detected"] == 1 and s["detection_rate"] == 0.5


def test_component_of_10_dropped_and_11_kept():
    pred = np.zeros((30, 30, 30), dtype=bool)
    pred[2, 2, 2:12] = True  # 10 voxels
    for i in range(11):  # 11 voxels touching only at corners: one 26-connected component
        pred[10 + i, 10 + i, 10 + i] = True
    lab, n = remove_small_components(pred)
    assert n == 1 and lab.max() == 1 and (lab > 0).sum() == 11 and not lab[2, 2, 2]
    assert remove_small_components(pred, connectivity=6)[1] == 0  # 11 single voxels under 6-connectivity
    assert remove_small_components(pred, min_component_voxels=9)[1] == 2
    r = evaluate_case(pred, np.zeros_like(pred), spacing=(1, 1, 1))
    assert r.n_pred_components == 1


def test_iou_threshold_is_strict():
    ref = _cube(n=10)
    thin = np.zeros_like(ref)
    thin[6:16, 6:16, 6] = True  # 100 voxels inside a 1000-voxel lesion: IoU exactly 0.1
    assert not evaluate_case(thin, ref, spacing=(1, 1, 1)).detected
    thin[6:16, 6:16, 7] = True  # IoU 0.2
    r = evaluate_case(thin, ref, spacing=(1, 1, 1))
    assert r.detected and r.iou == pytest.approx(0.2)


def test_identical_masks_are_perfect():
    m = _cube()
    r = evaluate_case(torch.as_tensor(m[None]), m, spacing=(0.5, 0.5, 3.0))  # tensor with a channel axis
    assert (r.dice, r.surface_dice, r.hd95, r.iou) == (1.0, 1.0, 0.0, 1.0)


def test_empty_masks_documented_values():
    z = np.zeros((10, 10, 10), dtype=bool)
    m = _cube(shape=(10, 10, 10), start=(2, 2, 2), n=4)
    both = evaluate_case(z, z, spacing=(1, 1, 1))
    assert (both.dice, both.surface_dice, both.detected, both.n_ref_lesions) == (1.0, 1.0, False, 0)
    assert math.isnan(both.hd95) and not both.hd95_defined and math.isnan(both.iou)
    missed = evaluate_case(z, m, spacing=(1, 1, 1))
    assert (missed.dice, missed.surface_dice, missed.detected, missed.iou) == (0.0, 0.0, False, 0.0)
    assert math.isnan(missed.hd95) and not missed.hd95_defined
    false_pos = evaluate_case(m, z, spacing=(1, 1, 1))
    assert (false_pos.dice, false_pos.surface_dice, false_pos.n_pred_components) == (0.0, 0.0, 1)
    s = summarize([both, missed, false_pos, evaluate_case(m, m, spacing=(1, 1, 1))])
    assert s["n_cases"] == 4 and s["n_with_reference"] == 2 and s["detection_rate"] == 0.5
    assert s["hd95_mean"] == 0.0 and s["n_hd95_defined"] == 1
    assert s["dice_mean"] == pytest.approx(0.5)


def test_matched_scope_ignores_false_positives():
    ref = _cube(shape=(40, 24, 24), start=(4, 6, 6), n=8)
    pred = ref.copy()
    pred[30:36, 6:12, 6:12] = True  # a false positive far away
    vol = evaluate_case(pred, ref, spacing=(1, 1, 1))
    matched = evaluate_case(pred, ref, spacing=(1, 1, 1), scope="matched")
    assert vol.dice < 1.0 and matched.dice == 1.0 and matched.hd95 == 0.0
    none = evaluate_case(np.roll(ref, 20, axis=0), ref, spacing=(1, 1, 1), scope="matched")
    assert math.isnan(none.dice) and math.isnan(none.surface_dice) and not none.detected


def test_table_and_errors():
    m = _cube()
    rs = [evaluate_case(m, m, spacing=(1, 1, 1), case="a")]
    df = results_table(rs)
    assert list(df["case"]) == ["a"] and "hd95_defined" in df.columns
    assert isinstance(rs[0], CaseResult)
    with pytest.raises(ShapeError):
        evaluate_case(m, m[:-1], spacing=(1, 1, 1))
    with pytest.raises(ConfigError):
        evaluate_case(m, m, spacing=(1, 1))
    with pytest.raises(ConfigError):
        evaluate_case(m, m, spacing=(1, 1, 1), connectivity=8)  # type: ignore[arg-type]
