r"""Benchmark: cached vs faithful linear evaluation on CIFAR-10 features of ResNet50 v2 k=4.

  python benchmarks/linear_eval.py                       # CPU-sized defaults
  python benchmarks/linear_eval.py --num_extract=0       # every image (accelerator)
  python benchmarks/linear_eval.py --pretrained=WORKDIR  # a pretext checkpoint's trunk

What it measures (one process, one device, the numbers printed with the device):
  1. Feature extraction: images/s through the frozen trunk (every endpoint pooled with
     the study's VALID max rule to <= 9000 dims).
  2. Cached mode, pre_logits head alone: `--epochs` (500) epochs of momentum SGD on the
     cached [N_train, 2048] features inside one jitted lax.scan per evaluation period.
  3. Cached mode, every head together (after_root..pre_logits): `--all_heads_epochs`
     epochs, with the time extrapolated to `--epochs` when fewer were run.
  4. Faithful mode: images through the trunk at every step (`--faithful_steps` steps
     after compilation), per epoch = per step x steps per epoch.
  and prints the ratios cached / faithful time per epoch.

Data: real CIFAR-10 (JPEG q75, via TFDS) when ~/tensorflow_datasets/cifar10 exists and
TensorFlow imports, else synthetic uint8 images of the same shapes; the output says
which. On a CPU, extracting 50k images through ResNet50 k=4 takes far too long, so by
default `--num_extract` train images are extracted and their features tiled to
`--num_train` rows: the training cost depends only on the rows and dims (the output says
so; accuracies of a tiled or random-init run mean nothing).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from ssl_jax import models
from ssl_jax.evaluation import features
from ssl_jax.evaluation import linear
from ssl_jax.evaluation import sources

TFDS_CIFAR = os.path.expanduser('~/tensorflow_datasets/cifar10')


def load_cifar(num_train, num_val, num_test):
  """(arrays, description): real CIFAR-10 if prepared and TF present, else synthetic."""
  if os.path.isdir(TFDS_CIFAR):
    try:
      import input_pipeline  # pylint: disable=g-import-not-at-top
      from configs import linear_eval as le  # pylint: disable=g-import-not-at-top
      c = le.get_config('cifar10')
      out = {}
      for split, n in (('train', num_train), ('val', num_val), ('test', num_test)):
        x, y = input_pipeline.load_arrays(c, split)
        out[split] = (x[:n], y[:n])
      return out, 'real CIFAR-10 (JPEG q75, TFDS)'
    except Exception as e:  # pylint: disable=broad-except
      print(f'(real CIFAR-10 unavailable: {type(e).__name__}: {e}; using synthetic)')
  rng = np.random.RandomState(0)
  out = {s: (rng.randint(0, 256, (n, 32, 32, 3), dtype=np.uint8),
             rng.randint(0, 10, n).astype(np.int32))
         for s, n in (('train', num_train), ('val', num_val), ('test', num_test))}
  return out, 'synthetic uint8 images with CIFAR-10 shapes'


def load_trunk(pretrained):
  if pretrained:
    from configs import linear_eval as le  # pylint: disable=g-import-not-at-top
    from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
    c = le.get_config('cifar10')
    c.pretrained = pretrained
    t = linear_eval.load_trunk(c)
    return t['model'], t['variables'], f'checkpoint {pretrained}'
  model = models.create_model('resnet50_v2', num_classes=10, width=4, small_input=True)
  variables = jax.jit(lambda r, x: model.init(r, x, train=False))(
      jax.random.key(0, impl='unsafe_rbg'), jnp.zeros((1, 32, 32, 3)))
  return model, jax.tree.map(np.asarray, dict(variables)), 'random init'


def tile(x, n):
  reps = -(-n // x.shape[0])
  return np.concatenate([x] * reps)[:n]


def steady_per_epoch(res):
  """Seconds per epoch without the first (compiling) period, validation included."""
  chunks = res['chunk_seconds'][1:] or res['chunk_seconds']
  return sum(s for _, s in chunks) / max(sum(e for e, _ in chunks), 1)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--pretrained', default='', help='pretext workdir (default: random init)')
  p.add_argument('--num_extract', type=int, default=1024,
                 help='train images to extract (0 = all 45,000)')
  p.add_argument('--num_train', type=int, default=45_000, help='train rows to train on')
  p.add_argument('--num_val', type=int, default=512)
  p.add_argument('--epochs', type=int, default=500)
  p.add_argument('--all_heads_epochs', type=int, default=20)
  p.add_argument('--eval_every', type=int, default=50)
  p.add_argument('--batch_size', type=int, default=512)
  p.add_argument('--extract_batch', type=int, default=128)
  p.add_argument('--faithful_steps', type=int, default=2)
  p.add_argument('--cache_dtype', default='float32', choices=['float32', 'bfloat16'])
  args = p.parse_args()

  dev = jax.devices()[0]
  print(f'device: {dev.platform} {dev.device_kind} x{jax.device_count()}, '
        f'jax {jax.__version__}, host cores {os.cpu_count()}')
  n_ext = args.num_extract if args.num_extract > 0 else 45_000
  arrays, data_desc = load_cifar(n_ext, args.num_val, args.num_val)
  model, variables, trunk_desc = load_trunk(args.pretrained)
  variables = jax.device_put(variables)
  names = [n for n in models.ENDPOINTS['resnet50_v2'] if n != 'logits']
  dtype = jnp.bfloat16 if args.cache_dtype == 'bfloat16' else jnp.float32
  fn = features.make_extract_fn(model, names, pool_mode='max', out_dtype=dtype)
  src = sources.ArraySource(arrays, 'decode|crop(32)', 'decode|crop(32)')
  print(f'data: {data_desc}; trunk: ResNet50 v2 k=4 small-input stem, {trunk_desc}')

  # 1. Extraction.
  jit_fn = jax.jit(fn)
  jax.block_until_ready(jit_fn(variables, jnp.zeros((args.extract_batch, 32, 32, 3),
                                                     jnp.uint8)))
  t = time.perf_counter()
  tx, ty = features.extract(fn, variables, src.eval_batches('train', args.extract_batch),
                            jit_fn=jit_fn)
  ext_s = time.perf_counter() - t
  vx, vy = features.extract(fn, variables, src.eval_batches('val', args.extract_batch),
                            jit_fn=jit_fn)
  dims = {k: v.shape[1] for k, v in tx.items()}
  print(f'extraction: {len(ty)} images in {ext_s:.1f}s = {len(ty) / ext_s:.1f} images/s; '
        f'dims {dims} (total {sum(dims.values())})')
  if len(ty) < args.num_train:
    print(f'NOTE: features of {len(ty)} images tiled to {args.num_train} rows '
          '(timing only)')
  train = {k: jnp.asarray(tile(v, args.num_train)) for k, v in tx.items()}
  labels = tile(ty, args.num_train)
  val = {k: jnp.asarray(v) for k, v in vx.items()}
  steps = linear.num_steps(args.num_train, args.batch_size)
  cfg = dict(epochs=args.epochs, batch_size=args.batch_size, base_lrs=(0.1,),
             weight_decays=(0.0,), schedule='step',
             decay_epochs=(0.8 * args.epochs, 0.9 * args.epochs),
             eval_every=args.eval_every, standardize=True)

  # 2. Cached, pre_logits alone, the full schedule.
  res = linear.train_cached({'pre_logits': train['pre_logits']}, labels,
                            {'pre_logits': val['pre_logits']}, vy, num_classes=10, cfg=cfg)
  pre_epoch = steady_per_epoch(res)
  print(f'cached pre_logits [{args.num_train} x {dims["pre_logits"]}], {args.epochs} '
        f'epochs, batch {args.batch_size} ({steps} steps/epoch): {res["seconds"]:.1f}s '
        f'wall incl. compile and {args.epochs // args.eval_every} val evals; '
        f'{1e3 * pre_epoch:.1f} ms/epoch steady')

  # 3. Cached, every head together.
  e_all = max(args.all_heads_epochs, 1)
  every = max(min(args.eval_every, e_all // 2), 1)
  res_all = linear.train_cached(train, labels, val, vy, num_classes=10,
                                cfg=dict(cfg, epochs=e_all, eval_every=every,
                                         decay_epochs=()))
  all_epoch = steady_per_epoch(res_all)
  extra = '' if e_all >= args.epochs else (
      f'; {args.epochs} epochs extrapolated: {all_epoch * args.epochs:.0f}s')
  print(f'cached all {len(names)} heads [{args.num_train} x {sum(dims.values())}], '
        f'{e_all} epochs: {res_all["seconds"]:.1f}s wall incl. compile; '
        f'{1e3 * all_epoch:.1f} ms/epoch steady{extra}')

  # 4. Faithful: trunk + every head at every step.
  fcfg = dict(cfg, standardize=False)
  params, opt_state, step_fn = linear.make_faithful_step(
      jax.jit(features.make_extract_fn(model, names, pool_mode='max')), dims, 10, fcfg,
      steps)
  it = src.train_batches('train', args.batch_size if n_ext >= args.batch_size else n_ext)
  scale = {k: jnp.ones((1,), jnp.float32) for k in names}
  as_dev = lambda b: {'image': jnp.asarray(b['image']), 'label': jnp.asarray(b['label']),
                      'mask': jnp.asarray(b['mask'])}
  batch = as_dev(next(it))
  params, opt_state, loss = step_fn(params, opt_state, variables, batch, scale, 0)
  jax.block_until_ready(loss)
  t = time.perf_counter()
  for s in range(args.faithful_steps):
    params, opt_state, loss = step_fn(params, opt_state, variables, as_dev(next(it)),
                                      scale, s + 1)
  jax.block_until_ready(loss)
  step_s = (time.perf_counter() - t) / args.faithful_steps
  b = batch['image'].shape[0]
  faithful_epoch = step_s * args.num_train / b
  print(f'faithful (trunk + all heads every step), batch {b}: {step_s:.2f}s/step -> '
        f'{faithful_epoch:.1f}s/epoch of {args.num_train} images; '
        f'{args.epochs} epochs: {faithful_epoch * args.epochs / 3600:.1f} h')
  print(f'ratio cached/faithful time per epoch: pre_logits head {pre_epoch / faithful_epoch:.2e}'
        f', all heads {all_epoch / faithful_epoch:.2e} '
        f'(speed-up x{faithful_epoch / pre_epoch:,.0f} and x{faithful_epoch / all_epoch:,.0f})')


if __name__ == '__main__':
  main()
