"""Area-weighted surface distances (surfels) against hand-computed shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from attnprobe.errors import ConfigError
from attnprobe.train.surface import (
    hd_and_surface_dice,
    neighbour_codes,
    surface_area,
    surfel_area_table,
    weighted_percentile,
)


def _box(shape=(20, 20, 20), start=(5, 5, 5), n=8):
    m = np.zeros(shape, dtype=bool)
    m[start[0]:start[0] + n, start[1]:start[1] + n, start[2]:start[2] + n] = True
    return m


def _ball(radius_mm, spacing, pad=3):
    sp = np.asarray(spacing, float)
    shape = tuple(int(math.ceil(2 * radius_mm / s)) + 2 * pad for s in sp)
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, sp)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return x**2 + y**2 + z**2 <= radius_mm**2


def _cube_mesh_area(n, spacing):
    """Marching-cubes area of an n-voxel cube, by hand: flat faces, chamfered edges, cut corners.

    Surfel vertices sit at edge midpoints between voxel centres, so each face is flat over
    (n-1)^2 cells, each cube edge is a strip of n-1 cells whose width is the diagonal of the two
    half-voxels it cuts, and each corner is the triangle through three half-voxel points.
    """
    sx, sy, sz = spacing
    faces = 2 * (n - 1) ** 2 * (sy * sz + sx * sz + sx * sy)
    edges = 4 * (n - 1) * (sz * math.hypot(sx / 2, sy / 2) + sy * math.hypot(sx / 2, sz / 2)
                           + sx * math.hypot(sy / 2, sz / 2))
    corners = 8 * 0.5 * math.sqrt((sy * sz / 4) ** 2 + (sx * sz / 4) ** 2 + (sx * sy / 4) ** 2)
    return faces + edges + corners


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.0, 2.0), (0.5, 1.3, 3.0)])
def test_cube_area_matches_hand_formula(spacing):
    assert surface_area(_box(n=8), np.array(spacing)) == pytest.approx(_cube_mesh_area(8, spacing), rel=1e-9)
    # (0.8, 1, 2): 431.2 faces + 91.06 edges + 2.68 corners = 524.94 mm², vs 563.2 for the sharp cube


def test_single_voxel_and_table_entries():
    table = surfel_area_table((1.0, 1.0, 1.0))
    assert table[0] == table[255] == 0.0
    # one corner in: the triangle through three edge midpoints, an equilateral of side sqrt(0.5)
    assert table[1] == pytest.approx(math.sqrt(3) / 8)
    # two neighbouring corners in: a 1 x sqrt(0.5) rectangle
    assert table[0b00000011] == pytest.approx(math.sqrt(0.5))
    # four corners of one face in: the unit square half-way
    assert table[0b00001111] == pytest.approx(1.0)
    one = np.zeros((3, 3, 3), bool)
    one[1, 1, 1] = True
    assert surface_area(one, np.ones(3)) == pytest.approx(8 * math.sqrt(3) / 8)  # the octahedron
    assert neighbour_codes(one).shape == (4, 4, 4)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_table_sums_to_the_whole_mask_marching_cubes_area():
    """The per-block table summed over a blob equals one marching-cubes mesh of the whole blob."""
    from skimage.measure import marching_cubes, mesh_surface_area

    rng = np.random.default_rng(0)
    sp = (0.7, 1.1, 2.9)
    blob = ndimage.gaussian_filter(rng.random((18, 16, 12)), 1.5)
    mask = blob > np.quantile(blob, 0.6)
    verts, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(float), 0.5, spacing=sp, method="lorensen")
    assert surface_area(mask, np.array(sp)) == pytest.approx(mesh_surface_area(verts, faces), rel=1e-5)


@pytest.mark.parametrize(("radius", "spacing", "low", "high"),
                         [(15.0, (1.0, 1.0, 1.0), 1.06, 1.10), (20.0, (0.8, 1.0, 2.0), 1.10, 1.16)])
def test_sphere_area_near_analytic(radius, spacing, low, high):
    # a binary mask's marching-cubes surface over-estimates a smooth surface by a few per cent
    # (Lindblad 2005: ~8 % for random orientations); the staircase grows with coarse z
    ratio = surface_area(_ball(radius, spacing), np.array(spacing)) / (4 * math.pi * radius**2)
    assert low < ratio < high


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.0, 2.0)])
def test_identical_shapes_give_zero_and_one(spacing):
    ball = _ball(10.0, spacing)
    assert hd_and_surface_dice(ball, ball, np.array(spacing), tolerance_mm=0.0, percentile=95) == (0.0, 1.0)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_shifted_cube_hd95_is_k_spacing(axis, k):
    sp = np.array([0.8, 1.0, 2.0])
    cube = _box()
    hd, _ = hd_and_surface_dice(np.roll(cube, k, axis=axis), cube, sp, tolerance_mm=2.0, percentile=95)
    assert hd == pytest.approx(k * sp[axis])


def test_shifted_sphere_hd95_close_to_shift():
    # a sphere shifted by s: a surface point at angle t from the shift is ~ s cos t away; the
    # 5 % of the area with the largest distance have cos t > 0.9, so HD95 lies in [0.9 s, s]
    sp = np.array([0.8, 1.0, 2.0])
    ball = _ball(12.0, sp)
    for k in (1, 2, 3):
        hd, _ = hd_and_surface_dice(np.roll(ball, k, axis=0), ball, sp, tolerance_mm=2.0, percentile=95)
        assert 0.85 * k * sp[0] <= hd <= k * sp[0] + 1e-9


def _distance_to_box_surface(points, lo, hi):
    """Euclidean distance of points to the surface of the box [lo, hi] (closed form, no EDT)."""
    inside = np.all((points >= lo) & (points <= hi), axis=1)
    to_face = np.minimum(points - lo, hi - points).min(1)
    outside = np.linalg.norm(points - np.clip(points, lo, hi), axis=1)
    return np.where(inside, to_face, outside)


@pytest.mark.parametrize("k", [1, 3])
def test_surface_dice_of_shifted_cube_by_hand(k):
    # Surfel vertices of an n-voxel cube lie on the integer points of the box surface between
    # voxel corners; the other cube's surface vertices are the lattice points of its box surface,
    # so the distance of a vertex to them is its distance to that box surface (the nearest point
    # of a box surface to a lattice point is a lattice point). Weigh by the surfels' areas.
    sp = np.ones(3)
    cube = _box()
    shifted = np.roll(cube, k, axis=0)
    hd, sdice = hd_and_surface_dice(shifted, cube, sp, tolerance_mm=2.0, percentile=95)
    table = surfel_area_table((1.0, 1.0, 1.0))
    within = total = 0.0
    for mask, other in ((shifted, cube), (cube, shifted)):
        codes = neighbour_codes(mask)
        border = (codes != 0) & (codes != 255)
        # vertex v of the padded corner grid sits between voxels v - 1 and v of the mask
        idx = np.argwhere(other)
        d = _distance_to_box_surface(np.argwhere(border).astype(float), idx.min(0), idx.max(0) + 1.0)
        areas = table[codes[border]]
        within += areas[d <= 2.0].sum()
        total += areas.sum()
    assert sdice == pytest.approx(within / total)
    assert (sdice == 1.0) == (k <= 2) and hd == float(k)


def test_weighted_percentile_by_hand():
    d = np.array([0.0, 1.0, 2.0, 3.0])
    assert weighted_percentile(d, np.ones(4), 95) == 3.0
    assert weighted_percentile(d, np.ones(4), 50) == 1.0  # cumulative shares .25 .5 .75 1: first >= .5
    assert weighted_percentile(d, np.array([10.0, 1, 1, 1]), 76) == 0.0
    assert weighted_percentile(d, np.array([10.0, 1, 1, 1]), 80) == 1.0


def test_bad_surface_is_config_error():
    with pytest.raises(ConfigError, match="surfel or voxel"):
        hd_and_surface_dice(_box(), _box(), np.ones(3), tolerance_mm=2.0, percentile=95, surface="mesh")
