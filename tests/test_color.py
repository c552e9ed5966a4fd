"""Tests of ssl_jax.tasks.color against skimage, NumPy brute force and SciPy."""
import functools
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage import color as skcolor

from ssl_jax.tasks import color


def _primaries():
  corners = np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)])
  greys = np.repeat(np.array([1, 2, 10, 128, 254])[:, None], 3, axis=1)
  return np.concatenate([corners, greys]).astype(np.uint8)


def _sk_lab(rgb_u8):
  return skcolor.rgb2lab(rgb_u8.reshape(-1, 1, 3)).reshape(rgb_u8.shape)


@functools.lru_cache(maxsize=1)
def _sk_cells_all_colours():
  """{grid: set of (i, j)}: the cells (centred on multiples of grid) that skimage's
  ab of all 256^3 sRGB colours reach, for every preset grid (about 3 s)."""
  v = np.arange(256, dtype=np.uint8)
  occupied = {g: np.zeros((401, 401), bool) for g in color.GRIDS}
  for r in range(0, 256, 16):
    rgb = np.stack(np.meshgrid(np.arange(r, r + 16, dtype=np.uint8), v, v, indexing='ij'), -1)
    ab = _sk_lab(rgb.reshape(-1, 3))[:, 1:]
    for g, occ in occupied.items():
      idx = np.round(ab / g).astype(np.int64) + 200
      occ[idx[:, 0], idx[:, 1]] = True
  return {g: {(i - 200, j - 200) for i, j in zip(*np.nonzero(occ))}
          for g, occ in occupied.items()}


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
  """The in-gamut rule on a full-gamut image set vs skimage over all 256^3 colours.

  Zhang's 313 at grid 10 is not reproduced by any cell definition (module
  docstring); the rule must find exactly the cells 8-bit sRGB reaches.
  """
  sk_cells = _sk_cells_all_colours()
  for grid in color.GRIDS:
    ref = sk_cells[grid]
    got = _centre_set(color.ab_grid_cells(grid)[color.in_gamut_cells(grid)], grid)
    assert got == ref, grid
  # A synthetic full-gamut image set: the RGB cube's surface plus random interior colours.
  rng = np.random.default_rng(2)
  images = np.concatenate([color.srgb_surface_colours(),
                           rng.integers(1, 255, (9848, 3)).astype(np.uint8)]).reshape(100, 40, 100, 3)
  ref10 = sk_cells[10]
  gamut = color.derive_bins(images, 10, 'in_gamut')
  data = color.derive_bins(images, 10, 'data')
  assert gamut['num_bins'] == data['num_bins'] == len(ref10)
  assert _centre_set(gamut['centers'], 10) == _centre_set(data['centers'], 10) == ref10
  np.testing.assert_array_equal(gamut['counts'], data['counts'])
  assert gamut['counts'].sum() == images.shape[0] * 40 * 100


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
