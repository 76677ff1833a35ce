"""Per-case tumor appearance statistics and clustering of cases (docs/conventions.md).

This is the analysis that motivates tumor-aware intensity augmentation: tumors differ in
brightness, texture and boundary sharpness between cases, and cluster into a few appearances.

Definitions (all on the image as given, unless ``normalize="percentile"``)
-------------------------------------------------------------------------
- ``mean``: mean intensity over tumor voxels (``label == tumor_label``).
- ``cv``: coefficient of variation, ``std / |mean|`` over tumor voxels (population std);
  NaN when ``|mean|`` is ~0 (e.g. HU near water: shift CT by +1024 first).
- ``shell_mean``: mean intensity over the *background shell*, the voxels outside the tumor whose
  centre lies within ``shell_mm`` (default 5 mm) of the nearest tumor voxel centre (Euclidean
  distance transform with the voxel spacing), restricted to ``mask`` when one is given
  (e.g. the body, to keep air and padding out).
- ``contrast``: tumor-to-background contrast of ``mean`` against ``shell_mean``:
  ``"weber"`` (default) ``(mean - shell_mean) / |shell_mean|``; ``"michelson"``
  ``(mean - shell_mean) / (|mean| + |shell_mean|)``; ``"difference"`` ``mean - shell_mean``.
- ``boundary_gradient``: mean gradient magnitude (intensity per mm; central differences with
  the spacing, ``numpy.gradient``) over the one-voxel bands on both sides of the tumor
  surface: tumor voxels with a face neighbour outside, and outside voxels with a face
  neighbour inside. The array border does not count as surface.
- ``volume_mm3``: tumor volume.
- radial profile: mean intensity against signed distance to the tumor surface in mm,
  negative inside and positive outside, binned from ``-radial_mm`` to ``+radial_mm``
  (default ±15 mm, 1.5 mm bins). The distance of a voxel is the centre-to-centre distance to
  the nearest voxel of the other side (EDT with spacing), so the first voxel on either side of
  the surface sits at ±one spacing; empty bins (e.g. deep inside a small tumor) are NaN.

Clustering: features are standardised (zero mean, unit variance across cases), k-means is run
for every k in ``k_range`` that is below the number of cases, and the k with the highest
silhouette score wins (the smaller k on ties). Cases with a NaN feature are left out of the
clustering and get cluster ``-1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import ndimage

from attnprobe.data.arrays import check_spacing, volume_3d
from attnprobe.errors import ConfigError, DataError, ShapeError

ContrastKind = Literal["weber", "michelson", "difference"]
Normalize = Literal["none", "percentile"]

SCALAR_FEATURES: tuple[str, ...] = ("mean", "cv", "shell_mean", "contrast", "boundary_gradient", "volume_mm3")
CLUSTER_FEATURES: tuple[str, ...] = ("mean", "cv", "contrast", "boundary_gradient")


@dataclass(frozen=True, eq=False)
class TumorStats:
    """Appearance statistics of one case's tumor.

    Attributes
    ----------
    case
        Case identifier.
    mean, cv, shell_mean, contrast, boundary_gradient, volume_mm3
        Scalar features (see the module docstring for definitions).
    n_voxels
        Number of tumor voxels.
    radial_distance_mm
        ``(bin,)`` bin centres of the radial profile, mm (negative inside).
    radial_profile
        ``(bin,)`` mean intensity per bin (NaN where a bin holds no voxel).
    """

    case: str
    mean: float
    cv: float
    shell_mean: float
    contrast: float
    boundary_gradient: float
    volume_mm3: float
    n_voxels: int
    radial_distance_mm: np.ndarray
    radial_profile: np.ndarray

    def scalars(self) -> dict[str, float]:
        """The scalar features as a dict (keys :data:`SCALAR_FEATURES`)."""
        return {f: float(getattr(self, f)) for f in SCALAR_FEATURES}


@dataclass(frozen=True, eq=False)
class ClusterResult:
    """k-means clustering of cases on standardised features.

    Attributes
    ----------
    k
        Chosen number of clusters.
    labels
        Cluster per case (index: case), ``-1`` for cases left out (NaN features).
    silhouette
        Silhouette score per tried k.
    features
        Feature columns used.
    centers
        ``(cluster, feature)`` cluster centres in the original feature units.
    """

    k: int
    labels: pd.Series
    silhouette: dict[int, float]
    features: tuple[str, ...]
    centers: pd.DataFrame


@dataclass(frozen=True, eq=False)
class TumorAnalysis:
    """Result of :func:`analyze_tumors`.

    Attributes
    ----------
    tidy
        Long table with columns ``case, feature, distance_mm, value``; scalar features have
        ``distance_mm`` NaN, radial-profile rows have ``feature == "radial_profile"``.
    wide
        One row per case: ``case``, the scalar features and ``cluster``.
    clustering
        The :class:`ClusterResult`.
    stats
        The per-case :class:`TumorStats`.
    """

    tidy: pd.DataFrame
    wide: pd.DataFrame
    clustering: ClusterResult
    stats: tuple[TumorStats, ...]


def _as_numpy(a: Any, name: str) -> np.ndarray:
    return volume_3d(a, name, fix=f"pass a single-channel 3D {name}")


def tumor_statistics(image: Any, label: Any, *, spacing: Sequence[float], case: str = "case",
                     tumor_label: int = 1, mask: Any | None = None, shell_mm: float = 5.0,
                     contrast: ContrastKind = "weber", radial_mm: float = 15.0, radial_bin_mm: float = 1.5,
                     normalize: Normalize = "none") -> TumorStats:
    """Compute the appearance statistics of one case's tumor.

    Parameters
    ----------
    image
        ``(x, y, z)`` intensities (numpy or torch; a leading singleton channel is dropped).
    label
        ``(x, y, z)`` label map; tumor voxels are ``label == tumor_label``.
    spacing
        Voxel size ``(x, y, z)`` in mm.
    case
        Case identifier stored on the result.
    tumor_label
        Label value of the tumor.
    mask
        Optional ``(x, y, z)`` boolean mask of voxels allowed in the shell and the outside part of
        the radial profile (e.g. the body or the real-voxel mask).
    shell_mm
        Background shell thickness for ``shell_mean`` / ``contrast``.
    contrast
        ``"weber"``, ``"michelson"`` or ``"difference"`` (see module docstring).
    radial_mm, radial_bin_mm
        Half range and bin width of the radial profile.
    normalize
        ``"none"``, or ``"percentile"``: first map the image's 0 and 99.5 percentiles to 0 and 1
        (as the preprocessing does), so cases from different scanners compare.

    Returns
    -------
    TumorStats
    """
    img = _as_numpy(image, "image").astype(np.float64)
    lab = _as_numpy(label, "label")
    sp = check_spacing(spacing)
    if img.shape != lab.shape:
        raise ShapeError("Image and label shapes differ.", expected=f"label shape {img.shape}",
                         got=str(lab.shape), fix="pass the label resampled to the image grid")
    if contrast not in ("weber", "michelson", "difference"):
        raise ConfigError("Unknown contrast definition.", expected="weber, michelson or difference",
                          got=repr(contrast), fix='pass contrast="weber"')
    if normalize not in ("none", "percentile"):
        raise ConfigError("Unknown normalisation.", expected="none or percentile", got=repr(normalize),
                          fix='pass normalize="none" or "percentile"')
    if shell_mm <= 0 or radial_mm <= 0 or radial_bin_mm <= 0:
        raise ConfigError("Distances must be positive.", expected="shell_mm, radial_mm, radial_bin_mm > 0",
                          got=f"{shell_mm}, {radial_mm}, {radial_bin_mm}", fix="pass positive lengths in mm")
    if not np.all(np.isfinite(img)):
        raise DataError("Image holds NaN or infinite values.", expected="finite intensities",
                        got=f"{int((~np.isfinite(img)).sum())} non-finite voxels", fix="clean the image first")
    tum = lab == tumor_label
    if not tum.any():
        raise DataError(f"Case {case!r} has no tumor voxels.", expected=f"some voxels with label {tumor_label}",
                        got=f"label values {np.unique(lab)[:8].tolist()}", fix="check tumor_label or drop the case")
    valid = np.ones_like(tum) if mask is None else _as_numpy(mask, "mask").astype(bool)
    if valid.shape != tum.shape:
        raise ShapeError("Mask shape differs from the image.", expected=str(tum.shape), got=str(valid.shape),
                         fix="pass a mask on the image grid")
    if normalize == "percentile":
        lo, hi = np.percentile(img, [0.0, 99.5])
        img = (img - lo) / (hi - lo if hi > lo else 1.0)

    # work in a crop around the tumor: everything below only looks within radial/shell range
    reach = max(radial_mm, shell_mm)
    pad = np.ceil(reach / sp).astype(int) + 2
    idx = np.argwhere(tum)
    lo_i = np.maximum(idx.min(0) - pad, 0)
    hi_i = np.minimum(idx.max(0) + pad + 1, tum.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo_i, hi_i, strict=True))
    img_c, tum_c, valid_c = img[crop], tum[crop], valid[crop]

    vals = img_c[tum_c]
    mean = float(vals.mean())
    cv = float(vals.std() / abs(mean)) if abs(mean) > 1e-12 else float("nan")

    d_out = ndimage.distance_transform_edt(~tum_c, sampling=sp)  # 0 inside the tumor
    d_in = ndimage.distance_transform_edt(tum_c, sampling=sp)  # 0 outside
    shell = (~tum_c) & (d_out <= shell_mm) & valid_c
    shell_mean = float(img_c[shell].mean()) if shell.any() else float("nan")
    if contrast == "weber":
        con = (mean - shell_mean) / abs(shell_mean) if abs(shell_mean) > 1e-12 else float("nan")
    elif contrast == "michelson":
        den = abs(mean) + abs(shell_mean)
        con = (mean - shell_mean) / den if den > 1e-12 else float("nan")
    else:
        con = mean - shell_mean

    face = ndimage.generate_binary_structure(3, 1)
    inner = tum_c & ~ndimage.binary_erosion(tum_c, structure=face, border_value=1)
    outer = ndimage.binary_dilation(tum_c, structure=face) & ~tum_c
    grads = np.gradient(img_c, *sp)
    gmag = np.sqrt(sum(g**2 for g in grads))
    band = inner | outer
    boundary_gradient = float(gmag[band].mean()) if band.any() else float("nan")

    n_bins = max(1, int(round(2 * radial_mm / radial_bin_mm)))
    edges = np.linspace(-radial_mm, radial_mm, n_bins + 1)
    signed = d_out - d_in
    use = (tum_c | valid_c) & (signed >= -radial_mm) & (signed <= radial_mm)
    which = np.clip(np.digitize(signed[use], edges) - 1, 0, n_bins - 1)
    sums = np.bincount(which, weights=img_c[use], minlength=n_bins)
    counts = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        profile = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    return TumorStats(case=str(case), mean=mean, cv=cv, shell_mean=shell_mean, contrast=float(con),
                      boundary_gradient=boundary_gradient, volume_mm3=float(tum.sum() * np.prod(sp)),
                      n_voxels=int(tum.sum()), radial_distance_mm=(edges[:-1] + edges[1:]) / 2.0,
                      radial_profile=profile)


def tumor_tables(stats: Sequence[TumorStats]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tidy and wide tables of per-case statistics.

    Returns
    -------
    tidy, wide
        ``tidy``: columns ``case, feature, distance_mm, value`` (scalar features with
        ``distance_mm`` NaN, then ``radial_profile`` rows); ``wide``: ``case`` + scalar features.
    """
    rows: list[dict[str, Any]] = []
    for s in stats:
        for f, v in s.scalars().items():
            rows.append({"case": s.case, "feature": f, "distance_mm": np.nan, "value": v})
        for d, v in zip(s.radial_distance_mm, s.radial_profile, strict=True):
            rows.append({"case": s.case, "feature": "radial_profile", "distance_mm": float(d), "value": float(v)})
    tidy = pd.DataFrame(rows, columns=["case", "feature", "distance_mm", "value"])
    wide = pd.DataFrame([{"case": s.case, **s.scalars()} for s in stats], columns=["case", *SCALAR_FEATURES])
    return tidy, wide


def cluster_cases(wide: pd.DataFrame, *, features: Sequence[str] = CLUSTER_FEATURES,
                  k_range: tuple[int, int] = (2, 6), seed: int = 0, n_init: int = 10) -> ClusterResult:
    """Cluster cases by k-means on standardised features, k chosen by silhouette.

    Parameters
    ----------
    wide
        One row per case with a ``case`` column and the feature columns.
    features
        Columns to cluster on.
    k_range
        ``(k_min, k_max)`` inclusive; k values ``>= n_cases`` are skipped (silhouette needs
        ``2 <= k <= n - 1``).
    seed
        k-means random state.
    n_init
        k-means restarts per k.

    Returns
    -------
    ClusterResult
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    feats = tuple(features)
    missing = [f for f in (*feats, "case") if f not in wide.columns]
    if missing:
        raise DataError("Feature table lacks columns.", expected=f"columns {['case', *feats]}",
                        got=f"missing {missing}", fix="pass the wide table from tumor_tables()")
    k_min, k_max = (int(v) for v in k_range)
    if not 2 <= k_min <= k_max:
        raise ConfigError("Bad k range.", expected="(k_min, k_max) with 2 <= k_min <= k_max",
                          got=repr(k_range), fix="pass e.g. k_range=(2, 6)")
    x = wide.loc[:, list(feats)].to_numpy(dtype=np.float64)
    ok = np.all(np.isfinite(x), axis=1)
    n = int(ok.sum())
    ks = [k for k in range(k_min, k_max + 1) if k <= n - 1]
    if not ks:
        raise DataError("Too few cases to cluster.", expected=f"at least {k_min + 1} cases with finite features",
                        got=f"{n} usable of {len(wide)}", fix="add cases or lower k_range")
    z = StandardScaler().fit_transform(x[ok])
    scores: dict[int, float] = {}
    fits: dict[int, np.ndarray] = {}
    for k in ks:
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(z)
        fits[k] = km.labels_
        # a degenerate fit (fewer distinct labels than 2) has no silhouette
        scores[k] = float(silhouette_score(z, km.labels_)) if len(set(km.labels_)) > 1 else float("-inf")
    best = max(ks, key=lambda k: (scores[k], -k))  # highest score, smaller k on ties
    labels = np.full(len(wide), -1, dtype=np.int64)
    labels[ok] = fits[best]
    series = pd.Series(labels, index=wide["case"].to_numpy(), name="cluster")
    centers = pd.DataFrame(x[ok], columns=list(feats)).groupby(fits[best]).mean()
    centers.index.name = "cluster"
    return ClusterResult(k=best, labels=series, silhouette=scores, features=feats, centers=centers)


def analyze_tumors(cases: Iterable[Any], *, features: Sequence[str] = CLUSTER_FEATURES,
                   k_range: tuple[int, int] = (2, 6), seed: int = 0, tumor_label: int = 1,
                   shell_mm: float = 5.0, contrast: ContrastKind = "weber", radial_mm: float = 15.0,
                   radial_bin_mm: float = 1.5, normalize: Normalize = "none") -> TumorAnalysis:
    """Statistics for every case, tidy and wide tables, and a k-means clustering of the cases.

    Parameters
    ----------
    cases
        Iterable of :class:`~attnprobe.data.phantoms.Phantom` (anything with ``image``,
        ``label``, ``spacing`` and ``case_id``) or of tuples ``(case, image, label, spacing)``.
    features, k_range, seed
        See :func:`cluster_cases`.
    tumor_label, shell_mm, contrast, radial_mm, radial_bin_mm, normalize
        See :func:`tumor_statistics`.

    Returns
    -------
    TumorAnalysis
        ``wide`` carries a ``cluster`` column.
    """
    stats = []
    for item in cases:
        if hasattr(item, "image"):
            case, image, label, spacing = item.case_id, item.image, item.label, item.spacing
        else:
            try:
                case, image, label, spacing = item
            except (TypeError, ValueError) as exc:
                raise DataError("Cannot read a case.", expected="a Phantom or (case, image, label, spacing)",
                                got=type(item).__name__, fix="pass phantoms or 4-tuples") from exc
        stats.append(tumor_statistics(image, label, spacing=spacing, case=case, tumor_label=tumor_label,
                                      shell_mm=shell_mm, contrast=contrast, radial_mm=radial_mm,
                                      radial_bin_mm=radial_bin_mm, normalize=normalize))
    if len({s.case for s in stats}) != len(stats):
        raise DataError("Case identifiers repeat.", expected="unique case ids", got=f"{len(stats)} cases",
                        fix="give every case its own id")
    tidy, wide = tumor_tables(stats)
    clustering = cluster_cases(wide, features=features, k_range=k_range, seed=seed)
    wide = wide.assign(cluster=clustering.labels.loc[wide["case"]].to_numpy())
    return TumorAnalysis(tidy=tidy, wide=wide, clustering=clustering, stats=tuple(stats))
