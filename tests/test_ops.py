"""Tests of ssl_jax.data.ops: the JAX preprocessing ops against the tf.data ops.

Deterministic ops are compared pixel for pixel with input_pipeline.preprocess
(and so with TF's own kernels) on CIFAR-10 / Imagenette images and random
images; random ops cannot share TF's random stream, so their draws are
compared in distribution with the TF ops, and their transforms, for given
draws, with tf.image / scipy references.
"""
import glob
import importlib
import io
import itertools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
from scipy import ndimage
from scipy import stats
import tensorflow as tf

from input_pipeline import preprocess
from ssl_jax.data import ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')

# Specs beyond the configs' presets: the SimCLR and exemplar pipelines.
EXTRA_SPECS = [
    'decode|inception_crop(32, area_min=0.08)|flip_lr|color_distort(0.5)|'
    "to_gray(0.2, weights='luma')",
    'decode|inception_crop(64)|flip_lr|color_distort|'
    "to_gray(0.2, weights='luma')|gaussian_blur",
    'decode|to_gray(0.66)|views(3)|inception_preprocess(48)',
    'decode|views(2)|pad_crop_flip',
    'decode|resize(40)|views(2)|crop(32)|flip_lr',
    'decode|pad_crop_flip(4)',
]


def _rand_images(n, h, w, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (n, h, w, 3), np.uint8)


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
  """{size: uint8[n, s, s, 3]}: CIFAR-10 (32) and Imagenette (64) if shared
  data is present, plus random images (always)."""
  out = {'rand50x70': _rand_images(6, 50, 70, seed=1)}
  cifar = _npz_images('cifar10', 'test', 24, 37)
  out['cifar32'] = cifar if cifar is not None else _rand_images(24, 32, 32)
  nette = _npz_images('imagenette64', 'val', 8, 101)
  out['nette64'] = nette if nette is not None else _rand_images(8, 64, 64)
  return out


def _assert_nearly_equal(a, b):
  """uint8 arrays equal but for float rounding: |diff| <= 1, rarely 1."""
  d = np.abs(a.astype(int) - b.astype(int))
  assert d.max() <= 1 and (d > 0).mean() < 1e-3


def _jax(spec, images, train=False, key=0):
  fn = jax.jit(ops.make_batch_fn(spec, train=train))
  return np.asarray(fn(jax.random.key(key), jnp.asarray(images)))


def _tf(spec, images, train=False, seeds=None):
  """The TF pipeline on each image (a tf.data map: one trace)."""
  fn = preprocess.get_preprocess_fn(spec, train=train)
  n = len(images)
  seeds = np.stack([np.zeros(n), np.arange(n)], 1) if seeds is None else seeds
  ds = tf.data.Dataset.from_tensor_slices(
      (images, seeds.astype(np.int64))).map(
          lambda im, s: fn({'image': im, preprocess.SEED_KEY: s})['image'])
  return np.stack(list(ds.as_numpy_iterator()))


# --- one language ------------------------------------------------------------


def test_registries_have_the_same_op_names():
  assert set(ops.OPS) == set(preprocess.OPS)
  assert {'views', 'color_distort', 'gaussian_blur'} <= set(ops.OPS)


def _preset_specs():
  """Every pp_train / pp_eval of every preset of configs/*.py.

  Literal strings grepped from the sources, plus the values of every
  module's presets (get_config(preset) for preset in PRESETS), which also
  catches specs built by helpers or f-strings.
  """
  specs = set()
  for path in sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py'))):
    with open(path) as f:
      specs.update(m[1] for m in re.findall(
          r"""pp_(?:train|eval)\s*=\s*(['"])(.*?)\1""", f.read()))
    module = importlib.import_module(
        f'configs.{os.path.basename(path)[:-3]}')
    if hasattr(module, 'PRESETS') and hasattr(module, 'get_config'):
      for preset in module.PRESETS:
        config = module.get_config(preset)
        if 'input' in config:
          specs.update(config.input.get(k, '') for k in ('pp_train', 'pp_eval'))
  return sorted(s for s in specs if s)


def _tf_shape(spec, image, train):
  """The TF pipeline's output shape: static if known, else by running it."""
  fn = preprocess.get_preprocess_fn(spec, train=train)
  ds = tf.data.Dataset.from_tensors(image).map(lambda im: fn(
      {'image': im, preprocess.SEED_KEY: tf.constant([0, 1], tf.int64)}
  )['image'])
  shape = ds.element_spec.shape
  if shape.is_fully_defined():
    return tuple(shape)
  return next(ds.as_numpy_iterator()).shape


def test_presets_and_simclr_specs_same_shapes_in_jax_and_tf():
  presets = _preset_specs()
  assert len(presets) >= 10, presets  # The configs' strings were found.
  image = _rand_images(1, 300, 280)[0]
  train_aware = {'crop', 'inception_preprocess', 'pad_crop_flip'}
  for spec in presets + EXTRA_SPECS:
    names = {name for name, _, _ in ops.parse_spec(spec)}
    for train in (True, False) if names & train_aware else (True,):
      ops.check_spec(spec, train=train)
      jax_shape = ops.output_shape(spec, image.shape, train=train)
      assert jax_shape == _tf_shape(spec, image, train), (spec, train)
      assert (len(jax_shape) == 4) == ('views' in spec)


# --- deterministic ops: the same pixels -------------------------------------


@pytest.mark.parametrize('data,spec', [
    ('cifar32', 'decode|resize(24)'),
    ('cifar32', 'decode|resize((45, 29))'),
    ('cifar32', 'decode|resize_small(36)|crop(32)'),  # Linear-eval preset.
    ('cifar32', 'decode|resize_small(18)|crop(16)'),
    ('cifar32', 'decode|inception_eval(28)'),
    ('cifar32', 'decode|to_gray|central_crop(25)'),
    ('nette64', 'decode|resize_small(73)|crop(64)'),
    ('nette64', 'decode|resize_small(23)'),
    ('nette64', 'decode|inception_eval(64)'),
    ('nette64', 'decode|inception_preprocess(48)'),  # Eval: inception_eval.
    ('rand50x70', 'decode|resize_small(32)'),
    ('rand50x70', 'decode|resize_small(64)|crop((60, 50))'),
    ('rand50x70', 'decode|inception_eval((40, 30), central_fraction=0.6)'),
])
def test_deterministic_ops_match_tf_exactly(real_images, data, spec):
  # TF1 legacy bilinear and resize_area are re-implemented with the kernels'
  # own float32 formulas and order, so every pixel is equal: exact, not
  # within one grey level.
  images = real_images[data]
  out, ref = _jax(spec, images), _tf(spec, images)
  assert out.shape == ref.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out, ref)


def test_resize_kernels_equal_tf_float_outputs():
  # Before rounding too: the float32 results are bit-identical to TF's.
  image = _rand_images(1, 37, 53, seed=3)[0]
  for oh, ow in [(29, 29), (60, 80), (37, 53), (7, 100)]:
    tf_bilinear = tf.raw_ops.ResizeBilinear(
        images=image[None], size=[oh, ow], align_corners=False,
        half_pixel_centers=False)[0].numpy()
    tf_area = tf.raw_ops.ResizeArea(images=image[None], size=[oh, ow],
                                    align_corners=False)[0].numpy()
    jit_bilinear = jax.jit(ops._resize_bilinear, static_argnums=(1, 2))
    jit_area = jax.jit(ops._resize_area, static_argnums=(1, 2))
    np.testing.assert_array_equal(
        np.asarray(jit_bilinear(image, oh, ow)), tf_bilinear)
    np.testing.assert_array_equal(np.asarray(jit_area(image, oh, ow)),
                                  tf_area)


def test_decode_gray_and_rgba_and_identity():
  img = _rand_images(2, 5, 7)
  np.testing.assert_array_equal(_jax('decode', img), img)
  np.testing.assert_array_equal(_jax('decode', img[..., :1]),
                                np.repeat(img[..., :1], 3, -1))
  rgba = np.concatenate([img, img[..., :1]], -1)
  np.testing.assert_array_equal(_jax('decode', rgba), img)
  with pytest.raises(ValueError, match='uint8'):
    ops.make_batch_fn('decode', train=False)(jax.random.key(0),
                                             jnp.zeros((1, 4, 4, 3)))


def test_gray_mean_and_luma_match_tf():
  img = _rand_images(16, 9, 11, seed=4)
  mean = img.astype(np.int64).sum(-1, keepdims=True) // 3
  np.testing.assert_array_equal(_jax('to_gray', img), np.repeat(mean, 3, -1))
  luma_jax = _jax("to_gray(weights='luma')", img)
  np.testing.assert_array_equal(luma_jax, _tf("to_gray(weights='luma')", img))
  # And tf.image.rgb_to_grayscale on [0, 1] floats, rounded (SimCLR's).
  ref = tf.image.rgb_to_grayscale(img / 255.0).numpy() * 255.0
  assert np.abs(luma_jax[..., :1] - ref).max() <= 0.5 + 1e-4
  assert (luma_jax == luma_jax[..., :1]).all()


# --- inception crop ----------------------------------------------------------


def _tf_windows(h, w, n, seed=7):
  ds = tf.data.Dataset.range(n).map(lambda i: tf.concat(
      preprocess.inception_crop_window(
          tf.constant([h, w, 3]), tf.stack([tf.constant(seed, tf.int64), i])),
      0)).batch(n)
  t = next(iter(ds)).numpy()
  return t[:, 0], t[:, 1], t[:, 3], t[:, 4]  # top, left, height, width.


def _jax_windows(h, w, n, seed=3):
  keys = jax.random.split(jax.random.key(seed), n)
  out = jax.jit(jax.vmap(lambda k: jnp.stack(
      ops.inception_crop_window(k, (h, w)))))(keys)
  return tuple(np.asarray(out).T)


@pytest.mark.parametrize('h,w', [(40, 50), (32, 32), (300, 200)])
def test_inception_window_distribution_matches_tf(h, w):
  # slim's distorted-bounding-box algorithm (100 attempts, covered >= 0.1,
  # area [0.05, 1], aspect [0.75, 1.33], whole-image fallback) emulated
  # vectorised: the crop sizes, aspects and offsets follow TF's law.
  n = 2000
  tf_top, tf_left, tf_h, tf_w = _tf_windows(h, w, n)
  top, left, hh, ww = _jax_windows(h, w, n)
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + hh <= h).all() and (left + ww <= w).all()
  area, tf_area = hh * ww / (h * w), tf_h * tf_w / (h * w)
  assert area.min() >= 0.1 - 1e-6  # min_object_covered, as TF.
  assert stats.ks_2samp(area, tf_area).pvalue > 1e-3
  assert stats.ks_2samp(ww / hh, tf_w / tf_h).pvalue > 1e-3
  assert abs(area.mean() - tf_area.mean()) < 0.02
  # Offsets: relative position in the free room; TF's Uniform(H - h) never
  # puts the crop against the bottom/right edge (unless it spans the side).
  room = hh < h
  rel = top[room] / (h - hh[room])
  tf_room = tf_h < h
  tf_rel = tf_top[tf_room] / (h - tf_h[tf_room])
  assert stats.ks_2samp(rel, tf_rel).pvalue > 1e-3
  assert not ((top + hh == h) & room).any()
  assert not ((tf_top + tf_h == h) & tf_room).any()
  # Heights are discrete: compare their distributions directly.
  support = np.union1d(hh, tf_h)
  counts = np.array([[np.sum(hh == v), np.sum(tf_h == v)] for v in support])
  keep = counts.sum(1) >= 10
  chi = stats.chi2_contingency(counts[keep])
  assert chi.pvalue > 1e-3


def test_inception_window_fallback_is_whole_image():
  # Area range that no crop of a 3x3 image can satisfy: whole image.
  top, left, hh, ww = jax.jit(lambda k: ops.inception_crop_window(
      k, (3, 3), area_min=0.5, area_max=0.6))(jax.random.key(0))
  assert (int(top), int(left), int(hh), int(ww)) == (0, 0, 3, 3)
  # TF agrees.
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      [3, 3, 3], tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=[1, 2],
      min_object_covered=0.1, aspect_ratio_range=(0.75, 1.33),
      area_range=(0.5, 0.6), max_attempts=100)
  assert begin.numpy()[:2].tolist() == [0, 0]
  assert size.numpy()[:2].tolist() == [3, 3]


def test_inception_crop_for_a_window_equals_tf_slice_and_resize(real_images):
  image = real_images['nette64'][0]
  for top, left, h, w in [(3, 5, 40, 31), (0, 0, 64, 64), (10, 2, 7, 50)]:
    ref = tf.raw_ops.ResizeBilinear(
        images=image[None, top:top + h, left:left + w], size=[24, 24],
        align_corners=False, half_pixel_centers=False)[0].numpy()
    out = jax.jit(ops._bilinear_window, static_argnums=(5, 6))(
        image, top, left, h, w, 24, 24)
    np.testing.assert_array_equal(np.asarray(out), ref)
    flipped = jax.jit(ops._bilinear_window, static_argnums=(5, 6))(
        image, top, left, h, w, 24, 24, True)
    np.testing.assert_array_equal(np.asarray(flipped), ref[:, ::-1])


# --- random ops: rates, ranges, given-draw references ------------------------


def test_flip_gray_distort_blur_rates():
  img = np.repeat(_rand_images(1, 12, 12, seed=5), 400, 0)
  gray = np.repeat(img[:1].astype(np.int64).sum(-1, keepdims=True) // 3, 3, -1)
  out = _jax('flip_lr|to_gray(0.3)', img, train=True)
  flipped = (out == gray[:, :, ::-1]).all((1, 2, 3)) | (
      out == img[:1, :, ::-1]).all((1, 2, 3))
  grayed = (out == gray).all((1, 2, 3)) | (out == gray[:, :, ::-1]).all(
      (1, 2, 3))
  same = (out == img[:1]).all((1, 2, 3)) | (out == img[:1, :, ::-1]).all(
      (1, 2, 3))
  assert (grayed ^ same).all()  # Whole image or nothing.
  # Binomial(400, p): 4.5 standard deviations.
  assert abs(flipped.mean() - 0.5) < 0.12 and abs(grayed.mean() - 0.3) < 0.11
  for spec, p in [('color_distort(1.0, p=0.8)', 0.8),
                  ('gaussian_blur(p=0.5)', 0.5)]:
    big = np.repeat(_rand_images(1, 30, 30, seed=6), 400, 0)
    changed = (_jax(spec, big, train=True) != big).any((1, 2, 3))
    assert abs(changed.mean() - p) < 0.12, spec


def test_color_jitter_given_draws_matches_tf_image_and_ranges():
  img = _rand_images(1, 16, 16, seed=7)[0] / 255.0
  for delta, factor in [(0.1, 0.6), (-0.12, 1.4), (0.0, 1.0)]:
    ref = tf.clip_by_value(tf.image.adjust_saturation(
        tf.image.adjust_brightness(tf.constant(img, tf.float32), delta),
        factor), 0.0, 1.0).numpy()
    out = ops.color_jitter_apply(jnp.asarray(img, jnp.float32), delta, factor)
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6)
  # On gray images only the brightness delta is left: |shift| <= 32 levels,
  # one shift per image, and the shifts spread over the range.
  gray = np.repeat(np.linspace(60, 190, 100).reshape(1, 10, 10, 1), 3, -1)
  gray = np.repeat(gray.astype(np.uint8), 64, 0)
  d = _jax('color_jitter', gray, train=True).astype(int) - gray
  assert (d.max((1, 2, 3)) - d.min((1, 2, 3)) <= 1).all()
  assert np.abs(d).max() <= 33 and np.ptp(d.mean((1, 2, 3))) > 50


def test_hue_contrast_saturation_match_tf_image():
  rng = np.random.RandomState(8)
  x = rng.rand(20, 20, 3).astype(np.float32)
  x[:3] = x[:3, :, :1]  # Grey pixels.
  x[3, :, 1] = x[3, :, 0]  # Two equal channels (hue sextant borders).
  x[4, :, 2] = x[4, :, 1]
  xt = tf.constant(x)
  for delta in [0.0, 0.07, -0.2, 0.49, -0.5, 0.93]:
    np.testing.assert_allclose(np.asarray(ops._adjust_hue(x, delta)),
                               tf.image.adjust_hue(xt, delta).numpy(),
                               atol=2e-6)
  for f in [0.2, 1.0, 1.8]:
    np.testing.assert_allclose(np.asarray(ops._adjust_contrast(x, f)),
                               tf.image.adjust_contrast(xt, f).numpy(),
                               atol=2e-6)
    np.testing.assert_allclose(np.asarray(ops._adjust_saturation(x, f)),
                               tf.image.adjust_saturation(xt, f).numpy(),
                               atol=2e-6)


def test_color_distort_given_draws_matches_tf_image_in_every_order():
  x = np.random.RandomState(9).rand(12, 12, 3).astype(np.float32)
  params = {'brightness': 1.5, 'contrast': 0.4, 'saturation': 1.7,
            'hue': -0.15, 'apply_u': 0.0}
  steps = [lambda y: y * params['brightness'],
           lambda y: tf.image.adjust_contrast(y, params['contrast']),
           lambda y: tf.image.adjust_saturation(y, params['saturation']),
           lambda y: tf.image.adjust_hue(y, params['hue'])]
  apply = jax.jit(ops.color_distort_apply)
  outs = set()
  for order in list(itertools.permutations(range(4)))[::5]:
    ref = tf.constant(x)
    for i in order:
      ref = tf.clip_by_value(steps[i](ref), 0.0, 1.0)
    out = np.asarray(apply(x, {**params, 'order': jnp.array(order)}))
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5)
    outs.add(np.round(out, 4).tobytes())
  assert len(outs) == 5  # The order matters.


def test_color_distort_draw_ranges_and_orders():
  keys = jax.random.split(jax.random.key(1), 4000)
  for s in (1.0, 0.5):
    p = jax.jit(jax.vmap(lambda k: ops.color_distort_params(k, s)))(keys)
    p = {k: np.asarray(v) for k, v in p.items()}
    for name in ('brightness', 'contrast', 'saturation'):
      lo, hi = 1 - 0.8 * s, 1 + 0.8 * s
      assert lo <= p[name].min() < lo + 0.01 and hi - 0.01 < p[name].max() < hi
      assert stats.kstest((p[name] - lo) / (hi - lo), 'uniform').pvalue > 1e-3
    assert -0.2 * s <= p['hue'].min() < -0.19 * s
    assert 0.19 * s < p['hue'].max() <= 0.2 * s
  orders = {tuple(o) for o in p['order']}
  assert len(orders) == 24  # Every permutation.
  first = np.bincount(p['order'][:, 0], minlength=4) / len(keys)
  assert np.abs(first - 0.25).max() < 0.03


def test_gaussian_blur_given_sigma_matches_scipy_and_tf():
  img = _rand_images(1, 40, 40, seed=10)[0].astype(np.float32)
  radius = ops.blur_radius(40, 0.1)
  assert radius == 2 and ops.blur_radius(224, 0.1) == 11
  assert ops.blur_radius(9, 0.1) == 0  # Kernel side 0: identity.
  for sigma in (0.1, 0.8, 2.0):
    xs = np.arange(-radius, radius + 1)
    k = np.exp(-xs ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    ref = ndimage.correlate1d(img.astype(np.float64), k, axis=0,
                              mode='constant')
    ref = ndimage.correlate1d(ref, k, axis=1, mode='constant')
    out = np.asarray(ops.gaussian_blur_apply(jnp.asarray(img), sigma, radius))
    np.testing.assert_allclose(out, ref, atol=1e-3)
    tf_out = preprocess._gaussian_blur(tf.constant(img), sigma, radius)
    np.testing.assert_allclose(out, tf_out.numpy(), atol=1e-3)


def test_random_crop_and_pad_crop_flip_windows():
  h, w, size = 9, 7, 5
  img = (np.arange(h * w).reshape(1, h, w, 1) * np.ones(3)).astype(np.uint8)
  outs = _jax(f'crop({size})', np.repeat(img, 300, 0), train=True)
  offsets = set()
  for out in outs:
    top, left = divmod(int(out[0, 0, 0]), w)
    np.testing.assert_array_equal(out, img[0, top:top + size,
                                           left:left + size])
    offsets.add((top, left))
  assert offsets == {(t, l) for t in range(h - size + 1)
                     for l in range(w - size + 1)}
  img = _rand_images(1, 12, 12) | 1  # No zeros: padding is recognisable.
  padded = np.pad(img[0], [(4, 4), (4, 4), (0, 0)])
  windows = [padded[t:t + 12, l:l + 12] for t in range(9) for l in range(9)]
  seen = set()
  for out in _jax('pad_crop_flip(4)', np.repeat(img, 300, 0), train=True):
    hits = [i for i, win in enumerate(windows)
            if (out == win).all() or (out == win[:, ::-1]).all()]
    assert hits
    seen.update(hits)
  assert len(seen) > 70  # Most of the 81 offsets in 300 draws.
  np.testing.assert_array_equal(_jax('pad_crop_flip', img), img)


def test_inception_preprocess_train_is_crop_flip_jitter():
  img = _rand_images(64, 40, 48, seed=11)
  out = _jax('inception_preprocess(24)', img, train=True)
  assert out.shape == (64, 24, 24, 3) and out.dtype == np.uint8
  assert len({o.tobytes() for o in out}) == 64
  # Run in two stages with a CPU fusion boundary between them, or as one op:
  # the same pixels, but for float rounding (XLA contracts a * b + c into
  # fused multiply-adds differently in the two programs).
  whole = jax.jit(ops.make_batch_fn('inception_preprocess(24)', train=True,
                                    materialize=False))
  _assert_nearly_equal(np.asarray(whole(jax.random.key(0), img)), out)
  # The fused op (flip folded into the resize taps, one rounding) equals the
  # separate float steps fed the same draws.
  @jax.jit
  def fused_and_ref(key, image):
    fused = ops.inception_preprocess(24, train=True)(key, image)
    u = ops._uniforms(key, 403)
    crop = ops._inception_crop_float(u[:400].reshape(4, 100), image, 24, 24,
                                     0.05, 1.0, 0.75, 1.33) / 255.0
    crop = jnp.where(u[400] < 0.5, crop[:, ::-1], crop)
    return fused, ops._color_jitter_01(u[401:], crop, 32 / 255,
                                       (0.5, 1.5)) * 255.0
  flips = set()
  for k in range(6):
    fused, ref = fused_and_ref(jax.random.key(k), img[k])
    assert np.abs(np.asarray(fused, float) - np.asarray(ref)).max() <= 0.501
    flips.add(bool(ops._uniforms(jax.random.key(k), 403)[400] < 0.5))
  assert flips == {True, False}  # Both branches were compared.


# --- views and keys ----------------------------------------------------------


def test_views_share_the_ops_before_and_draw_the_ops_after():
  img = _rand_images(40, 16, 16, seed=12)
  spec = 'to_gray(0.5)|views(4)|crop(12)|flip_lr'
  out = _jax(spec, img, train=True)
  assert out.shape == (40, 4, 12, 12, 3)
  assert ops.num_views(spec) == 4 and ops.num_views('flip_lr') == 1
  is_gray = (out == out[..., :1]).all((2, 3, 4))  # [B, views]
  assert (is_gray.all(1) | ~is_gray.any(1)).all()  # Shared per image.
  assert 0.25 < is_gray[:, 0].mean() < 0.75
  # Every view is a crop of its own image, and the views differ.
  distinct = [len({v.tobytes() for v in o}) for o in out]
  assert np.mean(distinct) > 3
  # The TF op does the same.
  tf_out = _tf(spec, img, train=True)
  assert tf_out.shape == out.shape
  tf_gray = (tf_out == tf_out[..., :1]).all((2, 3, 4))
  assert (tf_gray.all(1) | ~tf_gray.any(1)).all()
  assert np.mean([len({v.tobytes() for v in o}) for o in tf_out]) > 3


def test_keys_reproducible_positional_and_distinct():
  img = _rand_images(3, 20, 20, seed=13)
  spec = 'inception_crop(16)|flip_lr|color_distort'
  fn = jax.jit(ops.make_batch_fn(spec, train=True))
  a = np.asarray(fn(jax.random.key(0), img))
  np.testing.assert_array_equal(a, np.asarray(fn(jax.random.key(0), img)))
  # Example i depends on (key, i, image) only.
  same = np.asarray(fn(jax.random.key(0), np.stack([img[2]] * 3)))
  np.testing.assert_array_equal(same[2], a[2])
  assert (same[0] != same[1]).any()  # Other positions, other draws.
  assert (np.asarray(fn(jax.random.key(1), img)) != a).any()
  # Raw uint32 key data work as the typed key.
  raw = jax.random.key_data(jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(fn(raw, img)), a)
  # The CPU fusion boundaries between ops change no draw.
  fused = jax.jit(ops.make_batch_fn(spec, train=True, materialize=False))
  _assert_nearly_equal(np.asarray(fused(jax.random.key(0), img)), a)


# --- grammar and errors ------------------------------------------------------


def test_parse_spec_grammar():
  assert ops.parse_spec('') == [] and ops.parse_spec(' | |') == []
  assert ops.parse_spec(
      "decode| inception_crop(224, area_min=0.08) |to_gray(0.2, "
      "weights='luma')|views(8)|") == [
          ('decode', (), {}), ('inception_crop', (224,), {'area_min': 0.08}),
          ('to_gray', (0.2,), {'weights': 'luma'}), ('views', (8,), {})]
  assert ops.parse_spec('resize((60, 80))') == [('resize', ((60, 80),), {})]
  assert ops.parse_spec('nope(1)') == [('nope', (1,), {})]  # No names given.
  for bad in ['crop(224', 'crop(x)', 'a.b', 'crop(*s)', 'crop(**k)', '1',
              'crop(1, a=1, a=2)']:
    with pytest.raises(ValueError, match='Malformed') as e:
      ops.parse_spec(f'decode|{bad}')
    assert '\n' not in str(e.value)
  with pytest.raises(ValueError, match=r"'nope'.*Known ops: central_crop"):
    ops.parse_spec('decode|nope', known=ops.OPS)
  # The TF pipeline uses the same grammar.
  assert preprocess.parse_spec('decode|views(2)') == ops.parse_spec(
      'decode|views(2)')


@pytest.mark.parametrize('spec,match', [
    ('decode|crop(1, 2, 3)', r"'crop' in 'decode\|crop\(1, 2, 3\)'"),
    ('crop(0)', "'crop'.*positive int"),
    ('resize_small((3, 4))', "'resize_small'.*positive int"),
    ('to_gray(1.5)', "'to_gray'.*p must be"),
    ("to_gray(weights='rec709')", "'to_gray'.*weights"),
    ('gaussian_blur(sigma_min=3, sigma_max=1)', "'gaussian_blur'.*sigma"),
    ('inception_crop(32, area_min=0)', "'inception_crop'.*area_min"),
    ('color_distort(-1)', "'color_distort'.*strength"),
    ('views(0)', "'views'.*positive int"),
    ('views(2)|flip_lr|views(2)', 'views ops'),
    ('flip_lr(1)', "'flip_lr'"),
    ('decode|colour_jitter', "Unknown.*'colour_jitter'"),
])
def test_check_spec_errors_are_one_line_and_name_the_op(spec, match):
  for check in (lambda: ops.check_spec(spec, train=True),
                lambda: preprocess.get_preprocess_fn(spec, train=True)):
    with pytest.raises(ValueError, match=match) as e:
      check()
    assert '\n' not in str(e.value)


def test_shape_errors_name_the_op_and_spec():
  with pytest.raises(ValueError, match=r"smaller than.*'crop' in"):
    ops.output_shape('decode|crop(64)', (32, 32, 3), train=False)
  with pytest.raises(ValueError, match='RGB'):
    ops.output_shape('to_gray', (8, 8, 1), train=False)
  assert ops.output_shape('', (5, 6, 3), train=True) == (5, 6, 3)
  assert ops.output_shape('decode|resize_small(32)', (50, 70, 3),
                          train=False) == (32, 45, 3)


def test_ops_module_imports_no_tensorflow():
  # The GPU machine has JAX only.
  code = ('import sys; import ssl_jax.data.ops; '
          'assert not [m for m in sys.modules if m.startswith("tensorflow")]')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)
