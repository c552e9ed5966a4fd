"""Pooled features of every endpoint of a frozen trunk, and their extraction into a cache.

`make_extract_fn` builds the pure function the linear evaluation runs on every batch:
uint8 images -> trunk input, as the pretext task says (`tasks.EvalInput`: full images
x/255 mapped to [-1, 1], the study's `-1_to_1`; patch models: a grid x grid array of
exact cells, no jitter, each patch standardised, as the study's patch-model
evaluation; colorization: the L channel) -> trunk in inference mode (BatchNorm moving
averages, `train=False`, no mutable collections, so nothing in the trunk can change)
-> each endpoint pooled (`pooling.pool`); with several trunk inputs per image (the 9
patches), per input, then combined over them (average by default).

`extract` runs it over batches (padding rows, mask False, are dropped) into host arrays.
"""
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.evaluation import pooling

GAP_SUFFIX = '_gavg'  # Extra heads on globally averaged 4-D endpoints.


def to_minus_one_one(images):
  """u8[...] -> f32 in [-1, 1] (x / 255 mapped linearly), the full-image eval input."""
  return images.astype(jnp.float32) * (2.0 / 255.0) - 1.0


def make_extract_fn(model, endpoints, *, eval_input=None, pool_mode='max',
                    target_dims=9000, patch_combine='avg', global_avg=False,
                    out_dtype=jnp.float32):
  """A pure function (variables, u8 images [B,H,W,3]) -> {name: out_dtype[B, D]}.

  Args:
    model: the trunk (flax.linen Module, `__call__(x, train) -> (output, endpoints)`).
    endpoints: endpoint names to return.
    eval_input: the task's `tasks.EvalInput` (default: RGB in [-1, 1], one per image).
    pool_mode, target_dims: see `pooling`.
    patch_combine: 'avg' (the study), 'max' or 'concat' over the trunk inputs of one
      image (eval_input.per_image > 1: the patches).
    global_avg: also return `<endpoint>_gavg`, the global average of 4-D endpoints.
    out_dtype: dtype of the returned features (bfloat16 halves a cache).
  """
  endpoints = tuple(endpoints)
  to_input = eval_input.fn if eval_input is not None else to_minus_one_one
  per_image = eval_input.per_image if eval_input is not None else 1

  def fn(variables, images):
    _, eps = model.apply(variables, to_input(images), train=False)
    out = {}
    for name in endpoints:
      e = eps[name]
      feats = {name: pooling.pool(e, pool_mode, target_dims)}
      if global_avg and e.ndim == 4:
        feats[name + GAP_SUFFIX] = pooling.pool(e, 'global_avg')
      for k, f in feats.items():
        if per_image > 1:
          f = pooling.combine_patches(f, per_image, patch_combine)
        out[k] = f.astype(out_dtype)
    return out

  return fn


def feature_dims(extract_fn, variables, image_shape):
  """{name: D} of `extract_fn` for u8 images of `image_shape` (H, W, 3); no compute."""
  images = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.uint8)
  shapes = jax.eval_shape(extract_fn, variables, images)
  return {k: int(v.shape[-1]) for k, v in shapes.items()}


def extract(extract_fn, variables, batches, *, num_examples=None, stop_when_full=False,
            log_every_s=30.0, jit_fn=None):
  """Runs `extract_fn` over `batches` and keeps the valid rows, in order.

  Args:
    extract_fn: from `make_extract_fn`.
    variables: the trunk's variables.
    batches: iterable of dicts image/label/mask (mask False = padding, dropped).
    num_examples: optional count of valid rows to keep (preallocates).
    stop_when_full: stop reading `batches` once num_examples rows are kept (else the
      iterator is read to its end, e.g. so that a tf.data cache completes).
    log_every_s: progress logging period in seconds.
    jit_fn: an already jitted extract_fn (reuse its compilation across calls).
  Returns:
    ({name: np.ndarray[N, D]}, labels np.int32[N]).
  """
  fn = jit_fn if jit_fn is not None else jax.jit(extract_fn)
  out, labels, filled = None, [], 0
  pending = None
  t0 = last = time.perf_counter()

  def drain(item):
    nonlocal out, filled
    feats, mask, lab = item
    feats = jax.device_get(feats)
    keep = np.flatnonzero(mask)
    if num_examples is not None:
      keep = keep[:max(num_examples - filled, 0)]
    if out is None:
      if num_examples is not None:
        out = {k: np.empty((num_examples, v.shape[1]), v.dtype) for k, v in feats.items()}
      else:
        out = {k: [] for k in feats}
    for k, v in feats.items():
      if num_examples is not None:
        out[k][filled:filled + len(keep)] = v[keep]
      else:
        out[k].append(v[keep])
    labels.append(np.asarray(lab)[keep])
    filled += len(keep)

  for batch in batches:
    if num_examples is not None and filled >= num_examples:
      if stop_when_full:
        break
      continue
    # Dispatch this batch before fetching the previous one: the device keeps working.
    item = (fn(variables, jnp.asarray(batch['image'])), np.asarray(batch['mask'], bool),
            batch['label'])
    if pending is not None:
      drain(pending)
    pending = item
    if time.perf_counter() - last > log_every_s:
      last = time.perf_counter()
      logging.info('extracted %d examples (%.0f/s)', filled, filled / (last - t0))
  if pending is not None:
    drain(pending)
  if out is None:
    raise ValueError('no batches to extract features from')
  if num_examples is None:
    out = {k: np.concatenate(v) for k, v in out.items()}
  elif filled < num_examples:
    out = {k: v[:filled] for k, v in out.items()}
  return out, np.concatenate(labels).astype(np.int32)


def gather_processes(feats, labels):
  """Concatenates every process's rows, in process order, on every process.

  Args:
    feats: {name: np.ndarray[n_p, D]} this process's rows (n_p may differ by process).
    labels: np.int32[n_p].
  Returns:
    ({name: np.ndarray[sum n_p, D]}, np.int32[sum n_p]), identical on every process.
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  n = np.asarray(labels.shape[0], np.int64)
  counts = np.asarray(multihost_utils.process_allgather(n)).reshape(-1)
  top = int(counts.max())
  pad = lambda a: np.concatenate([a, np.zeros((top - a.shape[0],) + a.shape[1:], a.dtype)])
  out = {}
  for name in sorted(feats):
    # bfloat16 caches travel as uint16 bits (the collective knows no bfloat16).
    a = feats[name]
    bits = a.view(np.uint16) if a.dtype.name == 'bfloat16' else a
    g = np.asarray(multihost_utils.process_allgather(pad(bits)))
    g = np.concatenate([g[p, :c] for p, c in enumerate(counts)])
    out[name] = g.view(a.dtype) if a.dtype.name == 'bfloat16' else g
  g = np.asarray(multihost_utils.process_allgather(pad(labels)))
  return out, np.concatenate([g[p, :c] for p, c in enumerate(counts)]).astype(np.int32)

