"""Lesion detection and segmentation metrics for one case and a summary over cases (SPEC §5).

Definitions
-----------
- Components are found with 26-connectivity (``scipy.ndimage.label`` with a full 3x3x3
  structure; 6 and 18 are options). Predicted components of ``<= min_component_voxels`` voxels
  (default 10) are dropped; the remaining ones form the *cleaned prediction*, the one every
  metric uses. Reference components are all kept: each one is a *reference lesion*.
- A reference lesion is *detected* when at least one kept predicted component has
  IoU > ``iou_threshold`` (default 0.1) with it (IoU of that component and that lesion alone).
- Case detection (``case_detection``): ``"largest"`` (default) -- the case is detected when its
  largest reference lesion, the primary tumor, is detected (fragments and nodes do not decide);
  ``"any"`` -- any lesion detected; ``"all"`` -- every lesion detected. A case without a reference
  lesion is never "detected" and is left out of the detection rate.
- ``iou``: the best IoU of the primary (largest) reference lesion with any kept predicted
  component, i.e. the number compared with the threshold; NaN without a reference lesion.
- Dice, HD95 and surface Dice compare prediction and reference masks, either whole-volume
  (``scope="volume"``, default: cleaned prediction vs full reference) or on matched lesions only
  (``scope="matched"``: predicted components that detect some lesion vs the detected lesions;
  all three are NaN when nothing was detected, so a missed case counts only against detection).
- Surfaces are the voxels of a mask with a face neighbour outside it (``mask XOR erosion``,
  voxels on the array border count as surface), as in MONAI's ``get_mask_edges``. Distances are
  Euclidean in mm between voxel centres (EDT with ``sampling=spacing``).
- HD95: the larger of the two directed 95th percentiles (linear interpolation) of surface
  distances, pred->ref and ref->pred -- MONAI's ``compute_hausdorff_distance(percentile=95)``.
- Surface Dice at tolerance tau (Nikolov et al. 2021, voxel-count form): the fraction of surface
  voxels of both masks lying within tau mm (inclusive) of the other mask's surface.
- Empty masks: both empty -> Dice 1, surface Dice 1, HD95 NaN; exactly one empty -> Dice 0,
  surface Dice 0, HD95 NaN. ``hd95_defined`` says whether HD95 is a number; means skip NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from attnprobe.data.arrays import check_spacing, volume_3d
from attnprobe.errors import ConfigError, ShapeError

Connectivity = Literal[6, 18, 26]
Scope = Literal["volume", "matched"]
CaseDetection = Literal["largest", "any", "all"]


@dataclass(frozen=True)
class CaseResult:
    """Metrics of one case (see the module docstring for definitions).

    Attributes
    ----------
    detected
        Whether the case's tumor was detected (per ``case_detection``).
    iou
        Best IoU of the primary reference lesion with a kept predicted component.
    dice
        Dice of prediction and reference (per ``scope``).
    hd95
        95th-percentile symmetric Hausdorff distance, mm; NaN when undefined.
    surface_dice
        Surface Dice at the tolerance.
    n_pred_components
        Predicted components kept after dropping small ones.
    n_ref_lesions
        Reference lesions (components).
    n_detected_lesions
        Reference lesions detected.
    hd95_defined
        False when HD95 is NaN (an empty mask on either side).
    case
        Case identifier.
    """

    detected: bool
    iou: float
    dice: float
    hd95: float
    surface_dice: float
    n_pred_components: int
    n_ref_lesions: int
    n_detected_lesions: int
    hd95_defined: bool
    case: str = ""

    @property
    def has_reference(self) -> bool:
        """Whether the case has at least one reference lesion (counts for the detection rate)."""
        return self.n_ref_lesions > 0


def _structure(connectivity: int) -> np.ndarray:
    ranks = {6: 1, 18: 2, 26: 3}
    if connectivity not in ranks:
        raise ConfigError("Bad connectivity.", expected="6, 18 or 26", got=repr(connectivity),
                          fix="pass connectivity=26 (SPEC default)")
    return ndimage.generate_binary_structure(3, ranks[connectivity])


def _as_mask(a: Any, name: str) -> np.ndarray:
    return volume_3d(a, name, kind="mask", fix=f"pass one case's {name} (argmax / thresholded)") != 0


def remove_small_components(mask: Any, *, min_component_voxels: int = 10,
                            connectivity: Connectivity = 26) -> tuple[np.ndarray, int]:
    """Drop connected components of ``<= min_component_voxels`` voxels.

    Parameters
    ----------
    mask
        ``(x, y, z)`` mask (nonzero = foreground).
    min_component_voxels
        Components with at most this many voxels are removed.
    connectivity
        6, 18 or 26.

    Returns
    -------
    labels, n
        ``(x, y, z)`` int32 component labels ``1..n`` of the kept components (0 background), and n.
    """
    m = _as_mask(mask, "mask")
    lab, n = ndimage.label(m, structure=_structure(connectivity))
    if n == 0:
        return lab.astype(np.int32), 0
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes > int(min_component_voxels)
    keep[0] = False
    new_ids = np.zeros(n + 1, dtype=np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_ids[lab], int(keep.sum())


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (mm): pred surface -> ref surface, ref surface -> pred surface.

    Both masks must be non-empty ``(x, y, z)`` booleans of one shape.
    """
    union = pred | ref
    idx = np.argwhere(union)
    # crop to the union's bounding box plus one voxel: every surface voxel lies inside it
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, union.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sp_, sr_ = _surface(pred[box]), _surface(ref[box])
    d_to_ref = ndimage.distance_transform_edt(~sr_, sampling=spacing)
    d_to_pred = ndimage.distance_transform_edt(~sp_, sampling=spacing)
    return d_to_ref[sp_], d_to_pred[sr_]


def _overlap_metrics(pred: np.ndarray, ref: np.ndarray, spacing: np.ndarray, *, tolerance_mm: float,
                     percentile: float) -> tuple[float, float, float]:
    """Dice, HD95, surface Dice with the documented empty-mask conventions."""
    n_p, n_r = int(pred.sum()), int(ref.sum())
    if n_p == 0 and n_r == 0:
        return 1.0, math.nan, 1.0
    if n_p == 0 or n_r == 0:
        return 0.0, math.nan, 0.0
    dice = 2.0 * int(np.logical_and(pred, ref).sum()) / (n_p + n_r)
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    hd = max(float(np.percentile(d_pr, percentile)), float(np.percentile(d_rp, percentile)))
    sdice = (int((d_pr <= tolerance_mm).sum()) + int((d_rp <= tolerance_mm).sum())) / (d_pr.size + d_rp.size)
    return dice, hd, sdice


def evaluate_case(pred: Any, ref: Any, *, spacing: Sequence[float], case: str = "",
                  min_component_voxels: int = 10, iou_threshold: float = 0.1, tolerance_mm: float = 2.0,
                  percentile: float = 95.0, scope: Scope = "volume", case_detection: CaseDetection = "largest",
                  connectivity: Connectivity = 26) -> CaseResult:
    """Detection, Dice, HD95 and surface Dice of one case.

    Parameters
    ----------
    pred, ref
        ``(x, y, z)`` masks (nonzero = tumor; numpy or torch; a leading singleton channel is
        dropped), on the same grid.
    spacing
        Voxel size ``(x, y, z)`` in mm.
    case
        Case identifier stored on the result.
    min_component_voxels
        Predicted components with at most this many voxels are dropped.
    iou_threshold
        A lesion is detected by a component with IoU strictly above this.
    tolerance_mm
        Surface Dice tolerance.
    percentile
        Hausdorff percentile (95 for HD95).
    scope
        ``"volume"`` or ``"matched"`` (see module docstring).
    case_detection
        ``"largest"``, ``"any"`` or ``"all"``.
    connectivity
        6, 18 or 26.

    Returns
    -------
    CaseResult
    """
    p = _as_mask(pred, "prediction")
    r = _as_mask(ref, "reference")
    if p.shape != r.shape:
        raise ShapeError("Prediction and reference shapes differ.", expected=f"prediction shape {r.shape}",
                         got=str(p.shape), fix="resample the prediction to the reference grid")
    sp = check_spacing(spacing, example="(1.0, 1.0, 3.0)")
    if scope not in ("volume", "matched"):
        raise ConfigError("Unknown scope.", expected="volume or matched", got=repr(scope), fix='pass scope="volume"')
    if case_detection not in ("largest", "any", "all"):
        raise ConfigError("Unknown case_detection.", expected="largest, any or all", got=repr(case_detection),
                          fix='pass case_detection="largest"')
    if not 0.0 <= iou_threshold < 1.0 or tolerance_mm < 0 or not 0.0 <= percentile <= 100.0:
        raise ConfigError("Bad metric option.", expected="0 <= iou_threshold < 1, tolerance_mm >= 0, 0 <= percentile <= 100",
                          got=f"{iou_threshold}, {tolerance_mm}, {percentile}", fix="use the SPEC defaults 0.1, 2.0, 95")

    pred_cc, n_pred = remove_small_components(p, min_component_voxels=min_component_voxels,
                                              connectivity=connectivity)
    ref_cc, n_ref = ndimage.label(r, structure=_structure(connectivity))

    # contingency table of (reference lesion, predicted component) voxel counts, row/col 0 = background
    pair = ref_cc.astype(np.int64).ravel() * (n_pred + 1) + pred_cc.ravel()
    table = np.bincount(pair, minlength=(n_ref + 1) * (n_pred + 1)).reshape(n_ref + 1, n_pred + 1)
    inter = table[1:, 1:].astype(np.float64)
    ref_size = table[1:, :].sum(1).astype(np.float64)
    pred_size = table[:, 1:].sum(0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (ref_size[:, None] + pred_size[None, :] - inter)
    hits = iou > iou_threshold  # (lesion, component)
    lesion_found = hits.any(1)

    if n_ref == 0:
        detected, best_iou = False, math.nan
    else:
        primary = int(np.argmax(ref_size))  # first on ties: the lowest label
        best_iou = float(iou[primary].max()) if n_pred else 0.0
        detected = bool({"largest": lesion_found[primary], "any": lesion_found.any(),
                         "all": lesion_found.all()}[case_detection])

    if scope == "volume":
        dice, hd, sdice = _overlap_metrics(pred_cc > 0, r, sp, tolerance_mm=tolerance_mm, percentile=percentile)
    elif lesion_found.any():
        comps = np.flatnonzero(hits.any(0)) + 1
        lesions = np.flatnonzero(lesion_found) + 1
        dice, hd, sdice = _overlap_metrics(np.isin(pred_cc, comps), np.isin(ref_cc, lesions), sp,
                                           tolerance_mm=tolerance_mm, percentile=percentile)
    else:
        dice, hd, sdice = math.nan, math.nan, math.nan

    return CaseResult(detected=detected, iou=best_iou, dice=float(dice), hd95=float(hd), surface_dice=float(sdice),
                      n_pred_components=int(n_pred), n_ref_lesions=int(n_ref),
                      n_detected_lesions=int(lesion_found.sum()), hd95_defined=not math.isnan(hd), case=str(case))


def _mean(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def summarize(results: Sequence[CaseResult]) -> dict[str, float | int]:
    """Summary over cases.

    Returns
    -------
    dict
        ``n_cases``; ``n_with_reference`` (cases with a reference lesion); ``n_detected``;
        ``detection_rate`` = n_detected / n_with_reference (NaN when 0); ``n_lesions``,
        ``n_detected_lesions``, ``lesion_detection_rate``; ``dice_mean``, ``hd95_mean``,
        ``surface_dice_mean`` (means over the cases where the value is a number);
        ``n_hd95_defined``.
    """
    res = list(results)
    n_ref_cases = sum(r.has_reference for r in res)
    n_det = sum(r.detected for r in res)
    n_les = sum(r.n_ref_lesions for r in res)
    n_det_les = sum(r.n_detected_lesions for r in res)
    return {
        "n_cases": len(res),
        "n_with_reference": n_ref_cases,
        "n_detected": n_det,
        "detection_rate": n_det / n_ref_cases if n_ref_cases else math.nan,
        "n_lesions": n_les,
        "n_detected_lesions": n_det_les,
        "lesion_detection_rate": n_det_les / n_les if n_les else math.nan,
        "dice_mean": _mean(r.dice for r in res),
        "hd95_mean": _mean(r.hd95 for r in res),
        "n_hd95_defined": sum(r.hd95_defined for r in res),
        "surface_dice_mean": _mean(r.surface_dice for r in res),
    }


def results_table(results: Sequence[CaseResult]) -> Any:
    """Per-case results as a pandas DataFrame (one row per case, the CaseResult fields)."""
    import pandas as pd

    return pd.DataFrame([asdict(r) for r in results])
