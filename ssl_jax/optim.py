"""Optimizer, learning-rate schedule and weight-decay masks (optax), as in the study.

- lr = base_lr * batch_size / lr_scale_batch_size ('linear' scaling, the study's and
  SimCLR's default) or base_lr * sqrt(batch_size) ('sqrt', SimCLR's for small batches).
- Schedule: linear warm-up from 0 over `warmup_epochs`, then piecewise constant with
  x`decay_factor` at each absolute epoch in `decay_epochs` ('step', the study's),
  cosine decay to 0 ('cosine', SimCLR's) or constant.
- Weight decay on kernels only: not on biases, BatchNorm scale/bias, or a module named
  `root_conv_nowd` (RevNet's root conv). momentum / adam: coupled L2 (the loss term
  wd * |W|^2 / 2, so the gradient gets wd * W before momentum, not AdamW). lars
  (SimCLR): optax.lars, whose decay and trust-ratio adaptation skip the same
  parameters (BN and biases), as SimCLR's LARS excludes them.
- Task heads carry their own coefficients: `overrides` {path prefix: wd}, e.g.
  {('heads', 'jigsaw', 'fc'): 5e-4} for the study's patch head.
- `validate(opt_config)`: every value these functions read that would make training
  meaningless is a ValueError naming the key, the value and the allowed range.

The scale of the loss matters to these rules: doubling the loss (SimCLR's objective
sums its two directions) is, under lars, the same as halving weight_decay on kernels
(the trust ratio removes the gradient's scale, not the ratio of gradient to decay)
and doubling the step of every parameter outside the trust ratio (BN, biases);
under momentum SGD with coupled L2 it is 2x the learning rate with half the
weight decay (see ssl_jax/tasks/simclr.py, `loss_scale`).
"""
import math
import numbers

import flax.traverse_util
import optax

NO_WEIGHT_DECAY_MODULE = 'root_conv_nowd'
NAMES = ('momentum', 'adam', 'lars')
SCALINGS = ('linear', 'sqrt')
SCHEDULES = ('step', 'cosine', 'constant')


def peak_learning_rate(opt_config, batch_size):
  """The learning rate after warm-up: base_lr scaled by the global batch size."""
  scaling = opt_config.get('lr_scaling', 'linear')
  if scaling == 'sqrt':
    return opt_config.base_lr * math.sqrt(batch_size)
  if scaling == 'linear':
    return opt_config.base_lr * batch_size / opt_config.lr_scale_batch_size
  raise ValueError(f'config.optimizer.lr_scaling={scaling!r}; allowed: {list(SCALINGS)}')


def learning_rate_schedule(opt_config, batch_size, steps_per_epoch, total_steps,
                           warmup_steps=None):
  """Returns an optax schedule step -> lr.

  Args:
    opt_config: config.optimizer.
    batch_size: global batch (source images) for the learning-rate scaling.
    steps_per_epoch: steps per epoch (int, or a float under SimCLR's step counting):
      warm-up and decay epochs become steps by round(epochs * steps_per_epoch).
    total_steps: the job's steps (the cosine decays to 0 at total_steps).
    warmup_steps: if given, the warm-up length in steps instead of
      round(warmup_epochs * steps_per_epoch), e.g. SimCLR's reference count
      (`simclr_step_counts`).
  """
  base = peak_learning_rate(opt_config, batch_size)
  warmup = (int(round(opt_config.warmup_epochs * steps_per_epoch)) if warmup_steps is None
            else int(warmup_steps))
  if opt_config.schedule == 'step':
    # Decay epochs are absolute (counted from step 0); the joined schedule below
    # restarts its clock after the warm-up, so shift them. A decay inside the
    # warm-up takes effect when the warm-up ends (as in the study).
    boundaries = [int(round(e * steps_per_epoch)) for e in opt_config.decay_epochs]
    after = optax.piecewise_constant_schedule(
        base, _shifted(boundaries, opt_config.decay_factor, warmup))
  elif opt_config.schedule == 'cosine':
    after = optax.cosine_decay_schedule(base, max(total_steps - warmup, 1))
  elif opt_config.schedule == 'constant':
    after = optax.constant_schedule(base)
  else:
    raise ValueError(f'config.optimizer.schedule={opt_config.schedule!r}; '
                     f'allowed: {list(SCHEDULES)}')
  if warmup <= 0:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(0.0, base, warmup), after], [warmup])


def simclr_step_counts(num_examples, batch_size, num_epochs, warmup_epochs):
  """(warmup_steps, total_steps) by SimCLR's reference formulas.

  google-research/simclr (TF1 `model_util.learning_rate_schedule` /
  `get_train_steps`, TF2 `model.WarmUpAndCosineDecay` / `get_train_steps`):
    total  = num_examples * epochs // batch + 1
    warmup = int(round(warmup_epochs * num_examples // batch))
  Python evaluates `warmup_epochs * num_examples` first and floors the quotient, so
  the round() is a no-op: the warm-up is floored, not rounded (10 epochs of 45,000
  images at batch 512: 878, where round(10 * 45000 / 512) = 879). Evaluated in the
  reference's order (product, then floor division), not from a float steps-per-epoch,
  so float epochs round exactly as the reference's do.

  Args:
    num_examples: training images per epoch (int).
    batch_size: global batch (int).
    num_epochs, warmup_epochs: epochs (int or float).
  Returns:
    (warmup_steps int, total_steps int).
  """
  total = int(num_examples * num_epochs // batch_size + 1)
  warmup = int(round(warmup_epochs * num_examples // batch_size))
  return warmup, total


def _shifted(boundaries, factor, warmup):
  """{step after warm-up: combined factor}; decays at the same step multiply."""
  merged = {}
  for b in boundaries:
    key = max(b - warmup, 0)
    merged[key] = merged.get(key, 1.0) * factor
  return merged


def decays(path):
  """Whether the parameter at `path` (tuple of names) gets weight decay: kernels only."""
  return path[-1] == 'kernel' and NO_WEIGHT_DECAY_MODULE not in path


def weight_decay_groups(params, default_wd, overrides=None):
  """Splits kernels into groups of equal L2 coefficient.

  Args:
    params: the parameter pytree (nested dicts).
    default_wd: coefficient for kernels outside any override.
    overrides: {path prefix (tuple of names): coefficient}; the longest matching
      prefix wins (e.g. {('heads', 'jigsaw', 'fc'): 5e-4}).
  Returns:
    dict coefficient -> boolean mask pytree (True where that coefficient applies);
    coefficient 0 is left out.
  """
  overrides = {tuple(k): v for k, v in (overrides or {}).items()}
  flat = flax.traverse_util.flatten_dict(params)
  coeff = {}
  for path in flat:
    if not decays(path):
      coeff[path] = 0.0
      continue
    match = [k for k in overrides if path[:len(k)] == k]
    coeff[path] = overrides[max(match, key=len)] if match else default_wd
  groups = {}
  for wd in sorted(set(coeff.values())):
    if wd == 0.0:
      continue
    groups[wd] = flax.traverse_util.unflatten_dict(
        {p: c == wd for p, c in coeff.items()})
  return groups


def task_overrides(task_name, head_wd):
  """{('heads', task, submodule): wd} from a task's `weight_decay` field."""
  return {('heads', task_name, k): v for k, v in (head_wd or {}).items()}


def make_optimizer(opt_config, params, schedule, overrides=None):
  """The optax transformation of config.optimizer on `schedule`.

  momentum / adam: coupled L2 per weight-decay group, then momentum SGD or Adam.
  lars: optax.lars with weight decay and trust-ratio adaptation on kernels only
  (a single coefficient: overrides must agree with it).
  """
  groups = weight_decay_groups(params, opt_config.weight_decay, overrides)
  if opt_config.name == 'lars':
    if len(groups) > 1:
      raise ValueError(f'optimizer lars takes one weight-decay coefficient; the task asks '
                       f'for {sorted(groups)}')
    kernels = flax.traverse_util.unflatten_dict(
        {p: decays(p) for p in flax.traverse_util.flatten_dict(params)})
    wd = next(iter(groups), 0.0)
    return optax.lars(schedule, weight_decay=wd, weight_decay_mask=kernels,
                      trust_coefficient=opt_config.get('trust_coefficient', 1e-3),
                      trust_ratio_mask=kernels, momentum=opt_config.momentum,
                      nesterov=opt_config.nesterov)
  parts = [optax.add_decayed_weights(wd, mask=mask) for wd, mask in groups.items()]
  if opt_config.name == 'momentum':
    parts.append(optax.sgd(schedule, momentum=opt_config.momentum,
                           nesterov=opt_config.nesterov))
  elif opt_config.name == 'adam':
    parts.append(optax.adam(schedule))
  else:
    raise ValueError(f'config.optimizer.name={opt_config.name!r}; allowed: {list(NAMES)}')
  return optax.chain(*parts)


def _real(value):
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(
      value)


def validate(opt_config):
  """Raises ValueError for any optimizer value that makes training meaningless.

  Checks every key this module reads for the chosen optimizer and schedule (keys it
  does not read for them are not checked: momentum under adam, decay_factor under
  cosine). Reals must be finite numbers (not bool):
    name in NAMES; schedule in SCHEDULES; lr_scaling in SCALINGS;
    base_lr > 0; lr_scale_batch_size >= 1 ('linear' scaling: it divides the batch);
    weight_decay >= 0; warmup_epochs >= 0;
    momentum in [0, 1) (momentum, lars: 1 never forgets a gradient, > 1 diverges,
      < 0 oscillates); nesterov a bool;
    trust_coefficient > 0 (lars: 0 multiplies every kernel's step by 0, so kernels
      never move; < 0 moves them up the gradient);
    'step' schedule: decay_factor in (0, 1] (0 stops training at the first decay,
      > 1 grows the rate), decay_epochs non-negative and non-decreasing.
  There is no eps key: adam uses optax's defaults (eps 1e-8) and lars eps 0.

  Args:
    opt_config: config.optimizer (a ConfigDict or mapping).
  Raises:
    ValueError: 'config.optimizer.<key>=<value> ...; allowed: <range>'.
  """
  get = opt_config.get

  def bad(key, allowed):
    raise ValueError(f'config.optimizer.{key}={get(key)!r} is not allowed; allowed: {allowed}')

  def real(key, lo=None, hi=None, lo_open=False, hi_open=False, default=None):
    value = get(key, default)
    ok = _real(value)
    if ok and lo is not None:
      ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
      ok = value < hi if hi_open else value <= hi
    if not ok:
      left = '' if lo is None else ('(' if lo_open else '[') + f'{lo}'
      right = '' if hi is None else f'{hi}' + (')' if hi_open else ']')
      rng = (f'a finite number in {left}, {right}' if lo is not None and hi is not None
             else f'a finite number {">" if lo_open else ">="} {lo}')
      bad(key, rng)

  name = get('name')
  if name not in NAMES:
    bad('name', list(NAMES))
  schedule = get('schedule')
  if schedule not in SCHEDULES:
    bad('schedule', list(SCHEDULES))
  scaling = get('lr_scaling', 'linear')
  if scaling not in SCALINGS:
    bad('lr_scaling', list(SCALINGS))
  real('base_lr', 0, lo_open=True)
  if scaling == 'linear':
    real('lr_scale_batch_size', 1)
  real('weight_decay', 0)
  real('warmup_epochs', 0)
  if name in ('momentum', 'lars'):
    real('momentum', 0, 1, hi_open=True)
    if not isinstance(get('nesterov', False), bool):
      bad('nesterov', 'True or False')
  if name == 'lars':
    real('trust_coefficient', 0, lo_open=True, default=1e-3)
  if schedule == 'step':
    real('decay_factor', 0, 1, lo_open=True)
    epochs = get('decay_epochs', ())
    if (isinstance(epochs, (str, bytes)) or not hasattr(epochs, '__iter__')
        or not all(_real(e) and e >= 0 for e in epochs)):
      bad('decay_epochs', 'a sequence of finite epochs >= 0')
    if list(epochs) != sorted(epochs):
      bad('decay_epochs', 'epochs in non-decreasing order')
