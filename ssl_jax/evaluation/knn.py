"""Weighted k-nearest-neighbour classification on L2-normalised features.

Wu et al. (2018) style: the k most cosine-similar training examples vote for their
label with weight exp(similarity / T), computed per query in the log-sum-exp form
exp((similarity - best similarity) / T) (the same ranking, a constant factor per
query), so the votes stay finite for every temperature T > 0. Presets (peers.md b.5):
  'k20_t0.07'  k=20,  T=0.07 (solo-learn)
  'k200_t0.1'  k=200, sigma=0.1 (VISSL; the same formula with T = sigma)
The training bank is scanned in chunks with a running top-k, so memory is
O(query_batch * (bank_chunk + k)) whatever the bank size. No example is dropped.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

PRESETS = {'k20_t0.07': (20, 0.07), 'k200_t0.1': (200, 0.1)}


def l2_normalize(x, eps=1e-10):
  """Rows of x f32[N, D] scaled to unit L2 norm (zero rows stay zero)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps))


def _pad_rows(x, multiple, value=0):
  n = x.shape[0]
  pad = (-n) % multiple
  if not pad:
    return x
  return jnp.concatenate([x, jnp.full((pad,) + x.shape[1:], value, x.dtype)])


@functools.partial(jax.jit, static_argnames=('k', 'num_classes', 'bank_chunk'))
def _votes(queries, bank, bank_labels, bank_valid, temperature, *, k, num_classes,
           bank_chunk):
  """Class votes f32[Q, K] for normalised queries against a normalised, padded bank."""
  q = queries.shape[0]
  chunks = bank.shape[0] // bank_chunk

  def body(carry, i):
    best_sim, best_lab = carry
    b = jax.lax.dynamic_slice_in_dim(bank, i * bank_chunk, bank_chunk)
    lab = jax.lax.dynamic_slice_in_dim(bank_labels, i * bank_chunk, bank_chunk)
    ok = jax.lax.dynamic_slice_in_dim(bank_valid, i * bank_chunk, bank_chunk)
    sim = jnp.where(ok[None, :], queries @ b.T, -jnp.inf)       # [Q, chunk]
    sim = jnp.concatenate([best_sim, sim], 1)
    lab = jnp.concatenate([best_lab, jnp.broadcast_to(lab, (q, bank_chunk))], 1)
    top_sim, top_idx = jax.lax.top_k(sim, k)
    return (top_sim, jnp.take_along_axis(lab, top_idx, 1)), None

  init = (jnp.full((q, k), -jnp.inf, jnp.float32), jnp.zeros((q, k), jnp.int32))
  (sim, lab), _ = jax.lax.scan(body, init, jnp.arange(chunks))
  # exp(s / T) overflows float32 for T < 1/89; shifting by the best similarity keeps
  # every weight in (0, 1] (the best one is exactly 1).
  best = jnp.max(jnp.where(jnp.isfinite(sim), sim, -2.0), axis=1, keepdims=True)
  w = jnp.where(jnp.isfinite(sim), jnp.exp((sim - best) / temperature), 0.0)
  return jnp.sum(jax.nn.one_hot(lab, num_classes) * w[..., None], axis=1)


def knn_votes(train_feats, train_labels, query_feats, *, num_classes, k=20,
              temperature=0.07, query_batch=256, bank_chunk=8192):
  """Weighted kNN class scores.

  Args:
    train_feats: f32[N, D] bank (normalised here); train_labels: int[N].
    query_feats: f32[Q, D] (normalised here).
    num_classes: K. k: neighbours (clipped to N). temperature: T in exp(sim / T).
    query_batch, bank_chunk: memory knobs (results do not depend on them).
  Returns:
    np.float32[Q, K] summed neighbour weights per class, each query's weights scaled
    by exp(-best similarity / T) (finite for any T > 0; the ranking of classes is that
    of the exp(sim / T) votes).
  Raises:
    ValueError for a temperature that is not > 0.
  """
  if not temperature > 0:
    raise ValueError(f'kNN temperature={temperature!r} must be > 0')
  n = train_feats.shape[0]
  k = int(min(k, n))
  bank_chunk = int(min(bank_chunk, n))
  bank = _pad_rows(l2_normalize(jnp.asarray(train_feats)), bank_chunk)
  labels = _pad_rows(jnp.asarray(train_labels, jnp.int32), bank_chunk)
  valid = _pad_rows(jnp.ones((n,), bool), bank_chunk, False)
  out = []
  for start in range(0, query_feats.shape[0], query_batch):
    q = l2_normalize(jnp.asarray(query_feats[start:start + query_batch]))
    m = q.shape[0]
    q = _pad_rows(q, query_batch)  # One compiled shape for every query batch.
    v = _votes(q, bank, labels, valid, jnp.float32(temperature), k=k,
               num_classes=num_classes, bank_chunk=bank_chunk)
    out.append(np.asarray(v[:m]))
  return np.concatenate(out) if out else np.zeros((0, num_classes), np.float32)


def knn_accuracy(train_feats, train_labels, query_feats, query_labels, **kwargs):
  """dict(top1, top5, count) of weighted kNN on (query_feats, query_labels)."""
  votes = knn_votes(train_feats, train_labels, query_feats, **kwargs)
  labels = np.asarray(query_labels)
  order = np.argsort(-votes, axis=1, kind='stable')
  top1 = float(np.mean(order[:, 0] == labels)) if len(labels) else 0.0
  top5 = float(np.mean(np.any(order[:, :5] == labels[:, None], 1))) if len(labels) else 0.0
  return {'top1': top1, 'top5': top5, 'count': int(len(labels))}
