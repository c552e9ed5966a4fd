"""Data axes of the pretraining set (ssl_jax/data/axes.py): nested static subsets and
pooled domains, on arrays and through the tf.data source."""
import fractions
import os

import numpy as np
import pytest

from configs import rotation as rotation_config
from ssl_jax.data import axes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS_DIR = os.path.expanduser(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


def _config(**data):
  c = axes.ensure_keys(rotation_config.get_config('smoke'))
  c.data.source = 'in_memory'
  for k, v in data.items():
    node, *rest = k.split('.')
    if rest:
      c.data[node][rest[0]] = v
    else:
      c.data[k] = v
  return c


def _arrays(n, size=4, classes=10, seed=0, value=None):
  rng = np.random.RandomState(seed)
  images = rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8)
  if value is not None:
    # Identifiable images: the top-left 2x2 block holds value (channel 0) and the index
    # (channel 1): pixel (0, 0) keeps them through a 2x area resize.
    images[:, :2, :2, 0] = value
    images[:, :2, :2, 1] = (np.arange(n) % 256)[:, None, None]
  return images, rng.randint(0, classes, n).astype(np.int32)


# ----------------------------------------------------------------------------- subsets


def test_subsets_are_nested_static_and_seeded():
  n = 1000
  sizes = [10, 50, 125, 250, 500, 1000]
  subsets = [axes.subset_indices(n, count=m, seed=3) for m in sizes]
  for m, idx in zip(sizes, subsets):
    assert len(idx) == m and len(np.unique(idx)) == m
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < n
  for small, large in zip(subsets, subsets[1:]):
    assert np.isin(small, large).all()          # nested
  again = axes.subset_indices(n, count=250, seed=3)
  np.testing.assert_array_equal(again, subsets[3])  # static: the same images every time
  other = axes.subset_indices(n, count=250, seed=4)
  assert not np.array_equal(other, subsets[3])    # the seed chooses them
  # A fraction is the same subset as the count it rounds to (half to even).
  for f in (0.1, 0.25, 0.5, 1.0):
    np.testing.assert_array_equal(axes.subset_indices(n, fraction=f, seed=3),
                                  axes.subset_indices(n, count=int(round(f * n)), seed=3))
  np.testing.assert_array_equal(axes.subset_indices(n, fraction=1.0, seed=3), np.arange(n))
  assert axes.subset_size(45000, fraction=0.1) == 4500
  assert axes.subset_size(7, fraction=0.5) == 4    # round(3.5) = 4 (half to even)
  assert axes.subset_size(5, fraction=0.5) == 2    # round(2.5) = 2


def test_subset_selection_is_uniform_over_positions():
  # Each position is equally likely to be chosen across seeds: a chi-square-free check
  # with a wide bound (expected 2000 * 0.3 = 600 hits per position bucket of 100).
  n, m = 100, 30
  hits = np.zeros(n)
  for seed in range(2000):
    hits[axes.subset_indices(n, count=m, seed=seed)] += 1
  assert np.abs(hits - 600).max() < 6 * np.sqrt(600 * 0.7)


def test_per_class_subsets_are_balanced_and_nested():
  labels = np.random.RandomState(0).randint(0, 5, 400)
  small = axes.per_class_indices(labels, 10, seed=1)
  large = axes.per_class_indices(labels, 40, seed=1)
  for idx, k in ((small, 10), (large, 40)):
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=5), [k] * 5)
  assert np.isin(small, large).all()
  with pytest.raises(ValueError, match='class 0 has only'):
    axes.per_class_indices(labels, 400)


@pytest.mark.parametrize('data, match', [
    ({'subset.count': 10, 'subset.fraction': 0.5}, 'sets count and fraction'),
    ({'subset.fraction': 1.5}, r'subset.fraction=1.5'),
    ({'subset.fraction': 0.0}, r'subset.fraction=0.0'),
    ({'subset.count': 0}, r'subset.count=0'),
    ({'pool.datasets': ('a', 'b'), 'pool.train_splits': ('t',)}, 'one entry per dataset'),
    ({'pool.datasets': ('a', 'b'), 'pool.train_splits': ('t', 't'),
      'pool.val_splits': ('v', 'v'), 'pool.proportions': (0.5, 0.6)}, 'sum to 1'),
    ({'pool.datasets': ('a', 'b'), 'pool.train_splits': ('t', 't'),
      'pool.val_splits': ('v', 'v'), 'pool.proportions': (0.5, 0.5),
      'pool.resize': 'nearest'}, "pool.resize='nearest'"),
    ({'pool.datasets': ('a', 'b'), 'pool.train_splits': ('t', 't'),
      'pool.val_splits': ('v', 'v'), 'pool.proportions': (0.5, 0.5),
      'source': 'tfds'}, "needs config.data.source='in_memory'"),
])
def test_bad_axis_values_are_one_line_errors(data, match):
  with pytest.raises(ValueError, match=match) as e:
    axes.validate(_config(**data))
  assert '\n' not in str(e.value)


def test_count_larger_than_the_split_is_an_error():
  c = _config(**{'subset.count': 65})
  with pytest.raises(ValueError, match='count=65 exceeds the 64'):
    axes.apply(c, {'train': _arrays(64), 'val': _arrays(8)})


# ----------------------------------------------------------------------------- pools


def _hamilton(total, proportions):
  """Largest-remainder apportionment in exact rational arithmetic (reference)."""
  p = [fractions.Fraction(x).limit_denominator(10**6) for x in proportions]
  s = sum(p)
  shares = [total * q / s for q in p]
  floors = [int(x) for x in shares]
  left = total - sum(floors)
  order = sorted(range(len(p)), key=lambda i: (-(shares[i] - floors[i]), i))
  for i in order[:left]:
    floors[i] += 1
  return floors


def test_pool_counts_are_exact_and_sum_to_the_total():
  rng = np.random.RandomState(0)
  for _ in range(200):
    k = rng.randint(2, 5)
    p = rng.dirichlet(np.ones(k)).round(3)
    p[-1] = round(1 - p[:-1].sum(), 3)
    if p.min() <= 0:
      continue
    total = int(rng.randint(1, 5000))
    counts = axes.pool_counts(total, p)
    assert counts.sum() == total
    assert np.all(np.abs(counts - total * p) < 1)
    assert counts.tolist() == _hamilton(total, p)
  np.testing.assert_array_equal(axes.pool_counts(8000, (0.5, 0.5)), [4000, 4000])
  np.testing.assert_array_equal(axes.pool_counts(9000, (1 / 3, 1 / 3, 1 / 3)),
                                [3000, 3000, 3000])
  np.testing.assert_array_equal(axes.pool_counts(10, (1 / 3, 1 / 3, 1 / 3)), [4, 3, 3])
  np.testing.assert_array_equal(axes.pool_counts(1000, (0.25, 0.75)), [250, 750])


def test_pooled_arrays_have_exact_proportions_and_their_own_images():
  a = _arrays(300, classes=10, seed=1, value=1)
  b = _arrays(200, classes=5, seed=2, value=2)
  pooled = axes.pool_arrays([a, b], (0.25, 0.75), 200, seed=0, num_classes=(10, 5))
  assert pooled['images'].shape == (200, 4, 4, 3)
  np.testing.assert_array_equal(np.bincount(pooled['domain']), [50, 150])
  np.testing.assert_array_equal(pooled['images'][:, 0, 0, 0], pooled['domain'] + 1)
  for i, src in enumerate((a, b)):
    rows = pooled['domain'] == i
    pos = pooled['positions'][i]
    np.testing.assert_array_equal(pooled['images'][rows], src[0][pos])
    np.testing.assert_array_equal(pooled['labels'][rows], src[1][pos] + (0, 10)[i])
  # Disjoint classes: dataset b's labels follow a's ten.
  assert pooled['labels'][pooled['domain'] == 1].min() >= 10
  # Nested in the total for one seed; another seed takes other images.
  small = axes.pool_arrays([a, b], (0.25, 0.75), 100, seed=0, num_classes=(10, 5))
  for i in range(2):
    assert np.isin(small['positions'][i], pooled['positions'][i]).all()
  other = axes.pool_arrays([a, b], (0.25, 0.75), 200, seed=1, num_classes=(10, 5))
  assert not np.array_equal(other['positions'][0], pooled['positions'][0])
  with pytest.raises(ValueError, match='has 200 images.*needs 225'):
    axes.pool_arrays([a, b], (0.25, 0.75), 300, names=['a', 'b'])
  with pytest.raises(ValueError, match='shapes'):
    axes.pool_arrays([a, _arrays(10, size=8)], (0.5, 0.5), 10)


def test_area_resize_is_the_box_mean():
  images = np.random.RandomState(0).randint(0, 256, (5, 8, 8, 3)).astype(np.uint8)
  out = axes.resize_images(images, 4, 'area')
  ref = images.reshape(5, 4, 2, 4, 2, 3).astype(np.float64).mean(axis=(2, 4))
  np.testing.assert_array_equal(out, np.round(ref).astype(np.uint8))  # half to even
  assert axes.resize_images(images, 8) is images


def test_apply_pools_then_subsets_with_components_from_arrays():
  own = _arrays(120, size=4, seed=1, value=1)
  other_train = _arrays(90, size=8, seed=2, value=2)
  other_val = _arrays(30, size=8, seed=3, value=2)
  own_val = _arrays(40, size=4, seed=4, value=1)
  c = _config(**{'pool.datasets': ('cifar10', 'other'),
                 'pool.train_splits': ('train[:512]', 'train'),
                 'pool.val_splits': ('train[512:600]', 'validation'),
                 'pool.proportions': (0.5, 0.5), 'pool.total': 100})
  c.data.image_size = 4
  arrays = {'train': own, 'val': own_val,
            axes.component_key('other', 'train'): other_train,
            axes.component_key('other', 'validation'): other_val}
  loads = []
  out = axes.apply(c, arrays, load=lambda *a: loads.append(a))
  assert not loads and set(out) == {'train', 'val'}       # nothing loaded
  tr_images, tr_labels = out['train']
  assert tr_images.shape == (100, 4, 4, 3)
  np.testing.assert_array_equal(np.bincount(tr_images[:, 0, 0, 0])[1:], [50, 50])
  # val: the largest total the val splits supply at 1:1 = 2 * 30.
  assert out['val'][0].shape == (60, 4, 4, 3)
  np.testing.assert_array_equal(np.bincount(out['val'][0][:, 0, 0, 0])[1:], [30, 30])
  # The other dataset's images were area-resized to the pool's 4 px.
  small = axes.resize_images(other_train[0], 4, 'area')
  rows = tr_images[:, 0, 0, 0] == 2
  assert all((small == im).all(axis=(1, 2, 3)).any() for im in tr_images[rows])
  # A subset of the pool: nested within it.
  c.data.subset.count = 40
  sub = axes.apply(c, arrays)
  assert sub['train'][0].shape == (40, 4, 4, 3)
  assert all((tr_images == im).all(axis=(1, 2, 3)).any() for im in sub['train'][0])
  # Total -1: as many as config.data's train split.
  c.data.subset.count = -1
  c.data.pool.total = -1
  assert axes.apply(c, dict(arrays, train=_arrays(150, seed=5)))['train'][0].shape[0] == 150
  c.data.pool.total = 200
  with pytest.raises(ValueError, match='other:train has 90 images.*needs 100'):
    axes.apply(c, arrays)


def test_a_pool_of_one_dataset_is_that_dataset_resized():
  other = _arrays(90, size=8, seed=2, value=2)
  c = _config(**{'pool.datasets': ('other',), 'pool.train_splits': ('train',),
                 'pool.val_splits': ('val',), 'pool.proportions': (1.0,),
                 'pool.total': 40})
  c.data.image_size = 4
  out = axes.apply(c, {'train': _arrays(64), 'val': _arrays(8),
                       'other:train': other, 'other:val': _arrays(12, size=8, seed=3)})
  pos = axes.pool_arrays([other], (1.0,), 40)['positions'][0]
  np.testing.assert_array_equal(out['train'][0], axes.resize_images(other[0][pos], 4))
  np.testing.assert_array_equal(out['train'][1], other[1][pos])
  assert out['val'][0].shape == (12, 4, 4, 3)


def test_prepared_arrays_round_trip_through_pillow(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (7, 8, 8, 3)).astype(np.uint8)
  blobs = []
  for im in images:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, format='PNG')  # lossless: the decode must give them back
    blobs.append(buf.getvalue())
  labels = np.arange(7) % 3
  path = axes.write_prepared(str(tmp_path), 'toy', 'train[:7]', blobs, labels)
  assert path == axes.prepared_path(str(tmp_path), 'toy', 'train[:7]')
  got, got_labels = axes.read_prepared(str(tmp_path), 'toy', 'train[:7]', threads=3)
  np.testing.assert_array_equal(got, images)
  np.testing.assert_array_equal(got_labels, labels)
  c = _config()
  c.data.name, c.data.train_split, c.data.arrays_dir = 'toy', 'train[:7]', str(tmp_path)
  np.testing.assert_array_equal(axes.load_split(c, 'train')[0], images)
  with pytest.raises(FileNotFoundError, match='--prepare'):
    axes.read_prepared(str(tmp_path), 'toy', 'test')


def test_apply_subset_matches_subset_indices_and_leaves_other_splits():
  train, val, test = _arrays(64, value=1), _arrays(8, seed=1), _arrays(9, seed=2)
  c = _config(**{'subset.fraction': 0.25, 'subset.seed': 7})
  out = axes.apply(c, {'train': train, 'val': val, 'test': test})
  idx = axes.subset_indices(64, count=16, seed=7)
  np.testing.assert_array_equal(out['train'][0], train[0][idx])
  np.testing.assert_array_equal(out['train'][1], train[1][idx])
  assert out['val'][0] is val[0] and out['test'][0] is test[0]
  # Neutral sections change nothing; a config without them too.
  plain = rotation_config.get_config('smoke')
  assert axes.apply(plain, {'train': train})['train'][0] is train[0]
  assert axes.describe(plain) == ''
  assert 'nested subset: 0.25 of the images' in axes.describe(c)


def test_array_source_trains_on_the_subset_only():
  from ssl_jax.data import sources  # pylint: disable=g-import-not-at-top
  train = _arrays(64, value=1)
  c = _config(**{'subset.count': 16})
  source = sources.ArraySource(axes.apply(c, {'train': train, 'val': _arrays(8)}),
                               'decode', 'decode')
  assert source.num_examples('train') == 16
  batch = next(source.train_batches('train', 16, seed=0))
  idx = axes.subset_indices(64, count=16)
  np.testing.assert_array_equal(np.sort(batch['image'][:, 0, 0, 1]),
                                np.sort(train[0][idx][:, 0, 0, 1]))


# ----------------------------------------------------------------------------- tf.data


def _cifar_ready():
  return os.path.isdir(os.path.join(TFDS_DIR, 'cifar10'))


@pytest.mark.skipif(not _cifar_ready(), reason='TFDS cifar10 not prepared '
                    '(python ../shared/data/prepare_tfds.py)')
def test_prepared_cifar_split_decodes_as_the_tf_pipeline(tmp_path):
  from input_pipeline import datasets  # pylint: disable=g-import-not-at-top
  c = _config()
  out = datasets.prepare_arrays(c, str(tmp_path), [('cifar10', 'test[:64]')])
  assert out[0]['count'] == 64 and out[0]['verified']   # Pillow == TF, image for image
  images, labels = axes.read_prepared(str(tmp_path), 'cifar10', 'test[:64]')
  ref = datasets.load_split_arrays(c, 'cifar10', 'test[:64]')
  np.testing.assert_array_equal(images, ref[0])
  np.testing.assert_array_equal(labels, ref[1])


@pytest.mark.skipif(not _cifar_ready(), reason='TFDS cifar10 not prepared '
                    '(python ../shared/data/prepare_tfds.py)')
@pytest.mark.parametrize('subset', [{'count': 50, 'seed': 2}, {'per_class': 4}])
def test_tfdata_subset_reads_the_same_images_as_the_arrays(subset):
  import input_pipeline  # pylint: disable=g-import-not-at-top
  c = _config()
  c.data.source = 'tfds'
  c.data.image_size = 32
  c.data.train_split = 'train[:300]'
  c.input.pp_train = c.input.pp_eval = 'decode'
  for k, v in subset.items():
    c.data.subset[k] = v
  whole = input_pipeline.load_arrays(c, 'train')
  assert len(whole[1]) == 300                                   # load_arrays: the whole split
  expected = axes.apply(c, {'train': whole})['train']
  n = len(expected[1])
  assert input_pipeline.num_examples(c, 'train') == n
  # An evaluation pass over the subset: the same images in the same (canonical) order.
  batches = list(input_pipeline.get_dataset(c, 'train', train=False, batch_size=16))
  images = np.concatenate([b['image'][b['mask']] for b in batches])
  labels = np.concatenate([b['label'][b['mask']] for b in batches])
  np.testing.assert_array_equal(images, expected[0])
  np.testing.assert_array_equal(labels, expected[1])
  # Training: the first epoch is the subset, shuffled.
  c.input.shuffle_buffer = 1000
  it = input_pipeline.get_dataset(c, 'train', train=True, batch_size=n // 2 if n % 2 == 0
                                  else n)
  first = np.concatenate([next(it)['image'] for _ in range(2 if n % 2 == 0 else 1)])
  key = lambda x: sorted(map(bytes, x.reshape(len(x), -1)))
  assert key(first) == key(expected[0])
  # The val split is untouched.
  assert input_pipeline.num_examples(c, 'val') == 88
