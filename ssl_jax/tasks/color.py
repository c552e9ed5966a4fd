"""Colour maths for the colorization pretext task (Zhang et al. 2016; Goyal et al. 2019).

Pure functions, no TensorFlow: sRGB <-> CIE Lab, the ab bins (derived from data,
cached), soft encoding of ab targets, class rebalancing, the grey-image mask and
annealed-mean decoding. The JAX functions are jittable; bin derivation runs on
the host in NumPy (float64). Units: L in [0, 100], a and b in CIE units (sRGB
colours have a in [-86.2, 98.3] and b in [-107.9, 94.5]).

Lab conversion
  sRGB (IEC 61966-2-1 transfer curve), D65 white, 2 degree observer, the same
  constants as `skimage.color.rgb2lab` / `lab2rgb` (matched to 1e-3 in tests;
  float32 here). Goyal's benchmark converted with OpenCV's 8-bit Lab after
  resizing every image to 256x256: L*255/100, a+128 and b+128 rounded to uint8,
  so their a, b are integers and their L steps by 100/255. We do not reproduce
  that (no OpenCV, no 256x256 resize): bins are counted on float Lab at the
  dataset's own resolution, so pixels near a cell edge can fall on the other
  side (the size of that difference has not been measured).

Cell geometry (decision)
  Cell (i, j) of grid size g is the square [g*i - g/2, g*i + g/2) x
  [g*j - g/2, g*j + g/2): centres on multiples of g, the lattice of Zhang's
  313 points (multiples of 10). The index range is |i|, |j| <= ceil(128/g - 1/2),
  which covers the whole ab range [-128, 128] (OpenCV's 8-bit range; sRGB stays
  within +-110), and anything beyond is clipped into the edge cells, so no
  pixel is ever dropped. `ab_grid_cells(g)` lists every cell centre.

Bin rules (derive_bins; get_bins caches them per dataset; the command line
python -m ssl_jax.tools.color_bins fills the cache)
  Bins come from one pass that counts pixels per 8-bit colour
  (colour_histogram; float images are rounded to 8 bits), then any grid and
  rule follows in about a second. Whatever the rule, the prior comes from the
  data's pixels (bins no pixel reaches get prior 0; the lambda/Q term keeps
  their weight finite).
  'data' (Goyal): every cell that holds at least one training pixel.
  'in_gamut': every cell that holds the ab of at least one 8-bit sRGB colour,
    whatever the data. Computed from the 390,152 colours on the surface of the
    RGB cube (srgb_surface_colours), which reach exactly the same cells as all
    256^3 colours at grids 5, 10, 15 and 20 (tests check this against skimage
    on all 256^3 colours).
  'in_hull' (Zhang's 313 at grid 10): H = the 2-D convex hull of the ab of all
    8-bit sRGB colours (srgb_ab_hull); keep every cell [g*i, g*i + g) x
    [g*j, g*j + g) whose closed square meets H; the bins are all the corners of
    those cells, i.e. the multiples of g within Chebyshev distance g of H
    (hull_chebyshev_distance). They lie on the same lattice as the other
    rules' centres and contain every 'in_gamut' bin (a cell holding a colour
    has its centre within g/2 of H), so pixels are counted in the same cells.
    At grid 10 this is exactly Zhang's pts_in_hull: 313 points from 272 cells,
    a in [-90, 100], b in [-110, 100], the row a = -90 holding b = 50..90
    (his file starts at (-90, 50), richzhang/colorization#23); the hull of the
    313 points has 16 vertices and no other grid point inside it. The set does
    not hang on rounding: the included points reach distance 9.726 (at
    (-30, -50)), the excluded ones start at 10.070 (at (80, 80)), so any
    half-width in [9.73, 10.07) gives it. H is computed from the 3,056 colours
    on the 12 edges of the RGB cube (srgb_edge_colours): every vertex of the
    hull of all 256^3 colours (514 of them, skimage's constants, D65) is a
    cube-edge colour (the corners and the edges green-cyan-blue), so the two
    hulls are the same polygon (tests check it against skimage on all 256^3).
  Bin counts measured on all 256^3 sRGB colours (skimage Lab):
    grid                                         5     10    15    20
    'in_gamut': centres on multiples of g       969    261   126    77
    lower edges on multiples of g              973    268   127    79
    Goyal's edges -128 + g*k                   972    262   124    75
    grid points inside the convex hull         925    233   103    59
    'in_hull': within Chebyshev g of the hull  1083    313   159   101
  (cells meeting the hull for 'in_hull': 1003, 272, 130, 79). The 261
  'in_gamut' bins at grid 10 are Zhang's 313 less 52 rim points.

Goyal's quirks (`goyal_quirks=True` reproduces them for the 'data' rule; off by default)
  - Histogram edges arange(-128, 128, g) (np.histogram2d semantics: half-open
    bins, the last one closed): they stop short of 128 (122 for g=10, 112 for
    g=20) and values above the last edge are silently dropped. For sRGB sources
    (|a|, |b| < 110) this drops nothing in practice.
  - The class coordinate is the cell's lower edge (-128 + g*k), offset from
    Zhang's lattice by up to g/2, so a pixel's nearest class centre is not
    always its histogram cell.
  - Zero-count bins giving infinite rebalancing weights (Time0o/
    colorful-colorization#39) cannot happen in Goyal's rule (only non-empty bins
    are kept); here `rebalance_weights` stays finite for any prior when
    lambda > 0 and raises for lambda = 0 with empty bins.

Targets (Zhang 2016, Sec. 2.1-2.3)
  Soft encoding: the K nearest bin centres, weighted by a Gaussian of
  sigma = 5 on the distance and normalised to sum 1 (K = 5 in the paper, 10 in
  the released training layer, 2..Q in Goyal's sweep; K = 1 is the hard
  assignment). Rebalancing: w ~ ((1 - lambda) p + lambda / Q)^-alpha with
  lambda = 0.5, alpha = 1, p the prior smoothed by a Gaussian of sigma = 5
  (Zhang) or raw (Goyal), normalised so that sum_q p_q w_q = 1 with that same
  p; each pixel takes the weight of its nearest bin (the argmax of its soft
  target). So the weights average 1 under the prior they were normalised with:
  with the raw prior (smooth=False) that is the training pixels' distribution;
  with the smoothed one (Zhang's, the default) the pixels' mean weight is
  sum_q raw_q w_q, which is not 1: below it where the raw prior is more
  concentrated than the smoothed one on the common bins, whose weights are
  small. Measured on CIFAR-10 train[:45000] at 32 px, 'data' rule: 0.84 / 0.86 /
  0.96 / 1.00 at grid 5 / 10 / 15 / 20 (in_hull at grid 10: 0.86). Images whose
  every |a| and |b| is <= 5 are grey and get weight 0. Decoding for pictures:
  annealed mean, T = 0.38.

Cache (get_bins, cached_bins)
  One .npz (centers, counts, prior) and one .json (everything else) per
  dataset, grid, rule and options, written atomically. The cache is derived
  data: an entry that cannot be read or fails any check (a missing half, not a
  zip, truncated, arrays missing or of the wrong shape or dtype, non-finite or
  negative values, a prior that is not counts / total, centres that are not
  the rule's bins on its lattice, metadata of other arguments) is rebuilt with
  a warning naming the file and the reason. A bins file given by the user
  (read_bins_file, the task's bins_from='file') gets the checks that apply to
  it but raises a one-line ValueError naming the file instead.
"""
import functools
import hashlib
import json
import math
import os
import re
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

GRIDS = (5, 10, 15, 20)
RULES = ('data', 'in_gamut', 'in_hull')
AB_RANGE = 128.0        # Cells cover [-128, 128]: OpenCV's 8-bit ab range.
GREY_THRESHOLD = 5.0    # Zhang's non-grey mask: grey iff every |a|, |b| <= 5.
_CACHE_VERSION = 1      # Bump when the derivation changes; it is part of the file name.

# sRGB primaries -> CIE XYZ (D65), and D65 reference white (2 degree observer):
# the constants skimage.color uses.
_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]])
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


# --------------------------------------------------------------------------
# sRGB <-> Lab
# --------------------------------------------------------------------------

def _rgb01_to_lab(rgb, xp):
  """Lab of float sRGB in [0, 1] (values outside are extrapolated), array module xp."""
  lin = xp.where(rgb > 0.04045,
                 ((xp.maximum(rgb, 0.04045) + 0.055) / 1.055) ** 2.4,
                 rgb / 12.92)
  xyz = (lin @ _XYZ_FROM_RGB.T.astype(rgb.dtype)) / _WHITE_D65.astype(rgb.dtype)
  f = xp.where(xyz > 0.008856, xp.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
  fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
  return xp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def _as_rgb01(rgb, xp, dtype):
  if rgb.shape[-1:] != (3,):
    raise ValueError(f'rgb must have a last axis of 3 channels, got shape {rgb.shape}')
  if rgb.dtype == np.uint8:
    return rgb.astype(dtype) / 255.0
  if not xp.issubdtype(rgb.dtype, xp.floating):
    raise ValueError(f'rgb dtype {rgb.dtype} not supported; allowed: uint8 (0..255) '
                     'or float (0..1)')
  return rgb.astype(dtype)


@jax.jit
def rgb_to_lab(rgb):
  """sRGB to CIE Lab (D65), as `skimage.color.rgb2lab`.

  Args:
    rgb: uint8 [..., 3] in 0..255, or float [..., 3] in [0, 1] (not clipped:
      values outside are extrapolated as skimage does).
  Returns:
    float32 [..., 3]: L in [0, 100], a, b in CIE units (sRGB gamut: a in
    [-86.2, 98.3], b in [-107.9, 94.5]). Jitted.
  Raises:
    ValueError: last axis is not 3, or an integer dtype other than uint8.
  """
  rgb = jnp.asarray(rgb)
  return _rgb01_to_lab(_as_rgb01(rgb, jnp, jnp.float32), jnp)


@functools.partial(jax.jit, static_argnames=('clip',))
def lab_to_rgb(lab, clip=True):
  """CIE Lab (D65) to sRGB, as `skimage.color.lab2rgb`.

  Like skimage, Z < 0 (b too large for L) is set to 0 before the XYZ -> RGB
  step, and with clip=True the result is clipped to [0, 1].

  Args:
    lab: float [..., 3]: L, a, b.
    clip: clip to [0, 1] (skimage always does); False returns linear
      extrapolation for out-of-gamut colours.
  Returns:
    float32 [..., 3] sRGB in [0, 1] (with clip). Jitted (clip static).
  """
  lab = jnp.asarray(lab, jnp.float32)
  if lab.shape[-1:] != (3,):
    raise ValueError(f'lab must have a last axis of 3 channels, got shape {lab.shape}')
  fy = (lab[..., 0] + 16.0) / 116.0
  fx = lab[..., 1] / 500.0 + fy
  fz = jnp.maximum(fy - lab[..., 2] / 200.0, 0.0)
  f = jnp.stack([fx, fy, fz], axis=-1)
  xyz = jnp.where(f > 0.2068966, f ** 3, (f - 16.0 / 116.0) / 7.787)
  lin = (xyz * _WHITE_D65.astype(np.float32)) @ _RGB_FROM_XYZ.T.astype(np.float32)
  # maximum() keeps the unused branch of the power free of NaN (and its gradient).
  rgb = jnp.where(lin > 0.0031308,
                  1.055 * jnp.maximum(lin, 0.0031308) ** (1 / 2.4) - 0.055,
                  12.92 * lin)
  return jnp.clip(rgb, 0.0, 1.0) if clip else rgb


def _lab_np(rgb):
  """Host (NumPy float64) Lab of uint8 or float [0, 1] sRGB; same maths as rgb_to_lab."""
  rgb = np.asarray(rgb)
  return _rgb01_to_lab(_as_rgb01(rgb, np, np.float64), np)


# --------------------------------------------------------------------------
# Cells and bins
# --------------------------------------------------------------------------

def _check_grid(grid):
  if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or not 1 <= grid <= 64:
    raise ValueError(f'grid={grid!r} must be an int in [1, 64] (presets {GRIDS})')
  return int(grid)


def _half_cells(grid):
  """Cells per side of 0: enough to cover [-128, 128] with centres on multiples of grid."""
  return int(math.ceil(AB_RANGE / grid - 0.5))


def ab_grid_cells(grid):
  """Centres of every ab cell of the default geometry, float32 [M, 2].

  M = (2n + 1)^2 with n = ceil(128 / grid - 1/2); centres are (grid*i, grid*j)
  for -n <= i, j <= n, in a-major order (row i*(2n+1)+j), the order of every
  bin list this module returns. For grid 10: n = 13, M = 729.
  """
  grid = _check_grid(grid)
  n = _half_cells(grid)
  k = np.arange(-n, n + 1, dtype=np.float32) * grid
  a, b = np.meshgrid(k, k, indexing='ij')
  return np.stack([a.ravel(), b.ravel()], axis=-1)


def _goyal_edges(grid):
  return np.arange(-AB_RANGE, AB_RANGE, grid, dtype=np.float64)


def _goyal_cells(grid):
  """Goyal's class coordinates (lower edges), float32 [(len(edges) - 1)^2, 2], a-major."""
  lo = _goyal_edges(grid)[:-1].astype(np.float32)
  a, b = np.meshgrid(lo, lo, indexing='ij')
  return np.stack([a.ravel(), b.ravel()], axis=-1)


def _cell_index(ab, grid, goyal_quirks=False):
  """Flat cell index int64[...] of ab float[..., 2]; -1 where a value is dropped.

  Default geometry: round to the nearest multiple of grid (ties up), clipped to
  the edge cells, never -1. Goyal: np.histogram2d's bins on arange(-128, 128,
  grid) (half-open, last bin closed); values outside the edges give -1.
  """
  if not goyal_quirks:
    n = _half_cells(grid)
    idx = np.clip(np.floor(ab / grid + 0.5), -n, n).astype(np.int64) + n
    return idx[..., 0] * (2 * n + 1) + idx[..., 1]
  edges = _goyal_edges(grid)
  nb = len(edges) - 1
  idx = np.searchsorted(edges, ab, side='right') - 1
  idx = np.where(ab == edges[-1], nb - 1, idx)
  valid = ((ab >= edges[0]) & (ab <= edges[-1])).all(axis=-1)
  return np.where(valid, idx[..., 0] * nb + idx[..., 1], -1)


def srgb_surface_colours():
  """The 390,152 distinct uint8 colours [N, 3] with at least one channel at 0 or 255."""
  full, inner, ends = np.arange(256), np.arange(1, 255), np.array([0, 255])
  # Disjoint faces: R at an end; else G at an end; else B at an end.
  parts = [(ends, full, full), (inner, ends, full), (inner, inner, ends)]
  return np.concatenate([np.stack([x.ravel() for x in np.meshgrid(*p, indexing='ij')], -1)
                         for p in parts]).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _surface_ab():
  return _lab_np(srgb_surface_colours())[:, 1:]


@functools.lru_cache(maxsize=None)
def in_gamut_cells(grid):
  """Flat indices (into ab_grid_cells(grid)) of the cells 8-bit sRGB reaches, int64 sorted.

  Exact over all 256^3 colours, computed from the cube's surface (see the
  module docstring). 969 / 261 / 126 / 77 cells at grid 5 / 10 / 15 / 20.
  """
  grid = _check_grid(grid)
  out = np.unique(_cell_index(_surface_ab(), grid))
  out.flags.writeable = False
  return out


def srgb_edge_colours():
  """The 3,056 distinct uint8 colours [N, 3] on the 12 edges of the RGB cube (at least
  two channels at 0 or 255): the 8 corners and 254 inner steps per edge."""
  full, ends = np.arange(256), np.array([0, 255])
  parts = []
  for axis in range(3):  # The edges along `axis`: the other two channels at an end.
    grids = [ends, ends, ends]
    grids[axis] = full if axis == 0 else np.arange(1, 255)  # Corners counted once.
    parts.append(np.stack([x.ravel() for x in np.meshgrid(*grids, indexing='ij')], -1))
  return np.unique(np.concatenate(parts), axis=0).astype(np.uint8)


def convex_hull_2d(points):
  """Vertices of the convex hull of float [N, 2] points, counter-clockwise, float64 [V, 2].

  Andrew's monotone chain on the lexicographically sorted distinct points; collinear
  points on an edge are not vertices. Starts at the smallest (a, b). Raises ValueError
  for fewer than 3 non-collinear points.
  """
  pts = np.unique(np.asarray(points, np.float64).reshape(-1, 2), axis=0)  # Sorted.

  def chain(seq):
    out = []
    for p in seq:
      while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1]) -
                               (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
        out.pop()
      out.append(p)
    return out[:-1]

  hull = np.array(chain(pts) + chain(pts[::-1]))
  if len(hull) < 3:
    raise ValueError(f'convex_hull_2d: {len(pts)} distinct points span no area')
  return hull


@functools.lru_cache(maxsize=1)
def srgb_ab_hull():
  """The convex hull H of the ab of all 8-bit sRGB colours: float64 [V, 2] vertices, CCW.

  Computed from srgb_edge_colours (Lab as rgb_to_lab, float64): every vertex of the
  hull over all 256^3 colours is a cube-edge colour, so the hull is the same polygon
  (module docstring; tests check it against skimage on all 256^3 colours). Read-only.
  """
  hull = convex_hull_2d(_lab_np(srgb_edge_colours())[:, 1:])
  hull.flags.writeable = False
  return hull


def hull_chebyshev_distance(points, hull):
  """Chebyshev (L-infinity) distance of points to a convex polygon, float64 [N]; 0 inside.

  For a convex set K, d_inf(p, K) = max(0, max over u with |u|_1 = 1 of u.p - h_K(u))
  (h_K the support function); the maximum is reached at an edge normal of K plus the
  square [-1, 1]^2, i.e. at an edge normal of K or an axis. So with outward edge
  normals n_k and edge offsets c_k = n_k . v_k it is the largest of
  (n_k . p - c_k) / |n_k|_1 and the four bounding-box excesses. Exact (no sampling).

  Args:
    points: float [N, 2].
    hull: float [V, 2] vertices in counter-clockwise order (convex_hull_2d).
  """
  p = np.asarray(points, np.float64).reshape(-1, 2)
  v = np.asarray(hull, np.float64)
  edge = np.roll(v, -1, axis=0) - v
  normal = np.stack([edge[:, 1], -edge[:, 0]], -1)        # Outward for CCW vertices.
  gap = (p @ normal.T - (normal * v).sum(-1)) / np.abs(normal).sum(-1)
  box = np.concatenate([v.min(0) - p, p - v.max(0)], axis=-1)
  return np.maximum(0.0, np.maximum(gap.max(-1), box.max(-1)))


@functools.lru_cache(maxsize=None)
def in_hull_cells(grid):
  """Flat indices (into ab_grid_cells(grid)) of the 'in_hull' bins, int64 sorted.

  The multiples of grid within Chebyshev distance grid of srgb_ab_hull(), i.e. the
  corners of every cell [g*i, g*i + g) x [g*j, g*j + g) whose closed square meets
  the hull: Zhang's 313 points at grid 10 (module docstring); 1083 / 313 / 159 / 101
  at grid 5 / 10 / 15 / 20. Always a superset of in_gamut_cells(grid).

  Raises:
    ValueError: a grid whose in-hull points reach past the lattice of ab_grid_cells
      (|coordinate| <= g * ceil(128 / g - 1/2)): 52 and 53 of 1..64.
  """
  grid = _check_grid(grid)
  hull = srgb_ab_hull()
  n = _half_cells(grid)
  reach = int(math.ceil(np.abs(hull).max() / grid)) + 1   # Beyond it: farther than grid.
  k = np.arange(-reach, reach + 1) * float(grid)
  a, b = np.meshgrid(k, k, indexing='ij')
  pts = np.stack([a.ravel(), b.ravel()], -1)
  keep = pts[hull_chebyshev_distance(pts, hull) <= grid]
  if np.abs(keep).max() > n * grid:
    raise ValueError(f"rule 'in_hull' at grid={grid}: its points reach "
                     f'{np.abs(keep).max():g}, past the cell lattice (+-{n * grid}); '
                     f'allowed grids include {GRIDS}')
  out = np.sort(_cell_index(keep, grid))
  out.flags.writeable = False
  return out


def rule_cells(rule, grid):
  """Flat cell indices of a data-independent rule ('in_gamut' or 'in_hull'), int64 sorted."""
  grid = _check_grid(grid)
  if rule == 'in_gamut':
    return in_gamut_cells(grid)
  if rule == 'in_hull':
    return in_hull_cells(grid)
  raise ValueError(f"rule={rule!r} has no fixed cells; allowed: 'in_gamut', 'in_hull'")


def _codes(rgb_u8):
  """24-bit colour codes uint32 [...] of uint8-valued [..., 3]."""
  rgb = np.asarray(rgb_u8)
  return ((rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8)
          | rgb[..., 2].astype(np.uint32))


def _decode_codes(codes):
  codes = np.asarray(codes, np.uint32)
  return np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255],
                  axis=-1).astype(np.uint8)


def _batches(images, batch=1024):
  """Yields uint8 [n, P, 3] from an array or an iterable of [N, ..., 3] arrays."""
  if isinstance(images, (np.ndarray, jax.Array)):
    images = [images]
  for arr in images:
    arr = np.asarray(arr)
    if arr.ndim < 2 or arr.shape[-1] != 3:
      raise ValueError(f'images must be [N, ..., 3] RGB arrays, got shape {arr.shape}')
    for i in range(0, arr.shape[0], batch):
      x = arr[i:i + batch]
      if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
          raise ValueError(f'images dtype {x.dtype} not supported; allowed: uint8, '
                           'or float in [0, 1] (rounded to 8 bits)')
        if x.size and not (x.min() >= 0 and x.max() <= 1):
          raise ValueError(f'float images must lie in [0, 1], got [{x.min()}, {x.max()}]')
        x = np.rint(x * 255.0).astype(np.uint8)
      yield x.reshape(x.shape[0], -1, 3)


def _unique_counts(codes):
  """(sorted distinct codes, counts) of a uint32 array; bincount for big arrays."""
  if codes.size < (1 << 20):
    return np.unique(codes, return_counts=True)
  hist = np.bincount(codes.ravel(), minlength=1 << 24)
  uniq = np.flatnonzero(hist)
  return uniq.astype(np.uint32), hist[uniq]


def colour_histogram(images, *, exclude_grey=False, grey_threshold=GREY_THRESHOLD):
  """One pass over a dataset: pixel counts per 8-bit sRGB colour (host, NumPy).

  Every bin set and prior (any grid, either rule) follows from it, so it is
  computed once per dataset (derive_bins accepts it in place of images).

  Args:
    images: uint8 [N, H, W, 3] (float in [0, 1] is rounded to 8 bits), or an
      iterable of such batches (any leading sizes). Every pixel counts, at the
      resolution given.
    exclude_grey: leave grey images (every |a|, |b| <= grey_threshold) out of
      the counts, as the loss masks them; default False counts every image
      (Goyal's script does). Grey images are counted either way.
    grey_threshold: CIE ab units (Zhang: 5).
  Returns:
    dict(codes=uint32 [U] distinct colours (r << 16 | g << 8 | b), counts=int64
    [U], num_images, num_grey_images, exclude_grey, grey_threshold).
  """
  hist = np.zeros(1 << 24, np.int64)    # calloc: pages are touched only where used.
  known = np.zeros(1 << 24, bool)       # Colours whose chroma has been computed...
  colourful = np.zeros(1 << 24, bool)   # ...and whether |a| or |b| > grey_threshold.
  num_images = num_grey = 0
  for x in _batches(images):
    if x.shape[0] == 0:
      continue
    codes = _codes(x)                                  # [n, P]
    uniq, counts = _unique_counts(codes)
    new = uniq[~known[uniq]]
    if new.size:
      ab = _lab_np(_decode_codes(new))[:, 1:]
      colourful[new] = (np.abs(ab) > grey_threshold).any(axis=-1)
      known[new] = True
    grey = ~colourful[codes].any(axis=1)
    num_images += x.shape[0]
    num_grey += int(grey.sum())
    if exclude_grey and grey.any():
      if grey.all():
        continue
      uniq, counts = _unique_counts(codes[~grey])
    hist[uniq] += counts
  uniq = np.flatnonzero(hist)
  return dict(codes=uniq.astype(np.uint32), counts=hist[uniq], num_images=num_images,
              num_grey_images=num_grey, exclude_grey=bool(exclude_grey),
              grey_threshold=float(grey_threshold))


def derive_bins(images, grid=10, rule='data', *, goyal_quirks=False, exclude_grey=False):
  """Derives the ab bins and their prior from a set of images (host, NumPy).

  Args:
    images: as colour_histogram, or colour_histogram's result (then
      exclude_grey must match the one it was computed with).
    grid: ab cell size (5, 10, 15 or 20 in Goyal's sweep; 10 is standard).
    rule: 'data' (Goyal: every cell holding a training pixel), 'in_gamut' (every
      cell 8-bit sRGB reaches; in_gamut_cells) or 'in_hull' (Zhang's 313 at grid
      10: the grid points within Chebyshev distance grid of the sRGB ab hull;
      in_hull_cells).
    goyal_quirks: 'data' rule only: Goyal's histogram edges (values above the
      last edge dropped) and lower-edge class coordinates.
    exclude_grey: see colour_histogram.
  Returns:
    dict(centers=float32 [Q, 2] (a-major order), counts=int64 [Q] (pixels per
    bin), prior=float64 [Q] (counts / sum; zeros for in-gamut / in-hull bins no
    pixel reaches), grid, rule, goyal_quirks, exclude_grey, num_bins=Q, num_images,
    num_pixels (counted), num_dropped (pixels outside Goyal's edges),
    num_grey_images).
  Raises:
    ValueError: bad grid, rule, dtype or range, no pixels for the 'data' rule, or
      'in_hull' at a grid whose points leave the lattice (in_hull_cells).
  """
  grid = _check_grid(grid)
  if rule not in RULES:
    raise ValueError(f'rule={rule!r}; allowed: {", ".join(RULES)}')
  if goyal_quirks and rule != 'data':
    raise ValueError("goyal_quirks=True applies to rule='data' only (Goyal has no in-gamut "
                     'or in-hull rule)')
  if isinstance(images, dict):
    hist = images
    if hist['exclude_grey'] != bool(exclude_grey):
      raise ValueError(f'exclude_grey={exclude_grey} but the colour histogram was computed '
                       f'with exclude_grey={hist["exclude_grey"]}')
  else:
    hist = colour_histogram(images, exclude_grey=exclude_grey)
  ab = _lab_np(_decode_codes(hist['codes']))[:, 1:]
  cells = _cell_index(ab, grid, goyal_quirks)
  valid = cells >= 0
  num_cells = ((len(_goyal_edges(grid)) - 1) ** 2 if goyal_quirks
               else (2 * _half_cells(grid) + 1) ** 2)
  counts = np.bincount(cells[valid], weights=hist['counts'][valid],
                       minlength=num_cells).astype(np.int64)
  num_dropped = int(hist['counts'][~valid].sum())
  if rule == 'data':
    keep = np.flatnonzero(counts)
    if keep.size == 0:
      raise ValueError('derive_bins: no pixels to derive data bins from')
    centers = (_goyal_cells(grid) if goyal_quirks else ab_grid_cells(grid))[keep]
  else:
    keep = rule_cells(rule, grid)
    if counts.sum() != counts[keep].sum():  # Same conversion on both sides: cannot happen.
      raise RuntimeError(f'pixels outside the {rule} cells; rule_cells is stale')
    centers = ab_grid_cells(grid)[keep]
  kept = counts[keep]
  total = int(kept.sum())
  prior = kept / total if total else np.zeros(len(kept))
  logging.info('colour bins: rule=%s grid=%d%s -> %d bins from %d pixels of %d images '
               '(%d grey)', rule, grid, ' (goyal_quirks)' if goyal_quirks else '',
               len(kept), total, hist['num_images'], hist['num_grey_images'])
  return dict(centers=centers.astype(np.float32), counts=kept, prior=prior, grid=grid,
              rule=rule, goyal_quirks=bool(goyal_quirks), exclude_grey=bool(exclude_grey),
              num_bins=int(len(kept)), num_images=hist['num_images'], num_pixels=total,
              num_dropped=num_dropped, num_grey_images=hist['num_grey_images'])


# --------------------------------------------------------------------------
# Priors and rebalancing (host, NumPy)
# --------------------------------------------------------------------------

def _check_prior(prior, centers=None):
  p = np.asarray(prior, np.float64)
  if p.ndim != 1 or p.size == 0:
    raise ValueError(f'prior must be a non-empty 1-D array, got shape {p.shape}')
  if not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
    raise ValueError('prior must be finite, non-negative and not all zero')
  if centers is not None and np.shape(centers) != (p.size, 2):
    raise ValueError(f'centers shape {np.shape(centers)} does not match prior [{p.size}] -> [Q, 2]')
  return p / p.sum()


def smooth_prior(prior, centers, sigma=5.0):
  """Gaussian smoothing of a bin prior in ab space (Zhang's sigma = 5).

  p~_q is proportional to sum_r p_r exp(-|c_q - c_r|^2 / (2 sigma^2)), over the
  bins only (mass that would leave the bin set is renormalised away). On a
  full square grid this is a sampled 2-D Gaussian filter with sigma/grid
  cells and zero padding. Zhang smoothed his prior with a Gaussian of sigma 5
  (richzhang/colorization#47) but not on which grid; this choice puts the
  kernel on the bin centres.

  Args:
    prior: float [Q] non-negative (normalised here).
    centers: float [Q, 2] bin centres (ab units).
    sigma: kernel width in ab units (> 0).
  Returns:
    float64 [Q], sums to 1, positive wherever a non-empty bin lies within a
    few sigma.
  """
  p = _check_prior(prior, centers)
  if not sigma > 0:
    raise ValueError(f'sigma={sigma} must be > 0')
  c = np.asarray(centers, np.float64)
  kernel = np.exp(-((c[:, None] - c[None]) ** 2).sum(-1) / (2.0 * sigma ** 2))
  s = kernel @ p
  return s / s.sum()


def rebalance_weights(prior, centers=None, lam=0.5, sigma=5.0, smooth=True, alpha=1.0):
  """Per-bin class-rebalancing weights (Zhang et al. 2016, Eq. 4).

  w_q = ((1 - lam) p_q + lam / Q)^-alpha, scaled so that sum_q p_q w_q = 1,
  where p is the prior smoothed by smooth_prior (Zhang) or the raw prior
  (smooth=False, Goyal). Bins with p_q = 0 get the finite weight of the
  uniform term when lam > 0. The weights thus average 1 under p: under the
  raw prior (the pixels the prior was counted on) only with smooth=False;
  with smooth=True their mean over those pixels is sum_q raw_q w_q, which is
  not 1 (0.86 for CIFAR-10 at grid 10; module docstring, "Targets").

  Args:
    prior: float [Q] bin prior or counts (normalised here).
    centers: float [Q, 2]; needed when smooth=True.
    lam: mixing weight of the uniform distribution, in [0, 1] (Zhang: 0.5).
    sigma: smoothing sigma in ab units (smooth=True only).
    smooth: True (Zhang) smooths the prior first; False uses it raw (Goyal).
    alpha: exponent (Zhang: 1).
  Returns:
    float32 [Q], finite and positive.
  Raises:
    ValueError: bad prior / lam, smooth without centers, or lam = 0 with an
      empty bin (its weight would be infinite).
  """
  p = _check_prior(prior, centers)
  if not 0.0 <= lam <= 1.0:
    raise ValueError(f'lam={lam} must be in [0, 1]')
  if smooth:
    if centers is None:
      raise ValueError('rebalance_weights(smooth=True) needs the bin centers')
    p = smooth_prior(p, centers, sigma)
  mix = (1.0 - lam) * p + lam / p.size
  if (mix <= 0).any():
    raise ValueError(f'lam={lam} with {int((mix <= 0).sum())} empty bins gives infinite '
                     'weights; use lam > 0 or smooth=True')
  w = mix ** -float(alpha)
  return (w / (p * w).sum()).astype(np.float32)


# --------------------------------------------------------------------------
# Targets, masks and decoding (JAX, jittable)
# --------------------------------------------------------------------------

def _sq_dist(ab, centers):
  """Squared ab distances float32 [..., Q] without a [..., Q, 2] intermediate."""
  ab = jnp.asarray(ab, jnp.float32)
  c = jnp.asarray(centers, jnp.float32)
  if ab.shape[-1:] != (2,) or c.ndim != 2 or c.shape[-1] != 2:
    raise ValueError(f'ab must be [..., 2] and centers [Q, 2], got {ab.shape} and {c.shape}')
  return (ab[..., 0:1] - c[:, 0]) ** 2 + (ab[..., 1:2] - c[:, 1]) ** 2


@jax.jit
def nearest_bin(ab, centers):
  """Index of the nearest bin centre, int32 [...] (ties: lower index). Jitted.

  Args:
    ab: float [..., 2] (a, b).
    centers: float [Q, 2].
  """
  return jnp.argmin(_sq_dist(ab, centers), axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('k', 'sigma', 'return_nearest'))
def soft_encode(ab, centers, k=5, sigma=5.0, return_nearest=False):
  """Soft ab targets over the k nearest bins (Zhang et al. 2016, Sec. 2.1).

  target_q = exp(-d_q^2 / (2 sigma^2)) / sum over the k nearest, d_q the ab
  distance to centre q; 0 outside the k nearest. k = 1 is the one-hot nearest
  bin; k = Q is the full Gaussian histogram. Distances are taken relative to
  the nearest bin, so pixels far from every bin still get a valid row.
  Cost: O(N Q) distances and a top-k; memory [N, Q] (for a batch of 64 at
  22x22 with Q = 313: 39 MB in float32).

  Args:
    ab: float [..., 2] (a, b) in CIE units.
    centers: float [Q, 2] bin centres.
    k: number of nearest bins, static int in [1, Q] (Zhang paper 5, release 10).
    sigma: Gaussian width in ab units (Zhang: 5), > 0.
    return_nearest: also return the nearest bin index.
  Returns:
    float32 [..., Q] rows summing to 1 (and int32 [...] nearest bins with
    return_nearest). Jitted; k, sigma and return_nearest are static.
  """
  d2 = _sq_dist(ab, centers)
  q = d2.shape[-1]
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= q:
    raise ValueError(f'soft-encoding k={k!r} must be an int in [1, Q={q}]')
  if not sigma > 0:
    raise ValueError(f'sigma={sigma} must be > 0')
  if k == q:
    nearest = jnp.argmin(d2, axis=-1)
    dmin = jnp.min(d2, axis=-1, keepdims=True)
    w = jnp.exp(-(d2 - dmin) / (2.0 * sigma ** 2))
    out = w / jnp.sum(w, axis=-1, keepdims=True)
  else:
    neg, idx = jax.lax.top_k(-d2, k)      # Nearest first; idx [..., k].
    dk = -neg
    w = jnp.exp(-(dk - dk[..., :1]) / (2.0 * sigma ** 2))
    w = w / jnp.sum(w, axis=-1, keepdims=True)
    out = jnp.put_along_axis(jnp.zeros_like(d2), idx, w, axis=-1, inplace=False)
    nearest = idx[..., 0]
  return (out, nearest.astype(jnp.int32)) if return_nearest else out


def pixel_weights(nearest, bin_weights):
  """Rebalancing weight of every pixel: bin_weights[nearest], float32 [...].

  Args:
    nearest: int [...] nearest bin (soft_encode(..., return_nearest=True)).
    bin_weights: float [Q] from rebalance_weights.
  """
  return jnp.take(jnp.asarray(bin_weights, jnp.float32), nearest, axis=0)


@functools.partial(jax.jit, static_argnames=('threshold',))
def grey_mask(ab, threshold=GREY_THRESHOLD):
  """True for grey images, whose every |a| and |b| is <= threshold (Zhang: 5).

  The loss weight of an image is 1 - grey_mask (Zhang's non-grey mask).

  Args:
    ab: float [B, ..., 2] ab of B images (any spatial shape, any resolution).
    threshold: CIE units.
  Returns:
    bool [B]. Jitted (threshold static).
  """
  ab = jnp.asarray(ab)
  if ab.ndim < 2 or ab.shape[-1] != 2:
    raise ValueError(f'ab must be [B, ..., 2], got shape {ab.shape}')
  return jnp.all(jnp.abs(ab) <= threshold, axis=tuple(range(1, ab.ndim)))


@functools.partial(jax.jit, static_argnames=('temperature',))
def annealed_mean(logits, centers, temperature=0.38):
  """Annealed-mean decoding (Zhang et al. 2016, Eq. 5): ab float32 [..., 2].

  H(z) = sum_q f_T(z)_q c_q with f_T(z) = softmax(log z / T); for logits (or
  log-probabilities; -inf allowed) log z / T equals logits / T up to a shift.
  T = 1 is the mean, T -> 0 the mode; Zhang uses 0.38.

  Args:
    logits: float [..., Q].
    centers: float [Q, 2].
    temperature: T > 0 (static: jitted per value).
  """
  if not temperature > 0:
    raise ValueError(f'temperature={temperature} must be > 0')
  p = jax.nn.softmax(jnp.asarray(logits, jnp.float32) / temperature, axis=-1)
  return p @ jnp.asarray(centers, jnp.float32)


# --------------------------------------------------------------------------
# Cached bins per dataset
# --------------------------------------------------------------------------

def default_cache_dir():
  """$SSL_JAX_CACHE/color_bins if set, else ~/.cache/ssl_jax/color_bins."""
  root = os.environ.get('SSL_JAX_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'ssl_jax')
  return os.path.join(root, 'color_bins')


def _cache_base(directory, dataset_name, grid, rule, goyal_quirks, exclude_grey):
  key = f'{dataset_name}|{grid}|{rule}|{goyal_quirks}|{exclude_grey}|v{_CACHE_VERSION}'
  safe = re.sub(r'[^A-Za-z0-9_.-]+', '_', dataset_name).strip('_')
  tag = hashlib.sha256(key.encode()).hexdigest()[:8]
  quirks = '_goyal' if goyal_quirks else ''
  grey = '_nogrey' if exclude_grey else ''
  return os.path.join(directory, f'{safe}_{rule}_grid{grid}{quirks}{grey}_v{_CACHE_VERSION}_{tag}')


_ARRAYS = ('centers', 'counts', 'prior')


class BinsFileError(ValueError):
  """A bins file (.npz) or cache entry that cannot be read or fails a check; one line."""


def _one_line(e):
  text = ' '.join(str(e).split())
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _load_npz(path):
  """{name: array} of every member of an .npz file; BinsFileError if unreadable."""
  try:
    z = np.load(path, allow_pickle=False)
    if not isinstance(z, np.lib.npyio.NpzFile):
      raise BinsFileError(f'bins file {path!r} is a single .npy array, not an .npz archive')
    with z:
      return {k: np.asarray(z[k]) for k in z.files}
  except BinsFileError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # A damaged file fails anywhere in zipfile / zlib / numpy's format parser
    # (BadZipFile, zlib.error, EOFError, ValueError, OSError, ...): all mean "unreadable".
    raise BinsFileError(f'bins file {path!r} is not a readable .npz ({_one_line(e)})') from None


def _check_bin_arrays(arrays, path, *, cache):
  """Validated float64 centers [Q, 2], counts / prior [Q] of a bins file (see read_bins_file).

  cache=True (a get_bins cache entry) needs all three arrays and prior = counts / total
  (an all-zero prior only with all-zero counts).
  """
  def bad(msg):
    raise BinsFileError(f'bins file {path!r}: {msg}')

  need = set(_ARRAYS) if cache else {'centers'}
  if not need <= set(arrays) or not {'prior', 'counts'} & set(arrays):
    what = '`counts` and `prior`' if cache else '`prior` or `counts`'
    bad(f'needs `centers` [Q, 2] and {what} [Q]; it has {sorted(arrays)}')
  out = {}
  for name in _ARRAYS:
    if name in arrays:
      x = arrays[name]
      if x.dtype.kind not in 'biuf':
        bad(f'`{name}` has dtype {x.dtype}; allowed: real numbers')
      x = x.astype(np.float64)
      if not np.isfinite(x).all():
        bad(f'`{name}` has {int((~np.isfinite(x)).sum())} non-finite values')
      out[name] = x
  centers = out['centers']
  if centers.ndim != 2 or centers.shape[1:] != (2,) or len(centers) == 0:
    bad(f'`centers` has shape {centers.shape}; it must be [Q, 2] with Q >= 1')
  q = len(centers)
  if len(np.unique(centers, axis=0)) != q:
    bad(f'`centers` repeats {q - len(np.unique(centers, axis=0))} bin centres')
  for name in ('counts', 'prior'):
    if name in out:
      if out[name].shape != (q,):
        bad(f'`{name}` has shape {out[name].shape}; it must be [Q] = [{q}] like `centers`')
      if (out[name] < 0).any():
        bad(f'`{name}` has {int((out[name] < 0).sum())} negative values')
  if 'counts' in out and (out['counts'] != np.round(out['counts'])).any():
    bad('`counts` holds non-integer values')
  if cache:  # A user's file may pair counts with another prior (e.g. a smoothed one).
    total = out['counts'].sum()
    want = out['counts'] / total if total > 0 else np.zeros(q)
    if not np.allclose(out['prior'], want, rtol=1e-9, atol=1e-12):
      bad('`prior` is not `counts` / their total')
  weights = out['prior'] if 'prior' in out else out['counts']
  if weights.sum() <= 0 and not (cache and out['counts'].sum() == 0):
    bad(f"`{'prior' if 'prior' in out else 'counts'}` is all zero")
  return out


def read_bins_file(path):
  """Bins from an .npz holding `centers` [Q, 2] and `prior` or `counts` [Q] (e.g. a cache file).

  Args:
    path: file name.
  Returns:
    dict(centers=float32 [Q, 2], prior=float64 [Q] summing to 1 (from `prior`, else
    `counts`), counts=int64 [Q] when present, num_bins=Q).
  Raises:
    BinsFileError (a ValueError), one line naming the file: not a readable .npz (missing,
    not a zip, truncated, a pickle or a plain .npy), arrays missing, of a non-real dtype
    or of the wrong shape, non-finite or negative values, repeated centres,
    non-integer counts, or an all-zero prior. With both arrays, `prior` is used.
  """
  arr = _check_bin_arrays(_load_npz(path), path, cache=False)
  prior = arr['prior'] if 'prior' in arr else arr['counts']
  out = {'centers': arr['centers'].astype(np.float32), 'prior': prior / prior.sum(),
         'num_bins': len(arr['centers'])}
  if 'counts' in arr:
    out['counts'] = arr['counts'].astype(np.int64)
  return out


def _check_centers(centers, grid, rule, goyal_quirks, path):
  """BinsFileError unless centers float [Q, 2] are the rule's bins on its lattice, a-major."""
  if rule == 'data':
    lattice = _goyal_cells(grid) if goyal_quirks else ab_grid_cells(grid)
    idx = _cell_index(centers, grid, goyal_quirks)
    ok = ((idx >= 0).all() and np.array_equal(lattice[np.maximum(idx, 0)], centers)
          and (np.diff(idx) > 0).all())
  else:
    want = ab_grid_cells(grid)[rule_cells(rule, grid)]
    ok = centers.shape == want.shape and np.array_equal(want, centers)
  if not ok:
    raise BinsFileError(f'bins file {path!r}: `centers` are not the {rule!r} bins of the '
                        f'grid-{grid} lattice{" (goyal_quirks)" if goyal_quirks else ""} in '
                        'a-major order')


def _read_cache(base, dataset_name, grid, rule, goyal_quirks, exclude_grey):
  """get_bins' dict of a cache entry (base.npz + base.json); BinsFileError if unusable."""
  path = base + '.npz'
  arr = _check_bin_arrays(_load_npz(path), path, cache=True)
  try:
    with open(base + '.json') as f:
      meta = json.load(f)
  except Exception as e:  # pylint: disable=broad-except  (OSError, JSON and Unicode errors)
    raise BinsFileError(f'bins metadata {base + ".json"!r} is not readable JSON '
                        f'({_one_line(e)})') from None
  q = len(arr['centers'])
  want = {'dataset': dataset_name, 'grid': grid, 'rule': rule, 'goyal_quirks': goyal_quirks,
          'exclude_grey': exclude_grey, 'num_bins': q, 'num_pixels': int(arr['counts'].sum())}
  if not isinstance(meta, dict):
    raise BinsFileError(f'bins metadata {base + ".json"!r} holds a {type(meta).__name__}, '
                        'not an object')
  for key, value in want.items():
    if key not in meta or type(meta[key]) is not type(value) or meta[key] != value:
      raise BinsFileError(f'bins metadata {base + ".json"!r}: {key}={meta.get(key)!r}, '
                          f'expected {value!r}')
  for key in ('num_images', 'num_grey_images', 'num_dropped'):
    if type(meta.get(key)) is not int or meta[key] < 0:
      raise BinsFileError(f'bins metadata {base + ".json"!r}: {key}={meta.get(key)!r} '
                          'must be an integer >= 0')
  _check_centers(arr['centers'], grid, rule, goyal_quirks, path)
  if rule == 'data' and (arr['counts'] == 0).any():
    raise BinsFileError(f"bins file {path!r}: a 'data' bin holds no pixel")
  return dict(meta, centers=arr['centers'].astype(np.float32),
              counts=arr['counts'].astype(np.int64), prior=arr['prior'])


def cached_bins(dataset_name, grid=10, rule='data', *, goyal_quirks=False,
                exclude_grey=False, cache_dir=None):
  """The bins get_bins cached for these arguments, or None if there are none (no work).

  A cache entry that cannot be read or fails a check (module docstring, "Cache") is
  logged as a warning naming the file and the reason and treated as absent, so
  get_bins rebuilds (and overwrites) it.

  Returns get_bins' dict ('how' = 'loaded') or None. Raises ValueError for a bad grid or
  rule.
  """
  grid = _check_grid(grid)
  if rule not in RULES:
    raise ValueError(f'rule={rule!r}; allowed: {", ".join(RULES)}')
  base = _cache_base(cache_dir or default_cache_dir(), dataset_name, grid, rule,
                     bool(goyal_quirks), bool(exclude_grey))
  if not (os.path.lexists(base + '.npz') or os.path.lexists(base + '.json')):
    return None
  try:
    out = _read_cache(base, dataset_name, grid, rule, bool(goyal_quirks), bool(exclude_grey))
  except BinsFileError as e:
    logging.warning('colour bins cache %s.npz is unusable and will be rebuilt: %s', base, e)
    return None
  out['how'] = 'loaded'
  out['cache'] = base
  return out


def get_bins(dataset_name, images_fn, grid=10, rule='data', *, goyal_quirks=False,
             exclude_grey=False, cache_dir=None, rebuild=False):
  """Bins of a dataset, derived once and cached on disk; logs the bin count.

  Args:
    dataset_name: cache key naming the images, split included (e.g.
      dataset_key(config.data) = 'cifar10:train[:45000]@32px'); any string.
    images_fn: () -> images as accepted by derive_bins; called only on a
      cache miss (no entry, or an unusable one: rebuilt with a warning).
    grid, rule, goyal_quirks, exclude_grey: as derive_bins.
    cache_dir: directory; default default_cache_dir() ($SSL_JAX_CACHE/color_bins or
      ~/.cache/ssl_jax/color_bins).
    rebuild: ignore an existing cache file.
  Returns:
    derive_bins' dict, plus 'cache' (the file stem) and 'how' ('loaded'/'built').
  """
  grid = _check_grid(grid)
  if rule not in RULES:
    raise ValueError(f'rule={rule!r}; allowed: {", ".join(RULES)}')
  directory = cache_dir or default_cache_dir()
  base = _cache_base(directory, dataset_name, grid, rule, bool(goyal_quirks), bool(exclude_grey))
  out = None
  if not rebuild:
    out = cached_bins(dataset_name, grid, rule, goyal_quirks=goyal_quirks,
                      exclude_grey=exclude_grey, cache_dir=directory)
  if out is None:
    t0 = time.time()
    out = derive_bins(images_fn(), grid, rule, goyal_quirks=goyal_quirks,
                      exclude_grey=exclude_grey)
    out['dataset'] = dataset_name
    out['build_seconds'] = round(time.time() - t0, 2)
    _save(base, out)
    out['how'] = 'built'
  out['cache'] = base
  logging.info('colour bins for %s: %d bins (rule=%s, grid=%d%s), %s %s.npz',
               dataset_name, out['num_bins'], rule, grid,
               ', goyal_quirks' if goyal_quirks else '', out['how'], base)
  return out


def dataset_key(data_config, split_name='train', max_images=-1):
  """The cache key of a config's split: '<tfds name>:<split>@<size>px[:first<N>]'.

  The images are the split decoded and resized to data.image_size (dataset_images),
  so the size is part of the key; so is a max_images limit.
  """
  d = data_config
  key = f'{d.name}:{d[f"{split_name}_split"]}@{d.image_size}px'
  return key + (f':first{max_images}' if max_images and max_images > 0 else '')


def dataset_images(config, split_name='train', max_images=-1, batch_size=1024):
  """Yields uint8 [n, S, S, 3] batches of a config's split at data.image_size, in order.

  The whole split on every host (each derives the same bins), decoded and resized
  ('decode|resize(S)', a no-op at the native size) by the tf.data pipeline:
  imports input_pipeline, hence TensorFlow, on first use (call only on a cache miss).
  max_images > 0 stops after the first max_images images.
  """
  import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow: cache miss only)
  it = input_pipeline.get_dataset(config, split_name, train=False, batch_size=batch_size,
                                  shard_by_process=False,
                                  pp=f'decode|resize({config.data.image_size})')
  left = max_images if max_images and max_images > 0 else None
  for batch in it:
    images = np.asarray(batch['image'])[np.asarray(batch['mask'])]
    if left is not None:
      images = images[:left]
      left -= len(images)
    if len(images):
      yield images
    if left is not None and left <= 0:
      return


def _save(base, out):
  """Atomic write (tmp + rename): concurrent hosts may derive the same bins."""
  tmp = f'{base}.{os.getpid()}.tmp'
  try:
    os.makedirs(os.path.dirname(base), exist_ok=True)
    np.savez(tmp + '.npz', **{k: out[k] for k in _ARRAYS})
    with open(tmp + '.json', 'w') as f:
      json.dump({k: v for k, v in out.items() if k not in _ARRAYS}, f, indent=1)
    os.replace(tmp + '.json', base + '.json')
    os.replace(tmp + '.npz', base + '.npz')
  except OSError as e:  # A read-only cache only costs a rebuild next time.
    logging.warning('could not cache colour bins at %s: %s', base, e)
    for leftover in (tmp + '.npz', tmp + '.json'):
      if os.path.isfile(leftover):
        os.remove(leftover)
