"""Where the linear evaluation's images come from: TFDS (tf.data) or arrays in memory.

A source gives, per split name ('train', 'val', 'test'):
  num_examples(split)                     int
  eval_batches(split, batch_size)         one pass, eval preprocessing (central crop),
                                          the last batch zero-padded with mask False
  train_batches(split, batch_size, seed)  endless, shuffled, train preprocessing (random
                                          crop), full batches (mask all True)
Batches are dicts of numpy arrays: image u8[B,H,W,3], label i32[B], mask bool[B].

`TfdsSource` imports `input_pipeline` (TensorFlow) lazily; `ArraySource` needs no
TensorFlow: it applies the preprocessing string's `resize_small(R)` (or `resize(R)`)
and `crop(S)` with numpy/JAX (JAX's half-pixel antialiased resize instead of TF1's
area resize: a small drift) — enough for the GPU machine, which has no TensorFlow.
"""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

_SIZE_OPS = ('resize_small', 'resize', 'crop', 'central_crop')


def parse_geometry(pp):
  """(resize_op, resize_size, crop_size) from 'decode|resize_small(36)|crop(32)'.

  Other ops are rejected: the in-memory source only knows these geometric ones.
  """
  resize_op, resize, crop = None, None, None
  for op in filter(None, (s.strip() for s in (pp or '').split('|'))):
    m = re.fullmatch(r'(\w+)(?:\((\d+)\))?', op)
    if not m or (m.group(1) not in _SIZE_OPS + ('decode',)):
      raise ValueError(f'preprocessing op {op!r} of {pp!r} is not supported by the '
                       f'in-memory source; allowed: decode, resize_small(N), resize(N), '
                       'crop(N)')
    name, arg = m.group(1), m.group(2)
    if name in ('resize_small', 'resize'):
      resize_op, resize = name, int(arg)
    elif name in ('crop', 'central_crop'):
      crop = int(arg)
  return resize_op, resize, crop


def _resize(images, op, size, chunk=2048):
  """uint8 [N,H,W,3] resized (shorter side = size for resize_small, else size x size)."""
  n, h, w, c = images.shape
  if op == 'resize_small':
    s = size / min(h, w)
    oh, ow = int(round(h * s)), int(round(w * s))
  else:
    oh, ow = size, size
  if (oh, ow) == (h, w):
    return images
  fn = jax.jit(lambda x: jnp.clip(jnp.round(jax.image.resize(
      x.astype(jnp.float32), (x.shape[0], oh, ow, c), 'linear', antialias=True)),
                                  0, 255).astype(jnp.uint8))
  return np.concatenate([np.asarray(fn(images[i:i + chunk]))
                         for i in range(0, n, chunk)])


def _pad_batch(images, labels, batch_size):
  m = images.shape[0]
  pad = batch_size - m
  mask = np.arange(batch_size) < m
  if pad:
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
  return {'image': images, 'label': labels.astype(np.int32), 'mask': mask}


class ArraySource:
  """Splits held as uint8 arrays; no TensorFlow.

  Args:
    arrays: {split: (u8[N,H,W,3], int[N])} for 'train', 'val', 'test'.
    pp_train, pp_eval: preprocessing strings (only decode/resize_small/resize/crop).
  """

  def __init__(self, arrays, pp_train='', pp_eval=''):
    self._raw = {k: (np.asarray(v[0]), np.asarray(v[1], np.int32)) for k, v in arrays.items()}
    self._geom = {True: parse_geometry(pp_train), False: parse_geometry(pp_eval)}
    self._resized = {}

  def num_examples(self, split):
    return int(self._raw[split][1].shape[0])

  def _images(self, split, train):
    op, size, _ = self._geom[train]
    key = (split, op, size)
    if key not in self._resized:
      images = self._raw[split][0]
      self._resized[key] = images if op is None else _resize(images, op, size)
    return self._resized[key]

  def _crop(self, images, train, rng):
    crop = self._geom[train][2]
    if crop is None:
      return images
    n, h, w, _ = images.shape
    if crop > min(h, w):
      raise ValueError(f'crop({crop}) is larger than the {h}x{w} images')
    if not train:
      top, left = (h - crop) // 2, (w - crop) // 2
      return images[:, top:top + crop, left:left + crop]
    tops = rng.randint(0, h - crop + 1, n)
    lefts = rng.randint(0, w - crop + 1, n)
    return np.stack([im[t:t + crop, l:l + crop] for im, t, l in zip(images, tops, lefts)])

  def eval_batches(self, split, batch_size):
    images, labels = self._images(split, False), self._raw[split][1]
    for start in range(0, len(labels), batch_size):
      ims = self._crop(images[start:start + batch_size], False, None)
      yield _pad_batch(ims, labels[start:start + batch_size], batch_size)

  def train_batches(self, split, batch_size, seed=0):
    images, labels = self._images(split, True), self._raw[split][1]
    n = len(labels)
    if batch_size > n:
      raise ValueError(f'batch_size={batch_size} exceeds the {n} {split} examples')
    rng = np.random.RandomState(seed)
    while True:
      perm = rng.permutation(n)
      for s in range(n // batch_size):
        idx = np.sort(perm[s * batch_size:(s + 1) * batch_size])
        yield {'image': self._crop(images[idx], True, rng), 'label': labels[idx],
               'mask': np.ones((batch_size,), bool)}

  def image_shape(self, train=False):
    images = self._images('train', train)
    crop = self._geom[train][2]
    return (crop, crop, 3) if crop else images.shape[1:]


class TfdsSource:
  """The tf.data input pipeline (imports TensorFlow on first use).

  Args:
    config: the linear-eval config (its `data` and `input` sections drive the
      pipeline; `input.pp_train` / `input.pp_eval` are the eval preprocessing).
  """

  def __init__(self, config):
    import input_pipeline  # pylint: disable=g-import-not-at-top
    self._ip = input_pipeline
    self._config = config
    self._sizes = None

  def num_examples(self, split):
    if self._sizes is None:
      self._sizes = {}
    if split not in self._sizes:
      self._sizes[split] = int(self._ip.num_examples(self._config, split))
    return self._sizes[split]

  def eval_batches(self, split, batch_size):
    for b in self._ip.get_dataset(self._config, split, train=False, batch_size=batch_size):
      yield {'image': np.asarray(b['image']), 'label': np.asarray(b['label'], np.int32),
             'mask': np.asarray(b.get('mask', np.ones(len(b['label']), bool)), bool)}

  def train_batches(self, split, batch_size, seed=0):
    config = self._config.copy_and_resolve_references()
    with config.unlocked():
      config.seed = int(seed)
    while True:  # Re-open if the pipeline ever ends (it normally repeats).
      for b in self._ip.get_dataset(config, split, train=True, batch_size=batch_size):
        yield {'image': np.asarray(b['image']), 'label': np.asarray(b['label'], np.int32),
               'mask': np.ones(len(b['label']), bool)}

  def image_shape(self, train=False):
    del train
    b = next(iter(self.eval_batches('val', 1)))
    return b['image'].shape[1:]


def view_batches(source, split, batch_size, seed):
  """One augmented view of a split: ceil(N / batch) train-preprocessed batches.

  Rows come shuffled (with their labels); the last batch is masked to N rows total.
  """
  n = source.num_examples(split)
  it = source.train_batches(split, batch_size, seed)
  for s in range(math.ceil(n / batch_size)):
    b = dict(next(it))
    b['mask'] = b['mask'] & (s * batch_size + np.arange(len(b['mask'])) < n)
    yield b
