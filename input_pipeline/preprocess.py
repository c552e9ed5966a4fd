"""Preprocessing ops of the revisiting-self-supervised study, as tf.data ops.

A pipeline is a big_vision-style string of ops separated by '|', e.g.

  decode|inception_crop(224)|flip_lr|color_jitter
  decode|resize_small(256)|crop(224)
  decode|resize(292)|to_gray(0.66)|crop(255)
  decode|to_gray(0.66)|views(8)|inception_preprocess(224)

The grammar (`parse_spec`) and the argument checks are shared with the JAX
implementation of the same ops, ssl_jax.data.ops (the device-resident data
path): both registries hold the same op names with the same arguments and
semantics, and each op's arguments are validated by building the JAX op too,
so both paths accept and reject the same specs with the same messages.

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

`views(n)`: the ops before it run once per image (a `to_gray` decision is
shared by every copy, as the study's exemplar task); the image is repeated n
times and the ops after it run once per view, each view with its own share of
the seed (the views op's seed split n ways): the example's image becomes
uint8[n, h, w, 3], so batches are uint8[B, n, h, w, 3].

Ops that behave differently at training and evaluation take a `train` flag
(`crop`, `inception_preprocess`, `pad_crop_flip`); `get_preprocess_fn(spec,
train=...)` passes it. The other random ops (`inception_crop`, `flip_lr`,
`color_jitter`, `random_crop`, `to_gray`, `salt_pepper`, and SimCLR's
`color_distort` and `gaussian_blur`) are random wherever they are written, as
in big_vision; `to_gray` is meant to be random at evaluation too (the study
applies it to the pretext evaluation of the patch tasks).

Resizes use TF1's legacy kernels (`tf.compat.v1.image.resize_*`,
align_corners=False, no half-pixel centres), as the study did; only the
`downsample` corruption defaults to half-pixel centres (see it).

Corruptions of the pretraining images (Cole et al. 2022), ordinary ops
written before the augmentation (`decode|downsample(2)|inception_crop(32)|
flip_lr`): `downsample(factor, half_pixel=True)` (resize_area down, bilinear
back up, half-pixel centres by default), `jpeg(quality)` (encode/decode round
trip; host-only: the JAX registry refuses it, and ssl_jax.data.ops.
jpeg_corrupt is its host version for stored images) and `salt_pepper(p,
per_channel=False)`.
"""
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import tensorflow as tf

from ssl_jax.data import ops as jax_ops

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
    {'decode', 'flip_lr', 'color_jitter', 'to_gray', 'pad_crop_flip',
     'color_distort', 'gaussian_blur', 'downsample', 'jpeg', 'salt_pepper'})


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


def _gray(image, weights):
  """uint8[H, W, 3] -> uint8[H, W, 3] of equal channels ('mean' or 'luma')."""
  if weights == 'mean':
    # int16 holds 3 * 255; faster than int32 here.
    g = tf.cast(tf.reduce_sum(tf.cast(image, tf.int16), -1, keepdims=True)
                // 3, tf.uint8)
  else:
    x = tf.cast(image, tf.float32)
    w = jax_ops.LUMA_WEIGHTS
    g = _to_uint8(x[..., 0:1] * w[0] + x[..., 1:2] * w[1] + x[..., 2:3] * w[2])
  return tf.tile(g, [1, 1, 3])


@register('to_gray')
def to_gray(p: float = 1.0, weights: str = 'mean') -> PreprocessFn:
  """With probability p (decided once per image), RGB -> gray x 3 channels.

  weights='mean' (default): the study's integer mean floor((R + G + B) / 3).
  weights='luma': ITU-R 601, round(0.2989 R + 0.5870 G + 0.1140 B) on
  [0, 255] floats (tf.image.rgb_to_grayscale's weights; SimCLR's colour drop
  is `to_gray(0.2, weights='luma')`).
  """
  if weights not in jax_ops.GRAY_WEIGHTS:
    raise ValueError(f'weights must be one of {jax_ops.GRAY_WEIGHTS}, got '
                     f'{weights!r}')
  def fn(features):
    seed, features = _take_seed(features)
    image = features['image']
    out = tf.cond(_uniform(seed) < p, lambda: _gray(image, weights),
                  lambda: image)
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


def _color_distort_01(x, seed, strength):
  """SimCLR colour jitter on float [0, 1]: four ops in random order, clipped.

  Draws as ssl_jax.data.ops.color_distort_params (the seed split 6 ways:
  apply, brightness, contrast, saturation, hue, order); the 'apply' half is
  the caller's.
  """
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 6))
  b = c = s = 0.8 * strength
  h = 0.2 * strength
  f_bright = _uniform(seeds[1], max(0.0, 1.0 - b), 1.0 + b)
  f_contrast = _uniform(seeds[2], max(0.0, 1.0 - c), 1.0 + c)
  f_sat = _uniform(seeds[3], max(0.0, 1.0 - s), 1.0 + s)
  d_hue = _uniform(seeds[4], -h, h)
  order = tf.argsort(tf.random.stateless_uniform([4], seeds[5]))
  for i in range(4):
    x = tf.switch_case(order[i], [
        lambda x=x: x * f_bright,
        lambda x=x: tf.image.adjust_contrast(x, f_contrast),
        lambda x=x: _adjust_saturation(x, f_sat),
        lambda x=x: tf.image.adjust_hue(x, d_hue)])
    x = tf.clip_by_value(x, 0.0, 1.0)
  return x


@register('color_distort')
def color_distort(strength: float = 1.0, p: float = 0.8) -> PreprocessFn:
  """SimCLR colour jitter (Chen et al. 2020, App. A), with probability p.

  On [0, 1] floats, in a uniformly random order, each followed by a clip to
  [0, 1] (google-research/simclr, impl 'simclrv2'):
    brightness: x * f, f ~ U[max(0, 1 - 0.8 s), 1 + 0.8 s] (multiplicative,
      as SimCLR v2 and torchvision's ColorJitter; SimCLR v1 added a delta);
    contrast: tf.image.adjust_contrast, f ~ U[max(0, 1 - 0.8 s), 1 + 0.8 s];
    saturation: tf.image.adjust_saturation, same range;
    hue: tf.image.adjust_hue, delta ~ U[-0.2 s, 0.2 s] (fraction of a turn).
  Rounded once to uint8; unchanged when not applied.
  """
  def fn(features):
    seed, features = _take_seed(features)
    image = features['image']
    def distort():
      x = tf.cast(image, tf.float32) / 255.0
      return _to_uint8(_color_distort_01(x, seed, strength) * 255.0)
    s_apply = tf.random.experimental.stateless_split(seed, 6)[0]
    out = tf.cond(_uniform(s_apply) < p, distort, lambda: image)
    out.set_shape(image.shape)
    features['image'] = out
    return features
  return fn


def _gaussian_blur(image, sigma, radius):
  """Separable Gaussian blur, zero padding ('SAME'): float[H, W, 3] -> same.

  SimCLR's: a normalised kernel exp(-x^2 / (2 sigma^2)), x = -r..r, as two
  depthwise convolutions (vertical, then horizontal).
  """
  x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
  k = tf.exp(-x * x / (2.0 * sigma * sigma))
  k /= tf.reduce_sum(k)
  k = tf.tile(k[:, None, None, None], [1, 1, 3, 1])
  out = tf.nn.depthwise_conv2d(image[None], k, [1, 1, 1, 1], 'SAME')
  out = tf.nn.depthwise_conv2d(out, tf.transpose(k, [1, 0, 2, 3]),
                               [1, 1, 1, 1], 'SAME')
  return out[0]


@register('gaussian_blur')
def gaussian_blur(p: float = 0.5, sigma_min: float = 0.1,
                  sigma_max: float = 2.0, kernel_fraction: float = 0.1
                  ) -> PreprocessFn:
  """SimCLR's random Gaussian blur (Chen et al. 2020, App. A), probability p.

  sigma ~ U[sigma_min, sigma_max] (pixels); kernel side floor(kernel_fraction
  x H) (SimCLR's height // 10), radius side // 2, so 2 radius + 1 taps;
  separable, zero padding ('SAME'); radius 0 is the identity. Rounded to
  uint8.
  """
  def fn(features):
    seed, features = _take_seed(features)
    s_apply, s_sigma = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))
    image = features['image']
    height = image.shape[0]
    if height is not None:  # Static: the same radius as the JAX op.
      radius = tf.constant(jax_ops.blur_radius(height, kernel_fraction))
    else:
      side = tf.floor(tf.cast(tf.shape(image)[0], tf.float64) *
                      kernel_fraction + 1e-9)
      radius = tf.cast(side, tf.int32) // 2
    def blur():
      sigma = _uniform(s_sigma, sigma_min, sigma_max)
      return _to_uint8(_gaussian_blur(tf.cast(image, tf.float32), sigma,
                                      radius))
    out = tf.cond(_uniform(s_apply) < p, blur, lambda: image)
    out.set_shape(image.shape)
    features['image'] = out
    return features
  return fn


# ----------------------------------------------------------------------------
# Corruptions of the pretraining images (Cole et al. 2022).


@register('downsample')
def downsample(factor: int, half_pixel: bool = True) -> PreprocessFn:
  """Loss of resolution: area resize down by `factor`, bilinear back up.

  uint8[H, W, 3] -> uint8[H, W, 3]. ResizeArea (align_corners=False) to
  (max(H // factor, 1), max(W // factor, 1)), rounded to uint8 (the stored
  low-resolution image), then ResizeBilinear back to (H, W), rounded;
  half_pixel=True: half-pixel centres (TF2 tf.image.resize 'bilinear',
  aligned with the area cells); False: the TF1 legacy kernel (shifts the
  content (factor - 1) / 2 pixels to the top-left). factor 1: identity.
  See ssl_jax.data.ops.downsample (the same pixels).
  """
  def fn(features):
    features = dict(features)
    image = features['image']
    if factor == 1:
      return features
    size = tf.shape(image)[:2]
    small = _to_uint8(tf.raw_ops.ResizeArea(
        images=image[None], size=tf.maximum(size // factor, 1),
        align_corners=False)[0])
    out = _to_uint8(tf.raw_ops.ResizeBilinear(
        images=small[None], size=size, align_corners=False,
        half_pixel_centers=half_pixel)[0])
    out.set_shape(image.shape)
    features['image'] = out
    return features
  return fn


@register('jpeg')
def jpeg(quality: int) -> PreprocessFn:
  """JPEG compression at `quality` (1..100): encode, decode, uint8 RGB.

  tf.io.encode_jpeg (baseline, 4:2:0 chroma, libjpeg quality scaling), then
  decode_jpeg with the accurate integer IDCT (as `decode`). Deterministic;
  equals ssl_jax.data.ops.jpeg_corrupt (PIL) bit for bit, which the
  in-memory path applies once to its stored images (the JAX registry has no
  JPEG op).
  """
  def fn(features):
    features = dict(features)
    image = features['image']
    out = tf.io.decode_jpeg(tf.io.encode_jpeg(image, quality=quality),
                            channels=3, dct_method='INTEGER_ACCURATE')
    out.set_shape(image.shape)
    features['image'] = out
    return features
  return fn


def salt_pepper_apply(image, u, p):
  """u < p/2 -> 255, p/2 <= u < p -> 0, else the pixel (u broadcasts).

  As ssl_jax.data.ops.salt_pepper_apply: u float32[H, W, 1] (per pixel) or
  [H, W, C] (per channel).
  """
  return tf.where(u < p / 2, tf.constant(255, tf.uint8),
                  tf.where(u < p, tf.constant(0, tf.uint8), image))


@register('salt_pepper')
def salt_pepper(p: float, per_channel: bool = False) -> PreprocessFn:
  """Salt-and-pepper noise: each pixel white (255) with probability p/2,
  black (0) with probability p/2, independently.

  One stateless uniform per pixel, all channels together (default), or per
  channel value (per_channel=True, as skimage's 's&p' / imagecorruptions'
  impulse_noise). See ssl_jax.data.ops.salt_pepper.
  """
  def fn(features):
    seed, features = _take_seed(features)
    image = features['image']
    shape = tf.shape(image)
    channels = shape[2:3] if per_channel else [1]
    u = tf.random.stateless_uniform(tf.concat([shape[:2], channels], 0), seed)
    out = salt_pepper_apply(image, u, p)
    out.set_shape(image.shape)
    features['image'] = out
    return features
  return fn


@register(jax_ops.VIEWS)
def views(n: int) -> PreprocessFn:
  """Repeats the image n times: uint8[H, W, 3] -> uint8[n, H, W, 3].

  In a spec (get_preprocess_fn) the ops after it then run per view, each
  with its own seed; on its own it only tiles (and advances the seed chain).
  """
  def fn(features):
    _, features = _take_seed(features)
    features['image'] = tf.tile(features['image'][None], [n, 1, 1, 1])
    return features
  fn.num_views = n
  return fn


# ----------------------------------------------------------------------------
# Spec strings.


def parse_spec(spec: str):
  """'a|b(1, x=2)' -> [('a', (), {}), ('b', (1,), {'x': 2})]. Empty ops dropped.

  The shared grammar (ssl_jax.data.ops.parse_spec) checked against this
  registry. Raises ValueError for unknown ops (listing the known ones) and
  for malformed ops.
  """
  return jax_ops.parse_spec(spec, known=OPS)


def get_op(name: str, args=(), kwargs=None, *, train: bool = True,
           spec: Optional[str] = None) -> PreprocessFn:
  """Builds one registered op, passing `train` only to ops that take it.

  The arguments are first checked by building the JAX op of the same name
  (same signature and value checks on both paths; for host-only ops, which
  have no JAX implementation, the JAX factory checks the arguments only).

  Raises:
    ValueError: bad arguments ('Bad arguments for preprocessing op ...').
  """
  if name in jax_ops.OPS:  # Host-only ops: their arguments only.
    jax_ops.build_op(name, args, kwargs, train=train, spec=spec, host=True)
  return jax_ops.build_op(name, args, kwargs, train=train, registry=OPS,
                          spec=spec)


def get_preprocess_fn(spec: str, *, train: bool = True) -> PreprocessFn:
  """Parses `spec` into one fn(features) -> features applying the ops in order.

  Args:
    spec: '|'-separated ops, e.g. 'decode|inception_crop(224)|flip_lr'.
    train: passed to train-aware ops (`crop`, `inception_preprocess`,
      `pad_crop_flip`).

  Returns:
    fn(features) -> features. The input's `image` is bytes or uint8; the
    output's is uint8[H, W, 3], or uint8[n, H, W, 3] with `views(n)` (the ops
    after it run per view, each with its own seed). `_seed` (int64[2]) seeds
    it if present and is removed from the output.

  Raises:
    ValueError: malformed or unknown ops, bad arguments, `views` twice.
  """
  parsed = parse_spec(spec)
  ops = [get_op(n, a, k, train=train, spec=spec) for n, a, k in parsed]
  index = jax_ops.views_index(parsed, spec)
  pre = ops if index is None else ops[:index]
  post = [] if index is None else ops[index + 1:]

  def fn(features):
    features = dict(features)
    for op in pre:
      features = op(features)
    if index is not None:
      seed, features = _take_seed(features)
      n = ops[index].num_views
      seeds = tf.random.experimental.stateless_split(seed, n)
      images = []
      for i in range(n):
        view = {**features, SEED_KEY: seeds[i]}
        for op in post:
          view = op(view)
        images.append(view['image'])
      features['image'] = tf.stack(images)
    features.pop(SEED_KEY, None)
    if features['image'].dtype != tf.uint8:
      raise ValueError(f'Preprocessing {spec!r} must end with uint8 images, '
                       f'got {features["image"].dtype} (start with decode).')
    return features
  return fn
