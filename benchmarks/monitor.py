r"""Benchmark: the training monitor's share of a pretext run's wall time.

  python benchmarks/monitor.py                       # rotation cifar10_cpu, every 500 steps
  python benchmarks/monitor.py --every 250 --train_examples 5000 --steps 40

Measured in one process on the preset's real data (TFDS CIFAR-10 held in memory) and
model: the steady-state seconds of a training step (after its compilation, `--steps`
steps), the monitor's set-up (images preprocessed once), its first call (compilation
included) and its steady calls (`--calls`). The share at the preset's length is then

    monitor = set-up + first call + (calls - 1) x steady call,  calls = total / every
    share   = monitor / (train compile + total x step + monitor)

with both parts measured here, beside each other (the goal: <= 5%). Prints the parts,
the share and the device. `--synthetic` uses random images (no TFDS needed).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--preset', default='cifar10_cpu', help='configs/rotation.py preset')
  p.add_argument('--every', type=int, default=500, help='monitor interval (steps)')
  p.add_argument('--train_examples', type=int, default=2000)
  p.add_argument('--val_examples', type=int, default=1000)
  p.add_argument('--presets', default='k20_t0.07,k200_t0.1', help='kNN presets')
  p.add_argument('--endpoints', default='pre_logits')
  p.add_argument('--steps', type=int, default=30, help='timed training steps')
  p.add_argument('--calls', type=int, default=3, help='timed steady monitor calls')
  p.add_argument('--synthetic', action='store_true')
  args = p.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from configs import rotation  # pylint: disable=g-import-not-at-top
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  from ssl_jax.evaluation import monitor  # pylint: disable=g-import-not-at-top

  c = rotation.get_config(args.preset)
  with c.unlocked():
    c.run_linear_eval = False
    if args.synthetic:
      c.data.source = 'synthetic'
      c.data.synthetic_examples = max(args.train_examples, 4096)
    c.evals = ml_collections.ConfigDict(dict(
        every_steps=args.every, train_examples=args.train_examples,
        val_examples=args.val_examples, batch_size=250, pool_mode='max', target_dims=9000,
        knn=ml_collections.ConfigDict(dict(type='knn', enabled=True,
                                           presets=tuple(args.presets.split(',')),
                                           endpoints=args.endpoints))))
  t = time.perf_counter()
  run = train.build(c, None)
  build_s = time.perf_counter() - t
  batches = run.train_batches()
  state = run.state
  t = time.perf_counter()
  state, m = run.train_step(state, next(batches))
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t
  for _ in range(3):  # warm
    state, m = run.train_step(state, next(batches))
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(args.steps):
    state, m = run.train_step(state, next(batches))
  jax.block_until_ready(m)
  step_s = (time.perf_counter() - t) / args.steps

  t = time.perf_counter()
  mon = monitor.create(run)
  setup_s = time.perf_counter() - t
  t = time.perf_counter()
  first = mon(state, 1)
  first_s = time.perf_counter() - t
  steady = []
  for i in range(args.calls):
    t = time.perf_counter()
    mon(state, 2 + i)
    steady.append(time.perf_counter() - t)
  steady_s = sum(steady) / len(steady)

  total = run.total_steps
  calls = total // args.every
  mon_s = setup_s + first_s + max(calls - 1, 0) * steady_s
  train_s = compile_s + total * step_s
  share = mon_s / (train_s + mon_s)
  print(f'rotation {args.preset}: {c.model.name} k={c.model.width}, batch {c.batch_size}, '
        f'{total} steps; monitor every {args.every} steps ({calls} calls): kNN '
        f'{args.presets} on {args.endpoints}, bank {mon.sizes["train"]}, '
        f'queries {mon.sizes["val"]} (val)')
  print(f'  build {build_s:.1f} s, train step compile {compile_s:.1f} s, '
        f'{step_s * 1e3:.1f} ms/step -> training {train_s:.0f} s')
  print(f'  monitor: set-up {setup_s:.1f} s, first call {first_s:.1f} s (compile), '
        f'steady call {steady_s:.2f} s -> {mon_s:.1f} s')
  print(f'  monitor share of the run: {100 * share:.2f}% (goal <= 5%); '
        f'device {jax.devices()[0].platform}: {jax.devices()[0].device_kind} '
        f'x{jax.device_count()}')
  print('  first call:', {k: round(v, 4) for k, v in sorted(first.items())})
  return share


if __name__ == '__main__':
  main()
