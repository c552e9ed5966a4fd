"""Pooling of endpoints to <= ~9000 dims: the study's VALID rule, adaptive, patches."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl_jax import models
from ssl_jax.evaluation import features
from ssl_jax.evaluation import pooling
from ssl_jax.tasks import patches


def _endpoint_shapes(name, size, width=4, **kwargs):
  """Per-example endpoint shapes of a real model, by jax.eval_shape (no compute)."""
  model = models.create_model(name, num_classes=10, width=width, **kwargs)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, size, size, 3)), train=False))
  _, eps = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return {k: tuple(v.shape[1:]) for k, v in eps.items()}


def test_valid_rule_matches_the_study_at_224_k4():
  """revisiting.md 7.1: k=4 at 224 px: block1 5x5x256=6400, block2 4x4x512=8192,
  block3 2x2x1024=4096, block4 1x1x2048 (s=4: only the top-left 4x4 window)."""
  shapes = _endpoint_shapes('resnet50_v2', 224)
  assert shapes['block1'] == (56, 56, 256) and shapes['block4'] == (7, 7, 2048)
  got = {k: pooling.output_shape(v, 'max') for k, v in shapes.items()}
  assert got['block1'] == (5, 5, 256)
  assert got['block2'] == (4, 4, 512)
  assert got['block3'] == (2, 2, 1024)
  assert got['block4'] == (1, 1, 2048)
  assert got['pre_logits'] == (1, 1, 2048)
  # Hand-worked windows: s = ceil(sqrt(H*W*C/9000)).
  assert pooling.valid_window(56, 56, 256) == 10
  assert pooling.valid_window(28, 28, 512) == 7
  assert pooling.valid_window(14, 14, 1024) == 5
  assert pooling.valid_window(7, 7, 2048) == 4
  assert pooling.valid_window(7, 7, 100) == 1   # 4900 <= 9000: untouched
  assert pooling.valid_window(4, 4, 100000) == 4  # clipped to H


def test_valid_max_pool_values_and_dropped_tail():
  """7x7 map, s=4: the output is the max of the top-left 4x4 window only."""
  rng = np.random.RandomState(0)
  x = rng.randn(2, 7, 7, 2048).astype(np.float32)
  y = np.asarray(pooling.pool(jnp.asarray(x), 'max'))
  np.testing.assert_allclose(y, x[:, :4, :4, :].max(axis=(1, 2)), rtol=0, atol=0)
  y = np.asarray(pooling.pool(jnp.asarray(x), 'avg'))
  np.testing.assert_allclose(y, x[:, :4, :4, :].mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)


def test_valid_pool_numpy_reference_block1():
  rng = np.random.RandomState(1)
  x = rng.randn(1, 56, 56, 256).astype(np.float32)
  y = np.asarray(pooling.pool_map(jnp.asarray(x), 'max'))
  ref = np.zeros((1, 5, 5, 256), np.float32)
  for i in range(5):
    for j in range(5):
      ref[:, i, j] = x[:, 10 * i:10 * i + 10, 10 * j:10 * j + 10].max(axis=(1, 2))
  np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize('mode', ['adaptive_max', 'adaptive_avg'])
def test_adaptive_pool_numpy_reference(mode):
  """PyTorch-style bins [floor(i*H/t), ceil((i+1)*H/t)) cover every pixel."""
  rng = np.random.RandomState(2)
  x = rng.randn(2, 10, 10, 500).astype(np.float32)   # 50000 dims > 9000
  t = pooling.adaptive_side(10, 10, 500)
  assert t == 4 and t * t * 500 <= 9000
  y = np.asarray(pooling.pool_map(jnp.asarray(x), mode))
  red = np.max if mode == 'adaptive_max' else np.mean
  ref = np.zeros((2, t, t, 500), np.float32)
  for i in range(t):
    for j in range(t):
      r0, r1 = (i * 10) // t, -((-(i + 1) * 10) // t)
      c0, c1 = (j * 10) // t, -((-(j + 1) * 10) // t)
      ref[:, i, j] = red(x[:, r0:r1, c0:c1], axis=(1, 2))
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('size,kwargs', [
    (32, dict(small_input=True)), (64, dict(small_input=True)), (96, {}), (224, {})])
@pytest.mark.parametrize('name', ['resnet50_v2', 'revnet50', 'vgg19_bn'])
def test_pooled_dims_every_endpoint_and_size(name, size, kwargs):
  """Every endpoint of every trunk pools to <= 9000 dims (or C when C alone exceeds),
  with the VALID rule and the adaptive one, at 32, 64, 96 and 224 px."""
  shapes = _endpoint_shapes(name, size, **kwargs)
  for ep, shape in shapes.items():
    c = shape[-1]
    for mode in ('max', 'adaptive_max', 'adaptive_avg'):
      d = pooling.pooled_dim(shape, mode)
      assert d <= max(9000, c), (name, size, ep, shape, mode, d)
      assert d >= min(c, int(np.prod(shape))), (name, size, ep, shape, mode, d)
    assert pooling.pooled_dim(shape, 'global_avg') == c


def test_pooled_dims_table_32_64_224():
  """Exact dims per endpoint (VALID max rule, ResNet50 v2 k=4)."""
  expect = {
      32: dict(after_root=10 * 10 * 64, block1=5 * 5 * 256, block2=4 * 4 * 512,
               block3=2 * 2 * 1024, block4=2 * 2 * 2048, pre_logits=2048),
      64: dict(after_root=10 * 10 * 64, block1=5 * 5 * 256, block2=4 * 4 * 512,
               block3=2 * 2 * 1024, block4=2 * 2 * 2048, pre_logits=2048),
      224: dict(after_root=11 * 11 * 64, block1=5 * 5 * 256, block2=4 * 4 * 512,
                block3=2 * 2 * 1024, block4=2048, pre_logits=2048),
  }
  for size, dims in expect.items():
    shapes = _endpoint_shapes('resnet50_v2', size, small_input=size < 224)
    got = {k: pooling.pooled_dim(v, 'max') for k, v in shapes.items() if k != 'logits'}
    assert got == dims, (size, got)


def test_extract_fn_dims_match_eval_shape():
  """features.feature_dims (eval_shape of the real extraction) = pooling.pooled_dim."""
  model = models.create_model('resnet50_v2', num_classes=10, width=1, small_input=True)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, 32, 32, 3)), train=False))
  names = [n for n in models.ENDPOINTS['resnet50_v2'] if n != 'logits']
  fn = features.make_extract_fn(model, names, pool_mode='max', global_avg=True)
  dims = features.feature_dims(fn, variables, (32, 32, 3))
  shapes = _endpoint_shapes('resnet50_v2', 32, width=1, small_input=True)
  for n in names:
    assert dims[n] == pooling.pooled_dim(shapes[n], 'max')
    if len(shapes[n]) == 3:
      assert dims[n + features.GAP_SUFFIX] == shapes[n][-1]


def test_combine_patches_numpy_reference():
  rng = np.random.RandomState(3)
  x = rng.randn(4 * 9, 7).astype(np.float32)
  ref = x.reshape(4, 9, 7)
  np.testing.assert_allclose(np.asarray(pooling.combine_patches(jnp.asarray(x), 9, 'avg')),
                             ref.mean(1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(pooling.combine_patches(jnp.asarray(x), 9, 'max')),
                             ref.max(1))
  np.testing.assert_allclose(
      np.asarray(pooling.combine_patches(jnp.asarray(x), 9, 'concat')), ref.reshape(4, 63))


def test_patch_model_features_average_of_per_patch_pooled_features():
  """Patch models: 3x3 exact cells, each standardised, through the trunk, pooled per
  patch, averaged over the 9 patches, against a numpy reference built patch by patch."""
  model = models.create_model('tiny_cnn', num_classes=0, width=2, patch_strides=True)
  variables = model.init(jax.random.key(0, impl='unsafe_rbg'),
                         jnp.zeros((1, 12, 12, 3)), train=False)
  rng = np.random.RandomState(4)
  images = rng.randint(0, 256, (2, 36, 36, 3)).astype(np.uint8)
  names = ['after_root', 'block2', 'pre_logits']
  settings = ml_collections.ConfigDict(dict(grid=3, patch_size=12))
  fn = jax.jit(features.make_extract_fn(model, names, pool_mode='max', target_dims=200,
                                        eval_input=patches.eval_input(settings)))
  got = jax.device_get(fn(variables, jnp.asarray(images)))
  apply = jax.jit(lambda x: model.apply(variables, x, train=False)[1])
  for b in range(2):
    per_patch = {n: [] for n in names}
    for r in range(3):
      for c in range(3):
        p = images[b, 12 * r:12 * r + 12, 12 * c:12 * c + 12].astype(np.float32)
        p = (p - p.mean()) / max(p.std(), 1 / np.sqrt(p.size))
        eps = apply(jnp.asarray(p[None]))
        for n in names:
          per_patch[n].append(np.asarray(pooling.pool(eps[n], 'max', 200))[0])
    for n in names:
      np.testing.assert_allclose(got[n][b], np.mean(per_patch[n], 0), rtol=2e-4, atol=2e-5)
