"""tf.data throughput of the preset input pipelines, per CPU core.

    python benchmarks/input_pipeline.py [--num_batches 20] [--batch_size 128]

For each preset: images/s of the full host pipeline (read, decode,
preprocess, batch, numpy), images/s per CPU core available to this process,
and the ratio to a decode-only pipeline on the same data measured in the same
run (the floor any pipeline pays). The 224-px presets read the 300-image
imagenette224_mini TFRecords, repeated; CIFAR-10 and Imagenette 64 come from
the prepared TFDS datasets. Presets whose data are missing are skipped.

    python benchmarks/input_pipeline.py --jax_ops [--jax_batch_size 256]

adds a table of the same preprocessing strings run by the JAX ops
(ssl_jax.data.ops.make_batch_fn, jitted, on the JAX default device) on decoded
CIFAR-10 uint8 arrays, against tf.data running the same spec on the same
decoded arrays (preprocessing only: no read, no decode), with the ratio.
(--jax_ops_only: that table alone.)
"""
import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import common
import input_pipeline
from input_pipeline import preprocess
import jax
import numpy as np
from ssl_jax.data import ops as jax_ops
import tensorflow as tf
import tensorflow_datasets as tfds

MINI = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'shared', 'data', 'imagenette224_mini')

# name -> (data, preprocessing). The study's pipelines, plus the small presets.
PRESETS = {
    'cifar10_32 (pad_crop_flip)': ('cifar10', 'decode|pad_crop_flip'),
    'imagenette64 (inception 64)': (
        'imagenette64', 'decode|inception_crop(64)|flip_lr|color_jitter'),
    'inception224 train (rotation/supervised)': (
        'mini224', 'decode|inception_crop(224)|flip_lr|color_jitter'),
    'inception224 train, fused op': (
        'mini224', 'decode|inception_preprocess(224)'),
    'inception224 eval': ('mini224', 'decode|inception_eval(224)'),
    'linear eval train 256->224': (
        'mini224', 'decode|resize_small(256)|crop(224)'),
    'patch tasks 292/gray/255': (
        'mini224', 'decode|resize(292)|to_gray(0.66)|crop(255)'),
}


# Specs for the JAX-ops table (CIFAR-sized, the in-memory path's use).
JAX_PRESETS = {
    'cifar10 pad_crop_flip': 'decode|pad_crop_flip',
    'cifar10 inception 32 + jitter':
        'decode|inception_crop(32)|flip_lr|color_jitter',
    'cifar10 simclr, 2 views': (
        'decode|views(2)|inception_crop(32, area_min=0.08)|flip_lr|'
        "color_distort(0.5)|to_gray(0.2, weights='luma')"),
    'cifar10 exemplar, 8 views':
        'decode|to_gray(0.66)|views(8)|inception_preprocess(32)',
}
CIFAR_NPZ = os.path.join(os.path.dirname(MINI), 'cifar10', 'test.npz')


def _config(data, shuffle_buffer):
  config = common.get_config()
  if data == 'mini224':
    config.data.name = 'imagenet_tfrecords'
    config.data.data_dir = MINI
    config.data.train_split = 'train'
    config.data.image_size = 224
  else:
    config.data = common.data_config(data)
  config.input.shuffle_buffer = shuffle_buffer
  return config


def _available(data):
  if data == 'mini224':
    return os.path.isdir(MINI)
  return tfds.builder(data).is_prepared()


def _measure(config, pp, args):
  """Images/s of training batches after `args.warmup` batches.

  Times at least args.num_batches batches and args.min_seconds seconds.
  """
  it = input_pipeline.get_dataset(config, 'train', train=True, pp=pp,
                                  batch_size=args.batch_size,
                                  shard_by_process=False)
  for _ in range(args.warmup):
    next(it)
  start, n = time.perf_counter(), 0
  while n < args.num_batches or time.perf_counter() - start < args.min_seconds:
    next(it)
    n += 1
  return n * args.batch_size / (time.perf_counter() - start)


def _cifar_arrays(n):
  """uint8[n, 32, 32, 3]: decoded CIFAR-10 test images (random if absent)."""
  if not os.path.exists(CIFAR_NPZ):
    return np.random.RandomState(0).randint(0, 256, (n, 32, 32, 3), np.uint8)
  data = np.load(CIFAR_NPZ)
  jpeg, offsets = data['jpeg'], data['offsets']
  return np.stack([tf.io.decode_jpeg(jpeg[offsets[i]:offsets[i + 1]].tobytes(),
                                     dct_method='INTEGER_ACCURATE').numpy()
                   for i in range(n)])


def _timed(step, args):
  """Images/s of step() (one batch) after args.warmup calls."""
  for _ in range(args.warmup):
    step()
  start, n = time.perf_counter(), 0
  while n < args.num_batches or time.perf_counter() - start < args.min_seconds:
    step()
    n += 1
  return n * args.jax_batch_size / (time.perf_counter() - start)


def _measure_jax_ops(spec, images, args):
  """(images/s, compile s) of the jitted JAX ops, on the default device."""
  fn = jax.jit(jax_ops.make_batch_fn(spec, train=True))
  batch = jax.device_put(images[:args.jax_batch_size])
  key = jax.random.key(0)
  start = time.perf_counter()
  fn(key, batch).block_until_ready()
  compile_s = time.perf_counter() - start
  step = [0]
  def one():
    step[0] += 1
    fn(jax.random.fold_in(key, step[0]), batch).block_until_ready()
  return _timed(one, args), compile_s


def _measure_tf_ops(spec, images, args):
  """Images/s of tf.data applying `spec` to decoded arrays, batched."""
  pp = preprocess.get_preprocess_fn(spec, train=True)
  ds = (tf.data.Dataset.from_tensor_slices(images).repeat().enumerate()
        .map(lambda i, im: pp({'image': im, preprocess.SEED_KEY: tf.stack(
            [tf.constant(0, tf.int64), i])})['image'],
             num_parallel_calls=tf.data.AUTOTUNE)
        .batch(args.jax_batch_size).prefetch(2))
  opts = tf.data.Options()
  opts.threading.max_intra_op_parallelism = 1
  it = ds.with_options(opts).as_numpy_iterator()
  return _timed(lambda: next(it), args)


def _jax_ops_table(args):
  images = _cifar_arrays(max(args.jax_batch_size, 1024))
  device = jax.devices()[0]
  print(f'\nJAX ops vs tf.data, preprocessing only, on decoded CIFAR-10 '
        f'uint8 arrays; batch {args.jax_batch_size}; JAX on '
        f'{device.platform}:{device.device_kind} (jax {jax.__version__}), '
        f'tf.data on the host CPU. img/s counts source images (a views(n) '
        f'example is n crops).')
  print(f'{"spec":32s} {"JAX img/s":>10s} {"compile s":>9s} '
        f'{"tf.data img/s":>13s} {"JAX/tf":>7s}  pipeline')
  for name, spec in JAX_PRESETS.items():
    if args.only and args.only not in name:
      continue
    jax_rate, compile_s = _measure_jax_ops(spec, images, args)
    tf_rate = _measure_tf_ops(spec, images, args)
    print(f'{name:32s} {jax_rate:10.0f} {compile_s:9.1f} {tf_rate:13.0f} '
          f'{jax_rate / tf_rate:7.2f}  {spec}')


def _cpu_description():
  model = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          model = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  return model


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_batches', type=int, default=20)
  parser.add_argument('--min_seconds', type=float, default=3.0)
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--shuffle_buffer', type=int, default=1000)
  parser.add_argument('--only', default='', help='substring of preset names')
  parser.add_argument('--jax_ops', action='store_true',
                      help='also time the JAX ops against tf.data')
  parser.add_argument('--jax_ops_only', action='store_true',
                      help='only the JAX-ops table')
  parser.add_argument('--jax_batch_size', type=int, default=256)
  args = parser.parse_args()

  cores = len(os.sched_getaffinity(0))
  print(f'CPU: {_cpu_description()}; {cores} cores available '
        f'(os.cpu_count()={os.cpu_count()}); TF {tf.__version__}; '
        f'batch {args.batch_size}; >= {args.num_batches} batches and '
        f'>= {args.min_seconds} s timed after {args.warmup} warm-up batches.')
  baselines = {}
  rows = []
  load = os.getloadavg()
  for name, (data, pp) in PRESETS.items():
    if args.jax_ops_only:
      break
    if args.only and args.only not in name:
      continue
    if not _available(data):
      print(f'skip {name}: {data} not available')
      continue
    config = _config(data, args.shuffle_buffer)
    if data not in baselines:
      baselines[data] = _measure(config, 'decode', args)
    rate = _measure(config, pp, args)
    rows.append((name, pp, rate, baselines[data]))

  print(f'\nload average (1 min) before/after: {load[0]:.1f}/'
        f'{os.getloadavg()[0]:.1f} (other processes share these cores; '
        'ratios measured in one run are steadier than absolute rates).')
  print(f'\n{"preset":42s} {"img/s":>9s} {"img/s/core":>10s} '
        f'{"decode-only img/s":>17s} {"vs decode":>9s}  pipeline')
  for name, pp, rate, base in rows:
    print(f'{name:42s} {rate:9.0f} {rate / cores:10.0f} {base:17.0f} '
          f'{rate / base:9.2f}  {pp}')
  if args.jax_ops or args.jax_ops_only:
    _jax_ops_table(args)


if __name__ == '__main__':
  main()
