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
"""
import math

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


def learning_rate_schedule(opt_config, batch_size, steps_per_epoch, total_steps):
  """Returns an optax schedule step -> lr."""
  base = peak_learning_rate(opt_config, batch_size)
  warmup = int(round(opt_config.warmup_epochs * steps_per_epoch))
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
