"""Optimizer, learning-rate schedule and weight-decay masks (optax), as in the study.

- lr = base_lr * batch_size / lr_scale_batch_size.
- Schedule: linear warm-up from 0 over `warmup_epochs`, then either piecewise
  constant with x`decay_factor` at each absolute epoch in `decay_epochs`
  ('step', the study's) or cosine decay to 0 ('cosine').
- Weight decay: coupled L2 (the loss term wd * |W|^2 / 2, so the gradient gets
  wd * W before momentum, not AdamW) on kernels only: not on biases, BatchNorm
  scale/bias, or a module named `root_conv_nowd` (RevNet's root conv). Task heads
  can carry their own coefficient (`HEAD_WEIGHT_DECAY`, e.g. 5e-4 on the patch head).
"""
import flax.traverse_util
import jax
import optax

NO_WEIGHT_DECAY_MODULE = 'root_conv_nowd'


def learning_rate_schedule(opt_config, batch_size, steps_per_epoch, total_steps):
  """Returns an optax schedule step -> lr."""
  base = opt_config.base_lr * batch_size / opt_config.lr_scale_batch_size
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
                     "allowed: 'step', 'cosine', 'constant'")
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


def weight_decay_groups(params, default_wd, head_wd=None):
  """Splits kernels into groups of equal L2 coefficient.

  Args:
    params: the parameter pytree (nested dicts).
    default_wd: coefficient for kernels outside any head.
    head_wd: dict top-level submodule name -> coefficient (task heads).
  Returns:
    dict coefficient -> boolean mask pytree (True where that coefficient applies).
  """
  head_wd = head_wd or {}
  flat = flax.traverse_util.flatten_dict(params)
  coeff = {}
  for path in flat:
    if path[-1] != 'kernel' or NO_WEIGHT_DECAY_MODULE in path:
      coeff[path] = 0.0
    else:
      coeff[path] = head_wd.get(path[0], default_wd)
  groups = {}
  for wd in sorted(set(coeff.values())):
    if wd == 0.0:
      continue
    groups[wd] = flax.traverse_util.unflatten_dict(
        {p: c == wd for p, c in coeff.items()})
  return groups


def make_optimizer(opt_config, params, schedule, head_wd=None):
  """optax chain: coupled L2 per group, then momentum SGD (or Adam) on `schedule`."""
  parts = [optax.add_decayed_weights(wd, mask=mask) for wd, mask in
           weight_decay_groups(params, opt_config.weight_decay, head_wd).items()]
  if opt_config.name == 'momentum':
    parts.append(optax.sgd(schedule, momentum=opt_config.momentum,
                           nesterov=opt_config.nesterov))
  elif opt_config.name == 'adam':
    parts.append(optax.adam(schedule))
  else:
    raise ValueError(f"config.optimizer.name={opt_config.name!r}; allowed: 'momentum', 'adam'")
  return optax.chain(*parts)

