"""Where images come from: TFDS through tf.data, or uint8 arrays held in memory.

One interface for pretext training and linear evaluation; the preprocessing string
(config.input.pp_train / pp_eval, `ssl_jax.data.ops`) is the single description of the
augmentation on both sources:

  num_examples(split) -> int                       the whole split (every host)
  eval_batches(split, batch_size)                  this host's share, one ordered pass,
      -> iterator of dict(image u8[b, ...], label i32[b], mask bool[b]) with
      b = batch_size / process_count; every host yields the same number of batches,
      the tail is zero padding with mask False, so every example counts exactly once.
  train_batches(split, batch_size, *, seed, start_step)   endless, shuffled, all real
      -> this host's share of each global batch (numpy), deterministic in (seed, step)
      for arrays.
  device_train_batches(split, batch_size, *, seed, start_step, mesh, host_fn=None)
      -> global batches sharded on the mesh's 'data' axis, for the train step. Arrays:
      the uint8 split lives on the devices and each step gathers and augments its batch
      there (no host work, no TensorFlow). TFDS: host batches, `host_fn(batch, step)`
      (the host placement of the pretext stage), then `parallel.global_batch`.
  image_shape(train) -> shape of one preprocessed example ((V,) H, W, C).

`ArraySource` needs no TensorFlow (the GPU machine has none); `TfdsSource` imports
`input_pipeline` (TensorFlow) lazily. `make_source(config)` picks one from
config.data.source: 'tfds', 'in_memory' (a TFDS split decoded once into arrays) or
'synthetic' (random uint8 images).
"""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import parallel
from ssl_jax.data import ops

SPLITS = ('train', 'val', 'test')
SOURCES = ('tfds', 'in_memory', 'synthetic')


def dummy_batch(image_shape, n=2):
  """A zero uint8 batch of n examples of `image_shape` ((V,) H, W, C): image, label, mask."""
  return {'image': jnp.zeros((n,) + tuple(image_shape), jnp.uint8),
          'label': jnp.zeros((n,), jnp.int32), 'mask': jnp.ones((n,), bool)}


def host_share(n, process_index, process_count):
  """[start, stop) of this host's contiguous share of n examples (sizes differ by <= 1)."""
  base, extra = divmod(n, process_count)
  start = process_index * base + min(process_index, extra)
  return start, start + base + (1 if process_index < extra else 0)


def _pad(images, labels, batch_size):
  m = images.shape[0]
  pad = batch_size - m
  mask = np.arange(batch_size) < m
  if pad:
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
  return {'image': images, 'label': labels.astype(np.int32), 'mask': mask}


def _local_batch(batch_size):
  count = jax.process_count()
  if batch_size % count:
    raise ValueError(f'batch size {batch_size} does not divide by {count} processes')
  return batch_size // count


class ArraySource:
  """Splits held as uint8 arrays; preprocessing with the JAX ops; no TensorFlow.

  Args:
    arrays: {split: (u8[N, H, W, C], int[N])}.
    pp_train, pp_eval: preprocessing strings ('' = none: the stored images as they are).
    seed: seed of the evaluation preprocessing's random ops (e.g. to_gray(0.66)).
    device_cache: a dict shared by sources over the same arrays (a task set's members):
      the training split is uploaded to the devices once for all of them.
  """
  name = 'arrays'

  def __init__(self, arrays, pp_train='', pp_eval='', seed=0, device_cache=None):
    self._raw = {}
    for k, (images, labels) in arrays.items():
      images = np.asarray(images)
      if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f'in-memory split {k!r}: images must be uint8 [N, H, W, C], got '
                         f'{images.dtype} {images.shape}')
      self._raw[k] = (images, np.asarray(labels, np.int32))
    self.pp = {True: pp_train or '', False: pp_eval or ''}
    # Host-only ops (jpeg: JAX has no codec) at the head of the training string run
    # once on the stored training images (a corrupted copy); evaluation stays clean.
    self._host_pp, self.pp[True] = ops.split_host_ops(self.pp[True])
    self._corrupted = {}
    ops.check_spec(self.pp[True], train=True)
    ops.check_spec(self.pp[False], train=False)
    self._seed = seed
    self._fns = {}
    self._device = {} if device_cache is None else device_cache

  def _split(self, split):
    if split not in self._raw:
      raise ValueError(f'split {split!r} is not among the in-memory splits {sorted(self._raw)}')
    return self._raw[split]

  def _train_split(self, split):
    """The split as training reads it: with the host-only ops applied once."""
    images, labels = self._split(split)
    if not self._host_pp:
      return images, labels
    if split not in self._corrupted:
      self._corrupted[split] = ops.apply_host_ops(images, self._host_pp)
    return self._corrupted[split], labels

  def num_examples(self, split):
    return int(self._split(split)[1].shape[0])

  def num_classes(self):
    """1 + the largest label of any split (the classes the labels need)."""
    return int(max((int(l.max()) for _, l in self._raw.values() if l.size), default=-1)) + 1

  def image_shape(self, train=False):
    images = next(iter(self._raw.values()))[0]
    shape = images.shape[1:]
    if train and self._host_pp:
      shape = ops.output_shape(self._host_pp, shape, train=True, host=True)
    return tuple(ops.output_shape(self.pp[train], shape, train=train))

  def _fn(self, train):
    if train not in self._fns:
      self._fns[train] = jax.jit(ops.make_batch_fn(self.pp[train], train=train))
    return self._fns[train]

  def eval_batches(self, split, batch_size):
    images, labels = self._split(split)
    local = _local_batch(batch_size)
    n, count = len(labels), jax.process_count()
    start, stop = host_share(n, jax.process_index(), count)
    num_batches = math.ceil(math.ceil(n / count) / local) if n else 0
    key = jax.random.key(self._seed + 1)
    fn = self._fn(False)
    for i in range(num_batches):
      lo, hi = min(start + i * local, stop), min(start + (i + 1) * local, stop)
      batch = _pad(images[lo:hi], labels[lo:hi], local)
      # Keyed by the global position of the batch's first example: the same images
      # get the same random eval ops whatever the batch size divides into.
      with jax.transfer_guard('allow'):
        batch['image'] = np.asarray(fn(jax.random.fold_in(key, lo), batch['image']))
      yield batch

  def _order(self, n, seed, epoch):
    return np.random.default_rng([seed, epoch]).permutation(n)

  def train_batches(self, split, batch_size, *, seed=0, start_step=0):
    images, labels = self._train_split(split)
    n = len(labels)
    if batch_size > n:
      raise ValueError(f'batch_size={batch_size} exceeds the {n} {split} examples')
    local = _local_batch(batch_size)
    steps_per_epoch = n // batch_size
    first = jax.process_index() * local
    fn = self._fn(True)
    key = jax.random.key(seed)
    step = start_step
    while True:
      epoch, index = divmod(step, steps_per_epoch)
      idx = self._order(n, seed, epoch)[index * batch_size:(index + 1) * batch_size]
      idx = idx[first:first + local]
      with jax.transfer_guard('allow'):
        ims = np.asarray(fn(jax.random.fold_in(jax.random.fold_in(key, step), first),
                            images[idx]))
      yield {'image': ims, 'label': labels[idx], 'mask': np.ones((local,), bool)}
      step += 1

  def device_train_batches(self, split, batch_size, *, seed=0, start_step=0, mesh,
                           host_fn=None):
    if host_fn is not None:
      raise ValueError('the host placement of the pretext stage needs the tfds source: '
                       'in-memory batches are made on the device')
    from ssl_jax.data import inmemory  # pylint: disable=g-import-not-at-top
    images, labels = self._train_split(split)
    key = (split, id(images), id(mesh))
    if key not in self._device:  # Uploaded now, not lazily inside the guarded train loop.
      self._device[key] = (images, inmemory.upload(mesh, images, labels))
    # (the host array is kept with its device copy: its id stays unique while cached)
    stream = inmemory.InMemoryTrain(mesh, images, labels, batch_size, seed, self.pp[True],
                                    device_arrays=self._device[key][1])
    return map(stream.batch, itertools.count(start_step))


class TfdsSource:
  """The tf.data input pipeline over config.data (imports TensorFlow on first use).

  Args:
    config: a job config; its `data` and `input` sections drive the pipeline
      (`input.pp_train` / `input.pp_eval`).
  """
  name = 'tfds'

  def __init__(self, config):
    import input_pipeline  # pylint: disable=g-import-not-at-top
    self._ip = input_pipeline
    self._config = config
    self._sizes = {}

  def check(self):
    """{'train'|'val'|'test': size}; DatasetError naming a missing dataset or split."""
    self._sizes.update(self._ip.check_dataset(self._config))
    return dict(self._sizes)

  def num_classes(self):
    """The label feature's classes from the dataset's metadata (None if unknown)."""
    return self._ip.num_classes(self._config)

  def num_examples(self, split):
    if split not in self._sizes:
      self._sizes[split] = int(self._ip.num_examples(self._config, split))
    return self._sizes[split]

  def image_shape(self, train=False):
    c = self._config
    size = c.data.image_size
    return tuple(ops.output_shape(c.input.pp_train if train else c.input.pp_eval,
                                  (size, size, 3), train=train, host=True))

  def eval_batches(self, split, batch_size):
    for b in self._ip.get_dataset(self._config, split, train=False, batch_size=batch_size):
      yield {'image': np.asarray(b['image']), 'label': np.asarray(b['label'], np.int32),
             'mask': np.asarray(b['mask'], bool)}

  def train_batches(self, split, batch_size, *, seed=0, start_step=0):
    config = self._config.copy_and_resolve_references()
    with config.unlocked():
      # A resumed run reshuffles from a new seed rather than replaying the start.
      config.seed = int(seed) + int(start_step)
    while True:  # Re-open if the pipeline ever ends (it normally repeats).
      for b in self._ip.get_dataset(config, split, train=True, batch_size=batch_size):
        yield {'image': np.asarray(b['image']), 'label': np.asarray(b['label'], np.int32),
               'mask': np.ones(len(b['label']), bool)}

  def device_train_batches(self, split, batch_size, *, seed=0, start_step=0, mesh,
                           host_fn=None):
    batches = self.train_batches(split, batch_size, seed=seed, start_step=start_step)

    def one(step, batch):
      return parallel.global_batch(mesh, batch if host_fn is None else host_fn(batch, step))

    return map(one, itertools.count(start_step), batches)


def synthetic_arrays(num_train, num_eval, image_size, num_classes, seed=0):
  """Random uint8 images and labels for 'train', 'val' and 'test' (tests, benchmarks)."""
  rng = np.random.RandomState(seed)
  make = lambda n: (rng.randint(0, 256, (n, image_size, image_size, 3)).astype(np.uint8),
                    rng.randint(0, num_classes, n).astype(np.int32))
  return {'train': make(num_train), 'val': make(num_eval), 'test': make(num_eval)}


def check_labels(config, source):
  """ValueError when the dataset's labels do not fit config.data.num_classes."""
  n = source.num_classes()
  if n is not None and n > config.data.num_classes:
    raise ValueError(
        f'config.data.num_classes={config.data.num_classes} but dataset '
        f'{config.data.name!r} ({source.name} source) has labels 0..{n - 1} ({n} classes); '
        f'set config.data.num_classes={n}')


def make_source(config, arrays=None, splits=SPLITS):
  """The source of config.data.source ('tfds', 'in_memory' or 'synthetic').

  Args:
    config: a job config (data, input, seed, eval_batch_size).
    arrays: {split: (images, labels)} to use instead of loading (in_memory without
      TensorFlow, tests).
    splits: the splits to load for 'in_memory'.
  """
  d = config.data
  if arrays is None and d.source == 'synthetic':
    arrays = synthetic_arrays(d.synthetic_examples, max(config.eval_batch_size, 1),
                              d.image_size, d.num_classes, config.seed)
  if arrays is None and d.source == 'in_memory':
    import input_pipeline  # pylint: disable=g-import-not-at-top
    arrays = {s: input_pipeline.load_arrays(config, s) for s in splits}
  if arrays is not None:
    return ArraySource(arrays, config.input.pp_train, config.input.pp_eval, seed=config.seed)
  if d.source != 'tfds':
    raise ValueError(f'config.data.source={d.source!r}; allowed: {list(SOURCES)}')
  return TfdsSource(config)
