"""Jigsaw and relative patch location: slots, pairs, labels, sampling, head, tiny runs."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import jigsaw as jigsaw_config
from configs import relative_patch_location as rpl_config
from ssl_jax.tasks import common
from ssl_jax.tasks import heads
from ssl_jax.tasks import jigsaw
from ssl_jax.tasks import relative_patch_location as rpl


class MeanTrunk(nn.Module):
  """Fake trunk: embedding = the patch's mean value in every one of `dim` features."""
  dim: int

  @nn.compact
  def __call__(self, x, train):
    del train
    emb = jnp.broadcast_to(x.mean(axis=(1, 2, 3))[:, None], (x.shape[0], self.dim))
    return emb, {'logits': emb}


class Identity(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    del train
    return x


@pytest.fixture
def fake_trunk(monkeypatch):
  monkeypatch.setattr(common, 'make_trunk', lambda model, dim: MeanTrunk(dim))


@pytest.fixture
def fake_head(monkeypatch):
  monkeypatch.setattr(heads, 'make_head', lambda model, patches, n: Identity())


def labelled_patches(b, p=4):
  """f32[b, 9, p, p, 3] where grid patch g of image i is constant 10 * i + g."""
  v = 10.0 * np.arange(b)[:, None] + np.arange(9)[None, :]
  return jnp.asarray(np.broadcast_to(v[:, :, None, None, None], (b, 9, p, p, 3)), jnp.float32)


def smoke(module):
  c = module.get_config('smoke')
  c.patches.embed_dim = 3
  return c


def test_permute_embeddings_matches_numpy():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(3, 9, 5)).astype(np.float32)
  perms = np.stack([[rng.permutation(9) for _ in range(4)] for _ in range(3)])
  got = np.asarray(jigsaw.permute_embeddings(jnp.asarray(emb), jnp.asarray(perms)))
  for b in range(3):
    for c in range(4):
      for j in range(9):
        np.testing.assert_array_equal(got[b, c, j], emb[b, perms[b, c, j]])


def test_jigsaw_slot_j_holds_grid_patch_perm_j(fake_trunk, fake_head):
  del fake_trunk, fake_head
  c = smoke(jigsaw_config)
  model = jigsaw.make_model(c)
  table = model.perms.array
  idx = jnp.asarray([[0, 57], [99, 3]], jnp.int32)
  inputs = {'patches': labelled_patches(2), 'perm_index': idx}
  out, _ = model.apply({}, inputs, train=False)
  out = np.asarray(out).reshape(2, 2, 9, 3)        # [image, copy, slot, embedding]
  for b in range(2):
    for k in range(2):
      want = 10 * b + table[idx[b, k]]              # slot j <- grid patch perm[j]
      np.testing.assert_array_equal(out[b, k, :, 0], want)
  # The table is the study's: e.g. row 0 = [7, 6, 5, 8, 4, 3, 2, 1, 0].
  np.testing.assert_array_equal(table[0], [7, 6, 5, 8, 4, 3, 2, 1, 0])


def test_rpl_pairs_and_labels(fake_trunk, fake_head):
  del fake_trunk, fake_head
  c = smoke(rpl_config)
  out, _ = rpl.make_model(c).apply({}, labelled_patches(2), train=False)
  out = np.asarray(out).reshape(2, 8, 2, 3)          # [image, pair, (neighbour, centre), E]
  for b in range(2):
    np.testing.assert_array_equal(out[b, :, 0, 0], 10 * b + np.array([0, 1, 2, 3, 5, 6, 7, 8]))
    np.testing.assert_array_equal(out[b, :, 1, 0], 10 * b + 4)
  images = jnp.zeros((3, 48, 48, 3), jnp.uint8)
  for train in (True, False):
    patches, targets = rpl.make_pretext_fn(c, train)(jax.random.key(0), images, None)
    assert patches.shape == (3, 9, 12, 12, 3)
    np.testing.assert_array_equal(targets, np.tile(np.arange(8), (3, 1)))
    assert rpl.copies(c, train) == 8


def test_metrics_are_image_major():
  logits = jnp.asarray(np.eye(4, dtype=np.float32)[[0, 1, 1, 3]] * 10)
  targets = jnp.asarray([[0, 1], [2, 3]], jnp.int32)
  m = jigsaw.metrics_fn(logits, targets)
  np.testing.assert_array_equal(m['accuracy'], [1, 1, 0, 1])
  want = -jax.nn.log_softmax(logits)[jnp.arange(4), targets.reshape(-1)]
  np.testing.assert_allclose(m['loss'], want, rtol=2e-3, atol=1e-6)


def test_jigsaw_sampling_modes():
  c = smoke(jigsaw_config)
  images = jnp.zeros((5, 48, 48, 3), jnp.uint8)
  c.jigsaw.perms_per_step = 8
  fn = jax.jit(jigsaw.make_pretext_fn(c, True))
  inputs, targets = fn(jax.random.key(0), images, None)
  idx = np.asarray(targets)
  assert idx.shape == (5, 8) and jigsaw.copies(c, True) == 8
  assert (idx == idx[0]).all() and len(set(idx[0])) == 8          # shared, no repeats
  assert idx.min() >= 0 and idx.max() < 100
  np.testing.assert_array_equal(inputs['perm_index'], idx)
  assert not np.array_equal(idx, fn(jax.random.key(1), images, None)[1])

  c.jigsaw.sampling = 'per_image'
  _, targets = jigsaw.make_pretext_fn(c, True)(jax.random.key(0), jnp.zeros((64, 48, 48, 3),
                                                                             jnp.uint8), None)
  assert targets.shape == (64, 1) and jigsaw.copies(c, True) == 1
  assert len(set(np.asarray(targets).ravel())) > 30                 # per image, not shared


def test_per_batch_permutations_are_shared_per_device():
  """As the train step runs it: one key per device inside shard_map."""
  c = smoke(jigsaw_config)
  fn = jigsaw.make_pretext_fn(c, True)
  mesh = jax.make_mesh((jax.device_count(),), ('data',))

  def per_device(images):
    key = jax.random.fold_in(jax.random.key(0), jax.lax.axis_index('data'))
    return fn(key, images, None)[1]

  n = jax.device_count()
  images = jax.device_put(jnp.zeros((4 * n, 48, 48, 3), jnp.uint8),
                          jax.NamedSharding(mesh, jax.P('data')))
  idx = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=jax.P('data'),
                              out_specs=jax.P('data')))(images)
  idx = np.asarray(idx).reshape(n, 4, -1)
  assert all((d == d[0]).all() for d in idx)
  if n > 1:
    assert len({tuple(d[0]) for d in idx}) > 1


def test_jigsaw_eval_permutations():
  c = smoke(jigsaw_config)
  c.jigsaw.eval_permutations = 0
  _, targets = jigsaw.make_pretext_fn(c, False)(None, jnp.zeros((2, 48, 48, 3), jnp.uint8), None)
  np.testing.assert_array_equal(targets, np.tile(np.arange(100), (2, 1)))
  assert jigsaw.copies(c, False) == 100
  c.jigsaw.eval_permutations = 7
  sample = jigsaw.eval_indices(c)
  assert sample.shape == (7,) and len(set(sample)) == 7 and (np.diff(sample) > 0).all()
  np.testing.assert_array_equal(sample, jigsaw.eval_indices(c))    # fixed
  _, targets = jigsaw.make_pretext_fn(c, False)(None, jnp.zeros((2, 48, 48, 3), jnp.uint8), None)
  np.testing.assert_array_equal(targets, np.tile(sample, (2, 1)))


def test_head_init_dropout_and_bn(fake_trunk):
  del fake_trunk
  c = smoke(rpl_config)
  c.patches.update(embed_dim=50, head_hidden=4096)
  model = rpl.make_model(c)
  x = labelled_patches(4)
  v = model.init({'params': jax.random.key(0)}, x, train=False)
  assert set(v['params']) == {'head'} and set(v['batch_stats']) == {'head'}
  h = v['params']['head']
  assert h['fc1']['kernel'].shape == (100, 4096) and h['fc2']['kernel'].shape == (4096, 8)
  np.testing.assert_array_equal(h['fc1']['bias'], np.float32(0.1))
  np.testing.assert_array_equal(h['fc2']['bias'], 0.0)
  for k in (h['fc1']['kernel'], h['fc2']['kernel']):
    assert np.abs(k).max() <= 0.01 + 1e-7                  # truncated at 2 std
    assert 0.0040 < np.std(k) < 0.0048                      # 0.005 * 0.88
  run = functools.partial(model.apply, v, x, train=True, mutable=['batch_stats'])
  (a, _), _ = run(rngs={'dropout': jax.random.key(1)})
  (b, _), _ = run(rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(a, b)
  e1, _ = model.apply(v, x, train=False)
  e2, _ = model.apply(v, x, train=False)
  np.testing.assert_array_equal(e1, e2)
  assert rpl.HEAD_WEIGHT_DECAY == jigsaw.HEAD_WEIGHT_DECAY == {'head': 5e-4}


def _fill(shapes, seed=0):
  """Cheap stand-in for model.init (whose compile dominates a CPU test): BN scale and
  variance 1, biases and means 0, kernels ~ N(0, 1/fan_in)."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name in ('scale', 'var'):
      return jnp.ones(s.shape, s.dtype)
    if name in ('bias', 'mean'):
      return jnp.zeros(s.shape, s.dtype)
    fan_in = int(np.prod(s.shape[:-1]))
    return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(fan_in), s.dtype)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.mark.parametrize('task,module', [(jigsaw, jigsaw_config), (rpl, rpl_config)])
def test_tiny_model_forward_backward(task, module):
  c = module.get_config('smoke')                    # ResNet50 v1 k=1, 12-px patches
  model = task.make_model(c)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3)), jnp.uint8)
  inputs, targets = task.make_pretext_fn(c, True)(jax.random.key(0), images, None)
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          {'params': jax.random.key(0)}, inputs)
  v = _fill(shapes)
  assert set(v['params']) == {'trunk', 'head'}

  def step(params):
    def loss_fn(p):
      (out, endpoints), mutated = model.apply(
          {'params': p, 'batch_stats': v['batch_stats']}, inputs, train=True,
          mutable=['batch_stats'], rngs={'dropout': jax.random.key(1)})
      m = task.metrics_fn(out, targets)
      return m['loss'].mean(), (out, m, endpoints, mutated)
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  # Unoptimised XLA: the test checks shapes and finiteness, and compiles ~2x faster.
  compiled = jax.jit(step).lower(v['params']).compile(
      {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True})
  (loss, (out, m, endpoints, mutated)), grads = compiled(v['params'])
  n = 2 * task.copies(c, True)
  classes = c.jigsaw.num_permutations if task is jigsaw else 8
  assert out.shape == (n, classes)
  assert m['loss'].shape == m['accuracy'].shape == (n,)
  assert endpoints['block4'].shape[:3] == (2 * 9, 3, 3)     # 12 px -> 12, 6, 3, 3
  assert np.isfinite(loss) and 0 < loss < 3 * np.log(classes)
  assert set(mutated['batch_stats']) == {'trunk', 'head'}
  g = jax.tree.leaves(grads)
  assert all(np.isfinite(x).all() for x in g)
  assert np.abs(grads['trunk']['root_conv']['kernel']).sum() > 0


@pytest.mark.parametrize('module', [jigsaw_config, rpl_config])
@pytest.mark.parametrize('preset', jigsaw_config.PRESETS)
def test_presets_validate(module, preset):
  from ssl_jax import config_lib  # pylint: disable=g-import-not-at-top
  config_lib.validate(module.get_config(preset), num_devices=8)


@pytest.mark.parametrize('key,value,match', [
    ('sampling', 'per_step', 'allowed'),
    ('method', 'file', "method='file'"),
    ('perms_per_step', 0, 'perms_per_step'),
    ('num_permutations', 1, 'num_permutations'),
])
def test_bad_jigsaw_options(key, value, match):
  c = jigsaw_config.get_config('smoke')
  if key == 'method':
    c.jigsaw.num_permutations = 1000
  c.jigsaw[key] = value
  with pytest.raises(ValueError, match=match):
    jigsaw.validate_config(c)


def test_models_are_hashable():
  c = jigsaw_config.get_config('smoke')
  assert hash(jigsaw.make_model(c)) == hash(jigsaw.make_model(c))
  assert 'PermutationTable(100x9' in repr(jigsaw.make_model(c))
  hash(rpl.make_model(rpl_config.get_config('smoke')))
