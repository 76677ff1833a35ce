"""Axial extent of a dataset, token efficiency of candidate crops, and a crop recommendation.

docs/conventions.md "Anisotropic cropping": a crop whose axial size matches the data wastes fewer tokens and
windows on padding. This module measures both sides of that trade-off.

Extent
    Each case is prepared with ``roi="full"`` (RAS, 1 mm by default, intensity to [0, 1],
    cropped to the foreground). Its extent on each axis is the size of the kept (foreground)
    region in mm: ``box.kept_shape * spacing``. The axial axis is ``z``.

Token efficiency of a crop
    The case is fitted to the candidate crop exactly as :func:`~attnprobe.data.preprocess.prepare_case`
    fits it to a model ROI (cropped around the label, or padded with ``pad_mode``), and its
    real-voxel mask is pushed through the architecture's own token geometry
    (:func:`attnprobe.capture.geometry.token_kinds`). Per block: ``efficiency`` = real tokens /
    all tokens, window padding included; ``empty_window_fraction`` = windows holding no real
    token / all windows; ``input_pad_fraction`` and ``window_pad_fraction`` split the rest by
    padding kind. A stage's value is the mean over its blocks (token counts do not change
    between a stage's blocks; empty windows do, because shifted blocks roll the grid).
    Dataset values are means over cases.

Recommendation (:func:`recommend_crop`)
    ``rule="coverage"`` (default): in-plane as the pretrained ROI; axial = the smallest multiple
    of 32 voxels whose length covers the ``coverage`` quantile (default 0.9) of the axial extents,
    at least 32 and at most the pretrained cube's depth. ``rule="efficiency"``: among the
    candidate crops whose axial length covers that quantile, the one with the highest mean
    stage-0 efficiency (ties: the smaller crop); when no candidate covers it, the candidate
    with the largest axial size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from attnprobe.data.preprocess import PadMode, PreparedCase, PreprocessConfig, prepare_array, validate_roi
from attnprobe.errors import ConfigError, DataError
from attnprobe.tokens import INPUT_PAD, REAL, WINDOW_PAD

__all__ = [
    "Rule",
    "CropRecommendation",
    "roi_name",
    "default_candidates",
    "case_extent",
    "fit_mask",
    "token_efficiency",
    "extent_and_efficiency",
    "summarize_extents",
    "summarize_efficiency",
    "recommend_crop",
    "CropStudy",
    "study_crops",
]

Rule = Literal["coverage", "efficiency"]
Roi3 = tuple[int, int, int]
AXES = ("x", "y", "z")


def roi_name(roi: Sequence[int]) -> str:
    """``(96, 96, 64)`` -> ``"96x96x64"``."""
    return "x".join(str(int(v)) for v in roi)


def _check_roi(roi: Sequence[int]) -> Roi3:
    checked = validate_roi(tuple(int(v) for v in roi), what="candidate crop")
    if checked == "full":  # pragma: no cover - tuples never validate to "full"
        raise ConfigError("candidate crop must be a size", expected="three sizes", got="'full'")
    return checked


def default_candidates(arch: str, model_preset: str | None = None) -> list[Roi3]:
    """``(s, s, z)`` for every multiple of 32 ``z`` up to ``s``, the pretrained cube's side, largest first."""
    from attnprobe.train.presets import pretrained_roi

    side = pretrained_roi(arch, model_preset)[0]
    return [(side, side, z) for z in range(side // 32 * 32, 31, -32)]


def case_extent(case: PreparedCase) -> dict[str, float | int | str]:
    """Extent of the kept (foreground) region of a case prepared with ``roi="full"``.

    Returns
    -------
    dict
        ``case``, ``extent_x_mm``, ``extent_y_mm``, ``extent_z_mm`` and the voxel counts
        ``size_x``, ``size_y``, ``size_z`` at the prepared spacing.
    """
    kept = case.box.kept_shape
    row: dict[str, float | int | str] = {"case": case.case_id}
    for axis, size, spacing in zip(AXES, kept, case.spacing):
        row[f"extent_{axis}_mm"] = float(size) * float(spacing)
    for axis, size in zip(AXES, kept):
        row[f"size_{axis}"] = int(size)
    return row


def fit_mask(case: PreparedCase, roi: Sequence[int], *, pad_mode: PadMode | None = None) -> torch.Tensor:
    """Real-voxel mask of ``case`` fitted to ``roi`` the way preprocessing fits a model ROI.

    ``case`` must come from ``roi="full"`` preprocessing. Its kept region (with image and label)
    goes through :func:`~attnprobe.data.preprocess.prepare_array` with no resampling, no
    foreground crop and an identity intensity window, so the crop placement is the library's
    own; the case's real-voxel mask is then carried into the result through the returned
    crop/pad box (exact, voxel for voxel).

    Returns
    -------
    torch.Tensor
        bool ``(1, x, y, z)`` of shape ``roi``.
    """
    roi = _check_roi(roi)
    kept = case.box.kept_slices
    image = case.image[(0, *kept)]
    mask = case.mask[(0, *kept)]
    label = case.label[(0, *kept)] if case.label is not None else None
    config = PreprocessConfig(roi=roi, pad_mode=pad_mode or case.config.pad_mode, spacing=None,
                              intensity="fixed", a_min=0.0, a_max=1.0, crop_foreground=False)
    fitted = prepare_array(image, label=label, spacing=case.spacing, case_id=case.case_id, config=config)
    src = tuple(slice(a, b) for a, b in zip(fitted.box.crop_start, fitted.box.crop_stop))
    out = torch.zeros((1, *roi), dtype=torch.bool)
    out[(0, *fitted.box.kept_slices)] = mask[src]
    return out


def token_efficiency(model: nn.Module, real_mask: torch.Tensor) -> pd.DataFrame:
    """Token and window usage per stage for one real-voxel mask.

    Parameters
    ----------
    model
        A model of a registered architecture (only its geometry is used).
    real_mask
        bool ``(1, x, y, z)`` or ``(x, y, z)``; the spatial shape is the model input.

    Returns
    -------
    pandas.DataFrame
        One row per stage: ``stage``, ``n_blocks``, ``real_tokens``, ``total_tokens``
        (window padding included), ``efficiency``, ``input_pad_fraction``,
        ``window_pad_fraction``, ``total_windows``, ``empty_windows`` (mean over blocks),
        ``empty_window_fraction``.
    """
    from attnprobe.capture.geometry import token_kinds

    mask = real_mask if real_mask.ndim == 5 else (real_mask[None] if real_mask.ndim == 4 else real_mask[None, None])
    geometry, kinds = token_kinds(model, mask.bool())
    per_block = []
    for name, k in kinds.items():
        k = k[0]  # (window, token)
        real = k == REAL
        per_block.append({
            "stage": geometry[name].stage,
            "real_tokens": int(real.sum()),
            "total_tokens": int(k.numel()),
            "input_pad": int((k == INPUT_PAD).sum()),
            "window_pad": int((k == WINDOW_PAD).sum()),
            "total_windows": int(k.shape[0]),
            "empty_windows": int((~real.any(dim=1)).sum()),
        })
    blocks = pd.DataFrame(per_block)
    rows = []
    for stage, grp in blocks.groupby("stage", sort=True):
        total = grp["total_tokens"].to_numpy(dtype=float)
        rows.append({
            "stage": int(stage),
            "n_blocks": len(grp),
            "real_tokens": float(grp["real_tokens"].mean()),
            "total_tokens": float(total.mean()),
            "efficiency": float((grp["real_tokens"] / total).mean()),
            "input_pad_fraction": float((grp["input_pad"] / total).mean()),
            "window_pad_fraction": float((grp["window_pad"] / total).mean()),
            "total_windows": float(grp["total_windows"].mean()),
            "empty_windows": float(grp["empty_windows"].mean()),
            "empty_window_fraction": float((grp["empty_windows"] / grp["total_windows"]).mean()),
        })
    return pd.DataFrame(rows)


def _runnable(model: nn.Module, crops: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """The candidate crops the model's geometry accepts; the others are named in a warning."""
    import warnings

    from attnprobe.errors import ShapeError
    from attnprobe.models.registry import adapter_for, model_config

    adapter, kept, refused = adapter_for(model), [], []
    for crop in crops:
        try:
            adapter.geometry(model, crop)
            kept.append(crop)
        except ShapeError:
            refused.append(roi_name(crop))
    if refused:
        warnings.warn(f"left out crop(s) {', '.join(refused)}: the model's code (compat "
                      f"{model_config(model).get('compat')}) cannot run them", UserWarning, stacklevel=3)
    if not kept:
        raise ConfigError("no candidate crop can run in this compat mode", expected="a crop the model accepts",
                          got=", ".join(refused), fix="pick other --candidates, or --compat current")
    return kept


def extent_and_efficiency(
    cases: Iterable[PreparedCase],
    candidates: Sequence[Sequence[int]],
    *,
    arch: str,
    model_preset: str | None = None,
    pad_mode: PadMode | None = None,
    on_case: Callable[[PreparedCase], None] | None = None,
    compat: str = "current",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Extents and per-case token efficiency of every candidate crop, one pass over ``cases``.

    Parameters
    ----------
    cases
        Cases prepared with ``roi="full"`` (consumed once, so a lazy iterator keeps memory to
        one case).
    candidates
        Crop sizes ``(x, y, z)``, each divisible by 32.
    arch, model_preset
        Architecture whose geometry is used (a model is built with random weights).
    pad_mode
        Padding placement when fitting; default the cases' own.
    on_case
        Called after each case (progress).
    compat
        Semantics of the model the crops are for (``docs/compat.md``): ``"original"`` counts
        tokens as the published checkpoints' code merges them, and candidates that code cannot
        run (SMIT's swapped padding) are left out with a warning.

    Returns
    -------
    (extents, efficiency)
        ``extents``: one row per case (see :func:`case_extent`). ``efficiency``: one row per
        (case, candidate, stage) with the columns of :func:`token_efficiency` plus ``case``,
        ``candidate``, ``roi_x``, ``roi_y``, ``roi_z`` and ``fits_axially`` (the case's axial
        extent fits in the crop).
    """
    from attnprobe.models.registry import build_model

    crops = [_check_roi(c) for c in candidates]
    if not crops:
        raise ConfigError("no candidate crops", expected="at least one crop like 96x96x64", got="none")
    model = build_model(arch, preset=model_preset, compat=compat)
    crops = _runnable(model, crops)
    extents, effs = [], []
    for case in cases:
        if case.config.roi != "full":
            raise ConfigError("extent needs whole volumes", expected="cases prepared with roi='full'",
                              got=f"roi={case.config.roi}")
        ext = case_extent(case)
        extents.append(ext)
        for crop in crops:
            frame = token_efficiency(model, fit_mask(case, crop, pad_mode=pad_mode))
            frame.insert(0, "case", case.case_id)
            frame.insert(1, "candidate", roi_name(crop))
            for axis, size in zip(AXES, crop):
                frame[f"roi_{axis}"] = size
            frame["fits_axially"] = bool(float(ext["size_z"]) <= crop[2])
            effs.append(frame)
        if on_case is not None:
            on_case(case)
    if not extents:
        raise DataError("no cases to measure", expected="at least one case", got="an empty data source")
    return pd.DataFrame(extents), pd.concat(effs, ignore_index=True)


def summarize_extents(extents: pd.DataFrame) -> pd.DataFrame:
    """Distribution of the extents per axis: n, mean, std, min, p10, p50, p90, max (mm)."""
    rows = []
    for axis in AXES:
        v = extents[f"extent_{axis}_mm"].to_numpy(dtype=float)
        rows.append({"axis": axis, "n": len(v), "mean": float(v.mean()),
                     "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "min": float(v.min()),
                     "p10": float(np.quantile(v, 0.1)), "p50": float(np.quantile(v, 0.5)),
                     "p90": float(np.quantile(v, 0.9)), "max": float(v.max())})
    return pd.DataFrame(rows)


def summarize_efficiency(efficiency: pd.DataFrame) -> pd.DataFrame:
    """Means over cases per (candidate, stage), with the fraction of cases that fit axially."""
    keys = ["candidate", "roi_x", "roi_y", "roi_z", "stage"]
    grouped = efficiency.groupby(keys, sort=False)
    out = grouped.agg(
        n_cases=("case", "nunique"),
        efficiency_mean=("efficiency", "mean"),
        efficiency_std=("efficiency", "std"),
        empty_window_fraction_mean=("empty_window_fraction", "mean"),
        input_pad_fraction_mean=("input_pad_fraction", "mean"),
        window_pad_fraction_mean=("window_pad_fraction", "mean"),
        axial_coverage=("fits_axially", "mean"),
    ).reset_index()
    out["efficiency_std"] = out["efficiency_std"].fillna(0.0)
    return out


@dataclass(frozen=True)
class CropRecommendation:
    """A recommended crop and why.

    Attributes
    ----------
    roi
        Crop ``(x, y, z)`` in voxels.
    rule
        ``"coverage"`` or ``"efficiency"``.
    coverage
        Quantile of the axial extents the crop must cover.
    axial_quantile_mm
        That quantile, in mm.
    stage0_efficiency
        Mean stage-0 efficiency of the crop when it was among the measured candidates.
    reason
        One sentence for the user.
    """

    roi: Roi3
    rule: Rule
    coverage: float
    axial_quantile_mm: float
    stage0_efficiency: float | None
    reason: str


def recommend_crop(
    extents: pd.DataFrame,
    efficiency: pd.DataFrame | None = None,
    *,
    arch: str,
    model_preset: str | None = None,
    coverage: float = 0.9,
    rule: Rule = "coverage",
    spacing_z: float = 1.0,
) -> CropRecommendation:
    """Recommend a crop from the extents (and, for ``rule="efficiency"``, the efficiency table).

    Parameters
    ----------
    extents
        From :func:`extent_and_efficiency`.
    efficiency
        Per-case efficiency from :func:`extent_and_efficiency` (needed for ``"efficiency"``,
        and used to report the chosen crop's stage-0 efficiency).
    arch, model_preset
        Architecture; its pretrained cube gives the in-plane size and the largest depth.
    coverage
        Quantile in (0, 1] of the axial extents to cover.
    rule
        ``"coverage"`` or ``"efficiency"`` (module docstring).
    spacing_z
        Axial voxel size (mm) of the crop, the preprocessing spacing.
    """
    from attnprobe.train.presets import pretrained_roi

    if not 0.0 < coverage <= 1.0:
        raise ConfigError("bad coverage", expected="a quantile in (0, 1], e.g. 0.9", got=repr(coverage))
    if rule not in ("coverage", "efficiency"):
        raise ConfigError("unknown rule", expected="'coverage' or 'efficiency'", got=repr(rule))
    if extents.empty:
        raise DataError("no extents to recommend from", expected="at least one case", got="an empty table")
    q_mm = float(np.quantile(extents["extent_z_mm"].to_numpy(dtype=float), coverage))
    cube = pretrained_roi(arch, model_preset)
    stage0 = None
    if efficiency is not None and not efficiency.empty:
        stage0 = efficiency[efficiency["stage"] == 0].groupby("candidate")["efficiency"].mean()
    pct = f"{coverage:.0%}"

    if rule == "coverage":
        need = math.ceil(q_mm / spacing_z - 1e-9)
        depth = min(max(32, math.ceil(need / 32) * 32), cube[2])
        roi = (cube[0], cube[1], depth)
        capped = " (capped at the pretrained depth)" if math.ceil(need / 32) * 32 > cube[2] else ""
        reason = (f"smallest multiple of 32 covering the {pct} quantile of axial extents ({q_mm:.1f} mm)"
                  f"{capped}; in-plane as the pretrained ROI")
        eff = float(stage0[roi_name(roi)]) if stage0 is not None and roi_name(roi) in stage0.index else None
        return CropRecommendation(roi, rule, coverage, q_mm, eff, reason)

    if stage0 is None or efficiency is None:
        raise ConfigError("rule='efficiency' needs the efficiency table", expected="efficiency=...", got="None")
    sizes = efficiency.drop_duplicates("candidate").set_index("candidate")[["roi_x", "roi_y", "roi_z"]]
    covering = [c for c in sizes.index if sizes.loc[c, "roi_z"] * spacing_z >= q_mm - 1e-9]
    if covering:
        # Highest efficiency first, then the fewest voxels.
        best = min(covering, key=lambda c: (-float(stage0[c]), int(np.prod(sizes.loc[c].to_numpy()))))
        reason = (f"highest mean stage-0 token efficiency ({float(stage0[best]):.3f}) among the candidates "
                  f"covering the {pct} quantile of axial extents ({q_mm:.1f} mm)")
    else:
        best = max(sizes.index, key=lambda c: (int(sizes.loc[c, "roi_z"]), float(stage0[c])))
        reason = (f"no candidate covers the {pct} quantile of axial extents ({q_mm:.1f} mm); "
                  "the candidate with the largest axial size")
    best_roi = tuple(int(v) for v in sizes.loc[best].to_numpy())
    return CropRecommendation(best_roi, rule, coverage, q_mm, float(stage0[best]), reason)  # type: ignore[arg-type]


@dataclass
class CropStudy:
    """Extents, token efficiency and the recommended crop of one architecture on one dataset.

    Attributes
    ----------
    extents
        One row per case (:func:`case_extent`).
    per_case
        One row per (case, candidate, stage) (:func:`extent_and_efficiency`).
    efficiency
        Means over cases per (candidate, stage) (:func:`summarize_efficiency`).
    recommendation
        :func:`recommend_crop` of the extents and ``per_case``.
    arch, model_preset
        The architecture whose token geometry was measured.
    """

    extents: pd.DataFrame
    per_case: pd.DataFrame
    efficiency: pd.DataFrame
    recommendation: CropRecommendation
    arch: str
    model_preset: str | None = None

    def record(self, *, manifest: Any = None, label: str | None = None) -> Any:
        """The :class:`~attnprobe.results.ExtentRun` of the study (``extent.csv``, ``efficiency.csv``)."""
        from attnprobe.results import ExtentRun

        return ExtentRun(extents=self.extents, efficiency=self.efficiency, arch=self.arch,
                         model_preset=self.model_preset, manifest=manifest, label=label)


def study_crops(
    cases: Iterable[PreparedCase],
    candidates: Sequence[Sequence[int]] | None = None,
    *,
    arch: str,
    model_preset: str | None = None,
    pad_mode: PadMode | None = None,
    compat: str = "current",
    coverage: float = 0.9,
    rule: Rule = "coverage",
    spacing_z: float = 1.0,
    on_case: Callable[[PreparedCase], None] | None = None,
) -> CropStudy:
    """Measure extents and crop efficiency in one pass over ``cases`` and recommend a crop.

    ``candidates`` default to :func:`default_candidates`; the other arguments are those of
    :func:`extent_and_efficiency` and :func:`recommend_crop`.
    """
    crops = list(candidates) if candidates is not None else default_candidates(arch, model_preset)
    extents, per_case = extent_and_efficiency(cases, crops, arch=arch, model_preset=model_preset, pad_mode=pad_mode,
                                              compat=compat, on_case=on_case)
    rec = recommend_crop(extents, per_case, arch=arch, model_preset=model_preset, coverage=coverage, rule=rule,
                         spacing_z=spacing_z)
    return CropStudy(extents=extents, per_case=per_case, efficiency=summarize_efficiency(per_case),
                     recommendation=rec, arch=arch, model_preset=model_preset)
