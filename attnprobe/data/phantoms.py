"""Synthetic pelvic phantoms: one anatomy, rendered as T2-weighted MRI and as CT (docs/definitions.md).

The anatomy is analytic and lives in millimetres, in a patient frame whose axes are RAS+
(``x`` towards the patient's right, ``y`` anterior, ``z`` superior; origin near the centre of the
pelvis). A volume is a window of that frame: a fixed in-plane field of view and an axial (``z``)
extent that varies between cases, so padding to a cubic ROI matters as in real pelvic MRI.

Arrays are ``(x, y, z)`` in MONAI's order after RAS orientation, and the affine is diagonal with
positive spacing, so ``nibabel.aff2axcodes(affine) == ("R", "A", "S")``.

Randomness comes from ``numpy.random.Generator`` streams derived from the case seed: stream 0
draws the anatomy (shared by both modalities, hence identical labels), streams 1 and 2 draw the
MRI and CT acquisition effects (noise, bias field).

Anatomy, painted in this order (later wins)
-------------------------------------------
- body outline: elliptic cross-section filled with subcutaneous fat;
- muscle ring inside it, and a fat-filled pelvic cavity;
- two femoral-head-like bone ellipsoids (lateral) and a curved sacrum/coccyx plate (posterior),
  each with a dark cortex and an intermediate marrow;
- bladder: anterior, superior ellipsoid with a thin wall;
- rectum: posterior tube along ``z`` whose centreline curves (anterior-posterior and sideways),
  with mesorectal fat around it, an intermediate wall and a gas-filled lumen;
- tumor: an irregular ellipsoid centred in the rectal wall, whose appearance comes from one of
  :data:`TUMOR_CLUSTERS` (brightness, texture, boundary sharpness).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from attnprobe.data.io import save_nifti
from attnprobe.errors import ConfigError, DataError

Modality = Literal["mri", "ct"]
MODALITIES: tuple[Modality, ...] = ("mri", "ct")

# Tissue codes of the internal tissue map (not written out; the label only holds the tumor).
AIR, FAT, MUSCLE, CORTEX, MARROW, BLADDER, WALL, LUMEN, TUMOR = range(9)

# T2-weighted fast-spin-echo-like signal, arbitrary units.
_MRI_LEVELS = {AIR: 0.0, FAT: 720.0, MUSCLE: 210.0, CORTEX: 40.0, MARROW: 430.0, BLADDER: 1000.0,
               WALL: 320.0, LUMEN: 25.0}
# Hounsfield-like units.
_CT_LEVELS = {AIR: -1000.0, FAT: -100.0, MUSCLE: 45.0, CORTEX: 950.0, MARROW: 420.0, BLADDER: 5.0,
              WALL: 40.0, LUMEN: -1000.0}


@dataclass(frozen=True)
class TumorCluster:
    """Appearance of one tumor cluster.

    Parameters
    ----------
    name
        Short human-readable name.
    mri_level, ct_level
        Mean tumor intensity in MRI arbitrary units and in HU.
    texture_cv
        Relative standard deviation of the texture field (0 = smooth).
    texture_mm
        Typical grain (wavelength) of the texture, mm.
    blur_mm
        Gaussian sigma of the boundary blur, mm (0 = sharp, only partial-volume smoothing).
    """

    name: str
    mri_level: float
    ct_level: float
    texture_cv: float
    texture_mm: float
    blur_mm: float


# Four corners of the (bright/dark, smooth/heterogeneous, sharp/blurred) cube chosen so that any two
# clusters differ in at least two of the three attributes; at the default spacing k-means on the
# tumor_stats features recovers them exactly despite noise, bias field and tumor position.
TUMOR_CLUSTERS: tuple[TumorCluster, ...] = (
    TumorCluster("bright-smooth-sharp", 680.0, 70.0, 0.03, 6.0, 0.0),
    TumorCluster("bright-heterogeneous-blurred", 680.0, 60.0, 0.40, 6.0, 4.0),
    TumorCluster("dark-smooth-blurred", 360.0, 45.0, 0.03, 6.0, 4.0),
    TumorCluster("dark-heterogeneous-sharp", 360.0, 35.0, 0.40, 6.0, 0.0),
)


@dataclass(frozen=True, eq=False)
class Phantom:
    """One rendered phantom case.

    Attributes
    ----------
    image
        ``float32`` array ``(x, y, z)``: MRI arbitrary units or HU.
    label
        ``uint8`` array ``(x, y, z)``: 0 background, 1 tumor.
    spacing
        Voxel size ``(x, y, z)`` in mm.
    affine
        4x4 voxel-to-world (RAS+, mm) matrix, diagonal with positive spacing.
    case_id
        Case identifier.
    cluster
        Index into :data:`TUMOR_CLUSTERS` of the tumor's appearance cluster.
    axial_extent_mm
        Realised extent along ``z`` (``n_z * spacing_z``).
    modality
        ``"mri"`` or ``"ct"``.
    metadata
        Anatomy and rendering details (seed, cluster name, tumor centre and radii, volume, ...).
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    case_id: str
    cluster: int
    axial_extent_mm: float
    modality: Modality
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class _Anatomy:
    """Analytic anatomy and the grid it is rendered on (all lengths in mm)."""

    seed: int
    cluster: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]  # world position of voxel (0, 0, 0)'s centre
    body: tuple[float, float, float]  # semi-axes x, y and the y offset of the body ellipse
    fat_mm: float  # subcutaneous fat thickness
    femur: tuple[float, float, float, float]  # lateral offset, y, z centre, radius
    sacrum: tuple[float, float]  # half-width, thickness
    bladder: tuple[float, float, float, float, float, float]  # centre x, y, z, semi-axes x, y, z
    rectum: tuple[float, float, float, float, float, float]  # y0, ap curvature, sway amp, sway phase, radius, wall
    tumor_center: tuple[float, float, float]
    tumor_radii: tuple[float, float, float]
    shape_waves: np.ndarray  # (m, 5): wave vector (3), phase, amplitude of the boundary perturbation
    texture_waves: np.ndarray  # (m, 4): wave vector (3), phase of the texture field


def _check_options(fov_mm: Sequence[float], axial_range_mm: Sequence[float], spacing: Sequence[float],
                   shape: Sequence[int] | None, n_clusters: int) -> None:
    if len(fov_mm) != 2 or min(fov_mm) <= 0:
        raise ConfigError("Bad in-plane field of view.", expected="two positive lengths in mm (x, y)",
                          got=repr(tuple(fov_mm)), fix="pass e.g. fov_mm=(120.0, 120.0)")
    if min(fov_mm) < 90.0:
        raise ConfigError("In-plane field of view too small for the pelvic anatomy.",
                          expected=">= 90 mm on x and y", got=repr(tuple(fov_mm)),
                          fix="use fov_mm of at least (90, 90); use shape= for small arrays")
    lo, hi = (float(v) for v in axial_range_mm) if len(axial_range_mm) == 2 else (-1.0, -1.0)
    if not 40.0 <= lo <= hi:
        raise ConfigError("Bad axial extent range.", expected="(lo, hi) with 40 <= lo <= hi (mm)",
                          got=repr(tuple(axial_range_mm)), fix="pass e.g. axial_range_mm=(40.0, 120.0)")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ConfigError("Bad voxel spacing.", expected="three positive numbers (x, y, z) in mm",
                          got=repr(tuple(spacing)), fix="pass e.g. spacing=(1.5, 1.5, 2.5)")
    if shape is not None and (len(shape) != 3 or min(shape) < 4):
        raise ConfigError("Bad phantom shape.", expected="three integers >= 4 (x, y, z)",
                          got=repr(tuple(shape)), fix="pass e.g. shape=(48, 48, 24) or shape=None")
    if not 1 <= n_clusters <= len(TUMOR_CLUSTERS):
        raise ConfigError("Bad number of tumor clusters.", expected=f"1..{len(TUMOR_CLUSTERS)}",
                          got=str(n_clusters), fix="pass n_clusters within that range")


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError("Bad phantom seed.", expected="a non-negative integer", got=repr(seed),
                          fix="pass e.g. seed=0")
    return int(seed)


def _draw_anatomy(seed: int, *, cluster: int | None, n_clusters: int, fov_mm: Sequence[float],
                  axial_range_mm: Sequence[float], axial_extent_mm: float | None,
                  spacing: Sequence[float], shape: Sequence[int] | None) -> _Anatomy:
    rng = np.random.default_rng([seed, 0])
    u = rng.uniform
    drawn = int(rng.integers(n_clusters))  # always drawn, so a cluster override leaves the anatomy alone
    cl = drawn if cluster is None else cluster
    drawn_extent = float(u(axial_range_mm[0], axial_range_mm[1]))  # drawn even when overridden, for the same reason
    extent = drawn_extent if axial_extent_mm is None else float(axial_extent_mm)

    half_x, half_y = fov_mm[0] / 2.0, fov_mm[1] / 2.0
    bx = u(0.78, 0.90) * half_x
    by = u(0.62, 0.72) * half_y
    k = bx / 50.0  # organ sizes scale with the body (designed for a ~100 mm wide body)
    byo = u(-0.04, 0.04) * half_y
    body = (bx, by, byo)
    fat_mm = u(4.0, 7.0) * k
    femur = (u(0.60, 0.66) * bx, byo + u(-0.05, 0.10) * by, u(-15.0, 15.0), u(0.18, 0.22) * bx)
    sacrum = (u(12.0, 16.0) * k, u(4.5, 6.0) * k)
    bladder = (u(-3.0, 3.0) * k, byo + u(0.30, 0.38) * by, u(10.0, 35.0),
               u(14.0, 18.0) * k, u(10.0, 13.0) * k, u(14.0, 22.0) * k)
    rectum = (byo - u(0.30, 0.38) * by, u(0.001, 0.003), u(1.5, 4.0) * k, u(0.0, 2 * np.pi),
              u(8.0, 10.0) * k, u(2.5, 3.5) * k)

    margin = 4.0
    # the tumor must fit the axial window with a margin; r_z is bounded by the drawn extent
    rz = u(6.0, max(6.0, min(14.0, extent / 2.0 - margin)))
    r_in = u(5.0, 9.0) * k
    tz = u(-30.0, 30.0)
    angle = u(0.0, 2 * np.pi)
    xr, yr = _rectum_centre(rectum, np.asarray(tz))
    r_mid = rectum[4] - rectum[5] / 2.0
    t_center = (float(xr + r_mid * np.cos(angle)), float(yr + r_mid * np.sin(angle)), tz)
    t_radii = (r_in * u(0.85, 1.15), r_in * u(0.85, 1.15), rz)

    # boundary perturbation: a few smooth waves (wavelength ~ tumor size) make the outline irregular
    m = 6
    kdir = rng.normal(size=(m, 3))
    kdir /= np.linalg.norm(kdir, axis=1, keepdims=True)
    shape_waves = np.column_stack([kdir * (2 * np.pi / u(10.0, 25.0, size=(m, 1))),
                                   u(0.0, 2 * np.pi, size=m), u(0.03, 0.08, size=m)])
    # texture: random plane waves, resolution independent so MRI and CT see the same pattern
    mt = 16
    tdir = rng.normal(size=(mt, 3))
    tdir /= np.linalg.norm(tdir, axis=1, keepdims=True)
    grain = TUMOR_CLUSTERS[cl].texture_mm
    texture_waves = np.column_stack([tdir * (2 * np.pi / u(0.6 * grain, 1.6 * grain, size=(mt, 1))),
                                     u(0.0, 2 * np.pi, size=mt)])

    # z window containing the tumor with the margin
    lo_min, lo_max = tz + rz + margin - extent, tz - rz - margin
    z_lo = u(lo_min, lo_max) if lo_max > lo_min else (lo_min + lo_max) / 2.0
    if shape is None:
        sp = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
        grid = (max(4, round(fov_mm[0] / sp[0])), max(4, round(fov_mm[1] / sp[1])), max(4, round(extent / sp[2])))
    else:
        grid = (int(shape[0]), int(shape[1]), int(shape[2]))
        sp = (fov_mm[0] / grid[0], fov_mm[1] / grid[1], extent / grid[2])
    nx, ny, nz = grid
    # centre the in-plane grid on the origin; the axial window starts at z_lo
    origin = (-nx * sp[0] / 2.0 + sp[0] / 2.0, -ny * sp[1] / 2.0 + sp[1] / 2.0, z_lo + sp[2] / 2.0)
    return _Anatomy(seed=seed, cluster=cl, shape=(nx, ny, nz), spacing=sp, origin=origin, body=body,
                    fat_mm=fat_mm, femur=femur, sacrum=sacrum, bladder=bladder, rectum=rectum,
                    tumor_center=t_center, tumor_radii=t_radii, shape_waves=shape_waves,
                    texture_waves=texture_waves)


def _rectum_centre(rectum: tuple[float, ...], z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rectum centreline (x, y) at height z: curves posteriorly away from z = 0, sways sideways."""
    y0, curv, sway, phase = rectum[:4]
    return sway * np.sin(2 * np.pi * z / 90.0 + phase), y0 - curv * z**2


def _coords(an: _Anatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open-grid voxel-centre coordinates (mm), broadcastable to ``(x, y, z)``."""
    axes = [an.origin[i] + an.spacing[i] * np.arange(an.shape[i]) for i in range(3)]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _paint_bone(tissue: np.ndarray, outer: np.ndarray, inner: np.ndarray) -> None:
    tissue[outer] = CORTEX
    tissue[inner] = MARROW


def _render_tissue(an: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Tissue map (uint8 codes) without the tumor, and the tumor mask."""
    x, y, z = _coords(an)
    shape = an.shape
    tissue = np.full(shape, AIR, dtype=np.uint8)

    bx, by, byo = an.body
    taper = 1.0 + 0.06 * np.clip(z / 60.0, -1.0, 1.0)  # pelvis widens superiorly
    ex = (x / (bx * taper)) ** 2 + ((y - byo) / (by * taper)) ** 2
    tissue[np.broadcast_to(ex <= 1.0, shape)] = FAT
    ix, iy = bx * taper - an.fat_mm, by * taper - an.fat_mm
    tissue[np.broadcast_to((x / ix) ** 2 + ((y - byo) / iy) ** 2 <= 1.0, shape)] = MUSCLE
    cavity = (x / (0.52 * bx)) ** 2 + ((y - byo + 0.08 * by) / (0.72 * by)) ** 2 <= 1.0
    tissue[np.broadcast_to(cavity, shape)] = FAT
    k = bx / 50.0

    fx, fy, fz, fr = an.femur
    for sx in (-1.0, 1.0):
        d = ((x - sx * fx) / fr) ** 2 + ((y - fy) / fr) ** 2 + ((z - fz) / (1.8 * fr)) ** 2
        inner_r = (1.0 - 2.0 / fr) ** 2
        _paint_bone(tissue, np.broadcast_to(d <= 1.0, shape), np.broadcast_to(d <= inner_r, shape))

    # sacrum/coccyx: a plate behind the rectum following its curve, narrowing inferiorly
    half_w, thick = an.sacrum
    xr, yr = _rectum_centre(an.rectum, z)
    r_out, r_wall = an.rectum[4], an.rectum[5]
    meso = r_out + 5.0 * k  # mesorectal fat radius
    ys = yr - meso - thick
    w = half_w * np.clip((z + 45.0) / 70.0, 0.35, 1.0)
    ds = (x / w) ** 2 + ((y - ys) / thick) ** 2
    ds_in = (x / np.maximum(w - 1.5, 1.0)) ** 2 + ((y - ys) / max(thick - 1.5, 1.0)) ** 2
    _paint_bone(tissue, np.broadcast_to(ds <= 1.0, shape), np.broadcast_to(ds_in <= 1.0, shape))

    dr = np.broadcast_to(np.sqrt((x - xr) ** 2 + (y - yr) ** 2), shape)
    tissue[(dr <= meso) & (tissue != CORTEX) & (tissue != MARROW)] = FAT

    cx, cy, cz, ax, ay, az = an.bladder
    db = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2
    tissue[np.broadcast_to(db <= 1.0, shape)] = MUSCLE  # bladder wall
    shrink = [(a - 2.0) / a for a in (ax, ay, az)]
    db_in = ((x - cx) / (ax * shrink[0])) ** 2 + ((y - cy) / (ay * shrink[1])) ** 2 + ((z - cz) / (az * shrink[2])) ** 2
    tissue[np.broadcast_to(db_in <= 1.0, shape)] = BLADDER

    tissue[dr <= r_out] = WALL
    tissue[dr <= r_out - r_wall] = LUMEN

    tcx, tcy, tcz = an.tumor_center
    rx, ry, rz = an.tumor_radii
    dt = np.sqrt(((x - tcx) / rx) ** 2 + ((y - tcy) / ry) ** 2 + ((z - tcz) / rz) ** 2)
    bump = np.zeros(shape, dtype=np.float64)
    for k0, k1, k2, ph, amp in an.shape_waves:
        bump += amp * np.cos(k0 * x + k1 * y + k2 * z + ph)
    # the tumor grows from the wall into lumen and mesorectal fat, never into bone or bladder
    tumor = (dt <= 1.0 + bump) & (dr <= meso)
    tumor &= (tissue != CORTEX) & (tissue != MARROW) & (tissue != BLADDER) & (tissue != AIR)
    return tissue, tumor


def _render_checked(an: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    tissue, tumor = _render_tissue(an)
    if not tumor.any():
        raise ConfigError("Grid too coarse: the tumor covers no voxel.", expected="voxels of about 3 mm or finer",
                          got=f"shape {an.shape}, spacing {tuple(round(v, 2) for v in an.spacing)} mm",
                          fix="use a finer spacing or a larger shape (e.g. shape=(48, 48, 24))")
    return tissue, tumor


def _texture(an: _Anatomy, region: tuple[slice, ...]) -> np.ndarray:
    """Unit-variance texture field on ``region`` of the grid (sum of random plane waves)."""
    x, y, z = _coords(an)
    x, y, z = x[region[0]], y[:, region[1]], z[:, :, region[2]]
    out = np.zeros((x.shape[0], y.shape[1], z.shape[2]), dtype=np.float64)
    for k0, k1, k2, ph in an.texture_waves:
        out += np.cos(k0 * x + k1 * y + k2 * z + ph)
    return out * np.sqrt(2.0 / len(an.texture_waves))


def _render_image(an: _Anatomy, tissue: np.ndarray, tumor: np.ndarray, modality: Modality) -> np.ndarray:
    levels = _MRI_LEVELS if modality == "mri" else _CT_LEVELS
    lut = np.zeros(TUMOR + 1, dtype=np.float64)
    for code, value in levels.items():
        lut[code] = value
    img = lut[tissue]

    cl = TUMOR_CLUSTERS[an.cluster]
    sp = np.asarray(an.spacing)
    if tumor.any():
        # composite the tumor with a soft weight: blurred clusters fade into their surroundings
        pad = int(np.ceil(3.0 * max(cl.blur_mm, 1.0) / sp.min())) + 1
        idx = np.argwhere(tumor)
        lo = np.maximum(idx.min(0) - pad, 0)
        hi = np.minimum(idx.max(0) + pad + 1, an.shape)
        region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        wgt = tumor[region].astype(np.float64)
        if cl.blur_mm > 0:
            # an outward ramp: the tumor signal fades into its surroundings over ~blur_mm while
            # voxels inside the label keep the pure tumor appearance (texture alone sets the CV)
            wgt = np.minimum(2.0 * ndimage.gaussian_filter(wgt, sigma=cl.blur_mm / sp, mode="nearest"), 1.0)
            wgt[tumor[region]] = 1.0
        if modality == "mri":
            tum = cl.mri_level * (1.0 + cl.texture_cv * _texture(an, region))
        else:
            tum = cl.ct_level + 80.0 * cl.texture_cv * _texture(an, region)
        img[region] = (1.0 - wgt) * img[region] + wgt * tum
    # partial-volume smoothing of the whole scene (half a voxel)
    return ndimage.gaussian_filter(img, sigma=0.5, mode="nearest")


def _acquire(an: _Anatomy, img: np.ndarray, modality: Modality) -> np.ndarray:
    """Modality-specific acquisition: MRI bias field + Rician noise; CT Gaussian noise."""
    rng = np.random.default_rng([an.seed, 1 if modality == "mri" else 2])
    if modality == "mri":
        x, y, z = _coords(an)
        coef = rng.uniform(-1.0, 1.0, size=6) * np.array([0.15, 0.15, 0.10, 0.06, 0.06, 0.06])
        xn, yn, zn = x / 60.0, y / 60.0, z / 60.0
        bias = np.exp(coef[0] * xn + coef[1] * yn + coef[2] * zn + coef[3] * xn * yn
                      + coef[4] * xn**2 + coef[5] * yn**2)
        sigma = 14.0
        signal = img * bias
        n1 = rng.standard_normal(img.shape)
        n2 = rng.standard_normal(img.shape)
        out = np.sqrt((signal + sigma * n1) ** 2 + (sigma * n2) ** 2)  # magnitude image: Rician noise
    else:
        out = img + 12.0 * rng.standard_normal(img.shape)
    return out.astype(np.float32)


def _affine(an: _Anatomy) -> np.ndarray:
    aff = np.diag([*an.spacing, 1.0])
    aff[:3, 3] = an.origin
    return aff


def _phantom(an: _Anatomy, tissue: np.ndarray, tumor: np.ndarray, modality: Modality,
             case_id: str) -> Phantom:
    img = _acquire(an, _render_image(an, tissue, tumor, modality), modality)
    cl = TUMOR_CLUSTERS[an.cluster]
    vox_mm3 = float(np.prod(an.spacing))
    meta = {
        "seed": an.seed,
        "modality": modality,
        "cluster_name": cl.name,
        "shape": list(an.shape),
        "spacing_mm": list(an.spacing),
        "z_range_mm": [an.origin[2] - an.spacing[2] / 2, an.origin[2] + an.spacing[2] * (an.shape[2] - 0.5)],
        "tumor_center_mm": list(an.tumor_center),
        "tumor_radii_mm": list(an.tumor_radii),
        "tumor_volume_mm3": float(tumor.sum()) * vox_mm3,
        "units": "a.u. (T2w)" if modality == "mri" else "HU",
    }
    return Phantom(image=img, label=tumor.astype(np.uint8), spacing=(float(an.spacing[0]), float(an.spacing[1]), float(an.spacing[2])),
                   affine=_affine(an), case_id=case_id, cluster=an.cluster,
                   axial_extent_mm=float(an.shape[2] * an.spacing[2]), modality=modality, metadata=meta)


def make_phantom(seed: int, *, modality: Modality = "mri", case_id: str | None = None,
                 cluster: int | None = None, n_clusters: int = len(TUMOR_CLUSTERS),
                 spacing: Sequence[float] = (1.5, 1.5, 2.5), shape: Sequence[int] | None = None,
                 fov_mm: Sequence[float] = (120.0, 120.0),
                 axial_range_mm: Sequence[float] = (40.0, 120.0),
                 axial_extent_mm: float | None = None) -> Phantom:
    """Render one synthetic pelvic phantom.

    Parameters
    ----------
    seed
        Non-negative integer; the same seed gives the same anatomy (and the same label) in every
        modality, and the same image for the same modality.
    modality
        ``"mri"`` (T2-weighted-like, arbitrary units, bias field and Rician noise) or ``"ct"``
        (HU-like, Gaussian noise).
    case_id
        Identifier stored on the result; defaults to ``f"phantom_s{seed}"``.
    cluster
        Tumor appearance cluster (index into :data:`TUMOR_CLUSTERS`); drawn from the seed when None.
    n_clusters
        Number of clusters the drawn cluster comes from (the first ``n_clusters`` entries).
    spacing
        Voxel size ``(x, y, z)`` in mm; ignored when ``shape`` is given.
    shape
        Exact array shape ``(x, y, z)`` (e.g. ``(48, 48, 24)`` for fast tests). The spacing is then
        derived: in-plane ``fov_mm / shape`` and axially ``axial_extent / n_z``, so the physical
        extent still varies between cases while the array shape does not.
    fov_mm
        In-plane field of view ``(x, y)`` in mm (>= 90).
    axial_range_mm
        ``(lo, hi)``: the axial extent is drawn uniformly from it (lo >= 40 mm so the tumor fits).
    axial_extent_mm
        Fixed axial extent instead of a drawn one.

    Returns
    -------
    Phantom
        ``image`` float32 and ``label`` uint8, both ``(x, y, z)``, RAS affine.
    """
    seed = _check_seed(seed)
    if modality not in MODALITIES:
        raise ConfigError("Unknown phantom modality.", expected=" or ".join(MODALITIES), got=repr(modality),
                          fix='pass modality="mri" or modality="ct"')
    _check_options(fov_mm, axial_range_mm, spacing, shape, n_clusters)
    if cluster is not None and not 0 <= cluster < len(TUMOR_CLUSTERS):
        raise ConfigError("Bad tumor cluster.", expected=f"0..{len(TUMOR_CLUSTERS) - 1} or None",
                          got=repr(cluster), fix="pass a valid cluster index or None")
    if axial_extent_mm is not None and axial_extent_mm < 40.0:
        raise ConfigError("Axial extent too small for the tumor.", expected=">= 40 mm", got=repr(axial_extent_mm),
                          fix="pass axial_extent_mm >= 40 or None")
    an = _draw_anatomy(seed, cluster=cluster, n_clusters=n_clusters, fov_mm=fov_mm,
                       axial_range_mm=axial_range_mm, axial_extent_mm=axial_extent_mm, spacing=spacing, shape=shape)
    tissue, tumor = _render_checked(an)
    return _phantom(an, tissue, tumor, modality, case_id or f"phantom_s{seed}")


def _split_counts(n: int, split: Sequence[float]) -> tuple[int, int, int]:
    if len(split) != 3 or min(split) < 0 or not np.isclose(sum(split), 1.0, atol=1e-6):
        raise ConfigError("Bad train/validation/test split.", expected="three non-negative fractions summing to 1",
                          got=repr(tuple(split)), fix="pass e.g. split=(0.6, 0.2, 0.2)")
    n_val = int(round(n * split[1]))
    n_test = int(round(n * split[2]))
    return n - n_val - n_test, n_val, n_test


def _case_seed(seed: int, index: int) -> int:
    # independent, reproducible seeds per case (not seed + index, which would overlap datasets)
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint32)[0])


def write_phantom_dataset(out_dir: str | Path, *, n: int = 24, seed: int = 0,
                          modalities: Sequence[Modality] = MODALITIES,
                          split: Sequence[float] = (0.6, 0.2, 0.2),
                          n_clusters: int = len(TUMOR_CLUSTERS),
                          spacing: Sequence[float] = (1.5, 1.5, 2.5), shape: Sequence[int] | None = None,
                          fov_mm: Sequence[float] = (120.0, 120.0),
                          axial_range_mm: Sequence[float] = (40.0, 120.0),
                          compress: bool = True) -> dict[Modality, Path]:
    """Write ``n`` phantom cases as NIfTI plus one Decathlon-style datalist per modality.

    Layout under ``out_dir``::

        labels/phantom_000.nii.gz          uint8 tumor label (shared: same anatomy in every modality)
        images_mri/phantom_000.nii.gz      float32 image, one folder per modality
        datalist_mri.json                  {"training": [...], "validation": [...], "test": [...]}
        phantoms.json                      per-case metadata (seed, cluster, extent, split, ...)

    Datalist entries are ``{"image": rel, "label": rel, "case": id}`` with paths relative to the
    JSON's folder. Clusters are assigned round-robin (``i % n_clusters``) so every cluster is
    represented; the split is a seeded permutation of the cases, identical for all modalities.

    Parameters
    ----------
    out_dir
        Output folder (created).
    n
        Number of cases (>= 1).
    seed
        Dataset seed; case ``i`` uses a seed derived from ``(seed, i)``.
    modalities
        Renderings to write.
    split
        ``(train, validation, test)`` fractions summing to 1 (rounded to whole cases).
    n_clusters, spacing, shape, fov_mm, axial_range_mm
        Passed to :func:`make_phantom`.
    compress
        Write ``.nii.gz`` (True) or ``.nii``.

    Returns
    -------
    dict
        Modality -> path of its datalist JSON.
    """
    seed = _check_seed(seed)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError("Bad number of phantom cases.", expected="an integer >= 1", got=repr(n), fix="pass e.g. n=24")
    mods = tuple(modalities)
    if not mods or any(m not in MODALITIES for m in mods) or len(set(mods)) != len(mods):
        raise ConfigError("Bad modalities.", expected=f"distinct values from {MODALITIES}", got=repr(mods),
                          fix='pass e.g. modalities=("mri", "ct")')
    _check_options(fov_mm, axial_range_mm, spacing, shape, n_clusters)
    n_train, n_val, _ = _split_counts(int(n), split)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError("Phantom output path is not a folder.", expected="a folder or a new path", got=str(out),
                        fix="pass a folder path")
    ext = ".nii.gz" if compress else ".nii"
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for m in mods:
        (out / f"images_{m}").mkdir(exist_ok=True)

    order = np.random.default_rng([seed, 7]).permutation(int(n))
    split_of = {}
    for rank, i in enumerate(order):
        split_of[int(i)] = "training" if rank < n_train else ("validation" if rank < n_train + n_val else "test")

    lists: dict[Modality, dict[str, list[dict[str, str]]]] = {
        m: {"training": [], "validation": [], "test": []} for m in mods}
    manifest = []
    for i in range(int(n)):
        case = f"phantom_{i:03d}"
        cseed = _case_seed(seed, i)
        an = _draw_anatomy(cseed, cluster=i % n_clusters, n_clusters=n_clusters, fov_mm=fov_mm,
                           axial_range_mm=axial_range_mm, axial_extent_mm=None, spacing=spacing, shape=shape)
        tissue, tumor = _render_checked(an)  # once per case: both modalities share it
        label_rel = f"labels/{case}{ext}"
        save_nifti(tumor.astype(np.uint8), _affine(an), out / label_rel)
        ph = None
        for m in mods:
            ph = _phantom(an, tissue, tumor, m, case)
            image_rel = f"images_{m}/{case}{ext}"
            save_nifti(ph.image, ph.affine, out / image_rel)
            lists[m][split_of[i]].append({"image": image_rel, "label": label_rel, "case": case})
        if ph is None:  # mods is checked non-empty above
            raise RuntimeError("internal: no modality rendered")
        manifest.append({"case": case, "split": split_of[i], "cluster": an.cluster,
                         "axial_extent_mm": ph.axial_extent_mm,
                         **{k: v for k, v in ph.metadata.items() if k not in ("modality", "units")}})

    paths: dict[Modality, Path] = {}
    for m in mods:
        p = out / f"datalist_{m}.json"
        p.write_text(json.dumps(lists[m], indent=1))
        paths[m] = p
    (out / "phantoms.json").write_text(json.dumps(
        {"seed": seed, "n": int(n), "modalities": list(mods),
         "clusters": [c.name for c in TUMOR_CLUSTERS[:n_clusters]], "cases": manifest}, indent=1))
    return paths
