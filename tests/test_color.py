"""Tests of ssl_jax.tasks.color against skimage, NumPy brute force and SciPy."""
import functools
import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from scipy import optimize
from scipy.spatial import ConvexHull
from skimage import color as skcolor

from configs import common
from ssl_jax.tasks import color


def _primaries():
  corners = np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)])
  greys = np.repeat(np.array([1, 2, 10, 128, 254])[:, None], 3, axis=1)
  return np.concatenate([corners, greys]).astype(np.uint8)


def _sk_lab(rgb_u8):
  return skcolor.rgb2lab(rgb_u8.reshape(-1, 1, 3)).reshape(rgb_u8.shape)


@functools.lru_cache(maxsize=1)
def _sk_all_colours():
  """One skimage pass over all 256^3 sRGB colours (about 10 s): (cells, hull_ab, hull_rgb).

  cells: {grid: set of (i, j)}, the cells (centred on multiples of grid) their ab reach,
  for every preset grid; hull_ab float64 [V, 2]: the vertices of the convex hull of all
  their ab (scipy), and hull_rgb uint8 [V, 3] the colours at those vertices.
  """
  v = np.arange(256, dtype=np.uint8)
  occupied = {g: np.zeros((401, 401), bool) for g in color.GRIDS}
  verts, rgbs = [], []
  for r in range(0, 256, 16):
    rgb = np.stack(np.meshgrid(np.arange(r, r + 16, dtype=np.uint8), v, v, indexing='ij'),
                   -1).reshape(-1, 3)
    ab = _sk_lab(rgb)[:, 1:]
    for g, occ in occupied.items():
      idx = np.round(ab / g).astype(np.int64) + 200
      occ[idx[:, 0], idx[:, 1]] = True
    # Akl-Toussaint: points strictly inside the polygon of the extremes in 32 directions
    # cannot be hull vertices (exact; it spares qhull 95% of the points).
    u = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    ext = ab[[np.argmax(ab[:, 0] * np.cos(t) + ab[:, 1] * np.sin(t)) for t in u]]
    cand = np.zeros(len(ab), bool)
    for f in ConvexHull(ext).equations:
      cand |= ab[:, 0] * f[0] + ab[:, 1] * f[1] + f[2] > -1e-9
    hull = ConvexHull(ab[cand])  # The hull of the union is the hull of the chunks' vertices.
    verts.append(ab[cand][hull.vertices])
    rgbs.append(rgb[cand][hull.vertices])
  verts, rgbs = np.concatenate(verts), np.concatenate(rgbs)
  hull = ConvexHull(verts)
  cells = {g: {(i - 200, j - 200) for i, j in zip(*np.nonzero(occ))}
           for g, occ in occupied.items()}
  return cells, verts[hull.vertices], rgbs[hull.vertices]


def _sk_cells_all_colours():
  return _sk_all_colours()[0]


def _centre_set(centers, grid):
  return {tuple(c) for c in np.round(np.asarray(centers) / grid).astype(int)}


# ---------------------------------------------------------------- Lab

def test_rgb_to_lab_matches_skimage():
  rng = np.random.default_rng(0)
  rgb = np.concatenate([rng.integers(0, 256, (3000, 3)), _primaries()]).astype(np.uint8)
  ref = _sk_lab(rgb)
  lab = np.asarray(jax.jit(color.rgb_to_lab)(rgb))
  assert lab.dtype == np.float32 and lab.shape == rgb.shape
  np.testing.assert_allclose(lab, ref, atol=1e-3)
  # Float input in [0, 1], with image axes.
  img = rng.uniform(0, 1, (2, 5, 7, 3))
  np.testing.assert_allclose(color.rgb_to_lab(img.astype(np.float32)),
                             skcolor.rgb2lab(img), atol=1e-3)


def test_lab_to_rgb_matches_skimage_and_round_trips():
  rng = np.random.default_rng(1)
  rgb = np.concatenate([rng.integers(0, 256, (2000, 3)), _primaries()]).astype(np.uint8)
  lab = _sk_lab(rgb)
  back = np.asarray(color.lab_to_rgb(lab))
  np.testing.assert_allclose(back, skcolor.lab2rgb(lab.reshape(-1, 1, 3)).reshape(-1, 3), atol=1e-3)
  np.testing.assert_allclose(back, rgb / 255.0, atol=1e-3)
  # Out-of-gamut Lab (negative Z and RGB outside [0, 1]): skimage clips both.
  wild = np.stack([rng.uniform(0, 100, 2000), rng.uniform(-128, 128, 2000),
                   rng.uniform(-128, 128, 2000)], -1)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    ref = skcolor.lab2rgb(wild.reshape(-1, 1, 3)).reshape(-1, 3)
  np.testing.assert_allclose(color.lab_to_rgb(wild), ref, atol=1e-3)
  assert not np.isnan(np.asarray(jax.grad(lambda x: color.lab_to_rgb(x).sum())(
      jnp.asarray(wild, jnp.float32)))).any()


def test_lab_bad_input():
  with pytest.raises(ValueError, match='last axis'):
    color.rgb_to_lab(np.zeros((4, 4), np.uint8))
  with pytest.raises(ValueError, match='int32'):
    color.rgb_to_lab(np.zeros((4, 3), np.int32))


# ---------------------------------------------------------------- bins

def test_in_gamut_cells_equal_all_srgb_colours_full_gamut_set():
  """The in-gamut rule on a full-gamut image set vs skimage over all 256^3 colours:
  exactly the cells 8-bit sRGB reaches (Zhang's 313 is the 'in_hull' rule)."""
  sk_cells = _sk_cells_all_colours()
  for grid in color.GRIDS:
    ref = sk_cells[grid]
    got = _centre_set(color.ab_grid_cells(grid)[color.in_gamut_cells(grid)], grid)
    assert got == ref, grid
  # A synthetic full-gamut image set: the RGB cube's surface plus random interior colours.
  rng = np.random.default_rng(2)
  images = np.concatenate([color.srgb_surface_colours(),
                           rng.integers(1, 255, (9848, 3)).astype(np.uint8)])
  images = images.reshape(100, 40, 100, 3)
  ref10 = sk_cells[10]
  gamut = color.derive_bins(images, 10, 'in_gamut')
  data = color.derive_bins(images, 10, 'data')
  assert gamut['num_bins'] == data['num_bins'] == len(ref10)
  assert _centre_set(gamut['centers'], 10) == _centre_set(data['centers'], 10) == ref10
  np.testing.assert_array_equal(gamut['counts'], data['counts'])
  assert gamut['counts'].sum() == images.shape[0] * 40 * 100


# Zhang's pts_in_hull.npy as described by its facts (richzhang/colorization#23 and the
# file itself): Q = 313 at grid 10, its a-rows, and the vertices of its convex hull.
ZHANG_313_HULL = [(-90, 90), (-90, 50), (-80, 20), (-60, -20), (-30, -50), (10, -80),
                  (40, -100), (60, -110), (90, -110), (100, -90), (100, 0), (90, 70),
                  (70, 80), (40, 90), (0, 100), (-50, 100)]


def _strip_cells(hull, grid):
  """Cells [g*i, g*i + g] x [g*j, g*j + g] (closed) that meet a convex polygon, by slabs.

  Independent of color.hull_chebyshev_distance: per vertical strip x in [g*i, g*i + g]
  the polygon spans y in [min lower chain, max upper chain] over the strip, and both
  chains are piecewise linear (np.interp), so the extremes are at the strip's ends or
  at a vertex inside it.
  """
  v = np.asarray(hull, np.float64)
  left, right = v[:, 0].argmin(), v[:, 0].argmax()
  ccw = np.roll(v, -left, axis=0)                     # scipy's 2-D vertices are CCW.
  k = (right - left) % len(v)
  lower, upper = ccw[:k + 1], np.concatenate([ccw[k:], ccw[:1]])[::-1]
  cells = set()
  for i in range(int(np.floor(v[:, 0].min() / grid)) - 1, int(np.ceil(v[:, 0].max() / grid)) + 1):
    x0, x1 = max(grid * i, v[:, 0].min()), min(grid * i + grid, v[:, 0].max())
    if x0 > x1:
      continue
    xs = np.concatenate([[x0, x1], v[(v[:, 0] >= x0) & (v[:, 0] <= x1), 0]])
    y0 = np.interp(xs, lower[:, 0], lower[:, 1]).min()
    y1 = np.interp(xs, upper[:, 0], upper[:, 1]).max()
    for j in range(int(np.floor(y0 / grid)) - 1, int(np.ceil(y1 / grid)) + 1):
      if grid * j <= y1 and grid * j + grid >= y0:
        cells.add((i, j))
  return cells


def test_srgb_ab_hull_is_the_hull_of_all_256_cubed_colours():
  """The hull computed from the 3,056 cube-edge colours is the hull of all 256^3 colours
  (skimage Lab, scipy ConvexHull): every vertex of the full hull is a cube-edge colour."""
  _, ref, ref_rgb = _sk_all_colours()
  assert (((ref_rgb == 0) | (ref_rgb == 255)).sum(-1) >= 2).all()   # On the cube's edges.
  hull = color.srgb_ab_hull()
  assert hull.shape == ref.shape == (514, 2)
  order = lambda x: x[np.lexsort(x.T[::-1])]
  np.testing.assert_allclose(order(hull), order(ref), atol=1e-9)
  assert ConvexHull(hull).volume == pytest.approx(ConvexHull(ref).volume, rel=1e-12)
  edges = color.srgb_edge_colours()
  assert len(edges) == len(np.unique(edges, axis=0)) == 12 * 254 + 8
  assert (((edges == 0) | (edges == 255)).sum(-1) >= 2).all()


def test_convex_hull_2d_matches_scipy():
  rng = np.random.default_rng(20)
  for pts in (rng.normal(size=(500, 2)), rng.integers(0, 6, (300, 2)).astype(float)):
    ref = pts[ConvexHull(pts).vertices]             # Counter-clockwise, no collinear points.
    got = color.convex_hull_2d(pts)
    start = np.flatnonzero((ref == got[0]).all(-1))[0]
    np.testing.assert_array_equal(got, np.roll(ref, -start, axis=0))
  with pytest.raises(ValueError, match='no area'):
    color.convex_hull_2d([[0, 0], [1, 1], [2, 2]])


def test_hull_chebyshev_distance_matches_an_lp():
  """d_inf(p, H) = min t s.t. |p - x|_inf <= t, A x <= b (scipy's facets of H)."""
  hull = color.srgb_ab_hull()
  facets = ConvexHull(hull).equations
  rng = np.random.default_rng(21)
  pts = np.concatenate([rng.uniform(-130, 130, (40, 2)), [[-30, -50], [80, 80], [0, 0]]])
  got = color.hull_chebyshev_distance(pts, hull)
  for p, d in zip(pts, got):
    a_ub = np.concatenate([np.c_[facets[:, :2], np.zeros(len(facets))],
                           [[1, 0, -1], [-1, 0, -1], [0, 1, -1], [0, -1, -1]]])
    b_ub = np.concatenate([-facets[:, 2], [p[0], -p[0], p[1], -p[1]]])
    lp = optimize.linprog([0, 0, 1], A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * 2 + [(0, None)])
    assert lp.status == 0 and d == pytest.approx(lp.fun, abs=1e-7), p
  assert got[-1] == 0.0


@pytest.mark.parametrize('grid,count', [(5, 1083), (10, 313), (15, 159), (20, 101)])
def test_in_hull_rule_is_the_corners_of_the_cells_meeting_the_hull(grid, count):
  """The 'in_hull' bins = corners of the closed grid cells meeting the hull of all 256^3
  sRGB colours (skimage + scipy, cells by vertical slabs): 1083 / 313 / 159 / 101.

  (The issue reported 100 at grid 20; the rule gives 101: (-40, -60) lies at Chebyshev
  distance 19.73 <= 20, the nearest excluded point at 21.61, so no rounding is involved.)
  """
  _, hull, _ = _sk_all_colours()
  cells = _strip_cells(hull, grid)
  ref = {(grid * (i + di), grid * (j + dj)) for i, j in cells for di in (0, 1) for dj in (0, 1)}
  got = color.ab_grid_cells(grid)[color.in_hull_cells(grid)]
  assert {tuple(c) for c in got.astype(int)} == ref and len(got) == len(ref) == count
  assert len(cells) == {5: 1003, 10: 272, 15: 130, 20: 79}[grid]
  # Every cell 8-bit sRGB reaches is in it; a-major order like every rule.
  assert set(color.in_gamut_cells(grid)) <= set(color.in_hull_cells(grid))
  assert (np.diff(color.in_hull_cells(grid)) > 0).all()


def test_in_hull_at_grid_10_is_zhangs_313():
  got = color.ab_grid_cells(10)[color.in_hull_cells(10)].astype(int)
  assert len(got) == 313
  assert (got[:, 0].min(), got[:, 0].max(), got[:, 1].min(), got[:, 1].max()) == (-90, 100,
                                                                                   -110, 100)
  for a, (lo, hi, n) in {-90: (50, 90, 5), 0: (-70, 100, 18), 100: (-90, 0, 10)}.items():
    b = np.sort(got[got[:, 0] == a, 1])
    assert (b.min(), b.max(), len(b)) == (lo, hi, n) and (np.diff(b) == 10).all(), a
  hull = ConvexHull(got.astype(float))
  assert {tuple(v) for v in got[hull.vertices]} == set(ZHANG_313_HULL)
  # No other grid point lies inside (or on) the hull of the 313.
  k = np.arange(-150, 151, 10, dtype=float)
  grid_pts = np.stack(np.meshgrid(k, k, indexing='ij'), -1).reshape(-1, 2)
  inside = (grid_pts @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9).all(-1)
  assert {tuple(p) for p in grid_pts[inside].astype(int)} == {tuple(p) for p in got}
  # The set does not hang on the half-width: the same for any half-width in [9.73, 10.05].
  d = color.hull_chebyshev_distance(grid_pts, _sk_all_colours()[1])
  for half in (9.73, 9.9, 10.0, 10.05):
    assert {tuple(p) for p in grid_pts[d <= half].astype(int)} == {tuple(p) for p in got}
  assert (d <= 9.72).sum() < 313 < (d <= 10.1).sum()  # Both ends of the window are real.
  # The 261 in-gamut cells are 313 less 52 rim points.
  gamut = {tuple(c) for c in color.ab_grid_cells(10)[color.in_gamut_cells(10)].astype(int)}
  assert gamut < {tuple(p) for p in got} and len(gamut) == 261


def test_in_hull_bins_count_pixels_like_in_gamut():
  images = _random_images(16)
  gamut = color.derive_bins(images, 10, 'in_gamut')
  hull = color.derive_bins(images, 10, 'in_hull')
  assert hull['num_bins'] == 313 and hull['rule'] == 'in_hull'
  lookup = dict(zip(map(tuple, hull['centers']), hull['counts']))
  assert [lookup[tuple(c)] for c in gamut['centers']] == list(gamut['counts'])
  assert hull['counts'].sum() == gamut['counts'].sum() == images[..., 0].size
  np.testing.assert_allclose(hull['prior'].sum(), 1.0)
  with pytest.raises(ValueError, match='goyal_quirks'):
    color.derive_bins(images, 10, 'in_hull', goyal_quirks=True)
  with pytest.raises(ValueError, match='lattice'):     # Grid 52: points past +-104.
    color.in_hull_cells(52)


def _random_images(seed, n=6, size=8):
  """Colourful images with clustered hues plus one exactly grey and one near-grey image."""
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, (n, 1, 1, 3))
  imgs = np.clip(base + rng.integers(-40, 41, (n, size, size, 3)), 0, 255)
  grey = np.repeat(rng.integers(0, 256, (1, size, size, 1)), 3, axis=-1)
  near = np.clip(grey + rng.integers(-1, 2, grey.shape), 0, 255)
  return np.concatenate([imgs, grey, near]).astype(np.uint8)


@pytest.mark.parametrize('grid', [5, 10, 20])
def test_data_rule_matches_histogram(grid):
  images = _random_images(3)
  ab = _sk_lab(images)[..., 1:].reshape(-1, 2)
  n = int(np.ceil(128 / grid - 0.5))
  edges = (np.arange(-n, n + 2) - 0.5) * grid
  hist, _, _ = np.histogram2d(ab[:, 0], ab[:, 1], bins=[edges, edges])
  out = color.derive_bins(images, grid, 'data')
  ia, ib = np.nonzero(hist)            # a-major order, as the module promises.
  np.testing.assert_array_equal(out['centers'], np.stack([(ia - n) * grid, (ib - n) * grid], -1))
  np.testing.assert_array_equal(out['counts'], hist[ia, ib])
  np.testing.assert_allclose(out['prior'], hist[ia, ib] / ab.shape[0])
  assert out['num_bins'] == len(ia) and out['num_dropped'] == 0


@pytest.mark.parametrize('grid', [10, 15, 20])
def test_goyal_quirks_reproduce_histogram2d(grid):
  edges = np.arange(-128, 128, grid)
  # Values on and past the last edge (122 for grid 10), on the first edge, below it.
  ab = np.array([[edges[-1], 0.0], [edges[-1] + 0.5, 0.0], [0.0, 127.9], [-128.0, -128.0],
                 [-128.5, 3.0], [3.0, 3.0], [9.99, -0.01]])
  ab = np.concatenate([ab, np.random.default_rng(4).uniform(-135, 135, (500, 2))])
  hist, _, _ = np.histogram2d(ab[:, 0], ab[:, 1], bins=[edges, edges])
  cells = color._cell_index(ab, grid, goyal_quirks=True)
  nb = len(edges) - 1
  np.testing.assert_array_equal(np.bincount(cells[cells >= 0], minlength=nb * nb),
                                hist.ravel())
  assert (cells < 0).sum() == len(ab) - hist.sum() > 0
  # On images: class coordinates are the lower edges of the non-empty bins.
  images = _random_images(5)
  iab = _sk_lab(images)[..., 1:].reshape(-1, 2)
  hist, _, _ = np.histogram2d(iab[:, 0], iab[:, 1], bins=[edges, edges])
  out = color.derive_bins(images, grid, 'data', goyal_quirks=True)
  ia, ib = np.nonzero(hist)
  np.testing.assert_array_equal(out['centers'], np.stack([edges[ia], edges[ib]], -1))
  np.testing.assert_array_equal(out['counts'], hist[ia, ib])
  with pytest.raises(ValueError, match='goyal_quirks'):
    color.derive_bins(images, grid, 'in_gamut', goyal_quirks=True)


def test_in_gamut_prior_comes_from_data_and_weights_stay_finite():
  images = _random_images(6)
  data = color.derive_bins(images, 10, 'data')
  gamut = color.derive_bins(images, 10, 'in_gamut')
  assert gamut['num_bins'] == len(color.in_gamut_cells(10)) > data['num_bins']
  # Same counts where the data has pixels, zero elsewhere.
  lookup = dict(zip(map(tuple, gamut['centers']), gamut['counts']))
  assert [lookup[tuple(c)] for c in data['centers']] == list(data['counts'])
  assert gamut['counts'].sum() == data['counts'].sum() == images[..., 0].size
  assert (gamut['prior'] == 0).sum() > 100
  for smooth in (True, False):
    w = color.rebalance_weights(gamut['prior'], gamut['centers'], smooth=smooth)
    assert np.isfinite(w).all() and (w > 0).all()


def test_grey_images_counted_and_excluded():
  images = _random_images(7)
  ab = np.asarray(color.rgb_to_lab(images))[..., 1:]
  grey = np.asarray(color.grey_mask(ab))
  assert list(grey[-2:]) == [True, True] and grey.sum() == 2
  full = color.derive_bins(images, 10, 'data')
  kept = color.derive_bins(images, 10, 'data', exclude_grey=True)
  assert full['num_grey_images'] == kept['num_grey_images'] == 2
  ref = color.derive_bins(images[~grey], 10, 'data')
  np.testing.assert_array_equal(kept['centers'], ref['centers'])
  np.testing.assert_array_equal(kept['counts'], ref['counts'])


def test_grey_mask_hand_cases():
  ab = np.zeros((4, 3, 3, 2), np.float32)
  ab[1, 0, 0, 0] = 5.0           # |a| = 5 is still grey ("at most 5").
  ab[2, 2, 1, 1] = -5.01         # One pixel past the threshold: colourful.
  ab[3] = 4.0
  ab[3, 1, 1, 0] = 6.0
  np.testing.assert_array_equal(color.grey_mask(ab), [True, True, False, False])
  np.testing.assert_array_equal(color.grey_mask(ab, threshold=6.0), [True, True, True, True])
  with pytest.raises(ValueError, match='B, ..., 2'):
    color.grey_mask(np.zeros((3,)))


# ---------------------------------------------------------------- soft encoding

def _brute_soft(ab, centers, k, sigma):
  d2 = ((ab[:, None, :].astype(np.float64) - centers[None]) ** 2).sum(-1)
  order = np.argsort(d2, axis=1, kind='stable')[:, :k]
  out = np.zeros_like(d2)
  for i in range(len(ab)):
    w = np.exp(-d2[i, order[i]] / (2 * sigma ** 2))
    out[i, order[i]] = w / w.sum()
  return out, order[:, 0]


@pytest.mark.parametrize('k', [1, 2, 5, 10])
def test_soft_encode_matches_brute_force(k):
  centers = color.ab_grid_cells(10)[color.in_gamut_cells(10)]
  rng = np.random.default_rng(8)
  ab = rng.uniform(-100, 100, (3, 7, 11, 2)).astype(np.float32)
  enc = jax.jit(functools.partial(color.soft_encode, k=k, return_nearest=True))
  q, nearest = enc(ab, centers)
  q, nearest = np.asarray(q), np.asarray(nearest)
  assert q.shape == (3, 7, 11, len(centers)) and q.dtype == np.float32
  ref, ref_nearest = _brute_soft(ab.reshape(-1, 2), centers, k, 5.0)
  np.testing.assert_allclose(q.reshape(-1, len(centers)), ref, atol=1e-5)
  np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-6)
  assert ((q > 0).sum(-1) <= k).all()
  np.testing.assert_array_equal(nearest.ravel(), ref_nearest)
  np.testing.assert_array_equal(q.argmax(-1), nearest)     # Most weight on the nearest bin.
  np.testing.assert_array_equal(nearest, color.nearest_bin(ab, centers))
  if k == 1:
    np.testing.assert_array_equal(q, np.eye(len(centers))[nearest])
  w = color.rebalance_weights(np.ones(len(centers)), centers)
  np.testing.assert_allclose(color.pixel_weights(nearest, w), w[nearest])


def test_soft_encode_all_bins_and_far_pixels():
  centers = color.ab_grid_cells(20)
  ab = np.array([[3.0, -7.0], [400.0, 400.0], [-1e4, 0.0]], np.float32)
  q_all = np.asarray(color.soft_encode(ab, centers, k=len(centers)))
  ref, _ = _brute_soft(ab[:1], centers, len(centers), 5.0)
  np.testing.assert_allclose(q_all[:1], ref, atol=1e-6)
  # Far from every bin: rows stay valid (no 0/0), on the nearest (corner) bin.
  for k in (3, len(centers)):
    q = np.asarray(color.soft_encode(ab, centers, k=k))
    assert np.isfinite(q).all()
    np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-6)
  for bad in (0, len(centers) + 1, 2.5):
    with pytest.raises(ValueError, match='k='):
      color.soft_encode(ab, centers, k=bad)


def test_decode_of_encode_at_t1_is_close():
  """Annealed mean at T=1 of the soft target recovers ab.

  Bias bound for the full Gaussian histogram on a grid of step g: the mean of a
  lattice-sampled Gaussian is off by at most about (4 pi sigma^2 / g) *
  exp(-2 pi^2 sigma^2 / g^2) = 0.23 for sigma 5, g 10 (Poisson summation).
  """
  centers = color.ab_grid_cells(10)
  ab = np.random.default_rng(9).uniform(-60, 60, (500, 2)).astype(np.float32)
  bound = 4 * np.pi * 25 / 10 * np.exp(-2 * np.pi ** 2 * 25 / 100)
  errs = {}
  for k in (1, 5, 10, len(centers)):
    q = color.soft_encode(ab, centers, k=k)
    errs[k] = np.abs(np.asarray(color.annealed_mean(jnp.log(q), centers, 1.0)) - ab).max()
  assert errs[len(centers)] < bound + 1e-3 and errs[10] < bound + 0.05
  assert errs[5] < 1.0
  assert errs[1] <= 5.0 + 1e-4          # Hard assignment: within half a cell per axis.


def test_annealed_mean_matches_numpy():
  centers = color.ab_grid_cells(20)
  logits = np.random.default_rng(10).normal(0, 3, (4, len(centers))).astype(np.float32)
  for t in (1.0, 0.38):
    z = np.exp(logits / t - (logits / t).max(-1, keepdims=True))
    ref = (z / z.sum(-1, keepdims=True)) @ centers
    np.testing.assert_allclose(color.annealed_mean(logits, centers, t), ref, atol=1e-3)
  # T -> 0 gives the mode.
  np.testing.assert_allclose(color.annealed_mean(logits, centers, 1e-3),
                             centers[logits.argmax(-1)], atol=1e-3)


# ---------------------------------------------------------------- rebalancing

def test_smooth_prior_matches_gaussian_filter():
  grid, n = 10, 13
  centers = color.ab_grid_cells(grid)
  rng = np.random.default_rng(11)
  prior = rng.uniform(0, 1, len(centers)) * (rng.uniform(size=len(centers)) < 0.5)
  ref = ndimage.gaussian_filter(prior.reshape(2 * n + 1, 2 * n + 1), sigma=5.0 / grid,
                                mode='constant', truncate=20.0).ravel()
  np.testing.assert_allclose(color.smooth_prior(prior, centers, 5.0), ref / ref.sum(), rtol=1e-9)


@pytest.mark.parametrize('smooth', [True, False])
def test_rebalance_weights_expectation_and_formula(smooth):
  centers = color.ab_grid_cells(15)
  rng = np.random.default_rng(12)
  counts = rng.integers(0, 1000, len(centers)) * (rng.uniform(size=len(centers)) < 0.3)
  w = color.rebalance_weights(counts, centers, lam=0.5, smooth=smooth)
  p = color.smooth_prior(counts, centers) if smooth else counts / counts.sum()
  assert w.dtype == np.float32 and np.isfinite(w).all()
  np.testing.assert_allclose((p * w).sum(), 1.0, rtol=1e-5)
  mix = 0.5 * p + 0.5 / len(p)
  np.testing.assert_allclose(w, (1 / mix) / (p / mix).sum(), rtol=1e-5)
  # Rarer bins get larger weights.
  assert np.all(np.diff(w[np.argsort(p)]) <= 1e-6 * w.max())


def test_rebalance_weights_empty_bins_and_errors():
  prior = np.array([0.5, 0.5, 0.0, 0.0])
  w = color.rebalance_weights(prior, smooth=False)
  np.testing.assert_allclose(w, [1.0, 1.0, 3.0, 3.0], rtol=1e-6)   # Hand-worked, lam 0.5, Q 4.
  with pytest.raises(ValueError, match='infinite'):
    color.rebalance_weights(prior, lam=0.0, smooth=False)
  np.testing.assert_allclose(color.rebalance_weights([1.0, 3.0], lam=0.0, smooth=False),
                             [2.0, 2 / 3], rtol=1e-6)
  with pytest.raises(ValueError, match='lam'):
    color.rebalance_weights(prior, lam=1.5, smooth=False)
  with pytest.raises(ValueError, match='centers'):
    color.rebalance_weights(prior)
  with pytest.raises(ValueError, match='non-negative'):
    color.rebalance_weights([1.0, -1.0], smooth=False)


# ---------------------------------------------------------------- cache and validation

def test_get_bins_caches_on_disk(tmp_path, monkeypatch):
  monkeypatch.setenv('SSL_JAX_CACHE', str(tmp_path))
  images = _random_images(13)
  calls = []

  def images_fn():
    calls.append(1)
    return [images[:3], images[3:]]     # An iterable of batches.

  first = color.get_bins('synthetic:train[:8]', images_fn, 10, 'in_gamut')
  second = color.get_bins('synthetic:train[:8]', images_fn, 10, 'in_gamut')
  assert len(calls) == 1 and (first['how'], second['how']) == ('built', 'loaded')
  assert first['cache'].startswith(str(tmp_path / 'color_bins'))
  for key in ('centers', 'counts', 'prior'):
    np.testing.assert_array_equal(first[key], second[key])
  assert second['num_bins'] == len(second['centers']) == len(color.in_gamut_cells(10))
  color.get_bins('synthetic:train[:8]', images_fn, 10, 'data')
  color.get_bins('synthetic:train[:8]', images_fn, 10, 'in_gamut', rebuild=True)
  assert len(calls) == 3
  ref = color.derive_bins(images, 10, 'in_gamut')
  np.testing.assert_array_equal(second['counts'], ref['counts'])


def _damage(kind, npz, meta):
  """Spoils a bins cache entry (npz + json) or a bins file in one way of its kind."""
  with np.load(npz) as z:
    arrays = {k: z[k] for k in z.files}
  q = len(arrays['centers'])
  if kind == 'not_a_zip':
    with open(npz, 'wb') as f:
      f.write(b'these bytes are no zip archive\n' * 10)
  elif kind == 'zip_magic_then_garbage':
    with open(npz, 'wb') as f:
      f.write(b'PK\x03\x04' + bytes(range(256)) * 4)
  elif kind == 'truncated':
    data = open(npz, 'rb').read()
    with open(npz, 'wb') as f:
      f.write(data[:len(data) // 2])
  elif kind == 'empty_file':
    open(npz, 'wb').close()
  elif kind == 'single_npy':
    with open(npz, 'wb') as f:
      np.save(f, arrays['centers'])
  elif kind == 'pickled_objects':
    np.savez(npz, **dict(arrays, centers=np.array([object()] * q)), allow_pickle=True)
  elif kind == 'directory':
    os.remove(npz)
    os.mkdir(npz)
  elif kind == 'missing_npz':
    os.remove(npz)
  elif kind.startswith('json_'):
    if kind == 'json_missing':
      os.remove(meta)
    else:
      with open(meta) as f:
        info = json.load(f)
      text = {'json_garbage': '{"grid": 10,', 'json_list': '[1, 2]',
              'json_num_bins': json.dumps(dict(info, num_bins=q + 1)),
              'json_other_dataset': json.dumps(dict(info, dataset='x'))}[kind]
      with open(meta, 'w') as f:
        f.write(text)
  else:
    bad = dict(arrays)
    if kind == 'missing_prior':
      del bad['prior']
    elif kind == 'string_centers':
      bad['centers'] = np.array(['a'] * q)
    elif kind == 'centers_shape':
      bad['centers'] = np.zeros((q, 3), np.float32)
    elif kind == 'prior_shape':
      bad['prior'] = bad['prior'][:-1]
    elif kind == 'nan_prior':
      bad['prior'] = np.where(np.arange(q) == 0, np.nan, bad['prior'])
    elif kind == 'inf_centers':
      bad['centers'] = np.where(np.arange(q)[:, None] == 1, np.inf, bad['centers'])
    elif kind == 'negative_counts':
      bad['counts'] = -bad['counts']
    elif kind == 'prior_not_counts':
      bad['prior'] = bad['prior'][::-1]
    elif kind == 'centers_off_lattice':
      bad['centers'] = bad['centers'] + 0.5
    elif kind == 'repeated_centers':
      bad['centers'] = np.repeat(bad['centers'][:1], q, axis=0)
    else:
      raise AssertionError(kind)
    np.savez(npz, **bad)


CACHE_DAMAGE = ('not_a_zip', 'zip_magic_then_garbage', 'truncated', 'empty_file', 'single_npy',
                'pickled_objects', 'directory', 'missing_npz', 'json_missing', 'json_garbage',
                'json_list', 'json_num_bins', 'json_other_dataset', 'missing_prior',
                'string_centers', 'centers_shape', 'prior_shape', 'nan_prior', 'inf_centers',
                'negative_counts', 'prior_not_counts', 'centers_off_lattice',
                'repeated_centers')


@pytest.mark.parametrize('rule', ['data', 'in_hull'])
@pytest.mark.parametrize('kind', CACHE_DAMAGE)
def test_unusable_cache_is_rebuilt_with_a_warning(tmp_path, caplog, kind, rule):
  """A cache is derived data: whatever is wrong with it, get_bins rebuilds it (warning
  naming the file) and the rebuilt entry then loads."""
  images = _random_images(17)
  calls = []

  def images_fn():
    calls.append(1)
    return images

  key, cache = 'synthetic:damage', str(tmp_path)
  first = color.get_bins(key, images_fn, 10, rule, cache_dir=cache)
  _damage(kind, first['cache'] + '.npz', first['cache'] + '.json')
  assert color.cached_bins(key, 10, rule, cache_dir=cache) is None
  with caplog.at_level('WARNING'):
    again = color.get_bins(key, images_fn, 10, rule, cache_dir=cache)
  assert again['how'] == 'built' and len(calls) == 2
  assert 'unusable and will be rebuilt' in caplog.text and first['cache'] in caplog.text
  for name in ('centers', 'counts', 'prior'):
    np.testing.assert_array_equal(again[name], first[name])
  if kind != 'directory':  # A directory cannot be replaced by the file: rebuilt each time.
    assert color.get_bins(key, images_fn, 10, rule, cache_dir=cache)['how'] == 'loaded'
    assert len(calls) == 2
  assert not [f for f in os.listdir(cache) if '.tmp' in f]   # No temporary files left.


# A user's file has no lattice or metadata, `counts` alone is enough, and its prior need
# not be counts / total (it may be smoothed).
USER_FILE_DAMAGE = tuple(k for k in CACHE_DAMAGE if not k.startswith('json_') and k not in (
    'centers_off_lattice', 'directory', 'missing_prior', 'prior_not_counts'))


@pytest.mark.parametrize('kind', USER_FILE_DAMAGE + ('zero_prior', 'fractional_counts',
                                                     'no_prior_nor_counts'))
def test_read_bins_file_rejects_each_fault_in_one_line(tmp_path, kind):
  path = str(tmp_path / 'bins.npz')
  bins = color.derive_bins(_random_images(18), 10, 'data')
  np.savez(path, **{k: bins[k] for k in ('centers', 'counts', 'prior')})
  ok = color.read_bins_file(path)
  np.testing.assert_array_equal(ok['centers'], bins['centers'])
  np.testing.assert_allclose(ok['prior'], bins['prior'])
  if kind == 'zero_prior':
    np.savez(path, centers=bins['centers'], prior=np.zeros(bins['num_bins']))
  elif kind == 'fractional_counts':
    np.savez(path, centers=bins['centers'], counts=bins['counts'] + 0.5)
  elif kind == 'no_prior_nor_counts':
    np.savez(path, centers=bins['centers'], weights=bins['prior'])
  else:
    _damage(kind, path, None)
  with pytest.raises(color.BinsFileError) as info:
    color.read_bins_file(path)
  message = str(info.value)
  assert isinstance(info.value, ValueError) and '\n' not in message and path in message
  # Counts alone (no prior) are a valid file; so is a prior other than counts / total.
  np.savez(path, centers=bins['centers'], counts=bins['counts'])
  np.testing.assert_allclose(color.read_bins_file(path)['prior'], bins['prior'])
  np.savez(path, centers=bins['centers'], counts=bins['counts'], prior=bins['prior'][::-1])
  np.testing.assert_allclose(color.read_bins_file(path)['prior'], bins['prior'][::-1])


def test_rebalance_weights_average_one_under_the_prior_they_were_normalised_with():
  """smooth=False: the mean weight over the pixels the prior counts is 1; smooth=True
  (the default, Zhang's): 1 under the smoothed prior, not under the pixels."""
  centers = color.ab_grid_cells(10)
  rng = np.random.default_rng(22)
  counts = np.zeros(len(centers))
  busy = rng.choice(len(centers), 40, replace=False)
  counts[busy] = np.floor(rng.pareto(1.0, 40) * 1000) + 1   # A few very common bins.
  raw = counts / counts.sum()
  w_raw = color.rebalance_weights(counts, centers, smooth=False)
  w_smooth = color.rebalance_weights(counts, centers, smooth=True)
  np.testing.assert_allclose((raw * w_raw).sum(), 1.0, rtol=1e-6)
  np.testing.assert_allclose((color.smooth_prior(counts, centers) * w_smooth).sum(), 1.0,
                             rtol=1e-6)
  # The pixel mean of the smoothed-prior weights (brute force over the pixels) is below 1.
  pixels = np.repeat(np.arange(len(centers)), counts.astype(np.int64))
  assert w_smooth[pixels].mean() == pytest.approx((raw * w_smooth).sum(), rel=1e-4)
  assert w_smooth[pixels].mean() < 0.95
  assert w_raw[pixels].mean() == pytest.approx(1.0, rel=1e-4)


def test_color_bins_command_line(tmp_path, monkeypatch, capsys):
  """python -m ssl_jax.tools.color_bins fills the cache get_bins reads; the task module
  itself has no command line."""
  from ssl_jax.tools import color_bins  # pylint: disable=g-import-not-at-top
  images = _random_images(19)
  seen = []

  def fake_images(config, split_name, max_images):
    seen.append((config.data.name, split_name, max_images))
    return [images[:4], images[4:]]

  monkeypatch.setattr(color, 'dataset_images', fake_images)
  argv = ['--dataset', 'cifar10', '--grid', '10', '20', '--rule', 'data', 'in_hull',
          '--max_images', '8', '--cache_dir', str(tmp_path)]
  assert color_bins.main(argv) == 0
  out = capsys.readouterr().out
  assert seen == [('cifar10', 'train', 8)]                  # Loaded once for 4 bin sets.
  assert out.count(' bins (built;') == 4
  for rule, grid in (('data', 10), ('in_hull', 10), ('in_hull', 20)):
    ref = color.derive_bins(images, grid, rule)
    name = color.dataset_key(common.data_config('cifar10'), 'train', 8)
    got = color.cached_bins(name, grid, rule, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(got['centers'], ref['centers'])
    np.testing.assert_array_equal(got['counts'], ref['counts'])
    assert f'rule={rule} grid={grid}: {ref["num_bins"]} bins' in out
  assert 'in_hull grid=10: 313 bins' in out
  assert color_bins.main(argv) == 0 and capsys.readouterr().out.count('(loaded;') == 4
  assert len(seen) == 1
  for bad in (['--dataset', 'nope'], ['--dataset', 'cifar10', '--grid', '0'],
              ['--dataset', 'cifar10', '--rule', 'in_hull', '--goyal_quirks']):
    with pytest.raises(SystemExit):
      color_bins.main(bad)
  assert not hasattr(color, 'main')


def test_bad_arguments():
  images = _random_images(14, n=1)
  with pytest.raises(ValueError, match='grid='):
    color.derive_bins(images, 0)
  with pytest.raises(ValueError, match='rule='):
    color.derive_bins(images, 10, 'hull')
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    color.derive_bins(images / 100.0, 10)
  with pytest.raises(ValueError, match='RGB'):
    color.derive_bins(images[..., :2], 10)


def test_float_images_and_histogram_input_give_the_same_bins():
  images = _random_images(15)
  ref = color.derive_bins(images, 15, 'data')
  hist = color.colour_histogram(images)
  assert hist['counts'].sum() == images[..., 0].size and hist['num_grey_images'] == 2
  for source in (images / 255.0, images.astype(np.float32) / 255.0, hist, [images[:2], images[2:]]):
    out = color.derive_bins(source, 15, 'data')
    np.testing.assert_array_equal(out['centers'], ref['centers'])
    np.testing.assert_array_equal(out['counts'], ref['counts'])
  with pytest.raises(ValueError, match='exclude_grey'):
    color.derive_bins(hist, 15, 'data', exclude_grey=True)


def test_module_does_not_import_tensorflow():
  code = ('import sys, ssl_jax.tasks.color; '
          'assert not [m for m in sys.modules if m.startswith(("tensorflow", "input_pipeline"))]')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, '-c', code], check=True, cwd=root)
