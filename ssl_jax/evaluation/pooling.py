"""Reduce an endpoint's feature map to a flat vector of at most ~9,000 dims.

Modes (`mode` argument):
  'max' / 'avg'     the study's exact rule (revisiting.md section 7.1): only when
                    H*W*C > target, window = stride = s = ceil(sqrt(H*W*C / target)),
                    clipped to [1, H]; VALID padding, so trailing rows/cols that do not
                    fill a window are dropped (7x7 block4 at k=4: s=4, one 4x4 window).
  'adaptive_max' /  a deterministic adaptive pooling to a t x t grid with
  'adaptive_avg'    t = floor(sqrt(target / C)) clipped to [1, min(H, W)], so the output
                    never exceeds `target` dims (unless C alone does) and every input
                    pixel lands in a cell (bins [floor(i*H/t), ceil((i+1)*H/t)), as
                    PyTorch's AdaptiveMaxPool). Works for any map size: 32, 64, 96 px
                    inputs alike, where windows hard-coded for 224 px do not.
  'global_avg'      mean over H and W: C dims.
  'none'            flatten as is.
Rank-2 endpoints ([N, C], e.g. pre_logits) are returned unchanged by every mode.

Pure jax.numpy; no TensorFlow.
"""
import math

import jax.numpy as jnp

MODES = ('max', 'avg', 'adaptive_max', 'adaptive_avg', 'global_avg', 'none')
DEFAULT_TARGET_DIMS = 9000


def _check_mode(mode):
  if mode not in MODES:
    raise ValueError(f'pool mode={mode!r} is not known; allowed: {list(MODES)}')


def valid_window(h, w, c, target_dims=DEFAULT_TARGET_DIMS):
  """The study's window = stride for a [h, w, c] map (1 when no pooling is needed)."""
  if h * w * c <= target_dims:
    return 1
  s = math.ceil(math.sqrt(h * w * c / target_dims))
  return int(min(max(s, 1), h, w))


def adaptive_side(h, w, c, target_dims=DEFAULT_TARGET_DIMS):
  """Side t of the adaptive output grid: the largest t with t*t*c <= target (>= 1)."""
  if h * w * c <= target_dims:
    return None  # Leave small maps untouched, as the study does.
  t = int(math.floor(math.sqrt(target_dims / c)))
  return max(1, min(t, h, w))


def output_shape(shape, mode, target_dims=DEFAULT_TARGET_DIMS):
  """Per-example output (h, w, c) of `pool` for an endpoint of per-example `shape`.

  Args:
    shape: (H, W, C) or (C,) (per example, no batch axis).
    mode: one of MODES.
    target_dims: the dimension cap.
  Returns:
    (h, w, c) ints; (1, 1, C) for rank-1 shapes.
  """
  _check_mode(mode)
  if len(shape) == 1:
    return (1, 1, shape[0])
  h, w, c = shape
  if mode == 'none':
    return (h, w, c)
  if mode == 'global_avg':
    return (1, 1, c)
  if mode in ('max', 'avg'):
    s = valid_window(h, w, c, target_dims)
    return ((h - s) // s + 1, (w - s) // s + 1, c)
  t = adaptive_side(h, w, c, target_dims)
  return (h, w, c) if t is None else (t, t, c)


def pooled_dim(shape, mode, target_dims=DEFAULT_TARGET_DIMS):
  """Flat feature dimension that `pool` returns for a per-example `shape`."""
  return math.prod(output_shape(shape, mode, target_dims))


def _adaptive_axis(x, axis, t, reduce_fn):
  """Adaptive pooling of one spatial axis of x into t bins (PyTorch bin edges)."""
  n = x.shape[axis]
  if n % t == 0:  # Equal, disjoint bins: a reshape and one reduction.
    shape = x.shape[:axis] + (t, n // t) + x.shape[axis + 1:]
    return reduce_fn(x.reshape(shape), axis=axis + 1)
  bins = []
  for i in range(t):
    lo, hi = (i * n) // t, -((-(i + 1) * n) // t)
    sl = [slice(None)] * x.ndim
    sl[axis] = slice(lo, hi)
    bins.append(reduce_fn(x[tuple(sl)], axis=axis, keepdims=True))
  return jnp.concatenate(bins, axis=axis)


def _valid_pool(x, s, reduce_fn):
  """Window = stride = s, VALID: x [N,H,W,C] -> [N, (H-s)//s+1, (W-s)//s+1, C]."""
  n, h, w, c = x.shape
  oh, ow = (h - s) // s + 1, (w - s) // s + 1
  x = x[:, :oh * s, :ow * s, :]  # VALID drops the trailing rows/cols.
  x = x.reshape(n, oh, s, ow, s, c)
  return reduce_fn(x, axis=(2, 4))


def pool_map(x, mode, target_dims=DEFAULT_TARGET_DIMS):
  """Pools x [N,H,W,C] (or [N,C]) to [N, h, w, c] per `output_shape` (float32)."""
  _check_mode(mode)
  x = x.astype(jnp.float32)
  if x.ndim == 2:
    return x[:, None, None, :]
  if x.ndim != 4:
    raise ValueError(f'endpoint must be [N,H,W,C] or [N,C], got shape {x.shape}')
  _, h, w, c = x.shape
  if mode == 'none':
    return x
  if mode == 'global_avg':
    return jnp.mean(x, axis=(1, 2), keepdims=True)
  reduce_fn = jnp.max if mode.endswith('max') else jnp.mean
  if mode in ('max', 'avg'):
    s = valid_window(h, w, c, target_dims)
    return x if s == 1 else _valid_pool(x, s, reduce_fn)
  t = adaptive_side(h, w, c, target_dims)
  if t is None:
    return x
  return _adaptive_axis(_adaptive_axis(x, 1, t, reduce_fn), 2, t, reduce_fn)


def pool(x, mode, target_dims=DEFAULT_TARGET_DIMS):
  """Pools and flattens an endpoint: x [N,H,W,C] or [N,C] -> f32[N, pooled_dim]."""
  y = pool_map(x, mode, target_dims)
  return y.reshape(y.shape[0], -1)


def combine_patches(x, num_patches, how='avg'):
  """Combines per-patch features of patch models into one vector per image.

  Args:
    x: f32[B * num_patches, D], image-major (row b * num_patches + p).
    num_patches: patches per image (9 for the 3x3 grid).
    how: 'avg' (the study's `--combine_patches avg_pool`), 'max', or 'concat'
      (patch-major blocks: [patch0 dims, patch1 dims, ...]).
  Returns:
    f32[B, D] for avg/max; f32[B, num_patches * D] for concat.
  """
  if x.shape[0] % num_patches:
    raise ValueError(f'{x.shape[0]} rows are not a multiple of {num_patches} patches')
  y = x.reshape(x.shape[0] // num_patches, num_patches, x.shape[-1])
  if how == 'avg':
    return jnp.mean(y, axis=1)
  if how == 'max':
    return jnp.max(y, axis=1)
  if how == 'concat':
    return y.reshape(y.shape[0], -1)
  raise ValueError(f"combine_patches={how!r}; allowed: 'avg', 'max', 'concat'")
