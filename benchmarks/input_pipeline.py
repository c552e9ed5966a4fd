"""tf.data throughput of the preset input pipelines, per CPU core.

    python benchmarks/input_pipeline.py [--num_batches 20] [--batch_size 128]

For each preset: images/s of the full host pipeline (read, decode,
preprocess, batch, numpy), images/s per CPU core available to this process,
and the ratio to a decode-only pipeline on the same data measured in the same
run (the floor any pipeline pays). The 224-px presets read the 300-image
imagenette224_mini TFRecords, repeated; CIFAR-10 and Imagenette 64 come from
the prepared TFDS datasets. Presets whose data are missing are skipped.
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


if __name__ == '__main__':
  main()
