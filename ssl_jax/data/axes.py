"""Data axes of the pretraining set (Cole et al. 2022), on uint8 arrays, TF-free.

Two axes change WHICH images a pretext run trains on; the evaluation data is its own
config's and stays clean and whole (the third Cole axis, corruption, is a preprocessing
op: `downsample`, `jpeg`, `salt_pepper` in config.input.pp_train, ssl_jax.data.ops):

  config.data.subset   nested static subsets of the training split
    count=N          the first N of one seeded permutation of the split's positions
    fraction=f       the first round(f * N) of the same permutation
    per_class=K      the first K of each class's own seeded permutation (balanced; needs
                     labels: the label-quantity axis of an evaluation config)
    seed             the subset's own seed (NOT config.seed: the same images in every
                     experiment whatever the run's seed)
    A permutation depends on (split size, seed) only, so a smaller subset is a prefix of
    a larger one: 5k is inside 10k is inside 25k (Cole's "static, nested" subsets,
    protocols.md 1.2). Positions are the split's canonical order (TFDS order without
    file shuffling = `input_pipeline.load_arrays` order); the tf.data path selects the
    same positions, so both sources train on the same images.
  config.data.pool     a pretraining split that mixes datasets (Cole's pooled domains,
                       protocols.md 1.5)
    datasets         TFDS names, e.g. ('cifar10', 'imagenette64'); one name (proportion
                     1) is a single dataset taken the same way (its images resized with
                     `resize`), the cross-domain cell beside a pool
    train_splits     one TFDS split string per dataset (its pretraining split)
    val_splits       one per dataset (the pooled held-out split for pretext evaluation)
    proportions      one per dataset, > 0, summing to 1
    total            images in the pooled train split (-1: as many as config.data's own
                     train split: the same total as a single-domain run)
    val_total        images in the pooled val split (-1: the largest total the val splits
                     can supply in the same proportions)
    image_size       0: config.data.image_size; every image is resized to it
    resize           'area' (TF1 resize_area: an antialiased box mean, exact for integer
                     factors; default) or 'bilinear' (the `resize` op: TF1 legacy
                     bilinear, which aliases when shrinking 2x or more)
    seed             which images of each dataset (nested per dataset, as subsets)
    Counts per dataset: the largest-remainder rounding of total * proportions (they sum to
    total exactly; each is floor or ceil of its share). Dataset i's images are the first
    count_i of its own seeded permutation. Labels are offset so that classes stay
    disjoint (dataset i's label + the classes of datasets 0..i-1): config.data.num_classes
    must cover their sum (the engine's label check names the value).

`apply(config, arrays)` is the one place both axes run on arrays (the in-memory and
synthetic sources; the GPU machine, which has no TensorFlow). The tf.data source reads
config.data.subset itself (input_pipeline.datasets); pools need arrays (validate() says
so for data.source='tfds'). `ensure_keys(config)` adds the two sections (and
data.arrays_dir) with their neutral defaults to a config that lacks them.

Prepared arrays without TensorFlow (config.data.arrays_dir): `write_prepared` stores a
split's images as the JPEG bytes TFDS holds (deflated: CIFAR-10's train[:45000] is about
16 MiB, where its decoded uint8 arrays are 138 MB) with its labels, one file per
(dataset, split string); `read_prepared` decodes them with Pillow (which equals the
project's TF decode, checked when they are written: input_pipeline.datasets.
prepare_arrays). `load_split(config, split)` reads config.data's split from
config.data.arrays_dir when it is set, else through input_pipeline (TensorFlow).
"""
import contextlib
import io
import json
import math
import os
import re
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

SUBSET_DEFAULTS = dict(count=-1, fraction=-1.0, per_class=-1, seed=0)
POOL_DEFAULTS = dict(datasets=(), train_splits=(), val_splits=(), proportions=(), total=-1,
                     val_total=-1, image_size=0, resize='area', seed=0)
RESIZE_METHODS = ('area', 'bilinear')
# Salts of the permutations (numpy SeedSequence entropy): subsets and pools of the same
# seed draw from different streams.
_SUBSET_SALT = 0x5B5E7
_POOL_SALT = 0x9001
_CLASS_SALT = 0xC1A55

Arrays = Tuple[np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------- config


def ensure_keys(config):
  """Adds data.subset / data.pool (and data.arrays_dir = '') with neutral defaults where
  absent; returns config.

  For configs written before configs/common.py carried the sections (and saved
  config.json files); a config that has them is left as it is.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  data = config.data
  for name, defaults in (('subset', SUBSET_DEFAULTS), ('pool', POOL_DEFAULTS)):
    with data.unlocked() if hasattr(data, 'unlocked') else contextlib.nullcontext():
      if name not in data:
        data[name] = ml_collections.ConfigDict(dict(defaults))
      else:
        for k, v in defaults.items():
          if k not in data[name]:
            data[name][k] = v
    with data.unlocked() if hasattr(data, 'unlocked') else contextlib.nullcontext():
      if 'arrays_dir' not in data:
        data.arrays_dir = ''
  return config


def _section(data, name, defaults):
  s = data.get(name) if hasattr(data, 'get') else None
  out = dict(defaults)
  if s is not None:
    out.update({k: s[k] for k in s.keys()})
  return out


def subset_of(data) -> dict:
  """config.data.subset as a plain dict (defaults where keys are absent)."""
  return _section(data, 'subset', SUBSET_DEFAULTS)


def pool_of(data) -> dict:
  """config.data.pool as a plain dict (defaults where keys are absent)."""
  p = _section(data, 'pool', POOL_DEFAULTS)
  for k in ('datasets', 'train_splits', 'val_splits', 'proportions'):
    p[k] = tuple(p[k] or ())
  return p


def subset_active(data) -> bool:
  s = subset_of(data)
  return s['count'] > 0 or s['fraction'] > 0 or s['per_class'] > 0


def pool_active(data) -> bool:
  return bool(pool_of(data)['datasets'])


def _int(value, key, minimum, special=(-1,)):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'config.{key}={value!r} must be an integer')
  if value < minimum and value not in special:
    allowed = ' or '.join([f'>= {minimum}'] + [str(s) for s in special])
    raise ValueError(f'config.{key}={value!r}; allowed: {allowed}')
  return int(value)


def validate(config, *, arrays_given=False):
  """ValueError (one line naming the key, the value and what is allowed) for bad axes.

  Checks config.data.subset and config.data.pool (absent sections are neutral).
  arrays_given: the arrays are handed in (tests, prepared arrays): a pool is then
  allowed under any data.source.
  """
  data = config.data
  s = subset_of(data)
  _int(s['count'], 'data.subset.count', 1)
  _int(s['per_class'], 'data.subset.per_class', 1)
  _int(s['seed'], 'data.subset.seed', 0, ())
  f = s['fraction']
  if isinstance(f, bool) or not isinstance(f, (int, float)) or not (
      f == -1 or 0 < f <= 1):
    raise ValueError(f'config.data.subset.fraction={f!r}; allowed: a number in (0, 1], '
                     'or -1 (off)')
  chosen = [k for k in ('count', 'fraction', 'per_class') if s[k] > 0]
  if len(chosen) > 1:
    raise ValueError(f'config.data.subset sets {" and ".join(chosen)}; set one of count, '
                     'fraction, per_class (the others -1)')
  p = pool_of(data)
  if not p['datasets']:
    return
  n = len(p['datasets'])
  for key in ('train_splits', 'val_splits', 'proportions'):
    if len(p[key]) != n:
      raise ValueError(f'config.data.pool.{key}={p[key]!r} needs one entry per dataset of '
                       f"config.data.pool.datasets={p['datasets']!r} ({n})")
  props = p['proportions']
  if any(isinstance(x, bool) or not isinstance(x, (int, float)) or not x > 0
         for x in props) or abs(sum(props) - 1.0) > 1e-6:
    raise ValueError(f'config.data.pool.proportions={props!r}; allowed: numbers > 0 that '
                     'sum to 1')
  _int(p['total'], 'data.pool.total', 1)
  _int(p['val_total'], 'data.pool.val_total', 1)
  _int(p['image_size'], 'data.pool.image_size', 1, (0,))
  _int(p['seed'], 'data.pool.seed', 0, ())
  if p['resize'] not in RESIZE_METHODS:
    raise ValueError(f"config.data.pool.resize={p['resize']!r}; allowed: "
                     f'{list(RESIZE_METHODS)}')
  if data.get('source', 'tfds') == 'tfds' and not arrays_given:
    raise ValueError("config.data.pool needs config.data.source='in_memory' (the datasets "
                     'are decoded once and mixed as arrays); the tf.data source does not '
                     'mix datasets')


# ----------------------------------------------------------------------------- subsets


def permutation(n: int, seed: int, salt: int = _SUBSET_SALT) -> np.ndarray:
  """The seeded permutation of range(n) whose prefixes are the nested subsets.

  Depends on (n, seed, salt) only (numpy PCG64 seeded with [salt, seed, n]).
  """
  return np.random.default_rng([salt, int(seed), int(n)]).permutation(int(n))


def subset_size(n: int, *, count: int = -1, fraction: float = -1.0) -> int:
  """Examples a count / fraction subset of an n-example split keeps.

  count > 0: count; fraction in (0, 1]: round(fraction * n) (half to even), at least 1.
  Raises ValueError when count > n or neither is set.
  """
  if count > 0:
    if count > n:
      raise ValueError(f'config.data.subset.count={count} exceeds the {n} examples of the '
                       'split')
    return int(count)
  if fraction > 0:
    return max(int(round(fraction * n)), 1)
  raise ValueError('subset_size needs count > 0 or fraction in (0, 1]')


def subset_indices(n: int, *, count: int = -1, fraction: float = -1.0,
                   seed: int = 0) -> np.ndarray:
  """Sorted positions (int64[m]) of the nested static subset of an n-example split.

  The first m = subset_size(...) entries of `permutation(n, seed)`, sorted (the subset
  keeps the split's order). For one (n, seed) every smaller subset is inside every
  larger one.
  """
  m = subset_size(n, count=count, fraction=fraction)
  return np.sort(permutation(n, seed)[:m]).astype(np.int64)


def per_class_indices(labels, per_class: int, seed: int = 0) -> np.ndarray:
  """Sorted positions of a class-balanced nested subset: `per_class` of every class.

  Class c's images are the first per_class of its own seeded permutation of that
  class's positions (seeded with (seed, c)), so K images per class are inside K' > K.
  Raises ValueError naming a class with fewer than per_class examples.
  """
  labels = np.asarray(labels)
  out = []
  for c in np.unique(labels):
    where = np.flatnonzero(labels == c)
    if len(where) < per_class:
      raise ValueError(f'config.data.subset.per_class={per_class}: class {int(c)} has only '
                       f'{len(where)} examples in the split')
    order = np.random.default_rng([_CLASS_SALT, int(seed), int(c), len(where)]
                                  ).permutation(len(where))
    out.append(where[order[:per_class]])
  return np.sort(np.concatenate(out)).astype(np.int64) if out else np.zeros(0, np.int64)


def subset_positions(settings: dict, n: int, labels=None) -> Optional[np.ndarray]:
  """Positions a subset section selects from an n-example split (None: all of them).

  settings: config.data.subset as a dict (`subset_of`); labels int[n] are needed only
  for per_class.
  """
  if settings['per_class'] > 0:
    if labels is None:
      raise ValueError('config.data.subset.per_class needs the split\'s labels')
    return per_class_indices(labels, settings['per_class'], settings['seed'])
  if settings['count'] > 0 or settings['fraction'] > 0:
    return subset_indices(n, count=settings['count'], fraction=settings['fraction'],
                          seed=settings['seed'])
  return None


def select(arrays: Arrays, positions) -> Arrays:
  """(images[positions], labels[positions]); all of them when positions is None."""
  images, labels = arrays
  if positions is None:
    return images, labels
  return np.asarray(images)[positions], np.asarray(labels)[positions]


# ----------------------------------------------------------------------------- pools


def pool_counts(total: int, proportions: Sequence[float]) -> np.ndarray:
  """Images per dataset of a pool of `total`: largest-remainder rounding of total * p.

  int64[len(p)], summing to total exactly; each entry is floor or ceil of total * p_i
  (remainders tied: the earlier dataset gets the extra image). Exact when every
  total * p_i is an integer.
  """
  p = np.asarray(proportions, np.float64)
  p = p / p.sum()
  shares = total * p
  counts = np.floor(shares + 1e-9).astype(np.int64)
  left = int(total - counts.sum())
  order = sorted(range(len(p)), key=lambda i: (-(shares[i] - counts[i]), i))
  for i in order[:left]:
    counts[i] += 1
  return counts


def largest_feasible_total(sizes: Sequence[int], proportions: Sequence[float]) -> int:
  """The largest T with pool_counts(T, p)[i] <= sizes[i] for every i."""
  p = np.asarray(proportions, np.float64) / np.sum(proportions)
  t = int(min(math.floor(n / q + 1e-9) for n, q in zip(sizes, p)))
  while t > 0 and np.any(pool_counts(t, p) > np.asarray(sizes)):
    t -= 1
  return t


def resize_images(images, size: int, method: str = 'area', batch_size: int = 512
                  ) -> np.ndarray:
  """uint8[N, H, W, C] -> uint8[N, size, size, C] (unchanged when already that size).

  method 'area': TF1 resize_area (ssl_jax.data.ops' bit-exact version), rounded half to
  even; 'bilinear': the `resize` op (TF1 legacy bilinear). Runs jitted, in chunks.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f'resize_images: images must be uint8 [N, H, W, C], got '
                     f'{images.dtype} {images.shape}')
  if images.shape[1:3] == (size, size):
    return images
  if method not in RESIZE_METHODS:
    raise ValueError(f'resize method {method!r}; allowed: {list(RESIZE_METHODS)}')
  import jax  # pylint: disable=g-import-not-at-top
  from ssl_jax.data import ops  # pylint: disable=g-import-not-at-top
  if method == 'bilinear':
    fn = jax.jit(ops.make_batch_fn(f'resize({size})', train=False))
    call = lambda x: fn(jax.random.key(0), x)
  else:
    # (ops' own area kernel: the one `downsample` uses, equal to TF's bit for bit.)
    one = lambda im: ops._to_uint8(ops._resize_area(im, size, size))  # pylint: disable=protected-access
    call = jax.jit(jax.vmap(one))
  with jax.transfer_guard('allow'):
    return np.concatenate([np.asarray(call(images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)])


def pool_arrays(components: Sequence[Arrays], proportions: Sequence[float], total: int, *,
                seed: int = 0, num_classes: Optional[Sequence[int]] = None,
                names: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
  """Mixes datasets into one split of `total` images in the stated proportions.

  Args:
    components: per dataset (uint8[N_i, S, S, C], int[N_i]), all of one image shape.
    proportions: per dataset, > 0 (normalised to sum 1).
    total: images in the pool.
    seed: dataset i contributes the first count_i of `permutation(N_i, seed)` (salted
      per pool), sorted: nested in total for one seed.
    num_classes: classes per dataset for the label offsets (default max label + 1).
    names: dataset names for error messages.
  Returns:
    {'images': u8[total, S, S, C], 'labels': i32[total] (dataset i's labels + the classes
    of datasets before it), 'domain': i32[total] (dataset index), 'counts': int64[n],
    'positions': [int64[count_i]] (positions taken from each dataset)}.
  Raises:
    ValueError naming a dataset with too few images or a shape mismatch.
  """
  names = list(names or [f'dataset {i}' for i in range(len(components))])
  counts = pool_counts(total, proportions)
  shapes = {tuple(np.asarray(im).shape[1:]) for im, _ in components}
  if len(shapes) != 1:
    raise ValueError(f'pooled datasets {names} have images of shapes {sorted(shapes)}; '
                     'resize them to one size first (config.data.pool.image_size)')
  if num_classes is None:
    num_classes = [int(np.max(lb)) + 1 if len(lb) else 0 for _, lb in components]
  offsets = np.concatenate([[0], np.cumsum(num_classes)[:-1]]).astype(np.int64)
  images, labels, domain, positions = [], [], [], []
  for i, ((im, lb), c) in enumerate(zip(components, counts)):
    n = len(lb)
    if c > n:
      raise ValueError(f'config.data.pool: {names[i]} has {n} images, the pool of {total} '
                       f'at proportion {proportions[i]:g} needs {int(c)}; lower '
                       'config.data.pool.total (or .val_total)')
    pos = np.sort(permutation(n, seed, _POOL_SALT + i)[:c]).astype(np.int64)
    positions.append(pos)
    images.append(np.asarray(im)[pos])
    labels.append(np.asarray(lb, np.int64)[pos] + offsets[i])
    domain.append(np.full(c, i, np.int32))
  return {'images': np.concatenate(images), 'labels': np.concatenate(labels).astype(np.int32),
          'domain': np.concatenate(domain), 'counts': counts, 'positions': positions}


# ----------------------------------------------------------------------------- apply


Loader = Callable[[str, str], Arrays]


def default_loader(config) -> Loader:
  """load(dataset, split) -> native-size arrays: from config.data.arrays_dir (prepared,
  no TensorFlow) when set, else through input_pipeline (TensorFlow)."""
  def load(dataset, split):
    arrays_dir = config.data.get('arrays_dir', '') or ''
    if arrays_dir:
      return read_prepared(arrays_dir, dataset, split)
    from input_pipeline import datasets  # pylint: disable=g-import-not-at-top
    return datasets.load_split_arrays(config, dataset, split)
  return load


def load_split(config, split_name: str) -> Arrays:
  """config.data's split `split_name` ('train' | 'val' | 'test') as uint8 arrays, whole.

  From config.data.arrays_dir when set (`read_prepared`: no TensorFlow), else
  input_pipeline.load_arrays (decode + resize to data.image_size). The data axes are not
  applied here (`apply` does that).
  """
  d = config.data
  arrays_dir = d.get('arrays_dir', '') or ''
  if arrays_dir:
    return read_prepared(arrays_dir, d.name, d[f'{split_name}_split'])
  import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.load_arrays(config, split_name)


# ----------------------------------------------------------------------------- prepared arrays


def _split_slug(split: str) -> str:
  return re.sub(r'[^A-Za-z0-9]+', '_', split).strip('_') or 'split'


def prepared_path(arrays_dir: str, dataset: str, split: str) -> str:
  """<arrays_dir>/<dataset>/<split string, slugged>.npz"""
  return os.path.join(arrays_dir, dataset, _split_slug(split) + '.npz')


def write_prepared(arrays_dir: str, dataset: str, split: str, blobs: Sequence[bytes],
                   labels, *, meta: Optional[dict] = None) -> str:
  """Stores one split's encoded images (as TFDS holds them) and labels; returns the path.

  The file (numpy npz, deflated, no pickle): jpeg u8 (the files concatenated), offsets
  int64[N + 1], label int32[N], meta (JSON text: dataset, split, and `meta`).
  """
  path = prepared_path(arrays_dir, dataset, split)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
  info = dict(meta or {}, dataset=dataset, split=split, count=len(blobs))
  tmp = path + '.tmp.npz'
  np.savez_compressed(tmp, jpeg=np.frombuffer(b''.join(blobs), np.uint8), offsets=offsets,
                      label=np.asarray(labels, np.int32), meta=np.array(json.dumps(info)))
  os.replace(tmp, path)
  return path


def read_prepared(arrays_dir: str, dataset: str, split: str, *, threads: int = 8
                  ) -> Arrays:
  """(uint8[N, H, W, 3], int32[N]) of a `write_prepared` file, decoded with Pillow.

  Raises FileNotFoundError naming the file and the command that writes it.
  """
  path = prepared_path(arrays_dir, dataset, split)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} is missing (config.data.arrays_dir={arrays_dir!r}, {dataset} {split}): '
        'write it where TensorFlow is installed with `python -m ssl_jax.sweep --config ... '
        f'--workdir W --prepare {arrays_dir}`')
  with np.load(path) as z:
    blob, offsets, labels = z['jpeg'], z['offsets'], z['label']
  return decode_images(blob, offsets, threads=threads), labels.astype(np.int32)


def decode_images(blob, offsets, *, threads: int = 8) -> np.ndarray:
  """Pillow-decoded RGB uint8[N, H, W, 3] of concatenated encoded images (one size)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  n = len(offsets) - 1
  if n <= 0:
    return np.zeros((0, 1, 1, 3), np.uint8)
  first = np.asarray(Image.open(io.BytesIO(bytes(blob[offsets[0]:offsets[1]]))).convert('RGB'))
  out = np.empty((n,) + first.shape, np.uint8)
  out[0] = first

  def fill(lo, hi):
    for i in range(lo, hi):
      im = np.asarray(Image.open(io.BytesIO(bytes(blob[offsets[i]:offsets[i + 1]])))
                      .convert('RGB'))
      if im.shape != first.shape:
        raise ValueError(f'image {i} is {im.shape}, image 0 {first.shape}: prepared arrays '
                         'need one image size')
      out[i] = im
  step = max(1, math.ceil((n - 1) / threads))
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # Pillow frees the GIL
    list(pool.map(lambda lo: fill(lo, min(lo + step, n)), range(1, n, step)))
  return out


def component_key(dataset: str, split: str) -> str:
  """The key under which `apply` looks for a pool component in its `arrays` first."""
  return f'{dataset}:{split}'


def apply(config, arrays: Dict[str, Arrays], *, load: Optional[Loader] = None
          ) -> Dict[str, Arrays]:
  """The pretraining arrays after config.data.pool and config.data.subset.

  Args:
    config: a job config (config.data.subset / pool; absent sections: no change).
    arrays: {split: (u8 images, labels)} of config.data ('train', 'val', ...). Pool
      components are looked up first as arrays['<dataset>:<split>'] (component_key:
      prepared arrays on a machine without TensorFlow), then loaded with `load`.
    load: load(dataset, split) -> (u8[N, H, W, C], labels) at native size; default
      `default_loader(config)` (input_pipeline, TensorFlow).
  Returns:
    a new dict: 'train' (and 'val' for pools) replaced; component entries dropped;
    other splits unchanged. Pool: train = pool of `total` from the train splits, val =
    pool of `val_total` from the val splits, both at the pool's image size. Subset:
    then applied to 'train' (a subset of the pool if both are set).
  Raises:
    ValueError (one line) for bad settings, too few images or mismatched shapes.
  """
  validate(config, arrays_given=True)
  data = config.data
  out = {k: v for k, v in arrays.items() if ':' not in k}
  if pool_active(data):
    p = pool_of(data)
    size = p['image_size'] or data.image_size
    load = load or default_loader(config)
    own = {(data.name, data.get('train_split', None)): arrays.get('train'),
           (data.name, data.get('val_split', None)): arrays.get('val')}
    def get(dataset, split):
      key = component_key(dataset, split)
      if key in arrays:
        got = arrays[key]
      elif own.get((dataset, split)) is not None:
        got = own[(dataset, split)]
      else:
        got = load(dataset, split)
      return resize_images(got[0], size, p['resize']), np.asarray(got[1])
    trains = [get(d, s) for d, s in zip(p['datasets'], p['train_splits'])]
    vals = [get(d, s) for d, s in zip(p['datasets'], p['val_splits'])]
    classes = [int(max(np.max(t[1]) if len(t[1]) else -1, np.max(v[1]) if len(v[1]) else -1))
               + 1 for t, v in zip(trains, vals)]
    total = p['total'] if p['total'] > 0 else len(arrays['train'][1])
    names = [f'{d}:{s}' for d, s in zip(p['datasets'], p['train_splits'])]
    pooled = pool_arrays(trains, p['proportions'], total, seed=p['seed'],
                         num_classes=classes, names=names)
    out['train'] = (pooled['images'], pooled['labels'])
    val_total = p['val_total']
    if val_total <= 0:
      val_total = largest_feasible_total([len(v[1]) for v in vals], p['proportions'])
    vnames = [f'{d}:{s}' for d, s in zip(p['datasets'], p['val_splits'])]
    vpooled = pool_arrays(vals, p['proportions'], val_total, seed=p['seed'],
                          num_classes=classes, names=vnames)
    out['val'] = (vpooled['images'], vpooled['labels'])
  if subset_active(data):
    labels = out['train'][1]
    out['train'] = select(out['train'], subset_positions(subset_of(data), len(labels),
                                                         labels))
  return out


def describe(config) -> str:
  """One line naming the data axes of config.data ('' when none is set)."""
  data = config.data
  parts = []
  if pool_active(data):
    p = pool_of(data)
    mix = ' + '.join(f'{q:g} {d} ({s})' for d, s, q in
                     zip(p['datasets'], p['train_splits'], p['proportions']))
    total = p['total'] if p['total'] > 0 else 'as many as the train split'
    parts.append(f"pool {mix}, {total} images at {p['image_size'] or data.image_size} px "
                 f"({p['resize']}), seed {p['seed']}")
  if subset_active(data):
    s = subset_of(data)
    what = (f"{s['count']} images" if s['count'] > 0 else
            f"{s['fraction']:g} of the images" if s['fraction'] > 0 else
            f"{s['per_class']} images per class")
    parts.append(f"nested subset: {what} of the train split, seed {s['seed']}")
  return '; '.join(parts)
