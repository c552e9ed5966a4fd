r"""Train-step throughput on synthetic uint8 batches (imports no TensorFlow).

  python benchmarks/train_step.py --config configs/rotation.py:cifar10 --batch 128 --steps 20

Measures images/s of the full pretext train step (pretext stage on the device
included) in float32 and bfloat16, and the ratio to a plain supervised step of
the same model, batch and image size measured in the same run.
"""
import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from ssl_jax import parallel, train  # pylint: disable=g-import-not-at-top


def load_config(spec):
  path, _, preset = spec.partition(':')
  mod_spec = importlib.util.spec_from_file_location('bench_config', path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod.get_config(preset) if preset else mod.get_config()


def images_per_sec(config, batch, image_size, steps, warmup=2):
  """(source images/s of `config.task`'s train step (compile excluded), trunk inputs
  per image). The engine is `train.build`'s (random in-memory images of the batch's
  shape); the batch has the preprocessing's output shape (views included)."""
  config = config.copy_and_resolve_references()
  config.batch_size = config.eval_batch_size = batch
  config.data.image_size = image_size
  config.data.source = 'in_memory'
  config.total_steps = max(config.total_steps, 1)
  rng = np.random.RandomState(0)
  arrays = {s: (rng.randint(0, 256, (batch, image_size, image_size, 3)).astype(np.uint8),
                rng.randint(0, config.data.num_classes, batch).astype(np.int32))
            for s in ('train', 'val')}
  run = train.build(config, arrays=arrays)
  (name,) = run.task_set.names
  shape = run.sources[name].image_shape(train=True)
  step = run.train_step_for((name,))
  host = {'image': rng.randint(0, 256, (batch,) + shape).astype(np.uint8),
          'label': rng.randint(0, config.data.num_classes, batch).astype(np.int32),
          'mask': np.ones(batch, bool)}
  data = parallel.global_batch(run.mesh, host)
  state = run.state
  for _ in range(warmup):
    state, metrics = step(state, data)
  jax.block_until_ready(metrics)
  t = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, data)
  jax.block_until_ready(metrics)
  return batch * steps / (time.perf_counter() - t), run.trunk_inputs[name]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='configs/rotation.py:cifar10')
  p.add_argument('--batch', type=int, default=0, help='global batch (default: the config)')
  p.add_argument('--image_size', type=int, default=0, help='default: config.data.image_size')
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--dtypes', default='float32,bfloat16')
  p.add_argument('--set', action='append', default=[],
                 help='config override key=value, e.g. --set model.width=1')
  args = p.parse_args()
  config = load_config(args.config)
  for kv in args.set:
    key, value = kv.split('=', 1)
    node = config
    *parents, leaf = key.split('.')
    for name in parents:
      node = node[name]
    node[leaf] = type(node[leaf])(eval(value) if not isinstance(node[leaf], str) else value)  # pylint: disable=eval-used
  batch = args.batch or config.batch_size
  size = args.image_size or config.data.image_size
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}), '
        f'task {config.task}, model {config.model.name} k={config.model.width}, '
        f'batch {batch}, {size} px')
  for dtype in args.dtypes.split(','):
    config.model.dtype = dtype
    pretext, per_image = images_per_sec(config, batch, size, args.steps)
    sup = config.copy_and_resolve_references()
    sup.task = 'supervised'
    sup.tasks.supervised = ml_collections.ConfigDict()
    sup.input.pp_train = f'decode|resize({size})'
    baseline, _ = images_per_sec(sup, batch, size, args.steps)
    print(f'{dtype:9s} {config.task}: {pretext:9.1f} source img/s ({pretext * per_image:9.1f} '
          f'trunk inputs/s) | supervised step: {baseline:9.1f} img/s | ratio '
          f'{pretext / baseline:.3f}')


if __name__ == '__main__':
  main()
