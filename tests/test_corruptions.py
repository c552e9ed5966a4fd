"""Tests of the pretraining-image corruptions (Cole et al. 2022): downsample,
jpeg and salt_pepper, in JAX (ssl_jax.data.ops) and tf.data
(input_pipeline.preprocess).

downsample is deterministic: the two languages agree bit for bit, and both
equal hand-worked cases and a float64 numpy reference (matrix form of area
and bilinear resampling, exact for power-of-two factors). jpeg exists in
tf.data only: the host function for stored images (PIL) equals it bit for
bit, and the JAX registry refuses it. salt_pepper is random: its transform
for given draws is compared exactly, its rates with binomial bounds.
"""
import functools
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from input_pipeline import preprocess
from ssl_jax.data import ops

SHARED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'shared', 'data')
CORRUPTIONS = ('downsample', 'jpeg', 'salt_pepper')


def _rand_images(n, h, w, seed=0, lo=0, hi=256):
  return np.random.RandomState(seed).randint(lo, hi, (n, h, w, 3)).astype(
      np.uint8)


def _npz_images(name, split, n, step):
  path = os.path.join(SHARED_DATA, name, f'{split}.npz')
  if not os.path.exists(path):
    return None
  data = np.load(path)
  jpeg, offsets = data['jpeg'], data['offsets']
  return np.stack([np.asarray(Image.open(io.BytesIO(
      jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert('RGB'))
                   for i in range(0, n * step, step)])


@pytest.fixture(scope='module')
def real_images():
  """{name: uint8[n, h, w, 3]}: CIFAR-10 and Imagenette64 where the shared
  data is present (random images otherwise), and random odd sizes."""
  cifar = _npz_images('cifar10', 'test', 16, 53)
  nette = _npz_images('imagenette64', 'val', 6, 97)
  return {'cifar32': cifar if cifar is not None else _rand_images(16, 32, 32),
          'nette64': nette if nette is not None else _rand_images(6, 64, 64),
          'rand37x53': _rand_images(4, 37, 53, seed=2),
          'rand5x3': _rand_images(2, 5, 3, seed=3)}


@functools.lru_cache(maxsize=None)
def _jax_fn(spec, train):
  return jax.jit(ops.make_batch_fn(spec, train=train))


def _jax(spec, images, key=0, train=True):
  return np.asarray(_jax_fn(spec, train)(jax.random.key(key),
                                         jnp.asarray(images)))


def _tf(spec, images, train=True, seed0=0):
  """The TF pipeline on each image in a tf.data map; seeds (seed0, i)."""
  fn = preprocess.get_preprocess_fn(spec, train=train)
  n = len(images)
  seeds = np.stack([np.full(n, seed0), np.arange(n)], 1).astype(np.int64)
  ds = tf.data.Dataset.from_tensor_slices((images, seeds)).map(
      lambda im, s: fn({'image': im, preprocess.SEED_KEY: s})['image'])
  return np.stack(list(ds.as_numpy_iterator()))


# --- numpy references (float64, matrix form) --------------------------------


def _area_matrix(n_in, n_out):
  """[n_out, n_in]: output cell y = mean over [y s, (y + 1) s), s = in/out."""
  s = n_in / n_out
  m = np.zeros((n_out, n_in))
  for y in range(n_out):
    for i in range(n_in):
      m[y, i] = max(0.0, min(i + 1, (y + 1) * s) - max(i, y * s)) / s
  return m


def _bilinear_matrix(n_in, n_out, half_pixel):
  """[n_out, n_in] linear interpolation weights, edges clamped."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    scale = n_in / n_out
    src = (i + 0.5) * scale - 0.5 if half_pixel else i * scale
    src = min(max(src, 0.0), n_in - 1.0)
    lo = int(np.floor(src))
    hi = min(lo + 1, n_in - 1)
    m[i, lo] += 1.0 - (src - lo)
    m[i, hi] += src - lo
  return m


def _resample(images, mh, mw):
  return np.einsum('yi,nijc,xj->nyxc', mh, images.astype(np.float64), mw)


def _np_downsample(images, factor, half_pixel=True):
  _, h, w, _ = images.shape
  dh, dw = max(h // factor, 1), max(w // factor, 1)
  small = np.round(_resample(images, _area_matrix(h, dh), _area_matrix(w, dw)))
  up = _resample(small, _bilinear_matrix(dh, h, half_pixel),
                 _bilinear_matrix(dw, w, half_pixel))
  return np.clip(np.round(up), 0, 255).astype(np.uint8)


# --- one language, shapes ----------------------------------------------------


def test_both_registries_have_the_corruptions():
  for name in CORRUPTIONS:
    assert name in ops.OPS and name in preprocess.OPS
    assert name in preprocess.SIZE_PRESERVING_OPS
  assert ops.HOST_ONLY_OPS == {'jpeg'}
  assert 'downsample' in ops.DETERMINISTIC_OPS
  assert 'salt_pepper' not in ops.DETERMINISTIC_OPS


@pytest.mark.parametrize('spec,shape', [
    ('decode|downsample(2)|inception_crop(24)|flip_lr', (24, 24, 3)),
    ('decode|downsample(4, half_pixel=False)', (37, 53, 3)),
    ('decode|salt_pepper(0.05)|views(2)|inception_crop(24)', (2, 24, 24, 3)),
    ('decode|salt_pepper(0.01, per_channel=True)|resize_small(20)',
     (20, 29, 3)),
])
def test_shapes_dtypes_and_output_shape_in_both_languages(spec, shape):
  images = _rand_images(2, 37, 53)
  ops.check_spec(spec, train=True)
  assert ops.output_shape(spec, (37, 53, 3), train=True) == shape
  out_jax, out_tf = _jax(spec, images), _tf(spec, images)
  assert out_jax.shape == out_tf.shape == (2,) + shape
  assert out_jax.dtype == out_tf.dtype == np.uint8
  # The TF ops keep the static shape (SIZE_PRESERVING_OPS).
  for name in ('downsample(2)', 'jpeg(30)', 'salt_pepper(0.05)'):
    fn = preprocess.get_preprocess_fn(f'decode|{name}')
    ds = tf.data.Dataset.from_tensors(images[0]).map(
        lambda im, fn=fn: fn({'image': im})['image'])
    assert tuple(ds.element_spec.shape) == (37, 53, 3)


# --- downsample --------------------------------------------------------------


def _hand_image():
  """4x4 gray (3 equal channels): 2x2 blocks of means 6, 100.5, 200, 40."""
  g = np.array([[0, 4, 100, 101],
                [8, 12, 100, 101],
                [200, 204, 40, 40],
                [196, 200, 40, 40]], np.uint8)
  return np.repeat(g[None, :, :, None], 3, -1)


def test_downsample_2x_hand_worked():
  # Area down: block means [[6, 100.5], [200, 40]], stored as uint8 with
  # round-half-even: [[6, 100], [200, 40]] (100.5 -> 100; without this
  # rounding the output's (0, 2) pixel would be 77, not 76).
  # Half-pixel bilinear up: rows and columns sample the 2 pixels at
  # (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> weights (1, 0),
  # (3/4, 1/4), (1/4, 3/4), (0, 1); e.g. (0, 1) = 0.75 * 6 + 0.25 * 100 =
  # 29.5 -> 30, (1, 0) = 0.75 * 6 + 0.25 * 200 = 54.5 -> 54.
  half = np.array([[6, 30, 76, 100],
                   [54, 62, 77, 85],
                   [152, 127, 79, 55],
                   [200, 160, 80, 40]])
  # Legacy: sources i / 2 = 0, 0.5, 1, 1.5 -> weights (1, 0), (1/2, 1/2),
  # (0, 1), (0, 1) (the upper tap clamped): the last row/column repeat.
  legacy = np.array([[6, 53, 100, 100],
                     [103, 86, 70, 70],
                     [200, 120, 40, 40],
                     [200, 120, 40, 40]])
  image = _hand_image()
  for spec, want in [('downsample(2)', half),
                     ('downsample(2, half_pixel=True)', half),
                     ('downsample(2, half_pixel=False)', legacy)]:
    want = np.repeat(want[None, :, :, None], 3, -1)
    np.testing.assert_array_equal(_jax(spec, image), want)
    np.testing.assert_array_equal(_tf(spec, image), want)
    half_pixel = 'False' not in spec
    np.testing.assert_array_equal(_np_downsample(image, 2, half_pixel), want)


@pytest.mark.parametrize('data', ['cifar32', 'nette64', 'rand37x53',
                                  'rand5x3'])
def test_downsample_jax_equals_tf_bit_for_bit(real_images, data):
  images = real_images[data]
  for factor in (2, 3, 4):
    for half_pixel in (True, False):
      spec = f'decode|downsample({factor}, half_pixel={half_pixel})'
      out = _jax(spec, images)
      np.testing.assert_array_equal(out, _tf(spec, images), err_msg=spec)
      ref = _np_downsample(images, factor, half_pixel)
      d = np.abs(out.astype(int) - ref.astype(int))
      if factor in (2, 4) and data in ('cifar32', 'nette64'):
        # Power-of-two cells and taps: every float32 value is exact, so the
        # float64 reference gives the same pixels, ties included.
        assert d.max() == 0, spec
      else:  # Float rounding of non-dyadic weights: rare one-level ties.
        assert d.max() <= 1 and (d > 0).mean() < 0.01, (spec, d.max())


def test_downsample_half_pixel_keeps_the_image_in_place():
  # A horizontal ramp 8 j, 4x: cells of 4 pixels have means 8 (4k + 1.5).
  # Half-pixel bilinear rebuilds the ramp exactly between the first and
  # last cell centres; the legacy kernel returns the value of pixel j + 1.5
  # at pixel j: a shift of (f - 1) / 2 = 1.5 pixels to the left.
  ramp = np.broadcast_to((8 * np.arange(32)).astype(np.uint8)[None, None, :,
                                                              None],
                         (1, 8, 32, 3)).copy()
  half = _jax('downsample(4)', ramp)[0, 0, :, 0].astype(int)
  legacy = _jax('downsample(4, half_pixel=False)', ramp)[0, 0, :, 0].astype(int)
  j = np.arange(32)
  np.testing.assert_array_equal(half[2:30], 8 * j[2:30])
  np.testing.assert_array_equal(legacy[:29], 8 * j[:29] + 12)
  assert half.mean() == pytest.approx(ramp[0, 0, :, 0].mean(), abs=0.5)


def test_downsample_factor_one_is_identity_and_huge_factor_is_the_mean():
  images = _rand_images(3, 12, 10, seed=5)
  np.testing.assert_array_equal(_jax('downsample(1)', images), images)
  np.testing.assert_array_equal(_tf('downsample(1)', images), images)
  # Factor larger than the sides: one low-resolution pixel, the image mean.
  out = _jax('downsample(64)', images)
  mean = np.round(images.astype(np.float64).mean((1, 2)))
  np.testing.assert_array_equal(out, np.broadcast_to(
      mean[:, None, None, :], images.shape))
  np.testing.assert_array_equal(_tf('downsample(64)', images), out)


# --- jpeg --------------------------------------------------------------------


@pytest.mark.parametrize('quality', [10, 30, 90])
def test_jpeg_host_function_equals_the_tf_op(real_images, quality):
  images = np.concatenate([real_images['cifar32'][:8],
                           _rand_images(2, 32, 32, seed=7)])
  spec = f'decode|jpeg({quality})'
  out = _tf(spec, images)
  np.testing.assert_array_equal(ops.jpeg_corrupt(images, quality), out)
  np.testing.assert_array_equal(ops.jpeg_corrupt(images[0], quality), out[0])
  odd = real_images['rand37x53']  # Sides that are not multiples of 16.
  np.testing.assert_array_equal(ops.jpeg_corrupt(odd, quality), _tf(spec, odd))
  # Deterministic: other seeds, the same pixels.
  np.testing.assert_array_equal(_tf(spec, images, seed0=9), out)


def test_jpeg_error_falls_with_quality(real_images):
  images = real_images['cifar32']
  err = [np.abs(ops.jpeg_corrupt(images, q).astype(int) - images).mean()
         for q in (10, 30, 90)]
  assert err[0] > err[1] > err[2] > 0, err
  # An independent PIL round trip (default settings) gives the same pixels.
  buf = io.BytesIO()
  Image.fromarray(images[0]).save(buf, 'JPEG', quality=10)
  np.testing.assert_array_equal(np.asarray(Image.open(buf).convert('RGB')),
                                ops.jpeg_corrupt(images[0], 10))


def test_jax_refuses_jpeg_with_one_line_and_host_specs_check():
  spec = 'decode|jpeg(10)|inception_crop(24)|flip_lr'
  for call in (lambda: ops.check_spec(spec, train=True),
               lambda: ops.make_batch_fn(spec, train=True),
               lambda: ops.output_shape(spec, (32, 32, 3), train=True)):
    with pytest.raises(ValueError, match=r"op 'jpeg' in .* cannot run in JAX: "
                       r'JAX has no JPEG codec.*once at load time.*'
                       r'jpeg_corrupt') as e:
      call()
    assert '\n' not in str(e.value)
  # Specs for the tf.data path: allowed, the arguments still checked.
  ops.check_spec(spec, train=True, host=True)
  assert ops.output_shape(spec, (32, 32, 3), train=True, host=True) == (
      24, 24, 3)
  assert ops.output_shape('decode|jpeg(30)', (37, 53, 3), train=True,
                          host=True) == (37, 53, 3)
  with pytest.raises(ValueError, match="Bad arguments.*'jpeg'.*quality"):
    ops.check_spec('jpeg(0)', train=True, host=True)
  assert _tf(spec, _rand_images(2, 32, 32)).shape == (2, 24, 24, 3)


@pytest.mark.parametrize('spec,match', [
    ('jpeg(0)', "'jpeg'.*quality must be an int in \\[1, 100\\]"),
    ('jpeg(101)', "'jpeg'.*quality"),
    ('jpeg(30.0)', "'jpeg'.*quality"),
    ('jpeg', "Bad arguments.*'jpeg'"),
    ('downsample(0)', "'downsample'.*factor must be a positive int"),
    ('downsample(2.0)', "'downsample'.*factor"),
    ('downsample(2, half_pixel=1)', "'downsample'.*half_pixel"),
    ('salt_pepper(1.5)', "'salt_pepper'.*p must be"),
    ('salt_pepper(-0.1)', "'salt_pepper'.*p must be"),
    ('salt_pepper', "Bad arguments.*'salt_pepper'"),
    ("salt_pepper(0.1, per_channel='yes')", "'salt_pepper'.*per_channel"),
])
def test_bad_arguments_one_line_same_on_both_paths(spec, match):
  messages = []
  for check in (lambda: ops.check_spec(spec, train=True, host=True),
                lambda: preprocess.get_preprocess_fn(spec, train=True)):
    with pytest.raises(ValueError, match=match) as e:
      check()
    assert '\n' not in str(e.value)
    messages.append(str(e.value))
  assert messages[0] == messages[1]


def test_split_host_ops():
  assert ops.split_host_ops(
      'decode|downsample(2)|jpeg(10)|inception_crop(32)|flip_lr') == (
          'decode|downsample(2)|jpeg(10)', 'inception_crop(32)|flip_lr')
  assert ops.split_host_ops('decode|flip_lr') == ('', 'decode|flip_lr')
  assert ops.split_host_ops(' decode || jpeg(30) | ') == ('decode|jpeg(30)',
                                                          '')
  assert ops.split_host_ops('jpeg(30)|resize(20)|jpeg(10)|flip_lr') == (
      'jpeg(30)|resize(20)|jpeg(10)', 'flip_lr')
  for spec, found in [('decode|salt_pepper(0.05)|jpeg(10)', 'salt_pepper'),
                      ('decode|views(2)|jpeg(10)', 'views'),
                      ('decode|crop(24)|jpeg(10)', 'crop')]:
    with pytest.raises(ValueError, match=f"'jpeg' is applied once.*found "
                       f"'{found}'") as e:
      ops.split_host_ops(spec)
    assert '\n' not in str(e.value)
  with pytest.raises(ValueError, match="'jpeg'.*quality"):
    ops.split_host_ops('decode|jpeg(0)|flip_lr')


def test_apply_host_ops_then_device_spec_equals_the_tf_path(real_images):
  images = real_images['cifar32'][:6]
  spec = 'decode|downsample(2)|jpeg(30)|central_crop(24)|resize(20)'
  host_spec, device_spec = ops.split_host_ops(spec)
  stored = ops.apply_host_ops(images, host_spec, batch_size=4)
  assert stored.shape == images.shape and stored.dtype == np.uint8
  np.testing.assert_array_equal(_jax(device_spec, stored), _tf(spec, images))
  np.testing.assert_array_equal(ops.apply_host_ops(images, ''), images)
  with pytest.raises(ValueError, match='neither deterministic nor host-only'):
    ops.apply_host_ops(images, 'jpeg(10)|flip_lr')


# --- salt_pepper -------------------------------------------------------------


def test_salt_pepper_transform_for_given_draws_matches_tf_and_numpy():
  rng = np.random.RandomState(4)
  image = _rand_images(1, 9, 11, seed=6)[0]
  for k in (1, 3):  # Per pixel, per channel.
    u = rng.uniform(size=(9, 11, k)).astype(np.float32)
    u[0, 0] = 0.05  # p/2 exactly: pepper (u < p/2 is salt).
    u[0, 1] = 0.1  # p exactly: unchanged.
    ref = np.where(u < 0.05, 255, np.where(u < 0.1, 0, image)).astype(np.uint8)
    out_jax = np.asarray(ops.salt_pepper_apply(jnp.asarray(image),
                                               jnp.asarray(u), 0.1))
    out_tf = preprocess.salt_pepper_apply(tf.constant(image), tf.constant(u),
                                          0.1).numpy()
    np.testing.assert_array_equal(out_jax, ref)
    np.testing.assert_array_equal(out_tf, ref)
    assert (out_jax[0, 0] == 0).all()
    np.testing.assert_array_equal(out_jax[0, 1], image[0, 1])


def _within(count, n, q, sigmas=5.0):
  """count ~ Binomial(n, q) to `sigmas` standard deviations."""
  return abs(count - n * q) <= sigmas * np.sqrt(n * q * (1 - q))


@pytest.mark.parametrize('p', [0.01, 0.05])
def test_salt_pepper_rates_per_pixel_in_jax_and_tf(p):
  # Values in [1, 254]: a 0 or 255 in the output is the op's.
  images = _rand_images(128, 32, 32, seed=8, lo=1, hi=255)
  spec = f'salt_pepper({p})'
  for out, n_img in ((_jax(spec, images), 128), (_tf(spec, images[:48]), 48)):
    src = images[:n_img]
    changed = (out != src).any(-1)
    salt = (out == 255).all(-1)
    pepper = (out == 0).all(-1)
    # All channels of a pixel together: changed pixels are white or black.
    np.testing.assert_array_equal(changed, salt | pepper)
    np.testing.assert_array_equal(out[~changed], src[~changed])
    n = changed.size
    assert _within(salt.sum(), n, p / 2), (salt.sum(), n * p / 2)
    assert _within(pepper.sum(), n, p / 2), (pepper.sum(), n * p / 2)
    # Pixels independent: horizontally adjacent pairs both hit at rate p^2.
    pairs = (changed[:, :, 1:] & changed[:, :, :-1])
    assert _within(pairs.sum(), pairs.size, p * p), pairs.sum()
    # Each example its own draw.
    assert len({c.tobytes() for c in changed}) == n_img


def test_salt_pepper_per_channel_and_extremes():
  images = _rand_images(64, 32, 32, seed=9, lo=1, hi=255)
  p = 0.05
  out = _jax(f'salt_pepper({p}, per_channel=True)', images)
  hit = out != images
  np.testing.assert_array_equal(hit, (out == 0) | (out == 255))
  assert _within((out == 255).sum(), hit.size, p / 2)
  assert _within((out == 0).sum(), hit.size, p / 2)
  # Channels independent: exactly one channel hit at rate 3 p (1 - p)^2.
  one = hit.sum(-1) == 1
  assert _within(one.sum(), one.size, 3 * p * (1 - p) ** 2), one.sum()
  out_tf = _tf(f'salt_pepper({p}, per_channel=True)', images[:32])
  hit_tf = out_tf != images[:32]
  assert _within(hit_tf.sum(), hit_tf.size, p)
  assert (hit_tf.sum(-1) == 1).sum() > 0
  # p = 0: unchanged; p = 1: every pixel white or black, about half each.
  np.testing.assert_array_equal(_jax('salt_pepper(0)', images[:4]),
                                images[:4])
  full = _jax('salt_pepper(1)', images[:4])
  assert ((full == 0) | (full == 255)).all()
  assert _within((full[..., 0] == 255).sum(), full[..., 0].size, 0.5)


def test_salt_pepper_reproducible_per_key_and_position():
  images = _rand_images(4, 16, 16, seed=10, lo=1, hi=255)
  images[2] = images[0]
  a, b = _jax('salt_pepper(0.2)', images, key=3), _jax('salt_pepper(0.2)',
                                                        images, key=3)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a[0], a[2])  # Same image, other position.
  assert not np.array_equal(a, _jax('salt_pepper(0.2)', images, key=4))
