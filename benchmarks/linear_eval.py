r"""Benchmark: the cached linear probes on every endpoint of a ResNet50 v2 k=4 trunk.

  python benchmarks/linear_eval.py                    # synthetic features, 45,000 rows
  python benchmarks/linear_eval.py --features=DIR     # cached features saved as .npy
  python benchmarks/linear_eval.py --sgd_epochs=2 --numpy   # + the SGD probe, numpy BLAS

Measured in one process, on one device (printed):
  1. The memory floor of one pass, per endpoint: the bytes of one read of its train
     features divided by the bandwidth of a plain jitted sum over that same array
     (best of --repeats); summed over the endpoints.
  2. One training pass: `solvers.objective` (value and gradient of every class, one
     read of the features) per endpoint, best of --repeats; its ratio to the floor.
     --numpy adds numpy's BLAS doing the same work as two products (x @ W, g' @ x).
  3. Time to convergence: `solvers.train_lbfgs` on every endpoint (the default cached
     probe: standardised features, spectral preconditioner, the L2 grid walked from the
     largest wd, each point to max |gradient| <= tol), with per grid point iterations,
     passes, seconds and validation top-1, and the total wall time (statistics,
     preconditioners, compilation and validation scoring included).
  4. --sgd_epochs > 0: seconds per epoch of the SGD probe on every endpoint (the
     study's protocol on cached features), for comparison.

Features. The endpoint dims are those of ResNet50 v2 k=4 with the small-input stem on
32 px CIFAR-10 crops under the study's VALID max pooling to <= 9,000 dims (computed with
`features.feature_dims`, no image goes through the trunk): after_root 6,400, block1
6,400, block2 8,192, block3 4,096, block4 8,192, pre_logits 2,048 (35,328 in all).
Extracting 50,000 images through that trunk takes most of an hour on 2 CPU cores, so by
default the features are SYNTHETIC, 45,000 train and 5,000 validation rows (the cifar10
preset's split sizes): a latent-factor model whose standardised covariance has the
spectrum measured on real pooled features of this trunk (lambda_i ~ 0.2 D i^-1.2 for the
top 256 directions, lambda_1 ~ 10^3 on 6,400 dims; the rest flat), with positive means
and labels that depend on the top factors. Their accuracies mean nothing; their pass
times are those of real features of these shapes, and their conditioning, which sets
the iteration counts, is close to real features'. --features=DIR reads
DIR/{train,val}_<endpoint>.npy and DIR/{train,val}_y.npy instead (real features).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from configs import linear_eval as le_configs
from ssl_jax import models
from ssl_jax.evaluation import features
from ssl_jax.evaluation import linear
from ssl_jax.evaluation import solvers


def trunk_dims():
  """{endpoint: D} of ResNet50 v2 k=4 (small-input stem) at 32 px, max pooling."""
  model = models.create_model('resnet50_v2', num_classes=10, width=4, small_input=True)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, 32, 32, 3)), train=False))
  names = [n for n in models.ENDPOINTS['resnet50_v2'] if n != 'logits']
  fn = features.make_extract_fn(model, names, pool_mode='max')
  return features.feature_dims(fn, variables, (32, 32, 3))


@jax.jit
def _synth_block(key, z, basis, scale, offset, noise):
  """Rows of one endpoint: z @ (scale * basis)' + uniform noise + offset."""
  x = (z * scale) @ basis.T
  u = jax.random.uniform(key, x.shape, jnp.float32, -1.0, 1.0)
  return x + noise * np.sqrt(3.0) * u + offset


def synthetic(dims, n_train, n_val, num_classes=10, rank=256, seed=0):
  """({endpoint: f32[n_train, D]}, y_train, {endpoint: f32[n_val, D]}, y_val).

  Shared latent factors z ~ N(0, I_rank) per example; endpoint e sees them through an
  orthonormal basis with eigenvalues 0.2 D i^-1.2 (a fit of the measured spectra),
  plus flat noise taking the rest of the trace D; labels are an argmax of a random
  linear function of the top 32 factors plus Gumbel noise (Bayes accuracy ~0.6).
  """
  rng = np.random.RandomState(seed)
  n = n_train + n_val
  z = rng.randn(n, rank).astype(np.float32)
  a = rng.randn(32, num_classes)
  logits = z[:, :32] @ a / 2.0 + rng.gumbel(size=(n, num_classes))
  y = np.argmax(logits, 1).astype(np.int32)
  z = jnp.asarray(z)
  key = jax.random.key(seed, impl='unsafe_rbg')
  train, val = {}, {}
  for i, (name, d) in enumerate(sorted(dims.items())):
    lam = 0.2 * d * np.arange(1, rank + 1) ** -1.2
    noise = np.sqrt(max(d - lam.sum(), 0.05 * d) / d)
    basis, _ = np.linalg.qr(rng.randn(d, rank))
    offset = rng.uniform(0.5, 1.5, d).astype(np.float32)  # post-ReLU-like means
    x = _synth_block(jax.random.fold_in(key, i), z, jnp.asarray(basis, jnp.float32),
                     jnp.asarray(np.sqrt(lam), jnp.float32), jnp.asarray(offset),
                     jnp.float32(noise))
    train[name], val[name] = x[:n_train], x[n_train:]
    del x
  return train, y[:n_train], val, y[n_train:]


def load_dir(path, names):
  load = lambda f: np.load(os.path.join(path, f))
  train = {n: jnp.asarray(load(f'train_{n}.npy')) for n in names}
  val = {n: jnp.asarray(load(f'val_{n}.npy')) for n in names}
  return train, load('train_y.npy'), val, load('val_y.npy')


def best_time(fn, *args, repeats=3):
  jax.block_until_ready(fn(*args))  # compile + warm
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return min(times)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--features', default='synthetic', help="'synthetic' or a directory")
  p.add_argument('--num_train', type=int, default=45_000)
  p.add_argument('--num_val', type=int, default=5_000)
  p.add_argument('--endpoints', default='', help='comma-separated subset')
  p.add_argument('--preset', default='cifar10', help='configs/linear_eval.py preset')
  p.add_argument('--weight_decays', default='', help="L2 grid ('' = the preset's)")
  p.add_argument('--tol', type=float, default=0.0, help="0 = the preset's")
  p.add_argument('--iters', type=int, default=0, help="cap per grid point (0 = preset's)")
  p.add_argument('--precond_rank', type=int, default=-1, help="-1 = the preset's")
  p.add_argument('--cache_dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--numpy', action='store_true', help='also time numpy BLAS passes')
  p.add_argument('--sgd_epochs', type=int, default=0)
  p.add_argument('--skip_convergence', action='store_true')
  args = p.parse_args()

  config = le_configs.get_config(args.preset)
  cfg = linear.make_config(config.train)
  if args.weight_decays:
    cfg['weight_decays'] = tuple(float(w) for w in args.weight_decays.split(','))
  if args.tol > 0:
    cfg['tol'] = args.tol
  if args.precond_rank >= 0:
    cfg['precond_rank'] = args.precond_rank
  iters = args.iters or config.eval.lbfgs_iters
  dev = jax.devices()[0]
  print(f'device: {dev.platform} {dev.device_kind} x{jax.device_count()}, jax '
        f'{jax.__version__}, host cores {os.cpu_count()}', flush=True)

  dims = trunk_dims()
  if args.endpoints:
    dims = {n: dims[n] for n in args.endpoints.split(',')}
  t = time.perf_counter()
  if args.features == 'synthetic':
    train, y, val, yv = synthetic(dims, args.num_train, args.num_val)
    desc = 'SYNTHETIC latent-factor features with the measured spectrum (see docstring)'
  else:
    train, y, val, yv = load_dir(args.features, sorted(dims))
    desc = f'features from {args.features}'
  if args.cache_dtype == 'bfloat16':
    train = {k: v.astype(jnp.bfloat16) for k, v in train.items()}
  jax.block_until_ready(train)
  n = int(y.shape[0])
  dims = {k: int(v.shape[1]) for k, v in train.items()}
  print(f'features: {desc}; {n} train / {int(yv.shape[0])} val rows, dims {dims} '
        f'(total {sum(dims.values())}), {args.cache_dtype}; made in '
        f'{time.perf_counter() - t:.1f}s', flush=True)

  # 1-2. Floor and one pass, per endpoint.
  stats = linear.feature_stats(train)
  total = {'bytes': 0, 'floor': 0.0, 'pass': 0.0, 'numpy': 0.0}
  pass_s = {}
  sum_fn = jax.jit(lambda x: jnp.sum(x, dtype=jnp.float32))
  print(f"{'endpoint':12s} {'D':>6s} {'GB':>6s} {'sum s':>7s} {'GB/s':>6s} "
        f"{'pass s':>7s} {'x floor':>7s}" + (f" {'numpy s':>8s}" if args.numpy else ''))
  for name in sorted(train):
    x = train[name]
    if x.dtype != jnp.float32:
      x = x.astype(jnp.float32)  # what the solver reads (it widens bf16 caches)
    nbytes = x.size * x.dtype.itemsize
    floor = best_time(sum_fn, x, repeats=args.repeats)
    block = solvers.block_rows(x.shape[1], n)
    fg = jax.jit(lambda x, th, m, s, block=block: solvers.objective(
        x, jnp.asarray(y), th, m, s, 1e-4, block=block))
    theta = jnp.asarray(np.random.RandomState(0).randn(x.shape[1] + 1, 10) * 1e-3,
                        jnp.float32)
    one = best_time(fg, x, theta, *stats[name], repeats=args.repeats)
    row = (f'{name:12s} {x.shape[1]:6d} {nbytes / 1e9:6.2f} {floor:7.3f} '
           f'{nbytes / floor / 1e9:6.1f} {one:7.3f} {one / floor:7.2f}')
    if args.numpy:
      xn = np.asarray(x)
      w = np.asarray(theta[:-1])
      tn = []
      for _ in range(args.repeats):
        t = time.perf_counter()
        g = xn @ w
        _ = g.T @ xn
        tn.append(time.perf_counter() - t)
      del xn
      total['numpy'] += min(tn)
      row += f' {min(tn):8.3f}'
    print(row, flush=True)
    total['bytes'] += nbytes
    total['floor'] += floor
    total['pass'] += one
    pass_s[name] = one
    del x
  ratio = total['pass'] / total['floor']
  print(f"one pass over all {len(train)} endpoints: {total['pass']:.2f}s; memory floor "
        f"{total['floor']:.2f}s ({total['bytes'] / 1e9:.2f} GB read once at "
        f"{total['bytes'] / total['floor'] / 1e9:.1f} GB/s): {ratio:.2f}x the floor "
        f"({ratio / 2:.2f}x a two-read floor: logits and gradient reading x apart)" +
        (f"; numpy BLAS x @ W then g' @ x: {total['numpy']:.2f}s" if args.numpy else ''),
        flush=True)

  # 3. Time to convergence of the default cached probe.
  if not args.skip_convergence:
    print(f"L-BFGS: weight_decays {cfg['weight_decays']}, tol {cfg['tol']}, cap {iters} "
          f"iterations per point, precond_rank {cfg['precond_rank']}", flush=True)

    def log(name, i):
      print(f"  {name:12s} wd={i['weight_decay']:<8g} iters={i['iters']:4d} "
            f"passes={i['evals']:4d} converged={i['converged']!s:5s} "
            f"max|g|={i['grad_max']:.1e} loss={i['value']:.4f} {i['seconds']:6.1f}s",
            flush=True)

    t = time.perf_counter()
    res = solvers.train_lbfgs(train, y, val, yv, num_classes=10, cfg=cfg, iters=iters,
                              log_fn=log)
    wall = time.perf_counter() - t
    info = res['solver_info']
    passes = sum(i['evals'] for v in info.values() for i in v)
    in_passes = sum(i['evals'] * pass_s[n] for n, v in info.items() for i in v)
    precond_s = sum(v[0]['precond_seconds'] for v in info.values())
    for name, s in sorted(res['selected'].items()):
      cells = ', '.join(f"{g['weight_decay']:g}: {100 * g['val_top1']:.2f}"
                        for g in s['grid'])
      print(f"  {name:12s} chose wd={s['weight_decay']:g}: val top-1 "
            f"{100 * s['val_top1']:.2f} ({cells})")
    print(f"all {len(train)} endpoints x {len(cfg['weight_decays'])} L2 points: "
          f"{wall:.1f}s wall, every point converged: {res['stopped_early']}; "
          f"{passes} passes ~ {in_passes:.1f}s at the pass times above, "
          f"preconditioners {precond_s:.1f}s, the rest (statistics, compilation, "
          f"L-BFGS bookkeeping, validation) {wall - in_passes - precond_s:.1f}s",
          flush=True)

  # 4. The SGD probe, for comparison.
  if args.sgd_epochs > 0:
    scfg = dict(cfg, epochs=args.sgd_epochs, eval_every=1, patience=-1)
    res = linear.train_cached(train, y, val, yv, num_classes=10, cfg=scfg)
    steady = res['chunk_seconds'][1:] or res['chunk_seconds']
    per = sum(s for _, s in steady) / sum(e for e, _ in steady)
    print(f"SGD probe ({scfg['lr_scaling']} lr, {len(linear.grid(scfg))} grid points, "
          f"batch {scfg['batch_size']}): {per:.2f}s per epoch of all endpoints "
          f"(validation included; first epoch with compilation: "
          f"{res['chunk_seconds'][0][1]:.1f}s)", flush=True)


if __name__ == '__main__':
  main()
