r"""A member of configs/multitask.py trained alone, on the multi-task run's trunk and
schedule: the single-task baselines of Doersch and Zisserman 2017 (a task config, not a
sweep; configs/sweeps/multitask.py uses it).

  python -m ssl_jax.main --config configs/sweeps/multitask_single.py:cifar10_cpu.rotation \
      --workdir /tmp/mt_rotation

Preset '<multitask preset>.<member>' (e.g. 'cifar10_cpu.colorization'): configs/multitask.py
at that preset with every other member removed. The engine trains a task set of one
exactly as the single task (names, keys, layout and numbers: ssl_jax/train.py), so this is
the member's own task on the multi-task trunk (ResNet50 v2, the same width, stem, input
harmonisation, optimiser, steps and per-member batch). The learning rate is kept per
member: the multi-task preset's base_lr is linear-scaled by the images of ALL members per
step (96 in cifar10_cpu), so here base_lr is multiplied by members / 1 to give the same
step size (Adam: the same lr per update).
"""
import ml_collections

from configs import multitask

PRESETS = tuple(f'{p}.{m}' for p, ms in (
    ('cifar10_cpu', ('rotation', 'relative_patch_location', 'colorization')),
    ('cifar10_cpu_vgg', ('rotation', 'colorization')),
    ('cifar10', ('relative_patch_location', 'colorization', 'exemplar')),
    ('smoke', ('rotation', 'relative_patch_location'))) for m in ms)


def get_config(preset='cifar10_cpu.rotation'):
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r} for configs/sweeps/multitask_single.py; '
                     f'allowed: {list(PRESETS)}')
  base, name = preset.split('.')
  c = multitask.get_config(base)
  members = c.tasks.multitask.members
  n = len(list(members.keys()))
  keep = ml_collections.ConfigDict({name: members[name]})
  c.tasks.multitask.members = keep
  c.optimizer.base_lr = c.optimizer.base_lr * n
  return c
