"""The training engine: data-parallel semantics, optimizer, NaN handling, resume."""
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import rotation as rotation_config
from ssl_jax import checkpoint
from ssl_jax import config_lib
from ssl_jax import optim
from ssl_jax import parallel
from ssl_jax import tasks
from ssl_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config(**model):
  c = rotation_config.get_config('smoke')
  c.model.name = 'tiny_cnn'
  c.data.source = 'synthetic'
  c.data.image_size = 8
  c.input.pp_train = 'decode|flip_lr'
  c.input.pp_eval = 'decode'
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.weight_decay = 1e-4
  for k, v in model.items():
    c.model[k] = v
  return c


class _Stepper:
  """One compiled train step on `devices`, reusable across batches of one shape."""

  def __init__(self, config, devices, image_shape, task=None, model=None):
    self.task = task or tasks.get_task(config.task, config)
    model = model or train.make_model(config, self.task)
    self.mesh = parallel.make_mesh(devices)
    tx_fn = lambda p: optim.make_optimizer(config.optimizer, p, optax.constant_schedule(0.5))
    self.state0, tx = train.init_state(config, self.task, model, self.mesh, image_shape, tx_fn)
    self.params0 = jax.device_get(self.state0['params'])
    self.step = train.make_train_step(config, self.task, model, tx, self.mesh)

  def __call__(self, images):
    """Params and metrics after one step from the initial state on `images`."""
    batch = {'image': images, 'label': np.zeros(len(images), np.int32),
             'mask': np.ones(len(images), bool)}
    state = jax.tree.map(lambda x: x.copy(), self.state0)  # the step donates its input
    state, metrics = self.step(state, parallel.global_batch(self.mesh, batch))
    return jax.device_get(state['params']), jax.device_get(metrics)


def _one_step(config, devices, images):
  s = _Stepper(config, devices, images.shape[1:])
  return (s.params0,) + s(images)


def _max_diff(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope='module')
def images():
  return np.random.RandomState(0).randint(0, 256, (16, 8, 8, 3)).astype(np.uint8)


class _SmoothTask:
  """A stand-in rotation task whose model has no ReLU kinks (tanh): the 8-device and
  1-device float32 steps then agree to rounding noise.

  With ReLU nets (the zoo's) the test was ill-conditioned, not the maths: float64
  gradients on 8 devices and on 1 agree to 1e-14, but one ReLU input of a ResNet50
  v2 in float32 lay 3.4e-6 from zero, and the reduction order (8 shards vs 1, or
  merely a shuffled batch on one device) put it on either side, moving parameters by
  2% of the step on some x86 CPUs (AMD EPYC) and not on others.
  """
  name = 'smooth'
  head = None

  @staticmethod
  def pretext(rng, batch, *, train):
    from ssl_jax.tasks import rotation  # pylint: disable=g-import-not-at-top
    return rotation.make_pretext('all')(rng, batch, train=train)

  @staticmethod
  def loss(outputs, targets, axis_name):
    from ssl_jax.tasks import common  # pylint: disable=g-import-not-at-top
    return common.classification_loss(outputs, targets, axis_name)


def _smooth_model(bn_axis_name):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Smooth(nn.Module):

    @nn.compact
    def __call__(self, inputs, train):
      x = inputs['smooth']['image']
      x = x.reshape((-1,) + x.shape[-3:])
      norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3,
                                  axis_name=bn_axis_name)
      x = jnp.tanh(norm()(nn.Conv(8, (3, 3), strides=2, use_bias=False)(x)))
      x = jnp.tanh(norm()(nn.Conv(16, (3, 3), use_bias=False)(x)))
      return {'smooth': nn.Dense(4)(jnp.mean(x, axis=(1, 2)))}, {}

  return Smooth()


def _smooth_stepper(devices, image_shape, bn_axis_name, seed=0):
  """One compiled step of the smooth model on `devices`, reusable across batches."""
  config = _tiny_config()
  config.seed = seed
  return _Stepper(config, devices, image_shape, task=_SmoothTask,
                  model=_smooth_model(bn_axis_name))


def _smooth_step(devices, images, bn_axis_name, seed=0):
  s = _smooth_stepper(devices, images.shape[1:], bn_axis_name, seed)
  return (s.params0,) + s(images)


@pytest.mark.parametrize('seed', [0, 1])
def test_cross_device_bn_on_8_devices_matches_one_device(images, seed):
  """Cross-device BN + the loss's pmean: one step on 8 devices is the 1-device step."""
  assert jax.device_count() == 8
  p0, p8, m8 = _smooth_step(jax.devices(), images, 'data', seed)
  _, p1, m1 = _smooth_step(jax.devices()[:1], images, 'data', seed)
  moved = _max_diff(p0, p1)
  assert moved > 1e-2  # the step moved the params
  assert _max_diff(p8, p1) < 1e-4 * moved  # float32 reduction-order noise only
  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
  # Negative control: per-device BN on the same model is a different step.
  _, p8_local, _ = _smooth_step(jax.devices(), images, None, seed)
  assert _max_diff(p8_local, p1) > 1e-2 * moved


def test_cross_device_bn_zoo_model_statistics_match_one_device(images):
  """On a zoo model with ReLUs (where parameter equality is ill-conditioned, see
  _SmoothTask), the continuous quantities agree: the loss and every BN layer's batch
  statistics (from the moving-average update, (new - 0.99 old) / 0.01). (Measured on
  ResNet50 v2 k=1 too: loss 1.6626604 vs 1.6626602, statistics within 2.4e-5, against
  0.61 apart with per-device BN; too slow to compile for the suite.)"""
  config = _tiny_config(cross_device_bn=True)
  out = {}
  for n in (8, 1):
    s = _Stepper(config, jax.devices()[:n], images.shape[1:])
    batch = {'image': images, 'label': np.zeros(len(images), np.int32),
             'mask': np.ones(len(images), bool)}
    old = jax.device_get(s.state0['batch_stats'])
    state = jax.tree.map(lambda x: x.copy(), s.state0)
    state, metrics = s.step(state, parallel.global_batch(s.mesh, batch))
    new = jax.device_get(state['batch_stats'])
    out[n] = (jax.tree.map(lambda a, b: (a - 0.99 * b) / 0.01, new, old), metrics['loss'])
  np.testing.assert_allclose(out[8][1], out[1][1], rtol=1e-5)
  assert _max_diff(out[8][0], out[1][0]) < 1e-3


def test_per_device_bn_is_the_mean_of_per_shard_steps(images):
  # With per-device BN each device's loss depends on its shard only, so the first
  # momentum-SGD step is the mean over shards of one-device steps on each shard
  # (and differs from the one-device step on the whole batch). The smooth model keeps
  # the comparison well-conditioned (see _SmoothTask).
  p0, p8, _ = _smooth_step(jax.devices(), images, None)
  one_device = _smooth_stepper(jax.devices()[:1], images.shape[1:], None)
  shard_steps = [one_device(images[2 * i:2 * i + 2])[0] for i in range(8)]
  expected = jax.tree.map(lambda *xs: np.mean(xs, axis=0), *shard_steps)
  moved = _max_diff(p0, p8)
  assert _max_diff(p8, expected) < 1e-4 * moved
  p1, _ = one_device(images)
  assert _max_diff(p8, p1) > 1e-2 * moved


def test_weight_decay_only_on_kernels_and_not_revnet_root():
  params = {'trunk': {'root_conv_nowd': {'kernel': np.ones(2)},
                      'conv': {'kernel': np.ones(2)},
                      'bn': {'scale': np.ones(2), 'bias': np.ones(2)}},
            'heads': {'jigsaw': {'embedding': {'kernel': np.ones(2), 'bias': np.ones(2)},
                                 'fc': {'fc1': {'kernel': np.ones(2), 'bias': np.ones(2)}}}}}
  overrides = optim.task_overrides('jigsaw', {'fc': 5e-4})
  groups = optim.weight_decay_groups(params, 1e-4, overrides)
  assert sorted(groups) == [1e-4, 5e-4]
  flat = lambda t: {k: bool(v) for k, v in
                    __import__('flax').traverse_util.flatten_dict(t, sep='/').items()}
  assert [k for k, v in flat(groups[1e-4]).items() if v] == [
      'trunk/conv/kernel', 'heads/jigsaw/embedding/kernel']
  assert [k for k, v in flat(groups[5e-4]).items() if v] == ['heads/jigsaw/fc/fc1/kernel']
  # Coupled L2: one plain-SGD step (lr 1, zero gradient) shrinks a kernel by wd * W.
  c = _tiny_config().optimizer
  c.momentum = 0.0
  tx = optim.make_optimizer(c, params, optax.constant_schedule(1.0), overrides)
  zeros = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates['trunk']['conv']['kernel'], -1e-4)
  np.testing.assert_allclose(updates['heads']['jigsaw']['fc']['fc1']['kernel'], -5e-4)
  np.testing.assert_allclose(updates['heads']['jigsaw']['embedding']['kernel'], -1e-4)
  np.testing.assert_allclose(updates['heads']['jigsaw']['fc']['fc1']['bias'], 0.0)
  np.testing.assert_allclose(updates['trunk']['root_conv_nowd']['kernel'], 0.0)
  np.testing.assert_allclose(updates['trunk']['bn']['scale'], 0.0)


def test_lars_adapts_kernels_only_and_scales_learning_rate():
  """LARS (SimCLR): a kernel's step is lr * eta * |w| / |g + wd w| times (g + wd w); BN
  and bias parameters get plain momentum SGD without decay. sqrt scaling: base * sqrt(B)."""
  c = _tiny_config().optimizer
  c.name, c.momentum, c.weight_decay, c.trust_coefficient = 'lars', 0.0, 0.1, 1e-3
  params = {'conv': {'kernel': np.full((2, 2), 3.0, np.float32)},
            'bn': {'scale': np.full((2,), 3.0, np.float32)}}
  grads = {'conv': {'kernel': np.full((2, 2), 0.5, np.float32)},
           'bn': {'scale': np.full((2,), 0.5, np.float32)}}
  tx = optim.make_optimizer(c, params, optax.constant_schedule(2.0))
  updates, _ = tx.update(grads, tx.init(params), params)
  g = 0.5 + 0.1 * 3.0
  trust = 1e-3 * np.linalg.norm(params['conv']['kernel']) / np.linalg.norm(np.full((2, 2), g))
  np.testing.assert_allclose(updates['conv']['kernel'], -2.0 * trust * g, rtol=1e-5)
  np.testing.assert_allclose(updates['bn']['scale'], -2.0 * 0.5, rtol=1e-6)
  c.lr_scaling, c.base_lr = 'sqrt', 0.075
  np.testing.assert_allclose(optim.peak_learning_rate(c, 4096), 0.075 * 64, rtol=1e-6)
  c.lr_scaling, c.base_lr = 'linear', 0.3
  np.testing.assert_allclose(optim.peak_learning_rate(c, 4096), 4.8, rtol=1e-6)


def test_step_schedule_warmup_and_decays():
  c = _tiny_config().optimizer
  c.base_lr, c.lr_scale_batch_size = 0.1, 256
  c.warmup_epochs, c.decay_epochs, c.decay_factor = 5.0, (15.0, 25.0), 0.1
  s = optim.learning_rate_schedule(c, batch_size=512, steps_per_epoch=10, total_steps=350)
  base = 0.2  # 0.1 * 512 / 256
  expected = {0: 0.0, 25: base * 25 / 50, 50: base, 149: base, 150: base * 0.1,
              249: base * 0.1, 250: base * 0.01, 349: base * 0.01}
  for step, lr in expected.items():
    np.testing.assert_allclose(float(s(step)), lr, rtol=1e-5, err_msg=f'step {step}')


def test_config_errors_name_key_value_and_choices():
  bad = {
      ('task', 'rotate'): "config.task='rotate'",
      ('model.name', 'resnet51'): "config.model.name='resnet51'",
      ('batch_size', 12): 'config.batch_size=12 is not divisible by the 8 devices',
      ('model.width', 0): 'config.model.width=0',
      ('data.source', 'hdf5'): "config.data.source='hdf5'",
      ('optimizer.schedule', 'linear'): "config.optimizer.schedule='linear'",
  }
  for (key, value), message in bad.items():
    c = _tiny_config()
    with c.ignore_type():
      c.update_from_flattened_dict({key: value})
    with pytest.raises(config_lib.ConfigError, match=message.replace('(', r'\(')):
      config_lib.validate(c)
  with pytest.raises(ValueError, match="unknown preset 'cifar100'"):
    rotation_config.get_config('cifar100')
  c = _tiny_config()
  c.model.name, c.model.last_relu = 'resnet50_v1', False
  with pytest.raises(config_lib.ConfigError, match='last_relu=False'):
    config_lib.validate(c)


def test_few_steps_lower_the_loss_and_nan_stops_with_last_checkpoint(tmp_path):
  c = _tiny_config()
  c.data.synthetic_examples = 32
  c.batch_size = 32
  c.total_steps = 30
  c.log_every_steps = 5
  c.checkpoint_every_steps = 30
  c.eval_every_steps = -1
  c.optimizer.base_lr = 0.4
  c.input.pp_train = 'decode'
  # 32 random images, all in every batch: the rotation loss on them must drop.
  out = train.train_and_evaluate(c.copy_and_resolve_references(), str(tmp_path / 'a'))
  losses = [m['train_loss'] for m in out['train_history']]
  assert out['step'] == 30 and len(losses) == 6
  assert losses[-1] < losses[0] - 0.1, losses

  # A huge learning rate makes the state non-finite: the run stops naming the step
  # and the checkpoints written before stay valid (and finite).
  # Warm-up from lr 0: step 1 changes nothing, step 2 (lr 5e29) blows the weights
  # up; the first step whose updated state holds an inf/NaN stops the run (the
  # loss, computed before the update, can still be finite then).
  c.optimizer.base_lr = 1e30
  c.optimizer.warmup_epochs, c.steps_per_epoch = 1.0, 2
  c.total_steps, c.log_every_steps, c.checkpoint_every_steps = 12, 1, 1
  with pytest.raises(train.NonFiniteLossError, match='non-finite loss or state at step') as e:
    train.train_and_evaluate(c, str(tmp_path / 'd'))
  bad = int(re.search(r'at step (\d+)', str(e.value)).group(1))
  assert bad >= 2
  with checkpoint.make_manager(str(tmp_path / 'd')) as manager:
    assert manager.latest_step() == bad - 1
  state = checkpoint.restore_numpy(str(tmp_path / 'd' / 'checkpoints' / str(bad - 1) / 'state'))
  floats = [x for x in jax.tree.leaves(state) if np.issubdtype(np.asarray(x).dtype, np.floating)]
  assert floats and all(np.isfinite(x).all() for x in floats)


def _main_cmd(workdir, steps, every=2, extra=()):
  return [sys.executable, '-m', 'ssl_jax.main', '--config', 'configs/rotation.py:smoke',
          '--workdir', workdir, '--config.data.source=synthetic', '--config.model.name=tiny_cnn',
          '--config.data.image_size=8', f'--config.total_steps={steps}',
          f'--config.checkpoint_every_steps={every}', '--config.log_every_steps=1',
          '--config.eval_every_steps=-1', *extra]


def _env():
  # tests/conftest.py's XLA_FLAGS: 8 devices, fast-compiling backend.
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')


def _run_until(cmd, pattern, deadline_s=300):
  """Starts cmd, returns (process, match) once a stderr line matches `pattern`."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + deadline_s
  tail = []
  for line in proc.stderr:
    tail = (tail + [line])[-30:]
    m = re.search(pattern, line)
    if m:
      return proc, m
    assert time.time() < deadline, ''.join(tail)
  raise AssertionError('process ended before ' + pattern + ':\n' + ''.join(tail))


def _latest_step(workdir):
  return checkpoint.make_manager(workdir).latest_step()


def test_killed_run_loses_at_most_one_interval_and_resumes(tmp_path):
  """kill -9 right after step N+1 starts, N a checkpoint step: step N is on disk (saves
  are committed before the loop goes on), and the same command resumes from it."""
  workdir = str(tmp_path / 'run')
  every, steps = 3, 40
  # The loop logs step s, saves it if s % every == 0, then trains s + 1 and logs it:
  # the log line of step 2 * every + 1 comes after the save of 2 * every.
  proc, _ = _run_until(_main_cmd(workdir, steps, every), rf'\[{2 * every + 1}\] train_')
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert _latest_step(workdir) == 2 * every
  out = subprocess.run(_main_cmd(workdir, steps, every), cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'resumed from step {2 * every}' in out.stderr
  assert _latest_step(workdir) == steps


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path):
  workdir = str(tmp_path / 'run')
  proc, m = _run_until(_main_cmd(workdir, 200, every=50), r'\[(\d+)\] train_')
  os.kill(proc.pid, signal.SIGTERM)
  err = proc.stderr.read()
  assert proc.wait(timeout=120) == 143, err[-3000:]
  stopped = _latest_step(workdir)
  assert stopped is not None and int(m.group(1)) <= stopped < 50  # not a scheduled save
  assert f'preempted (SIGTERM) at step {stopped}' in err and 'Traceback' not in err
  out = subprocess.run(_main_cmd(workdir, stopped + 2, every=50), cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0 and f'resumed from step {stopped}' in out.stderr


def test_host_and_device_pretext_placements_agree():
  # One implementation, two placements: jigsaw's random permutations (shared per
  # device) and patch jitter must come out identical on the host and in shard_map.
  from configs import jigsaw as jigsaw_config  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  c = jigsaw_config.get_config('smoke')
  task = tasks.get_task('jigsaw', c)
  images = np.random.RandomState(1).randint(0, 256, (16, 48, 48, 3)).astype(np.uint8)
  labels = np.zeros(16, np.int32)
  mesh = parallel.make_mesh()
  base = jax.random.key(c.seed)

  def per_device(x, y):
    rng, _ = train.step_rngs(base, 5, jax.lax.axis_index(parallel.AXIS))
    return task.pretext(rng, {'image': x, 'label': y}, train=True)

  on_device = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P('data'), P('data')),
                                    out_specs=P('data')))(images, labels)
  host = train.make_host_pretext(c, task, train=True)(
      {'image': images, 'label': labels, 'mask': np.ones(16, bool)}, 5)
  for a, b in zip(jax.tree.leaves(jax.device_get(on_device)),
                  jax.tree.leaves((host['inputs'], host['targets']))):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # Each device shares one set of permutations across its 2 images; devices differ.
  perms = np.asarray(host['inputs']['perm_index']).reshape(8, 2, -1)
  assert (perms[:, 0] == perms[:, 1]).all() and len({tuple(p[0]) for p in perms}) > 1


class _TwoBN:
  """A stand-in task whose BN inputs numpy can recompute exactly."""
  name = 'two_bn'

  @staticmethod
  def pretext(rng, batch, *, train):
    del rng, train
    return {'image': batch['image'].astype(np.float32) / 255.0}, batch['label']


def test_precise_bn_statistics_match_numpy_over_devices_and_batches():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Model(nn.Module):  # two BN layers with different momenta, as trunk + head

    @nn.compact
    def __call__(self, inputs, train):
      x = inputs['two_bn']['image']
      h = nn.Dense(5, name='d1')(x.reshape(x.shape[0], -1))
      h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       name='bn1')(h)
      h = nn.Dense(3, name='d2')(nn.relu(h))
      h = nn.BatchNorm(use_running_average=not train, momentum=0.997, epsilon=1e-5,
                       name='bn2')(h)
      return h, {}

  c = _tiny_config()
  model, mesh = Model(), parallel.make_mesh()
  batches = np.random.RandomState(1).randint(0, 256, (3, 32, 2, 2, 3)).astype(np.uint8)
  variables = model.init(jax.random.key(0), {'two_bn': {'image': batches[0] / 255.0}},
                         train=False)
  # Moving averages far from the truth: the result must not depend on them.
  variables['batch_stats'] = jax.tree.map(lambda x: x + 7.0, variables['batch_stats'])
  state = parallel.replicate(mesh, dict(params=variables['params'],
                                        batch_stats=variables['batch_stats'],
                                        rng=jax.random.key_data(jax.random.key(0))))
  step = train.make_bn_stats_step(c, _TwoBN, model, mesh)
  device_batches = [(i, parallel.global_batch(mesh, {'image': b,
                                                     'label': np.zeros(32, np.int32)}))
                    for i, b in enumerate(batches)]
  got = jax.device_get(train.precise_batch_stats(state, step, device_batches))

  # numpy: each device normalises its own 4 examples with their biased statistics.
  p = jax.device_get(variables['params'])
  ndev = jax.device_count()
  h1_all, h2_all = [], []
  for b in batches:
    for shard in np.split(b.reshape(32, -1) / 255.0, ndev):
      h1 = shard @ p['d1']['kernel'] + p['d1']['bias']
      n1 = (h1 - h1.mean(0)) / np.sqrt(h1.var(0) + 1e-5) * p['bn1']['scale'] + p['bn1']['bias']
      h2 = np.maximum(n1, 0) @ p['d2']['kernel'] + p['d2']['bias']
      h1_all.append(h1)
      h2_all.append(h2)
  for name, h in (('bn1', np.concatenate(h1_all)), ('bn2', np.concatenate(h2_all))):
    np.testing.assert_allclose(got[name]['mean'], h.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[name]['var'], h.var(0), rtol=1e-3, atol=1e-5)


def test_precise_bn_evaluation_reports_both_and_leaves_training_unchanged(tmp_path):
  c = _tiny_config()
  c.data.synthetic_examples = 32
  c.batch_size, c.total_steps, c.log_every_steps = 16, 4, 2
  c.checkpoint_every_steps, c.eval_every_steps = 4, 2
  plain = train.train_and_evaluate(c.copy_and_resolve_references(), str(tmp_path / 'a'))
  c.precise_bn_batches = 2
  precise = train.train_and_evaluate(c.copy_and_resolve_references(), str(tmp_path / 'b'))
  # Same training trajectory; the moving-average evaluation is the plain run's.
  learned = lambda out: [(m['step'], m['train_loss'], m['train_accuracy'])
                         for m in out['train_history']]
  assert learned(precise) == learned(plain)
  ema = dict(precise['val']['ema'])
  assert ema == plain['val']
  assert precise['val']['num_examples'] == plain['val']['num_examples']
  assert precise['val']['loss'] != plain['val']['loss']
  c.precise_bn_batches = -1
  with pytest.raises(config_lib.ConfigError, match='precise_bn_batches=-1'):
    config_lib.validate(c)


@pytest.mark.slow  # ~1.5 min: two runs
def test_the_loop_runs_without_clu_and_gives_the_same_numbers(tmp_path, monkeypatch):
  """The JAX-only GPU machine has no clu (nor TensorFlow): train_loop falls back to a
  log-only writer, and the training itself is unchanged (same final loss and state)."""
  import builtins  # pylint: disable=g-import-not-at-top
  c = _tiny_config()
  c.total_steps, c.checkpoint_every_steps, c.log_every_steps, c.eval_every_steps = 4, 4, 2, 4
  with_clu = train.train_and_evaluate(c, str(tmp_path / 'clu'))
  real_import = builtins.__import__

  def no_clu(name, *args, **kwargs):
    if name == 'clu' or name.startswith('clu.'):
      raise ImportError(f'No module named {name!r} (blocked by the test)')
    return real_import(name, *args, **kwargs)
  monkeypatch.setattr(builtins, '__import__', no_clu)
  without = train.train_and_evaluate(c, str(tmp_path / 'noclu'))
  assert without['step'] == with_clu['step'] == 4
  assert not [f for f in os.listdir(tmp_path / 'noclu') if f.startswith('events.out')]
  assert without['train_history'][-1]['train_loss'] == with_clu['train_history'][-1]['train_loss']
  np.testing.assert_array_equal(
      np.asarray(jax.device_get(without['state']['step'])),
      np.asarray(jax.device_get(with_clu['state']['step'])))
  for a, b in zip(jax.tree.leaves(jax.device_get(without['state']['params'])),
                  jax.tree.leaves(jax.device_get(with_clu['state']['params']))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # ~2.5 min: four runs
@pytest.mark.parametrize('source', ['synthetic', 'in_memory_arrays'])
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, source):
  """Stopping at a checkpoint and resuming (total_steps raised, as a rerun after a kill
  does) gives the same parameters, BN statistics and optimizer state, bit for bit, as
  one uninterrupted run: the data stream, the pretext keys and the schedule resume."""
  c = _tiny_config()
  c.total_steps, c.checkpoint_every_steps, c.log_every_steps, c.eval_every_steps = 8, 4, 4, -1
  arrays = None
  if source == 'in_memory_arrays':
    rng = np.random.RandomState(3)
    arrays = {s: (rng.randint(0, 256, (n, 8, 8, 3)).astype(np.uint8),
                  rng.randint(0, 10, n).astype(np.int32)) for s, n in (('train', 96), ('val', 16))}
  whole = train.train_and_evaluate(c, str(tmp_path / 'whole'), arrays=arrays)
  half = c.copy_and_resolve_references()
  half.total_steps = 4
  train.train_and_evaluate(half, str(tmp_path / 'split'), arrays=arrays)
  resumed = train.train_and_evaluate(c, str(tmp_path / 'split'), arrays=arrays)
  assert resumed['step'] == whole['step'] == 8
  for key in ('params', 'batch_stats', 'opt_state'):
    a = jax.tree.leaves(jax.device_get(whole['state'][key]))
    b = jax.tree.leaves(jax.device_get(resumed['state'][key]))
    assert len(a) == len(b)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=key)
