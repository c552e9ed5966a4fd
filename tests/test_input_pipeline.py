"""Tests of input_pipeline.datasets: TFDS and classic ImageNet TFRecords."""
import io
import os

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import common
import input_pipeline
from input_pipeline import imagenet_tfrecords

SHARED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'shared', 'data')
MINI = os.path.join(SHARED_DATA, 'imagenette224_mini')


def _cifar_config(**input_kw):
  if not tfds.builder('cifar10').is_prepared():
    pytest.skip(f'cifar10 is not prepared in {tfds.core.constants.DATA_DIR} '
                '(run ../shared/data/prepare_tfds.py).')
  config = common.get_config()
  config.input.shuffle_buffer = 128  # Fast tests; the study's is 10,000.
  config.input.update(input_kw)
  return config


def _records_config(data_dir, split='validation', **data_kw):
  config = common.get_config()
  config.data.name = 'imagenet_tfrecords'
  config.data.data_dir = str(data_dir)
  config.data.train_split = config.data.val_split = split
  config.data.test_split = split
  config.data.update(data_kw)
  config.input.shuffle_buffer = 16
  config.input.pp_train = config.input.pp_eval = 'decode|resize(16)'
  return config


def _two_hosts(monkeypatch, index):
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax, 'process_index', lambda: index)


def _example(image_bytes, label, filename):
  feature = {
      'image/encoded': tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[image_bytes])),
      'image/class/label': tf.train.Feature(
          int64_list=tf.train.Int64List(value=[label])),
      'image/filename': tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[filename.encode()])),
  }
  return tf.train.Example(
      features=tf.train.Features(feature=feature)).SerializeToString()


def _encode(array, fmt):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, fmt)
  return buf.getvalue()


@pytest.fixture(scope='module')
def records(tmp_path_factory):
  """12 examples in 2 shards, labels 1..12 on disk; #5 is not an image.

  Images: constant value 10 * i, RGB JPEG (0-6), grayscale JPEG (7-9) and
  grayscale PNG (10, 11).
  """
  folder = tmp_path_factory.mktemp('records')
  def image(i):
    if i == 5:
      return b'not an image'
    if i < 7:
      return _encode(np.full((20, 24, 3), 10 * i, np.uint8), 'JPEG')
    return _encode(np.full((20, 24), 10 * i, np.uint8),
                   'JPEG' if i < 10 else 'PNG')
  for shard, ids in enumerate([range(7), range(7, 12)]):
    with tf.io.TFRecordWriter(
        str(folder / f'validation-{shard:05d}-of-00002')) as writer:
      for i in ids:
        writer.write(_example(image(i), i + 1, f'img{i}.JPEG'))
  return folder


# --- TFDS (real prepared CIFAR-10) ------------------------------------------


def test_check_dataset_held_out_split_sizes():
  config = _cifar_config()
  assert input_pipeline.check_dataset(config) == {
      'train': 45_000, 'val': 5_000, 'test': 10_000}
  assert input_pipeline.num_examples(config, 'val') == 5_000


def test_eval_padding_counts_every_example_once_in_tfds_order():
  config = _cifar_config()
  config.data.test_split = 'test[:37]'
  it = input_pipeline.get_dataset(config, 'test', train=False, batch_size=8)
  batches = list(it)
  assert len(batches) == it.num_batches == 5 and it.num_examples == 37
  for b in batches:
    assert b['image'].shape == (8, 32, 32, 3) and b['image'].dtype == np.uint8
    assert b['label'].dtype == np.int32 and b['mask'].dtype == bool
    assert set(b) == {'image', 'label', 'mask'}
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == 37 and mask[:37].all()
  labels = np.concatenate([b['label'] for b in batches])[mask]
  expected = [int(ex['label']) for ex in tfds.builder('cifar10').as_dataset(
      split='test[:37]', shuffle_files=False)]
  np.testing.assert_array_equal(labels, expected)
  assert not batches[-1]['image'][~batches[-1]['mask']].any()  # Zero pads.


def test_train_batches_full_deterministic_and_seeded():
  config = _cifar_config(pp_train='decode|pad_crop_flip|to_gray(0.5)')
  def first(seed, n=2):
    config.seed = seed
    it = input_pipeline.get_dataset(config, 'train', train=True,
                                    batch_size=16)
    return [next(it) for _ in range(n)]
  a, b, c = first(0), first(0), first(1)
  for x, y in zip(a, b):
    assert x['image'].shape == (16, 32, 32, 3) and x['mask'].all()
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert (a[0]['image'] != c[0]['image']).any()


def test_missing_dataset_and_split_fail_at_construction(tmp_path):
  config = _cifar_config()
  config.data.test_split = 'validation'
  with pytest.raises(input_pipeline.DatasetError,
                     match=r"'cifar10'.*data_dir.*no split 'validation'"):
    input_pipeline.get_dataset(config, 'test', train=False)
  with pytest.raises(input_pipeline.DatasetError, match='validation'):
    input_pipeline.check_dataset(config)
  config = _cifar_config()
  config.data.data_dir = str(tmp_path)
  with pytest.raises(input_pipeline.DatasetError,
                     match=rf"'cifar10' is not prepared.*{tmp_path}"):
    input_pipeline.get_dataset(config, 'train', train=True)
  config.data.name = 'no_such_dataset_xyz'
  with pytest.raises(input_pipeline.DatasetError,
                     match=rf"'no_such_dataset_xyz' not found.*{tmp_path}"):
    input_pipeline.check_dataset(config)


def test_unknown_op_fails_at_construction():
  config = _cifar_config(pp_eval='decode|no_such_op')
  with pytest.raises(ValueError, match="'no_such_op'.*Known ops"):
    input_pipeline.get_dataset(config, 'val', train=False)


def test_per_host_batches_and_shares(monkeypatch):
  config = _cifar_config(pp_eval='decode|to_gray(0.5)')
  config.data.test_split = 'test[:37]'
  expected = [int(ex['label']) for ex in tfds.builder('cifar10').as_dataset(
      split='test[:37]', shuffle_files=False)]
  one_host = list(input_pipeline.get_dataset(config, 'test', train=False,
                                             batch_size=8))
  one_host = np.concatenate([b['image'] for b in one_host])[:37]
  labels, counts, images = [], [], []
  for index in (0, 1):
    _two_hosts(monkeypatch, index)
    it = input_pipeline.get_dataset(config, 'test', train=False, batch_size=8)
    batches = list(it)
    # 19 + 18 examples; both hosts run ceil(19 / 4) = 5 batches of 4.
    assert len(batches) == 5 and it.batch_size == 4
    assert all(b['image'].shape[0] == 4 for b in batches)
    mask = np.concatenate([b['mask'] for b in batches])
    counts.append(int(mask.sum()))
    labels.extend(np.concatenate([b['label'] for b in batches])[mask])
    images.extend(np.concatenate([b['image'] for b in batches])[mask])
    train = input_pipeline.get_dataset(config, 'train', train=True,
                                       batch_size=16)
    assert next(train)['image'].shape == (8, 32, 32, 3)
  assert counts == [19, 18]
  np.testing.assert_array_equal(labels, expected)
  # Eval randomness (to_gray) follows the example, not the host count.
  np.testing.assert_array_equal(np.stack(images), one_host)
  with pytest.raises(ValueError, match='divide'):
    input_pipeline.get_dataset(config, 'train', train=True, batch_size=7)


# --- classic ImageNet TFRecords ---------------------------------------------


def test_imagenette224_mini_tfrecords():
  if not os.path.isdir(MINI):
    pytest.skip(f'{MINI} missing (shared imagenette224_mini TFRecords).')
  config = common.get_config()
  config.data.name = 'imagenet_tfrecords'
  config.data.data_dir = MINI
  config.data.train_split = 'train[:250]'
  config.data.val_split = 'train[250:]'
  config.data.test_split = 'validation'
  config.data.image_size = 224
  config.input.shuffle_buffer = 64
  config.input.pp_train = 'decode|inception_crop(224)|flip_lr|color_jitter'
  config.input.pp_eval = 'decode|resize_small(256)|crop(224)'
  assert input_pipeline.check_dataset(config) == {
      'train': 250, 'val': 50, 'test': 200}
  batch = next(input_pipeline.get_dataset(config, 'train', train=True,
                                          batch_size=8))
  assert batch['image'].shape == (8, 224, 224, 3)
  images, labels = input_pipeline.load_arrays(config, 'test')
  assert images.shape == (200, 224, 224, 3) and images.dtype == np.uint8
  # 1-based ImageNet indices on disk -> 0-based.
  assert set(labels) == {0, 217, 482, 491, 497, 566, 569, 571, 574, 701}
  first = next(input_pipeline.get_dataset(config, 'test', train=False,
                                          batch_size=8, pp='decode'))
  np.testing.assert_array_equal(first['image'], images[:8])


def test_undecodable_example_is_named(records):
  config = _records_config(records)
  it = input_pipeline.get_dataset(config, 'test', train=False, batch_size=4)
  with pytest.raises(input_pipeline.DatasetError,
                     match=r"imagenet_tfrecords.*'validation-00000-of-00002:5 "
                           r"img5.JPEG'"):
    list(it)


@pytest.mark.parametrize('cache', [False, True])
def test_skip_decode_errors_counts_and_keeps_the_rest(records, cache):
  config = _records_config(records, skip_decode_errors=True)
  config.input.cache = cache
  it = input_pipeline.get_dataset(config, 'test', train=False, batch_size=4)
  batches = list(it)
  mask = np.concatenate([b['mask'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])[mask]
  np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11])
  assert it.skipped == 1 and len(batches) == 3
  train = input_pipeline.get_dataset(config, 'train', train=True, batch_size=4)
  seen = np.concatenate([next(train)['label'] for _ in range(6)])
  assert 5 not in seen and train.skipped >= 1


def test_skip_counts_per_host(records, monkeypatch):
  config = _records_config(records, skip_decode_errors=True)
  skipped, labels = [], []
  for index in (0, 1):  # Host 0 reads examples 0-5 (5 is bad), host 1 6-11.
    _two_hosts(monkeypatch, index)
    it = input_pipeline.get_dataset(config, 'test', train=False, batch_size=8)
    batches = list(it)
    assert len(batches) == 2
    labels.extend(np.concatenate([b['label'][b['mask']] for b in batches]))
    skipped.append(it.skipped)
  assert skipped == [1, 0]
  np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11])


def test_grayscale_sources_become_three_channels(records):
  config = _records_config(records, split='validation[6:]')
  images, labels = input_pipeline.load_arrays(config, 'test', pp='decode')
  np.testing.assert_array_equal(labels, [6, 7, 8, 9, 10, 11])
  assert images.shape == (6, 20, 24, 3)
  for img, i in zip(images[1:], range(7, 12)):  # Gray JPEG, gray PNG.
    assert (img == img[..., :1]).all()
    assert abs(int(img.mean()) - 10 * i) <= 2


def test_images_of_different_sizes_are_named(records, tmp_path):
  with tf.io.TFRecordWriter(str(tmp_path / 'validation-0')) as writer:
    for i, size in enumerate([8, 8, 9]):
      img = _encode(np.zeros((size, size, 3), np.uint8), 'PNG')
      writer.write(_example(img, 1, f'img{i}'))
  config = _records_config(tmp_path, split='validation')
  it = input_pipeline.get_dataset(config, 'val', train=False, batch_size=4,
                                  pp='decode')
  with pytest.raises(input_pipeline.DatasetError, match='different sizes'):
    next(it)


def test_record_splits_and_host_ranges(records):
  parse = imagenet_tfrecords.parse_split
  assert parse('train') == ('train', (None, None), ('', ''))
  assert parse('train{:984}') == ('train', (None, 984), ('', ''))
  assert parse('validation{1:}[:50%]') == ('validation', (1, None), ('', '50%'))
  with pytest.raises(ValueError, match='Bad imagenet_tfrecords split'):
    parse('train[:x]')
  def counts(split, n):
    return [imagenet_tfrecords.TFRecordSource(
        str(records), split, process_index=i, process_count=n).host_counts[i]
            for i in range(n)]
  assert counts('validation', 3) == [4, 4, 4]
  assert counts('validation[:7]', 3) == [3, 2, 2]
  assert counts('validation{1:}', 2) == [3, 2]
  assert counts('validation[-25%:]', 1) == [3]
  # Training on whole files with several hosts deals the files out.
  for index, labels in [(0, set(range(7))), (1, set(range(7, 12)))]:
    source = imagenet_tfrecords.TFRecordSource(
        str(records), 'validation', process_index=index, process_count=2)
    ds = source.read(train=True, seed=0)
    assert {int(ex['label']) for ex in ds} == labels
  config = _records_config(records, split='nope')
  with pytest.raises(input_pipeline.DatasetError,
                     match=rf"'nope'.*no files 'nope-\*'.*{records}"):
    input_pipeline.check_dataset(config)


def test_cache_gives_the_same_eval_batches(records):
  config = _records_config(records, split='validation[6:]')
  config.input.pp_eval = 'decode|resize(8)|to_gray(0.5)'
  plain = list(input_pipeline.get_dataset(config, 'val', train=False,
                                          batch_size=4))
  config.input.cache = True
  cached = list(input_pipeline.get_dataset(config, 'val', train=False,
                                           batch_size=4))
  for a, b in zip(plain, cached):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
