"""Reader for ImageNet TFRecord shards in the classic (slim / inception) layout.

The study read `train-%05d-of-01024` / `validation-%05d-of-00128` files whose
tf.train.Examples hold `image/encoded` (JPEG bytes) and `image/class/label`
(1-based; we subtract 1). `config.data.name = 'imagenet_tfrecords'` selects
this reader and `config.data.data_dir` names the folder of shards.

Split strings (config.data.*_split):
  'train'            every file matching `train-*` (sorted)
  'train{:984}'      a slice of the sorted shards: the study's own split is
                     'train{:984}' (1,231,121 images) / 'train{984:}' (50,046)
  'validation[:37]'  a TFDS-style slice of examples in file order (ints or %)
Both may be combined: 'train{:10}[:50%]'.

Examples come out as {'image': encoded bytes, 'label': int64 (0-based),
'_id': 'file:record filename'}; decoding is the preprocessing's `decode` op.
"""
import functools
import glob
import os
import re
from typing import List, Optional, Tuple

import tensorflow as tf

# Counts of the standard ILSVRC-2012 conversion, so the study's splits need no
# scan of 140 GB: (prefix, number of files, shard slice) -> examples.
_KNOWN_COUNTS = {
    ('train', 1024, (None, None)): 1_281_167,
    ('train', 1024, (None, 984)): 1_231_121,
    ('train', 1024, (984, None)): 50_046,
    ('validation', 128, (None, None)): 50_000,
}

_SPLIT_RE = re.compile(
    r'^(?P<prefix>[\w\-.]+)'
    r'(\{(?P<s0>-?\d*):(?P<s1>-?\d*)\})?'
    r'(\[(?P<e0>-?\d*%?):(?P<e1>-?\d*%?)\])?$')


def _int_or_none(s):
  return int(s) if s not in (None, '') else None


def parse_split(split: str):
  """'train{:984}[:50%]' -> ('train', (None, 984), ('', '50%'))."""
  m = _SPLIT_RE.match(split.replace(' ', ''))
  if not m:
    raise ValueError(
        f'Bad imagenet_tfrecords split {split!r}: expected PREFIX, '
        'PREFIX{a:b} (slice of shards) and/or PREFIX[a:b] (slice of examples, '
        "ints or percents), e.g. 'train{:984}' or 'validation[:37]'.")
  shards = (_int_or_none(m['s0']), _int_or_none(m['s1']))
  examples = (m['e0'] or '', m['e1'] or '')
  return m['prefix'], shards, examples


def _resolve(bound: str, n: int, default: int) -> int:
  if not bound:
    return default
  if bound.endswith('%'):
    # TFDS rounds percent boundaries to the closest example.
    value = round(int(bound[:-1]) * n / 100)
  else:
    value = int(bound)
  if value < 0:
    value += n
  return max(0, min(n, value))


@functools.lru_cache(maxsize=None)
def _count_file(path: str, size: int, mtime: float) -> int:
  del size, mtime  # Cache keys only: a rewritten file is counted again.
  ds = tf.data.TFRecordDataset(path, buffer_size=16 << 20)
  return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def count_records(path: str) -> int:
  st = os.stat(path)
  return _count_file(path, st.st_size, st.st_mtime)


class TFRecordSource:
  """One split of a folder of classic ImageNet TFRecords, for one host.

  Evaluation (and any example slice) gives each host a contiguous, even range
  of examples, as tfds.split_for_jax_process does; that needs per-file record
  counts, read once by scanning the files. Training on whole files with
  several hosts deals the files out instead and needs no scan.

  Attributes:
    num_examples: examples in the whole split (all hosts).
    host_counts: examples each process reads per eval pass, a list over
      processes (computed on first use).
  """

  def __init__(self, data_dir: Optional[str], split: str, *,
               process_index: int = 0, process_count: int = 1):
    self.name = 'imagenet_tfrecords'
    self.data_dir = data_dir
    self.split = split
    if not data_dir:
      raise ValueError('config.data.data_dir must name the folder of '
                       'TFRecord shards for imagenet_tfrecords.')
    prefix, shards, self._examples = parse_split(split)
    all_files = sorted(glob.glob(os.path.join(data_dir, f'{prefix}-*')))
    if not all_files:
      raise FileNotFoundError(
          f"Dataset 'imagenet_tfrecords' split {split!r}: no files "
          f"'{prefix}-*' in data_dir {data_dir!r}.")
    self.files = all_files[slice(*shards)]
    if not self.files:
      raise ValueError(
          f"Dataset 'imagenet_tfrecords' split {split!r}: shard slice "
          f'{shards} selects none of the {len(all_files)} files in '
          f'{data_dir!r}.')
    self.process_index = process_index
    self._process_count = process_count
    self._whole_files = self._examples == ('', '')
    self._known = (_KNOWN_COUNTS.get((prefix, len(all_files), shards))
                   if self._whole_files else None)

  @functools.cached_property
  def _file_counts(self) -> List[int]:
    return [count_records(f) for f in self.files]

  @functools.cached_property
  def _bounds(self) -> List[int]:
    """Host i reads examples [bounds[i], bounds[i + 1]) of the files."""
    total = sum(self._file_counts)
    start = _resolve(self._examples[0], total, 0)
    end = max(start, _resolve(self._examples[1], total, total))
    # The first `n % P` hosts get one more, as tfds.even_splits.
    q, r = divmod(end - start, self._process_count)
    bounds = [start]
    for i in range(self._process_count):
      bounds.append(bounds[-1] + q + (1 if i < r else 0))
    return bounds

  @property
  def num_examples(self) -> int:
    if self._known is not None:
      return self._known
    return self._bounds[-1] - self._bounds[0]

  @property
  def host_counts(self) -> List[int]:
    if self._known is not None and self._process_count == 1:
      return [self._known]
    b = self._bounds
    return [b[i + 1] - b[i] for i in range(self._process_count)]

  def _file_slices(self, train) -> Tuple[List[str], List[int], List[int]]:
    """(file, records to skip, records to take) this host reads."""
    n = len(self.files)
    if self._whole_files and self._process_count == 1:
      return self.files, [0] * n, [-1] * n
    if self._whole_files and train and n >= self._process_count:
      # Deal the files out: no counts needed (140 GB of ImageNet unscanned).
      files = self.files[self.process_index::self._process_count]
      return files, [0] * len(files), [-1] * len(files)
    lo, hi = self._bounds[self.process_index:self.process_index + 2]
    out = ([], [], [])
    offset = 0
    for f, count in zip(self.files, self._file_counts):
      a, b = max(lo, offset), min(hi, offset + count)
      if a < b:
        out[0].append(f)
        out[1].append(a - offset)
        out[2].append(b - a)
      offset += count
    return out

  def read(self, *, train: bool, seed: int, with_ids: bool = False
           ) -> tf.data.Dataset:
    """Raw examples {'image': bytes, 'label': int64[, '_id': string]}.

    Evaluation reads files in order (deterministic order, every example once);
    training shuffles the files (seeded, reshuffled each epoch) and
    interleaves 16 of them.
    """
    files, skips, takes = self._file_slices(train)
    if not files:  # An empty host share (more hosts than examples).
      files, skips, takes = self.files[:1], [0], [0]
    ds = tf.data.Dataset.from_tensor_slices((files, skips, takes))
    if train:
      ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

    def records(path, skip, take):
      name = tf.strings.regex_replace(path, r'^.*/', '')
      return (tf.data.TFRecordDataset(path, buffer_size=8 << 20)
              .enumerate().skip(tf.cast(skip, tf.int64))
              .take(tf.cast(take, tf.int64))
              .map(lambda i, r: (name, i, r)))

    if train:
      ds = ds.interleave(records, cycle_length=min(16, len(files)),
                         block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                         deterministic=True)
    else:
      ds = ds.flat_map(records)

    def parse(name, index, record):
      features = {
          'image/encoded': tf.io.FixedLenFeature([], tf.string),
          'image/class/label': tf.io.FixedLenFeature([], tf.int64),
      }
      if with_ids:
        features['image/filename'] = tf.io.FixedLenFeature([], tf.string, '')
      ex = tf.io.parse_single_example(record, features)
      out = {'image': ex['image/encoded'],
             'label': ex['image/class/label'] - 1}  # 1-based on disk.
      if with_ids:
        out['_id'] = tf.strings.join([name, ':', tf.strings.as_string(index),
                                      ' ', ex['image/filename']])
      return out
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
