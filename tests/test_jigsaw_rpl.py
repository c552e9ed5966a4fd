"""Jigsaw and relative patch location: slots, pairs, labels, sampling, head, tiny runs."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import jigsaw as jigsaw_config
from configs import relative_patch_location as rpl_config
from ssl_jax import models
from ssl_jax import tasks
from ssl_jax import train
from ssl_jax.tasks import common
from ssl_jax.tasks import heads
from ssl_jax.tasks import jigsaw
from ssl_jax.tasks import relative_patch_location as rpl


class Identity(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    del train
    return x


@pytest.fixture
def plain_head(monkeypatch):
  """Embedding = the patch's pre_logits as given; classifier = identity."""
  monkeypatch.setattr(heads, 'patch_embeddings',
                      lambda endpoints, n, dim, dtype: endpoints['pre_logits'].reshape(-1, n, dim))
  monkeypatch.setattr(heads, 'make_fc', lambda settings, n, axis, dtype: Identity())


def labelled_embeddings(b, dim=3):
  """pre_logits f32[b * 9, dim] where grid patch g of image i is the constant 10 * i + g."""
  v = 10.0 * np.arange(b)[:, None] + np.arange(9)[None, :]
  return jnp.asarray(np.repeat(v.reshape(-1, 1), dim, axis=1), jnp.float32)


def smoke(module, name):
  c = module.get_config('smoke')
  c.tasks[name].embed_dim = 3
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


def test_jigsaw_slot_j_holds_grid_patch_perm_j(plain_head):
  del plain_head
  task = tasks.get_task('jigsaw', smoke(jigsaw_config, 'jigsaw'))
  table = task.head.perms.array
  idx = jnp.asarray([[0, 57], [99, 3]], jnp.int32)
  inputs = {'image': jnp.zeros((2, 9, 1, 1, 3)), 'perm_index': idx}
  out = task.head.apply({}, {'pre_logits': labelled_embeddings(2)}, inputs, False)
  out = np.asarray(out).reshape(2, 2, 9, 3)        # [image, copy, slot, embedding]
  for b in range(2):
    for k in range(2):
      want = 10 * b + table[idx[b, k]]              # slot j <- grid patch perm[j]
      np.testing.assert_array_equal(out[b, k, :, 0], want)
  # The table is the study's: e.g. row 0 = [7, 6, 5, 8, 4, 3, 2, 1, 0].
  np.testing.assert_array_equal(table[0], [7, 6, 5, 8, 4, 3, 2, 1, 0])


def test_rpl_pairs_and_labels(plain_head):
  del plain_head
  c = smoke(rpl_config, 'relative_patch_location')
  task = tasks.get_task('relative_patch_location', c)
  inputs = {'image': jnp.zeros((2, 9, 1, 1, 3))}
  out = task.head.apply({}, {'pre_logits': labelled_embeddings(2)}, inputs, False)
  out = np.asarray(out).reshape(2, 8, 2, 3)          # [image, pair, (neighbour, centre), E]
  for b in range(2):
    np.testing.assert_array_equal(out[b, :, 0, 0], 10 * b + np.array([0, 1, 2, 3, 5, 6, 7, 8]))
    np.testing.assert_array_equal(out[b, :, 1, 0], 10 * b + 4)
  batch = train.dummy_batch((48, 48, 3), 3)
  for is_train in (True, False):
    inputs, targets = task.pretext(jax.random.key(0), batch, train=is_train)
    assert inputs['image'].shape == (3, 9, 12, 12, 3)
    np.testing.assert_array_equal(targets, np.tile(np.arange(8), (3, 1)))


def test_classification_loss_is_image_major():
  logits = jnp.asarray(np.eye(4, dtype=np.float32)[[0, 1, 1, 3]] * 10)
  targets = jnp.asarray([[0, 1], [2, 3]], jnp.int32)
  loss, m = common.classification_loss(logits, targets, None)
  np.testing.assert_array_equal(m['accuracy'], [1, 1, 0, 1])
  want = -jax.nn.log_softmax(logits)[jnp.arange(4), targets.reshape(-1)]
  np.testing.assert_allclose(m['loss'], want, rtol=2e-3, atol=1e-6)
  np.testing.assert_allclose(loss, np.mean(want), rtol=2e-3)


def test_jigsaw_sampling_modes():
  c = smoke(jigsaw_config, 'jigsaw')
  c.tasks.jigsaw.perms_per_step = 8
  batch = train.dummy_batch((48, 48, 3), 5)
  fn = jax.jit(functools.partial(jigsaw.make_pretext(c.tasks.jigsaw), train=True))
  inputs, targets = fn(jax.random.key(0), batch)
  idx = np.asarray(targets)
  assert idx.shape == (5, 8) and jigsaw.copies(c.tasks.jigsaw, True) == 8
  assert (idx == idx[0]).all() and len(set(idx[0])) == 8          # shared, no repeats
  assert idx.min() >= 0 and idx.max() < 100
  np.testing.assert_array_equal(inputs['perm_index'], idx)
  assert not np.array_equal(idx, fn(jax.random.key(1), batch)[1])

  c.tasks.jigsaw.sampling = 'per_image'
  _, targets = jigsaw.make_pretext(c.tasks.jigsaw)(
      jax.random.key(0), train.dummy_batch((48, 48, 3), 64), train=True)
  assert targets.shape == (64, 1) and jigsaw.copies(c.tasks.jigsaw, True) == 1
  assert len(set(np.asarray(targets).ravel())) > 30                 # per image, not shared


def test_per_batch_permutations_are_shared_per_device():
  """As the train step runs it: one key per device inside shard_map."""
  c = smoke(jigsaw_config, 'jigsaw')
  fn = jigsaw.make_pretext(c.tasks.jigsaw)
  mesh = jax.make_mesh((jax.device_count(),), ('data',))

  def per_device(images):
    key = jax.random.fold_in(jax.random.key(0), jax.lax.axis_index('data'))
    return fn(key, {'image': images}, train=True)[1]

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
  s = smoke(jigsaw_config, 'jigsaw').tasks.jigsaw
  batch = train.dummy_batch((48, 48, 3), 2)
  s.eval_permutations = 0
  _, targets = jigsaw.make_pretext(s)(None, batch, train=False)
  np.testing.assert_array_equal(targets, np.tile(np.arange(100), (2, 1)))
  assert jigsaw.copies(s, False) == 100
  s.eval_permutations = 7
  sample = jigsaw.eval_indices(s)
  assert sample.shape == (7,) and len(set(sample)) == 7 and (np.diff(sample) > 0).all()
  np.testing.assert_array_equal(sample, jigsaw.eval_indices(s))    # fixed
  _, targets = jigsaw.make_pretext(s)(None, batch, train=False)
  np.testing.assert_array_equal(targets, np.tile(sample, (2, 1)))


def test_head_init_dropout_and_bn():
  c = smoke(rpl_config, 'relative_patch_location')
  c.tasks.relative_patch_location.update(embed_dim=50, head_hidden=4096)
  head = tasks.get_task('relative_patch_location', c).head
  endpoints = {'pre_logits': jnp.asarray(np.random.default_rng(0).normal(size=(36, 16)),
                                         jnp.float32)}
  inputs = {'image': jnp.zeros((4, 9, 1, 1, 3))}
  v = head.init({'params': jax.random.key(0)}, endpoints, inputs, False)
  assert set(v['params']) == {'embedding', 'fc'} and set(v['batch_stats']) == {'fc'}
  assert v['params']['embedding']['kernel'].shape == (16, 50)
  h = v['params']['fc']
  assert h['fc1']['kernel'].shape == (100, 4096) and h['fc2']['kernel'].shape == (4096, 8)
  np.testing.assert_array_equal(h['fc1']['bias'], np.float32(0.1))
  np.testing.assert_array_equal(h['fc2']['bias'], 0.0)
  for k in (h['fc1']['kernel'], h['fc2']['kernel']):
    assert np.abs(k).max() <= 0.01 + 1e-7                  # truncated at 2 std
    assert 0.0040 < np.std(k) < 0.0048                      # 0.005 * 0.88
  run = functools.partial(head.apply, v, endpoints, inputs, True, mutable=['batch_stats'])
  a, _ = run(rngs={'dropout': jax.random.key(1)})
  b, _ = run(rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(a, b)
  e1 = head.apply(v, endpoints, inputs, False)
  e2 = head.apply(v, endpoints, inputs, False)
  np.testing.assert_array_equal(e1, e2)
  # The study's 5e-4 reaches the classifier only; the embedding keeps the trunk's.
  for task in ('jigsaw', 'relative_patch_location'):
    module = jigsaw_config if task == 'jigsaw' else rpl_config
    assert tasks.get_task(task, module.get_config('smoke')).weight_decay == {'fc': 5e-4}


@pytest.mark.parametrize('name,module', [('jigsaw', jigsaw_config),
                                         ('relative_patch_location', rpl_config)])
def test_same_math_as_trunk_logits_composition(name, module):
  """The head equals the study's composition: the trunk's own logits layer (1000-d
  there) as patch embedding, then FcHead on the permuted / paired embeddings."""
  c = module.get_config('smoke')
  c.model.name = 'tiny_cnn'
  task = tasks.get_task(name, c)
  model = train.make_model(c, task)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3)), jnp.uint8)
  inputs, _ = task.pretext(jax.random.key(0), {'image': images}, train=False)
  v = model.init({'params': jax.random.key(0)}, {name: inputs}, train=False)
  out = model.apply(v, {name: inputs}, train=False)[0][name]
  # Reference: a trunk with a logits layer = the embedding, then the FcHead.
  s = c.tasks[name]
  ref_trunk = models.create_model('tiny_cnn', num_classes=s.embed_dim, width=1,
                                  small_input=True, patch_strides=True)
  p = v['params']
  trunk_params = dict(p['trunk'], logits=p['heads'][name]['embedding'])
  x = inputs['image'].reshape((-1,) + inputs['image'].shape[2:])
  emb, _ = ref_trunk.apply({'params': trunk_params, 'batch_stats': v['batch_stats']['trunk']},
                           x, train=False)
  emb = emb.reshape(2, 9, -1)
  if name == 'jigsaw':
    x = jigsaw.permute_embeddings(emb, jnp.asarray(task.head.perms.array)[inputs['perm_index']])
  else:
    x = rpl.pair_embeddings(emb)
  fc = heads.FcHead(num_classes=out.shape[-1], hidden=s.head_hidden)
  want = fc.apply({'params': p['heads'][name]['fc'],
                   'batch_stats': v['batch_stats']['heads'][name]['fc']},
                  x.reshape(-1, np.prod(x.shape[2:])), train=False)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


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
    c.tasks.jigsaw.num_permutations = 1000
  c.tasks.jigsaw[key] = value
  with pytest.raises(ValueError, match=match):
    jigsaw.validate(c)


def test_heads_are_hashable():
  c = jigsaw_config.get_config('smoke')
  assert hash(tasks.get_task('jigsaw', c).head) == hash(tasks.get_task('jigsaw', c).head)
  assert 'PermutationTable(100x9' in repr(tasks.get_task('jigsaw', c).head)
  hash(tasks.get_task('relative_patch_location', rpl_config.get_config('smoke')).head)
