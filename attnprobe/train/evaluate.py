"""Lesion detection and segmentation metrics for one case and a summary over cases (docs/conventions.md, §8).

Every definition choice is a keyword-only option whose default is the paper's; the table in
``docs/conventions.md`` lists them with the reason for each default.

Definitions
-----------
- Components are found with 26-connectivity (``scipy.ndimage.label`` with a full 3x3x3
  structure; 6 and 18 are options). Predicted components of ``<= min_component_voxels`` voxels
  (default 10) are dropped; the remaining ones form the *cleaned prediction*.
- ``detection="lits"`` (default, LiTS-style as the paper): reference components of
  ``<= min_component_voxels`` voxels are dropped too (the *cleaned reference*; its components
  are the *reference lesions*). The kept predicted components that overlap a lesion (at least one
  shared voxel) are merged, and the lesion is *detected* when that merged prediction has
  IoU > ``iou_threshold`` (default 0.1) with it -- a tumor predicted in fragments still counts.
- ``detection="pairwise"`` (attnprobe's earlier rule): every reference component is a lesion
  (none dropped), and a lesion is detected when one single kept predicted component has
  IoU > ``iou_threshold`` with it.
- Case detection (``case_detection``): ``"largest"`` (default) -- the case is detected when its
  largest reference lesion, the primary tumor, is detected (fragments and nodes do not decide);
  ``"any"`` -- any lesion detected; ``"all"`` -- every lesion detected. A case without a reference
  lesion is never "detected" and is left out of the detection rate.
- ``iou``: the IoU of the primary (largest) reference lesion under the detection rule (merged
  fragments for ``"lits"``, the best single component for ``"pairwise"``), i.e. the number
  compared with the threshold; NaN without a reference lesion.
- Dice, HD95 and surface Dice compare prediction and reference masks, either on matched lesions
  (``scope="matched"``, default as the paper: the predicted components that detect a lesion --
  for ``"lits"`` the fragments merged for it -- vs the detected lesions; all three are NaN when
  nothing was detected, so a missed case counts only against detection) or whole-volume
  (``scope="volume"``: cleaned prediction vs reference, the cleaned one under ``"lits"``).
- Surface distances (:mod:`attnprobe.train.surface`): ``surface="surfel"`` (default, as the
  paper) weighs area elements of the marching-cubes surface (DeepMind ``surface-distance``);
  ``surface="voxel"`` weighs surface voxels equally (MONAI's metrics).
- HD95: the larger of the two directed 95th percentiles of surface distances.
- Surface Dice at tolerance tau (Nikolov et al. 2021): the share of both surfaces (area, or
  voxels for ``"voxel"``) lying within tau mm (inclusive) of the other surface.
- Empty masks: both empty -> Dice 1, surface Dice 1, HD95 NaN; exactly one empty -> Dice 0,
  surface Dice 0, HD95 NaN. ``hd95_defined`` says whether HD95 is a number; means skip NaN.
- Summaries (:func:`summarize`) carry percentile bootstrap 95 % intervals over cases
  (:mod:`attnprobe.train.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from attnprobe.data.arrays import check_spacing, volume_3d
from attnprobe.errors import ConfigError, DataError, ShapeError
from attnprobe.train.surface import SurfaceMethod, check_surface, hd_and_surface_dice, voxel_distances

Connectivity = Literal[6, 18, 26]
Scope = Literal["matched", "volume"]
CaseDetection = Literal["largest", "any", "all"]
Detection = Literal["lits", "pairwise"]
DETECTION_RULES: tuple[str, ...] = ("lits", "pairwise")
SCOPES: tuple[str, ...] = ("matched", "volume")

# kept for callers of the earlier name: voxel-centre surface distances (``surface="voxel"``)
surface_distances = voxel_distances


@dataclass(frozen=True)
class CaseResult:
    """Metrics of one case (see the module docstring for definitions).

    Attributes
    ----------
    detected
        Whether the case's tumor was detected (per ``case_detection``).
    iou
        IoU of the primary reference lesion under the detection rule.
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
                          fix="pass connectivity=26 (the default)")
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


def _check_options(*, scope: str, case_detection: str, detection: str, surface: str, iou_threshold: float,
                   tolerance_mm: float, percentile: float) -> None:
    if scope not in SCOPES:
        raise ConfigError("Unknown scope.", expected="matched or volume", got=repr(scope),
                          fix='pass scope="matched" (per matched lesion, the paper) or "volume"')
    if case_detection not in ("largest", "any", "all"):
        raise ConfigError("Unknown case_detection.", expected="largest, any or all", got=repr(case_detection),
                          fix='pass case_detection="largest"')
    if detection not in DETECTION_RULES:
        raise ConfigError("Unknown detection rule.", expected="lits or pairwise", got=repr(detection),
                          fix='pass detection="lits" (merged fragments, the paper) or "pairwise"')
    check_surface(surface)
    if not 0.0 <= iou_threshold < 1.0 or tolerance_mm < 0 or not 0.0 <= percentile <= 100.0:
        raise ConfigError("Bad metric option.", expected="0 <= iou_threshold < 1, tolerance_mm >= 0, 0 <= percentile <= 100",
                          got=f"{iou_threshold}, {tolerance_mm}, {percentile}", fix="use the defaults 0.1, 2.0, 95")


def _overlap_metrics(pred: np.ndarray, ref: np.ndarray, spacing: np.ndarray, *, tolerance_mm: float,
                     percentile: float, surface: SurfaceMethod) -> tuple[float, float, float]:
    """Dice, HD95, surface Dice with the documented empty-mask conventions."""
    n_p, n_r = int(pred.sum()), int(ref.sum())
    if n_p == 0 and n_r == 0:
        return 1.0, math.nan, 1.0
    if n_p == 0 or n_r == 0:
        return 0.0, math.nan, 0.0
    dice = 2.0 * int(np.logical_and(pred, ref).sum()) / (n_p + n_r)
    hd, sdice = hd_and_surface_dice(pred, ref, spacing, tolerance_mm=tolerance_mm, percentile=percentile,
                                    surface=surface)
    return dice, hd, sdice


@dataclass(frozen=True)
class _Matching:
    """Per reference lesion: its IoU under the rule, whether it is found, and the components that match it."""

    lesion_iou: np.ndarray  # (n_ref,) float
    found: np.ndarray  # (n_ref,) bool
    matched: np.ndarray  # (n_ref, n_pred) bool: component j counts for lesion i


def _contingency(ref_cc: np.ndarray, n_ref: int, pred_cc: np.ndarray, n_pred: int) -> np.ndarray:
    """Voxel counts of (reference lesion, predicted component); row/column 0 = background."""
    pair = ref_cc.astype(np.int64).ravel() * (n_pred + 1) + pred_cc.ravel()
    return np.bincount(pair, minlength=(n_ref + 1) * (n_pred + 1)).reshape(n_ref + 1, n_pred + 1)


def _match(table: np.ndarray, *, detection: Detection, iou_threshold: float) -> _Matching:
    inter = table[1:, 1:].astype(np.float64)
    ref_size = table[1:, :].sum(1).astype(np.float64)
    pred_size = table[:, 1:].sum(0).astype(np.float64)
    if detection == "pairwise":
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (ref_size[:, None] + pred_size[None, :] - inter)
        hits = iou > iou_threshold
        best = iou.max(1) if iou.shape[1] else np.zeros(len(ref_size))
        return _Matching(lesion_iou=best, found=hits.any(1), matched=hits)
    # LiTS: every fragment touching the lesion joins one merged prediction for that lesion
    touching = inter > 0
    merged_inter = inter.sum(1)  # voxels of the lesion covered by the cleaned prediction
    merged_size = (touching * pred_size[None, :]).sum(1)
    merged_iou = merged_inter / (ref_size + merged_size - merged_inter)
    found = merged_iou > iou_threshold
    return _Matching(lesion_iou=merged_iou, found=found, matched=touching & found[:, None])


#: The definitions :func:`evaluate_case` uses by default, as ``summary.json`` records them
#: (``attnprobe evaluate --compare`` pairs only runs scored alike).
DEFAULT_DEFINITIONS: dict[str, Any] = {"scope": "matched", "detection": "lits", "surface": "surfel",
                                       "min_component_voxels": 10, "iou_threshold": 0.1, "tolerance_mm": 2.0}


def check_label_map(pred: Any, ref: Any, *, case: str = "", what: str = "prediction") -> None:
    """Refuse a prediction that is not a label map of the reference's classes.

    A segmentation holds integer class values, each one the reference uses (0 = background,
    1 = tumor for a binary label). An intensity image given by mistake (``--pred`` pointing at
    the images) has fractional or out-of-range values and would score near 0 without a word.

    Raises
    ------
    DataError
        Non-finite or non-integer values, or classes the reference does not have.
    """
    p = np.asarray(pred.detach().cpu().numpy() if hasattr(pred, "detach") else pred)
    r = np.asarray(ref.detach().cpu().numpy() if hasattr(ref, "detach") else ref)
    label = f" of case {case!r}" if case else ""
    if np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.complexfloating):
        finite = np.isfinite(p)
        if not finite.all():
            raise DataError(f"the {what}{label} is not a label map", expected="integer class values",
                            got=f"{int((~finite).sum())} NaN/inf values",
                            fix="pass segmentations (label maps), not images or probabilities")
        frac = p != np.round(p)
        if frac.any():
            sample = float(p[frac].flat[0])
            raise DataError(f"the {what}{label} is not a label map", expected="integer class values like 0 and 1",
                            got=f"{int(frac.sum())} fractional values (e.g. {sample:g}), range "
                                f"{float(p.min()):g}..{float(p.max()):g}",
                            fix="pass segmentations (label maps), not images or probabilities")
    classes = np.unique(p)
    allowed = set(np.unique(r).astype(np.int64).tolist()) | {0}
    if allowed == {0}:
        allowed = {0, 1}  # an empty reference: the prediction may still be binary
    extra = sorted(int(c) for c in classes if int(c) not in allowed)
    if extra:
        raise DataError(f"the {what}{label} has classes its reference does not have",
                        expected=f"classes among {sorted(allowed)}",
                        got=f"classes {extra[:5]}{' ...' if len(extra) > 5 else ''} ({len(classes)} distinct values)",
                        fix="pass segmentations with the label's classes, not images or probabilities")


def evaluate_case(pred: Any, ref: Any, *, spacing: Sequence[float], case: str = "",
                  min_component_voxels: int = 10, iou_threshold: float = 0.1, tolerance_mm: float = 2.0,
                  percentile: float = 95.0, scope: Scope = "matched", case_detection: CaseDetection = "largest",
                  connectivity: Connectivity = 26, detection: Detection = "lits",
                  surface: SurfaceMethod = "surfel") -> CaseResult:
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
        Components with at most this many voxels are dropped: predicted ones always, reference
        ones under ``detection="lits"``.
    iou_threshold
        A lesion is detected with IoU strictly above this.
    tolerance_mm
        Surface Dice tolerance.
    percentile
        Hausdorff percentile (95 for HD95).
    scope
        ``"matched"`` (default, the paper: matched lesions only) or ``"volume"`` (whole volume).
    case_detection
        ``"largest"``, ``"any"`` or ``"all"``.
    connectivity
        6, 18 or 26.
    detection
        ``"lits"`` (default, the paper: small reference components dropped, fragments touching a
        lesion merged before the IoU test) or ``"pairwise"`` (one component at a time, all
        reference components kept).
    surface
        ``"surfel"`` (default, the paper: area-weighted surface elements) or ``"voxel"``
        (surface voxels, as MONAI).

    Returns
    -------
    CaseResult

    Raises
    ------
    ConfigError
        An unknown option value; ShapeError when the masks' shapes differ.
    """
    p = _as_mask(pred, "prediction")
    r = _as_mask(ref, "reference")
    if p.shape != r.shape:
        raise ShapeError("Prediction and reference shapes differ.", expected=f"prediction shape {r.shape}",
                         got=str(p.shape), fix="resample the prediction to the reference grid")
    sp = check_spacing(spacing, example="(1.0, 1.0, 3.0)")
    _check_options(scope=scope, case_detection=case_detection, detection=detection, surface=surface,
                   iou_threshold=iou_threshold, tolerance_mm=tolerance_mm, percentile=percentile)

    pred_cc, n_pred = remove_small_components(p, min_component_voxels=min_component_voxels,
                                              connectivity=connectivity)
    if detection == "lits":
        ref_cc, n_ref = remove_small_components(r, min_component_voxels=min_component_voxels,
                                                connectivity=connectivity)
    else:
        ref_cc, n_ref = ndimage.label(r, structure=_structure(connectivity))
    table = _contingency(ref_cc, n_ref, pred_cc, n_pred)
    m = _match(table, detection=detection, iou_threshold=iou_threshold)

    if n_ref == 0:
        detected, primary_iou = False, math.nan
    else:
        primary = int(np.argmax(table[1:, :].sum(1)))  # first on ties: the lowest label
        primary_iou = float(m.lesion_iou[primary])
        detected = bool({"largest": m.found[primary], "any": m.found.any(), "all": m.found.all()}[case_detection])

    metric: dict[str, Any] = {"tolerance_mm": tolerance_mm, "percentile": percentile, "surface": surface}
    if scope == "volume":
        dice, hd, sdice = _overlap_metrics(pred_cc > 0, ref_cc > 0, sp, **metric)
    elif m.found.any():
        comps = np.flatnonzero(m.matched.any(0)) + 1
        lesions = np.flatnonzero(m.found) + 1
        dice, hd, sdice = _overlap_metrics(np.isin(pred_cc, comps), np.isin(ref_cc, lesions), sp, **metric)
    else:
        dice, hd, sdice = math.nan, math.nan, math.nan

    return CaseResult(detected=detected, iou=primary_iou, dice=float(dice), hd95=float(hd), surface_dice=float(sdice),
                      n_pred_components=int(n_pred), n_ref_lesions=int(n_ref),
                      n_detected_lesions=int(m.found.sum()), hd95_defined=not math.isnan(hd), case=str(case))


def _mean(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def summarize(results: Sequence[CaseResult], *, n_resamples: int = 2000, confidence: float = 0.95,
              seed: int = 0) -> dict[str, float | int]:
    """Summary over cases, with percentile bootstrap intervals.

    Parameters
    ----------
    results
        Per-case results.
    n_resamples
        Bootstrap resamples of the cases (with replacement); 0 leaves the intervals out.
    confidence
        Interval coverage (0.95 for 95 % intervals).
    seed
        Seed of the resampling: the same results give the same intervals.

    Returns
    -------
    dict
        ``n_cases``; ``n_with_reference`` (cases with a reference lesion); ``n_detected``;
        ``detection_rate`` = n_detected / n_with_reference (NaN when 0); ``n_lesions``,
        ``n_detected_lesions``, ``lesion_detection_rate``; ``dice_mean``, ``hd95_mean``,
        ``surface_dice_mean`` (means over the cases where the value is a number);
        ``n_hd95_defined``; with ``n_resamples > 0`` also ``detection_rate_ci_low/high``,
        ``dice_ci_low/high``, ``hd95_ci_low/high``, ``surface_dice_ci_low/high``,
        ``ci_level``, ``n_resamples``, ``bootstrap_seed``
        (:func:`attnprobe.train.stats.bootstrap_ci`; NaN when no case has the value).
    """
    from attnprobe.train.stats import bootstrap_ci

    res = list(results)
    n_ref_cases = sum(r.has_reference for r in res)
    n_det = sum(r.detected for r in res)
    n_les = sum(r.n_ref_lesions for r in res)
    n_det_les = sum(r.n_detected_lesions for r in res)
    out: dict[str, float | int] = {
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
    if n_resamples <= 0:
        return out
    per_case = {"detection_rate": [float(r.detected) for r in res if r.has_reference],
                "dice": [r.dice for r in res], "hd95": [r.hd95 for r in res],
                "surface_dice": [r.surface_dice for r in res]}
    for name, values in per_case.items():
        low, high = bootstrap_ci(values, n_resamples=n_resamples, confidence=confidence, seed=seed)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    out.update(ci_level=confidence, n_resamples=int(n_resamples), bootstrap_seed=int(seed))
    return out


def results_table(results: Sequence[CaseResult]) -> Any:
    """Per-case results as a pandas DataFrame (one row per case, the CaseResult fields)."""
    import pandas as pd

    return pd.DataFrame([asdict(r) for r in results])
