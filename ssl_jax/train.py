"""Pretext (and supervised) training: one engine, assembled in one place (`build`), and
the training loop that reads top to bottom in marked sections.

    python -m ssl_jax.main --config configs/rotation.py:cifar10_cpu --workdir DIR

    run = train.build(config)                 # a notebook, a benchmark, fine-tuning
    state = run.state
    for step, batches in zip(range(run.start_step + 1, run.start_step + 101),
                             run.train_batches()):
      state, metrics = run.train_step(state, batches)
    print(run.evaluate(state))

Data parallelism has pmap semantics through `jax.shard_map` over the 1-D 'data'
mesh: one program per device, per-device BatchNorm statistics unless
`config.model.cross_device_bn`, gradients the mean over the global batch.

The engine trains a task set (`tasks.TaskSet`): a single task is a set of one, whose
metric names, random keys, checkpoint layout and numbers are those of the single task.
Each member has its own stream (preprocessing strings, batch size), loss weight, rate and
input mode; the trunk is shared (`PretextModel`: params['trunk'], params['heads'][member]).
Schedules: 'sum' (each step runs every member on its own sub-batch and differentiates
sum_m w_m * loss_m) and 'sample' (each step draws one member with probability
rate_m / sum(rates) from (seed, step), the same on every device and host; one compiled
step per member). Heads and trunks may `sow` extra loss terms into the 'losses'
collection (e.g. the lasso's L1 penalty): they are added to the differentiated loss and
logged (`extra_<name>`); values sown into 'metrics' are logged as they are (`<name>`,
e.g. the lasso's alpha). A member's pretext stage runs inside the step on the device, or
on the host CPU when `config.input.pretext_on_device` is False.

BatchNorm with several members: the trunk runs once per member per step (each member's
batch is its own BN batch, as each task had its own workers in Doersch and Zisserman);
the trunk's moving averages become the mean of the members' updates (the moving average
of the members' equally weighted mixture, independent of member order; with 'sample' the
mixture is weighted by the rates), each head's those of its own member.

This module imports no TensorFlow: the tf.data source and clu's metric writers are
imported inside `build` (TFDS source only) and `train_loop`.
"""
import collections
import contextlib
import dataclasses
import functools
import math
import signal
import threading
import time
from typing import Any, Callable, Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import flax.linen as nn
import numpy as np
import optax

from ssl_jax import bn_stats
from ssl_jax import checkpoint
from ssl_jax import config_lib
from ssl_jax import models
from ssl_jax import optim
from ssl_jax import parallel
from ssl_jax import tasks
from ssl_jax.data import axes
from ssl_jax.data import sources
from ssl_jax.tasks import common

AXIS = parallel.AXIS
dummy_batch = sources.dummy_batch  # (kept here for callers of the old name)


class NonFiniteLossError(FloatingPointError):
  """The loss or the updated state became NaN or inf; the last good state is kept."""


# ------------------------------------------------------------------ model


class HeadSet(nn.Module):
  """The members' heads, each under params['heads'][member name]."""
  specs: tuple  # ((member name, head module), ...)

  @nn.compact
  def __call__(self, name, endpoints, inputs, train):
    head = dict(self.specs)[name].clone(parent=self, name=name)
    return head(endpoints, inputs, train)


class PretextModel(nn.Module):
  """The shared trunk (no logits layer) plus the heads of the trained members.

  `__call__(inputs {member: pretext inputs}, train) -> ({member: head outputs},
  {member: trunk endpoints})` for the members present in `inputs`: for each, the trunk
  runs once over all of inputs[member]['image'] f32[B, n, h, w, c] flattened to
  [B * n, h, w, c] (image-major, one BatchNorm batch), then the member's head reads the
  endpoints. Initialise with inputs for every member (every head gets parameters).
  """
  model: flax.core.FrozenDict  # config.model
  specs: tuple                 # ((member name, head module), ...)

  def setup(self):
    m = self.model
    self.trunk = models.create_trunk(
        m, bn_axis_name=AXIS if m['cross_device_bn'] else None)
    self.heads = HeadSet(self.specs)

  def __call__(self, inputs, train):
    outputs, endpoints = {}, {}
    for name, _ in self.specs:
      if name not in inputs:
        continue
      x = inputs[name]['image']
      _, eps = self.trunk(x.reshape((-1,) + x.shape[-3:]), train=train)
      outputs[name] = self.heads(name, eps, inputs[name], train)
      endpoints[name] = eps
    return outputs, endpoints


def _as_set(task, config):
  return tasks.as_task_set(task, config)


def make_model(config, task):
  """The trunk of config.model with the heads of `task` (a Task or a TaskSet)."""
  task_set = _as_set(task, config)
  return PretextModel(model=flax.core.FrozenDict(config.model.to_dict()),
                      specs=tuple((m.name, m.task.head) for m in task_set.members))


def all_finite(tree):
  """bool[]: every floating value of the pytree is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


# ------------------------------------------------------------------ task-set plumbing


def member_key(base, index, num_members):
  """The base key of member `index`: the job's key for a set of one (today's single-task
  keys), fold_in(key, index) when there are several."""
  return base if num_members == 1 else jax.random.fold_in(base, index)


def _splitmix64(x):
  x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
  x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)).astype(np.uint64)
  x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)).astype(np.uint64)
  return x ^ (x >> np.uint64(31))


def draw_members(seed, steps, rates):
  """The member drawn at each step by schedule 'sample' (host numpy, no state).

  A counter-based draw: u = splitmix64(seed, step) / 2^64 in [0, 1), then the first
  member whose cumulative rate share exceeds u. The same on every host and device, any
  range of steps in any order (a resumed run draws the same sequence).

  Args:
    seed: int >= 0 (config.seed).
    steps: int array of 0-based step indices (the train step's count before the step).
    rates: non-negative rates, not all zero.
  Returns:
    i32[len(steps)] member indices.
  Raises:
    ValueError for negative rates or all rates zero.
  """
  rates = np.asarray(rates, np.float64)
  if (rates < 0).any() or not rates.sum() > 0:
    raise ValueError(f'member rates {rates.tolist()} must be >= 0 and not all zero')
  steps = np.asarray(steps, np.uint64)
  with np.errstate(over='ignore'):
    bits = _splitmix64(_splitmix64(np.full(steps.shape, seed, np.uint64)) ^ steps)
  u = (bits >> np.uint64(11)).astype(np.float64) / float(1 << 53)
  edges = np.cumsum(rates) / rates.sum()
  return np.minimum(np.searchsorted(edges, u, side='right'), len(rates) - 1).astype(np.int32)


def _sown_losses(collection):
  """{name: scalar} of the values sown into a collection ('losses', 'metrics'), summed
  by name over every module and every call."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(collection)) if collection else {}
  out = {}
  for path, values in flat.items():
    values = values if isinstance(values, tuple) else (values,)
    total = sum(jnp.sum(v) for v in values)
    out[path[-1]] = out.get(path[-1], 0.0) + total
  return out


def _combine_batch_stats(old, updates):
  """The new batch_stats of a step from each active member's updated tree.

  updates: [(member name, updated batch_stats)]. The trunk's moving averages are the
  mean of the members' (one member: its own, exactly); each head's come from its member.
  """
  if len(updates) == 1:
    return updates[0][1]
  if not old:
    return old
  new = dict(old)
  if 'trunk' in old:
    new['trunk'] = jax.tree.map(lambda *xs: sum(xs) / len(xs),
                                *[u['trunk'] for _, u in updates])
  if 'heads' in old:
    heads = dict(old['heads'])
    for name, u in updates:
      if name in u.get('heads', {}):
        heads[name] = u['heads'][name]
    new['heads'] = heads
  return new


def _metric_name(member, key, single):
  return key if single else f'{member}/{key}'


def prefixed(prefix, key):
  """'train' + 'loss' -> 'train_loss'; 'train' + 'rotation/loss' -> 'rotation/train_loss'."""
  if '/' in key:
    member, rest = key.split('/', 1)
    return f'{member}/{prefix}_{rest}'
  return f'{prefix}_{key}'


# ------------------------------------------------------------------ train state


def init_state(config, task, model, mesh, image_shape, tx_fn):
  """Initial train state on every device: dict(params, batch_stats, opt_state, step, rng).

  Args:
    task: a Task or TaskSet.
    image_shape: ((V,) H, W, C) of the uint8 images the pretext stage receives; for a
      set of several, {member: shape}.
    tx_fn: params -> optax transformation (weight-decay masks need the params).
  Returns:
    (state, tx).
  """
  task_set = _as_set(task, config)
  shapes = ({task_set.members[0].name: image_shape} if task_set.single else image_shape)

  def variables_fn():
    rng = jax.random.key(config.seed)
    inputs = {}
    for m in task_set.members:
      batch = sources.dummy_batch(shapes[m.name])
      batch = dict(batch, image=common.apply_input_mode(batch['image'], m.input_mode))
      inputs[m.name] = m.task.pretext(jax.random.key(0), batch, train=False)[0]
    init_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, 1))
    return model.init({'params': init_rng, 'dropout': dropout_rng}, inputs, train=False)

  # The optimizer's masks need only the parameter tree's structure.
  tx = tx_fn(jax.eval_shape(variables_fn)['params'])

  def state_fn():
    variables = variables_fn()
    params = variables['params']
    return dict(params=params, batch_stats=variables.get('batch_stats', {}),
                opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                rng=jax.random.key_data(jax.random.key(config.seed)))

  # One compiled program, its outputs replicated on every device of every host
  # (eager initialisation would compile each small op on its own: seconds on a CPU).
  init = jax.jit(state_fn, out_shardings=parallel.replicated(mesh)).lower()
  # XLA:CPU spends ~10 s optimising the unrolled threefry hashes of the initialisers;
  # a program that runs once needs none of it (same values, compiled in < 1 s).
  options = ({'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
             if jax.default_backend() == 'cpu' else None)
  return init.compile(options)(), tx


def with_trunk(state, trunk_params, trunk_batch_stats, tx):
  """`state` with the trunk's params and BN statistics replaced (fine-tuning, transfer).

  The optimizer state is re-initialised for the new parameters.
  Raises:
    ValueError naming the first parameters whose structure or shapes differ.
  """
  def check(kind, new, old):
    a = flax.traverse_util.flatten_dict(jax.tree.map(np.shape, dict(old)))
    b = flax.traverse_util.flatten_dict(jax.tree.map(np.shape, dict(new)))
    if a != b:
      bad = sorted(set(a) ^ set(b)) + sorted(k for k in set(a) & set(b) if a[k] != b[k])
      shown = ', '.join('/'.join(k) + (f' {a.get(k)} -> {b.get(k)}') for k in bad[:4])
      raise ValueError(f'the initial trunk does not fit this model: {kind} differ at '
                       f'{shown}{" ..." if len(bad) > 4 else ""}')
  check('parameters', trunk_params, state['params']['trunk'])
  stats = state['batch_stats']
  if 'trunk' in stats:
    check('BN statistics', trunk_batch_stats, stats['trunk'])
  sharding = jax.tree.leaves(state['params'])[0].sharding
  put = lambda t, like: jax.tree.map(
      lambda x, y: jax.device_put(np.asarray(x, y.dtype), sharding), t, like)
  params = dict(state['params'], trunk=put(trunk_params, state['params']['trunk']))
  new = dict(state, params=params)
  if 'trunk' in stats:
    new['batch_stats'] = dict(stats, trunk=put(trunk_batch_stats, stats['trunk']))
  new['opt_state'] = jax.jit(tx.init)(params)
  return new


# ------------------------------------------------------------------ steps


def step_rngs(base, step, device_index):
  """(pretext_rng, dropout_rng) of one device at one step; both placements use it."""
  return jax.random.split(jax.random.fold_in(jax.random.fold_in(base, step), device_index))


def eval_rng(seed, device_index):
  """The fixed key of the evaluation pretext stage (same batches, same copies)."""
  return jax.random.fold_in(jax.random.key(seed + 1), device_index)


def _pretext_stage(member, batch, rng, train, on_device):
  """(inputs, targets) of a member's batch: its input mode then its pretext stage here,
  or the host's result."""
  if on_device:
    batch = dict(batch, image=common.apply_input_mode(batch['image'], member.input_mode))
    return member.task.pretext(rng, batch, train=train)
  return batch['inputs'], batch['targets']


def _active(task_set, members):
  names = task_set.names if members is None else tuple(members)
  return [(task_set.names.index(n), task_set.member(n)) for n in names]


def make_train_step(config, task, model, tx, mesh, *, members=None, guard=True):
  """Returns jit(state, batch) -> (state, metrics), batch sharded on 'data'.

  Args:
    task: a Task or TaskSet. A set of one takes its batch as a single task does; a set
      of several takes {member: batch} for the members of `members`.
    members: the member names this step runs (default all: schedule 'sum'; one name:
      a 'sample' step).
    guard: keep the old state when the loss or new state is non-finite (always on in
      the engine; False only for the guard's benchmark).
  `batch` holds uint8 `image` and `label` (pretext on device) or the host-made
  `inputs`/`targets`. Metrics are global means (a set of several: `<member>/<key>`,
  `<member>/grad_norm` of its weighted loss's gradient, and the total `loss`);
  `finite` is False when the loss or any value of the updated state (params,
  batch_stats, opt_state) is NaN/inf, in which case the returned state is the input
  state unchanged.
  """
  task_set = _as_set(task, config)
  on_device = config.input.pretext_on_device
  single = task_set.single
  active = _active(task_set, members)
  n = len(task_set.members)

  def per_device(state, batches):
    if single:
      batches = {task_set.members[0].name: batches}
    base = jax.random.wrap_key_data(state['rng'])
    device = jax.lax.axis_index(AXIS)
    grads, updates, metrics = None, [], {}
    total = 0.0
    for index, m in active:
      pretext_rng, dropout_rng = step_rngs(member_key(base, index, n), state['step'], device)
      inputs, targets = _pretext_stage(m, batches[m.name], pretext_rng, True, on_device)

      def loss_fn(params, m=m, inputs=inputs, targets=targets, dropout_rng=dropout_rng):
        (outputs, _), mutated = model.apply(
            {'params': params, 'batch_stats': state['batch_stats']}, {m.name: inputs},
            train=True, mutable=['batch_stats', 'losses', 'metrics'],
            rngs={'dropout': dropout_rng})
        local, per_example = m.task.loss(outputs[m.name], targets, AXIS)
        # pmean inside the differentiated function: under shard_map the gradient
        # w.r.t. the replicated params is already summed over devices, so this
        # gives exactly the gradient of the global-batch mean loss.
        task_loss = jax.lax.pmean(local, AXIS)
        extras = {k: jax.lax.pmean(v, AXIS)
                  for k, v in _sown_losses(mutated.get('losses')).items()}
        sown = {k: jax.lax.pmean(v, AXIS)
                for k, v in _sown_losses(mutated.get('metrics')).items()}
        value = task_loss if single else m.weight * task_loss
        for v in extras.values():
          value = value + v
        return value, (task_loss, per_example, extras, sown, mutated.get('batch_stats', {}))

      (value, (task_loss, per_example, extras, sown, stats)), g = jax.value_and_grad(
          loss_fn, has_aux=True)(state['params'])
      grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
      total = total + value
      updates.append((m.name, stats))
      for k, v in per_example.items():
        metrics[_metric_name(m.name, k, single)] = jax.lax.pmean(jnp.mean(v), AXIS)
      for k, v in extras.items():
        metrics[_metric_name(m.name, f'extra_{k}', single)] = v
      for k, v in sown.items():  # values heads sow to be logged (e.g. the lasso's alpha)
        metrics[_metric_name(m.name, k, single)] = v
      if not single:
        metrics[f'{m.name}/loss'] = task_loss
        metrics[f'{m.name}/grad_norm'] = optax.global_norm(g)
    updates_, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates_)
    # Per-device BN moving averages are averaged so the saved state is one model
    # (the mean of per-device EMAs equals the EMA of the mean per-device stats).
    batch_stats = jax.lax.pmean(_combine_batch_stats(state['batch_stats'], updates), AXIS)
    new = dict(params=params, batch_stats=batch_stats, opt_state=opt_state,
               step=state['step'] + 1, rng=state['rng'])
    # The loss is computed with the weights before the update: a finite loss can
    # come with a non-finite update. Checking the new state itself is what keeps
    # every saved state finite.
    finite = jnp.isfinite(total) & all_finite((params, batch_stats, opt_state))
    if guard:
      new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    metrics['loss'] = total
    metrics['finite'] = finite
    return new, metrics

  step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)),
                       out_specs=(P(), P()))
  return jax.jit(step, donate_argnums=0)


def make_eval_step(config, task, model, mesh, *, member=None):
  """Returns jit(state, batch) -> dict of masked sums over source images (+ `count`).

  For one member (default: the only one) of a Task or TaskSet; its batch as in
  `make_train_step`'s set of one. Per-example metrics are averaged over each image's
  copies (rotations, permutations, pairs, views) and padding images (mask False) count
  zero.
  """
  task_set = _as_set(task, config)
  on_device = config.input.pretext_on_device
  ((index, m),) = _active(task_set, [member or task_set.members[0].name])
  n = len(task_set.members)

  def per_device(state, batch):
    mask = batch['mask'].astype(jnp.float32)
    rng = member_key(eval_rng(config.seed, jax.lax.axis_index(AXIS)), index, n)
    inputs, targets = _pretext_stage(m, batch, rng, False, on_device)
    outputs, _ = model.apply({'params': state['params'], 'batch_stats': state['batch_stats']},
                             {m.name: inputs}, train=False)
    _, per_example = m.task.loss(outputs[m.name], targets, AXIS)
    b = mask.shape[0]
    sums = {k: jax.lax.psum(jnp.sum(v.reshape(b, -1).mean(axis=1) * mask), AXIS)
            for k, v in per_example.items()}
    sums['count'] = jax.lax.psum(jnp.sum(mask), AXIS)
    return sums

  step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P())
  return jax.jit(step)


def make_bn_stats_step(config, task, model, mesh, *, members=None):
  """Returns jit(state, batch, step) -> moments of every BN layer's input on a train batch.

  For "precise BN" (config.precise_bn_batches): the statistics every BatchNorm
  layer computes in a train-mode forward pass of the current parameters on the
  training batch of `step` (0-based, i32[]; the pretext stage gets that step's
  keys, so it sees the patches/permutations the train step saw), as a flat dict
  {path: value} over the layers the pass runs (`bn_stats.moments`: E[x] in 'mean',
  E[x^2] in 'var'). With several members (batch {member: batch}) the trunk's moments
  are the mean over the members (as the engine's moving averages), each head's its
  member's. Device-averaged: each device normalises its own per-device batch in
  training and all per-device batches have the same size.
  """
  task_set = _as_set(task, config)
  on_device = config.input.pretext_on_device
  single = task_set.single
  active = _active(task_set, members)
  n = len(task_set.members)

  def per_device(state, batches, step):
    if single:
      batches = {task_set.members[0].name: batches}
    base = jax.random.wrap_key_data(state['rng'])
    flat_all = []
    for index, m in active:
      pretext_rng, dropout_rng = step_rngs(member_key(base, index, n), step,
                                           jax.lax.axis_index(AXIS))
      inputs, _ = _pretext_stage(m, batches[m.name], pretext_rng, True, on_device)

      def update_fn(filled, m=m, inputs=inputs, dropout_rng=dropout_rng):
        _, mutated = model.apply({'params': state['params'], 'batch_stats': filled},
                                 {m.name: inputs}, train=True, mutable=['batch_stats'],
                                 rngs={'dropout': dropout_rng})
        return mutated['batch_stats']

      stats = state['batch_stats']
      if not single:  # Only the layers this member runs: the trunk and its own head.
        stats = {k: v for k, v in stats.items() if k == 'trunk'}
        if m.name in state['batch_stats'].get('heads', {}):
          stats['heads'] = {m.name: state['batch_stats']['heads'][m.name]}

        def restricted(filled, update_fn=update_fn):
          full = dict(state['batch_stats'])
          full.update({k: v for k, v in filled.items() if k != 'heads'})
          if 'heads' in filled:
            full['heads'] = dict(full['heads'], **filled['heads'])
          out = update_fn(full)
          keep = {k: out[k] for k in filled if k != 'heads'}
          if 'heads' in filled:
            keep['heads'] = {k: out['heads'][k] for k in filled['heads']}
          return keep
        fn = restricted
      else:
        fn = update_fn
      flat_all.append(flax.traverse_util.flatten_dict(bn_stats.moments(fn, stats)))
    out = {}
    for path in {p for f in flat_all for p in f}:
      values = [f[path] for f in flat_all if path in f]
      out['/'.join(path)] = sum(values) / len(values)
    return jax.lax.pmean(out, AXIS)

  stats_step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS), P()),
                             out_specs=P())
  return jax.jit(stats_step)


def precise_batch_stats(state, bn_stats_step, batches):
  """Population BN statistics over `batches`: (step, batch) pairs of equal-size train batches.

  Returns a tree like state['batch_stats']: 'mean' = E[x], 'var' = E[x^2] - E[x]^2
  over every example of every batch that ran the layer (bn_stats.population); layers no
  batch ran (a member never drawn) keep the state's values.
  """
  if not batches:
    raise ValueError('precise BN needs at least one training batch')
  per_path = collections.defaultdict(list)
  for step, batch in batches:
    for path, value in bn_stats_step(state, batch, np.int32(step)).items():
      per_path[path].append(value)
  flat = flax.traverse_util.flatten_dict(dict(state['batch_stats']))
  out = dict(flat)
  for path, values in per_path.items():
    key = tuple(path.split('/'))
    if key[-1] != 'mean':
      continue
    var_key = key[:-1] + ('var',)
    pop = bn_stats.population([{'mean': m, 'var': v} for m, v in
                               zip(values, per_path['/'.join(var_key)])])
    out[key], out[var_key] = pop['mean'], pop['var']
  return flax.traverse_util.unflatten_dict(out)


def make_host_pretext(config, task, train, *, member=None):
  """The same pretext function run on the host CPU, one chunk per local device.

  Each chunk gets the key the device would have used, so both placements see the
  same per-device randomness (e.g. jigsaw's permutations shared per device).
  Returns run(batch, step) -> dict(inputs, targets, mask) of host numpy arrays.
  """
  task_set = _as_set(task, config)
  ((index, m),) = _active(task_set, [member or task_set.members[0].name])
  n = len(task_set.members)
  pretext = jax.jit(functools.partial(m.task.pretext, train=train), backend='cpu')
  mode = jax.jit(functools.partial(common.apply_input_mode, mode=m.input_mode),
                 backend='cpu')
  num_local = jax.local_device_count()
  first = jax.process_index() * num_local
  base = member_key(jax.random.key(config.seed), index, n)

  def run(batch, step):
    chunks_in, chunks_tgt = [], []
    split = {k: np.array_split(np.asarray(v), num_local) for k, v in batch.items()}
    with jax.transfer_guard('allow'), jax.default_device(jax.devices('cpu')[0]):
      for i in range(num_local):
        if train:
          key = step_rngs(base, step, first + i)[0]
        else:
          key = member_key(eval_rng(config.seed, first + i), index, n)
        chunk = {k: v[i] for k, v in split.items()}
        if m.input_mode != 'rgb':
          chunk['image'] = mode(chunk['image'])
        inputs, targets = pretext(key, chunk)
        chunks_in.append(inputs)
        chunks_tgt.append(targets)
      cat = lambda *xs: np.concatenate([np.asarray(x) for x in xs])
      out = {'inputs': jax.tree.map(cat, *chunks_in), 'targets': jax.tree.map(cat, *chunks_tgt)}
    out['mask'] = batch['mask']
    return out

  return run


# ------------------------------------------------------------------ evaluation


def evaluate(state, eval_step, batches):
  """Mean of every metric over all (unpadded) source images of global `batches`."""
  totals = None
  for batch in batches:
    sums = jax.device_get(eval_step(state, batch))
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
  if totals is None:
    raise ValueError('the evaluation split yielded no batch')
  count = float(totals.pop('count'))
  return {k: float(v) / count for k, v in totals.items()} | {'num_examples': count}


def mean_metrics(rows):
  """{key: mean over the rows that have it} of a list of host metric dicts."""
  sums, counts = {}, {}
  for row in rows:
    for k, v in row.items():
      sums[k] = sums.get(k, 0.0) + float(np.mean(v))
      counts[k] = counts.get(k, 0) + 1
  return {k: sums[k] / counts[k] for k in sums}


# ------------------------------------------------------------------ the engine, assembled


@dataclasses.dataclass
class Run:
  """Everything a loop, a benchmark, a notebook or a fine-tuning evaluation needs.

  Made by `build`. Batches are {member: batch} dicts (a set of one: {task: batch});
  `train_step(state, batches)` and `evaluate(state)` dispatch to the compiled steps.
  Attributes:
    config: the validated job config.
    workdir: where checkpoints go (None: nothing is written).
    task_set: the `tasks.TaskSet` trained.
    mesh, model, tx, schedule (step -> learning rate), state (initial, restored or
      with `init_trunk`), start_step (0, or the restored step).
    sources: {member: data source} (ssl_jax.data.sources).
    steps_per_epoch, total_steps, images_per_step (source images per step: the batch
      size of a single task; the members' sum for 'sum', their rate-weighted mean for
      'sample'), trunk_inputs (trunk inputs per source image, per member).
    manager: the orbax CheckpointManager (None without a workdir).
    restored_from: the restored step or None; init_trunk: what the trunk started from.
  """
  config: Any
  workdir: Optional[str]
  task_set: Any
  mesh: Any
  model: Any
  tx: Any
  schedule: Callable
  state: Any
  start_step: int
  sources: dict
  steps_per_epoch: int
  total_steps: int
  images_per_step: float
  trunk_inputs: dict
  manager: Any = None
  restored_from: Optional[int] = None
  init_trunk: Optional[str] = None
  lock: Any = None  # checkpoint.lock_workdir's, held for the run's life (workdir only)
  host_fns: dict = dataclasses.field(default_factory=dict)
  _train_steps: dict = dataclasses.field(default_factory=dict)
  _eval_steps: dict = dataclasses.field(default_factory=dict)
  _bn_steps: dict = dataclasses.field(default_factory=dict)

  @property
  def single(self):
    return self.task_set.single

  def active(self, step):
    """The member names the step `step` (1-based) runs."""
    if self.task_set.schedule == 'sum':
      return self.task_set.names
    i = int(draw_members(self.config.seed, [step - 1],
                         [m.rate for m in self.task_set.members])[0])
    return (self.task_set.names[i],)

  def _key(self, batches):
    return tuple(sorted(batches))

  def train_step_for(self, names, *, guard=True):
    """The compiled step of the members `names` (batches {member: batch})."""
    key = (tuple(sorted(names)), guard)
    if key not in self._train_steps:
      order = [n for n in self.task_set.names if n in names]
      self._train_steps[key] = make_train_step(self.config, self.task_set, self.model,
                                               self.tx, self.mesh, members=order, guard=guard)
    return self._train_steps[key]

  def train_step(self, state, batches):
    """(state, metrics) after one step on `batches` {member: global batch}."""
    fn = self.train_step_for(self._key(batches))
    return fn(state, batches[self.task_set.names[0]] if self.single else batches)

  def bn_stats_step(self, state, batches, step):
    """Moments of every BN layer's input on `batches` (see `make_bn_stats_step`)."""
    key = self._key(batches)
    if key not in self._bn_steps:
      order = [n for n in self.task_set.names if n in key]
      self._bn_steps[key] = make_bn_stats_step(self.config, self.task_set, self.model,
                                               self.mesh, members=order)
    return self._bn_steps[key](state, batches[self.task_set.names[0]] if self.single
                               else batches, step)

  def train_batches(self, start_step=None):
    """Endless {member: global batch} dicts for steps start_step + 1, ... (each member's
    stream advances only on the steps that run it)."""
    start = self.start_step if start_step is None else start_step
    members = self.task_set.members
    if self.task_set.schedule == 'sum':
      positions = {m.name: start for m in members}
    else:
      drawn = draw_members(self.config.seed, np.arange(start), [m.rate for m in members])
      positions = {m.name: int(np.sum(drawn == i)) for i, m in enumerate(members)}
    streams = {m.name: self.sources[m.name].device_train_batches(
        'train', m.config.batch_size, seed=_member_seed(self.config, i, len(members)),
        start_step=positions[m.name], mesh=self.mesh, host_fn=self.host_fns.get(m.name))
               for i, m in enumerate(members)}  # built now: uploads happen here
    return self._steps(streams, start)

  def _steps(self, streams, start):
    step = start
    while True:
      step += 1
      yield {name: next(streams[name]) for name in self.active(step)}

  def val_batches(self, member):
    """Global held-out batches of one member (its eval preprocessing and batch size)."""
    m = self.task_set.member(member)
    batches = self.sources[member].eval_batches('val', m.config.eval_batch_size)
    host = self.host_fns.get(('eval', member))
    for i, batch in enumerate(batches):
      if self.config.max_eval_batches > 0 and i >= self.config.max_eval_batches:
        break
      yield parallel.global_batch(self.mesh, batch if host is None else host(batch, 0))

  def evaluate(self, state, members=None):
    """Held-out pretext metrics: {key: mean} (a set of several: `<member>/<key>`)."""
    out = {}
    for m in self.task_set.members:
      if members is not None and m.name not in members:
        continue
      if m.name not in self._eval_steps:
        self._eval_steps[m.name] = make_eval_step(self.config, self.task_set, self.model,
                                                  self.mesh, member=m.name)
      res = evaluate(state, self._eval_steps[m.name], self.val_batches(m.name))
      out.update({_metric_name(m.name, k, self.single): v for k, v in res.items()})
    return out


def _member_seed(config, index, num_members):
  """The data-order seed of a member's stream (members see different images per step)."""
  return config.seed if num_members == 1 else config.seed + index


def step_counts(config, num_train, images_per_step):
  """(steps_per_epoch, total_steps) of a job.

  config.step_rounding 'per_epoch' (default): steps_per_epoch = num_train // images per
  step, total = ceil(num_epochs * steps_per_epoch). 'simclr' (SimCLR's reference):
  steps_per_epoch = num_train / images per step (a float: warm-up and decay epochs map
  to fractional boundaries), total = num_train * num_epochs // images per step + 1.
  config.steps_per_epoch / total_steps > 0 override either.
  """
  rounding = config.get('step_rounding', 'per_epoch')
  if config.steps_per_epoch > 0:
    spe = config.steps_per_epoch
  elif rounding == 'simclr':
    spe = num_train / images_per_step
  else:
    spe = max(int(num_train // images_per_step), 1)
  if config.total_steps > 0:
    total = config.total_steps
  elif rounding == 'simclr' and config.steps_per_epoch <= 0:
    total = int(num_train * config.num_epochs // images_per_step) + 1
  else:
    total = int(math.ceil(config.num_epochs * spe))
  return spe, total


def _images_per_step(task_set):
  sizes = [m.config.batch_size for m in task_set.members]
  if task_set.schedule == 'sum':
    return float(sum(sizes))
  rates = np.asarray([m.rate for m in task_set.members], np.float64)
  return float(np.dot(rates, sizes) / rates.sum())


def _member_sources(config, task_set, arrays):
  """{member: source}: one dataset (config.data), each member's own preprocessing."""
  d = config.data
  axes.validate(config, arrays_given=arrays is not None)
  if arrays is None and d.source == 'synthetic':
    arrays = sources.synthetic_arrays(d.synthetic_examples, max(config.eval_batch_size, 1),
                                      d.image_size, d.num_classes, config.seed)
  if arrays is None and d.source == 'in_memory':
    # data.arrays_dir (prepared splits, Pillow, no TensorFlow) or input_pipeline.
    arrays = {s: axes.load_split(config, s) for s in ('train', 'val')}
  if arrays is not None:  # the pretraining data axes: data.pool, then data.subset
    arrays = axes.apply(config, arrays)
  if arrays is None:
    if d.source != 'tfds':
      raise ValueError(f'config.data.source={d.source!r}; allowed: {list(sources.SOURCES)}')
    out = {m.name: sources.TfdsSource(m.config) for m in task_set.members}
    next(iter(out.values())).check()  # one dataset: a missing split fails once, here
    return out
  shared = {}  # the device copy of the images, uploaded once for every member
  return {m.name: sources.ArraySource(arrays, m.config.input.pp_train,
                                      m.config.input.pp_eval, seed=config.seed,
                                      device_cache=shared)
          for m in task_set.members}


def _trunk_inputs(member, image_shape):
  batch = sources.dummy_batch(image_shape, 1)
  return jax.eval_shape(lambda: member.task.pretext(
      jax.random.key(0), batch, train=True)[0]['image']).shape[1]


def build(config, workdir=None, *, arrays=None, init_trunk=None, tx_suffix=None):
  """The engine of a job: validated config, task set, data, model, state, steps.

  The one public place the engine is assembled: `train_loop`, the benchmarks, notebooks
  and fine-tuning call it. Every bad value, missing dataset / split, unwritable or
  foreign workdir is one config_lib.ConfigError here, before anything compiles and
  before anything is written.

  Args:
    config: a pretext ConfigDict (validated here, once).
    workdir: output directory; an existing one is resumed from its newest good
      checkpoint (which wins over init_trunk). None: nothing is read or written.
    arrays: optional {'train': (u8 images, labels), 'val': (...)} instead of loading
      (data.source 'in_memory' without TensorFlow, tests).
    init_trunk: a pretext workdir (its newest checkpoint) or (trunk params, trunk
      batch_stats): the trunk starts from it instead of its initialisation
      (checkpoint.restore_trunk), heads and optimizer fresh.
    tx_suffix: an optax transformation chained after the config's optimizer (tools
      that drive a hyper-parameter per step, e.g. the device check's time-compressed
      schedule through optax.inject_hyperparams); None in training runs.
  Returns:
    a `Run`.
  Raises:
    config_lib.ConfigError (one line) for anything wrong before the first compile.
  """
  parallel.maybe_initialize_distributed(config)
  with config_lib.startup_errors():
    task_set = config_lib.validate(config)
    if _monitor_on(config):
      from ssl_jax.evaluation import monitor as monitor_lib  # pylint: disable=g-import-not-at-top
      monitor_lib.validate(config)
    # One run per workdir: an exclusive lock, held until train_loop ends (or
    # run.lock.release()); the kernel drops it with the process, however it ends.
    lock = checkpoint.lock_workdir(workdir) if workdir is not None else None
  try:
    run = _assemble(config, workdir, task_set, arrays=arrays, init_trunk=init_trunk,
                    tx_suffix=tx_suffix)
  except BaseException:
    if lock is not None:
      lock.release()
    raise
  run.lock = lock
  return run


def _assemble(config, workdir, task_set, *, arrays, init_trunk, tx_suffix):
  """The body of `build` once the config is valid and the workdir locked."""
  with config_lib.startup_errors():
    if workdir is not None:
      checkpoint.check_resume(workdir, config, task_set=task_set)
      checkpoint.check_writable(workdir)
    member_sources = _member_sources(config, task_set, arrays)
    first = next(iter(member_sources.values()))
    sources.check_labels(config, first)
    for m in task_set.members:
      config_lib.check_model_input(m.config, m.task, input_mode=m.input_mode)
    trunk_init = None
    if isinstance(init_trunk, str):
      _, trunk_params, trunk_stats = checkpoint.restore_trunk(init_trunk)
      trunk_init = (trunk_params, trunk_stats)
    elif init_trunk is not None:
      trunk_init = tuple(init_trunk)
  mesh = parallel.make_mesh()
  logging.info('devices: %d (%d local), processes: %d, backend: %s', jax.device_count(),
               jax.local_device_count(), jax.process_count(), jax.default_backend())

  # --- Data: the sources and the placement of the pretext stage, chosen once --------
  num_train = first.num_examples('train')
  images_per_step = _images_per_step(task_set)
  steps_per_epoch, total_steps = step_counts(config, num_train, images_per_step)
  logging.info('%s source: %d train examples, %g images/step, steps/epoch %g, total steps '
               '%d', first.name, num_train, images_per_step, steps_per_epoch, total_steps)
  host_fns = {}
  if not config.input.pretext_on_device:
    for m in task_set.members:
      host_fns[m.name] = make_host_pretext(m.config, task_set, True, member=m.name)
      host_fns[('eval', m.name)] = make_host_pretext(m.config, task_set, False, member=m.name)

  # --- Model, optimizer, state ----------------------------------------------------
  model = make_model(config, task_set)
  warmup_steps = None
  if config.get('step_rounding', 'per_epoch') == 'simclr' and config.steps_per_epoch <= 0:
    warmup_steps = optim.simclr_step_counts(num_train, images_per_step, config.num_epochs,
                                            config.optimizer.warmup_epochs)[0]
  schedule = optim.learning_rate_schedule(config.optimizer, images_per_step,
                                          steps_per_epoch, total_steps,
                                          warmup_steps=warmup_steps)
  overrides = {}
  for m in task_set.members:
    overrides.update(optim.task_overrides(m.name, m.task.weight_decay))
  def tx_fn(params):
    tx = optim.make_optimizer(config.optimizer, params, schedule, overrides)
    return tx if tx_suffix is None else optax.chain(tx, tx_suffix)
  shapes = {m.name: member_sources[m.name].image_shape(train=False) for m in task_set.members}
  state, tx = init_state(config, task_set, model, mesh,
                         next(iter(shapes.values())) if task_set.single else shapes, tx_fn)
  with config_lib.startup_errors():
    if trunk_init is not None:
      state = with_trunk(state, trunk_init[0], trunk_init[1], tx)
  num_params = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in state['params'].items()}
  logging.info('task %s (%s), model %s k=%d: trunk %.2fM parameters, heads %.2fM',
               task_set.name, ', '.join(task_set.names), config.model.name,
               config.model.width, num_params['trunk'] / 1e6, num_params.get('heads', 0) / 1e6)
  trunk_inputs = {m.name: _trunk_inputs(m, shapes[m.name]) for m in task_set.members}

  # --- Checkpoints: resume --------------------------------------------------------
  manager, restored_from = None, None
  if workdir is not None:
    manager = checkpoint.make_manager(workdir, config.max_to_keep)
    with config_lib.startup_errors():
      restored = checkpoint.restore_latest(manager, checkpoint.abstract_of(state),
                                           config=config)
    if restored is not None:
      state = restored
      restored_from = int(jax.device_get(state['step']))
  start_step = int(jax.device_get(state['step']))
  return Run(config=config, workdir=workdir, task_set=task_set, mesh=mesh, model=model, tx=tx,
             schedule=schedule, state=state, start_step=start_step, sources=member_sources,
             steps_per_epoch=steps_per_epoch, total_steps=total_steps,
             images_per_step=images_per_step, trunk_inputs=trunk_inputs, manager=manager,
             restored_from=restored_from,
             init_trunk=init_trunk if isinstance(init_trunk, str) else
             (None if init_trunk is None else 'arrays'),
             host_fns=host_fns)


# ------------------------------------------------------------------ the job


# BatchNorm momentum of the zoo's layers (ssl_jax.models.layers): the moving averages
# still weigh their initial values by 0.99^step.
_BN_MOMENTUM = 0.99


def train_and_evaluate(config, workdir, arrays=None, *, init_trunk=None):
  """Trains config.task (a task or a task set) and writes checkpoints and metrics.

  `build(config, workdir, ...)` then `train_loop`. See `train_loop` for the returned dict.
  """
  return train_loop(build(config, workdir, arrays=arrays, init_trunk=init_trunk))


class _LoggingWriter:
  """Scalars to the log only: the writer where clu is not installed (a JAX-only GPU
  machine has neither clu nor TensorFlow); no TensorBoard events then."""

  def write_scalars(self, step, scalars):
    logging.info('[%d] %s', step, ', '.join(f'{k}={v:.6g}' if isinstance(v, float) else
                                            f'{k}={v}' for k, v in sorted(scalars.items())))

  def flush(self):
    pass


class _NoReport:
  """periodic_actions.ReportProgress's interface, doing nothing (no clu)."""

  def __call__(self, step):
    pass

  def timed(self, name):
    del name
    return contextlib.nullcontext()


def _metric_writers(workdir, is_chief, total_steps):
  """(writer, progress report): clu's (TensorBoard events + log, ETA) when installed."""
  try:
    from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning('clu is not installed: scalars go to the log only, no TensorBoard events')
    return _LoggingWriter(), _NoReport()
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  return writer, periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)


def _monitor_on(config):
  evals = config.get('evals')
  return evals is not None and evals.get('every_steps', 0) > 0


def train_loop(run):
  """The training loop over a `Run` with a workdir: steps, logs, evaluations, checkpoints.

  Returns:
    dict: the final `step`, the last held-out evaluation `val`, the logged training
    means `train_history` (one dict per log step), `preempted` (stopped by SIGTERM)
    and the final train `state` (replicated device arrays).
  """
  config, workdir, manager = run.config, run.workdir, run.manager
  if workdir is None:
    raise ValueError('train_loop needs a Run built with a workdir')
  is_chief = jax.process_index() == 0
  state, start_step, total_steps = run.state, run.start_step, run.total_steps
  if start_step:
    logging.info('resumed from step %d', start_step)
  elif run.init_trunk:
    logging.info('trunk initialised from %s', run.init_trunk)
  if is_chief:  # Only now: a failed start never rewrites the workdir's config.
    checkpoint.write_config(workdir, config)
  train_batches = run.train_batches()
  # Precise BN: the last K training batches (already on the device) are kept to
  # re-estimate BN statistics before each evaluation; training is unaffected.
  recent = collections.deque(maxlen=max(config.precise_bn_batches, 1))
  precise = config.precise_bn_batches > 0
  meta = functools.partial(checkpoint.meta, config,
                           members=None if run.single else run.task_set.names)

  # --- Metrics ---------------------------------------------------------------------
  writer, report = _metric_writers(workdir, is_chief, total_steps)
  hooks = [report] if is_chief else []
  # Evaluators during training (config.evals.every_steps > 0; ssl_jax/evaluation/monitor).
  monitor = None
  if _monitor_on(config):
    from ssl_jax.evaluation import monitor as monitor_lib  # pylint: disable=g-import-not-at-top
    monitor = monitor_lib.create(run)

  def run_eval(step):
    with report.timed('eval'):
      result = run.evaluate(state)
      scalars = {prefixed('val', k): v for k, v in result.items()}
      if precise:
        # val_* with the re-estimated statistics, val_ema_* with the moving
        # averages (what the checkpoint holds and the study evaluated with).
        ema = result
        stats = precise_batch_stats(state, run.bn_stats_step, list(recent))
        result = run.evaluate(dict(state, batch_stats=stats))
        scalars = {prefixed('val', k): v for k, v in result.items()}
        scalars.update({prefixed('val_ema', k): v for k, v in ema.items()
                        if not k.endswith('num_examples')})
        result = dict(result, ema=ema)
      elif is_chief and _BN_MOMENTUM ** step > 0.05:
        logging.warning(
            'step %d: the BatchNorm moving averages (momentum %g) still weigh their '
            'initial values by %.0f%%, so val_* (inference-mode BN) can be far off the '
            'training numbers in a run this short; --config.precise_bn_batches=K '
            're-estimates them over the last K training batches before each evaluation',
            step, _BN_MOMENTUM, 100 * _BN_MOMENTUM ** step)
    writer.write_scalars(step, scalars)  # (its logging writer prints the line)
    return result

  def check_finite(pending):
    for s, m in pending:
      if not bool(jax.device_get(m['finite'])):
        raise NonFiniteLossError(
            f'non-finite loss or state at step {s}; training stopped, the state was not '
            f'updated and the last checkpoint (step <= {s - 1}) is kept.')

  # --- Train loop ------------------------------------------------------------------
  pending, last_eval, history = [], {}, []
  t0, images_since, inputs_since = time.time(), 0, 0.0
  step = start_step
  preempted = False
  # SIGTERM (preemption): finish the step in flight, save it, stop (no exception can
  # land inside orbax: the handler only sets a flag the loop reads). Several
  # processes agree through JAX's preemption sync point (reached_preemption), which
  # jax.distributed arms for SIGTERM: no handler of ours then.
  terminate = []
  restore_sigterm = (_flag_on_sigterm(terminate) if jax.process_count() == 1
                     else (lambda: None))
  try:
    for step in range(start_step + 1, total_steps + 1):
      # Inside the step every host-device copy must be explicit: an implicit one
      # (a stray numpy array or Python scalar) fails loudly instead of stalling.
      with jax.transfer_guard('disallow'), jax.profiler.StepTraceAnnotation(
          'train', step_num=step):
        batches = next(train_batches)
        state, metrics = run.train_step(state, batches)
      if precise:
        recent.append((step - 1, batches))   # the step count the train step saw
      pending.append((step, metrics))
      for name in batches:
        b = run.task_set.member(name).config.batch_size
        images_since += b
        inputs_since += b * run.trunk_inputs[name]
      for h in hooks:
        h(step)
      if step % config.log_every_steps == 0 or step == total_steps:
        check_finite(pending)
        means = mean_metrics([jax.device_get(m) for _, m in pending])
        means.pop('finite')
        dt = time.time() - t0
        means['learning_rate'] = float(run.schedule(step - 1))
        means['images_per_sec'] = images_since / dt
        means['trunk_inputs_per_sec'] = inputs_since / dt
        means = {prefixed('train', k): v for k, v in means.items()}
        writer.write_scalars(step, means)
        history.append(dict(means, step=step))
        pending, t0, images_since, inputs_since = [], time.time(), 0, 0.0
      if step % config.checkpoint_every_steps == 0 or step == total_steps:
        check_finite(pending)
        checkpoint.save(manager, step, state, meta(step))
      if (config.eval_every_steps > 0 and step % config.eval_every_steps == 0
          ) or step == total_steps:
        last_eval = run_eval(step)
      if monitor is not None and (step % monitor.every_steps == 0 or step == total_steps):
        with report.timed('monitor'):
          writer.write_scalars(step, monitor(state, step))
      if terminate or manager.reached_preemption(step):
        check_finite(pending)
        if manager.latest_step() != step:
          checkpoint.save(manager, step, state, meta(step))
        logging.warning('preempted (SIGTERM) at step %d: checkpoint saved; run the same '
                        'command to resume', step)
        preempted = True
        break
  finally:
    restore_sigterm()
    try:
      manager.wait_until_finished()
      manager.close()
      writer.flush()
    finally:
      if run.lock is not None:
        run.lock.release()
  return {'step': step, 'val': last_eval, 'train_history': history, 'preempted': preempted,
          'state': state}


def _flag_on_sigterm(flag):
  """SIGTERM appends to `flag` (main thread only); returns the restoring function."""
  if threading.current_thread() is not threading.main_thread():
    return lambda: None
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.append(signum))
  return lambda: signal.signal(signal.SIGTERM, previous)
