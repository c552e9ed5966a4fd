"""Pooled features of every endpoint of a frozen trunk, and their extraction into a cache.

`Cache` (built by `build_cache`) is the one feature cache every evaluator reads: per
endpoint the train features (view 0 = the evaluation preprocessing, then any augmented
views), val and test features, their labels, the split sizes and the trunk input kind.
Built once per endpoint group, usable from a notebook or a benchmark:

    cache = linear_eval.cache(config, trunk, source, ['block3'])
    x, y = cache.split('test')           # host numpy, {endpoint: f32[N, D]}, i32[N]

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
import dataclasses
import logging
import math
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import bn_stats
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



def reestimate_batch_stats(model, variables, batches, *, num_batches, eval_input=None,
                           seed=0):
  """The trunk's variables with population BatchNorm statistics of `batches` ("precise BN").

  Every BN layer's mean and variance become the mean and (biased) variance of its input
  over every example of the first `num_batches` full batches (padded batches, mask not
  all True, are skipped so that padding never enters a statistic), computed by the one
  precise-BN implementation (`ssl_jax.bn_stats`: a train-mode pass, weights untouched;
  dropout, where a trunk has it, active as in training, key `seed`). The statistics a
  converged moving average approaches for these weights: the fair treatment of a trunk
  whose moving averages never saw the data (a random-init twin: mean 0, variance 1).
  Several processes: each uses the same number of its own batches (the smallest count
  of any process) and the moments are averaged over processes, so every process gets
  the same statistics.

  Args:
    model: the trunk (flax Module, `__call__(x, train)`).
    variables: {'params', 'batch_stats'} (host or device arrays); a trunk without
      BatchNorm ('batch_stats' absent or empty) is returned unchanged.
    batches: iterable of dict(image u8[B, H, W, C], label, mask), e.g. a source's
      eval_batches of the train split (what the cached features see).
    num_batches: K >= 1 full batches to use.
    eval_input: the task's `tasks.EvalInput` (default: RGB in [-1, 1]).
    seed: dropout key.
  Returns:
    (variables with the new host 'batch_stats', number of images used).
  Raises:
    ValueError: num_batches < 1, or not one full batch in `batches`.
  """
  if num_batches < 1:
    raise ValueError(f'num_batches={num_batches!r}: BN re-estimation needs >= 1 batch')
  stats = variables.get('batch_stats')
  if not stats:
    return variables, 0
  to_input = eval_input.fn if eval_input is not None else to_minus_one_one
  rng = jax.random.key(seed)

  @jax.jit
  def moments(params, stats, images):
    x = to_input(images)

    def update_fn(filled):
      _, mutated = model.apply({'params': params, 'batch_stats': filled}, x, train=True,
                               mutable=['batch_stats'], rngs={'dropout': rng})
      return mutated['batch_stats']
    return bn_stats.moments(update_fn, stats)

  params = variables['params']
  trees, local = [], 0
  for batch in batches:
    if len(trees) >= num_batches:
      break
    mask = np.asarray(batch['mask'], bool)
    if not mask.all():
      continue
    trees.append(moments(params, stats, jnp.asarray(batch['image'])))
    local = int(mask.size)
  used = len(trees) * local  # images (all processes) in the statistics
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    counts = np.asarray(multihost_utils.process_allgather(np.int64(len(trees))))
    k = int(counts.min())
    trees = trees[:k]
    if k:
      mean = jax.tree.map(lambda *t: sum(t) / k, *trees)
      gathered = jax.device_get(multihost_utils.process_allgather(mean))
      trees = [jax.tree.map(lambda g, p=p: g[p], gathered) for p in range(len(counts))]
    used = k * local * len(counts)
  if not trees:
    raise ValueError('BN re-estimation found no full batch of training images')
  new = jax.device_get(bn_stats.population(trees))
  new = jax.tree.map(lambda v, old: np.asarray(v, np.asarray(old).dtype), new, stats)
  return dict(variables, batch_stats=new), used


# ----------------------------------------------------------------------------- the cache


@dataclasses.dataclass
class Cache:
  """Cached features of one endpoint group for every split (host numpy arrays).

  Attributes:
    endpoints: the endpoint names held (pooled feature names, `_gavg` extras included).
    train: {endpoint: [N * views, D]}: view 0 (the evaluation preprocessing, rows in the
      split's order) then each augmented view (rows shuffled, with their labels).
    train_labels: i32[N * views].
    views: number of train views (1: no augmented view).
    val, val_labels, test, test_labels: the held-out splits ({endpoint: [M, D]}, i32[M]);
      test may be None (a monitor scores the val split only).
    sizes: {'train': N, 'val': M_val, 'test': M_test or 0}.
    dims: {endpoint: D}.
    trunk_input: the trunk's input kind (`tasks.EvalInput.kind`: 'rgb', 'patches', ...).
    seconds, images: extraction wall time and images through the trunk.
  """
  endpoints: tuple
  train: dict
  train_labels: np.ndarray
  views: int
  val: dict
  val_labels: np.ndarray
  test: Optional[dict]
  test_labels: Optional[np.ndarray]
  sizes: dict
  dims: dict
  trunk_input: str = 'rgb'
  seconds: float = 0.0
  images: int = 0
  _device: dict = dataclasses.field(default_factory=dict, repr=False)

  def split(self, split, view0=True):
    """(features {endpoint: host [M, D]}, labels i32[M]) of 'train' (view 0 only unless
    view0=False), 'val' or 'test'."""
    if split == 'train':
      if not view0 or self.views == 1:
        return self.train, self.train_labels
      n = self.sizes['train']
      return {k: v[:n] for k, v in self.train.items()}, self.train_labels[:n]
    if split == 'val':
      return self.val, self.val_labels
    if split == 'test':
      if self.test is None:
        raise ValueError('this cache holds no test split')
      return self.test, self.test_labels
    raise ValueError(f'split {split!r}; allowed: train, val, test')

  def device(self, split, names=None, view0=False):
    """{endpoint: device array} of a split (every train view unless view0), made once
    and kept (evaluators on the same cache share one device copy)."""
    names = sorted(self.endpoints if names is None else names)
    out = {}
    for name in names:
      key = (split, name, view0)
      if key not in self._device:
        self._device[key] = jnp.asarray(self.split(split, view0=view0)[0][name])
      out[name] = self._device[key]
    return out

  def release(self):
    """Drops the device copies (before the next group's cache is built)."""
    self._device.clear()


def _extract_split(fn, jit_fn, variables, source, split, n, batch_size, stop_when_full):
  """Features and labels of the whole split, on every process.

  Each process extracts its own contiguous share (every process runs the same number
  of padded batches), then the shares are gathered in process order: the result is
  the single-process one, whatever the number of processes.
  """
  batches = source.eval_batches(split, batch_size)
  count = jax.process_count()
  x, y = extract(fn, variables, batches, num_examples=None if count > 1 else n,
                 jit_fn=jit_fn, stop_when_full=stop_when_full and count == 1)
  if count > 1:
    x, y = gather_processes(x, y)
    if n is not None:
      x, y = {k: v[:n] for k, v in x.items()}, y[:n]
  return x, y


def _view_batches(source, split, n, batch_size, seed):
  """One augmented view of a split: ceil(n / batch) train-preprocessed batches.

  Rows come shuffled (with their labels); the last batch is masked to n rows total.
  """
  it = source.train_batches(split, batch_size, seed=seed)
  for s in range(math.ceil(n / batch_size)):
    b = dict(next(it))
    local = len(b['mask'])  # this process's rows of the global batch
    first = s * batch_size + jax.process_index() * local
    b['mask'] = b['mask'] & (first + np.arange(local) < n)
    yield b


def build_cache(extract_fn, variables, source, *, train_examples, batch_size, views=1,
                seed=0, splits=('train', 'val', 'test'), val_examples=None,
                capped=False, trunk_input='rgb'):
  """Extracts one endpoint group's features of every split into a `Cache`.

  Args:
    extract_fn: from `make_extract_fn` (its endpoints are the cache's).
    variables: the trunk's variables (BatchNorm statistics as they should be used).
    source: a `ssl_jax.data.sources` source (eval_batches; train_batches for views).
    train_examples: N, the train rows (the first N of the split).
    batch_size: images per extraction batch.
    views: 1 + the number of augmented train views (train preprocessing, seeds
      seed + 1000 * v).
    seed: seed of the augmented views.
    splits: the splits to extract ('test' may be left out).
    val_examples: keep only the first M val rows (None: all).
    capped: train_examples is smaller than the split (stop reading at N rows).
    trunk_input: recorded in the cache.
  Returns:
    a `Cache`.
  """
  jit_fn = jax.jit(extract_fn)
  t = time.perf_counter()
  n = train_examples
  train_x, train_y = _extract_split(extract_fn, jit_fn, variables, source, 'train', n,
                                    batch_size, capped)
  views_x, views_y = [train_x], [train_y]
  for v in range(1, views):
    batches = _view_batches(source, 'train', n, batch_size, seed=seed + 1000 * v)
    if jax.process_count() > 1:
      x, y = gather_processes(*extract(extract_fn, variables, batches, jit_fn=jit_fn))
    else:
      x, y = extract(extract_fn, variables, batches, num_examples=n, jit_fn=jit_fn)
    views_x.append(x)
    views_y.append(y)
  held = {}
  for split in ('val', 'test'):
    if split in splits:
      limit = val_examples if split == 'val' else None
      held[split] = _extract_split(extract_fn, jit_fn, variables, source, split, limit,
                                   batch_size, limit is not None)
  names = sorted(train_x)
  if views > 1:
    train = {k: np.concatenate([vx[k] for vx in views_x]) for k in names}
    labels = np.concatenate(views_y)
  else:
    train, labels = train_x, train_y
  val_x, val_y = held['val']
  test_x, test_y = held.get('test', (None, None))
  seconds = time.perf_counter() - t
  images = n * views + len(val_y) + (0 if test_y is None else len(test_y))
  logging.info('extracted %s for %d images in %.1fs', names, images, seconds)
  return Cache(endpoints=tuple(names), train=train, train_labels=labels, views=views,
               val=val_x, val_labels=val_y, test=test_x, test_labels=test_y,
               sizes={'train': n, 'val': len(val_y),
                      'test': 0 if test_y is None else len(test_y)},
               dims={k: int(v.shape[1]) for k, v in train.items()},
               trunk_input=trunk_input, seconds=seconds, images=images)
