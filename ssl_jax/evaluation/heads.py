"""Evaluation heads on frozen features: linear (the study's) and MLP (paper section 7.2).

Heads are plain pytrees of arrays (no Flax module), so that many heads, one per
endpoint and one per hyper-parameter setting, can be stacked and vmapped.

- linear: {'kernel': f32[D, K], 'bias': f32[K]}; Glorot-uniform kernel, zero bias
  (tf.layers.dense defaults, as the study).
- mlp: {'hidden': {'kernel': [D, H], 'bias': [H]}, 'out': {'kernel': [H, K], 'bias': [K]}};
  dense -> ReLU -> dropout(0.5, train only) -> dense (the study's `--eval_model mlp`,
  whose hidden width flag is undefined in the release; we use H = 1000).
Weight decay applies to kernels only.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

KINDS = ('linear', 'mlp')
_GLOROT = jax.nn.initializers.glorot_uniform()


def _dense(rng, d_in, d_out):
  return {'kernel': _GLOROT(rng, (d_in, d_out), jnp.float32),
          'bias': jnp.zeros((d_out,), jnp.float32)}


def init(kind, rng, dim, num_classes, hidden=1000):
  """Parameters of one head on dim-dimensional features."""
  if kind == 'linear':
    return _dense(rng, dim, num_classes)
  if kind == 'mlp':
    r1, r2 = jax.random.split(rng)
    return {'hidden': _dense(r1, dim, hidden), 'out': _dense(r2, hidden, num_classes)}
  raise ValueError(f'head kind={kind!r}; allowed: {list(KINDS)}')


def _dense_np(rng, d_in, d_out):
  limit = np.sqrt(6.0 / (d_in + d_out))  # Glorot-uniform.
  return {'kernel': rng.uniform(-limit, limit, (d_in, d_out)).astype(np.float32),
          'bias': np.zeros((d_out,), np.float32)}


def init_np(kind, rng, dim, num_classes, hidden=1000):
  """As `init`, drawn with a numpy RandomState on the host (no compilation)."""
  if kind == 'linear':
    return _dense_np(rng, dim, num_classes)
  if kind == 'mlp':
    return {'hidden': _dense_np(rng, dim, hidden), 'out': _dense_np(rng, hidden, num_classes)}
  raise ValueError(f'head kind={kind!r}; allowed: {list(KINDS)}')


def apply(kind, params, x, *, train=False, rng=None, dropout=0.5):
  """Logits f32[B, K] of one head on features x f32[B, D].

  Args:
    kind: 'linear' or 'mlp'.
    params: the head's parameters (see module docstring).
    x: features.
    train: enables dropout (mlp only).
    rng: PRNG key, required when train and kind == 'mlp'.
    dropout: drop probability of the mlp's hidden layer.
  """
  x = x.astype(jnp.float32)
  if kind == 'linear':
    return x @ params['kernel'] + params['bias']
  h = jax.nn.relu(x @ params['hidden']['kernel'] + params['hidden']['bias'])
  if train and dropout > 0:
    keep = jax.random.bernoulli(rng, 1.0 - dropout, h.shape)
    h = jnp.where(keep, h / (1.0 - dropout), 0.0)
  return h @ params['out']['kernel'] + params['out']['bias']


def decay_mask(params):
  """Pytree of bools: True on kernels (the leaves that get weight decay)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def l2_term(params):
  """sum of |kernel|^2 / 2 over the head's kernels (the coupled L2 loss term)."""
  leaves = jax.tree.leaves(jax.tree.map(
      lambda p, m: jnp.sum(p * p) / 2 if m else 0.0, params, decay_mask(params)))
  return sum(leaves)


def cross_entropy(logits, labels, weights):
  """Weighted mean softmax CE: sum(w * ce) / max(sum(w), 1); logits [B,K], labels [B]."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def correct_topk(logits, labels, ks=(1, 5)):
  """dict 'top{k}' -> f32[B] 0/1 correctness (k clipped to the number of classes)."""
  num_classes = logits.shape[-1]
  kmax = min(max(ks), num_classes)
  _, top = jax.lax.top_k(logits, kmax)
  hit = top == labels[:, None]
  return {f'top{k}': jnp.any(hit[:, :min(k, num_classes)], axis=-1).astype(jnp.float32)
          for k in ks}
