"""Task sets: the engine behind `train.build`, multi-task schedules, sown losses, the lasso."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import multitask as multitask_config
from configs import relative_patch_location as rpl_config
from configs import rotation as rotation_config
from ssl_jax import config_lib
from ssl_jax import models
from ssl_jax import parallel
from ssl_jax import tasks
from ssl_jax import train
from ssl_jax.tasks import multitask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rotation_tiny():
  c = rotation_config.get_config('smoke')
  c.data.source = 'synthetic'
  c.data.synthetic_examples = 64
  c.model.name = 'tiny_cnn'
  c.total_steps, c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 4, 1, 4, 4
  return c


# ---------------------------------------------------------------- a set of one


def test_a_set_of_one_keeps_the_single_task_numbers_names_and_layout(tmp_path):
  # Golden values: the same run (configs/rotation.py:smoke, tiny_cnn, 64 synthetic
  # images, 4 steps, 8 CPU devices) on the engine before task sets existed (commit
  # f7fea89, train.train_and_evaluate), where they came out bit-identical to this
  # engine's; the tolerance only allows for another CPU's float rounding.
  out = train.train_and_evaluate(_rotation_tiny(), str(tmp_path / 'w'))
  want = [(1, 1.5847220420837402, 0.265625), (2, 1.6443012952804565, 0.265625),
          (3, 1.6320635080337524, 0.21875), (4, 1.6165579557418823, 0.1875)]
  got = [(h['step'], h['train_loss'], h['train_accuracy']) for h in out['train_history']]
  for (s, loss, acc), (s2, loss2, acc2) in zip(want, got):
    assert s == s2 and acc == acc2
    np.testing.assert_allclose(loss2, loss, rtol=2e-5)
  assert sorted(out['train_history'][-1]) == [
      'step', 'train_accuracy', 'train_images_per_sec', 'train_learning_rate', 'train_loss',
      'train_trunk_inputs_per_sec']
  assert sorted(out['val']) == ['accuracy', 'loss', 'num_examples']
  np.testing.assert_allclose(out['val']['loss'], 1.4039887189865112, rtol=2e-5)
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(
      out['state']['params']))]
  np.testing.assert_allclose(sum(x.sum() for x in leaves), 30.447904679287603, rtol=1e-5)
  np.testing.assert_allclose(sum(np.abs(x).sum() for x in leaves), 195.42134655875634,
                             rtol=1e-5)
  meta = json.load(open(tmp_path / 'w' / 'checkpoints' / '4' / 'meta' / 'metadata'))
  assert sorted(meta) == ['layout', 'model', 'step', 'task'] and meta['layout'] == 2
  assert set(out['state']['params']) == {'trunk', 'heads'}
  assert set(out['state']['params']['heads']) == {'rotation'}


def test_build_gives_a_step_loop_a_notebook_can_drive():
  c = _rotation_tiny()
  run = train.build(c)
  assert run.task_set.single and run.workdir is None and run.start_step == 0
  assert run.total_steps == 4 and run.images_per_step == c.batch_size
  state, losses = run.state, []
  for _, batches in zip(range(3), run.train_batches()):
    assert set(batches) == {'rotation'}
    state, metrics = run.train_step(state, batches)
    losses.append(float(metrics['loss']))
  assert int(state['step']) == 3 and np.isfinite(losses).all()
  val = run.evaluate(state)
  assert val['num_examples'] == 16 and 0 <= val['accuracy'] <= 1


# ---------------------------------------------------------------- two members


def _two_member_config(schedule='sum', weights=(0.5, 2.0)):
  """rotation + relative patch location on tiny_cnn with deterministic pretext stages
  (no patch jitter) and no dropout, so single-task runs can repeat them exactly."""
  c = multitask_config.get_config('smoke')
  c.model.name = 'tiny_cnn'
  c.data.source = 'synthetic'
  c.data.synthetic_examples = 64
  c.batch_size = c.eval_batch_size = 16
  c.tasks.multitask.schedule = schedule
  c.tasks.relative_patch_location.update(patch_size=16, jitter=0, dropout_rate=0.0)
  c.tasks.multitask.members.rotation.weight = weights[0]
  c.tasks.multitask.members.relative_patch_location.weight = weights[1]
  # A large rate: one step's updates stand well above float32 rounding of the weights.
  c.optimizer.update(name='momentum', schedule='constant', warmup_epochs=0.0,
                     weight_decay=0.0, base_lr=40.0)
  return c


def _single(task, c_multi):
  """The member's single-task config: the same model, data, optimizer and stream."""
  module = {'rotation': rotation_config, 'relative_patch_location': rpl_config}[task]
  c = module.get_config('smoke')
  spec = c_multi.tasks.multitask.members[task]
  c.model = c_multi.model
  c.data = c_multi.data
  c.optimizer = c_multi.optimizer
  c.batch_size = c.eval_batch_size = 16
  c.tasks[task] = c_multi.tasks[task]
  c.input.pp_train, c.input.pp_eval = spec.pp_train, spec.pp_eval
  return c


def _host_batch(rng, shape):
  return {'image': rng.randint(0, 256, (16,) + tuple(shape)).astype(np.uint8),
          'label': np.zeros(16, np.int32), 'mask': np.ones(16, bool)}


def _close(a, b, tol=2e-3):
  """|a - b| <= tol * |b| over a whole parameter tree (L2 norms of the concatenated
  leaves): float32 steps through standardised patches (near-constant cells divide by
  tiny deviations) agree to ~1e-4 in norm, not elementwise, and leaves whose gradient
  nearly cancels carry only rounding; a wrong weight or a missing term is off by O(1)."""
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  a, b = flat(a).astype(np.float64), flat(b).astype(np.float64)
  assert np.linalg.norm(a - b) <= tol * np.linalg.norm(b) + 1e-9, (
      np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _delta(after, before):
  return jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                      after, before)


def test_sum_of_two_members_is_the_weighted_sum_of_the_single_task_runs():
  c = _two_member_config(weights=(0.5, 2.0))
  run = train.build(c)
  rng = np.random.RandomState(0)
  host = {m.name: _host_batch(rng, run.sources[m.name].image_shape(train=True))
          for m in run.task_set.members}
  put = lambda b: parallel.global_batch(run.mesh, b)
  state0 = jax.device_get(run.state)
  state, metrics = run.train_step(jax.tree.map(jnp.copy, run.state),
                                  {k: put(v) for k, v in host.items()})
  multi = jax.device_get(state)
  metrics = jax.device_get(metrics)
  weights = {'rotation': 0.5, 'relative_patch_location': 2.0}
  total, trunk_delta, trunk_stats = 0.0, None, []
  for name, w in weights.items():
    single = train.build(_single(name, c))
    # The single-task run starts from the multi-task run's trunk and this member's head.
    s0 = dict(single.state)
    s0['params'] = parallel.replicate(single.mesh, {
        'trunk': state0['params']['trunk'], 'heads': {name: state0['params']['heads'][name]}})
    s0['batch_stats'] = parallel.replicate(single.mesh, {
        'trunk': state0['batch_stats']['trunk'],
        'heads': {k: v for k, v in state0['batch_stats'].get('heads', {}).items()
                  if k == name}})
    s0['opt_state'] = jax.jit(single.tx.init)(s0['params'])
    s1, m1 = single.train_step(s0, {name: put(host[name])})
    s1, m1 = jax.device_get(s1), jax.device_get(m1)
    np.testing.assert_allclose(metrics[f'{name}/loss'], m1['loss'], rtol=1e-5)
    total += w * float(m1['loss'])
    # SGD's first momentum step moves by -lr * gradient: updates compare gradients
    # (the learning rates differ: linear scaling by 32 vs 16 images per step).
    w = w * float(run.schedule(0)) / float(single.schedule(0))
    d = jax.tree.map(lambda x: w * x, _delta(s1['params']['trunk'],
                                             state0['params']['trunk']))
    trunk_delta = d if trunk_delta is None else jax.tree.map(np.add, trunk_delta, d)
    head_multi = _delta(multi['params']['heads'][name], state0['params']['heads'][name])
    head_single = _delta(s1['params']['heads'][name], state0['params']['heads'][name])
    _close(head_multi, jax.tree.map(lambda x: w * x, head_single))
    trunk_stats.append(s1['batch_stats']['trunk'])
  np.testing.assert_allclose(metrics['loss'], total, rtol=1e-5)
  _close(_delta(multi['params']['trunk'], state0['params']['trunk']), trunk_delta)
  # The trunk's moving averages: the mean of the members' updates.
  jax.tree.map(lambda a, b, cc: np.testing.assert_allclose(a, (b + cc) / 2, rtol=1e-5,
                                                           atol=1e-7),
               multi['batch_stats']['trunk'], *trunk_stats)
  assert metrics['rotation/grad_norm'] > 0 and metrics['relative_patch_location/grad_norm'] > 0


def test_draw_frequencies_match_the_rates_within_a_binomial_bound():
  rates = [1.0, 3.0, 0.5]
  steps = np.arange(2000)
  drawn = train.draw_members(7, steps, rates)
  p = np.asarray(rates) / sum(rates)
  for i in range(3):
    count = int(np.sum(drawn == i))
    sd = np.sqrt(2000 * p[i] * (1 - p[i]))
    assert abs(count - 2000 * p[i]) < 4.5 * sd, (i, count, 2000 * p[i])
  # Any range, any order: the draw is a function of (seed, step) alone.
  np.testing.assert_array_equal(train.draw_members(7, steps[::-1], rates), drawn[::-1])
  np.testing.assert_array_equal(train.draw_members(7, steps[500:900], rates), drawn[500:900])
  assert not np.array_equal(train.draw_members(8, steps, rates), drawn)
  # A zero rate is never drawn.
  assert not np.any(train.draw_members(0, steps, [1.0, 0.0, 1.0]) == 1)
  with pytest.raises(ValueError, match='not all zero'):
    train.draw_members(0, steps, [0.0, 0.0])


def test_every_process_and_device_count_draws_the_same_sequence():
  # The draw runs on each host; one computed under 1 device and one under 8 (other
  # processes) must agree, so every device runs the same member at every step.
  code = ('import numpy as np; from ssl_jax import train; '
          'print(train.draw_members(3, np.arange(300), [1.0, 2.0]).tolist())')
  outs = []
  for count in (1, 8):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={count}',
               JAX_PLATFORMS='cpu')
    outs.append(subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, check=True,
                               capture_output=True, text=True).stdout)
  assert outs[0] == outs[1]
  assert json.loads(outs[0]) == train.draw_members(3, np.arange(300), [1.0, 2.0]).tolist()


def test_sample_schedule_resumes_with_the_same_draws_and_streams(tmp_path):
  c = _two_member_config(schedule='sample')
  c.tasks.multitask.members.rotation.rate = 1.0
  c.tasks.multitask.members.relative_patch_location.rate = 1.0
  c.total_steps, c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 6, 1, 3, -1
  c.max_eval_batches = 1
  whole = train.train_and_evaluate(c.copy_and_resolve_references(), str(tmp_path / 'a'))
  first = c.copy_and_resolve_references()
  first.total_steps = 3
  train.train_and_evaluate(first, str(tmp_path / 'b'))
  resumed = train.train_and_evaluate(c.copy_and_resolve_references(), str(tmp_path / 'b'))
  drawn = train.draw_members(c.seed, np.arange(6), [1.0, 1.0])
  names = sorted(c.tasks.multitask.members)
  for h in whole['train_history']:  # each logged step reports the member drawn
    member = names[drawn[h['step'] - 1]]
    assert f'{member}/train_loss' in h
    assert not any(k.endswith('/train_loss') and not k.startswith(member) for k in h)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               jax.device_get(whole['state']['params']),
               jax.device_get(resumed['state']['params']))


# ---------------------------------------------------------------- extra losses


class _Sowing(nn.Module):
  """A head that sows `penalty * sum(w^2)` of a parameter of its own beside the inner head."""
  inner: nn.Module
  penalty: float

  @nn.compact
  def __call__(self, endpoints, inputs, train):
    w = self.param('w', nn.initializers.constant(0.5), (3,))
    self.sow('losses', 'toy_penalty', self.penalty * jnp.sum(w ** 2))
    return self.inner(endpoints, inputs, train)


def _sowing_run(penalty):
  c = _rotation_tiny()
  c.optimizer.update(name='momentum', schedule='constant', warmup_epochs=0.0,
                     weight_decay=0.0, base_lr=0.4)
  task = tasks.get_task('rotation', c)
  task = tasks.Task(**{**task.__dict__, 'head': _Sowing(task.head, penalty)})
  task_set = tasks.as_task_set(task, c)
  run = train.build(c)
  model = train.make_model(c, task_set)
  mesh = run.mesh
  state, tx = train.init_state(c, task_set, model, mesh, run.sources['rotation'].image_shape(),
                               lambda p: __import__('ssl_jax.optim', fromlist=['x'])
                               .make_optimizer(c.optimizer, p, lambda s: 0.4))
  step = train.make_train_step(c, task_set, model, tx, mesh)
  rng = np.random.RandomState(3)
  batch = parallel.global_batch(mesh, _host_batch(rng, run.sources['rotation'].image_shape()))
  before = jax.device_get(state)  # (the step donates its input state)
  new, metrics = step(state, batch)
  return before, jax.device_get(new), jax.device_get(metrics)


def test_a_sown_penalty_changes_the_loss_by_exactly_that_penalty_and_is_differentiated():
  s0, s1, m0 = _sowing_run(0.0)
  _, t1, m1 = _sowing_run(0.7)
  penalty = 0.7 * 3 * 0.5 ** 2
  np.testing.assert_allclose(m1['extra_toy_penalty'], penalty, rtol=1e-6)
  np.testing.assert_allclose(m1['loss'] - m0['loss'], penalty, rtol=1e-5)
  # d/dw of penalty * sum(w^2) = 2 * penalty * w; one SGD step at lr 0.4.
  w0 = s0['params']['heads']['rotation']['w']
  np.testing.assert_allclose(s1['params']['heads']['rotation']['w'], w0, rtol=0, atol=0)
  np.testing.assert_allclose(t1['params']['heads']['rotation']['w'],
                             w0 - 0.4 * 2 * 0.7 * w0, rtol=1e-6)
  # The task's own terms are untouched by the extra one.
  np.testing.assert_allclose(m1['accuracy'], m0['accuracy'])


def test_lasso_l1_drives_the_coefficients_of_unused_units_to_zero():
  # A constructed case: four "units" of one shape, only unit 2 carries the target;
  # the inner head is a linear read-out of pre_logits (the mix's global average).
  class Inner(nn.Module):
    @nn.compact
    def __call__(self, endpoints, inputs, train):
      return nn.Dense(1, name='out')(endpoints['pre_logits'])[:, 0]

  head = multitask.LassoHead(Inner(), 'block3', 4, l1=0.02, drop=('block4',))
  rng = np.random.RandomState(0)
  n = 256
  units = {f'block3/unit{u + 1}': jnp.asarray(rng.randn(n, 2, 2, 3), jnp.float32)
           for u in range(4)}
  target = jnp.mean(units['block3/unit2'], axis=(1, 2)) @ jnp.asarray([1.0, -2.0, 0.5])
  endpoints = dict(units, block3=units['block3/unit4'], block4=units['block3/unit4'])
  variables = head.init(jax.random.key(0), endpoints, {}, False)
  params = variables['params']
  assert np.allclose(params['lasso_alpha'], 0.25)

  def loss_fn(p):
    pred, sown = head.apply({'params': p}, endpoints, {}, False, mutable=['losses', 'metrics'])
    l1 = sum(jax.tree.leaves(sown['losses']))
    return jnp.mean((pred - target) ** 2) + l1, sown

  @jax.jit
  def step(p):
    (_, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
    return jax.tree.map(lambda x, d: x - 0.05 * d, p, g)

  for _ in range(3000):
    params = step(params)
  alpha = np.asarray(params['lasso_alpha'])
  _, sown = loss_fn(params)
  np.testing.assert_allclose(float(sum(jax.tree.leaves(sown['losses']))),
                             0.02 * np.abs(alpha).sum(), rtol=1e-5)
  assert abs(alpha[1]) > 0.3, alpha
  # Subgradient steps leave the unused coefficients oscillating within lr * l1 of 0.
  assert np.all(np.abs(alpha[[0, 2, 3]]) < 0.01), alpha
  logged = {k: float(v[0]) for k, v in sown['metrics'].items()}
  np.testing.assert_allclose([logged[f'alpha_unit{u + 1}'] for u in range(4)], alpha)


def test_lasso_trains_through_the_engine_and_logs_every_alpha(tmp_path):
  c = _two_member_config()
  c.model.unit_endpoints = ('block2',)
  c.tasks.multitask.lasso.stage = 'block2'
  c.tasks.multitask.lasso.l1 = 0.1
  c.optimizer.base_lr = 0.4
  c.total_steps, c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 2, 1, 2, 2
  c.max_eval_batches = 1
  out = train.train_and_evaluate(c, str(tmp_path / 'w'))
  first, last = out['train_history']
  units = len(models.unit_endpoint_names('tiny_cnn', 'block2'))
  for name in ('rotation', 'relative_patch_location'):
    # The penalty logged at a step is lambda * sum |alpha| of the alphas logged with it.
    for h in (first, last):
      alpha = [h[f'{name}/train_alpha_unit{u + 1}'] for u in range(units)]
      np.testing.assert_allclose(h[f'{name}/train_extra_lasso_l1'],
                                 0.1 * np.abs(alpha).sum(), rtol=1e-5)
    np.testing.assert_allclose([first[f'{name}/train_alpha_unit{u + 1}']
                                for u in range(units)], 1.0 / units, rtol=1e-6)
    # ... and alpha moves (it is trained), to the state's values after the last step.
    moved = jax.device_get(out['state']['params']['heads'][name]['lasso_alpha'])
    assert not np.allclose(moved, 1.0 / units)


# ---------------------------------------------------------------- harmonization


def test_harmonize_gives_relative_patch_location_the_L_input():
  c = multitask_config.get_config('smoke')
  c.tasks.multitask.members.colorization = multitask_config.member('colorization', 'smoke')[0]
  c.tasks.colorization = multitask_config.member('colorization', 'smoke')[1]
  c.tasks.colorization.input_channels = 3
  c.tasks.multitask.harmonize = True
  task_set = config_lib.validate(c, num_devices=8)
  modes = {m.name: m.input_mode for m in task_set.members}
  assert modes == {'colorization': 'rgb', 'relative_patch_location': 'lab_l', 'rotation': 'rgb'}


def test_input_modes_against_numpy_and_skimage():
  import skimage.color  # pylint: disable=g-import-not-at-top
  from ssl_jax.tasks import common  # pylint: disable=g-import-not-at-top
  images = np.random.RandomState(0).randint(0, 256, (2, 3, 5, 7, 3)).astype(np.uint8)
  gray = np.asarray(common.apply_input_mode(jnp.asarray(images), 'gray3'))
  want = np.round(images.astype(np.float64) @ np.asarray([0.2989, 0.5870, 0.1140]))
  assert gray.shape == images.shape and gray.dtype == np.uint8
  assert np.abs(gray[..., 0].astype(int) - want).max() <= 1
  assert (gray == gray[..., :1]).all()
  lab = np.asarray(common.apply_input_mode(jnp.asarray(images), 'lab_l'))
  want = np.round(skimage.color.rgb2lab(images.reshape(-1, 7, 3))[..., 0] * 2.55)
  assert np.abs(lab[..., 0].reshape(-1, 7).astype(int) - want).max() <= 1
  np.testing.assert_array_equal(common.apply_input_mode(jnp.asarray(images), 'rgb'), images)
  with pytest.raises(ValueError, match='allowed'):
    common.apply_input_mode(images, 'hsv')


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize('edit, message', [
    (lambda c: c.tasks.multitask.members.rotation.update(task='rotaton'),
     r"members.rotation.task='rotaton' is not a known task"),
    (lambda c: c.tasks.multitask.members.rotation.update(weight=-1.0),
     r'members.rotation.weight=-1.0 must be a number >= 0'),
    (lambda c: (c.tasks.multitask.update(schedule='sample'),
                c.tasks.multitask.members.rotation.update(rate=0.0),
                c.tasks.multitask.members.relative_patch_location.update(rate=0.0)),
     'rate are all zero'),
    (lambda c: c.tasks.multitask.update(harmonize=True), 'harmonize=True needs a member'),
    (lambda c: c.tasks.multitask.update(schedule='round_robin'), "schedule='round_robin'"),
    (lambda c: c.tasks.multitask.members.rotation.update(input_mode='hsv'),
     "input_mode='hsv' is not allowed"),
    (lambda c: c.tasks.multitask.lasso.update(stage='block3'),
     "lasso.stage='block3' needs config.model.unit_endpoints"),
    (lambda c: setattr(c.tasks.multitask, 'members', ml_collections.ConfigDict()),
     'members is empty'),
    (lambda c: c.tasks.multitask.members.rotation.update(batch_size=12),
     r"batch_size=12 \(member 'rotation'\) is not divisible by the 8 devices"),
])
def test_bad_member_settings_are_one_line_errors_before_any_compile(edit, message):
  c = multitask_config.get_config('smoke')
  with c.unlocked():
    edit(c)
  with pytest.raises(config_lib.ConfigError, match=message) as e:
    config_lib.validate(c, num_devices=8)
  assert '\n' not in str(e.value)


def test_a_member_whose_inputs_the_trunk_cannot_take_is_named():
  c = multitask_config.get_config('smoke')
  c.model.name = 'vgg19_bn'   # 16-px images and 12-px patches: VGG needs >= 32 px
  with pytest.raises(config_lib.ConfigError, match="cannot take the 16x16 trunk inputs of "
                     "task 'rotation'|cannot take the 12x12"):
    train.build(c)


def test_members_with_different_channel_counts_are_refused():
  c = multitask_config.get_config('smoke')
  c.tasks.multitask.members.colorization = multitask_config.member('colorization', 'smoke')[0]
  c.tasks.colorization = multitask_config.member('colorization', 'smoke')[1]
  c.tasks.colorization.input_channels = 1
  with pytest.raises(config_lib.ConfigError, match='different channel counts'):
    config_lib.validate(c, num_devices=8)


def test_resuming_with_another_member_set_fails_before_anything_is_written(tmp_path):
  c = _two_member_config()
  c.total_steps, c.checkpoint_every_steps, c.eval_every_steps, c.log_every_steps = 2, 2, -1, 1
  c.max_eval_batches = 1
  train.train_and_evaluate(c.copy_and_resolve_references(), str(tmp_path / 'w'))
  before = open(tmp_path / 'w' / 'config.json').read()
  other = c.copy_and_resolve_references()
  with other.unlocked():
    del other.tasks.multitask.members['relative_patch_location']
  with pytest.raises(config_lib.ConfigError, match='tasks.multitask.members.'
                     'relative_patch_location'):
    train.build(other, str(tmp_path / 'w'))
  assert open(tmp_path / 'w' / 'config.json').read() == before
