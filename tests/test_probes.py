"""Linear probes on cached features: the L-BFGS solver against scikit-learn and numpy,
its L2 path, and the SGD probe's lr set from the features' scale."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ssl_jax.evaluation import linear
from ssl_jax.evaluation import solvers


def _problem(seed, n, dim=30, num_classes=4):
  """Features with unequal scales and offsets; labels from a noisy linear model."""
  rng = np.random.RandomState(seed)
  scale = np.random.RandomState(99).uniform(0.1, 10.0, dim)
  offset = np.random.RandomState(98).randn(dim) * 5.0
  w = np.random.RandomState(97).randn(dim, num_classes)
  z = rng.randn(n, dim)
  y = np.argmax(z @ w / 2.0 + rng.gumbel(size=(n, num_classes)), 1).astype(np.int32)
  return (z * scale + offset).astype(np.float32), y


def _softmax(z):
  z = z - z.max(1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(1, keepdims=True)


def test_lbfgs_probe_matches_scikit_learn():
  """Same standardised features, L2 = 1 / (C N): same probabilities, same choice of L2
  on the validation split, test accuracy within 1 point (here: equal)."""
  x, y = _problem(0, 500)
  xv, yv = _problem(1, 300)
  xt, yt = _problem(2, 300)
  n = len(y)
  wds = (1e-1, 1e-2, 1e-3, 1e-4)
  res = solvers.train_lbfgs({'a': jnp.asarray(x)}, y, {'a': jnp.asarray(xv)}, yv,
                            num_classes=4, iters=500,
                            cfg=dict(weight_decays=wds, standardize=True, tol=1e-5))
  info = res['solver_info']['a']
  assert all(i['converged'] for i in info) and res['stopped_early']
  # The structure of linear.train_cached's result: the driver treats solvers alike.
  assert {'selected', 'epochs_trained', 'stopped_early', 'seconds', 'stats', 'history',
          'config'} <= set(res)
  assert res['epochs_trained'] == max(i['iters'] for i in info)
  scaler = StandardScaler().fit(x)
  ref_val = {}
  for wd, i in zip(wds, info):
    clf = LogisticRegression(C=1.0 / (n * wd), tol=1e-10, max_iter=10_000)
    clf.fit(scaler.transform(x), y)
    ref = clf.predict_proba(scaler.transform(xv))
    ref_val[wd] = np.mean(clf.predict(scaler.transform(xv)) == yv)
    theta = np.asarray(solvers.fit_path(jnp.asarray(x), y, [wd], num_classes=4,
                                        stats=res['stats']['a'], tol=1e-5)[0][0])
    ours = _softmax(scaler.transform(xv) @ theta[:-1] + theta[-1])
    np.testing.assert_allclose(ours, ref, atol=2e-3)
    assert i['iters'] == res['selected']['a']['grid'][wds.index(wd)]['epoch']
  sel = res['selected']['a']
  best = max(ref_val.values())
  assert ref_val[sel['weight_decay']] == best
  assert abs(sel['val_top1'] - best) < 1e-6
  clf = LogisticRegression(C=1.0 / (n * sel['weight_decay']), tol=1e-10, max_iter=10_000)
  clf.fit(scaler.transform(x), y)
  ref_test = np.mean(clf.predict(scaler.transform(xt)) == yt)
  kept = sel['params']  # the warm-started path's head, as the driver scores it
  ours = _softmax(scaler.transform(xt) @ kept['kernel'] + kept['bias'])
  np.testing.assert_allclose(ours, clf.predict_proba(scaler.transform(xt)), atol=2e-3)
  scores, count = linear.score_cached(res['selected'], {'a': jnp.asarray(xt)}, yt,
                                      kind='linear', stats=res['stats'])
  assert count == 300 and abs(scores['a']['top1'] - ref_test) <= 0.01


def test_objective_is_the_regularised_mean_cross_entropy():
  """One blocked read (the last block shifted and masked) against numpy, raw features
  with the standardisation folded into the weights."""
  x, y = _problem(3, 203, dim=17, num_classes=5)
  rng = np.random.RandomState(4)
  theta = rng.randn(18, 5).astype(np.float32) * 0.3
  mean, inv_std = x.mean(0), 1.0 / x.std(0)
  xs = (x - mean) * inv_std
  p = _softmax(xs.astype(np.float64) @ theta[:-1] + theta[-1])
  wd = 0.03
  ref_f = -np.mean(np.log(p[np.arange(203), y])) + 0.5 * wd * np.sum(theta[:-1] ** 2)
  dlogits = (p - np.eye(5)[y]) / 203
  ref_g = np.concatenate([xs.T @ dlogits + wd * theta[:-1], dlogits.sum(0)[None]])
  for block in (16, 50, 203, 1000):
    f, g = solvers.objective(jnp.asarray(x), jnp.asarray(y), jnp.asarray(theta),
                             jnp.asarray(mean), jnp.asarray(inv_std), wd, block=block)
    np.testing.assert_allclose(float(f), ref_f, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g), ref_g, atol=2e-6)
  # Preconditioned: theta' = (V', c) stands for V = P V'; the gradient is P grad_V.
  u, _ = np.linalg.qr(rng.randn(17, 3))
  c = np.array([-0.9, -0.5, 0.4])
  p = np.eye(17) + u @ np.diag(c) @ u.T
  v_prime = np.linalg.solve(p, theta[:-1])
  f, g = solvers.objective(
      jnp.asarray(x), jnp.asarray(y),
      jnp.asarray(np.concatenate([v_prime, theta[-1:]]), jnp.float32), jnp.asarray(mean),
      jnp.asarray(inv_std), wd, block=64,
      precond=(jnp.asarray(u, jnp.float32), jnp.asarray(c, jnp.float32)))
  np.testing.assert_allclose(float(f), ref_f, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g)[:-1], p @ ref_g[:-1], atol=5e-6)
  np.testing.assert_allclose(np.asarray(g)[-1], ref_g[-1], atol=2e-6)


def test_direction_is_the_bfgs_inverse_hessian_and_shifts_along_the_l2_path():
  """The compact L-BFGS product equals the explicit BFGS recursion from gamma * I;
  `shift_memory` equals the memory of the pairs (s, y + dwd * s on kernel rows)."""
  rng = np.random.RandomState(5)
  shape = (6, 3)  # 5 kernel rows + the bias row
  a = rng.randn(18, 18)
  hess = a @ a.T + np.eye(18)
  pairs = [(s, (hess @ s.reshape(-1)).reshape(shape)) for s in rng.randn(3, *shape)]

  def memory(pairs):
    mem = solvers.empty_memory(jnp.zeros(shape), history=5)  # partly filled
    for s, y in pairs:
      mem = solvers._push(mem, jnp.asarray(s, jnp.float32), jnp.asarray(y, jnp.float32))
    return mem

  def bfgs_direction(pairs, g):
    s, y = (v.reshape(-1) for v in pairs[-1])
    h = np.eye(18) * (s @ y) / (y @ y)
    for s, y in pairs:
      s, y = s.reshape(-1), y.reshape(-1)
      rho = 1.0 / (s @ y)
      v = np.eye(18) - rho * np.outer(y, s)
      h = v.T @ h @ v + rho * np.outer(s, s)
    return -(h @ g.reshape(-1)).reshape(shape)

  g = rng.randn(*shape)
  d = solvers._direction(jnp.asarray(g, jnp.float32), memory(pairs))
  np.testing.assert_allclose(np.asarray(d), bfgs_direction(pairs, g), rtol=1e-4,
                             atol=1e-6)
  dwd = 0.7
  mask = (np.arange(6) < 5)[:, None]
  shifted = [(s, y + dwd * s * mask) for s, y in pairs]
  d = solvers._direction(jnp.asarray(g, jnp.float32),
                         solvers.shift_memory(memory(pairs), jnp.float32(dwd)))
  np.testing.assert_allclose(np.asarray(d), bfgs_direction(shifted, g), rtol=1e-4,
                             atol=1e-6)
  # An empty memory is steepest descent.
  d = solvers._direction(jnp.asarray(g, jnp.float32),
                         solvers.empty_memory(jnp.zeros(shape)))
  np.testing.assert_allclose(np.asarray(d), -g, rtol=1e-6)


def test_gap_estimate_is_the_bfgs_quadratic_form_from_one_over_wd():
  """`gap_estimate` equals 1/2 g' H g, H the explicit BFGS recursion from H0 = (P^-2 on
  kernel rows, I on the bias row) / wd; on a quadratic with Hessian A >= wd (kernel
  rows) its value bounds the quadratic's gap 1/2 g' A^-1 g from above; with no pairs
  it is |g|^2 / (2 wd)."""
  rng = np.random.RandomState(11)
  shape, wd = (6, 3), 0.05  # 5 kernel rows + the bias row
  u, _ = np.linalg.qr(rng.randn(5, 2))
  c = np.array([-0.7, -0.3])
  p = np.eye(5) + u @ np.diag(c) @ u.T
  kron = lambda m: np.kron(m, np.eye(3))  # row-major (6, 3) flattening
  p_full = np.eye(18)
  p_full[:15, :15] = kron(p)
  b = rng.randn(18, 4)
  # The Hessian in theta's coordinates: P (wd I + B B') P on the kernel, >= wd P^2.
  a = p_full @ (np.diag([wd] * 15 + [wd] * 3) + b @ b.T) @ p_full
  h0 = np.eye(18) / wd
  h0[:15, :15] = kron(np.linalg.inv(p @ p)) / wd
  precond = (jnp.asarray(u, jnp.float32), jnp.asarray(c, jnp.float32))
  mem = solvers.empty_memory(jnp.zeros(shape), history=5)
  g = rng.randn(*shape)
  est = float(solvers.gap_estimate(jnp.asarray(g, jnp.float32), mem, wd, precond))
  assert est == pytest.approx(0.5 * g.reshape(-1) @ h0 @ g.reshape(-1), rel=1e-5)
  h = h0
  for s in rng.randn(3, 18):
    y = a @ s
    mem = solvers._push(mem, jnp.asarray(s.reshape(shape), jnp.float32),
                        jnp.asarray(y.reshape(shape), jnp.float32))
    rho = 1.0 / (s @ y)
    v = np.eye(18) - rho * np.outer(y, s)
    h = v.T @ h @ v + rho * np.outer(s, s)
  gf = g.reshape(-1)
  est = float(solvers.gap_estimate(jnp.asarray(g, jnp.float32), mem, wd, precond))
  assert est == pytest.approx(0.5 * gf @ h @ gf, rel=1e-4)
  assert est >= 0.5 * gf @ np.linalg.solve(a, gf) * (1 - 1e-5)


def test_each_l2_point_stops_on_its_own_criterion():
  """Along the path (largest wd first) each point runs until its own gradient tolerance
  or its own cap: a capped point neither paces nor blocks the others. wd = 0 on
  separable features stops once the loss and its gradient vanish below tol."""
  rng = np.random.RandomState(6)
  x = rng.randn(200, 100).astype(np.float32)
  y = rng.randint(0, 3, 200).astype(np.int32)  # 100 dims, 200 points: separable
  stats = linear.feature_stats({'a': jnp.asarray(x)})['a']
  kw = dict(num_classes=3, stats=stats, tol=1e-5, max_iters=40, precond_rank=0)
  thetas, infos = solvers.fit_path(jnp.asarray(x), y, [0.0, 1e-1, 3e-4], **kw)
  assert [i['weight_decay'] for i in infos] == [0.0, 1e-1, 3e-4]
  by_wd = {i['weight_decay']: i for i in infos}
  assert by_wd[1e-1]['converged'] and by_wd[1e-1]['iters'] < 40
  assert by_wd[3e-4]['iters'] == 40 and not by_wd[3e-4]['converged']  # the hard one
  assert by_wd[0.0]['converged'] and by_wd[0.0]['value'] < 1e-3       # after it
  for i in infos:
    gap_ok = i['weight_decay'] == 0 or (
        i['gap_estimate'] is not None and i['gap_estimate'] <= solvers.GAP_RTOL * i['value'])
    assert i['converged'] == (i['grad_max'] <= 1e-5 and gap_ok)
    assert i['status'] == ('converged' if i['converged'] else 'iteration cap')
    assert i['evals'] >= i['iters'] + 1
  alone, info = solvers.fit_path(jnp.asarray(x), y, [1e-1], **kw)
  assert info[0]['iters'] == by_wd[1e-1]['iters']
  np.testing.assert_allclose(np.asarray(thetas[1]), np.asarray(alone[0]), atol=1e-6)


def _factor_features(seed, n, dim=1000, num_classes=4):
  """Dims driven by 8 shared factors (as CNN features: a large top eigenvalue)."""
  rng = np.random.RandomState(seed)
  f = rng.randn(n, 8)
  load = np.random.RandomState(1).randn(8, dim)
  w = np.random.RandomState(2).randn(8, num_classes)
  y = np.argmax(f @ w + rng.gumbel(size=(n, num_classes)), 1).astype(np.int32)
  return (f @ load + rng.randn(n, dim)).astype(np.float32), y


def test_lr_from_the_features_scale():
  """lr_factors' lambda_max and trace against numpy's eigvalsh of E[z z']."""
  x, _ = _factor_features(3, 256, dim=300)
  stats = linear.feature_stats({'a': jnp.asarray(x)})
  factors, spectra = linear.lr_factors({'a': jnp.asarray(x)}, stats, batch_size=32)
  mean, inv_std = (np.asarray(v) for v in stats['a'])
  z = np.concatenate([(x - mean) * inv_std, np.ones((256, 1))], 1).astype(np.float64)
  eig = np.linalg.eigvalsh(z.T @ z / 256)
  lam, tr = spectra['a']
  np.testing.assert_allclose(lam, eig[-1], rtol=1e-3)
  np.testing.assert_allclose(tr, np.sum(eig), rtol=1e-4)
  assert factors['a'] == pytest.approx(2.0 / (eig[-1] + np.sum(eig) / 32), rel=1e-3)


def test_spectral_preconditioner_flattens_the_top_of_the_spectrum():
  """Top eigenpairs against numpy's eigh of the standardised covariance; P S P has the
  r-th eigenvalue on top; the L-BFGS optimum is the same with and without P."""
  x, y = _factor_features(4, 300, dim=120)
  stats = linear.feature_stats({'a': jnp.asarray(x)})['a']
  (u, c), lam = solvers.spectral_preconditioner(jnp.asarray(x), stats, rank=8, rows=300,
                                                iters=4)
  mean, inv_std = (np.asarray(v, np.float64) for v in stats)
  z = (x - mean) * inv_std
  cov = z.T @ z / 300
  eig = np.linalg.eigvalsh(cov)[::-1]
  np.testing.assert_allclose(np.asarray(lam), eig[:8], rtol=1e-3)
  u = np.asarray(u, np.float64)
  np.testing.assert_allclose(u.T @ u, np.eye(8), atol=1e-5)
  p = np.eye(120) + u @ np.diag(np.asarray(c, np.float64)) @ u.T
  flat = np.linalg.eigvalsh(p @ cov @ p)[::-1]
  assert flat[0] == pytest.approx(max(eig[7], eig[8]), rel=1e-2)
  kw = dict(num_classes=4, stats=stats, tol=1e-5)
  with_p, info_p = solvers.fit_path(jnp.asarray(x), y, [1e-3], precond_rank=16, **kw)
  without, info = solvers.fit_path(jnp.asarray(x), y, [1e-3], precond_rank=0, **kw)
  assert info_p[0]['converged'] and info[0]['converged']
  assert info_p[0]['iters'] < info[0]['iters']
  assert info_p[0]['value'] == pytest.approx(info[0]['value'], rel=1e-5)
  probs = [_softmax(z @ np.asarray(t[0, :-1], np.float64) + np.asarray(t[0, -1]))
           for t in (with_p, without)]
  np.testing.assert_allclose(probs[0], probs[1], atol=2e-3)


def _low_rank_relu_features(seed, n=3000, d=256, k=10, rank=96):
  """Pooled features of a narrow trained trunk, as VGG19-BN k=1's block5 after a
  rotation run: a quarter of the ReLUs dead (constant 0), the others always active,
  so the standardised features have rank 96 < the preconditioner's rank 128."""
  rng = np.random.RandomState(seed)
  y = rng.randint(0, k, n)
  proto = np.random.RandomState(7).randn(k, rank) * 0.3
  mix = np.random.RandomState(8).randn(rank, d) * np.random.RandomState(9).uniform(0.1, 3, d)
  x = (proto[y] + rng.randn(n, rank)) @ mix + 30.0
  x[:, :64] = 0.0
  return x.astype(np.float32), y.astype(np.int32)


def test_preconditioner_on_rank_deficient_features_still_converges():
  """The failing input of a real run (VGG19-BN block5: every L2 point stuck at the
  iteration cap, 5 points below scikit-learn): standardised rank < preconditioner rank.
  Every point converges, to the optimum found without the preconditioner."""
  x, y = _low_rank_relu_features(0)
  xv, yv = _low_rank_relu_features(1, n=1000)
  cfg = dict(weight_decays=(1.0, 1e-1, 1e-2, 1e-3), standardize=True, tol=1e-4)
  runs = [solvers.train_lbfgs({'a': jnp.asarray(x)}, y, {'a': jnp.asarray(xv)}, yv,
                              num_classes=10, iters=300, cfg=dict(cfg, precond_rank=r))
          for r in (128, 0)]
  with_p, without = (r['solver_info']['a'] for r in runs)
  for a, b in zip(with_p, without):
    assert a['converged'] and b['converged'], (a['iters'], b['iters'])
    assert a['value'] == pytest.approx(b['value'], rel=1e-3, abs=1e-4)
  # The subspace: orthonormal columns where the features have variance, zero elsewhere.
  stats = linear.feature_stats({'a': jnp.asarray(x)})['a']
  (u, c), lam = solvers.spectral_preconditioner(jnp.asarray(x), stats, rank=128)
  u, c, lam = (np.asarray(v, np.float64) for v in (u, c, lam))
  live = lam > 1e-4 * lam[0]
  assert live.sum() == 96
  np.testing.assert_allclose(u[:, live].T @ u[:, live], np.eye(96), atol=1e-4)
  assert np.all(c[~live] == 0.0) and np.all(np.abs(u[:64]) < 1e-6)


def test_sgd_with_the_features_lr_decreases_where_the_study_lr_oscillates():
  """1,000 standardised correlated dims, batch 128: the study's lr (base 1.0 x 128/256
  here; 0.1 on 6,400 dims in the issue) jumps above the zero head's loss ln(4); the lr
  from the features' scale decreases the loss at every epoch."""
  x, y = _factor_features(0, 512)
  xv, yv = _factor_features(1, 128)
  feats, val = {'a': jnp.asarray(x)}, {'a': jnp.asarray(xv)}
  cfg = dict(epochs=6, batch_size=128, base_lrs=(1.0,), weight_decays=(1e-3,),
             eval_every=1, standardize=True, schedule='constant')
  ours = linear.train_cached(feats, y, val, yv, num_classes=4,
                             cfg=dict(cfg, lr_scaling='features'))
  losses = [h['train_loss/a'] for h in ours['history']]
  assert all(b < a for a, b in zip(losses, losses[1:])), losses
  assert losses[0] < np.log(4)
  lam, tr = ours['spectra']['a']
  assert float(ours['lr']['a'][0]) == pytest.approx(2.0 / (lam + tr / 128), rel=1e-5)
  study = linear.train_cached(feats, y, val, yv, num_classes=4, cfg=cfg)
  assert max(h['train_loss/a'] for h in study['history'][1:]) > np.log(4)


def test_lbfgs_objective_decreases_at_every_iteration():
  x, y = _factor_features(2, 400, dim=300)
  stats = linear.feature_stats({'a': jnp.asarray(x)})['a']
  _, infos = solvers.fit_path(jnp.asarray(x), y, [1e-2, 1e-4], num_classes=4,
                              stats=stats, tol=1e-5)
  for i in infos:
    v = np.asarray(i['values'])
    assert i['converged'] and len(v) == i['iters'] + 1
    assert np.all(np.diff(v) <= 1e-6 * v[:-1]), v  # float32 ties at the optimum


def test_probe_config_errors_name_the_key():
  with pytest.raises(ValueError, match='lr_scaling'):
    linear.make_config(dict(lr_scaling='auto'))
  with pytest.raises(ValueError, match='lr_scaling'):
    linear.make_config(dict(lr_scaling='features', head='mlp'))
  with pytest.raises(ValueError, match='tol'):
    linear.make_config(dict(tol=0.0))
  with pytest.raises(ValueError, match='weight_decays'):
    solvers.fit_path(jnp.zeros((4, 2)), np.zeros(4, np.int32), [-1.0], num_classes=2)


# ----------------------------------------------------------------------------- issue 17, 5


def _objective64(theta, xs, y, wd, k):
  """f(V, c) of the module docstring and its gradient, float64, on standardised xs."""
  t = theta.reshape(-1, k)
  z = xs @ t[:-1] + t[-1]
  m = z.max(1, keepdims=True)
  lse = m[:, 0] + np.log(np.exp(z - m).sum(1))
  n = len(y)
  f = np.mean(lse - z[np.arange(n), y]) + 0.5 * wd * np.sum(t[:-1] ** 2)
  p = np.exp(z - lse[:, None])
  p[np.arange(n), y] -= 1.0
  return f, np.concatenate([xs.T @ p / n + wd * t[:-1], p.sum(0)[None] / n])


def _redundant_features(seed, n=300, d=64, k=10, copies=2, const=8):
  """Rank-deficient features: 8 shared factors + noise, the first half of the columns
  copied `copies` times (as 3 x + 1), and `const` constant columns; near-separable at
  small L2 (N = 300 against 64 independent columns, 10 classes)."""
  rng = np.random.RandomState(seed)
  f = rng.randn(n, 8)
  w = np.random.RandomState(2).randn(8, k)
  y = np.argmax(f @ w + rng.gumbel(size=(n, k)), 1).astype(np.int32)
  x = f @ np.random.RandomState(1).randn(8, d) + rng.randn(n, d) + 5.0
  half = x[:, :d // 2]
  x = np.concatenate([x] + [half * 3.0 + 1.0] * copies + [np.full((n, const), 2.5)], 1)
  return x.astype(np.float32), y


@pytest.mark.parametrize('precond_rank,shape', [(128, {}), (0, {}),
                                                (128, dict(n=200, k=5, copies=3))])
def test_lbfgs_reaches_the_optimum_on_rank_deficient_features(precond_rank, shape):
  """Issue 17 (5): duplicated and constant columns, wd down to 1e-4: the solver used to
  stop once max |grad| <= tol, after 9-25 iterations at wd 1e-4, at a relative
  objective gap of 3e-3 - 8e-3 against scikit-learn's optimum (C = 1 / (N wd), Newton-CG
  to tol 1e-10; its float64 gradient checked here independently). Every point now ends
  within 1e-5 of it, with scikit-learn's probabilities; the reported max |grad| is the
  independent one and `gap_estimate` bounds the gap."""
  x, y = _redundant_features(0, **shape)
  n, k = len(y), int(y.max()) + 1
  stats = linear.feature_stats({'a': jnp.asarray(x)})['a']
  mean, inv_std = (np.asarray(s, np.float64) for s in stats)
  xs = (x - mean) * inv_std
  # scikit-learn's scaler zeroes constant columns as `inverse_std` does.
  np.testing.assert_allclose(xs, StandardScaler().fit_transform(x), atol=2e-3)
  wds = [1.0, 1e-1, 1e-2, 1e-3, 1e-4]
  thetas, infos = solvers.fit_path(jnp.asarray(x), y, wds, num_classes=k, stats=stats,
                                   tol=1e-4, precond_rank=precond_rank, max_iters=2000)
  rows = []
  for wd, theta, info in zip(wds, thetas, infos):
    theta = np.asarray(theta, np.float64)
    clf = LogisticRegression(C=1.0 / (n * wd), solver='newton-cg', tol=1e-10,
                             max_iter=1000).fit(xs, y)
    f_star, g_star = _objective64(
        np.concatenate([clf.coef_.T, clf.intercept_[None]]), xs, y, wd, k)
    assert np.abs(g_star).max() < 1e-8, wd  # scikit-learn did reach the optimum
    f, g = _objective64(theta, xs, y, wd, k)
    rows.append((wd, info, (f - f_star) / f_star, np.abs(g).max(), f_star, theta, clf))
  assert all(r[2] < 1e-5 for r in rows), [(r[0], r[1]['iters'], f'{r[2]:.1e}') for r in rows]
  for wd, info, gap, g_max, f_star, theta, clf in rows:
    assert info['converged'] and info['status'] == 'converged', (wd, info['status'])
    assert info['grad_max'] == pytest.approx(g_max, rel=0.05, abs=1e-6)
    # From above, where the gap is above float32's resolution of f.
    assert info['gap_estimate'] >= 0.5 * (gap - 1e-6) * f_star, (wd, info['gap_estimate'])
    np.testing.assert_allclose(_softmax(xs @ theta[:-1] + theta[-1]), clf.predict_proba(xs),
                               atol=2e-3)


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize('split', ['train', 'val'])
def test_non_finite_features_are_an_error_naming_the_endpoint(bad, split):
  """A broken trunk (NaN or inf features) used to give chance accuracy after 0
  iterations with no error: now a one-line ValueError naming endpoint and split."""
  x, y = _problem(0, 200, dim=12)
  xv, yv = _problem(1, 100, dim=12)
  (x if split == 'train' else xv)[7, 3] = bad
  feats = {'ok': jnp.asarray(_problem(0, 200, dim=12)[0]), 'block3': jnp.asarray(x)}
  val = {'ok': jnp.asarray(_problem(1, 100, dim=12)[0]), 'block3': jnp.asarray(xv)}
  for fit, kw in ((solvers.train_lbfgs, {'iters': 20}), (solvers.train_ridge, {})):
    for standardize in (True, False):
      with pytest.raises(ValueError, match=rf"'block3'.*{split}.*1 non-finite") as e:
        fit(feats, y, val, yv, num_classes=4, cfg=dict(weight_decays=(1e-2,),
                                                       standardize=standardize), **kw)
      assert '\n' not in str(e.value)
  with pytest.raises(ValueError, match='non-finite'):
    solvers.fit_path(jnp.asarray(np.full((50, 4), np.nan, np.float32)),
                     np.zeros(50, np.int32), [1e-2], num_classes=2)


def _class_prior_loss(y, k):
  p = np.bincount(y, minlength=k) / len(y)
  return -np.sum(p[p > 0] * np.log(p[p > 0]))


@pytest.mark.parametrize('value', [0.0, 3.5])
@pytest.mark.parametrize('standardize', [True, False])
def test_constant_features_fit_the_class_prior_and_warn(value, standardize):
  """All columns constant (a dead trunk): the spectral preconditioner used to make the
  objective NaN at every L2 point (0 iterations, 'converged': False, chance accuracy,
  no message). The probe now fits the only thing such features allow, the class prior
  (objective = the labels' entropy, the majority class predicted), converges at every
  point, and the endpoint's checks carry the count and a warning."""
  rng = np.random.RandomState(0)
  k = 4
  y = rng.choice(k, 300, p=[0.55, 0.25, 0.15, 0.05]).astype(np.int32)
  yv = rng.choice(k, 100, p=[0.55, 0.25, 0.15, 0.05]).astype(np.int32)
  x = np.full((300, 40), value, np.float32)
  res = solvers.train_lbfgs({'a': jnp.asarray(x)}, y, {'a': jnp.asarray(x[:100])}, yv,
                            num_classes=k, iters=100,
                            cfg=dict(weight_decays=(1.0, 1e-2, 1e-4), standardize=standardize))
  prior = _class_prior_loss(y, k)
  infos = res['solver_info']['a']
  assert infos[0]['iters'] > 0  # the next points start at its optimum, theirs too
  for i in infos:
    assert i['converged'] and i['status'] == 'converged', i
    assert i['value'] == pytest.approx(prior, abs=1e-4)
  sel = res['selected']['a']
  assert sel['val_top1'] == pytest.approx(np.mean(yv == 0))
  checks = res['solver_checks']['a']
  assert checks['columns'] == 40 and checks['constant_columns'] == 40
  assert checks['unconverged'] == [] and len(checks['warnings']) == 1
  assert 'all 40' in checks['warnings'][0] and 'constant' in checks['warnings'][0]
  # Without the preconditioner (the reference path) the same optimum.
  _, infos = solvers.fit_path(jnp.asarray(x), y, [1e-2], num_classes=k,
                              stats=res['stats']['a'] if standardize else None,
                              precond_rank=0)
  assert infos[0]['value'] == pytest.approx(prior, abs=1e-4)


def test_some_constant_columns_warn_and_match_the_live_columns_alone():
  """A quarter of the columns constant (dead ReLUs): the probe on all columns equals the
  probe on the live columns alone (standardisation zeroes the dead ones), and the
  warning counts them."""
  x, y = _problem(0, 300, dim=24)
  xv, yv = _problem(1, 100, dim=24)
  dead = np.zeros((300, 8), np.float32)
  full = np.concatenate([x, dead], 1)
  cfg = dict(weight_decays=(1e-1, 1e-3), standardize=True)
  res = solvers.train_lbfgs({'a': jnp.asarray(full)}, y,
                            {'a': jnp.asarray(np.concatenate([xv, dead[:100]], 1))}, yv,
                            num_classes=4, iters=500, cfg=cfg)
  ref = solvers.train_lbfgs({'a': jnp.asarray(x)}, y, {'a': jnp.asarray(xv)}, yv,
                            num_classes=4, iters=500, cfg=cfg)
  for a, b in zip(res['solver_info']['a'], ref['solver_info']['a']):
    assert a['converged'] and a['value'] == pytest.approx(b['value'], rel=1e-5)
  checks = res['solver_checks']['a']
  assert checks['constant_columns'] == 8 and checks['columns'] == 32
  assert len(checks['warnings']) == 1 and '8 of 32' in checks['warnings'][0]
  assert ref['solver_checks']['a']['warnings'] == []


def test_unconverged_points_are_flagged_in_the_checks():
  """A point stopped by its iteration cap is named in the endpoint's checks (status,
  iterations, max |grad|) and gets a warning line, for the console and results.json."""
  rng = np.random.RandomState(6)
  x = rng.randn(200, 100).astype(np.float32)
  y = rng.randint(0, 3, 200).astype(np.int32)
  res = solvers.train_lbfgs({'a': jnp.asarray(x)}, y, {'a': jnp.asarray(x[:50])}, y[:50],
                            num_classes=3, iters=5,
                            cfg=dict(weight_decays=(1e-1, 3e-4), standardize=True,
                                     precond_rank=0))
  info = {i['weight_decay']: i for i in res['solver_info']['a']}
  assert info[3e-4]['status'] == 'iteration cap' and not info[3e-4]['converged']
  checks = res['solver_checks']['a']
  assert [u['weight_decay'] for u in checks['unconverged']] == [
      w for w in (1e-1, 3e-4) if not info[w]['converged']]
  u = checks['unconverged'][-1]
  assert u['status'] == 'iteration cap' and u['iters'] == 5
  assert any('0.0003' in w and 'iteration cap' in w for w in checks['warnings'])
  assert not res['stopped_early']
