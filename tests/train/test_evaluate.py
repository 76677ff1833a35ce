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


@pytest.mark.parametrize("surface", ["surfel", "voxel"])
@pytest.mark.parametrize("axis", [0, 2])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.1, 2.5)])
def test_shifted_cube_dice_and_hd95(axis, spacing, surface):
    n, k = 8, 2
    ref = _cube(n=n)
    start = [6, 6, 6]
    start[axis] += k
    pred = _cube(start=tuple(start), n=n)
    r = evaluate_case(pred, ref, spacing=spacing, surface=surface)
    # overlap is n*n*(n-k) voxels of n**3 each: Dice = 2 n^2 (n-k) / (2 n^3) = (n-k)/n
    assert r.dice == pytest.approx(2 * n * n * (n - k) / (2 * n**3))
    # the far face of each cube (n^2 of ~6n^2 surface voxels, or about 1/6 of the surfel area, well
    # over 5 %) is exactly k voxels along the shift axis from the other surface and nothing is
    # farther: HD95 = k * spacing[axis] for both surface methods
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
        r = evaluate_case(pred, ref, spacing=sp, min_component_voxels=0, scope="volume", surface="voxel")
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


@pytest.mark.parametrize("surface", ["surfel", "voxel"])
def test_empty_masks_documented_values(surface):
    z = np.zeros((10, 10, 10), dtype=bool)
    m = _cube(shape=(10, 10, 10), start=(2, 2, 2), n=4)

    def score(p, r):  # whole-volume scope: the empty-mask conventions apply
        return evaluate_case(p, r, spacing=(1, 1, 1), scope="volume", surface=surface)

    both = score(z, z)
    assert (both.dice, both.surface_dice, both.detected, both.n_ref_lesions) == (1.0, 1.0, False, 0)
    assert math.isnan(both.hd95) and not both.hd95_defined and math.isnan(both.iou)
    missed = score(z, m)
    assert (missed.dice, missed.surface_dice, missed.detected, missed.iou) == (0.0, 0.0, False, 0.0)
    assert math.isnan(missed.hd95) and not missed.hd95_defined
    false_pos = score(m, z)
    assert (false_pos.dice, false_pos.surface_dice, false_pos.n_pred_components) == (0.0, 0.0, 1)
    s = summarize([both, missed, false_pos, score(m, m)])
    assert s["n_cases"] == 4 and s["n_with_reference"] == 2 and s["detection_rate"] == 0.5
    assert s["hd95_mean"] == 0.0 and s["n_hd95_defined"] == 1
    assert s["dice_mean"] == pytest.approx(0.5)


def test_matched_scope_leaves_missed_and_empty_cases_to_detection():
    z = np.zeros((10, 10, 10), dtype=bool)
    m = _cube(shape=(10, 10, 10), start=(2, 2, 2), n=4)
    for p, r in ((z, z), (z, m), (m, z)):  # nothing detected: no Dice, HD95, surface Dice (the default scope)
        res = evaluate_case(p, r, spacing=(1, 1, 1))
        assert math.isnan(res.dice) and math.isnan(res.hd95) and math.isnan(res.surface_dice)
    s = summarize([evaluate_case(z, m, spacing=(1, 1, 1)), evaluate_case(m, m, spacing=(1, 1, 1))])
    assert s["detection_rate"] == 0.5 and s["dice_mean"] == 1.0 and s["hd95_mean"] == 0.0


def test_matched_scope_ignores_false_positives():
    ref = _cube(shape=(40, 24, 24), start=(4, 6, 6), n=8)
    pred = ref.copy()
    pred[30:36, 6:12, 6:12] = True  # a false positive far away
    vol = evaluate_case(pred, ref, spacing=(1, 1, 1), scope="volume")
    matched = evaluate_case(pred, ref, spacing=(1, 1, 1))  # the default scope
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


# --- detection rule: LiTS-style (default) vs pairwise ------------------------------------------


def _fragments():
    """A 1000-voxel lesion and two separate fragments inside it: 67 and 100 voxels."""
    ref = _cube(n=10)  # [6:16]^3
    pred = np.zeros_like(ref)
    pred[6:16, 6:16, 6] = True  # 100 voxels: IoU 100/1000 = 0.100, not above 0.1
    pred[6:16, 6:12, 8] = True  # 60 voxels ...
    pred[6:13, 12, 8] = True  # ... + 7 = 67: IoU 0.067; plane z=7 empty, so not 26-connected to the first
    return pred, ref


def test_fragments_merge_under_lits_and_not_pairwise():
    pred, ref = _fragments()
    assert remove_small_components(pred)[1] == 2
    lits = evaluate_case(pred, ref, spacing=(1, 1, 1))  # the default rule
    # merged: 167 shared voxels, union 1000 -> IoU 0.167 > 0.1
    assert lits.detected and lits.iou == pytest.approx(0.167) and lits.n_detected_lesions == 1
    # matched scope: both fragments vs the lesion, Dice = 2 * 167 / (167 + 1000)
    assert lits.dice == pytest.approx(2 * 167 / 1167)
    pair = evaluate_case(pred, ref, spacing=(1, 1, 1), detection="pairwise")
    assert not pair.detected and pair.iou == pytest.approx(0.100) and pair.n_detected_lesions == 0
    assert math.isnan(pair.dice)  # nothing matched
    pred[6:16, 6:16, 7] = True  # join them: one 267-voxel component, detected under both rules
    assert evaluate_case(pred, ref, spacing=(1, 1, 1), detection="pairwise").iou == pytest.approx(0.267)


def test_lits_drops_small_reference_components_pairwise_keeps_them():
    ref = _cube(shape=(40, 24, 24), start=(4, 6, 6), n=8)
    ref[30:32, 6:8, 6:8] = True  # an 8-voxel reference speck, far away and not predicted
    pred = _cube(shape=(40, 24, 24), start=(4, 6, 6), n=8)
    lits = evaluate_case(pred, ref, spacing=(1, 1, 1), case_detection="all", scope="volume")
    assert lits.n_ref_lesions == 1 and lits.detected and lits.dice == 1.0  # the speck is gone everywhere
    pair = evaluate_case(pred, ref, spacing=(1, 1, 1), case_detection="all", scope="volume", detection="pairwise")
    assert pair.n_ref_lesions == 2 and not pair.detected and pair.dice == pytest.approx(2 * 512 / (512 + 520))
    only_speck = evaluate_case(np.zeros_like(ref), ref & ~pred, spacing=(1, 1, 1))
    assert only_speck.n_ref_lesions == 0 and not only_speck.has_reference and math.isnan(only_speck.iou)


def test_lits_merges_only_fragments_touching_the_lesion():
    ref = _cube(shape=(40, 24, 24), start=(4, 6, 6), n=10)  # 1000 voxels at x 4..13
    pred = np.zeros_like(ref)
    pred[4:14, 6:16, 6] = True  # 100 inside
    pred[4:14, 6:12, 8] = True  # 60 inside
    pred[20:30, 6:16, 6:16] = True  # 1000-voxel false positive, touching nothing: not merged
    r = evaluate_case(pred, ref, spacing=(1, 1, 1))
    assert r.n_pred_components == 3 and r.iou == pytest.approx(0.16) and r.detected
    assert r.dice == pytest.approx(2 * 160 / 1160)  # matched scope leaves the false positive out


@pytest.mark.parametrize(("option", "value"), [("detection", "merged"), ("surface", "mesh"), ("scope", "lesion")])
def test_unknown_definition_options_are_config_errors(option, value):
    m = _cube()
    with pytest.raises(ConfigError) as err:
        evaluate_case(m, m, spacing=(1, 1, 1), **{option: value})
    text = str(err.value)
    assert "expected" in text and "got" in text and "fix" in text and repr(value) in text
