"""Tests of the colorization task against skimage, NumPy brute force and hand-worked cases.

The colour maths themselves (Lab, bins, soft encoding, weights) are tested in
test_color.py; here: the task's input, its targets at the head's resolution, the loss
and its gradient, the grey mask, the bins' sources and the settings' validation. Models
are tiny_cnn (run) or traced with jax.eval_shape (ResNet50).
"""
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import color as skcolor

from configs import colorization as col_config
from ssl_jax import config_lib
from ssl_jax import models
from ssl_jax import tasks
from ssl_jax import train
from ssl_jax.data import sources
from ssl_jax.tasks import color
from ssl_jax.tasks import colorization


@functools.lru_cache(maxsize=None)
def _bins(grid=10):
  """In-gamut bins with a prior from random images (some bins empty): a fixed test set."""
  images = np.random.RandomState(0).randint(0, 256, (4, 16, 16, 3)).astype(np.uint8)
  return color.derive_bins(images, grid, 'in_gamut')


def _config(size=16, model='tiny_cnn', **settings):
  c = col_config.get_config('smoke')
  c.model.name = model
  c.model.small_input = False
  c.data.source = 'synthetic'
  c.data.image_size = size
  c.data.synthetic_examples = 8
  c.input.pp_train = c.input.pp_eval = 'decode'
  c.tasks.colorization.update(settings)
  return c


def _task(config, bins=None):
  return colorization.make_task(config, _bins() if bins is None else bins)


def _np_soft(ab, centers, k, sigma=5.0):
  """Brute-force soft encoding: [N, 2] -> ([N, Q], nearest [N])."""
  d2 = ((ab[:, None, :] - centers[None]) ** 2).sum(-1)
  order = np.argsort(d2, axis=1, kind='stable')[:, :k]
  out = np.zeros_like(d2)
  for n in range(len(ab)):
    w = np.exp(-d2[n, order[n]] / (2 * sigma ** 2))
    out[n, order[n]] = w / w.sum()
  return out, order[:, 0]


def _block_images(rng, b, size, block, lo=0, hi=256):
  """u8[b, size, size, 3] made of constant-colour block x block squares."""
  cells = -(-size // block)
  small = rng.randint(lo, hi, (b, cells, cells, 3)).astype(np.uint8)
  return np.repeat(np.repeat(small, block, 1), block, 2)[:, :size, :size]


def _pretext(task, images):
  batch = {'image': jnp.asarray(images), 'label': jnp.zeros(len(images), jnp.int32),
           'mask': jnp.ones(len(images), bool)}
  return jax.jit(functools.partial(task.pretext, train=True))(jax.random.key(0), batch)


# ---------------------------------------------------------------- input

@pytest.mark.parametrize('channels', [1, 3])
def test_input_is_the_shifted_l_channel_of_skimage(channels):
  c = _config(input_channels=channels)
  task = _task(c)
  images = np.random.RandomState(1).randint(0, 256, (3, 16, 16, 3)).astype(np.uint8)
  inputs, _ = _pretext(task, images)
  x = np.asarray(inputs['image'])
  assert x.shape == (3, 1, 16, 16, channels) and x.dtype == np.float32
  ref = (skcolor.rgb2lab(images)[..., 0] - 50.0) / 50.0
  for ch in range(channels):
    np.testing.assert_allclose(x[:, 0, ..., ch], ref, atol=2e-5)
  assert -1.0 <= x.min() and x.max() <= 1.0 + 1e-6
  # Linear evaluation feeds the trunk exactly what training did.
  assert task.eval_input.kind == 'lab_l' and task.eval_input.per_image == 1
  np.testing.assert_allclose(np.asarray(task.eval_input.fn(jnp.asarray(images))), x[:, 0],
                             atol=1e-6)


@pytest.mark.parametrize('channels', [1, 3])
def test_trunk_root_conv_takes_the_input_channels(channels):
  for name, root in (('tiny_cnn', 'after_root_conv'), ('resnet50_v2', 'root_conv')):
    c = _config(size=32, model=name, input_channels=channels)
    c.model.output_stride = 0
    task = _task(c)
    inputs = {'colorization': {'image': jax.ShapeDtypeStruct((2, 1, 32, 32, channels),
                                                             jnp.float32)}}
    model = train.make_model(c, task)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                               inputs)
    assert variables['params']['trunk'][root]['kernel'].shape[2] == channels


# ---------------------------------------------------------------- targets

@pytest.mark.parametrize('size,downsample,k', [(16, 'subsample', 5), (18, 'mean', 5),
                                               (18, 'subsample', 1), (16, 'mean', 10)])
def test_targets_match_a_numpy_reference(size, downsample, k):
  c = _config(size=size, k=k, target_downsample=downsample)   # tiny_cnn: block2, stride 8
  task = _task(c)
  _, stride = colorization.endpoint_and_stride(c)
  assert stride == 8
  rng = np.random.RandomState(2)
  images = rng.randint(0, 256, (2, size, size, 3)).astype(np.uint8)
  _, t = _pretext(task, images)
  ab = skcolor.rgb2lab(images)[..., 1:]
  h = -(-size // stride)
  if downsample == 'subsample':
    small = ab[:, ::stride, ::stride]
  else:
    small = np.stack([np.stack([ab[:, i * stride:(i + 1) * stride,
                                   j * stride:(j + 1) * stride].mean(axis=(1, 2))
                                for j in range(h)], 1) for i in range(h)], 1)
  assert small.shape == (2, h, h, 2)
  bins = _bins()
  soft, nearest = _np_soft(small.reshape(-1, 2), bins['centers'].astype(np.float64), k)
  assert t['soft'].shape == (2, h, h, bins['num_bins'])
  np.testing.assert_allclose(np.asarray(t['soft']).reshape(-1, bins['num_bins']), soft,
                             atol=2e-4)
  np.testing.assert_array_equal(np.asarray(t['nearest']).ravel(), nearest)
  weights = color.rebalance_weights(bins['prior'], bins['centers'], 0.5, 5.0, True)
  np.testing.assert_allclose(np.asarray(t['weight']).ravel(), weights[nearest], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(t['non_grey']), [1.0, 1.0])
  if k == 1:  # The hard assignment: one-hot at the nearest bin.
    np.testing.assert_array_equal(np.asarray(t['soft']).argmax(-1).ravel(), nearest)
    np.testing.assert_allclose(np.asarray(t['soft']).max(-1), 1.0)


@pytest.mark.parametrize('output_stride,head', [(8, 8), (0, 2), (16, 4)])
def test_target_resolution_matches_the_head(output_stride, head):
  """ResNet50 v2 at 64 px: output stride 8 gives an 8x8 head and 8x8 targets."""
  c = _config(size=64, model='resnet50_v2')
  c.model.output_stride = output_stride
  task = _task(c)
  assert colorization.endpoint_and_stride(c) == ('block4', 64 // head)
  images = np.random.RandomState(3).randint(0, 256, (2, 64, 64, 3)).astype(np.uint8)
  inputs, targets = _pretext(task, images)
  model = train.make_model(c, task)

  def forward(inputs):
    variables = model.init(jax.random.key(0), {'colorization': inputs}, train=False)
    return model.apply(variables, {'colorization': inputs}, train=False)[0]['colorization']

  out = jax.eval_shape(forward, inputs)
  q = _bins()['num_bins']
  assert out.shape == targets['soft'].shape == (2, head, head, q)
  assert targets['weight'].shape == targets['nearest'].shape == (2, head, head)


def test_one_training_step_with_a_dilated_tiny_trunk():
  """tiny_cnn at output stride 4 (block2 dilated): 4x4 head on 16 px, a finite loss
  whose gradient reaches the trunk."""
  c = _config(size=16)
  c.model.output_stride = 4
  task = _task(c)
  images = np.random.RandomState(4).randint(0, 256, (4, 16, 16, 3)).astype(np.uint8)
  inputs, targets = _pretext(task, images)
  assert targets['soft'].shape[1:3] == (4, 4)
  model = train.make_model(c, task)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(
      {'colorization': inputs})

  def loss_fn(params):
    (out, _), _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                              {'colorization': inputs}, train=True, mutable=['batch_stats'])
    return task.loss(out['colorization'], targets, None)[0]

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables['params'])
  assert np.isfinite(loss)
  norm = lambda tree: float(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(tree)))
  assert norm(grads['trunk']['block2_conv']) > 0 and norm(grads['heads']) > 0


def test_decode_of_encode_at_t1_through_the_task_targets():
  """The annealed mean at T=1 of the task's soft targets recovers the ab of the pixel
  each head pixel is centred on (images of constant 8x8 blocks, mid-range colours)."""
  c = _config(size=32, k=10)
  task = _task(c)
  images = _block_images(np.random.RandomState(5), 4, 32, 8, 48, 208)
  _, t = _pretext(task, images)
  centers = _bins()['centers']
  decoded = np.asarray(color.annealed_mean(jnp.log(t['soft']), centers, 1.0))
  ref = skcolor.rgb2lab(images[:, ::8, ::8])[..., 1:]
  assert decoded.shape == ref.shape == (4, 4, 4, 2)
  err = np.abs(decoded - ref).max()
  assert err < 1.0, err
  # The hard assignment is off by up to half a cell (5) per axis.
  hard = _task(_config(size=32, k=1))
  _, t1 = _pretext(hard, images)
  err1 = np.abs(np.asarray(color.annealed_mean(jnp.log(t1['soft']), centers, 1.0)) - ref)
  assert err1.max() <= 5.0 + 1e-3 and err1.max() > err


# ---------------------------------------------------------------- loss

def _random_logits(targets, seed=6):
  return jnp.asarray(np.random.RandomState(seed).normal(0, 2, targets['soft'].shape),
                     jnp.float32)


def _np_loss(logits, t):
  z = np.asarray(logits, np.float64)
  logp = z - z.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  ce = -(np.asarray(t['soft']) * logp).sum(-1)
  per_image = (np.asarray(t['weight']) * ce).mean((1, 2)) * np.asarray(t['non_grey'])
  acc = (z.argmax(-1) == np.asarray(t['nearest'])).mean((1, 2))
  return per_image, ce.mean((1, 2)), acc


def test_loss_and_metrics_match_numpy():
  task = _task(_config(size=32))
  images = np.random.RandomState(7).randint(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  _, t = _pretext(task, images)
  logits = _random_logits(t)
  # Make one pixel right, so the accuracy is not trivially 0.
  logits = logits.at[0, 0, 0, t['nearest'][0, 0, 0]].set(50.0)
  loss, m = task.loss(logits, t, None)
  per_image, ce, acc = _np_loss(logits, t)
  np.testing.assert_allclose(m['loss'], per_image, rtol=1e-5)
  np.testing.assert_allclose(m['ce'], ce, rtol=1e-5)
  np.testing.assert_allclose(m['accuracy'], acc)
  assert acc[0] >= 1 / 16         # 16 head pixels (32 px at stride 8).
  np.testing.assert_allclose(loss, per_image.mean(), rtol=1e-5)
  assert set(m) == {'loss', 'ce', 'accuracy', 'non_grey'}
  with pytest.raises(ValueError, match='head outputs'):
    task.loss(logits[:, :2], t, None)


def test_rebalancing_weights_change_the_gradient():
  """d loss / d logits = w_p * (softmax - target) / (B h w): the weights reach the
  gradient (a reimplementation once applied them in a backward hook never called)."""
  c = _config(size=32)
  images = _block_images(np.random.RandomState(8), 2, 32, 4)
  grads = {}
  for rebalance in (True, False):
    c.tasks.colorization.rebalance = rebalance
    task = _task(c)
    _, t = _pretext(task, images)
    logits = _random_logits(t)
    grads[rebalance] = np.asarray(jax.grad(lambda z: task.loss(z, t, None)[0])(logits))
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    w = np.asarray(t['weight'])[..., None]
    ref = w * (p - np.asarray(t['soft'])) / np.prod(t['weight'].shape)
    np.testing.assert_allclose(grads[rebalance], ref, rtol=1e-4, atol=1e-9)
    weights = np.asarray(t['weight'])
    if rebalance:
      assert weights.std() > 0.1 * weights.mean()  # Bins of different rarity.
    else:
      np.testing.assert_array_equal(weights, 1.0)
  # Per pixel the rebalanced gradient is the plain one times that pixel's weight.
  assert not np.allclose(grads[True], grads[False], rtol=0.05)
  c.tasks.colorization.rebalance = True
  _, t = _pretext(_task(c), images)
  np.testing.assert_allclose(grads[True], grads[False] * np.asarray(t['weight'])[..., None],
                             rtol=1e-4, atol=1e-9)


def test_grey_mask_zeroes_a_grey_images_loss_and_gradient():
  rng = np.random.RandomState(9)
  grey = np.repeat(rng.randint(0, 256, (1, 32, 32, 1)), 3, axis=-1)
  tinted = np.clip(grey + np.array([0, 0, 3]), 0, 255)          # |a|, |b| <= 5: grey too
  colourful = rng.randint(0, 256, (1, 32, 32, 3))
  one_pixel = grey.copy()
  one_pixel[0, 5, 7] = (255, 0, 0)                               # One red pixel: not grey.
  images = np.concatenate([grey, tinted, colourful, one_pixel]).astype(np.uint8)
  ab = skcolor.rgb2lab(images)[..., 1:]
  assert np.abs(ab[1]).max() <= 5.0 and np.abs(ab[3]).max() > 5.0
  task = _task(_config(size=32))
  _, t = _pretext(task, images)
  np.testing.assert_array_equal(np.asarray(t['non_grey']), [0.0, 0.0, 1.0, 1.0])
  logits = _random_logits(t)
  (loss, m), g = jax.value_and_grad(lambda z: task.loss(z, t, None), has_aux=True)(logits)
  np.testing.assert_array_equal(np.asarray(m['loss'])[:2], 0.0)
  assert (np.asarray(m['loss'])[2:] > 0).all() and (np.asarray(m['ce']) > 0).all()
  np.testing.assert_array_equal(np.asarray(g)[:2], 0.0)
  assert np.abs(np.asarray(g)[2:]).max() > 0
  # Grey images count in the mean with loss 0 (the mean of the per-example losses).
  np.testing.assert_allclose(loss, np.asarray(m['loss']).mean(), rtol=1e-6)


# ---------------------------------------------------------------- bins and settings

def test_bins_of_the_synthetic_source_are_its_training_images():
  c = _config(size=16)
  c.data.synthetic_examples = 6
  c.seed = 3
  task = colorization.make_task(c)          # No bins given: resolved from the config.
  images = sources.synthetic_arrays(6, 2, 16, c.data.num_classes, seed=3)['train'][0]
  ref = color.derive_bins(images, 10, 'data')
  holder = colorization.bins_of(task)
  np.testing.assert_array_equal(holder.centers, ref['centers'])
  np.testing.assert_allclose(holder.data['prior'], ref['prior'])
  np.testing.assert_allclose(holder.weights, color.rebalance_weights(
      ref['prior'], ref['centers'], 0.5, 5.0, True))
  config_lib.validate(c, num_devices=8)


def test_bins_from_a_file_and_k_against_q(tmp_path):
  path = str(tmp_path / 'bins.npz')
  centers = color.ab_grid_cells(20)[[100, 101, 130]]
  np.savez(path, centers=centers, counts=np.array([5, 3, 0]))
  c = _config(bins_from='file', bins_file=path, k=3, lam=0.5)
  holder = colorization.bins_of(colorization.make_task(c))
  assert holder.num_bins == 3
  np.testing.assert_allclose(holder.data['prior'], [5 / 8, 3 / 8, 0.0])
  assert np.isfinite(holder.weights).all()
  config_lib.validate(c, num_devices=8)
  c.tasks.colorization.k = 4
  with pytest.raises(ValueError, match=r'k=4 .*Q = 3'):
    config_lib.validate(c, num_devices=8)
  np.savez(str(tmp_path / 'bad.npz'), centers=centers)
  c.tasks.colorization.bins_file = str(tmp_path / 'bad.npz')
  with pytest.raises(ValueError, match='prior'):
    colorization.bins_of(colorization.make_task(c)).data


def test_dataset_bins_come_from_the_cache_without_tfds(tmp_path, monkeypatch):
  c = _config(size=16, bins_cache_dir=str(tmp_path))
  c.data.source = 'tfds'
  c.data.train_split = 'train[:7]'      # A key no other test uses (the memo is per key).

  def no_tfds(*args, **kwargs):
    raise AssertionError('the dataset was loaded although its bins are cached')

  # Validation on a cache miss: cheap (no data), K unchecked until the bins exist.
  monkeypatch.setattr(color, 'dataset_images', no_tfds)
  assert colorization.resolve_bins(c, build=False) is None
  config_lib.validate(c, num_devices=8)
  images = np.random.RandomState(10).randint(0, 256, (3, 16, 16, 3)).astype(np.uint8)
  key = color.dataset_key(c.data)
  assert key == 'cifar10:train[:7]@16px'
  built = color.get_bins(key, lambda: images, 10, 'data', cache_dir=str(tmp_path))
  holder = colorization.bins_of(colorization.make_task(c))
  np.testing.assert_array_equal(holder.centers, built['centers'])
  assert holder.data['how'] == 'loaded'


@pytest.mark.parametrize('kind', ['not_a_zip', 'zip_magic', 'truncated', 'nan_prior',
                                  'prior_shape'])
def test_a_damaged_bins_file_is_a_one_line_start_up_error(tmp_path, kind):
  """bins_from='file' names the file and the fault before anything compiles (a zip
  that is not one used to end in a raw zipfile.BadZipFile)."""
  path = str(tmp_path / f'{kind}.npz')
  bins = _bins()
  np.savez(path, centers=bins['centers'], prior=bins['prior'])
  if kind == 'not_a_zip':
    with open(path, 'wb') as f:
      f.write(b'not an archive')
  elif kind == 'zip_magic':
    with open(path, 'wb') as f:
      f.write(b'PK\x03\x04' + b'\x00' * 64)
  elif kind == 'truncated':
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
      f.write(data[:len(data) // 3])
  elif kind == 'nan_prior':
    np.savez(path, centers=bins['centers'], prior=np.full(bins['num_bins'], np.nan))
  else:
    np.savez(path, centers=bins['centers'], prior=bins['prior'][:5])
  c = _config(bins_from='file', bins_file=path)
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.validate(c, num_devices=8)
  message = str(info.value)
  assert 'bins_file' in message and path in message and '\n' not in message
  with pytest.raises(ValueError, match='bins_file'):
    colorization.bins_of(colorization.make_task(c)).data


def test_a_damaged_dataset_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch, caplog):
  c = _config(size=16, bins_cache_dir=str(tmp_path))
  c.data.source = 'tfds'
  c.data.train_split = 'train[:9]'      # A key no other test uses (the memo is per key).
  images = np.random.RandomState(13).randint(0, 256, (3, 16, 16, 3)).astype(np.uint8)
  key = color.dataset_key(c.data)
  built = color.get_bins(key, lambda: images, 10, 'data', cache_dir=str(tmp_path))
  with open(built['cache'] + '.npz', 'wb') as f:
    f.write(b'PK\x03\x04' + b'\x00' * 64)          # Zip magic, no archive.
  loads = []
  monkeypatch.setattr(color, 'dataset_images', lambda *args: loads.append(1) or images)
  with caplog.at_level('WARNING'):
    assert colorization.resolve_bins(c, build=False) is None   # Validation stays cheap.
    config_lib.validate(c, num_devices=8)
    holder = colorization.bins_of(colorization.make_task(c))
    np.testing.assert_array_equal(holder.centers, built['centers'])
  assert holder.data['how'] == 'built' and loads == [1]
  assert 'unusable and will be rebuilt' in caplog.text and built['cache'] in caplog.text
  assert color.cached_bins(key, 10, 'data', cache_dir=str(tmp_path))['how'] == 'loaded'


@pytest.mark.parametrize('smooth', [False, True])
def test_mean_target_weight_is_one_under_the_prior_it_was_normalised_with(smooth):
  """Images of constant 8x8 blocks: each block is one head pixel (stride 8) and 64
  pixels of the prior, so the mean target weight is the weights' mean over the pixel
  distribution: 1 with the raw prior; with the smoothed prior (the default) it is
  sum raw * w, not 1, while sum smoothed * w = 1."""
  images = _block_images(np.random.RandomState(14), 8, 32, 8)
  images[:4] = images[:4] // 4 + 96        # Many blocks near grey: a concentrated prior.
  bins = color.derive_bins(images, 10, 'data')
  task = _task(_config(size=32, smooth_prior=smooth), bins)
  _, t = _pretext(task, images)
  weight = np.asarray(t['weight'], np.float64)
  assert weight.shape == (8, 4, 4)
  w = colorization.bins_of(task).weights.astype(np.float64)
  np.testing.assert_allclose(weight.mean(), (bins['prior'] * w).sum(), rtol=1e-5)
  if smooth:
    smoothed = color.smooth_prior(bins['prior'], bins['centers'], 5.0)
    np.testing.assert_allclose((smoothed * w).sum(), 1.0, rtol=1e-5)
    assert abs(weight.mean() - 1.0) > 0.02
  else:
    np.testing.assert_allclose(weight.mean(), 1.0, rtol=1e-5)


@pytest.mark.parametrize('key,value,match', [
    ('grid', 7, r'grid=7'), ('bin_rule', 'hull', 'bin_rule'), ('k', 0, r'k=0'),
('sigma', 0.0, 'sigma'), ('lam', 1.5, 'lam'),
    ('input_channels', 2, 'input_channels'), ('target_downsample', 'max', 'target_downsample'),
    ('endpoint', 'block4', r"endpoint='block4'.*block2"), ('head_hidden', -1, 'head_hidden'),
    ('temperature', 0.0, 'temperature'), ('bins_from', 'zhang', 'bins_from'),
    ('bins_max_images', 0, 'bins_max_images'), ('grey_threshold', -1.0, 'grey_threshold')])
def test_validate_names_the_bad_setting(key, value, match):
  c = _config()
  c.tasks.colorization[key] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c, num_devices=8)


def test_validate_checks_goyal_quirks_file_and_output_stride(tmp_path):
  c = _config(bin_rule='in_gamut', goyal_quirks=True)
  with pytest.raises(config_lib.ConfigError, match='goyal_quirks'):
    config_lib.validate(c, num_devices=8)
  c = _config(bins_from='file', bins_file=str(tmp_path / 'missing.npz'))
  with pytest.raises(config_lib.ConfigError, match='bins_file'):
    config_lib.validate(c, num_devices=8)
  c = _config()
  c.model.small_input = True
  c.model.output_stride = 8        # tiny_cnn with small_input reaches 4 at most.
  with pytest.raises(config_lib.ConfigError, match=r'output_stride=8'):
    config_lib.validate(c, num_devices=8)
  c = _config(model='vgg19_bn')
  c.model.output_stride = 8
  with pytest.raises(config_lib.ConfigError, match='vgg19_bn'):
    config_lib.validate(c, num_devices=8)


def test_presets():
  for preset in col_config.PRESETS:
    c = col_config.get_config(preset)
    assert c.tasks.colorization.k == 5 and c.tasks.colorization.grid == 10
    assert 'color_jitter' not in c.input.pp_train
  c = col_config.get_config('imagenet')
  assert (c.model.name, c.model.width, c.model.output_stride, c.batch_size) == (
      'resnet50_v2', 4, 8, 256)
  assert c.input.pp_train == 'decode|resize(256)|crop(176)|flip_lr'
  strides = models.endpoint_strides('resnet50_v2', output_stride=8)
  assert strides['block4'] == 8 and colorization.endpoint_and_stride(c) == ('block4', 8)
  # Zhang's bins (his 313 at grid 10) on the imagenet preset's training.
  z = col_config.get_config('zhang')
  assert (z.tasks.colorization.bin_rule, z.tasks.colorization.smooth_prior) == ('in_hull', True)
  for key in ('model', 'input', 'optimizer', 'data'):
    assert z[key].to_dict() == c[key].to_dict(), key
  assert z.batch_size == c.batch_size and z.num_epochs == c.num_epochs
  assert len(color.in_hull_cells(z.tasks.colorization.grid)) == 313
  assert col_config.get_config('cifar10').tasks.colorization.bin_rule == 'data'  # Goyal's.
  c = col_config.get_config('cifar10_cpu')
  assert c.model.width == 1 and c.model.small_input
  assert colorization.endpoint_and_stride(c) == ('block4', 8)


def test_registered_and_no_tensorflow_at_import():
  assert 'colorization' in tasks.names()
  code = ('import sys, ssl_jax.tasks.colorization; '
          'assert not [m for m in sys.modules if m.startswith(("tensorflow", "input_pipeline"))]')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, '-c', code], check=True, cwd=root)


# ---------------------------------------------------------------- pictures

@pytest.mark.parametrize('mode', ['subsample', 'mean'])
def test_upsample_ab_is_aligned_with_the_targets(mode):
  rng = np.random.RandomState(11)
  small = rng.normal(0, 20, (2, 3, 4, 2)).astype(np.float32)
  up = np.asarray(colorization.upsample_ab(jnp.asarray(small), 8, (20, 27), mode))
  assert up.shape == (2, 20, 27, 2)
  offset = 0.0 if mode == 'subsample' else 3.5
  # Separable linear interpolation with the edges held (np.interp clamps).
  ref = np.empty_like(up)
  rows = np.empty((2, 20, 4, 2), np.float32)
  for b in range(2):
    for c in range(2):
      for j in range(4):
        rows[b, :, j, c] = np.interp((np.arange(20) - offset) / 8, np.arange(3),
                                     small[b, :, j, c])
      for i in range(20):
        ref[b, i, :, c] = np.interp((np.arange(27) - offset) / 8, np.arange(4), rows[b, i, :, c])
  np.testing.assert_allclose(up, ref, rtol=1e-5, atol=1e-4)
  if mode == 'subsample':  # Head pixel (i, j) lands on input pixel (8i, 8j).
    np.testing.assert_allclose(np.asarray(colorization.downsample_ab(jnp.asarray(up), 8)),
                               small, rtol=1e-6, atol=1e-5)


def test_colorize_renders_decoded_targets():
  """A head that outputs log soft-targets is decoded (T=1) to the targets' colours."""
  c = _config(size=32, k=10)
  task = _task(c)
  images = _block_images(np.random.RandomState(12), 2, 32, 8, 48, 208)
  _, t = _pretext(task, images)
  out = colorization.colorize(task, c, lambda inputs: jnp.log(t['soft']), images,
                              temperature=1.0)
  assert np.abs(np.asarray(out['pred_ab'] - out['true_ab'])).max() < 1.0
  for key in ('prediction', 'target', 'grey'):
    assert out[key].shape == images.shape and out[key].dtype == np.uint8
  # Constant 8x8 blocks: the targets' rendering is the image itself, up to the
  # interpolation between block colours.
  diff = np.abs(out['prediction'].astype(int) - out['target'].astype(int))
  assert diff.max() <= 4
  np.testing.assert_allclose(out['target'][:, ::8, ::8], images[:, ::8, ::8], atol=2)
  grey_ab = skcolor.rgb2lab(out['grey'])[..., 1:]
  assert np.abs(grey_ab).max() < 1.5
