"""tf.data input pipelines: TFDS datasets and classic ImageNet TFRecords.

`get_dataset(config, 'train' | 'val' | 'test', train=...)` returns an iterator
of per-host numpy batches

  {'image': uint8[b, H, W, 3], 'label': int32[b], 'mask': bool[b]}

with b = global batch / jax.process_count(). Training batches are shuffled,
repeated forever and all real (mask True). Evaluation batches make one pass in
a fixed order; the last batch is padded with zero images (mask False), and
every host yields the same number of batches, so each example counts exactly
once and no host waits for another.

Split names map through config.data.{train,val,test}_split (TFDS split strings
such as 'train[:45000]'); each host reads its own share
(`tfds.split_for_jax_process`). Missing datasets or splits raise `DatasetError`
naming dataset, split and data_dir when the pipeline is built, before anything
is compiled. An example that fails to decode or preprocess raises `DatasetError`
naming it, or, with config.data.skip_decode_errors, is skipped, counted and
logged.

config.data.subset (ssl_jax.data.axes: a nested static subset of the train split by
count, fraction or per class) applies to every pass over the 'train' split, training
and evaluation: the split is read in its canonical order (no file shuffling; the
example shuffle buffer still shuffles) and filtered to the subset's positions, the
same positions `axes.apply` takes from `load_arrays`' arrays, so both sources see the
same images. `load_arrays` itself returns the whole split (axes.apply selects).
config.data.pool needs arrays (data.source='in_memory'); `load_split_arrays` loads its
datasets.
"""
import math
import re
import time
from typing import Dict, Iterator, Optional, Tuple

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import imagenet_tfrecords
from input_pipeline import preprocess
from ssl_jax.data import axes

SPLIT_NAMES = ('train', 'val', 'test')
TFRECORDS_NAME = 'imagenet_tfrecords'
_POS = '_pos'


class DatasetError(ValueError):
  """A dataset, split or example the pipeline cannot use."""


# ----------------------------------------------------------------------------
# Sources: the raw examples of one split for one host.


def _data_dir_str(data_dir):
  return data_dir or f'{tfds.core.constants.DATA_DIR} (TFDS default)'


class _TFDSSource:
  """A prepared TFDS split, read with download=False and images undecoded."""

  def __init__(self, name, data_dir, split, *, process_index, process_count):
    self.name, self.data_dir, self.split = name, data_dir, split
    self.process_index = process_index
    where = f'(data_dir {_data_dir_str(data_dir)})'
    try:
      self._builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise DatasetError(
          f'Dataset {name!r} not found {where}: neither a registered TFDS '
          'name nor prepared files there. Prepare it (e.g. '
          '../shared/data/prepare_tfds.py) or fix config.data.name / '
          'config.data.data_dir.') from None
    if not self._builder.is_prepared():
      raise DatasetError(
          f'Dataset {name!r} is not prepared {where}; looked in '
          f'{self._builder.data_dir}. Downloads are disabled (download=False).')
    splits = self._builder.info.splits
    try:
      self.num_examples = splits[split].num_examples
      self.host_counts = [
          splits[tfds.split_for_jax_process(
              split, process_index=i, process_count=process_count)
                ].num_examples for i in range(process_count)]
    except (KeyError, ValueError, AssertionError) as e:
      raise DatasetError(
          f'Dataset {name!r} {where} has no split {split!r}: {e} '
          f'Available splits: {sorted(splits)}.') from None
    self._host_split = (
        tfds.split_for_jax_process(split, process_index=process_index,
                                   process_count=process_count)
        if process_count > 1 else split)
    image = self._builder.info.features['image']
    is_image = isinstance(image, tfds.features.Image)
    # Static (H, W, 3) when every image of the dataset has it, else None.
    self.image_shape = (tuple(image.shape) if is_image and None not in
                        image.shape and image.shape[-1] == 3 else None)
    self._decoders = {'image': tfds.decode.SkipDecoding()} if is_image else None

  def read(self, *, train: bool, seed: int, with_ids: bool = False
           ) -> tf.data.Dataset:
    """{'image': encoded bytes, 'label': int64[, '_id': tfds_id]}, TFDS order.

    Training shuffles the files (seeded, reshuffled every epoch). Ids cost
    string ops per example: only error reports ask for them.
    """
    ds = self._builder.as_dataset(
        split=self._host_split, shuffle_files=train, decoders=self._decoders,
        read_config=tfds.ReadConfig(shuffle_seed=seed, add_tfds_id=with_ids))
    if with_ids:
      return ds.map(lambda ex: {'image': ex['image'], 'label': ex['label'],
                                '_id': ex['tfds_id']})
    return ds.map(lambda ex: {'image': ex['image'], 'label': ex['label']})


def _split_string(config, split_name: str) -> str:
  if split_name not in SPLIT_NAMES:
    raise ValueError(f'split_name must be one of {SPLIT_NAMES}, got '
                     f'{split_name!r}.')
  return config.data[f'{split_name}_split']


def _process(shard_by_process: bool) -> Tuple[int, int]:
  if not shard_by_process:
    return 0, 1
  return jax.process_index(), jax.process_count()


def _make_source(config, split_name, *, shard_by_process=True):
  split = _split_string(config, split_name)
  index, count = _process(shard_by_process)
  name, data_dir = config.data.name, config.data.data_dir
  if name == TFRECORDS_NAME:
    try:
      return imagenet_tfrecords.TFRecordSource(
          data_dir, split, process_index=index, process_count=count)
    except (ValueError, OSError) as e:
      raise DatasetError(f'Dataset {name!r} split {split!r} ({split_name}) '
                         f'in data_dir {data_dir!r}: {e}') from None
  return _TFDSSource(name, data_dir, split, process_index=index,
                     process_count=count)


def num_examples(config, split_name: str) -> int:
  """Examples in the whole split `split_name` (all hosts), after config.data.subset."""
  source = _make_source(config, split_name, shard_by_process=False)
  members = _subset_members(config, source, split_name)
  return source.num_examples if members is None else int(members.sum())


def _split_labels(config, split_name: str) -> np.ndarray:
  """Labels of the whole split in canonical order (one pass over the records)."""
  source = _make_source(config, split_name, shard_by_process=False)
  ds = source.read(train=False, seed=0).map(lambda ex: ex['label'],
                                            num_parallel_calls=tf.data.AUTOTUNE)
  batches = list(ds.batch(8192).as_numpy_iterator())
  return (np.concatenate(batches) if batches else np.zeros(0)).astype(np.int64)


def _subset_members(config, source, split_name: str) -> Optional[np.ndarray]:
  """bool[N] over the whole split: the positions config.data.subset keeps (None: all).

  Only the 'train' split is subset (ssl_jax.data.axes: nested, seeded, static).
  """
  if split_name != 'train' or not axes.subset_active(config.data):
    return None
  axes.validate(config)
  if config.data.get('skip_decode_errors', False):
    raise ValueError('config.data.subset with config.data.skip_decode_errors=True: a '
                     'skipped image would shift the subset\'s positions; prepare a clean '
                     'split or use data.source=\'in_memory\'')
  settings = axes.subset_of(config.data)
  n = source.num_examples
  labels = _split_labels(config, split_name) if settings['per_class'] > 0 else None
  members = np.zeros(n, bool)
  members[axes.subset_positions(settings, n, labels)] = True
  return members


def load_split_arrays(config, dataset: str, split: str, *, pp: str = 'decode'
                      ) -> Tuple[np.ndarray, np.ndarray]:
  """One TFDS split of any dataset decoded into memory (a pool's datasets).

  Args:
    config: the job config (data.data_dir, seed).
    dataset: TFDS name; split: TFDS split string (e.g. 'train[:8469]').
    pp: preprocessing (default 'decode': the native size; use a fixed-size op for
      datasets whose images differ in size).
  Returns:
    (uint8[N, H, W, 3], int32[N]) in TFDS order, the whole split (no subset).
  """
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.data.name = dataset
    cfg.data.train_split = split
  return load_arrays(cfg, 'train', pp=pp)


def num_classes(config) -> Optional[int]:
  """Classes of the dataset's label feature (TFDS metadata), or None if unknown.

  The classic ImageNet TFRecords have 1,000 (labels 1..1000 on disk, 0..999 here).
  """
  if config.data.name == TFRECORDS_NAME:
    return 1000
  source = _make_source(config, 'train', shard_by_process=False)
  label = source._builder.info.features['label']  # pylint: disable=protected-access
  return getattr(label, 'num_classes', None)


def check_dataset(config) -> Dict[str, int]:
  """Checks that the three splits exist; returns {'train'|'val'|'test': size}.

  Raises DatasetError naming dataset, split and data_dir otherwise. Cheap: it
  reads metadata only (or counts TFRecords of a small imagenet_tfrecords dir).
  """
  sizes = {s: num_examples(config, s) for s in SPLIT_NAMES}
  empty = [s for s, n in sizes.items() if n == 0]
  if empty:
    raise DatasetError(
        f'Dataset {config.data.name!r} (data_dir '
        f'{_data_dir_str(config.data.data_dir)}): splits {empty} are empty: '
        + ', '.join(f'{s}={_split_string(config, s)!r}' for s in empty))
  return sizes


# ----------------------------------------------------------------------------
# Pipelines.


def default_pp(config) -> str:
  """Decode and bring to the dataset's native size (a no-op when it is)."""
  return f'decode|resize({config.data.image_size})'


def _pp_spec(config, train: bool, pp: Optional[str] = None) -> str:
  spec = pp if pp is not None else (
      config.input.pp_train if train else config.input.pp_eval)
  spec = spec or default_pp(config)
  ops = preprocess.parse_spec(spec)  # Unknown ops fail here, early.
  if not ops or ops[0][0] != 'decode':  # Images are stored encoded.
    spec = 'decode|' + spec
  return spec


def _base_seed(config, process_index: int, train: bool) -> tf.Tensor:
  return tf.constant([config.seed, 2 * process_index + int(not train)],
                     tf.int64)


def _example_fn(spec, *, train, base_seed, image_shape=None):
  """(position, raw example) -> {'image', 'label': int32, '_pos'}.

  image_shape: static shape to assert on the output (None: as traced).
  """
  pp_fn = preprocess.get_preprocess_fn(spec, train=train)
  def fn(pos, ex):
    out = pp_fn({
        'image': ex['image'],
        preprocess.SEED_KEY: tf.random.experimental.stateless_fold_in(
            base_seed, pos)})
    image = out['image']
    if image_shape is not None:
      image = tf.ensure_shape(image, image_shape)
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32), _POS: pos}
  return fn


def _scan_failures(source, spec, *, train, base_seed, first_pos, first_only,
                   time_limit_s=300.0):
  """Indices (in this host's read order) of examples that fail `spec`.

  Returns (indices, complete): complete is False when the time limit cut the
  scan short. Seeds are those of an eval pass (position first_pos + index).
  """
  fn = _example_fn(spec, train=train, base_seed=base_seed)
  def probe(p, ex):
    # A value (not a shape, which may be static) keeps every op alive.
    image = fn(p + first_pos, ex)['image']
    return p, tf.reduce_sum(tf.cast(image[0, 0], tf.int32))
  ds = (source.read(train=False, seed=0).enumerate()
        .map(probe, num_parallel_calls=tf.data.AUTOTUNE)
        .ignore_errors().map(lambda p, _: p).batch(4096))
  failures, last, start = [], -1, time.time()
  for pos in ds.as_numpy_iterator():
    expected = np.arange(last + 1, pos[-1] + 1)
    failures.extend(np.setdiff1d(expected, pos).tolist())
    last = int(pos[-1])
    if first_only and failures:
      return failures[:1], True
    if time.time() - start > time_limit_s:
      return failures, False
  failures.extend(range(last + 1, source.host_counts[source.process_index]))
  return failures[:1] if first_only else failures, True


def _describe_example(source, spec, *, train, base_seed, first_pos,
                      pos) -> str:
  """Names example `pos` of the host's read order and re-runs it eagerly."""
  ex = next(iter(source.read(train=False, seed=0, with_ids=True)
                 .skip(pos).take(1)))
  ident = ex['_id'].numpy().decode('utf-8', 'replace')
  try:
    _example_fn(spec, train=train, base_seed=base_seed)(
        tf.constant(first_pos + pos, tf.int64), ex)
    reason = 'fails only inside the pipeline'
  except tf.errors.OpError as e:
    reason = _clean(e.message)
  return f'example {ident!r} (position {pos} of this host\'s share): {reason}'


def _clean(message: str) -> str:
  """The informative part of a TF runtime error message."""
  first = message.strip().splitlines()[0]
  first = re.sub(r'\{\{[^}]*\}\}\s*', '', first)
  first = re.sub(r'^Error in user-defined function .*? with iterator: \S+: ',
                 '', first)
  return re.sub(r'\s*name:\s*$', '', first)


class BatchIterator(Iterator[Dict[str, np.ndarray]]):
  """Iterator of numpy batches with bookkeeping.

  Attributes:
    batch_size: the per-host batch size b.
    num_batches: batches in one evaluation pass (None for training).
    num_examples: examples this host reads per evaluation pass (None for
      training); every one is yielded once with mask True unless skipped.
    skipped: examples skipped so far (config.data.skip_decode_errors).
  """

  def __init__(self, ds, *, what, batch_size, num_batches, num_examples,
               first_pos, skip_errors, diagnose, skipped=0):
    self.batch_size = batch_size
    self.num_batches = num_batches
    self.num_examples = num_examples
    self.element_spec = ds.element_spec
    self.skipped = skipped
    self._what = what
    self._skip_errors = skip_errors
    self._diagnose = diagnose
    self._last_pos = first_pos - 1
    self._end_pos = first_pos + (num_examples or 0)
    self._it = ds.as_numpy_iterator()

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    try:
      batch = next(self._it)
    except StopIteration:
      if self._skip_errors and self.num_examples is not None:
        # Failures after the last real example leave no gap to see.
        self._count(self._end_pos - 1 - self._last_pos)
        self._last_pos = self._end_pos - 1
      raise
    except tf.errors.OpError as e:
      try:
        detail = self._diagnose(e)
      except Exception as d:  # pylint: disable=broad-except
        detail = f'{_clean(e.message)} (naming the example failed: {d!r})'
      raise DatasetError(f'{self._what}: {detail}') from e
    pos = batch.pop(_POS)
    real = pos[pos >= 0]
    if real.size:
      # Positions arrive in order (deterministic map), so a gap is a skip.
      self._count(int(real[-1] - self._last_pos) - real.size)
      self._last_pos = int(real[-1])
    return batch

  def _count(self, n):
    if n > 0:
      self.skipped += n
      logging.warning('%s: skipped %d examples that failed to decode or '
                      'preprocess (%d so far).',
                      self._what, n, self.skipped)


def _options() -> tf.data.Options:
  opts = tf.data.Options()
  opts.deterministic = True  # Same batches for the same seed.
  opts.threading.max_intra_op_parallelism = 1  # Parallelism is across examples.
  opts.experimental_optimization.map_parallelization = True
  return opts


def get_dataset(config, split_name: str, *, train: bool,
                batch_size: Optional[int] = None, shard_by_process: bool = True,
                pp: Optional[str] = None) -> BatchIterator:
  """Per-host batches of `split_name` ('train' | 'val' | 'test').

  Args:
    config: the job config (config.data.*, config.input.*, config.seed,
      config.batch_size / config.eval_batch_size).
    split_name: 'train', 'val' or 'test' (mapped through config.data.*_split).
    train: True: shuffled, repeated, config.input.pp_train, full batches.
      False: one ordered pass, config.input.pp_eval, padded last batch.
    batch_size: global batch; defaults to config.batch_size (train) or
      config.eval_batch_size (eval). Must divide by jax.process_count().
    shard_by_process: each host reads its share (False: the whole split).
    pp: preprocessing spec overriding the config's.

  Returns:
    A BatchIterator of {'image': uint8[b, H, W, 3], 'label': int32[b],
    'mask': bool[b]}, b = batch_size / jax.process_count().
  """
  global_batch = batch_size or (config.batch_size if train
                                else config.eval_batch_size)
  count = jax.process_count()
  if global_batch % count:
    raise ValueError(f'Batch size {global_batch} does not divide by '
                     f'{count} processes.')
  return _make_iterator(config, split_name, train=train,
                        local_batch=global_batch // count,
                        shard_by_process=shard_by_process, pp=pp, pad=True)


def _make_iterator(config, split_name, *, train, local_batch, shard_by_process,
                   pp, pad, subset=True) -> BatchIterator:
  """get_dataset's body; pad=False leaves the last eval batch partial; subset=False
  reads the whole split whatever config.data.subset says (load_arrays)."""
  source = _make_source(config, split_name, shard_by_process=shard_by_process)
  index = source.process_index
  members = _subset_members(config, source, split_name) if subset else None
  # (Counted only when needed: a multi-host TFRecord source scans its files.)
  host_counts = list(source.host_counts) if (members is not None or not train) else None
  host_start = sum(host_counts[:index]) if host_counts else 0
  if members is not None:  # per-host shares of the subset
    bounds = np.concatenate([[0], np.cumsum(host_counts)])
    host_counts = [int(members[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])]
  spec = _pp_spec(config, train, pp)
  if train:
    base_seed = _base_seed(config, index, train)
    first_pos = 0
  else:
    # Positions in the whole split: eval randomness (to_gray) is the same for
    # any number of hosts (host shares are contiguous, in order).
    base_seed = _base_seed(config, 0, train)
    first_pos = sum(host_counts[:index])
  skip_errors = bool(config.data.get('skip_decode_errors', False))
  what = (f'Dataset {config.data.name!r} split {source.split!r} '
          f'({split_name}, data_dir {_data_dir_str(config.data.data_dir)})')

  ds, host_count, skipped = _examples(
      config, source, spec, train=train, base_seed=base_seed,
      first_pos=first_pos, skip_errors=skip_errors, what=what,
      members=members, host_start=host_start,
      host_count=host_counts[index] if host_counts else None)
  if train:
    ds = ds.batch(local_batch, drop_remainder=True)
    ds = ds.map(lambda b: {**b, 'mask': tf.ones([local_batch], tf.bool)})
    num_batches = host_count = None
  elif not pad:
    ds = ds.batch(local_batch)
    ds = ds.map(lambda b: {**b, 'mask': tf.ones_like(b['label'], tf.bool)})
    num_batches = math.ceil(host_count / local_batch)
  else:
    # Same number of batches on every host: the largest share decides.
    num_batches = math.ceil(max(host_counts) / local_batch)
    ds = _pad(ds, num_batches * local_batch).batch(local_batch,
                                                   drop_remainder=True)
  ds = ds.prefetch(config.input.get('prefetch', 2)).with_options(_options())

  def diagnose(error):
    failures, complete = _scan_failures(
        source, spec, train=train, base_seed=base_seed, first_pos=first_pos,
        first_only=True)
    if failures:
      return (_describe_example(source, spec, train=train, base_seed=base_seed,
                                first_pos=first_pos, pos=failures[0])
              + ' (config.data.skip_decode_errors=True skips and counts '
              'failing examples).')
    scanned = 'scanned this host\'s share' if complete else 'scan timed out'
    hint = ''
    if 'different shapes' in error.message:
      hint = (f' Preprocessing {spec!r} gives images of different sizes: end '
              'it with an op of fixed output size (resize, crop, ...).')
    return (f'{type(error).__name__}: {_clean(error.message)} '
            f'(no failing example found: {scanned}).{hint}')

  return BatchIterator(ds, what=what, batch_size=local_batch,
                       num_batches=num_batches, num_examples=host_count,
                       first_pos=first_pos, skip_errors=skip_errors,
                       diagnose=diagnose, skipped=skipped)


def _examples(config, source, spec, *, train, base_seed, first_pos,
              skip_errors, what, members=None, host_start=0, host_count=None):
  """Preprocessed examples {'image', 'label', '_pos'}, before batching.

  members: bool[N] over the whole split (a subset: config.data.subset) or None;
  host_start: the whole-split position of this host's first example; host_count:
  the examples this host reads per eval pass.
  Returns (dataset, examples this host reads per eval pass (None for
  training), examples already known to be skipped).
  """
  seed = int(config.seed) + source.process_index
  if members is None:
    ds = source.read(train=train, seed=seed)
  else:
    # Canonical order (no file shuffling): positions are those of load_arrays.
    keep = tf.constant(members)
    ds = (source.read(train=False, seed=seed).enumerate(host_start)
          .filter(lambda i, ex: tf.gather(keep, i)).map(lambda i, ex: ex))
  # Eval only: a multi-host TFRecord source would scan its files for counts.
  host_count = None if train else host_count
  skipped = 0
  if config.input.get('cache', False):
    # Decode once into memory (small datasets). The full spec still runs
    # each epoch: its `decode` passes decoded images through.
    ds = ds.map(preprocess.get_op('decode'),
                num_parallel_calls=tf.data.AUTOTUNE)
    if skip_errors:
      # Positions after the cache no longer show decode failures: count now.
      ds = ds.ignore_errors()
      skipped = len(_scan_failures(source, 'decode', train=train,
                                   base_seed=base_seed, first_pos=first_pos,
                                   first_only=False)[0])
      if host_count is not None:
        host_count -= skipped
      if skipped:
        logging.warning('%s: skipped %d undecodable examples.', what, skipped)
    ds = ds.cache()
  if train:
    ds = ds.shuffle(config.input.shuffle_buffer, seed=seed,
                    reshuffle_each_iteration=True).repeat()
  fixed = getattr(source, 'image_shape', None)
  if not all(op in preprocess.SIZE_PRESERVING_OPS
             for op, _, _ in preprocess.parse_spec(spec)):
    fixed = None
  ds = ds.enumerate(first_pos).map(
      _example_fn(spec, train=train, base_seed=base_seed, image_shape=fixed),
      num_parallel_calls=tf.data.AUTOTUNE)
  if skip_errors:
    ds = ds.ignore_errors()
  if not ds.element_spec['image'].shape.is_fully_defined():
    # Fine if every image has the same size (e.g. a 224-px TFRecord set with
    # 'decode'); otherwise batching fails on the first batch, named then.
    logging.info('%s: preprocessing %r gives images of shape %s.', what, spec,
                 ds.element_spec['image'].shape)
  return ds, host_count, skipped


def _pad(ds, n):
  """Adds 'mask' and pads `ds` with zero examples (mask False) to n elements."""
  ds = ds.map(lambda ex: {**ex, 'mask': tf.constant(True)})
  def as_pad(ex):
    return {'image': tf.zeros_like(ex['image']),
            'label': tf.zeros_like(ex['label']),
            _POS: tf.constant(-1, tf.int64), 'mask': tf.constant(False)}
  shape = ds.element_spec['image'].shape
  if shape.is_fully_defined():
    pads = tf.data.Dataset.from_tensors(as_pad({
        'image': tf.zeros(shape, tf.uint8), 'label': tf.constant(0, tf.int32)}))
  else:  # The first image's size (an empty share then yields no batches).
    pads = ds.take(1).map(as_pad)
  return ds.concatenate(pads.repeat()).take(n)


def load_arrays(config, split_name: str, *, pp: Optional[str] = None,
                shard_by_process: bool = False
                ) -> Tuple[np.ndarray, np.ndarray]:
  """Decodes a whole (small) split into memory, in TFDS order.

  For the device-resident source: augmentation then happens in JAX. The whole
  split, whatever config.data.subset says (ssl_jax.data.axes.apply selects).

  Args:
    config: the job config.
    split_name: 'train', 'val' or 'test'.
    pp: preprocessing spec; default decode + resize to config.data.image_size
      (a no-op at the native size). Use only deterministic ops.
    shard_by_process: load only this host's share (default: the whole split).

  Returns:
    (images uint8[N, H, W, 3], labels int32[N]).
  """
  it = _make_iterator(config, split_name, train=False, local_batch=1024,
                      shard_by_process=shard_by_process,
                      pp=pp or default_pp(config), pad=False, subset=False)
  batches = list(it)
  if not batches:
    shape = it.element_spec['image'].shape[1:]
    return (np.zeros((0, *[d or 0 for d in shape]), np.uint8),
            np.zeros((0,), np.int32))
  return (np.concatenate([b['image'] for b in batches]),
          np.concatenate([b['label'] for b in batches]))


def encoded_split(config, dataset: str, split: str) -> Tuple[list, np.ndarray]:
  """One TFDS split's encoded images (bytes, as stored) and labels, in TFDS order."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.data.name = dataset
    cfg.data.train_split = split
  source = _make_source(cfg, 'train', shard_by_process=False)
  blobs, labels = [], []
  for ex in source.read(train=False, seed=0).as_numpy_iterator():
    blobs.append(bytes(ex['image']))
    labels.append(int(ex['label']))
  return blobs, np.asarray(labels, np.int32)


def prepare_arrays(config, arrays_dir: str, pairs, *, verify: bool = True) -> list:
  """Writes the (dataset, split) pairs for config.data.arrays_dir (ssl_jax.data.axes).

  Each split's JPEG bytes as TFDS holds them (axes.write_prepared); with verify, the
  Pillow decode (axes.read_prepared) is compared image for image with load_arrays'
  TF decode at the native size, and a difference raises RuntimeError naming the split.
  Returns [{dataset, split, path, count, mib, verified}].
  """
  import os  # pylint: disable=g-import-not-at-top
  out = []
  for dataset, split in pairs:
    blobs, labels = encoded_split(config, dataset, split)
    path = axes.write_prepared(arrays_dir, dataset, split, blobs, labels,
                               meta={'what': f'TFDS {dataset} {split}: encoded images'})
    verified = None
    if verify:
      images, got = axes.read_prepared(arrays_dir, dataset, split)
      ref, ref_labels = load_split_arrays(config, dataset, split)
      bad = (images.shape != ref.shape or not np.array_equal(got, ref_labels) or
             int(np.sum(np.any(images != ref, axis=(1, 2, 3)))))
      if bad:
        raise RuntimeError(f'{dataset} {split}: the Pillow decode of the prepared file '
                           f'differs from the TF decode ({bad} images or shapes/labels)')
      verified = 'equal to input_pipeline.load_split_arrays (images and labels)'
    out.append({'dataset': dataset, 'split': split, 'path': path, 'count': len(blobs),
                'mib': os.path.getsize(path) / 2**20, 'verified': verified})
  return out
