"""Full-batch alternatives to SGD for linear heads on cached features.

- 'lbfgs': multinomial logistic regression (the same model and loss as the SGD head,
  plus wd * |W|^2 / 2) minimised with optax.lbfgs on the whole train set; vmapped over
  the weight-decay grid; one endpoint at a time (its features are the only big array).
- 'ridge': closed-form ridge regression on one-hot {-1, +1} targets with a bias column;
  one eigendecomposition of the D x D covariance serves the whole L2 grid.
Both pick the grid point with the best top-1 on the held-out validation features and
return the same structure as `linear.train_cached` (with `epoch` = iterations for
L-BFGS, 0 for ridge), so the driver treats every solver alike.
"""
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax.evaluation import linear


def _std(x, stats):
  return linear._standardize(x, stats)  # pylint: disable=protected-access


@functools.partial(jax.jit, static_argnames=('num_classes', 'iters'))
def _lbfgs_fit(x, y, wds, init, *, num_classes, iters):
  """L-BFGS on mean CE + wd/2 |W|^2 for every wd in wds (vmapped). x f32[N, D]."""
  del num_classes

  def fit(wd, p0):
    def fun(p):
      logits = x @ p['kernel'] + p['bias']
      ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
      return ce + 0.5 * wd * jnp.sum(jnp.square(p['kernel']))

    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(fun)

    def body(_, carry):
      p, state = carry
      value, grad = vg(p, state=state)
      updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=fun)
      return optax.apply_updates(p, updates), state

    p, _ = jax.lax.fori_loop(0, iters, body, (p0, opt.init(p0)))
    return p

  return jax.vmap(fit)(wds, init)


def train_lbfgs(train_feats, train_labels, val_feats, val_labels, *, num_classes, cfg,
                val_mask=None, iters=500):
  """L-BFGS logistic regression per endpoint; wd chosen on validation top-1."""
  cfg = linear.make_config(cfg, base_lrs=(0.0,))
  t0 = time.perf_counter()
  stats = linear.feature_stats(train_feats) if cfg['standardize'] else None
  wds = jnp.asarray(cfg['weight_decays'], jnp.float32)
  y = jnp.asarray(train_labels, jnp.int32)
  params = {}
  dims = {k: int(v.shape[-1]) for k, v in train_feats.items()}
  init = linear.init_heads(cfg['seed'], dims, num_classes,
                           dict(cfg, head='linear'))
  for name in sorted(train_feats):
    x = _std(train_feats[name], None if stats is None else stats[name])
    params[name] = _lbfgs_fit(x, y, wds, init[name], num_classes=num_classes,
                              iters=iters)
    del x
  return _finish(params, val_feats, val_labels, val_mask, stats, cfg, iters, t0)


@jax.jit
def _ridge_path(x, y, l2s):
  """Ridge weights [L, D+1, K] for every l2 (a ones column appended for the bias).

  One eigendecomposition for the whole path, of the smaller Gram matrix: X'X (D+1
  square, primal) when N > D, else XX' (N square, dual: W = X'U diag(1/(s+l)) U'Y).
  """
  x = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], 1)
  n, d = x.shape
  if d < n:
    s, v = jnp.linalg.eigh(x.T @ x)
    proj = v.T @ (x.T @ y)
    return jax.vmap(lambda l: v @ (proj / (jnp.maximum(s, 0) + l)[:, None]))(l2s)
  s, u = jnp.linalg.eigh(x @ x.T)
  uy = u.T @ y
  return jax.vmap(lambda l: x.T @ (u @ (uy / (jnp.maximum(s, 0) + l)[:, None])))(l2s)


def train_ridge(train_feats, train_labels, val_feats, val_labels, *, num_classes, cfg,
                val_mask=None):
  """Closed-form ridge per endpoint; L2 (cfg.weight_decays, scaled by N) chosen on val."""
  cfg = linear.make_config(cfg, base_lrs=(0.0,))
  t0 = time.perf_counter()
  n = int(np.asarray(train_labels).shape[0])
  stats = linear.feature_stats(train_feats) if cfg['standardize'] else None
  # wd is per-example (as in the mean CE loss): the sum-of-squares objective needs n*wd.
  l2s = jnp.asarray([max(w, 1e-6) * n for w in cfg['weight_decays']], jnp.float32)
  y = 2.0 * jax.nn.one_hot(jnp.asarray(train_labels), num_classes) - 1.0
  params = {}
  for name in sorted(train_feats):
    x = _std(train_feats[name], None if stats is None else stats[name])
    w = _ridge_path(x, y, l2s)
    params[name] = {'kernel': w[:, :-1, :], 'bias': w[:, -1, :]}
    del x
  return _finish(params, val_feats, val_labels, val_mask, stats, cfg, 0, t0)


def _finish(params, val_feats, val_labels, val_mask, stats, cfg, epochs, t0):
  """Scores every grid point on val and selects, as linear.train_cached does."""
  metrics, _ = linear.evaluate_cached(
      params, {k: val_feats[k] for k in params}, jnp.asarray(val_labels, jnp.int32),
      val_mask, stats, kind='linear', batch_size=cfg['eval_batch_size'])
  sel = linear._selection_init(params)  # pylint: disable=protected-access
  sel, _ = linear._selection_update(sel, metrics, params, epochs)  # pylint: disable=protected-access
  seconds = time.perf_counter() - t0
  return {'selected': linear.select(sel, cfg), 'epochs_trained': epochs,
          'stopped_early': False, 'seconds': seconds, 'seconds_per_epoch': None,
          'stats': stats, 'history': [], 'config': cfg}
