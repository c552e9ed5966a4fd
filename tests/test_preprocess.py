"""Tests of input_pipeline.preprocess against independent numpy/PIL refs."""
import io
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from input_pipeline import preprocess

SHARED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'shared', 'data')


def _run(spec, image, seed=(0, 0), train=True):
  """Applies `spec` to one image eagerly; returns uint8 numpy."""
  fn = preprocess.get_preprocess_fn(spec, train=train)
  out = fn({'image': tf.convert_to_tensor(image),
            preprocess.SEED_KEY: tf.constant(seed, tf.int64)})['image']
  assert out.dtype == tf.uint8
  return out.numpy()


def _run_seeds(spec, image, n, train=True):
  """`spec` on one image for seeds (0, 0) .. (0, n - 1): uint8[n, ...]."""
  fn = preprocess.get_preprocess_fn(spec, train=train)
  image = tf.convert_to_tensor(image)
  ds = tf.data.Dataset.range(n).map(lambda i: fn(
      {'image': image, preprocess.SEED_KEY: tf.stack([tf.constant(0, tf.int64),
                                                      i])})['image'])
  return np.stack(list(ds.as_numpy_iterator()))


def _rand_image(h, w, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (h, w, 3), np.uint8)


def _encode(array, fmt, **kw):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, fmt, **kw)
  return buf.getvalue()


# --- numpy references of the TF1 resize kernels -----------------------------


def _legacy_bilinear(x, oh, ow):
  """TF1 resize_bilinear, align_corners=False, no half-pixel centres."""
  x = x.astype(np.float64)
  h, w = x.shape[:2]
  def axis(n_in, n_out):
    src = np.arange(n_out) * (n_in / n_out)
    lo = np.floor(src).astype(int)
    return lo, np.minimum(lo + 1, n_in - 1), src - lo
  y0, y1, fy = axis(h, oh)
  x0, x1, fx = axis(w, ow)
  fx = fx[None, :, None]
  top = x[y0][:, x0] * (1 - fx) + x[y0][:, x1] * fx
  bot = x[y1][:, x0] * (1 - fx) + x[y1][:, x1] * fx
  return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


def _area_weights(n_in, n_out):
  """[n_out, n_in] overlap of output cell [y*s, (y+1)*s) with input pixels."""
  s = n_in / n_out
  lo = np.arange(n_out)[:, None] * s
  hi = lo + s
  i = np.arange(n_in)[None, :]
  return np.clip(np.minimum(i + 1, hi) - np.maximum(i, lo), 0, None) / s


def _area(x, oh, ow):
  wy, wx = _area_weights(x.shape[0], oh), _area_weights(x.shape[1], ow)
  return np.einsum('yi,ijc,xj->yxc', wy, x.astype(np.float64), wx)


def _u8(x):
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _assert_rounds_to(out, ref):
  """uint8 `out` is float `ref` rounded (float32 vs float64 slack at .5)."""
  assert out.shape == ref.shape
  assert np.abs(out.astype(np.float64) - ref).max() <= 0.5 + 1e-2


# --- decode -----------------------------------------------------------------


def test_decode_matches_pil_on_real_jpegs():
  path = os.path.join(SHARED_DATA, 'cifar10', 'test.npz')
  if not os.path.exists(path):
    pytest.skip(f'{path} missing (shared CIFAR-10 JPEGs).')
  data = np.load(path)
  jpeg, offsets = data['jpeg'], data['offsets']
  for i in range(0, 200, 7):
    raw = jpeg[offsets[i]:offsets[i + 1]].tobytes()
    ref = np.asarray(Image.open(io.BytesIO(raw)).convert('RGB'))
    np.testing.assert_array_equal(_run('decode', raw), ref)


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
def test_decode_grayscale_source_gives_three_equal_channels(fmt):
  gray = _rand_image(20, 30)[..., 0]
  raw = _encode(gray, fmt)
  ref = np.asarray(Image.open(io.BytesIO(raw)).convert('L'))
  out = _run('decode', raw)
  assert out.shape == (20, 30, 3)
  for c in range(3):
    np.testing.assert_array_equal(out[..., c], ref)


def test_decode_png_rgb_exact_and_decoded_uint8_passthrough():
  img = _rand_image(17, 23)
  np.testing.assert_array_equal(_run('decode', _encode(img, 'PNG')), img)
  np.testing.assert_array_equal(_run('decode', img), img)
  out = _run('decode', img[..., :1])
  np.testing.assert_array_equal(out, np.repeat(img[..., :1], 3, -1))
  np.testing.assert_array_equal(_run('decode', img[..., 0]),
                                np.repeat(img[..., :1], 3, -1))


# --- resizes and crops ------------------------------------------------------


def test_resize_small_area_integer_factor_is_exact_box_filter():
  img = _rand_image(64, 96)
  out = _run('resize_small(32)', img)
  assert out.shape == (32, 48, 3)
  box = img.reshape(32, 2, 48, 2, 3).astype(np.float64).mean((1, 3))
  np.testing.assert_array_equal(out, _u8(box))


def test_resize_small_fractional_matches_area_reference():
  img = _rand_image(50, 70, seed=1)
  out = _run('resize_small(32)', img)
  # Shorter side 50 -> 32; longer 70 * 0.64 = 44.8 -> 45 (rounded).
  assert out.shape == (32, 45, 3)
  _assert_rounds_to(out, _area(img, 32, 45))
  # Upscaling (the linear-eval pipeline on small images) and portrait.
  img = _rand_image(40, 30, seed=2)
  out = _run('resize_small(64)', img)
  assert out.shape == (85, 64, 3)  # 40 * 64 / 30 = 85.33 -> 85.
  _assert_rounds_to(out, _area(img, 85, 64))


def test_resize_small_noop_at_target_size():
  img = _rand_image(32, 40)
  np.testing.assert_array_equal(_run('resize_small(32)', img), img)


def test_resize_is_legacy_bilinear_squash():
  img = _rand_image(37, 53, seed=3)
  out = _run('resize(29)', img)
  assert out.shape == (29, 29, 3)
  _assert_rounds_to(out, _legacy_bilinear(img, 29, 29))
  out = _run('resize((60, 80))', img)
  assert out.shape == (60, 80, 3)
  _assert_rounds_to(out, _legacy_bilinear(img, 60, 80))
  np.testing.assert_array_equal(_run('resize(37)', img[:, :37]), img[:, :37])


@pytest.mark.parametrize('h,w,size', [(10, 13, 4), (9, 9, 4), (32, 32, 32)])
def test_central_crop_offsets(h, w, size):
  img = _rand_image(h, w)
  top, left = (h - size) // 2, (w - size) // 2
  expected = img[top:top + size, left:left + size]
  np.testing.assert_array_equal(_run(f'central_crop({size})', img), expected)
  np.testing.assert_array_equal(_run(f'crop({size})', img, train=False),
                                expected)


def test_random_crop_is_a_window_and_covers_offsets():
  h, w, size = 9, 7, 5
  img = (np.arange(h * w).reshape(h, w, 1) * np.ones(3)).astype(np.uint8)
  outs = _run_seeds(f'crop({size})', img, 200)
  offsets = set()
  for out in outs:
    top, left = divmod(int(out[0, 0, 0]), w)
    np.testing.assert_array_equal(out, img[top:top + size, left:left + size])
    offsets.add((top, left))
  assert offsets == {(t, l) for t in range(h - size + 1)
                     for l in range(w - size + 1)}


def test_crop_too_large_names_the_problem():
  with pytest.raises(tf.errors.InvalidArgumentError, match='smaller than'):
    _run('central_crop(8)', _rand_image(7, 9))


def test_inception_eval_is_central_875_then_bilinear():
  img = _rand_image(120, 100, seed=4)
  out = _run('inception_eval(64)', img)
  # tf.image.central_crop: start = int((n - 0.875 n) / 2), size = n - 2 start.
  top, left = int((120 - 120 * 0.875) / 2), int((100 - 100 * 0.875) / 2)
  crop = img[top:120 - top, left:100 - left]
  _assert_rounds_to(out, _legacy_bilinear(crop, 64, 64))
  np.testing.assert_array_equal(
      out, _run('inception_preprocess(64)', img, train=False))


# --- inception crop ---------------------------------------------------------


def test_inception_crop_window_bounds_over_many_samples():
  h, w, n = 240, 320, 500
  ds = tf.data.Dataset.range(n).map(lambda i: preprocess.inception_crop_window(
      tf.constant([h, w, 3]), tf.stack([tf.constant(7, tf.int64), i])))
  windows = list(ds.as_numpy_iterator())
  areas, aspects = [], []
  for begin, size in windows:
    assert (begin >= 0).all() and (begin[:2] + size[:2] <= [h, w]).all()
    assert size[2] == -1  # All channels.
    if tuple(size[:2]) == (h, w):
      continue  # Fallback or a full-image draw.
    areas.append(size[0] * size[1] / (h * w))
    aspects.append(size[1] / size[0])
  areas, aspects = np.array(areas), np.array(aspects)
  assert len(areas) > 0.9 * n
  # min_object_covered=0.1 with a whole-image box: 10% is the real minimum.
  assert areas.min() >= 0.1 - 0.01 and areas.max() <= 1.0
  assert areas.min() < 0.2 and areas.max() > 0.8  # The range is used.
  assert aspects.min() >= 0.75 - 0.02 and aspects.max() <= 1.33 + 0.02
  assert aspects.min() < 0.8 and aspects.max() > 1.25


def test_inception_crop_output_and_consistency_with_window():
  img = _rand_image(60, 80, seed=5)
  out = _run('inception_crop(32)', img, seed=(3, 4))
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8
  # The op is: window from its share of the seed, then legacy bilinear.
  op_seed = tf.random.experimental.stateless_split(
      tf.constant([3, 4], tf.int64), 2)[0]
  begin, size = [t.numpy() for t in preprocess.inception_crop_window(
      tf.constant(img.shape), op_seed)]
  crop = img[begin[0]:begin[0] + size[0], begin[1]:begin[1] + size[1]]
  _assert_rounds_to(out, _legacy_bilinear(crop, 32, 32))


def test_train_pipelines_shapes_and_dtypes():
  img = _rand_image(70, 90)
  for spec, shape in [
      ('inception_crop(48)|flip_lr|color_jitter', (48, 48, 3)),
      ('inception_preprocess(48)', (48, 48, 3)),
      ('resize_small(40)|crop(32)', (32, 32, 3)),
      ('resize(60)|to_gray(0.66)|crop(51)', (51, 51, 3)),
      ('pad_crop_flip(4)', (70, 90, 3))]:
    out = _run(spec, img)
    assert out.shape == shape and out.dtype == np.uint8, spec


# --- flips, gray, colour ----------------------------------------------------


def test_flip_lr_is_identity_or_mirror_both_happen():
  img = _rand_image(8, 9)
  outs = _run_seeds('flip_lr', img, 64)
  flipped = [bool((o == img[:, ::-1]).all()) for o in outs]
  assert all(f or (o == img).all() for f, o in zip(flipped, outs))
  assert 10 < sum(flipped) < 54


def test_to_gray_integer_floor_mean_tiled():
  img = _rand_image(11, 13)
  out = _run('to_gray(1.0)', img)
  mean = img.astype(np.uint64).sum(-1) // 3
  np.testing.assert_array_equal(out, np.repeat(mean[..., None], 3, -1))
  np.testing.assert_array_equal(_run('to_gray(0.0)', img), img)


def test_to_gray_decided_once_per_image_with_probability_p():
  img = _rand_image(16, 16)
  gray = np.repeat((img.astype(np.uint64).sum(-1) // 3)[..., None], 3, -1)
  outs = _run_seeds('to_gray(0.66)', img, 300, train=False)
  is_gray = np.array([(o == gray).all() for o in outs])
  is_orig = np.array([(o == img).all() for o in outs])
  assert (is_gray ^ is_orig).all()  # Whole image, never a mixture.
  assert 0.56 < is_gray.mean() < 0.76  # p = 0.66, applied at eval too.


def test_decisions_shared_by_everything_cut_from_the_image():
  # Patch tasks gray the whole image before cutting patches: every patch of
  # one image is gray or none is.
  img = _rand_image(64, 64)
  outs = _run_seeds('to_gray(0.5)|crop(48)', img, 40)
  for out in outs:
    patches = [out[r:r + 16, c:c + 16] for r in (0, 16, 32)
               for c in (0, 16, 32)]
    gray = [bool((p == p[..., :1]).all()) for p in patches]
    assert len(set(gray)) == 1


def test_color_jitter_on_gray_is_a_uniform_brightness_shift():
  # Saturation leaves gray pixels unchanged, so only the brightness delta,
  # |delta| <= 32/255, is left: one shift for the whole image.
  img = np.repeat(np.linspace(60, 190, 100).reshape(10, 10, 1), 3, -1)
  img = img.astype(np.uint8)
  shifts = []
  for out in _run_seeds('color_jitter', img, 50):
    d = out.astype(int) - img.astype(int)
    assert d.max() - d.min() <= 1 and np.abs(d).max() <= 33
    shifts.append(d.mean())
  assert np.ptp(shifts) > 30  # The delta is random.


def test_color_jitter_matches_slim_tf_image_ops():
  # Reference: slim's fast-mode distort_color with tf.image's own ops, fed
  # the same random draws as the op (its seed's halves, as the op splits it).
  img = _rand_image(24, 24)
  for seed in [(0, 1), (5, 9), (2, 3)]:
    out = _run('color_jitter', img, seed=seed)
    op_seed = tf.random.experimental.stateless_split(
        tf.constant(seed, tf.int64), 2)[0]
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(op_seed, 2))
    delta = tf.random.stateless_uniform([], s1, -32 / 255, 32 / 255)
    factor = tf.random.stateless_uniform([], s2, 0.5, 1.5)
    x = tf.image.adjust_brightness(tf.constant(img / 255, tf.float32), delta)
    x = tf.clip_by_value(tf.image.adjust_saturation(x, factor), 0.0, 1.0)
    _assert_rounds_to(out, x.numpy().astype(np.float64) * 255)


def test_color_jitter_saturation_changes_colour_images():
  img = _rand_image(10, 10)
  outs = _run_seeds('color_jitter', img, 10)
  assert len({o.tobytes() for o in outs}) == 10


def test_pad_crop_flip_train_window_of_padded_eval_identity():
  img = _rand_image(12, 12) | 1  # No zeros: padding is recognisable.
  padded = np.pad(img, [(4, 4), (4, 4), (0, 0)])
  windows = {(t, l): padded[t:t + 12, l:l + 12]
             for t in range(9) for l in range(9)}
  for out in _run_seeds('pad_crop_flip(4)', img, 30):
    assert any((out == w).all() or (out == w[:, ::-1]).all()
               for w in windows.values())
  np.testing.assert_array_equal(_run('pad_crop_flip', img, train=False), img)


# --- determinism and parsing ------------------------------------------------


def test_deterministic_for_a_seed():
  img = _rand_image(50, 60)
  spec = 'inception_crop(24)|flip_lr|color_jitter|to_gray(0.5)'
  a = _run(spec, img, seed=(1, 2))
  np.testing.assert_array_equal(a, _run(spec, img, seed=(1, 2)))
  others = [_run(spec, img, seed=(1, s)) for s in range(3, 8)]
  assert any((a != o).any() for o in others)


def test_unknown_op_names_it_and_lists_known_ops():
  with pytest.raises(ValueError, match=r"'nope'.*Known ops:.*inception_crop"):
    preprocess.get_preprocess_fn('decode|nope(3)|flip_lr')


def test_parse_spec_arguments_and_errors():
  assert preprocess.parse_spec(
      'decode| inception_crop(224, area_min=0.08) |to_gray(0.66)|') == [
          ('decode', (), {}), ('inception_crop', (224,), {'area_min': 0.08}),
          ('to_gray', (0.66,), {})]
  with pytest.raises(ValueError, match='Malformed'):
    preprocess.parse_spec('crop(224')
  with pytest.raises(ValueError, match='Bad arguments'):
    preprocess.get_preprocess_fn('crop(1, 2, 3)')


def test_float_output_rejected():
  @preprocess.register('_test_float')
  def _float():
    return lambda f: {**f, 'image': tf.cast(f['image'], tf.float32)}
  try:
    with pytest.raises(ValueError, match='uint8'):
      _run('_test_float', _rand_image(4, 4))
  finally:
    del preprocess.OPS['_test_float']


# --- SimCLR ops, views, the shared language ----------------------------------


def _op_seed(seed):
  """The seed the first op of a pipeline gets from the example seed."""
  return tf.random.experimental.stateless_split(
      tf.constant(seed, tf.int64), 2)[0]


def test_to_gray_luma_is_tf_rgb_to_grayscale_rounded():
  img = _rand_image(13, 17, seed=6)
  out = _run("to_gray(weights='luma')", img)
  ref = tf.image.rgb_to_grayscale(img / 255.0).numpy() * 255.0
  _assert_rounds_to(out[..., :1], ref)
  assert (out == out[..., :1]).all()


def test_color_distort_matches_simclr_tf_image_reference():
  # SimCLR's colour jitter from tf.image ops, fed the op's own draws: factor
  # ranges [1 - 0.8 s, 1 + 0.8 s], hue delta [-0.2 s, 0.2 s], random order,
  # clip after each op.
  img = _rand_image(16, 16, seed=7)
  seen_orders, applied = set(), 0
  for i in range(12):
    seed = (3, i)
    out = _run('color_distort(0.5, p=0.8)', img, seed=seed)
    seeds = tf.unstack(tf.random.experimental.stateless_split(
        _op_seed(seed), 6))
    u = lambda s, lo, hi: tf.random.stateless_uniform([], s, lo, hi)
    if u(seeds[0], 0.0, 1.0) >= 0.8:
      np.testing.assert_array_equal(out, img)
      continue
    applied += 1
    params = [u(seeds[1], 0.6, 1.4), u(seeds[2], 0.6, 1.4),
              u(seeds[3], 0.6, 1.4), u(seeds[4], -0.1, 0.1)]
    order = np.argsort(tf.random.stateless_uniform([4], seeds[5]).numpy())
    seen_orders.add(tuple(order))
    x = tf.constant(img / 255.0, tf.float32)
    steps = [lambda y: y * params[0],
             lambda y: tf.image.adjust_contrast(y, params[1]),
             lambda y: tf.image.adjust_saturation(y, params[2]),
             lambda y: tf.image.adjust_hue(y, params[3])]
    for j in order:
      x = tf.clip_by_value(steps[j](x), 0.0, 1.0)
    _assert_rounds_to(out, x.numpy().astype(np.float64) * 255)
  assert applied >= 6 and len(seen_orders) >= 4


def test_gaussian_blur_matches_scipy_with_the_ops_sigma():
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  img = _rand_image(30, 40, seed=8)
  blurred = 0
  for i in range(8):
    seed = (4, i)
    out = _run('gaussian_blur(p=0.5)', img, seed=seed)
    s_apply, s_sigma = tf.unstack(tf.random.experimental.stateless_split(
        _op_seed(seed), 2))
    if tf.random.stateless_uniform([], s_apply).numpy() >= 0.5:
      np.testing.assert_array_equal(out, img)
      continue
    blurred += 1
    sigma = tf.random.stateless_uniform([], s_sigma, 0.1, 2.0).numpy()
    x = np.arange(-1, 2)  # Height 30: kernel side 3, radius 1.
    k = np.exp(-x ** 2 / (2.0 * sigma ** 2))
    k /= k.sum()
    ref = ndimage.correlate1d(img.astype(np.float64), k, axis=0,
                              mode='constant')
    ref = ndimage.correlate1d(ref, k, axis=1, mode='constant')
    _assert_rounds_to(out, ref)
  assert 0 < blurred < 8


def test_size_preserving_ops_preserve_size():
  img = _rand_image(20, 24)
  # The corruptions have no default level.
  args = {'downsample': '(3)', 'jpeg': '(30)', 'salt_pepper': '(0.05)'}
  for name in preprocess.SIZE_PRESERVING_OPS:
    assert _run(name + args.get(name, ''), img).shape == img.shape, name


def test_views_run_the_ops_after_per_view_with_split_seeds():
  img = _rand_image(12, 10, seed=9)
  out = _run('views(3)|flip_lr|crop(6)', img, seed=(5, 6))
  assert out.shape == (3, 6, 6, 3)
  # The views op takes its seed from the chain and splits it per view; view
  # i is the ops after it run alone with view seed i.
  view_seeds = tf.random.experimental.stateless_split(_op_seed((5, 6)), 3)
  post = preprocess.get_preprocess_fn('flip_lr|crop(6)')
  for i in range(3):
    ref = post({'image': tf.constant(img),
                preprocess.SEED_KEY: view_seeds[i]})['image'].numpy()
    np.testing.assert_array_equal(out[i], ref)
  assert len({v.tobytes() for v in out}) > 1
  # Ops before views run once: one gray decision for all copies.
  outs = _run_seeds('to_gray(0.5)|views(4)|crop(8)', img, 30)
  gray = (outs == outs[..., :1]).all((2, 3, 4))
  assert (gray.all(1) | ~gray.any(1)).all() and 0 < gray[:, 0].sum() < 30
  assert _run('views(1)', img).shape == (1, 12, 10, 3)


def test_views_twice_and_bad_arguments_rejected_like_jax():
  with pytest.raises(ValueError, match='views ops'):
    preprocess.get_preprocess_fn('views(2)|views(2)')
  with pytest.raises(ValueError, match="Bad arguments.*'gaussian_blur'"):
    preprocess.get_preprocess_fn('gaussian_blur(p=2)')


def test_datasets_batch_pad_and_load_views():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  from input_pipeline import datasets  # pylint: disable=g-import-not-at-top
  if not tfds.builder('cifar10').is_prepared():
    pytest.skip('cifar10 is not prepared (run ../shared/data/prepare_tfds.py).')
  config = common.get_config()
  config.input.shuffle_buffer = 16
  config.data.val_split = 'test[:10]'
  spec = 'decode|to_gray(0.5)|views(3)|crop(28)|flip_lr'
  batches = list(datasets.get_dataset(config, 'val', train=False,
                                      batch_size=4, pp=spec))
  assert len(batches) == 3
  for b in batches:
    assert b['image'].shape == (4, 3, 28, 28, 3)
    assert b['image'].dtype == np.uint8
  last = batches[-1]
  assert last['mask'].tolist() == [True, True, False, False]
  assert not last['image'][2:].any()  # Zero padding, views axis included.
  train = next(datasets.get_dataset(config, 'val', train=True, batch_size=4,
                                    pp=spec))
  assert train['image'].shape == (4, 3, 28, 28, 3) and train['mask'].all()
  images, labels = datasets.load_arrays(config, 'val', pp=spec)
  assert images.shape == (10, 3, 28, 28, 3) and labels.shape == (10,)
  np.testing.assert_array_equal(
      images[:4], batches[0]['image'])  # The same eval seeds.
