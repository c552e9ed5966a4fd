"""The `lasso` evaluator's maths: a probe on its own learned mix of a stage's unit outputs
(Doersch and Zisserman 2017), against scikit-learn and the lasso's optimality conditions.
Through the conductor beside the random-init twin: tests/test_evaluators.py."""
import jax.numpy as jnp
import numpy as np
from sklearn.linear_model import LogisticRegression

from ssl_jax.evaluation import evaluators
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
