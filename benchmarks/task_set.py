r"""What task sets and the finiteness guard cost: three ratios, each measured in one run.

  python benchmarks/task_set.py                      # CPU-sized defaults
  python benchmarks/task_set.py --model resnet50_v2 --width 4 --batch 128 --size 32

(1) set of one vs today's single-task step: the engine's step of a set of one
    (`train.build`, a single task) against `reference_step`, the single-task train step
    as it was before task sets (pretext, trunk + head, the task's loss pmean'd inside the
    differentiated function, optimizer, per-device BN averaged, the non-finite guard),
    kept here as the baseline. Goal >= 0.98.
(2) the 'sum' step of two members (rotation + relative patch location) against the sum of
    their single-task steps (each member's own set-of-one step on the same batch): goal
    >= 0.95 (time(A) + time(B)) / time(A + B).
(3) the finiteness guard: the rotation step with the guard against the same step without
    it (`make_train_step(guard=False)`), on the largest model of the run. Goal >= 0.98.
Each prints the ratio, the absolute images/s of both sides and the device. Timings
alternate between the two sides in rounds and take the median round, so a machine
whose load changes during the run biases neither side.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

from ssl_jax import parallel, train  # pylint: disable=g-import-not-at-top


def reference_step(config, task, model, tx, mesh):
  """The single-task train step of the engine before task sets (commit f7fea89)."""
  axis = parallel.AXIS

  def per_device(state, batch):
    pretext_rng, dropout_rng = train.step_rngs(jax.random.wrap_key_data(state['rng']),
                                               state['step'], jax.lax.axis_index(axis))
    inputs, targets = task.pretext(pretext_rng, batch, train=True)

    def loss_fn(params):
      (outputs, _), mutated = model.apply(
          {'params': params, 'batch_stats': state['batch_stats']}, {task.name: inputs},
          train=True, mutable=['batch_stats'], rngs={'dropout': dropout_rng})
      local, per_example = task.loss(outputs[task.name], targets, axis)
      return jax.lax.pmean(local, axis), (per_example, mutated.get('batch_stats', {}))

    (loss, (per_example, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    batch_stats = jax.lax.pmean(batch_stats, axis)
    new = dict(params=params, batch_stats=batch_stats, opt_state=opt_state,
               step=state['step'] + 1, rng=state['rng'])
    finite = jnp.isfinite(loss) & train.all_finite((params, batch_stats, opt_state))
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = {k: jax.lax.pmean(jnp.mean(v), axis) for k, v in per_example.items()}
    metrics['loss'] = loss
    metrics['finite'] = finite
    return new, metrics

  step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(axis)), out_specs=(P(), P()))
  return jax.jit(step, donate_argnums=0)


def _config(module, args, width=None):
  c = module.get_config('smoke')
  c.model.update(name=args.model, width=width or args.width, small_input=True,
                 patch_strides=False, dtype=args.dtype)
  c.data.image_size = args.size
  c.batch_size = c.eval_batch_size = args.batch
  c.data.source = 'in_memory'
  c.optimizer.update(schedule='constant', warmup_epochs=0.0, decay_epochs=())
  return c


def _arrays(n, size, seed=0):
  rng = np.random.RandomState(seed)
  return {s: (rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8),
              rng.randint(0, 10, n).astype(np.int32)) for s in ('train', 'val')}


def _batch(run, name):
  return next(run.train_batches())[name]


def _copy(state):
  return jax.tree.map(jnp.copy, state)


def timed(runners, rounds, steps):
  """{name: median seconds per step} over `rounds` alternating rounds of `steps` each.

  runners: {name: (step_fn, state, batch)}; every step function donates its state.
  """
  states = {k: _copy(v[1]) for k, v in runners.items()}
  for k, (fn, _, batch) in runners.items():  # compile + warm up
    states[k], m = fn(states[k], batch)
    jax.block_until_ready(m)
  times = {k: [] for k in runners}
  for _ in range(rounds):
    for k, (fn, _, batch) in runners.items():
      t = time.perf_counter()
      for _ in range(steps):
        states[k], m = fn(states[k], batch)
      jax.block_until_ready(m)
      times[k].append((time.perf_counter() - t) / steps)
  return {k: float(np.median(v)) for k, v in times.items()}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', default='resnet50_v2')
  p.add_argument('--width', type=int, default=1)
  p.add_argument('--guard_width', type=int, default=2,
                 help='width of the (larger) model of the guard comparison')
  p.add_argument('--dtype', default='float32')
  p.add_argument('--size', type=int, default=32)
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--rounds', type=int, default=7)
  p.add_argument('--steps', type=int, default=3)
  args = p.parse_args()
  from configs import multitask as multitask_config  # pylint: disable=g-import-not-at-top
  from configs import relative_patch_location as rpl_config  # pylint: disable=g-import-not-at-top
  from configs import rotation as rotation_config  # pylint: disable=g-import-not-at-top
  device = (f'{jax.devices()[0].device_kind} x{jax.device_count()} '
            f'({jax.default_backend()})')
  print(f'device: {device}; {args.model} k={args.width} {args.dtype}, {args.size} px, '
        f'batch {args.batch} per member; median of {args.rounds} alternating rounds of '
        f'{args.steps} steps')
  arrays = _arrays(max(args.batch, 64), args.size)

  # (1) a set of one against the pre-task-set single-task step.
  rot = train.build(_config(rotation_config, args), arrays=arrays)
  (member,) = rot.task_set.members
  batch = _batch(rot, 'rotation')
  ref = reference_step(rot.config, member.task, rot.model, rot.tx, rot.mesh)
  t = timed({'set_of_one': (rot.train_step_for(('rotation',)), rot.state, batch),
             'reference': (ref, rot.state, batch)}, args.rounds, args.steps)
  b = args.batch
  print(f"(1) set of one / today's single-task step: {t['reference'] / t['set_of_one']:.3f} "
        f"(goal >= 0.98); {b / t['set_of_one']:.1f} vs {b / t['reference']:.1f} img/s")

  # (2) the 'sum' step of two members against the sum of their single-task steps.
  mc = multitask_config.get_config('smoke')
  mc.model = _config(rotation_config, args).model
  mc.data.image_size = args.size
  mc.data.source = 'in_memory'
  mc.batch_size = mc.eval_batch_size = args.batch
  mc.optimizer.update(schedule='constant', warmup_epochs=0.0, decay_epochs=())
  multi = train.build(mc, arrays=arrays)
  batches = next(multi.train_batches())
  rpl_c = _config(rpl_config, args)
  rpl_c.input.pp_train = mc.tasks.multitask.members.relative_patch_location.pp_train
  rpl_c.input.pp_eval = mc.tasks.multitask.members.relative_patch_location.pp_eval
  rpl = train.build(rpl_c, arrays=arrays)
  t = timed({'sum': (multi.train_step_for(multi.task_set.names), multi.state, batches),
             'rotation': (rot.train_step_for(('rotation',)), rot.state, batches['rotation']),
             'rpl': (rpl.train_step_for(('relative_patch_location',)), rpl.state,
                     batches['relative_patch_location'])}, args.rounds, args.steps)
  ratio = (t['rotation'] + t['rpl']) / t['sum']
  print(f"(2) (rotation + relative patch location single steps) / 'sum' step: {ratio:.3f} "
        f"(goal >= 0.95); sum step {2 * b / t['sum']:.1f} img/s, singles {b / t['rotation']:.1f}"
        f" and {b / t['rpl']:.1f} img/s")

  # (3) the guard, on the larger model.
  big = train.build(_config(rotation_config, args, width=args.guard_width), arrays=arrays)
  batch = _batch(big, 'rotation')
  t = timed({'guard': (big.train_step_for(('rotation',)), big.state, batch),
             'no_guard': (big.train_step_for(('rotation',), guard=False), big.state, batch)},
            args.rounds, args.steps)
  print(f"(3) step with the finiteness guard / without ({args.model} k={args.guard_width}): "
        f"{t['no_guard'] / t['guard']:.3f} (goal >= 0.98); {b / t['guard']:.1f} vs "
        f"{b / t['no_guard']:.1f} img/s")


if __name__ == '__main__':
  main()
