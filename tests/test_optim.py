"""optim: validate() against every value that makes training meaningless, the behaviour
that makes them so, SimCLR's step counts, and the loss-scale equivalences the SimCLR
docs state."""
import importlib
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import common
from ssl_jax import optim

CONFIGS = ('rotation', 'supervised', 'jigsaw', 'relative_patch_location', 'exemplar',
           'simclr', 'colorization')


def _opt(**overrides):
  """config.optimizer of configs/common.py with `overrides` (of any type)."""
  d = common.get_config().optimizer.to_dict()
  d.update(overrides)
  return ml_collections.ConfigDict(d)


def test_every_preset_optimizer_is_valid():
  count = 0
  for name in CONFIGS:
    module = importlib.import_module(f'configs.{name}')
    for preset in module.PRESETS:
      optim.validate(module.get_config(preset).optimizer)
      count += 1
  assert count >= 20


NAN, INF = float('nan'), float('inf')
BAD = [
    # (overrides, key, allowed)
    (dict(name='lars', trust_coefficient=0.0), 'trust_coefficient', '> 0'),
    (dict(name='lars', trust_coefficient=-1.0), 'trust_coefficient', '> 0'),
    (dict(name='lars', trust_coefficient=NAN), 'trust_coefficient', '> 0'),
    (dict(momentum=1.0), 'momentum', r'\[0, 1\)'),
    (dict(momentum=1.5), 'momentum', r'\[0, 1\)'),
    (dict(momentum=-0.1), 'momentum', r'\[0, 1\)'),
    (dict(name='lars', momentum=1.0), 'momentum', r'\[0, 1\)'),
    (dict(decay_factor=0.0), 'decay_factor', r'\(0, 1\]'),
    (dict(decay_factor=1.5), 'decay_factor', r'\(0, 1\]'),
    (dict(decay_factor=-0.1), 'decay_factor', r'\(0, 1\]'),
    (dict(lr_scale_batch_size=0), 'lr_scale_batch_size', '>= 1'),
    (dict(lr_scale_batch_size=0.5), 'lr_scale_batch_size', '>= 1'),
    (dict(base_lr=0.0), 'base_lr', '> 0'),
    (dict(base_lr=-0.1), 'base_lr', '> 0'),
    (dict(base_lr=INF), 'base_lr', '> 0'),
    (dict(base_lr=NAN), 'base_lr', '> 0'),
    (dict(weight_decay=-1e-4), 'weight_decay', '>= 0'),
    (dict(weight_decay=NAN), 'weight_decay', '>= 0'),
    (dict(warmup_epochs=-1.0), 'warmup_epochs', '>= 0'),
    (dict(decay_epochs=(-1.0, 20.0)), 'decay_epochs', '>= 0'),
    (dict(decay_epochs=(25.0, 15.0)), 'decay_epochs', 'non-decreasing'),
    (dict(name='sgd'), 'name', 'momentum'),
    (dict(schedule='linear'), 'schedule', 'cosine'),
    (dict(lr_scaling='log'), 'lr_scaling', 'sqrt'),
]


@pytest.mark.parametrize('overrides,key,allowed', BAD, ids=[
    f'{k}={list(o.values())[-1]}' for o, k, _ in BAD])
def test_meaningless_values_are_errors(overrides, key, allowed):
  o = _opt(**overrides)
  value = o[key]
  with pytest.raises(ValueError, match=rf'^config\.optimizer\.{key}=.*allowed: .*{allowed}'):
    optim.validate(o)
  try:
    optim.validate(o)
  except ValueError as e:  # the message shows the value itself
    assert repr(value) in str(e) or repr(tuple(value)) in str(e), str(e)


def test_non_numbers_and_bools_are_errors():
  for key, value in (('nesterov', 'yes'), ('base_lr', True)):
    o = _opt(**{key: value})
    with pytest.raises(ValueError, match=rf'config\.optimizer\.{key}='):
      optim.validate(o)


def test_keys_the_optimizer_does_not_read_are_not_checked():
  optim.validate(_opt(name='adam', momentum=1.5))                      # adam: no momentum
  optim.validate(_opt(schedule='cosine', decay_factor=0.0, decay_epochs=()))
  optim.validate(_opt(lr_scaling='sqrt', lr_scale_batch_size=0))     # sqrt: unused
  optim.validate(_opt(name='momentum', trust_coefficient=-1.0))      # lars only
  optim.validate(_opt(momentum=0.0, decay_factor=1.0, weight_decay=0.0, warmup_epochs=0.0))


def _one_lars_update(trust_coefficient, grad, params):
  tx = optim.make_optimizer(_opt(name='lars', trust_coefficient=trust_coefficient,
                                 weight_decay=0.0), params, optax.constant_schedule(0.1))
  updates, _ = tx.update(grad, tx.init(params), params)
  return updates


def test_why_trust_coefficient_must_be_positive():
  """lars with trust_coefficient 0: kernels never move; -1: they move up the gradient."""
  params = {'dense': {'kernel': jnp.full((3, 2), 0.5), 'bias': jnp.zeros(2)}}
  grad = {'dense': {'kernel': jnp.asarray([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]]),
                    'bias': jnp.ones(2)}}
  zero = _one_lars_update(0.0, grad, params)
  np.testing.assert_array_equal(zero['dense']['kernel'], 0.0)
  neg = _one_lars_update(-1.0, grad, params)
  # An update along +gradient increases a linear loss <g, w>.
  assert float(jnp.sum(neg['dense']['kernel'] * grad['dense']['kernel'])) > 0
  pos = _one_lars_update(1e-3, grad, params)
  assert float(jnp.sum(pos['dense']['kernel'] * grad['dense']['kernel'])) < 0
  with pytest.raises(ValueError, match=r'trust_coefficient=0\.0 is not allowed'):
    optim.validate(_opt(name='lars', trust_coefficient=0.0))


def test_simclr_step_counts_hand_worked():
  # 10 * 45000 = 450000 = 878 * 512 + 304: floored 878 (rounding would give 879);
  # 45000 * 1000 = 45,000,000 = 87890 * 512 + 320: 87890 + 1.
  assert optim.simclr_step_counts(45000, 512, 1000.0, 10.0) == (878, 87891)
  # The reference's CIFAR-10 (50,000 train images): 500000 = 976 * 512 + 288.
  assert optim.simclr_step_counts(50000, 512, 1000, 10) == (976, 97657)
  # Half an epoch of warm-up: 22500 = 43 * 512 + 484 (43.95, still floored).
  assert optim.simclr_step_counts(45000, 512, 100, 0.5)[0] == 43
  # Exact multiples: 51200 images at batch 512 = 100 steps an epoch, + 1.
  assert optim.simclr_step_counts(51200, 512, 10, 1) == (100, 1001)


def test_schedule_with_reference_warmup_matches_simclr():
  """learning_rate_schedule(warmup_steps=...) == SimCLR's WarmUpAndCosineDecay:
  lr = step / warmup * peak during the warm-up, then peak * (1 + cos(pi * t / T)) / 2
  with t = step - warmup, T = total - warmup (written out here in numpy)."""
  o = _opt(name='lars', schedule='cosine', base_lr=1.0, warmup_epochs=10.0,
           decay_epochs=())
  warmup, total = optim.simclr_step_counts(45000, 512, 1000.0, 10.0)
  sched = optim.learning_rate_schedule(o, 512, 45000 / 512, total, warmup_steps=warmup)
  peak = 1.0 * 512 / 256

  def reference(step):
    if step < warmup:
      return step / warmup * peak
    t = min(step - warmup, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * t / (total - warmup)))

  for step in (0, 1, 437, 877, 878, 879, 5000, 44000, 87890, 87891):
    np.testing.assert_allclose(float(sched(step)), reference(step), rtol=1e-5, atol=1e-6)
  # Without the override the float steps-per-epoch rounds: 879 (not the reference).
  default = optim.learning_rate_schedule(o, 512, 45000 / 512, total)
  assert float(default(878)) < peak * (1 - 1e-4)


def _lars(wd, params, momentum=0.9):
  o = _opt(name='lars', weight_decay=wd, momentum=momentum)
  return optim.make_optimizer(o, params, optax.constant_schedule(0.5))


def _run(tx, params, grads):
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out


def test_doubling_the_loss_under_lars_halves_kernel_decay_and_doubles_bn_steps():
  """The equivalence configs/simclr.py states for loss_scale='sum_directions': LARS on
  2 x the gradient with weight decay wd moves kernels exactly as LARS on the gradient
  with wd / 2, and every non-kernel parameter (BN, bias) twice as far."""
  rng = np.random.RandomState(0)
  params = {'dense': {'kernel': jnp.asarray(rng.randn(4, 3), jnp.float32),
                      'bias': jnp.asarray(rng.randn(3), jnp.float32)},
            'bn': {'scale': jnp.ones(3), 'bias': jnp.zeros(3)}}
  grads = [jax.tree_util.tree_map(lambda p: jnp.asarray(rng.randn(*p.shape), jnp.float32),
                                  params) for _ in range(3)]
  doubled = [jax.tree_util.tree_map(lambda g: 2 * g, g) for g in grads]
  wd = 0.3  # large, so that a mismatch would show
  sum_ = _run(_lars(wd, params), params, doubled)
  mean_half_wd = _run(_lars(wd / 2, params), params, grads)
  mean_same_wd = _run(_lars(wd, params), params, grads)
  for s, m, m_wd in zip(sum_, mean_half_wd, mean_same_wd):
    np.testing.assert_allclose(s['dense']['kernel'], m['dense']['kernel'], rtol=1e-5)
    assert np.abs(np.asarray(s['dense']['kernel'] - m_wd['dense']['kernel'])).max() > 1e-4
    for path in (('dense', 'bias'), ('bn', 'scale'), ('bn', 'bias')):
      np.testing.assert_allclose(s[path[0]][path[1]], 2 * np.asarray(m[path[0]][path[1]]),
                                 rtol=1e-5)


def test_doubling_the_loss_under_momentum_is_twice_the_rate_half_the_decay():
  rng = np.random.RandomState(1)
  params = {'dense': {'kernel': jnp.asarray(rng.randn(4, 3), jnp.float32),
                      'bias': jnp.asarray(rng.randn(3), jnp.float32)}}
  grads = [jax.tree_util.tree_map(lambda p: jnp.asarray(rng.randn(*p.shape), jnp.float32),
                                  params) for _ in range(3)]
  doubled = [jax.tree_util.tree_map(lambda g: 2 * g, g) for g in grads]
  make = lambda wd, lr: optim.make_optimizer(_opt(weight_decay=wd), params,
                                             optax.constant_schedule(lr))
  for s, m in zip(_run(make(0.3, 0.1), params, doubled), _run(make(0.15, 0.2), params, grads)):
    for k in ('kernel', 'bias'):
      np.testing.assert_allclose(s['dense'][k], m['dense'][k], rtol=1e-5, atol=1e-7)
