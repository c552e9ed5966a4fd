"""The `lasso` evaluator: a probe on its own learned mix of a stage's unit outputs
(Doersch and Zisserman 2017), against scikit-learn and the lasso's optimality conditions,
and through the conductor beside the random-init twin."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from configs import linear_eval as le_configs
from ssl_jax import config_lib
from ssl_jax.evaluation import evaluators
from ssl_jax.evaluation import linear_eval
from ssl_jax.evaluation.evaluators import lasso


def _clusters(rng, n, dims, classes, spread=1.2):
  """Gaussian class clusters: (f32[n, dims], i32[n])."""
  centres = rng.randn(classes, dims) * spread
  y = rng.randint(0, classes, n).astype(np.int32)
  return (centres[y] + rng.randn(n, dims)).astype(np.float32), y


def _units(seed, n, informative=1, num_units=4, dims=12, classes=3):
  """[U, n, dims]: unit `informative` carries the classes, the others are noise."""
  rng = np.random.RandomState(seed)
  x, y = _clusters(rng, n, dims, classes)
  units = rng.randn(num_units, n, dims).astype(np.float32)
  units[informative] = x
  return units, y


def test_the_l1_zeroes_the_units_without_signal_at_the_lasso_optimum():
  units, y = _units(0, 600, informative=1)
  p = lasso.fit(jnp.asarray(units), jnp.asarray(y), 3, weight_decay=1e-3, l1=0.02,
                steps=1500, lr=0.01)
  alpha = np.asarray(p['alpha'])
  assert alpha[1] != 0 and np.all(alpha[[0, 2, 3]] == 0), alpha
  # The lasso's optimality conditions in alpha (W, b fixed at the solution): the
  # smooth part's gradient is -l1 * sign(alpha) where alpha != 0 and at most l1 in
  # magnitude where alpha == 0. (Computed here with numpy, independent of the fit.)
  w, b = np.asarray(p['w']), np.asarray(p['b'])
  z = np.einsum('u,und->nd', alpha, units) @ w + b
  prob = np.exp(z - z.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  prob[np.arange(len(y)), y] -= 1.0
  grad = np.array([np.mean(np.sum((units[u] @ w) * prob, 1)) for u in range(4)])
  assert np.all(np.abs(grad[[0, 2, 3]]) <= 0.02 * 1.05), grad
  np.testing.assert_allclose(grad[1], -0.02 * np.sign(alpha[1]), atol=2e-3)


def test_without_l1_a_noise_unit_keeps_a_nonzero_coefficient():
  # The zeros above come from the L1 term, not from the data: without it they stay.
  units, y = _units(0, 600, informative=1)
  p = lasso.fit(jnp.asarray(units), jnp.asarray(y), 3, weight_decay=1e-3, l1=0.0,
                steps=300, lr=0.01)
  assert np.all(np.asarray(p['alpha']) != 0)


def test_one_unit_matches_scikit_learn_logistic_regression():
  rng = np.random.RandomState(3)
  x, y = _clusters(rng, 900, 20, 5, spread=0.45)
  tr, te = slice(0, 600), slice(600, None)
  p = lasso.fit(jnp.asarray(x[None, tr]), jnp.asarray(y[tr]), 5, weight_decay=1e-3, l1=0.0,
                steps=800, lr=0.01)
  ours = np.mean(np.argmax(np.asarray(lasso.logits(p, jnp.asarray(x[None, te]))), 1) == y[te])
  ref = LogisticRegression(C=1.0 / (1e-3 * 600), max_iter=2000).fit(x[tr], y[tr])
  theirs = ref.score(x[te], y[te])
  assert 0.4 < theirs < 0.95  # (a case that is neither trivial nor hopeless)
  assert abs(ours - theirs) <= 0.03, (ours, theirs)


def test_unit_names_are_ordered_by_unit_number_and_default_to_the_first_stage():
  available = ['block1', 'block3/unit10', 'block3/unit2', 'block3/unit1', 'block4/unit1']
  assert lasso.unit_names(available) == ('block3', ['block3/unit1', 'block3/unit2',
                                                    'block3/unit10'])
  assert lasso.unit_names(available, 'block4') == ('block4', ['block4/unit1'])
  # The default endpoint list never includes unit endpoints: they are read where named.
  assert evaluators.endpoint_list('', available + ['logits'], 'k') == ['block1']


def _config(units=('block2',)):
  c = le_configs.get_config('smoke')
  c.model.unit_endpoints = units
  c.eval.solver = 'lbfgs'
  c.eval.lbfgs_iters = 50
  c.train.update(weight_decays=(1e-3,))
  c.mlp.enabled = c.lowshot.enabled = False
  c.evals.lasso.update(enabled=True, steps=50, l1s=(1e-2,))
  c.eval.random_init_baseline = True
  return c


def _arrays(seed=0, size=16, classes=10):
  rng = np.random.RandomState(seed)
  return {s: (rng.randint(0, 256, (m, size, size, 3)).astype(np.uint8),
              rng.randint(0, classes, m).astype(np.int32))
          for s, m in (('train', 96), ('val', 40), ('test', 41))}


def _write_pretext(path, units=('block2',)):
  """A rotation pretext workdir of tiny_cnn trained with unit endpoints (initial values)."""
  from configs import rotation  # pylint: disable=g-import-not-at-top
  from ssl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from ssl_jax import models  # pylint: disable=g-import-not-at-top
  c = rotation.get_config('smoke')
  c.model.name = 'tiny_cnn'
  c.model.unit_endpoints = units
  trunk = models.create_trunk(c.model)
  v = jax.jit(lambda r, x: trunk.init(r, x, train=False))(
      jax.random.key(1, impl='unsafe_rbg'), jnp.zeros((1, 16, 16, 3)))
  state = dict(params={'trunk': v['params']}, batch_stats={'trunk': v['batch_stats']},
               opt_state={}, step=jnp.int32(3), rng=jax.random.PRNGKey(0))
  checkpoint.write_config(path, c)
  manager = checkpoint.make_manager(path)
  checkpoint.save(manager, 3, state, checkpoint.meta(c, 3))
  manager.wait_until_finished()
  manager.close()


def test_the_lasso_probe_runs_in_the_evaluation_beside_the_random_twin(tmp_path):
  pre = str(tmp_path / 'pretext')
  _write_pretext(pre)
  config = _config()
  config.pretrained = pre
  res = linear_eval.run(config, str(tmp_path / 'e'), arrays=_arrays())
  rows = linear_eval.rows(res)
  mine = [r for r in rows if r['evaluator'] == 'lasso']
  assert {(r['endpoint'], r['split'], r['metric']) for r in mine} >= {
      ('block2/lasso', 'val', 'top1'), ('block2/lasso', 'test', 'top1')}
  test = [r for r in mine if r['split'] == 'test' and r['metric'] == 'top1'][0]
  assert test['units'] == 1 and 0.0 <= test['value'] <= 1.0
  # The random-init twin has the same units and goes through the same probe.
  assert test['baseline'] is not None
  assert test['gain'] == pytest.approx(test['value'] - test['baseline'])
  assert res['baseline']['lasso']['block2/lasso']['units'] == ['block2/unit1']
  detail = res['lasso']['block2/lasso']
  assert detail['units'] == ['block2/unit1'] and len(detail['alpha']) == 1
  assert detail['top1'] == test['value']
  # The probes' default endpoints are the stages, never the unit endpoints.
  assert not any(evaluators.is_unit(r['endpoint']) for r in rows)


def test_the_lasso_probe_on_a_trunk_without_units_is_a_one_line_error(tmp_path):
  c = _config(units=())
  with pytest.raises(config_lib.ConfigError, match=r"exposes no unit outputs.*"
                     r"config.model.unit_endpoints"):
    linear_eval.run(c, str(tmp_path / 'e'), arrays=_arrays())
  c = _config()
  c.evals.lasso.l1s = (-1.0,)
  with pytest.raises(config_lib.ConfigError, match=r'evals.lasso.l1s=\(-1.0,\) must be'):
    linear_eval.run(c, str(tmp_path / 'e'), arrays=_arrays())
