"""Pretext (and supervised) training: one script, top to bottom, in marked sections.

    python -m ssl_jax.main --config configs/rotation.py:cifar10_cpu --workdir DIR

Data parallelism has pmap semantics through `jax.shard_map` over the 1-D 'data'
mesh: one program per device, per-device BatchNorm statistics unless
`config.model.cross_device_bn`, gradients the mean over the global batch. The
task's pretext stage (uint8 images -> inputs, targets) runs inside the step on
the device, or on the host CPU when `config.input.pretext_on_device` is False.
The model is the shared trunk plus the task's head (`PretextModel`): parameters under
params['trunk'] and params['heads'][task]; the loss is the task's.

This module imports no TensorFlow: the tf.data source and clu's metric writers
are imported inside `train_and_evaluate` only.
"""
import collections
import functools
import itertools
import math
import os
import signal
import threading
import time

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import flax.linen as nn
import numpy as np
import optax

from ssl_jax import checkpoint
from ssl_jax import config_lib
from ssl_jax import models
from ssl_jax import optim
from ssl_jax import parallel
from ssl_jax import tasks
from ssl_jax.data import sources

AXIS = parallel.AXIS


class NonFiniteLossError(FloatingPointError):
  """The loss or the updated state became NaN or inf; the last good state is kept."""


# ------------------------------------------------------------------ model


class HeadSet(nn.Module):
  """The task heads, each under params['heads'][task name]."""
  specs: tuple  # ((task name, head module), ...)

  @nn.compact
  def __call__(self, name, endpoints, inputs, train):
    head = dict(self.specs)[name].clone(parent=self, name=name)
    return head(endpoints, inputs, train)


class PretextModel(nn.Module):
  """The shared trunk (no logits layer) plus the heads of the trained task(s).

  `__call__(inputs {task: pretext inputs}, train) -> ({task: head outputs},
  {task: trunk endpoints})`: for each task the trunk runs once over all of
  inputs['image'] f32[B, n, h, w, c] flattened to [B * n, h, w, c] (image-major, one
  BatchNorm batch), then the task's head reads the endpoints.
  """
  model: flax.core.FrozenDict  # config.model
  specs: tuple                 # ((task name, head module), ...)

  def setup(self):
    m = self.model
    self.trunk = models.create_trunk(
        m, bn_axis_name=AXIS if m['cross_device_bn'] else None)
    self.heads = HeadSet(self.specs)

  def __call__(self, inputs, train):
    outputs, endpoints = {}, {}
    for name, _ in self.specs:
      x = inputs[name]['image']
      _, eps = self.trunk(x.reshape((-1,) + x.shape[-3:]), train=train)
      outputs[name] = self.heads(name, eps, inputs[name], train)
      endpoints[name] = eps
    return outputs, endpoints


def make_model(config, task):
  """The trunk of config.model with `task`'s head."""
  return PretextModel(model=flax.core.FrozenDict(config.model.to_dict()),
                      specs=((task.name, task.head),))


def dummy_batch(image_shape, n=2):
  """A zero uint8 batch of n examples of `image_shape` ((V,) H, W, C)."""
  return {'image': jnp.zeros((n,) + tuple(image_shape), jnp.uint8),
          'label': jnp.zeros((n,), jnp.int32), 'mask': jnp.ones((n,), bool)}


def all_finite(tree):
  """bool[]: every floating value of the pytree is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


# ------------------------------------------------------------------ train state


def init_state(config, task, model, mesh, image_shape, tx_fn):
  """Initial train state on every device: dict(params, batch_stats, opt_state, step, rng).

  Args:
    image_shape: ((V,) H, W, C) of the uint8 images the pretext stage receives.
    tx_fn: params -> optax transformation (weight-decay masks need the params).
  Returns:
    (state, tx).
  """
  def variables_fn():
    rng = jax.random.key(config.seed)
    inputs, _ = task.pretext(jax.random.key(0), dummy_batch(image_shape), train=False)
    init_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, 1))
    return model.init({'params': init_rng, 'dropout': dropout_rng}, {task.name: inputs},
                      train=False)

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


# ------------------------------------------------------------------ steps


def step_rngs(base, step, device_index):
  """(pretext_rng, dropout_rng) of one device at one step; both placements use it."""
  return jax.random.split(jax.random.fold_in(jax.random.fold_in(base, step), device_index))


def eval_rng(seed, device_index):
  """The fixed key of the evaluation pretext stage (same batches, same copies)."""
  return jax.random.fold_in(jax.random.key(seed + 1), device_index)


def _pretext_stage(task, batch, rng, train, on_device):
  """(inputs, targets) of a batch: the task's pretext stage here, or the host's result."""
  if on_device:
    return task.pretext(rng, batch, train=train)
  return batch['inputs'], batch['targets']


def make_train_step(config, task, model, tx, mesh):
  """Returns jit(state, batch) -> (state, metrics), batch sharded on 'data'.

  `batch` holds uint8 `image` and `label` (pretext on device) or the host-made
  `inputs`/`targets`. Metrics are global means; `finite` is False when the loss or
  any value of the updated state (params, batch_stats, opt_state) is NaN/inf, in
  which case the returned state is the input state unchanged.
  """
  on_device = config.input.pretext_on_device

  def per_device(state, batch):
    pretext_rng, dropout_rng = step_rngs(jax.random.wrap_key_data(state['rng']),
                                         state['step'], jax.lax.axis_index(AXIS))
    inputs, targets = _pretext_stage(task, batch, pretext_rng, True, on_device)

    def loss_fn(params):
      (outputs, _), mutated = model.apply(
          {'params': params, 'batch_stats': state['batch_stats']}, {task.name: inputs},
          train=True, mutable=['batch_stats'], rngs={'dropout': dropout_rng})
      local, per_example = task.loss(outputs[task.name], targets, AXIS)
      # pmean inside the differentiated function: under shard_map the gradient
      # w.r.t. the replicated params is already summed over devices, so this
      # gives exactly the gradient of the global-batch mean loss.
      loss = jax.lax.pmean(local, AXIS)
      return loss, (per_example, mutated.get('batch_stats', {}))

    (loss, (per_example, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    # Per-device BN moving averages are averaged so the saved state is one model
    # (the mean of per-device EMAs equals the EMA of the mean per-device stats).
    batch_stats = jax.lax.pmean(batch_stats, AXIS)
    new = dict(params=params, batch_stats=batch_stats, opt_state=opt_state,
               step=state['step'] + 1, rng=state['rng'])
    # The loss is computed with the weights before the update: a finite loss can
    # come with a non-finite update. Checking the new state itself is what keeps
    # every saved state finite.
    finite = jnp.isfinite(loss) & all_finite((params, batch_stats, opt_state))
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = {k: jax.lax.pmean(jnp.mean(v), AXIS) for k, v in per_example.items()}
    metrics['loss'] = loss
    metrics['finite'] = finite
    return new, metrics

  step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)),
                       out_specs=(P(), P()))
  return jax.jit(step, donate_argnums=0)


def make_eval_step(config, task, model, mesh):
  """Returns jit(state, batch) -> dict of masked sums over source images (+ `count`).

  Per-example metrics are averaged over each image's copies (rotations,
  permutations, pairs, views) and padding images (mask False) count zero.
  """
  on_device = config.input.pretext_on_device

  def per_device(state, batch):
    mask = batch['mask'].astype(jnp.float32)
    inputs, targets = _pretext_stage(
        task, batch, eval_rng(config.seed, jax.lax.axis_index(AXIS)), False, on_device)
    outputs, _ = model.apply({'params': state['params'], 'batch_stats': state['batch_stats']},
                             {task.name: inputs}, train=False)
    _, per_example = task.loss(outputs[task.name], targets, AXIS)
    b = mask.shape[0]
    sums = {k: jax.lax.psum(jnp.sum(v.reshape(b, -1).mean(axis=1) * mask), AXIS)
            for k, v in per_example.items()}
    sums['count'] = jax.lax.psum(jnp.sum(mask), AXIS)
    return sums

  step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P())
  return jax.jit(step)


def make_bn_stats_step(config, task, model, mesh):
  """Returns jit(state, batch, step) -> moments of every BN layer's input on a train batch.

  For "precise BN" (config.precise_bn_batches): the statistics every BatchNorm
  layer computes in a train-mode forward pass of the current parameters on the
  training batch of `step` (0-based, i32[]; the pretext stage gets that step's
  keys, so it sees the patches/permutations the train step saw), as a tree shaped
  like `state['batch_stats']` with E[x] in the 'mean' leaves and E[x^2] in the
  'var' leaves. Device-averaged: each device normalises its own per-device batch
  in training and all per-device batches have the same size.

  Flax's BatchNorm exposes a batch's statistics only through its moving-average
  update new = m * old + (1 - m) * batch, so the pass runs with old = 0 and with
  old = 1: their difference is the layer's momentum m, and batch = new0 / (1 - m)
  (any momentum, any BN layer, no change to the models).
  """
  on_device = config.input.pretext_on_device

  def per_device(state, batch, step):
    pretext_rng, dropout_rng = step_rngs(jax.random.wrap_key_data(state['rng']), step,
                                         jax.lax.axis_index(AXIS))
    inputs, _ = _pretext_stage(task, batch, pretext_rng, True, on_device)

    def updated(fill):
      old = jax.tree.map(lambda x: jnp.full_like(x, fill), state['batch_stats'])
      _, mutated = model.apply({'params': state['params'], 'batch_stats': old},
                               {task.name: inputs}, train=True, mutable=['batch_stats'],
                               rngs={'dropout': dropout_rng})
      return mutated['batch_stats']

    new0, new1 = updated(0.0), updated(1.0)
    # Batch mean and (biased) variance of every BN layer.
    stats = flax.traverse_util.flatten_dict(
        jax.tree.map(lambda a, b: a / (1.0 - (b - a)), new0, new1))
    moments = {path: value + stats[path[:-1] + ('mean',)] ** 2 if path[-1] == 'var'
               else value for path, value in stats.items()}
    return jax.lax.pmean(flax.traverse_util.unflatten_dict(moments), AXIS)

  stats_step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS), P()),
                             out_specs=P())
  return jax.jit(stats_step)


def precise_batch_stats(state, bn_stats_step, batches):
  """Population BN statistics over `batches`: (step, batch) pairs of equal-size train batches.

  Returns a tree like state['batch_stats']: 'mean' = E[x], 'var' = E[x^2] - E[x]^2
  over every example of every batch (the law of total variance: the mean of the
  per-batch variances plus the variance of the per-batch means), the statistics
  a converged moving average would approach for the current parameters.
  """
  if not batches:
    raise ValueError('precise BN needs at least one training batch')
  totals = None
  for step, batch in batches:
    m = bn_stats_step(state, batch, np.int32(step))
    totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
  moments = flax.traverse_util.flatten_dict(jax.tree.map(lambda t: t / len(batches), totals))
  out = {path: jnp.maximum(value - moments[path[:-1] + ('mean',)] ** 2, 0.0)
         if path[-1] == 'var' else value for path, value in moments.items()}
  return flax.traverse_util.unflatten_dict(out)


def make_host_pretext(config, task, train):
  """The same pretext function run on the host CPU, one chunk per local device.

  Each chunk gets the key the device would have used, so both placements see the
  same per-device randomness (e.g. jigsaw's permutations shared per device).
  Returns run(batch, step) -> dict(inputs, targets, mask) of host numpy arrays.
  """
  pretext = jax.jit(functools.partial(task.pretext, train=train), backend='cpu')
  num_local = jax.local_device_count()
  first = jax.process_index() * num_local
  base = jax.random.key(config.seed)

  def run(batch, step):
    chunks_in, chunks_tgt = [], []
    split = {k: np.array_split(np.asarray(v), num_local) for k, v in batch.items()}
    with jax.transfer_guard('allow'), jax.default_device(jax.devices('cpu')[0]):
      for i in range(num_local):
        if train:
          key = step_rngs(base, step, first + i)[0]
        else:
          key = eval_rng(config.seed, first + i)
        inputs, targets = pretext(key, {k: v[i] for k, v in split.items()})
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


# ------------------------------------------------------------------ the job


def train_and_evaluate(config, workdir, arrays=None):
  """Trains `config.task` and writes checkpoints and metrics to `workdir`.

  Args:
    config: a validated or unvalidated pretext ConfigDict.
    workdir: output directory; an existing one is resumed from its latest checkpoint.
    arrays: optional {'train': (u8 images, labels), 'val': (...)} for
      `config.data.source == 'in_memory'` without TensorFlow.
  Returns:
    dict: the final `step`, the last held-out evaluation `val`, the logged training
    means `train_history` (one dict per log step), `preempted` (stopped by SIGTERM)
    and the final train `state` (replicated device arrays).
  """
  # --- Setup --------------------------------------------------------------------
  # Every bad value, missing dataset / split, unwritable or foreign workdir is one
  # ConfigError here, before anything compiles and before anything is written.
  parallel.maybe_initialize_distributed(config)
  with config_lib.startup_errors():
    config_lib.validate(config)
    task = tasks.get_task(config.task, config)
    checkpoint.check_resume(workdir, config)
    checkpoint.check_writable(workdir)
    source = sources.make_source(config, arrays, splits=('train', 'val'))
    if isinstance(source, sources.TfdsSource):
      source.check()
    sources.check_labels(config, source)
    config_lib.check_model_input(config, task)
  mesh = parallel.make_mesh()
  is_chief = jax.process_index() == 0
  logging.info('devices: %d (%d local), processes: %d, backend: %s', jax.device_count(),
               jax.local_device_count(), jax.process_count(), jax.default_backend())

  # --- Data: the source and the placement of the pretext stage, chosen once -------
  num_train = source.num_examples('train')
  steps_per_epoch = (config.steps_per_epoch if config.steps_per_epoch > 0
                     else max(num_train // config.batch_size, 1))
  total_steps = (config.total_steps if config.total_steps > 0
                 else int(math.ceil(config.num_epochs * steps_per_epoch)))
  logging.info('%s source: %d train examples, steps/epoch %d, total steps %d', source.name,
               num_train, steps_per_epoch, total_steps)
  host_train = host_eval = None
  if not config.input.pretext_on_device:
    host_train = make_host_pretext(config, task, train=True)
    host_eval = make_host_pretext(config, task, train=False)

  def val_batches():
    batches = source.eval_batches('val', config.eval_batch_size)
    if config.max_eval_batches > 0:
      batches = itertools.islice(batches, config.max_eval_batches)
    for batch in batches:
      yield parallel.global_batch(mesh, batch if host_eval is None else host_eval(batch, 0))

  # --- Model, optimizer, state --------------------------------------------------
  model = make_model(config, task)
  schedule = optim.learning_rate_schedule(config.optimizer, config.batch_size,
                                          steps_per_epoch, total_steps)
  overrides = optim.task_overrides(task.name, task.weight_decay)
  tx_fn = lambda params: optim.make_optimizer(config.optimizer, params, schedule, overrides)
  image_shape = source.image_shape(train=False)
  state, tx = init_state(config, task, model, mesh, image_shape, tx_fn)
  num_params = {k: sum(x.size for x in jax.tree.leaves(v))
                for k, v in state['params'].items()}
  logging.info('task %s, model %s k=%d: trunk %.2fM parameters, heads %.2fM', task.name,
               config.model.name, config.model.width, num_params['trunk'] / 1e6,
               num_params.get('heads', 0) / 1e6)
  trunk_inputs = jax.eval_shape(
      lambda: task.pretext(jax.random.key(0), dummy_batch(image_shape, 1),
                           train=True)[0]['image']).shape[1]

  # --- Checkpoints: resume --------------------------------------------------------
  manager = checkpoint.make_manager(workdir, config.max_to_keep)
  with config_lib.startup_errors():
    restored = checkpoint.restore_latest(manager, checkpoint.abstract_of(state))
  if restored is not None:
    state = restored
  start_step = int(jax.device_get(state['step']))
  if start_step:
    logging.info('resumed from step %d', start_step)
  if is_chief:  # Only now: a failed start never rewrites the workdir's config.
    checkpoint.write_config(workdir, config)
  train_batches = source.device_train_batches(
      'train', config.batch_size, seed=config.seed, start_step=start_step, mesh=mesh,
      host_fn=host_train)

  train_step = make_train_step(config, task, model, tx, mesh)
  eval_step = make_eval_step(config, task, model, mesh)
  # Precise BN: the last K training batches (already on the device) are kept to
  # re-estimate BN statistics before each evaluation; training is unaffected.
  recent = collections.deque(maxlen=max(config.precise_bn_batches, 1))
  bn_stats_step = (make_bn_stats_step(config, task, model, mesh)
                   if config.precise_bn_batches > 0 else None)

  # --- Metrics ---------------------------------------------------------------------
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
  hooks = [report] if is_chief else []

  def run_eval(step):
    with report.timed('eval'):
      result = evaluate(state, eval_step, val_batches())
      scalars = {f'val_{k}': v for k, v in result.items()}
      if bn_stats_step is not None:
        # val_* with the re-estimated statistics, val_ema_* with the moving
        # averages (what the checkpoint holds and the study evaluated with).
        ema = result
        stats = precise_batch_stats(state, bn_stats_step, list(recent))
        result = evaluate(dict(state, batch_stats=stats), eval_step, val_batches())
        scalars = {f'val_{k}': v for k, v in result.items()}
        scalars.update({f'val_ema_{k}': v for k, v in ema.items() if k != 'num_examples'})
        result = dict(result, ema=ema)
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
  t0, images_since = time.time(), 0
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
        batch = next(train_batches)
        state, metrics = train_step(state, batch)
      if bn_stats_step is not None:
        recent.append((step - 1, batch))   # the step count the train step saw
      pending.append((step, metrics))
      images_since += config.batch_size
      for h in hooks:
        h(step)
      if step % config.log_every_steps == 0 or step == total_steps:
        check_finite(pending)
        means = jax.tree.map(lambda *x: float(np.mean(x)),
                             *[jax.device_get(m) for _, m in pending])
        means.pop('finite')
        dt = time.time() - t0
        means['learning_rate'] = float(schedule(step - 1))
        means['images_per_sec'] = images_since / dt
        means['trunk_inputs_per_sec'] = images_since * trunk_inputs / dt
        means = {f'train_{k}': v for k, v in means.items()}
        writer.write_scalars(step, means)
        history.append(dict(means, step=step))
        pending, t0, images_since = [], time.time(), 0
      if step % config.checkpoint_every_steps == 0 or step == total_steps:
        check_finite(pending)
        checkpoint.save(manager, step, state, checkpoint.meta(config, step))
      if (config.eval_every_steps > 0 and step % config.eval_every_steps == 0
          ) or step == total_steps:
        last_eval = run_eval(step)
      if terminate or manager.reached_preemption(step):
        check_finite(pending)
        if manager.latest_step() != step:
          checkpoint.save(manager, step, state, checkpoint.meta(config, step))
        logging.warning('preempted (SIGTERM) at step %d: checkpoint saved; run the same '
                        'command to resume', step)
        preempted = True
        break
  finally:
    restore_sigterm()
    manager.wait_until_finished()
    manager.close()
    writer.flush()
  return {'step': step, 'val': last_eval, 'train_history': history, 'preempted': preempted,
          'state': state}


def _flag_on_sigterm(flag):
  """SIGTERM appends to `flag` (main thread only); returns the restoring function."""
  if threading.current_thread() is not threading.main_thread():
    return lambda: None
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.append(signum))
  return lambda: signal.signal(signal.SIGTERM, previous)
