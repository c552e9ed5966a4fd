"""Pretext (and supervised) training: one script, top to bottom, in marked sections.

    python -m ssl_jax.main --config configs/rotation.py:cifar10_cpu --workdir DIR

Data parallelism has pmap semantics through `jax.shard_map` over the 1-D 'data'
mesh: one program per device, per-device BatchNorm statistics unless
`config.model.cross_device_bn`, gradients the mean over the global batch. The
task's pretext stage (uint8 images -> inputs, targets) runs inside the step on
the device, or on the host CPU when `config.input.pretext_on_device` is False.

This module imports no TensorFlow: the tf.data source and clu's metric writers
are imported inside `train_and_evaluate` only.
"""
import collections
import functools
import itertools
import math
import os
import time

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from ssl_jax import checkpoint
from ssl_jax import config_lib
from ssl_jax import optim
from ssl_jax import parallel
from ssl_jax import tasks

AXIS = parallel.AXIS


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; the state of the last good step is kept."""


# ------------------------------------------------------------------ train state


def init_state(config, task, model, mesh, image_shape, tx_fn):
  """Initial train state on every device: dict(params, batch_stats, opt_state, step, rng).

  Args:
    image_shape: (H, W, C) of the uint8 images the pretext stage receives.
    tx_fn: params -> optax transformation (weight-decay masks need the params).
  Returns:
    (state, tx).
  """
  rng = jax.random.key(config.seed)
  pretext = task.make_pretext_fn(config, train=False)
  images = jnp.zeros((2,) + tuple(image_shape), jnp.uint8)
  inputs, _ = pretext(jax.random.key(0), images, jnp.zeros((2,), jnp.int32))
  init_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, 1))
  variables = jax.jit(functools.partial(model.init, train=False))(
      {'params': init_rng, 'dropout': dropout_rng}, inputs)
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  tx = tx_fn(params)
  state = dict(params=params, batch_stats=batch_stats, opt_state=tx.init(params),
               step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(rng))
  return parallel.replicate(mesh, state), tx


# ------------------------------------------------------------------ steps


def step_rngs(base, step, device_index):
  """(pretext_rng, dropout_rng) of one device at one step; both placements use it."""
  return jax.random.split(jax.random.fold_in(jax.random.fold_in(base, step), device_index))


def eval_rng(seed, device_index):
  """The fixed key of the evaluation pretext stage (same batches, same copies)."""
  return jax.random.fold_in(jax.random.key(seed + 1), device_index)


def make_train_step(config, task, model, tx, mesh):
  """Returns jit(state, batch) -> (state, metrics), batch sharded on 'data'.

  `batch` holds uint8 `image` and `label` (pretext on device) or the host-made
  `inputs`/`targets`. Metrics are global means; `finite` is False when the loss
  was NaN/inf, in which case the returned state is the input state unchanged.
  """
  pretext = task.make_pretext_fn(config, train=True)
  on_device = config.input.pretext_on_device

  def per_device(state, batch):
    pretext_rng, dropout_rng = step_rngs(jax.random.wrap_key_data(state['rng']),
                                         state['step'], jax.lax.axis_index(AXIS))
    if on_device:
      inputs, targets = pretext(pretext_rng, batch['image'], batch['label'])
    else:
      inputs, targets = batch['inputs'], batch['targets']

    def loss_fn(params):
      (outputs, _), mutated = model.apply(
          {'params': params, 'batch_stats': state['batch_stats']}, inputs,
          train=True, mutable=['batch_stats'], rngs={'dropout': dropout_rng})
      per_example = task.metrics_fn(outputs, targets)
      # pmean inside the differentiated function: under shard_map the gradient
      # w.r.t. the replicated params is already summed over devices, so this
      # gives exactly the gradient of the global-batch mean loss.
      loss = jax.lax.pmean(jnp.mean(per_example['loss']), AXIS)
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
    finite = jnp.isfinite(loss)
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
  permutations, pairs) and padding images (mask False) count zero.
  """
  pretext = task.make_pretext_fn(config, train=False)
  on_device = config.input.pretext_on_device

  def per_device(state, batch):
    mask = batch['mask'].astype(jnp.float32)
    if on_device:
      inputs, targets = pretext(eval_rng(config.seed, jax.lax.axis_index(AXIS)),
                                batch['image'], batch['label'])
    else:
      inputs, targets = batch['inputs'], batch['targets']
    outputs, _ = model.apply({'params': state['params'], 'batch_stats': state['batch_stats']},
                             inputs, train=False)
    per_example = task.metrics_fn(outputs, targets)
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
  pretext = task.make_pretext_fn(config, train=True)
  on_device = config.input.pretext_on_device

  def per_device(state, batch, step):
    pretext_rng, dropout_rng = step_rngs(jax.random.wrap_key_data(state['rng']), step,
                                         jax.lax.axis_index(AXIS))
    if on_device:
      inputs, _ = pretext(pretext_rng, batch['image'], batch['label'])
    else:
      inputs = batch['inputs']

    def updated(fill):
      old = jax.tree.map(lambda x: jnp.full_like(x, fill), state['batch_stats'])
      _, mutated = model.apply({'params': state['params'], 'batch_stats': old}, inputs,
                               train=True, mutable=['batch_stats'],
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
  """
  pretext = jax.jit(task.make_pretext_fn(config, train=train), backend='cpu')
  num_local = jax.local_device_count()
  first = jax.process_index() * num_local
  base = jax.random.key(config.seed)

  def run(batch, step):
    chunks_in, chunks_tgt = [], []
    images = np.array_split(batch['image'], num_local)
    labels = np.array_split(batch['label'], num_local)
    with jax.transfer_guard('allow'), jax.default_device(jax.devices('cpu')[0]):
      for i in range(num_local):
        if train:
          key = step_rngs(base, step, first + i)[0]
        else:
          key = eval_rng(config.seed, first + i)
        inputs, targets = pretext(key, images[i], labels[i])
        chunks_in.append(inputs)
        chunks_tgt.append(targets)
      cat = lambda *xs: np.concatenate([np.asarray(x) for x in xs])
      out = {'inputs': jax.tree.map(cat, *chunks_in), 'targets': jax.tree.map(cat, *chunks_tgt)}
    out['mask'] = batch['mask']
    return out

  return run


# ------------------------------------------------------------------ evaluation


def evaluate(state, eval_step, batches, mesh, host_pretext=None):
  """Mean of every metric over all (unpadded) source images of `batches`."""
  totals = None
  for batch in batches:
    if host_pretext is not None:
      batch = host_pretext(batch, 0)
    sums = eval_step(state, parallel.global_batch(mesh, batch))
    sums = jax.device_get(sums)
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
    dict: the final `step`, the last held-out evaluation `val` and the logged
    training means `train_history` (one dict per log step).
  """
  # --- Setup --------------------------------------------------------------------
  parallel.maybe_initialize_distributed(config)
  config_lib.validate(config)
  task = tasks.get_task(config.task)
  mesh = parallel.make_mesh()
  is_chief = jax.process_index() == 0
  if is_chief:
    checkpoint.write_config(workdir, config)
  logging.info('devices: %d (%d local), processes: %d, backend: %s', jax.device_count(),
               jax.local_device_count(), jax.process_count(), jax.default_backend())

  # --- Data ---------------------------------------------------------------------
  if config.data.source in ('in_memory', 'synthetic'):
    from ssl_jax.data import inmemory  # pylint: disable=g-import-not-at-top
    if arrays is None and config.data.source == 'synthetic':
      arrays = inmemory.synthetic_arrays(
          config.data.synthetic_examples, config.eval_batch_size, config.data.image_size,
          config.data.num_classes, config.seed)
    elif arrays is None:
      import input_pipeline  # pylint: disable=g-import-not-at-top
      arrays = {s: input_pipeline.load_arrays(config, s) for s in ('train', 'val')}
    train_source = inmemory.InMemoryTrain(
        mesh, *arrays['train'], config.batch_size, config.seed,
        config.input.in_memory_augmentation, config.data.image_size)
    num_train = train_source.num_examples
    image_shape = arrays['train'][0].shape[1:]
    # On a multi-host run each host evaluates its own share of the held-out split.
    val_images, val_labels = arrays['val']
    per = math.ceil(len(val_labels) / jax.process_count())
    val_slice = slice(jax.process_index() * per, (jax.process_index() + 1) * per)
    make_val = lambda: inmemory.eval_batches(
        val_images[val_slice], val_labels[val_slice],
        config.eval_batch_size // jax.process_count(), config.max_eval_batches)
  else:
    import input_pipeline  # pylint: disable=g-import-not-at-top
    sizes = input_pipeline.check_dataset(config)
    num_train = sizes['train']
    train_source = None
    make_val = lambda: itertools.islice(
        input_pipeline.get_dataset(config, 'val', train=False,
                                   batch_size=config.eval_batch_size),
        config.max_eval_batches if config.max_eval_batches > 0 else None)
    image_shape = None
  steps_per_epoch = (config.steps_per_epoch if config.steps_per_epoch > 0
                     else max(num_train // config.batch_size, 1))
  total_steps = (config.total_steps if config.total_steps > 0
                 else int(math.ceil(config.num_epochs * steps_per_epoch)))
  logging.info('train examples %d, steps/epoch %d, total steps %d',
               num_train, steps_per_epoch, total_steps)

  # --- Model, optimizer, state --------------------------------------------------
  model = task.make_model(config)
  schedule = optim.learning_rate_schedule(config.optimizer, config.batch_size,
                                          steps_per_epoch, total_steps)
  tx_fn = lambda params: optim.make_optimizer(
      config.optimizer, params, schedule, getattr(task, 'HEAD_WEIGHT_DECAY', None))
  if image_shape is None:  # the pipeline's output size, from one eval batch
    first = next(iter(input_pipeline.get_dataset(
        config, 'val', train=False, batch_size=config.eval_batch_size)))
    image_shape = first['image'].shape[1:]
  state, tx = init_state(config, task, model, mesh, image_shape, tx_fn)
  num_params = sum(x.size for x in jax.tree.leaves(state['params']))
  logging.info('model %s k=%d: %.2fM parameters', config.model.name, config.model.width,
               num_params / 1e6)

  # --- Checkpoints: resume --------------------------------------------------------
  manager = checkpoint.make_manager(workdir, config.max_to_keep)
  restored = checkpoint.restore_latest(manager, checkpoint.abstract_of(state))
  if restored is not None:
    state = restored
  start_step = int(jax.device_get(state['step']))
  if start_step:
    logging.info('resumed from step %d', start_step)

  host_pretext = eval_host_pretext = None
  if not config.input.pretext_on_device:  # tfds only (config_lib.validate)
    host_pretext = make_host_pretext(config, task, train=True)
    eval_host_pretext = make_host_pretext(config, task, train=False)
  _host = (lambda b, s: b) if host_pretext is None else host_pretext
  if train_source is None:
    # A resumed run reshuffles from a new seed rather than replaying the start.
    data_config = config.copy_and_resolve_references()
    data_config.seed = config.seed + start_step
    train_iter = iter(input_pipeline.get_dataset(data_config, 'train', train=True))
    next_batch = lambda step: parallel.global_batch(mesh, _host(next(train_iter), step))
  else:
    next_batch = lambda step: _host(train_source.batch(step), step)

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
      result = evaluate(state, eval_step, make_val(), mesh, eval_host_pretext)
      scalars = {f'val_{k}': v for k, v in result.items()}
      if bn_stats_step is not None:
        # val_* with the re-estimated statistics, val_ema_* with the moving
        # averages (what the checkpoint holds and the study evaluated with).
        ema = result
        stats = precise_batch_stats(state, bn_stats_step, list(recent))
        result = evaluate(dict(state, batch_stats=stats), eval_step, make_val(), mesh,
                          eval_host_pretext)
        scalars = {f'val_{k}': v for k, v in result.items()}
        scalars.update({f'val_ema_{k}': v for k, v in ema.items() if k != 'num_examples'})
        result = dict(result, ema=ema)
    writer.write_scalars(step, scalars)
    logging.info('step %d held-out: %s', step, result)
    return result

  def check_finite(pending):
    for s, m in pending:
      if not bool(jax.device_get(m['finite'])):
        raise NonFiniteLossError(
            f'non-finite loss at step {s}; training stopped, the last checkpoint '
            f'(step <= {s - 1}) is kept and the state was not updated.')

  # --- Train loop ------------------------------------------------------------------
  pending, last_eval, history = [], {}, []
  t0, images_since = time.time(), 0
  step = start_step
  try:
    for step in range(start_step + 1, total_steps + 1):
      # Inside the step every host-device copy must be explicit: an implicit one
      # (a stray numpy array or Python scalar) fails loudly instead of stalling.
      with jax.transfer_guard('disallow'), jax.profiler.StepTraceAnnotation(
          'train', step_num=step):
        batch = next_batch(step - 1)
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
        means['examples_per_sec'] = images_since * task.copies(config, True) / dt
        means = {f'train_{k}': v for k, v in means.items()}
        writer.write_scalars(step, means)
        history.append(dict(means, step=step))
        pending, t0, images_since = [], time.time(), 0
      if step % config.checkpoint_every_steps == 0 or step == total_steps:
        check_finite(pending)
        checkpoint.save(manager, step, state, {'task': config.task, 'step': step,
                                               'model': config.model.to_dict()})
      if (config.eval_every_steps > 0 and step % config.eval_every_steps == 0
          ) or step == total_steps:
        last_eval = run_eval(step)
  finally:
    # Pending asynchronous saves complete even when the loop raised.
    manager.wait_until_finished()
    manager.close()
    writer.flush()
  return {'step': step, 'val': last_eval, 'train_history': history}

