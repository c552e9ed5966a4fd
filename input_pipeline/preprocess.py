"""Preprocessing ops of the revisiting-self-supervised study, as tf.data ops.

A pipeline is a big_vision-style string of ops separated by '|', e.g.

  decode|inception_crop(224)|flip_lr|color_jitter
  decode|resize_small(256)|crop(224)
  decode|resize(292)|to_gray(0.66)|crop(255)

Every op is a factory registered in `OPS`; called with the op's arguments it
returns `fn(features) -> features`, where `features` is a dict holding one
example: `image` (encoded bytes before `decode`, uint8[H, W, 3] after) and any
other keys, which pass through untouched. Every op returns uint8 images: batches
cross to the accelerator as uint8 and the JAX pretext stage normalises them.

Randomness is stateless. `features['_seed']` (int64[2]) seeds the example; each
random op splits it, uses one half and passes the other on, so a pipeline is a
pure function of (example, seed). The datasets derive the seed from the
config seed and the example's position: in the host's stream for training
(with the process index), in the split for evaluation (host-count free).

Ops that behave differently at training and evaluation take a `train` flag
(`crop`, `inception_preprocess`, `pad_crop_flip`); `get_preprocess_fn(spec,
train=...)` passes it. The other random ops (`inception_crop`, `flip_lr`,
`color_jitter`, `random_crop`, `to_gray`) are random wherever they are written,
as in big_vision; `to_gray` is meant to be random at evaluation too (the study
applies it to the pretext evaluation of the patch tasks).

Resizes use TF1's legacy kernels (`tf.compat.v1.image.resize_*`,
align_corners=False, no half-pixel centres), as the study did.
"""
import ast
import inspect
from typing import Callable, Dict, Sequence, Tuple, Union

import tensorflow as tf

try:  # TF is only the input pipeline: it must never take accelerator memory.
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # Devices already initialised elsewhere.
  pass

Features = Dict[str, tf.Tensor]
PreprocessFn = Callable[[Features], Features]
Size = Union[int, Sequence[int]]

SEED_KEY = '_seed'
OPS: Dict[str, Callable[..., PreprocessFn]] = {}
# Ops whose output has the input's size: a pipeline of only these keeps the
# dataset's own static image shape (e.g. 'decode|pad_crop_flip' on CIFAR-10).
SIZE_PRESERVING_OPS = frozenset(
    {'decode', 'flip_lr', 'color_jitter', 'to_gray', 'pad_crop_flip'})


def register(name: str):
  """Registers an op factory under `name` (the name used in spec strings)."""
  def wrap(factory):
    OPS[name] = factory
    return factory
  return wrap


# ----------------------------------------------------------------------------
# Helpers.


def _hw(size: Size) -> Tuple[int, int]:
  if isinstance(size, int):
    return size, size
  h, w = size
  return int(h), int(w)


def _take_seed(features: Features) -> Tuple[tf.Tensor, Features]:
  """Returns (seed for this op: int64[2], features with the chain advanced).

  Without `_seed` (ops used outside a dataset) the op falls back to TF's
  stateful generator: random, but not reproducible.
  """
  features = dict(features)
  seed = features.get(SEED_KEY)
  if seed is None:
    return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64), features
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
  features[SEED_KEY] = seeds[1]
  return seeds[0], features


def _uniform(seed, minval=0.0, maxval=1.0):
  return tf.random.stateless_uniform([], seed, minval=minval, maxval=maxval)


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
  """float [0, 255] -> uint8, rounding half to even (tf.round, np.round)."""
  return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def _resize_bilinear(image: tf.Tensor, h: int, w: int) -> tf.Tensor:
  """uint8/float[H, W, 3] -> float32[h, w, 3], TF1 legacy bilinear (slim's)."""
  # The kernel behind tf.compat.v1.image.resize_bilinear (which warns).
  out = tf.raw_ops.ResizeBilinear(
      images=image[None], size=[h, w], align_corners=False,
      half_pixel_centers=False)[0]
  out.set_shape([h, w, 3])
  return out


def _same_size(image, h, w):
  shape = tf.shape(image)
  return tf.logical_and(tf.equal(shape[0], h), tf.equal(shape[1], w))


def _crop(image, top, left, h, w):
  # A clear message for images smaller than the crop (else a bare Slice error).
  tf.debugging.assert_greater_equal(
      tf.shape(image)[:2], tf.constant([h, w]),
      message=f'crop: image smaller than the crop size ({h}, {w})')
  out = tf.slice(image, tf.stack([top, left, 0]), [h, w, 3])
  out.set_shape([h, w, 3])
  return out


def _flip(image, seed):
  """Mirrors left-right with probability 1/2."""
  return tf.cond(_uniform(seed) < 0.5, lambda: tf.reverse(image, [1]),
                 lambda: image)


def inception_crop_window(image_shape, seed, area_min=0.05, area_max=1.0,
                          aspect_min=0.75, aspect_max=1.33):
  """slim's distorted_bounding_box_crop window: (begin, size), int32[3] each.

  The whole image is the box, min_object_covered=0.1, 100 attempts, and the
  whole image is the fallback when no attempt fits.
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed, min_object_covered=0.1,
      aspect_ratio_range=(aspect_min, aspect_max),
      area_range=(area_min, area_max), max_attempts=100,
      use_image_if_no_bounding_boxes=True)
  return begin, size


def _inception_crop_float(image, seed, size, area_min, area_max, aspect_min,
                          aspect_max):
  """Inception crop window, then legacy bilinear resize; float32 out."""
  h, w = _hw(size)
  begin, crop_size = inception_crop_window(
      tf.shape(image), seed, area_min, area_max, aspect_min, aspect_max)
  return _resize_bilinear(tf.slice(image, begin, crop_size), h, w)


def _adjust_saturation(x, factor):
  """tf.image.adjust_saturation for float RGB, without the HSV round trip.

  TF's kernel maps to HSV, scales S = (max - min) / max by `factor`, clips S
  to [0, 1] and maps back; hue and V = max are kept, so every channel keeps
  its place between min and max: c' = max - (max - c) * S' / S, with
  S' / S = min(factor, max / (max - min)); pixels with max <= 0 or max == min
  (S = 0) become (max, max, max). Same values to ~1e-6, 2x faster here.
  """
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  v = tf.maximum(r, tf.maximum(g, b))
  spread = v - tf.minimum(r, tf.minimum(g, b))
  k = tf.where((v > 0) & (spread > 0),
               tf.minimum(factor, v / tf.maximum(spread, 1e-30)), 0.0)
  v = v[..., None]
  return v - (v - x) * k[..., None]


def _color_jitter_01(image01, seed, brightness, saturation):
  """slim distort_color(fast_mode=True, ordering 0) on float [0, 1] images.

  Brightness then saturation, clipped once at the end (slim does not clip
  in between, so the saturation op may see values outside [0, 1]).
  """
  s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  x = image01 + _uniform(s1, -brightness, brightness)
  x = _adjust_saturation(x, _uniform(s2, saturation[0], saturation[1]))
  return tf.clip_by_value(x, 0.0, 1.0)


# ----------------------------------------------------------------------------
# Ops.


@register('decode')
def decode() -> PreprocessFn:
  """Encoded JPEG/PNG/GIF/BMP bytes (or decoded uint8) -> uint8[H, W, 3].

  JPEG uses dct_method='INTEGER_ACCURATE', which matches PIL exactly (TF's
  default IDCT differs by up to 5 grey levels). Grayscale becomes 3 channels.
  """
  def fn(features):
    features = dict(features)
    image = features['image']
    if image.dtype == tf.string:
      image = tf.cond(
          tf.io.is_jpeg(image),
          lambda: tf.io.decode_jpeg(image, channels=3,
                                    dct_method='INTEGER_ACCURATE'),
          lambda: tf.io.decode_image(image, channels=3,
                                     expand_animations=False))
    elif image.dtype != tf.uint8:
      raise ValueError(f'decode: expected bytes or uint8, got {image.dtype}.')
    else:
      if image.shape.rank == 2:
        image = image[..., None]
      channels = image.shape[-1]
      if channels == 1:
        image = tf.tile(image, [1, 1, 3])
      elif channels != 3:  # Unknown or RGBA: gray -> 3 channels, else RGB.
        image = tf.cond(tf.equal(tf.shape(image)[-1], 1),
                        lambda: tf.tile(image, [1, 1, 3]),
                        lambda: image[..., :3])
    image.set_shape([None, None, 3])
    features['image'] = image
    return features
  return fn


@register('inception_crop')
def inception_crop(size: Size, area_min: float = 0.05, area_max: float = 1.0,
                   aspect_min: float = 0.75, aspect_max: float = 1.33
                   ) -> PreprocessFn:
  """slim's inception random-resized crop -> uint8[size, size, 3].

  sample_distorted_bounding_box with the whole image as box,
  min_object_covered=0.1 (so the effective minimum area is 10%), aspect w/h in
  [0.75, 1.33] (slim's literal bounds), area in [area_min, area_max], 100
  attempts, whole image as fallback; then legacy bilinear resize (squash).
  """
  def fn(features):
    seed, features = _take_seed(features)
    features['image'] = _to_uint8(_inception_crop_float(
        features['image'], seed, size, area_min, area_max, aspect_min,
        aspect_max))
    return features
  return fn


@register('flip_lr')
def flip_lr() -> PreprocessFn:
  """Random left-right mirror, p=0.5."""
  def fn(features):
    seed, features = _take_seed(features)
    features['image'] = _flip(features['image'], seed)
    return features
  return fn


@register('color_jitter')
def color_jitter(brightness: float = 32.0 / 255.0,
                 saturation: Tuple[float, float] = (0.5, 1.5)) -> PreprocessFn:
  """slim fast-mode colour distortion on [0, 1] floats, rounded back to uint8.

  Brightness delta ~ U[-32/255, 32/255], then saturation factor ~ U[0.5, 1.5],
  clip to [0, 1].
  """
  def fn(features):
    seed, features = _take_seed(features)
    x = tf.cast(features['image'], tf.float32) / 255.0
    x = _color_jitter_01(x, seed, brightness, saturation)
    features['image'] = _to_uint8(x * 255.0)
    return features
  return fn


@register('inception_eval')
def inception_eval(size: Size, central_fraction: float = 0.875) -> PreprocessFn:
  """slim eval: central crop keeping 87.5% of each side, bilinear resize."""
  h, w = _hw(size)
  def fn(features):
    features = dict(features)
    image = tf.image.central_crop(features['image'], central_fraction)
    features['image'] = _to_uint8(_resize_bilinear(image, h, w))
    return features
  return fn


@register('inception_preprocess')
def inception_preprocess(size: Size, *, train: bool) -> PreprocessFn:
  """The study's `inception_preprocess` op, float inside, rounded once.

  train: inception_crop + flip_lr + color_jitter without the intermediate
  uint8 roundings of the separate ops (slim keeps floats throughout);
  eval: inception_eval.
  """
  if not train:
    return inception_eval(size)
  def fn(features):
    seed, features = _take_seed(features)
    s_crop, s_flip, s_color = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    x = _inception_crop_float(features['image'], s_crop, size, 0.05, 1.0, 0.75,
                              1.33) / 255.0
    x = _flip(x, s_flip)
    x = _color_jitter_01(x, s_color, 32.0 / 255.0, (0.5, 1.5))
    features['image'] = _to_uint8(x * 255.0)
    return features
  return fn


@register('resize')
def resize(size: Size) -> PreprocessFn:
  """Legacy bilinear resize to `size`, ignoring the aspect ratio (squash).

  An image already of that size passes through unchanged (same result, free).
  """
  h, w = _hw(size)
  def fn(features):
    features = dict(features)
    image = features['image']
    image = tf.cond(_same_size(image, h, w), lambda: image,
                    lambda: _to_uint8(_resize_bilinear(image, h, w)))
    image.set_shape([h, w, 3])
    features['image'] = image
    return features
  return fn


@register('resize_small')
def resize_small(size: int) -> PreprocessFn:
  """Area resize so the shorter side is `size`, aspect kept (rounded).

  As the study: ratio in float32, new side = round(side * ratio),
  tf.compat.v1.image.resize_area(align_corners=False).
  """
  def fn(features):
    features = dict(features)
    image = features['image']
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    ratio = tf.cast(size, tf.float32) / tf.cast(tf.minimum(h, w), tf.float32)
    nh = tf.cast(tf.round(tf.cast(h, tf.float32) * ratio), tf.int32)
    nw = tf.cast(tf.round(tf.cast(w, tf.float32) * ratio), tf.int32)
    def area():
      # The kernel behind tf.compat.v1.image.resize_area.
      out = tf.raw_ops.ResizeArea(images=image[None], size=tf.stack([nh, nw]),
                                  align_corners=False)[0]
      return _to_uint8(out)
    image = tf.cond(tf.equal(tf.minimum(h, w), size), lambda: image, area)
    image.set_shape([None, None, 3])
    features['image'] = image
    return features
  return fn


@register('random_crop')
def random_crop(size: Size) -> PreprocessFn:
  """Uniformly random crop of `size` (offsets in [0, H - h] equally likely)."""
  h, w = _hw(size)
  def fn(features):
    seed, features = _take_seed(features)
    image = features['image']
    shape = tf.shape(image)
    offsets = tf.random.stateless_uniform(
        [2], seed, minval=0, maxval=tf.int32.max, dtype=tf.int32)
    top = offsets[0] % (shape[0] - h + 1)
    left = offsets[1] % (shape[1] - w + 1)
    features['image'] = _crop(image, top, left, h, w)
    return features
  return fn


@register('central_crop')
def central_crop(size: Size) -> PreprocessFn:
  """Central crop of `size`, offset (H - h) // 2 (the study's)."""
  h, w = _hw(size)
  def fn(features):
    features = dict(features)
    image = features['image']
    shape = tf.shape(image)
    features['image'] = _crop(image, (shape[0] - h) // 2, (shape[1] - w) // 2,
                              h, w)
    return features
  return fn


@register('crop')
def crop(size: Size, *, train: bool) -> PreprocessFn:
  """The study's `crop`: random at training, central at evaluation."""
  return random_crop(size) if train else central_crop(size)


@register('to_gray')
def to_gray(p: float = 1.0) -> PreprocessFn:
  """With probability p (decided once per image), RGB -> channel mean x 3.

  On uint8 the mean is the study's integer mean: floor((R + G + B) / 3).
  """
  def fn(features):
    seed, features = _take_seed(features)
    image = features['image']
    def gray():
      # int16 holds 3 * 255; faster than int32 here.
      mean = tf.reduce_sum(tf.cast(image, tf.int16), -1, keepdims=True) // 3
      return tf.tile(tf.cast(mean, tf.uint8), [1, 1, 3])
    out = tf.cond(_uniform(seed) < p, gray, lambda: image)
    out.set_shape(image.shape)
    features['image'] = out
    return features
  return fn


@register('pad_crop_flip')
def pad_crop_flip(pad: int = 4, *, train: bool) -> PreprocessFn:
  """CIFAR augmentation: zero-pad by `pad`, random crop back, random flip.

  Identity at evaluation.
  """
  def fn(features):
    if not train:
      return dict(features)
    seed, features = _take_seed(features)
    s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = features['image']
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    offsets = tf.random.stateless_uniform(
        [2], s_crop, minval=0, maxval=2 * pad + 1, dtype=tf.int32)
    out = tf.slice(padded, tf.concat([offsets, [0]], 0), tf.shape(image))
    out = _flip(out, s_flip)
    out.set_shape(image.shape)
    features['image'] = out
    return features
  return fn


# ----------------------------------------------------------------------------
# Spec strings.


def parse_spec(spec: str):
  """'a|b(1, x=2)' -> [('a', (), {}), ('b', (1,), {'x': 2})]. Empty ops dropped.

  Arguments are Python literals. Raises ValueError for unknown ops (listing
  the known ones) and for malformed ops.
  """
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
        name = node.func.id
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
      else:
        raise SyntaxError('not a name or call')
    except (SyntaxError, ValueError) as e:
      raise ValueError(f'Malformed preprocessing op {part!r} in {spec!r}: {e}'
                       ) from None
    if name not in OPS:
      raise ValueError(f'Unknown preprocessing op {name!r} in {spec!r}. '
                       f'Known ops: {", ".join(sorted(OPS))}.')
    ops.append((name, args, kwargs))
  return ops


def get_op(name: str, args=(), kwargs=None, *, train: bool = True
           ) -> PreprocessFn:
  """Builds one registered op, passing `train` only to ops that take it."""
  kwargs = dict(kwargs or {})
  factory = OPS[name]
  if 'train' in inspect.signature(factory).parameters:
    kwargs['train'] = train
  try:
    return factory(*args, **kwargs)
  except TypeError as e:
    raise ValueError(f'Bad arguments for preprocessing op {name!r}: {e}'
                     ) from None


def get_preprocess_fn(spec: str, *, train: bool = True) -> PreprocessFn:
  """Parses `spec` into one fn(features) -> features applying the ops in order.

  Args:
    spec: '|'-separated ops, e.g. 'decode|inception_crop(224)|flip_lr'.
    train: passed to train-aware ops (`crop`, `inception_preprocess`,
      `pad_crop_flip`).

  Returns:
    fn(features) -> features. The input's `image` is bytes or uint8; the
    output's is uint8[H, W, 3]. `_seed` (int64[2]) seeds it if present and is
    removed from the output.
  """
  ops = [get_op(n, a, k, train=train) for n, a, k in parse_spec(spec)]

  def fn(features):
    features = dict(features)
    for op in ops:
      features = op(features)
    features.pop(SEED_KEY, None)
    if features['image'].dtype != tf.uint8:
      raise ValueError(f'Preprocessing {spec!r} must end with uint8 images, '
                       f'got {features["image"].dtype} (start with decode).')
    return features
  return fn

