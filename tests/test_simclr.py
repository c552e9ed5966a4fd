"""SimCLR: NT-Xent against numpy, global negatives across devices (8 devices == 1),
and its two views."""
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from configs import simclr as simclr_config
from ssl_jax import optim
from ssl_jax import parallel
from ssl_jax import tasks
from ssl_jax import train
from ssl_jax.data import ops
from ssl_jax.tasks import simclr


def reference_nt_xent(z, mask, tau):
  """Loops over anchors: -log(exp(s_ap / tau) / sum_{k != a, valid} exp(s_ak / tau))."""
  z = np.asarray(z, np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  valid = np.repeat(mask, 2)
  s = z @ z.T / tau
  losses, top1 = np.zeros(len(z)), np.zeros(len(z))
  for a in range(len(z)):
    if not valid[a]:
      continue
    p = a ^ 1
    cand = [k for k in range(len(z)) if k != a and valid[k]]
    m = max(s[a, k] for k in cand)
    losses[a] = -(s[a, p] - m - np.log(sum(np.exp(s[a, k] - m) for k in cand)))
    top1[a] = float(max(cand, key=lambda k: s[a, k]) == p)
  return losses[valid].mean(), losses, top1


def reference_simclr_objective(z, tau):
  """SimCLR's objective written out in numpy (float64) in its own layout: the first
  half of the rows are every image's view 1, the second half view 2; direction a
  scores view-1 anchors against [all view 2 | all view 1 but itself], direction b the
  reverse; loss = mean over images of (loss_a + loss_b)."""
  z = np.asarray(z, np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  h1, h2 = np.split(z, 2)
  b = len(h1)

  def direction(anchor, other):
    same = anchor @ anchor.T / tau - 1e9 * np.eye(b)
    cross = anchor @ other.T / tau
    logits = np.concatenate([cross, same], axis=1)
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_p[np.arange(b), np.arange(b)]     # the positive: column i of `cross`

  return np.mean(direction(h1, h2) + direction(h2, h1))


def _to_simclr_layout(z):
  """Image-major rows (2i + v) -> SimCLR's [all view 1; all view 2]."""
  return np.concatenate([z[0::2], z[1::2]])


@pytest.mark.parametrize('tau', [0.1, 0.5])
def test_loss_scales_against_simclr_objective(tau):
  """'sum_directions' is SimCLR's objective; 'mean' is exactly half of it (the
  per-anchor NT-Xent of reference_nt_xent), for the loss, its gradient and the
  per-anchor metric; contrastive_top1 is the same under both."""
  rng = np.random.RandomState(6)
  z = rng.randn(16, 7).astype(np.float32)
  targets = {'mask': jnp.ones((8,), bool)}
  loss_sum = simclr.make_loss(tau, 'sum_directions')
  loss_mean = simclr.make_loss(tau, 'mean')
  (v_sum, m_sum), (v_mean, m_mean) = loss_sum(z, targets), loss_mean(z, targets)
  want = reference_simclr_objective(_to_simclr_layout(z), tau)
  np.testing.assert_allclose(v_sum, want, rtol=1e-5)
  np.testing.assert_allclose(v_mean, reference_nt_xent(z, np.ones(8, bool), tau)[0],
                             rtol=1e-5)
  np.testing.assert_allclose(v_sum, 2 * v_mean, rtol=1e-6)
  np.testing.assert_allclose(m_sum['loss'], 2 * np.asarray(m_mean['loss']), rtol=1e-6)
  np.testing.assert_array_equal(m_sum['contrastive_top1'], m_mean['contrastive_top1'])
  g_sum = jax.grad(lambda z: loss_sum(z, targets)[0])(jnp.asarray(z))
  g_mean = jax.grad(lambda z: loss_mean(z, targets)[0])(jnp.asarray(z))
  assert np.abs(np.asarray(g_mean)).max() > 1e-3
  np.testing.assert_allclose(g_sum, 2 * np.asarray(g_mean), rtol=1e-5, atol=1e-8)
  with pytest.raises(ValueError, match=r"loss_scale='sum'.*allowed: \['mean', "
                     r"'sum_directions'\]"):
    simclr.make_loss(tau, 'sum')


@pytest.mark.parametrize('tau', [0.1, 0.5])
def test_nt_xent_matches_numpy(tau):
  rng = np.random.RandomState(0)
  z = rng.randn(12, 7).astype(np.float32)
  z[1] = z[0] + 0.1 * rng.randn(7)                   # one easy positive pair
  mask = np.array([True, True, True, False, True, True])
  loss, per_anchor, top1 = simclr.nt_xent(jnp.asarray(z), jnp.asarray(mask), tau)
  want, want_per, want_top1 = reference_nt_xent(z, mask, tau)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(per_anchor, want_per, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(top1, want_top1)
  assert top1[0] == top1[1] == 1.0


def test_global_negatives_on_8_devices_equal_one_device():
  """Loss and gradient w.r.t. the projections: pmean of per-device losses with the
  gathered negatives == the loss of one device holding the whole batch."""
  n = jax.device_count()
  assert n == 8
  rng = np.random.RandomState(1)
  z = jnp.asarray(rng.randn(2 * 2 * n, 5), jnp.float32)      # 2 images per device
  mask = jnp.ones((2 * n,), bool)
  mesh = parallel.make_mesh()

  def sharded_loss(z, mask):
    def per_device(z, mask):
      return jax.lax.pmean(simclr.nt_xent(z, mask, 0.2, 'data')[0], 'data')
    return jax.shard_map(per_device, mesh=mesh, in_specs=(P('data'), P('data')),
                         out_specs=P())(z, mask)

  single = lambda z, mask: simclr.nt_xent(z, mask, 0.2)[0]
  l8, g8 = jax.jit(jax.value_and_grad(sharded_loss))(z, mask)
  l1, g1 = jax.jit(jax.value_and_grad(single))(z, mask)
  np.testing.assert_allclose(l8, l1, rtol=1e-6)
  assert np.abs(np.asarray(g1)).max() > 1e-3
  np.testing.assert_allclose(g8, g1, rtol=1e-5, atol=1e-7)
  # Per-device batches alone (no gather) would be a different loss.
  local = jax.shard_map(lambda z, m: jax.lax.pmean(simclr.nt_xent(z, m, 0.2)[0], 'data'),
                        mesh=mesh, in_specs=(P('data'), P('data')), out_specs=P())(z, mask)
  assert abs(float(local) - float(l1)) > 1e-2


def _tiny_config():
  c = simclr_config.get_config('smoke')
  c.model.name = 'tiny_cnn'
  c.data.image_size = 8
  c.input.pp_train = 'decode|views(2)|flip_lr'
  c.input.pp_eval = 'decode|views(2)'
  c.optimizer.name = 'momentum'
  c.optimizer.warmup_epochs = 0.0
  return c


def _one_step(config, devices, images):
  task = tasks.get_task('simclr', config)
  model = train.make_model(config, task)
  mesh = parallel.make_mesh(devices)
  tx_fn = lambda p: optim.make_optimizer(config.optimizer, p, optax.constant_schedule(0.1))
  state, tx = train.init_state(config, task, model, mesh, images.shape[1:], tx_fn)
  p0 = jax.device_get(state['params'])
  step = train.make_train_step(config, task, model, tx, mesh)
  batch = {'image': images, 'label': np.zeros(len(images), np.int32),
           'mask': np.ones(len(images), bool)}
  state, metrics = step(state, parallel.global_batch(mesh, batch))
  return p0, jax.device_get(state['params']), jax.device_get(metrics)


def test_train_step_on_8_devices_equals_one_device():
  """Cross-device BN (the default for SimCLR) + gathered negatives: one step of the
  whole model on 8 devices moves the parameters as on one device."""
  c = _tiny_config()
  assert c.model.cross_device_bn
  images = np.random.RandomState(2).randint(0, 256, (16, 2, 8, 8, 3)).astype(np.uint8)
  p0, p8, m8 = _one_step(c, jax.devices(), images)
  _, p1, m1 = _one_step(c, jax.devices()[:1], images)
  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
  np.testing.assert_allclose(m8['contrastive_top1'], m1['contrastive_top1'], atol=1e-6)
  moved = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)))
  diff = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)))
  assert moved > 1e-3 and diff < 1e-3 * moved, (moved, diff)


def test_views_differ_and_are_reproducible():
  c = simclr_config.get_config('cifar10')
  assert ops.num_views(c.input.pp_train) == 2
  images = np.random.RandomState(3).randint(0, 256, (8, 32, 32, 3)).astype(np.uint8)
  fn = jax.jit(ops.make_batch_fn(c.input.pp_train, train=True))
  a = np.asarray(fn(jax.random.key(0), images))
  assert a.shape == (8, 2, 32, 32, 3)
  assert all(not np.array_equal(a[i, 0], a[i, 1]) for i in range(8))
  np.testing.assert_array_equal(a, np.asarray(fn(jax.random.key(0), images)))
  task = tasks.get_task('simclr', c)
  inputs, targets = task.pretext(None, {'image': a, 'mask': np.ones(8, bool)}, train=True)
  assert inputs['image'].shape == (8, 2, 32, 32, 3) and targets['mask'].shape == (8,)
  with pytest.raises(ValueError, match='two views'):
    task.pretext(None, {'image': a[:, 0], 'mask': np.ones(8, bool)}, train=True)


def _head_params(last_bn_scale, x, scale=None):
  head = simclr.ProjectionHead(hidden=(6,), features=4, last_bn_scale=last_bn_scale)
  variables = head.init(jax.random.key(0), {'pre_logits': x}, None, True)
  if scale is not None:
    variables = jax.tree_util.tree_map(lambda a: a, variables)  # a copy
    variables['params']['out_bn']['scale'] = scale
  out, _ = head.apply(variables, {'pre_logits': x}, None, True, mutable=['batch_stats'])
  return variables['params'], np.asarray(out)


def test_last_bn_scale_parameter():
  """proj_last_bn_scale=True: the last BN has a scale f32[projection_dim] (init 1) and
  no offset, and the output is scale x the scale-free output (per dimension);
  False: the last BN has no parameter at all. Hidden BNs keep scale and offset."""
  x = jnp.asarray(np.random.RandomState(7).randn(10, 5), jnp.float32)
  with_scale, out_one = _head_params(True, x)
  without, out_none = _head_params(False, x)
  assert set(with_scale['out_bn']) == {'scale'}
  assert with_scale['out_bn']['scale'].shape == (4,)
  np.testing.assert_array_equal(with_scale['out_bn']['scale'], 1.0)
  assert 'out_bn' not in without
  assert set(with_scale['hidden0_bn']) == set(without['hidden0_bn']) == {'scale', 'bias'}
  np.testing.assert_allclose(out_one, out_none, rtol=1e-6, atol=1e-6)   # scale 1 at init
  v = jnp.asarray([0.5, 2.0, -1.0, 3.0])
  _, out_v = _head_params(True, x, scale=v)
  np.testing.assert_allclose(out_v, out_none * np.asarray(v), rtol=1e-5, atol=1e-6)
  # A BN parameter: no weight decay, no LARS trust ratio (the reference excludes
  # 'batch_normalization' variables from both).
  assert not optim.decays(('heads', 'simclr', 'out_bn', 'scale'))


def test_last_bn_scale_is_learnt_under_lars():
  """One LARS step of the whole model (8 devices) moves the last BN's scale."""
  c = _tiny_config()
  c.optimizer.name = 'lars'
  assert c.tasks.simclr.proj_last_bn_scale and c.tasks.simclr.loss_scale == 'sum_directions'
  images = np.random.RandomState(8).randint(0, 256, (16, 2, 8, 8, 3)).astype(np.uint8)
  p0, p1, metrics = _one_step(c, jax.devices(), images)
  before = p0['heads']['simclr']['out_bn']['scale']
  after = p1['heads']['simclr']['out_bn']['scale']
  np.testing.assert_array_equal(before, 1.0)
  assert np.abs(after - before).max() > 1e-4, after
  assert np.isfinite(metrics['loss'])


def test_configs_without_the_new_keys_keep_their_behaviour():
  """A config written before proj_last_bn_scale / loss_scale existed (e.g. a workdir's
  config.json) builds the model and loss it was trained with: no scale, 'mean'."""
  old = simclr_config.get_config('smoke')
  del old.tasks.simclr['proj_last_bn_scale']
  del old.tasks.simclr['loss_scale']
  task = tasks.get_task('simclr', old)
  assert task.head.last_bn_scale is False
  new = tasks.get_task('simclr', simclr_config.get_config('smoke'))
  assert new.head.last_bn_scale is True
  z = jnp.asarray(np.random.RandomState(9).randn(8, 5), jnp.float32)
  targets = {'mask': jnp.ones((4,), bool)}
  np.testing.assert_allclose(new.loss(z, targets)[0], 2 * task.loss(z, targets)[0],
                             rtol=1e-6)


def test_one_image_has_no_negative_and_is_refused():
  """NT-Xent over one image: the positive is the only candidate (loss 0, no gradient,
  top-1 1 whatever the model), so batch_size / eval_batch_size < 2 are errors."""
  z = jnp.asarray(np.random.RandomState(10).randn(2, 5), jnp.float32)
  f = lambda z: simclr.nt_xent(z, jnp.ones((1,), bool), 0.5)
  (loss, _, top1), grad = f(z), jax.grad(lambda z: f(z)[0])(z)
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)
  np.testing.assert_array_equal(top1, 1.0)
  from ssl_jax import config_lib  # pylint: disable=g-import-not-at-top
  for key in ('batch_size', 'eval_batch_size'):
    c = simclr_config.get_config('smoke')
    c[key] = 1
    with pytest.raises(config_lib.ConfigError,
                       match=rf'config\.{key}=1 is not allowed for simclr.*allowed: >= 2'):
      config_lib.validate(c, num_devices=1)
  c = simclr_config.get_config('smoke')
  c.batch_size = c.eval_batch_size = 2
  config_lib.validate(c, num_devices=1)    # 2 images: 2 negatives per anchor


@pytest.mark.parametrize('key,value,match', [
    ('loss_scale', 'sum', r"loss_scale='sum' is not allowed"),
    ('proj_last_bn_scale', 1, r'proj_last_bn_scale=1 is not allowed')])
def test_bad_convention_settings_are_errors(key, value, match):
  from ssl_jax import config_lib  # pylint: disable=g-import-not-at-top
  c = simclr_config.get_config('smoke')
  del c.tasks.simclr[key]      # (ConfigDict's type check would refuse 1 for a bool)
  c.tasks.simclr[key] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c, num_devices=8)
