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
