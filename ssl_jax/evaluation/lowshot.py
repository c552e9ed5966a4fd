"""Low-shot linear evaluation: k labelled examples per class, hyper-parameters by CV.

For each k in `shots` and each of `samples` random draws, k training examples per class
are drawn (without replacement) from the train features. A closed-form ridge classifier
(big_vision's few-shot recipe: features z-scored with the sample's own statistics, a
constant bias feature, one-hot targets in {-1, +1}) is fitted; its L2 coefficient is
chosen by exact leave-one-out cross-validation *inside the sample* (peers pick it on the
test set, peers.md b.5). The chosen model is scored on the evaluation split, and the
mean and standard deviation over the samples are reported.

Exact LOO for ridge: with the hat matrix H = X (X'X + l I)^-1 X', the prediction for
example i without example i is y_i - (y_i - (HY)_i) / (1 - H_ii). One eigendecomposition
(of the n x n Gram matrix, or of the D x D covariance when D < n) serves every l.
"""
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.evaluation import linear

DEFAULT_SHOTS = (1, 2, 4, 8, 16, 32, 64, 96)
DEFAULT_L2_GRID = tuple(2.0 ** e for e in range(-6, 21, 2))
BIAS_FEATURE = 100.0  # big_vision: a large constant feature = an almost unpenalised bias.


def sample_indices(labels, shots, rng, num_classes):
  """k indices per class (fewer where a class has fewer), class-major order."""
  labels = np.asarray(labels)
  out = []
  for c in range(num_classes):
    idx = np.flatnonzero(labels == c)
    if len(idx):
      out.append(rng.choice(idx, size=min(shots, len(idx)), replace=False))
  return np.concatenate(out)


def _prepare(x_train, x_eval):
  """z-score with the sample's statistics, then append the bias feature."""
  mean = x_train.mean(0)
  inv = linear.inverse_std(x_train.std(0))  # Constant dims of the sample: dropped.
  f = lambda x: jnp.concatenate(
      [(x - mean) * inv, jnp.full((x.shape[0], 1), BIAS_FEATURE, x.dtype)], 1)
  return f(x_train), f(x_eval)


@jax.jit
def _ridge_loo(x, y, l2_grid):
  """LOO accuracy and squared error per l2, and the fitted weights' pieces.

  Args:
    x: f32[n, D]; y: f32[n, K] in {-1, +1}; l2_grid: f32[L].
  Returns:
    (loo_acc f32[L], loo_mse f32[L]).
  """
  n, d = x.shape
  if d < n:  # Primal: X'X = V diag(s) V'; H_ii = sum_j (XV)_ij^2 / (s_j + l).
    s, v = jnp.linalg.eigh(x.T @ x)
    xv = x @ v
    proj = xv.T @ y                                  # [D, K]
    def fit(l):
      inv = 1.0 / (jnp.maximum(s, 0) + l)
      pred = xv @ (inv[:, None] * proj)
      h = jnp.sum(xv * xv * inv, 1)
      return pred, h
  else:  # Dual: XX' = U diag(s) U'; H = U diag(s/(s+l)) U'.
    s, u = jnp.linalg.eigh(x @ x.T)
    uy = u.T @ y
    def fit(l):
      r = jnp.maximum(s, 0) / (jnp.maximum(s, 0) + l)
      pred = u @ (r[:, None] * uy)
      h = jnp.sum(u * u * r, 1)
      return pred, h

  def one(l):
    pred, h = fit(l)
    loo = y - (y - pred) / jnp.maximum(1.0 - h, 1e-6)[:, None]
    acc = jnp.mean(jnp.argmax(loo, 1) == jnp.argmax(y, 1))
    return acc, jnp.mean(jnp.square(loo - y))

  return jax.lax.map(one, l2_grid)


@jax.jit
def _ridge_fit(x, y, l2):
  """Ridge weights f32[D, K] = (X'X + l I)^-1 X'Y, solved in the cheaper form."""
  n, d = x.shape
  if d < n:
    return jnp.linalg.solve(x.T @ x + l2 * jnp.eye(d, dtype=x.dtype), x.T @ y)
  return x.T @ jnp.linalg.solve(x @ x.T + l2 * jnp.eye(n, dtype=x.dtype), y)


def ridge_classifier(x_train, y_train, x_eval, *, num_classes, l2_grid=DEFAULT_L2_GRID):
  """Fits ridge with the l2 of best LOO accuracy (ties: lower LOO error).

  Returns:
    (scores f32[M, K] on x_eval, chosen l2, LOO accuracy of the choice).
  """
  xt, xe = _prepare(jnp.asarray(x_train, jnp.float32), jnp.asarray(x_eval, jnp.float32))
  y = 2.0 * jax.nn.one_hot(jnp.asarray(y_train), num_classes) - 1.0
  grid = jnp.asarray(l2_grid, jnp.float32)
  acc, mse = jax.device_get(_ridge_loo(xt, y, grid))
  best = sorted(range(len(l2_grid)), key=lambda i: (-acc[i], mse[i]))[0]
  w = _ridge_fit(xt, y, grid[best])
  return np.asarray(xe @ w), float(l2_grid[best]), float(acc[best])


def _topk(scores, labels):
  order = np.argsort(-scores, 1, kind='stable')
  labels = np.asarray(labels)
  return (float(np.mean(order[:, 0] == labels)),
          float(np.mean(np.any(order[:, :5] == labels[:, None], 1))))


def evaluate(train_feats, train_labels, eval_feats, eval_labels, *, num_classes,
             shots=DEFAULT_SHOTS, samples=5, seed=0, l2_grid=DEFAULT_L2_GRID):
  """Low-shot top-1/top-5 (mean, std over `samples` draws) for every k in `shots`.

  Args:
    train_feats: f32[N, D] pool to draw the k-shot samples from; train_labels: int[N].
    eval_feats: f32[M, D]; eval_labels: int[M] (every example is scored).
    num_classes: K. shots: k values. samples: draws per k. seed: sampling seed.
  Returns:
    {k: dict(top1_mean, top1_std, top5_mean, top5_std, top1 (list), l2 (list),
    loo_top1 (list), n_train)}.
  """
  out = {}
  train_feats = np.asarray(train_feats)
  for k in shots:
    rows = []
    for s in range(samples):
      rng = np.random.RandomState(seed * 1_000_003 + k * 101 + s)
      idx = sample_indices(train_labels, k, rng, num_classes)
      scores, l2, loo = ridge_classifier(
          train_feats[idx], np.asarray(train_labels)[idx], eval_feats,
          num_classes=num_classes, l2_grid=l2_grid)
      t1, t5 = _topk(scores, eval_labels)
      rows.append((t1, t5, l2, loo, len(idx)))
    t1s = np.array([r[0] for r in rows])
    t5s = np.array([r[1] for r in rows])
    out[int(k)] = {'top1_mean': float(t1s.mean()), 'top1_std': float(t1s.std()),
                   'top5_mean': float(t5s.mean()), 'top5_std': float(t5s.std()),
                   'top1': [float(v) for v in t1s], 'l2': [r[2] for r in rows],
                   'loo_top1': [r[3] for r in rows], 'n_train': rows[0][4]}
  return out
