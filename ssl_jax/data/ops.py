"""Preprocessing ops in JAX: input_pipeline.preprocess's ops, TF-free.

One augmentation language for both data sources. A pipeline is a big_vision-
style string of ops separated by '|', e.g.

  decode|inception_crop(224)|flip_lr|color_jitter
  decode|to_gray(0.66)|views(8)|inception_preprocess(224)
  views(2)|inception_crop(32, area_min=0.08)|flip_lr|color_distort(0.5)

`parse_spec` (the grammar: names and Python-literal arguments) is shared with
input_pipeline.preprocess, and both registries hold the same op names with the
same arguments and semantics (revisiting.md §3). Here every op is a factory in
`OPS`; called with the op's arguments (and `train=` for train-aware ops:
`crop`, `inception_preprocess`, `pad_crop_flip`) it returns

  op(key, image uint8[H, W, C]) -> uint8[h, w, C]

for ONE example (`views` alone returns uint8[n, H, W, C]); `make_batch_fn`
vmaps each op of a spec over a batch in turn. Every op outputs uint8, as the
TF ops do, so chains round where the TF chains round.

Randomness: example i of a batch uses `jax.random.fold_in(key, i)`; that key
is split into one key per op (in spec order), so every random op has its own
stream, and a pipeline is a pure function of (key, position, image). Each
random op makes ONE `jax.random.uniform` draw of all the numbers it needs
(integers as floor(u * n)): every draw is a threefry kernel that XLA compiles
separately, and compile time, not run time, is what they cost. Random ops
cannot reproduce TF's random stream; they draw from the same distributions
(tests compare statistics with the TF ops).

`views(n)`: the ops before it run once per image (e.g. `to_gray(0.66)` decided
once and shared by all copies, as the study's exemplar task); the image is
repeated n times and every op after it runs independently per view (the views
op's key split n ways): one example becomes uint8[n, h, w, C].

Pixel faithfulness to the TF ops (deterministic parts): TF1's legacy bilinear
resize (align_corners=False, no half-pixel centres; `downsample` also has the
half-pixel one, TF2's default) and `resize_area` are re-implemented with the
kernels' own float32 formulas (taps, weights and
summation order, products kept out of fused multiply-adds), as are central
crops, the integer channel mean, luma gray and flips: jitted, their outputs
equal TF's bit for bit, before and after rounding (tests on CIFAR-10 and
Imagenette images). The random ops' transforms, for given draws, match tf.image
to float rounding.

Differences from the TF ops, all in how random numbers are drawn: uniform
integers are floor(u * n) of a float32 uniform instead of TF's 32-bit draws
modulo n; the colour_distort order is the argsort of four uniforms (TF op:
the same, with its own stream); `inception_crop_window` draws all 100 attempts
at once (same law as TF's loop) and computes one float64 bound of TF's kernel
in float32 (see its doc).

Corruptions of the pretraining images (Cole et al. 2022, "data quality"),
ordinary ops written before the augmentation, e.g.
`decode|downsample(2)|inception_crop(32)|flip_lr`: `downsample(factor)` (area
down, bilinear up, deterministic and bit-exact with the TF op),
`salt_pepper(p)` (random, one draw per pixel) and `jpeg(quality)`. JAX has no
JPEG codec, so `jpeg` is a host-only op (HOST_ONLY_OPS): building it here
raises a one-line ValueError; specs meant for the tf.data path are checked
with `check_spec(..., host=True)` / `output_shape(..., host=True)`, and the
in-memory path corrupts its stored images once at load time
(`split_host_ops` + `apply_host_ops`, or `jpeg_corrupt`), which equals the
tf.data op per example because everything up to the last host-only op must be
deterministic.
"""
import ast
import concurrent.futures
import inspect
import io
import math
import os
from typing import (Any, Callable, Collection, Dict, List, Optional, Sequence,
                    Tuple, Union)

import jax
import jax.numpy as jnp
import numpy as np

Op = Callable[[jax.Array, jax.Array], jax.Array]
Size = Union[int, Sequence[int]]
ParsedOp = Tuple[str, Tuple[Any, ...], Dict[str, Any]]

OPS: Dict[str, Callable[..., Op]] = {}
VIEWS = 'views'
# Ops without a JAX implementation (their factory raises HostOnlyOpError after
# checking its arguments); HOST_FNS[name](images u8[N, H, W, 3], *args) is the
# host version that `apply_host_ops` runs once on stored images.
HOST_ONLY_OPS = frozenset({'jpeg'})
# Ops whose output does not depend on the key (for any arguments): what may
# come before a host-only op on the in-memory path (see split_host_ops).
DETERMINISTIC_OPS = frozenset(
    {'decode', 'resize', 'resize_small', 'central_crop', 'inception_eval',
     'downsample'})
# ITU-R BT.601 luma, as tf.image.rgb_to_grayscale (SimCLR's colour drop).
LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)
GRAY_WEIGHTS = ('mean', 'luma')


def register(name: str):
  """Registers an op factory under `name` (the name used in spec strings)."""
  def wrap(factory):
    OPS[name] = factory
    return factory
  return wrap


class HostOnlyOpError(ValueError):
  """Raised by the factory of a host-only op once its arguments are valid."""


# ----------------------------------------------------------------------------
# The grammar (pure Python, shared with input_pipeline.preprocess).


def _literal(node):
  try:
    return ast.literal_eval(node)
  except (ValueError, TypeError, SyntaxError, RecursionError):
    raise SyntaxError(f'arguments must be Python literals (numbers, strings, '
                      f'tuples, ...), got {ast.unparse(node)!r}') from None


def parse_spec(spec: str, known: Optional[Collection[str]] = None
               ) -> List[ParsedOp]:
  """'a|b(1, x=2)' -> [('a', (), {}), ('b', (1,), {'x': 2})].

  Ops are separated by '|'; each is a name or a call whose arguments are
  Python literals (ast.literal_eval: numbers, strings, tuples, ...). Blank
  parts are dropped, so '' and 'a||b|' are fine.

  Args:
    spec: the preprocessing string.
    known: op names allowed; None checks no names (grammar only).

  Returns:
    [(name, args tuple, kwargs dict)] in order.

  Raises:
    ValueError (one line): a malformed op (names it and the spec), or with
      `known`, an unknown op (names it and lists the known ones).
  """
  if not isinstance(spec, str):
    raise ValueError(f'Preprocessing spec must be a str, got {spec!r}.')
  ops = []
  for part in spec.split('|'):
    part = part.strip()
    if not part:
      continue
    try:
      node = ast.parse(part, mode='eval').body
      if isinstance(node, ast.Name):
        name, args, kwargs = node.id, (), {}
      elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if (any(isinstance(a, ast.Starred) for a in node.args) or
            any(k.arg is None for k in node.keywords)):
          raise SyntaxError('*args and **kwargs are not allowed')
        names = [k.arg for k in node.keywords]
        if len(set(names)) < len(names):
          raise SyntaxError('keyword argument repeated')
        name = node.func.id
        args = tuple(_literal(a) for a in node.args)
        kwargs = {k.arg: _literal(k.value) for k in node.keywords}
      else:
        raise SyntaxError('not a name or a call')
    except (SyntaxError, ValueError, TypeError, RecursionError) as e:
      reason = ' '.join(str(e).split())  # One line.
      raise ValueError(f'Malformed preprocessing op {part!r} in {spec!r}: '
                       f'{reason}') from None
    if known is not None and name not in known:
      raise ValueError(f'Unknown preprocessing op {name!r} in {spec!r}. '
                       f'Known ops: {", ".join(sorted(known))}.')
    ops.append((name, args, kwargs))
  return ops


def build_op(name: str, args=(), kwargs=None, *, train: bool,
             registry: Optional[Dict[str, Callable[..., Any]]] = None,
             spec: Optional[str] = None, host: bool = False):
  """Calls `registry[name]` (default OPS), passing `train` if it takes it.

  host: the spec is for the tf.data path; a host-only op (HOST_ONLY_OPS) then
    has its arguments checked and returns None instead of raising.

  Raises:
    ValueError (one line) naming the op (and `spec`) for bad arguments: wrong
    count or names (the factory's TypeError) or values (its ValueError); and,
    unless `host`, for a host-only op (no JAX implementation, and what to do).
  """
  registry = OPS if registry is None else registry
  kwargs = dict(kwargs or {})
  factory = registry[name]
  if 'train' in inspect.signature(factory).parameters:
    kwargs['train'] = train
  where = f' in {spec!r}' if spec is not None else ''
  try:
    return factory(*args, **kwargs)
  except HostOnlyOpError as e:
    if host:
      return None
    raise ValueError(f'Preprocessing op {name!r}{where} cannot run in JAX: '
                     f'{e}') from None
  except (TypeError, ValueError) as e:
    reason = ' '.join(str(e).split())
    raise ValueError(f'Bad arguments for preprocessing op {name!r}{where}: '
                     f'{reason}') from None


def views_index(parsed: Sequence[ParsedOp], spec: str) -> Optional[int]:
  """Position of the `views` op in parse_spec's output; None if absent.

  Raises ValueError (naming `spec`) if views appears more than once.
  """
  where = [i for i, (name, _, _) in enumerate(parsed) if name == VIEWS]
  if len(where) > 1:
    raise ValueError(f'Preprocessing {spec!r} has {len(where)} views ops; at '
                     'most one is allowed.')
  return where[0] if where else None


def _shape_only(key, image):
  """Stands in for a host-only op in shape computations (they keep shapes)."""
  del key
  return image


def _build(spec: str, train: bool, host: bool = False):
  """[(name, op)] and the index of `views` (None if absent).

  host: host-only ops become `_shape_only` (shapes only: output_shape).
  """
  parsed = parse_spec(spec, known=OPS)
  index = views_index(parsed, spec)
  ops = [(name, build_op(name, args, kwargs, train=train, spec=spec,
                         host=host) or _shape_only)
         for name, args, kwargs in parsed]
  return ops, index


def check_spec(spec: str, *, train: bool, host: bool = False) -> None:
  """Parses `spec` and builds every op, running nothing (start-up check).

  host: check a spec for the tf.data path (TFDS source): host-only ops
    (HOST_ONLY_OPS: `jpeg`) are allowed, their arguments checked.

  Raises:
    ValueError (one line) naming the op and the spec: malformed or unknown
    op, bad argument count or value, `views` used more than once, or (unless
    `host`) a host-only op.
  """
  _build(spec, train, host)


def num_views(spec: str) -> int:
  """n of the spec's `views(n)` op; 1 without one.

  Raises:
    ValueError: views appears more than once, or the spec is malformed.
  """
  parsed = parse_spec(spec)
  index = views_index(parsed, spec)
  if index is None:
    return 1
  _, args, kwargs = parsed[index]
  return build_op(VIEWS, args, kwargs, train=True, spec=spec).num_views


# ----------------------------------------------------------------------------
# Argument checks (one-line ValueErrors; build_op adds the op's name).


def _hw(size: Size, what: str = 'size') -> Tuple[int, int]:
  """int or (h, w) of positive ints -> (h, w)."""
  def ok(v):
    return (isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            and v > 0)
  if ok(size):
    return int(size), int(size)
  if isinstance(size, (tuple, list)) and len(size) == 2 and all(map(ok, size)):
    return int(size[0]), int(size[1])
  raise ValueError(f'{what} must be a positive int or a pair (h, w) of them, '
                   f'got {size!r}')


def _number(x, what: str, lo: float = -math.inf, hi: float = math.inf,
            lo_open: bool = False) -> float:
  if (not isinstance(x, (int, float, np.integer, np.floating)) or
      isinstance(x, bool) or not math.isfinite(x) or x > hi or x < lo or
      (lo_open and x == lo)):
    interval = f'{"(" if lo_open else "["}{lo}, {hi}]'
    raise ValueError(f'{what} must be a number in {interval}, got {x!r}')
  return float(x)


def _prob(p, what: str = 'p') -> float:
  return _number(p, what, 0.0, 1.0)


def _range(lo, hi, what: str, lower: float = 0.0, upper: float = math.inf):
  lo = _number(lo, f'{what}_min', lower, upper, lo_open=True)
  hi = _number(hi, f'{what}_max', lower, upper, lo_open=True)
  if lo > hi:
    raise ValueError(f'{what}_min {lo} must not exceed {what}_max {hi}')
  return lo, hi


# ----------------------------------------------------------------------------
# Helpers on one image.


def _to_uint8(x: jax.Array) -> jax.Array:
  """float [0, 255] -> uint8, rounding half to even (as tf.round)."""
  return jnp.clip(jnp.round(x), 0.0, 255.0).astype(jnp.uint8)


def _check_rgb(image, op: str):
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'{op}: needs RGB images [H, W, 3], got shape '
                     f'{tuple(image.shape)} (start the spec with decode)')


def _check_fits(image, h: int, w: int, op: str):
  if image.shape[0] < h or image.shape[1] < w:
    raise ValueError(f'{op}: image {image.shape[0]}x{image.shape[1]} smaller '
                     f'than the crop size ({h}, {w})')


def _mul(a, b):
  """a * b, rounded to float32 before any later addition.

  XLA (CPU and GPU) contracts a * b + c into one fused multiply-add, which
  skips this rounding; TF's resize kernels round the product, and a value
  exactly at .5 then rounds the other way (about 3 in 10,000 pixels of an
  area resize). A select on the product (never NaN here) keeps it apart.
  """
  p = a * b
  return jnp.where(jnp.isnan(p), jnp.zeros_like(p), p)


def _legacy_bilinear_taps(start, in_size, out_size: int, max_in: int):
  """Taps of TF1's legacy bilinear resize along one axis of a window.

  As the ResizeBilinear kernel (align_corners=False, half_pixel_centers=
  False), in float32: scale = in_size / out_size, source = i * scale,
  lower = floor(source), upper = min(ceil(source), in_size - 1),
  lerp = source - floor(source).

  Args:
    start, in_size: int32 scalars, the window's first index and length
      (may be traced: inception crops).
    out_size: static output length.
    max_in: static bound on in_size (the image side).

  Returns:
    (lower, upper) int32[out_size] absolute indices, lerp float32[out_size].
  """
  # The scale is looked up, not divided: XLA turns x / constant into
  # x * (1 / constant), which is not the correctly rounded quotient.
  scales = (np.arange(max_in + 1, dtype=np.float32) / np.float32(out_size)
            ).astype(np.float32)
  in_size = jnp.asarray(in_size, jnp.int32)
  source = jnp.arange(out_size, dtype=jnp.float32) * jnp.asarray(scales)[
      in_size]
  floor = jnp.floor(source)
  lower = floor.astype(jnp.int32)
  upper = jnp.minimum(jnp.ceil(source).astype(jnp.int32), in_size - 1)
  return start + lower, start + upper, source - floor


def _bilinear_window(image, top, left, h, w, out_h: int, out_w: int,
                     flip=None):
  """TF1 legacy bilinear resize of image[top:top+h, left:left+w] -> f32.

  uint8[H, W, C] -> float32[out_h, out_w, C]. top/left/h/w may be traced.
  The kernel's compute_lerp order: top = tl + (tr - tl) * x_lerp, bottom
  likewise, out = top + (bottom - top) * y_lerp. flip (bool, may be traced):
  mirror the output left-right, by reversing the column taps (free).
  """
  y0, y1, fy = _legacy_bilinear_taps(top, h, out_h, image.shape[0])
  x0, x1, fx = _legacy_bilinear_taps(left, w, out_w, image.shape[1])
  if flip is not None:
    x0, x1, fx = (jnp.where(flip, t[::-1], t) for t in (x0, x1, fx))
  return _bilinear_lerp(image, (y0, y1, fy), (x0, x1, fx))


def _bilinear_lerp(image, rows, cols):
  """The ResizeBilinear kernel's interpolation for given taps -> float32.

  rows, cols: (lower int32[n], upper int32[n], lerp float32[n]) per axis.
  """
  (y0, y1, fy), (x0, x1, fx) = rows, cols
  rows0, rows1 = image[y0], image[y1]  # Gather the uint8 rows first.
  tl = rows0[:, x0].astype(jnp.float32)
  tr = rows0[:, x1].astype(jnp.float32)
  bl = rows1[:, x0].astype(jnp.float32)
  br = rows1[:, x1].astype(jnp.float32)
  fx = fx[None, :, None]
  upper = tl + _mul(tr - tl, fx)
  lower = bl + _mul(br - bl, fx)
  return upper + _mul(lower - upper, fy[:, None, None])


def _resize_bilinear(image, out_h: int, out_w: int):
  """Whole-image legacy bilinear resize, uint8 -> float32[out_h, out_w, C]."""
  return _bilinear_window(image, 0, 0, image.shape[0], image.shape[1], out_h,
                          out_w)


def _static_bilinear_taps(in_size: int, out_size: int, half_pixel: bool):
  """Taps of TF's ResizeBilinear (align_corners=False) for static sizes.

  The kernel's float32 formulas (numpy float32 rounds every operation, as
  the kernel): scale = in_size / out_size; source = (i + 0.5) * scale - 0.5
  with half-pixel centres (TF2's tf.image.resize 'bilinear'), i * scale
  without (TF1 legacy); lower = max(floor(source), 0), upper = min(ceil(
  source), in_size - 1), lerp = source - floor(source).

  Returns:
    (lower int32[out_size], upper int32[out_size], lerp float32[out_size]).
  """
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  i = np.arange(out_size, dtype=f32)
  source = (i + f32(0.5)) * scale - f32(0.5) if half_pixel else i * scale
  floor = np.floor(source)
  lower = np.maximum(floor, 0).astype(np.int32)
  upper = np.minimum(np.ceil(source), in_size - 1).astype(np.int32)
  return lower, upper, (source - floor).astype(f32)


def _resize_bilinear_static(image, out_h: int, out_w: int, half_pixel: bool):
  """TF ResizeBilinear (half-pixel or legacy) of [H, W, C] -> float32.

  Equals tf.raw_ops.ResizeBilinear(align_corners=False, half_pixel_centers=
  half_pixel) bit for bit (tests).
  """
  return _bilinear_lerp(
      image, _static_bilinear_taps(image.shape[0], out_h, half_pixel),
      _static_bilinear_taps(image.shape[1], out_w, half_pixel))


def _area_taps(n_in: int, n_out: int):
  """Taps of TF1's resize_area (align_corners=False) along one axis (numpy).

  The ResizeArea kernel in float32: scale = n_in / n_out; output cell y covers
  [y * scale, (y + 1) * scale); input pixel i in floor(lo)..ceil(hi) - 1 gets
  weight (its overlap with the cell), indices clamped to n_in - 1.

  Returns:
    (indices int32[n_out, K], weights float32[n_out, K], scale float32);
    unused taps have weight 0 (adding 0.0 leaves a float sum unchanged).
  """
  f32 = np.float32
  scale = f32(n_in) / f32(n_out)
  taps = []
  for y in range(n_out):
    lo, hi = f32(y) * scale, f32(y + 1) * scale
    row = []
    for i in range(int(np.floor(lo)), int(np.ceil(hi))):
      if i < lo:
        weight = scale if i + 1 > hi else f32(i + 1) - lo
      else:
        weight = hi - f32(i) if i + 1 > hi else f32(1.0)
      row.append((min(max(i, 0), n_in - 1), f32(weight)))
    taps.append(row)
  k = max(len(row) for row in taps)
  index = np.zeros((n_out, k), np.int32)
  weight = np.zeros((n_out, k), np.float32)
  for y, row in enumerate(taps):
    for j, (i, wt) in enumerate(row):
      index[y, j], weight[y, j] = i, wt
  return index, weight, scale


def _resize_area(image, out_h: int, out_w: int):
  """TF1 legacy resize_area, uint8[H, W, C] -> float32[out_h, out_w, C].

  The kernel's order of operations: per input row, sum over the cell's
  columns (first tap x weight, then the others, in order); then over rows,
  sum += row_sum x row_weight; finally x 1 / (scale_h x scale_w).
  """
  iy, wy, sy = _area_taps(image.shape[0], out_h)
  ix, wx, sx = _area_taps(image.shape[1], out_w)
  # 1 / (float product) in double, then float, as the kernel's constant.
  norm = np.float32(1.0 / float(np.float32(sy * sx)))
  cols = image[:, ix].astype(jnp.float32)  # [H, out_w, Kx, C]
  row_sums = _mul(cols[:, :, 0], wx[None, :, 0, None])
  for j in range(1, ix.shape[1]):
    row_sums = row_sums + _mul(cols[:, :, j], wx[None, :, j, None])
  rows = row_sums[iy]  # [out_h, Ky, out_w, C]
  total = _mul(rows[:, 0], wy[:, 0, None, None])
  for j in range(1, iy.shape[1]):
    total = total + _mul(rows[:, j], wy[:, j, None, None])
  return total * norm


def _flip(key, image):
  """Mirrors left-right with probability 1/2."""
  return jnp.where(jax.random.uniform(key) < 0.5, image[:, ::-1], image)


def _uniforms(key, n: int):
  """float32[n] ~ U[0, 1): the op's one draw.

  Drawn as a 1-D vector of a multiple of 8 numbers, then cut: some other
  shapes (e.g. (9,) or (4, 100)) triple XLA CPU's compile time of the
  vmapped threefry kernel (measured, jax 0.10), the values' law is the same.
  """
  return jax.random.uniform(key, (-(-n // 8) * 8,), jnp.float32)[:n]


def _scale(u, lo, hi):
  """u ~ U[0, 1) -> U[lo, hi)."""
  return lo + u * (hi - lo)


def _randint(u, n):
  """u ~ U[0, 1) -> an int32 uniform over 0..n-1 (n may be traced, >= 1)."""
  return jnp.minimum((u * n).astype(jnp.int32), n - 1)


def _round_half_even_int(x):
  """lrintf: float32 -> nearest int32, ties to even."""
  return jnp.round(x).astype(jnp.int32)


def inception_crop_window(key, image_shape, area_min: float = 0.05,
                          area_max: float = 1.0, aspect_min: float = 0.75,
                          aspect_max: float = 1.33, *, attempts: int = 100,
                          min_object_covered: float = 0.1):
  """slim's distorted-bounding-box crop window, vectorised over attempts.

  Emulates TF's (stateless_)sample_distorted_bounding_box with the whole image
  as the only box (as input_pipeline.preprocess.inception_crop_window): each
  of `attempts` tries draws an aspect ratio w/h ~ U[aspect_min, aspect_max),
  then (GenerateRandomCrop) a height uniform over the integers from
  round(sqrt(min_area / aspect)) to round(sqrt(max_area / aspect)) (capped so
  round(height * aspect) fits the width, and at the image height), width =
  round(height * aspect) (rounding ties to even, as lrintf), one step up/down
  if rounding left the area range, and offsets y ~ U{0..H-h-1}, x ~
  U{0..W-w-1} (TF's Uniform(H - h) never reaches H - h; 0 when the crop spans
  the side). A try is kept if its area is in [area_min, area_max] x H x W and
  covers at least `min_object_covered` of the image. The first kept try
  wins; none -> the whole image. All tries are drawn at once and the first
  valid one is selected, which gives the same distribution as TF's loop.

  One place differs in float precision only: TF computes the width-capped
  height bound (W + 0.5 - 1e-7) / aspect in double; here it is float32, and
  the same round(height * aspect) <= W check corrects an overshoot.

  Args:
    key: a PRNG key.
    image_shape: static (H, W[, C]).
    area_min, area_max, aspect_min, aspect_max: the sampling ranges.

  Returns:
    (top, left, height, width): int32 scalars.
  """
  u = _uniforms(key, 4 * attempts).reshape(4, attempts)
  return _inception_window(u, image_shape, area_min, area_max, aspect_min,
                           aspect_max, min_object_covered)


def _inception_window(u, image_shape, area_min, area_max, aspect_min,
                      aspect_max, min_object_covered=0.1):
  """inception_crop_window from uniforms u: float32[4, attempts]."""
  h, w = int(image_shape[0]), int(image_shape[1])
  f32 = jnp.float32
  aspect = u[0] * (f32(aspect_max) - f32(aspect_min)) + f32(aspect_min)
  # As the kernel: (relative area * width) * height, in float32.
  min_area = np.float32(np.float32(area_min) * np.float32(w)) * np.float32(h)
  max_area = np.float32(np.float32(area_max) * np.float32(w)) * np.float32(h)
  height = _round_half_even_int(jnp.sqrt(min_area / aspect))
  max_height = _round_half_even_int(jnp.sqrt(max_area / aspect))
  capped = jnp.floor((f32(w) + f32(0.5)) / aspect).astype(jnp.int32)
  capped = jnp.where(_round_half_even_int(capped * aspect) > w, capped - 1,
                     capped)
  max_height = jnp.where(_round_half_even_int(max_height * aspect) > w, capped,
                         max_height)
  max_height = jnp.minimum(max_height, h)
  height = jnp.minimum(height, max_height)
  height = height + _randint(u[1], jnp.maximum(max_height - height + 1, 1))
  width = _round_half_even_int(height * aspect)
  area = (width * height).astype(f32)
  grow = area < min_area
  height = jnp.where(grow, height + 1, height)
  width = jnp.where(grow, _round_half_even_int(height * aspect), width)
  area = (width * height).astype(f32)
  shrink = area > max_area
  height = jnp.where(shrink, height - 1, height)
  width = jnp.where(shrink, _round_half_even_int(height * aspect), width)
  area = (width * height).astype(f32)
  valid = ((area >= min_area) & (area <= max_area) & (width <= w) &
           (height <= h) & (width > 0) & (height > 0))
  # SatisfiesOverlapConstraints with the whole image as the box.
  covered = area / np.float32(h * w)
  valid &= covered >= np.float32(min_object_covered)

  def offset(u, side, length):  # TF's Uniform(side - length), 0 if none.
    return jnp.where(length < side,
                     _randint(u, jnp.maximum(side - length, 1)), 0)
  top, left = offset(u[2], h, height), offset(u[3], w, width)
  first = jnp.argmax(valid)  # The first valid try (0 if none).
  found = valid[first]
  return (jnp.where(found, top[first], 0), jnp.where(found, left[first], 0),
          jnp.where(found, height[first], h), jnp.where(found, width[first], w))


def _inception_crop_float(u, image, out_h, out_w, area_min, area_max,
                          aspect_min, aspect_max, flip=None):
  """Window from uniforms u[4, attempts], then legacy bilinear; float32."""
  top, left, h, w = _inception_window(u, image.shape, area_min, area_max,
                                      aspect_min, aspect_max)
  return _bilinear_window(image, top, left, h, w, out_h, out_w, flip)


def _adjust_saturation(x, factor):
  """tf.image.adjust_saturation for float RGB, without the HSV round trip.

  HSV keeps hue and V = max and scales S = (max - min) / max by `factor`,
  clipped to [0, 1]: c' = max - (max - c) * S' / S with S' / S =
  min(factor, max / (max - min)); pixels with max <= 0 or max == min become
  (max, max, max). (The same formula as input_pipeline.preprocess.)
  """
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  v = jnp.maximum(r, jnp.maximum(g, b))
  spread = v - jnp.minimum(r, jnp.minimum(g, b))
  k = jnp.where((v > 0) & (spread > 0),
                jnp.minimum(factor, v / jnp.maximum(spread, 1e-30)), 0.0)
  v = v[..., None]
  return v - (v - x) * k[..., None]


def _adjust_contrast(x, factor):
  """tf.image.adjust_contrast: (x - channel mean) * factor + channel mean."""
  mean = jnp.mean(x, axis=(0, 1), keepdims=True)
  return (x - mean) * factor + mean


def _adjust_hue(x, delta):
  """tf.image.adjust_hue for float RGB: hue += delta (turns), S and V kept.

  Hue in [0, 6) sextants from the standard RGB -> HSV formulas (one
  division); back with c = V - (V - min) * clip(min(k, 4 - k), 0, 1),
  k = (n + hue) mod 6 for n = 5, 3, 1 (R, G, B). Grey pixels (max == min)
  are unchanged. No fmod (slow on CPU): floor and selects only.
  """
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  v = jnp.maximum(r, jnp.maximum(g, b))
  chroma = v - jnp.minimum(r, jnp.minimum(g, b))
  is_r = v == r
  is_g = (v == g) & ~is_r
  num = jnp.where(is_r, g - b, jnp.where(is_g, b - r, r - g))
  hue = (jnp.where(is_r, 0.0, jnp.where(is_g, 2.0, 4.0)) +
         num / jnp.where(chroma > 0, chroma, 1.0) + delta * 6.0)
  hue = hue - 6.0 * jnp.floor(hue / 6.0)  # Into [0, 6].
  def channel(n):
    k = n + hue
    k = jnp.where(k >= 6.0, k - 6.0, k)
    return v - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
  return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], -1)


def _color_jitter_01(u, x, brightness, saturation):
  """slim distort_color(fast_mode=True, ordering 0) on float [0, 1] images.

  From uniforms u[2]: brightness delta ~ U[-b, b] added, then saturation
  factor ~ U[lo, hi], clipped once at the end (slim does not clip between).
  """
  delta = _scale(u[0], -brightness, brightness)
  factor = _scale(u[1], saturation[0], saturation[1])
  return color_jitter_apply(x, delta, factor)


def color_jitter_apply(x, delta, factor):
  """The colour_jitter transform for given draws: float [0, 1] -> [0, 1]."""
  return jnp.clip(_adjust_saturation(x + delta, factor), 0.0, 1.0)


def color_distort_params(key, strength: float):
  """Draws SimCLR's colour-jitter parameters (simclrv2 implementation).

  Returns dict: apply_u (uniform [0, 1), apply if < p), brightness factor ~
  U[max(0, 1 - 0.8 s), 1 + 0.8 s] (multiplicative), contrast factor and
  saturation factor ~ the same range, hue delta ~ U[-0.2 s, 0.2 s] (turns),
  order: int32[4] a uniformly random permutation of (brightness, contrast,
  saturation, hue) = (0, 1, 2, 3).
  """
  u = _uniforms(key, 9)
  b = c = s = 0.8 * strength
  h = 0.2 * strength
  return {
      'apply_u': u[0],
      'brightness': _scale(u[1], max(0.0, 1.0 - b), 1.0 + b),
      'contrast': _scale(u[2], max(0.0, 1.0 - c), 1.0 + c),
      'saturation': _scale(u[3], max(0.0, 1.0 - s), 1.0 + s),
      'hue': _scale(u[4], -h, h),
      'order': jnp.argsort(u[5:]).astype(jnp.int32),
  }


def color_distort_apply(x, params):
  """The four SimCLR colour ops in params['order'], clip after each.

  float [0, 1] RGB -> float [0, 1]. Brightness: x * factor; contrast, hue:
  tf.image.adjust_contrast / adjust_hue; saturation: tf.image.
  adjust_saturation (HSV S scaled, clipped).
  """
  def step(i, x):
    # All four candidates and a select: what vmap makes of a switch anyway,
    # and faster; a loop body compiles once instead of four times.
    which = params['order'][i]
    y = jnp.select(
        [which == 0, which == 1, which == 2],
        [x * params['brightness'], _adjust_contrast(x, params['contrast']),
         _adjust_saturation(x, params['saturation'])],
        _adjust_hue(x, params['hue']))
    return jnp.clip(y, 0.0, 1.0)
  return jax.lax.fori_loop(0, 4, step, x)


def blur_kernel(sigma, radius: int):
  """Normalised 1-D Gaussian exp(-x^2 / (2 sigma^2)), x = -radius..radius."""
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  k = jnp.exp(-x * x / (2.0 * jnp.square(sigma)))
  return k / jnp.sum(k)


def blur_radius(height: int, kernel_fraction: float) -> int:
  """SimCLR's blur radius: side floor(fraction x height), radius side // 2."""
  return int(math.floor(height * kernel_fraction + 1e-9)) // 2


def gaussian_blur_apply(x, sigma, radius: int):
  """Separable Gaussian blur of float[H, W, C], vertical then horizontal.

  Zero padding outside the image ('SAME' convolution), as SimCLR's
  depthwise conv2d: borders darken by the kernel mass that falls outside.
  """
  if radius == 0:
    return x
  k = blur_kernel(sigma, radius)
  h, w = x.shape[:2]
  taps = 2 * radius + 1
  padded = jnp.pad(x, ((radius, radius), (0, 0), (0, 0)))
  y = sum(padded[j:j + h] * k[j] for j in range(taps))
  padded = jnp.pad(y, ((0, 0), (radius, radius), (0, 0)))
  return sum(padded[:, j:j + w] * k[j] for j in range(taps))


# ----------------------------------------------------------------------------
# Ops.


@register('decode')
def decode() -> Op:
  """Identity on decoded uint8 [H, W, 3]; gray ([H, W] or [H, W, 1]) -> 3
  equal channels; RGBA -> RGB (alpha dropped), as the TF op on decoded input.

  Raises ValueError for non-uint8 input or other channel counts.
  """
  def op(key, image):
    del key
    if image.dtype != jnp.uint8:
      raise ValueError(f'decode: expected uint8 images, got {image.dtype}')
    if image.ndim == 2:
      image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
      raise ValueError(f'decode: expected [H, W] or [H, W, 1|3|4], got shape '
                       f'{tuple(image.shape)}')
    if image.shape[-1] == 1:
      return jnp.broadcast_to(image, image.shape[:2] + (3,))
    return image[..., :3]
  return op


@register('inception_crop')
def inception_crop(size: Size, area_min: float = 0.05, area_max: float = 1.0,
                   aspect_min: float = 0.75, aspect_max: float = 1.33) -> Op:
  """slim's inception random-resized crop -> uint8[size, size, C].

  `inception_crop_window` (whole image as box, min_object_covered 0.1, so
  the effective minimum area is 10%; aspect w/h in [0.75, 1.33]; 100
  attempts; whole-image fallback), then legacy bilinear resize (squash).
  """
  oh, ow = _hw(size)
  area_min, area_max = _range(area_min, area_max, 'area', upper=1.0)
  aspect_min, aspect_max = _range(aspect_min, aspect_max, 'aspect')
  def op(key, image):
    u = _uniforms(key, 400).reshape(4, 100)
    return _to_uint8(_inception_crop_float(u, image, oh, ow, area_min,
                                           area_max, aspect_min, aspect_max))
  return op


@register('flip_lr')
def flip_lr() -> Op:
  """Random left-right mirror, p=0.5."""
  return _flip


@register('color_jitter')
def color_jitter(brightness: float = 32.0 / 255.0,
                 saturation: Tuple[float, float] = (0.5, 1.5)) -> Op:
  """slim fast-mode colour distortion on [0, 1] floats, rounded back to uint8.

  Brightness delta ~ U[-32/255, 32/255] (added), then saturation factor ~
  U[0.5, 1.5] (tf.image.adjust_saturation), clip to [0, 1].
  """
  brightness = _number(brightness, 'brightness', 0.0, 1.0)
  if not (isinstance(saturation, (tuple, list)) and len(saturation) == 2):
    raise ValueError(f'saturation must be a pair (lo, hi), got {saturation!r}')
  saturation = _range(saturation[0], saturation[1], 'saturation')
  def op(key, image):
    _check_rgb(image, 'color_jitter')
    x = image.astype(jnp.float32) / 255.0
    u = _uniforms(key, 2)
    return _to_uint8(_color_jitter_01(u, x, brightness, saturation) * 255.0)
  return op


@register('inception_eval')
def inception_eval(size: Size, central_fraction: float = 0.875) -> Op:
  """slim eval: central crop keeping 87.5% of each side, bilinear resize.

  The crop is tf.image.central_crop's: start = int((n - n * fraction) / 2)
  (float64), length n - 2 start.
  """
  oh, ow = _hw(size)
  fraction = _number(central_fraction, 'central_fraction', 0.0, 1.0,
                     lo_open=True)
  def op(key, image):
    del key
    h, w = image.shape[:2]
    top, left = int((h - h * fraction) / 2), int((w - w * fraction) / 2)
    return _to_uint8(_bilinear_window(image, top, left, h - 2 * top,
                                      w - 2 * left, oh, ow))
  return op


@register('inception_preprocess')
def inception_preprocess(size: Size, *, train: bool) -> Op:
  """The study's `inception_preprocess` op, float inside, rounded once.

  train: inception_crop + flip_lr + color_jitter without the intermediate
  uint8 roundings of the separate ops (slim keeps floats throughout);
  eval: inception_eval.
  """
  if not train:
    return inception_eval(size)
  oh, ow = _hw(size)
  def crop_flip(key, image):
    _check_rgb(image, 'inception_preprocess')
    u = _uniforms(key, 4 * 100 + 3)
    # The flip (p = 1/2) is folded into the resize's column taps.
    x = _inception_crop_float(u[:400].reshape(4, 100), image, oh, ow, 0.05,
                              1.0, 0.75, 1.33, flip=u[400] < 0.5) / 255.0
    return x, u[401:]
  def jitter(key, carry):
    del key
    x, u = carry
    return _to_uint8(_color_jitter_01(u, x, 32.0 / 255.0, (0.5, 1.5)) * 255.0)
  def op(key, image):
    return jitter(key, crop_flip(key, image))
  # make_batch_fn runs the stages with a fusion boundary between them.
  op.stages = (crop_flip, jitter)
  return op


@register('resize')
def resize(size: Size) -> Op:
  """Legacy bilinear resize to `size`, ignoring the aspect ratio (squash).

  An image already of that size passes through unchanged.
  """
  oh, ow = _hw(size)
  def op(key, image):
    del key
    if image.shape[:2] == (oh, ow):
      return image
    return _to_uint8(_resize_bilinear(image, oh, ow))
  return op


def resize_small_shape(h: int, w: int, size: int) -> Tuple[int, int]:
  """resize_small's output (h, w): float32 ratio, sides rounded half-even."""
  ratio = np.float32(size) / np.float32(min(h, w))
  return (int(np.round(np.float32(h) * ratio)),
          int(np.round(np.float32(w) * ratio)))


@register('resize_small')
def resize_small(size: int) -> Op:
  """Area resize so the shorter side is `size`, aspect kept (rounded).

  As the study: ratio in float32, new side = round(side * ratio),
  TF1 resize_area(align_corners=False). No-op at the target size.
  """
  if not (isinstance(size, (int, np.integer)) and not isinstance(size, bool)
          and size > 0):
    raise ValueError(f'size must be a positive int (the shorter side), got '
                     f'{size!r}')
  size = int(size)
  def op(key, image):
    del key
    h, w = image.shape[:2]
    if min(h, w) == size:
      return image
    return _to_uint8(_resize_area(image, *resize_small_shape(h, w, size)))
  return op


@register('random_crop')
def random_crop(size: Size) -> Op:
  """Uniformly random crop of `size` (offsets in [0, H - h] equally likely)."""
  h, w = _hw(size)
  def op(key, image):
    _check_fits(image, h, w, 'random_crop')
    u = _uniforms(key, 2)
    top = _randint(u[0], image.shape[0] - h + 1)
    left = _randint(u[1], image.shape[1] - w + 1)
    return jax.lax.dynamic_slice(image, (top, left, 0),
                                 (h, w, image.shape[2]))
  return op


@register('central_crop')
def central_crop(size: Size) -> Op:
  """Central crop of `size`, offset (H - h) // 2 (the study's)."""
  h, w = _hw(size)
  def op(key, image):
    del key
    _check_fits(image, h, w, 'central_crop')
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    return image[top:top + h, left:left + w]
  return op


@register('crop')
def crop(size: Size, *, train: bool) -> Op:
  """The study's `crop`: random at training, central at evaluation."""
  return random_crop(size) if train else central_crop(size)


def gray(image, weights: str = 'mean'):
  """uint8[H, W, 3] -> uint8[H, W, 3] of equal channels.

  'mean': the study's integer mean floor((R + G + B) / 3). 'luma': ITU-R
  601, round(0.2989 R + 0.5870 G + 0.1140 B) (tf.image.rgb_to_grayscale's
  weights, computed on [0, 255] floats and rounded half to even).
  """
  if weights == 'mean':
    g = (jnp.sum(image.astype(jnp.int32), -1, keepdims=True) // 3
         ).astype(jnp.uint8)
  else:
    x = image.astype(jnp.float32)
    g = _to_uint8(x[..., 0:1] * LUMA_WEIGHTS[0] + x[..., 1:2] * LUMA_WEIGHTS[1]
                  + x[..., 2:3] * LUMA_WEIGHTS[2])
  return jnp.broadcast_to(g, image.shape)


@register('to_gray')
def to_gray(p: float = 1.0, weights: str = 'mean') -> Op:
  """With probability p (decided once per image), RGB -> gray x 3 channels.

  weights='mean' (default): the study's integer channel mean; 'luma': ITU-R
  601 (SimCLR's colour drop: `to_gray(0.2, weights='luma')`).
  """
  p = _prob(p)
  if weights not in GRAY_WEIGHTS:
    raise ValueError(f'weights must be one of {GRAY_WEIGHTS}, got {weights!r}')
  def op(key, image):
    _check_rgb(image, 'to_gray')
    return jnp.where(jax.random.uniform(key) < p, gray(image, weights), image)
  return op


@register('pad_crop_flip')
def pad_crop_flip(pad: int = 4, *, train: bool) -> Op:
  """CIFAR augmentation: zero-pad by `pad`, random crop back, random flip.

  Offsets uniform in [0, 2 pad]. Identity at evaluation.
  """
  if not (isinstance(pad, (int, np.integer)) and not isinstance(pad, bool)
          and pad >= 0):
    raise ValueError(f'pad must be a non-negative int, got {pad!r}')
  pad = int(pad)
  def op(key, image):
    if not train:
      return image
    u = _uniforms(key, 3)
    h, w, c = image.shape
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    top, left = _randint(u[0], 2 * pad + 1), _randint(u[1], 2 * pad + 1)
    out = jax.lax.dynamic_slice(padded, (top, left, 0), (h, w, c))
    return jnp.where(u[2] < 0.5, out[:, ::-1], out)
  return op


@register('color_distort')
def color_distort(strength: float = 1.0, p: float = 0.8) -> Op:
  """SimCLR colour jitter (Chen et al. 2020, App. A), with probability p.

  On [0, 1] floats, in a uniformly random order, each followed by a clip to
  [0, 1] (google-research/simclr, impl 'simclrv2'):
    brightness: x * f, f ~ U[max(0, 1 - 0.8 s), 1 + 0.8 s] (multiplicative,
      as SimCLR v2 and torchvision's ColorJitter; SimCLR v1 added a delta);
    contrast: tf.image.adjust_contrast, f ~ U[max(0, 1 - 0.8 s), 1 + 0.8 s];
    saturation: tf.image.adjust_saturation, same range;
    hue: tf.image.adjust_hue, delta ~ U[-0.2 s, 0.2 s] (fraction of a turn).
  Rounded once to uint8 at the end; unchanged when not applied. (The lower
  bounds are clamped at 0, which only matters for s > 1.25.)
  """
  strength = _number(strength, 'strength', 0.0)
  p = _prob(p)
  def op(key, image):
    _check_rgb(image, 'color_distort')
    params = color_distort_params(key, strength)
    x = color_distort_apply(image.astype(jnp.float32) / 255.0, params)
    return jnp.where(params['apply_u'] < p, _to_uint8(x * 255.0), image)
  return op


@register('gaussian_blur')
def gaussian_blur(p: float = 0.5, sigma_min: float = 0.1,
                  sigma_max: float = 2.0, kernel_fraction: float = 0.1) -> Op:
  """SimCLR's random Gaussian blur (Chen et al. 2020, App. A), probability p.

  sigma ~ U[sigma_min, sigma_max] (pixels); kernel side floor(kernel_fraction
  x H) (10% of the image height, SimCLR's height // 10), radius side // 2, so
  2 radius + 1 taps; separable, zero padding ('SAME'); radius 0 is identity.
  Rounded to uint8.
  """
  p = _prob(p)
  sigma_min, sigma_max = _range(sigma_min, sigma_max, 'sigma')
  kernel_fraction = _number(kernel_fraction, 'kernel_fraction', 0.0, 1.0)
  def op(key, image):
    u = _uniforms(key, 2)
    radius = blur_radius(image.shape[0], kernel_fraction)
    sigma = _scale(u[1], sigma_min, sigma_max)
    out = _to_uint8(gaussian_blur_apply(image.astype(jnp.float32), sigma,
                                        radius))
    return jnp.where(u[0] < p, out, image)
  return op


# ----------------------------------------------------------------------------
# Corruptions of the pretraining images (Cole et al. 2022): written
# before the augmentation, e.g. decode|downsample(2)|inception_crop(32)|flip_lr.


def _positive_int(x, what: str) -> int:
  if not (isinstance(x, (int, np.integer)) and not isinstance(x, bool)
          and x > 0):
    raise ValueError(f'{what} must be a positive int, got {x!r}')
  return int(x)


def downsample_shape(h: int, w: int, factor: int) -> Tuple[int, int]:
  """The low-resolution size of `downsample`: max(side // factor, 1)."""
  return max(h // factor, 1), max(w // factor, 1)


@register('downsample')
def downsample(factor: int, half_pixel: bool = True) -> Op:
  """Loss of resolution: area resize down by `factor`, bilinear back up.

  uint8[H, W, C] -> uint8[H, W, C] (same size). Down: TF's resize_area
  (align_corners=False; ResizeArea has no half-pixel option) to
  downsample_shape (max(side // factor, 1): an exact box mean when factor
  divides the side), rounded to uint8 (the low-resolution image as stored);
  up: TF's ResizeBilinear to (H, W), rounded. factor 1 is the identity.

  half_pixel (default True): half-pixel centres, the default of TF2's
  tf.image.resize 'bilinear' (Cole et al.'s exact resize call is not known
  here): the upsampled grid is aligned with the area cells, so the
  corruption removes detail without moving the image. False: the TF1
  legacy kernel of this project's other resizes (revisiting study), which
  samples output pixel i at input i / factor and so shifts the content by
  (factor - 1) / 2 pixels towards the top-left and repeats the last rows
  and columns (1.5 pixels at 4x).
  Both equal TF's kernels bit for bit.
  """
  factor = _positive_int(factor, 'factor')
  if not isinstance(half_pixel, bool):
    raise ValueError(f'half_pixel must be True or False, got {half_pixel!r}')
  def op(key, image):
    del key
    if factor == 1:
      return image
    h, w = image.shape[:2]
    small = _to_uint8(_resize_area(image, *downsample_shape(h, w, factor)))
    return _to_uint8(_resize_bilinear_static(small, h, w, half_pixel))
  return op


def _jpeg_quality(quality) -> int:
  if not (isinstance(quality, (int, np.integer)) and
          not isinstance(quality, bool) and 1 <= quality <= 100):
    raise ValueError(f'quality must be an int in [1, 100], got {quality!r}')
  return int(quality)


JPEG_REFUSAL = (
    'JAX has no JPEG codec; the in-memory path must corrupt its stored images '
    'once at load time (ssl_jax.data.ops.split_host_ops + apply_host_ops, or '
    'jpeg_corrupt(images, quality)) and run the rest of the spec here; the '
    'tfds path runs jpeg per example in tf.data (check such specs with '
    'host=True)')


@register('jpeg')
def jpeg(quality: int) -> Op:
  """JPEG compression at `quality` (1..100): host-only, refused in JAX.

  The tf.data op (input_pipeline.preprocess.jpeg) and `jpeg_corrupt` encode
  baseline JPEG, 4:2:0 chroma, libjpeg quality scaling, and decode with the
  accurate integer IDCT. Raises HostOnlyOpError (a ValueError; build_op
  turns it into a one-line message) once the quality is valid.
  """
  _jpeg_quality(quality)
  raise HostOnlyOpError(JPEG_REFUSAL)


def jpeg_corrupt(images, quality: int) -> np.ndarray:
  """JPEG round trip of uint8 RGB images on the host (PIL), deterministic.

  The in-memory path's version of the `jpeg(quality)` op, run once on the
  stored images: equals the tf.data op (tf.io.encode_jpeg(quality) then
  decode_jpeg(dct_method='INTEGER_ACCURATE')) bit for bit (tests): baseline,
  4:2:0 chroma subsampling, no Huffman optimisation, libjpeg's quality
  scaling of the standard tables, accurate integer DCT both ways.

  Args:
    images: uint8[N, H, W, 3] or uint8[H, W, 3].
    quality: int in [1, 100] (Cole et al.'s levels here: 10 and 30).

  Returns:
    uint8 numpy array of the input's shape.

  Raises:
    ValueError: bad quality, or images not uint8 RGB.
    ImportError: Pillow is not installed (it is a test dependency; the
      machine running the in-memory path needs it for this op).
  """
  quality = _jpeg_quality(quality)
  images = np.asarray(images)
  single = images.ndim == 3
  batch = images[None] if single else images
  if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
    raise ValueError(f'jpeg_corrupt: images must be uint8 [N, H, W, 3] or '
                     f'[H, W, 3], got {images.dtype}{list(images.shape)}')
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('jpeg_corrupt needs Pillow (pip install Pillow)') from e
  out = np.empty_like(batch)

  def one(i):
    buf = io.BytesIO()
    Image.fromarray(batch[i], 'RGB').save(buf, format='JPEG', quality=quality,
                                          subsampling='4:2:0', optimize=False,
                                          progressive=False)
    with Image.open(buf) as decoded:
      out[i] = np.asarray(decoded.convert('RGB'))

  # PIL's codecs release the GIL: threads scale with the host's cores.
  workers = min(8, os.cpu_count() or 1, max(len(batch), 1))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    list(pool.map(one, range(len(batch))))
  return out[0] if single else out


def salt_pepper_apply(image, u, p: float):
  """Salt-and-pepper for given uniforms: u < p/2 -> 255, p/2 <= u < p -> 0.

  image uint8[H, W, C]; u float32[H, W, 1] (one draw per pixel, all
  channels together) or [H, W, C] (per channel). Other pixels unchanged.
  """
  salt = jnp.asarray(255, jnp.uint8)
  pepper = jnp.asarray(0, jnp.uint8)
  return jnp.where(u < p / 2, salt, jnp.where(u < p, pepper, image))


@register('salt_pepper')
def salt_pepper(p: float, per_channel: bool = False) -> Op:
  """Salt-and-pepper noise: each pixel independently becomes white (255)
  with probability p/2 or black (0) with probability p/2.

  uint8[H, W, C] -> uint8[H, W, C]. One uniform u per pixel (the op's one
  draw, H x W numbers): u < p/2 salt, p/2 <= u < p pepper. Default: all
  channels of a pixel together (white and black dots, the textbook impulse
  noise and the default of DALI's and albumentations' salt-and-pepper; Cole
  et al. give p only). per_channel=True draws each channel apart (H x W x C
  numbers): coloured impulses, as skimage's random_noise(mode='s&p') and
  so imagecorruptions' impulse_noise (ImageNet-C), where p is the rate per
  channel value.
  """
  p = _prob(p)
  if not isinstance(per_channel, bool):
    raise ValueError(f'per_channel must be True or False, got '
                     f'{per_channel!r}')
  def op(key, image):
    if image.ndim != 3:
      raise ValueError(f'salt_pepper: needs images [H, W, C], got shape '
                       f'{tuple(image.shape)}')
    h, w, c = image.shape
    k = c if per_channel else 1
    u = _uniforms(key, h * w * k).reshape(h, w, k)
    return salt_pepper_apply(image, u, p)
  return op


@register(VIEWS)
def views(n: int) -> Op:
  """Repeats the image n times: uint8[H, W, C] -> uint8[n, H, W, C].

  In a spec, the ops after it then run per view with their own keys
  (make_batch_fn); the op carries `num_views = n`.
  """
  if not (isinstance(n, (int, np.integer)) and not isinstance(n, bool)
          and n >= 1):
    raise ValueError(f'n must be a positive int, got {n!r}')
  n = int(n)
  def op(key, image):
    del key
    return jnp.broadcast_to(image[None], (n,) + image.shape)
  op.num_views = n
  return op


# ----------------------------------------------------------------------------
# Whole specs on batches.


def _call(name, op, spec, key, image):
  """One op on one example, naming the op and spec in its errors."""
  try:
    image = op(key, image)
  except ValueError as e:
    raise ValueError(f'{e} (op {name!r} in {spec!r})') from None
  if image.dtype != jnp.uint8:
    raise ValueError(f'Preprocessing op {name!r} in {spec!r} returned '
                     f'{image.dtype}; ops must return uint8.')
  return image


def _materialize(images, guard):
  """`images`, computed into a buffer of their own (a fusion boundary).

  XLA CPU fuses an op's output into the next op's kernel and recomputes it
  for every reuse (a flip reads each pixel twice, the colour ops read all
  three channels of each pixel): inception_crop|flip_lr|color_jitter ran 9x
  slower than its ops apart (measured, jax 0.10, 256 CIFAR images), and
  optimization_barrier is dropped by XLA CPU. A conditional is a boundary
  fusion cannot cross; its predicate, a NaN test of a value that is never
  NaN, is unknown to the compiler, and its other branch is never taken.
  """
  return jax.lax.cond(jnp.isnan(guard),
                      lambda x: jax.tree.map(jnp.zeros_like, x),
                      lambda x: x, images)


def _split_each(keys, n: int):
  """keys[B] -> keys[B, n]: each key split n ways."""
  return jax.vmap(lambda k: jax.random.split(k, n))(keys)


def make_batch_fn(spec: str, *, train: bool,
                  materialize: Optional[bool] = None
                  ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """One function applying `spec` to a batch; pure and jittable.

  Each op is vmapped over the batch in turn. Keys: example i's key
  fold_in(key, i) is split into one key per op of the spec; the views op's
  key is split into one key per view, and each view's key into one key per
  op after views.

  Args:
    spec: '|'-separated ops (see module doc), checked here (check_spec).
    train: passed to train-aware ops (`crop`, `inception_preprocess`,
      `pad_crop_flip`).
    materialize: put a fusion boundary between ops, and between the stages
      of an op that has `stages` (inception_preprocess), see `_materialize`;
      default: when JAX's default backend is the CPU, where it is up to 9x
      faster. (On GPUs a conditional would cost a device-to-host sync.) The
      draws are the same either way; the colour ops' float rounding can
      differ (XLA contracts multiply-adds per program), by 1 grey level on
      about 1 pixel in 10^5; the resizes are bit-exact either way.

  Returns:
    fn(key, images uint8[B, H, W, C]) -> uint8[B, h, w, C], or
    uint8[B, n, h, w, C] with `views(n)`. key: a typed PRNG key or raw
    uint32 key data. All images of a batch share one static shape. fn raises
    ValueError while tracing for non-uint8 or non-4-D input and for ops that
    cannot apply to the shape (e.g. a crop larger than the image).
  """
  return _batch_fn(spec, train, materialize, host=False)


def _batch_fn(spec, train, materialize, host):
  """make_batch_fn; host=True (output_shape only) keeps host-only ops' shape."""
  ops, index = _build(spec, train, host)
  if materialize is None:
    materialize = jax.default_backend() == 'cpu'

  def apply(ops, keys, images, guard):
    for i, (name, op) in enumerate(ops):
      if materialize and i:
        images = _materialize(images, guard)
      if materialize and hasattr(op, 'stages'):
        # An op in stages (float carries between them): a boundary after
        # each but the last, which _call checks.
        for stage in op.stages[:-1]:
          images = _materialize(jax.vmap(stage)(keys[:, i], images), guard)
        op = op.stages[-1]
      images = jax.vmap(lambda k, im, name=name, op=op: _call(
          name, op, spec, k, im))(keys[:, i], images)
    return images

  def fn(key, images):
    if images.dtype != jnp.uint8 or images.ndim != 4:
      raise ValueError(f'Preprocessing {spec!r}: images must be uint8[B, H, '
                       f'W, C], got {images.dtype}{list(images.shape)}')
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.wrap_key_data(key)
    guard = jax.random.key_data(key).ravel()[0].astype(jnp.float32)
    b = images.shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(
        jnp.arange(b, dtype=jnp.uint32))
    op_keys = _split_each(keys, max(len(ops), 1))  # [B, ops]
    if index is None:
      return apply(ops, op_keys, images, guard)
    pre, (_, views_op), post = ops[:index], ops[index], ops[index + 1:]
    images = apply(pre, op_keys[:, :index], images, guard)
    if materialize and pre:
      images = _materialize(images, guard)
    # Views flattened into the batch axis (one vmap level, not two: nested
    # vmaps compile markedly slower).
    n = views_op.num_views
    view_keys = _split_each(op_keys[:, index], n).reshape(b * n)
    out = apply(post, _split_each(view_keys, max(len(post), 1)),
                jnp.repeat(images, n, axis=0), guard)
    return out.reshape((b, n) + out.shape[1:])
  return fn


def output_shape(spec: str, input_shape: Sequence[int], *, train: bool,
                 host: bool = False) -> Tuple[int, ...]:
  """Shape of one example after `spec` for input (H, W, C); no compute.

  host: the spec is for the tf.data path; host-only ops (which keep the
    shape) are allowed, as in check_spec.

  Returns (h, w, C) or (n, h, w, C) with views(n). Via jax.eval_shape.
  Raises ValueError for a bad spec or a shape the ops cannot take.
  """
  if len(input_shape) != 3:
    raise ValueError(f'input_shape must be (H, W, C), got {input_shape!r}')
  fn = _batch_fn(spec, train, None, host)
  out = jax.eval_shape(fn, jax.random.key(0),
                       jax.ShapeDtypeStruct((1, *input_shape), jnp.uint8))
  return tuple(out.shape[1:])


# ----------------------------------------------------------------------------
# Host-only ops on stored images (the in-memory path).

HOST_FNS: Dict[str, Callable[..., np.ndarray]] = {'jpeg': jpeg_corrupt}


def _spec_parts(spec: str) -> List[str]:
  """The op strings of `spec`, one per parse_spec entry (same split)."""
  return [part.strip() for part in spec.split('|') if part.strip()]


def split_host_ops(spec: str) -> Tuple[str, str]:
  """Splits `spec` for the in-memory path: (host_spec, device_spec).

  host_spec: the ops up to and including the last host-only op (HOST_ONLY_OPS,
  `jpeg`), to run ONCE on the stored images (apply_host_ops); device_spec:
  the rest, for make_batch_fn. ('', spec) without host-only ops. Running the
  prefix once equals running it per example (the tf.data path) because every
  op in it must be deterministic (DETERMINISTIC_OPS or host-only); e.g.
  'decode|downsample(2)|jpeg(10)|inception_crop(32)|flip_lr' ->
  ('decode|downsample(2)|jpeg(10)', 'inception_crop(32)|flip_lr').

  Raises:
    ValueError (one line): a bad spec, or a random op / views before a
    host-only op (it could not be applied once), naming both.
  """
  parsed = parse_spec(spec, known=OPS)
  host = [i for i, (name, _, _) in enumerate(parsed) if name in HOST_ONLY_OPS]
  if not host:
    return '', spec
  last = host[-1]
  for name, args, kwargs in parsed[:last + 1]:
    if name not in DETERMINISTIC_OPS | HOST_ONLY_OPS:
      raise ValueError(
          f'Preprocessing {spec!r}: {parsed[last][0]!r} is applied once to the '
          f'stored images on the in-memory path, so only deterministic ops '
          f'({", ".join(sorted(DETERMINISTIC_OPS))}) may come before it; '
          f'found {name!r}')
    build_op(name, args, kwargs, train=True, spec=spec, host=True)
  parts = _spec_parts(spec)
  return '|'.join(parts[:last + 1]), '|'.join(parts[last + 1:])


def apply_host_ops(images, host_spec: str, *, batch_size: int = 1024
                   ) -> np.ndarray:
  """Runs a host_spec of split_host_ops once on stored images.

  Host-only ops run their HOST_FNS version (jpeg: jpeg_corrupt, PIL); runs
  of the other (deterministic) ops run through make_batch_fn, jitted, in
  chunks of `batch_size`. The result equals the tf.data path's per-example
  output of the same ops (tests).

  Args:
    images: uint8[N, H, W, C] (C = 3 for jpeg).
    host_spec: only deterministic and host-only ops (split_host_ops' first
      part); '' returns the images unchanged.

  Returns:
    uint8 numpy [N, h, w, C].

  Raises:
    ValueError: a bad spec or an op that is neither deterministic nor
      host-only; images not uint8[N, H, W, C].
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f'apply_host_ops: images must be uint8 [N, H, W, C], got '
                     f'{images.dtype}{list(images.shape)}')
  parsed = parse_spec(host_spec, known=OPS)
  bad = [n for n, _, _ in parsed if n not in DETERMINISTIC_OPS | HOST_ONLY_OPS]
  if bad:
    raise ValueError(f'apply_host_ops: {host_spec!r} has ops that are neither '
                     f'deterministic nor host-only: {bad} (use split_host_ops)')
  parts = _spec_parts(host_spec)
  device = []  # The pending run of device ops.

  def flush(images):
    if not device:
      return images
    fn = jax.jit(make_batch_fn('|'.join(device), train=True))
    key = jax.random.key(0)  # Unused: the ops are deterministic.
    device.clear()
    return np.concatenate([np.asarray(fn(key, images[i:i + batch_size]))
                           for i in range(0, max(len(images), 1),
                                          batch_size)])

  for (name, args, kwargs), part in zip(parsed, parts):
    if name in HOST_ONLY_OPS:
      build_op(name, args, kwargs, train=True, spec=host_spec, host=True)
      images = HOST_FNS[name](flush(images), *args, **kwargs)
    else:
      device.append(part)
  return flush(images)
