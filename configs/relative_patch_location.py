r"""Relative patch location (the study: ResNet50 v1 k=8, the 8 pairs of every image).

  python -m ssl_jax.main --config configs/relative_patch_location.py:imagenet --workdir /tmp/rpl

Presets (imagenet, cifar10, cifar10_cpu, imagenette64, smoke), geometry and the FC
head are the patch tasks' (configs/common.py `patch_preset`; described in
configs/jigsaw.py). Settings (config.tasks.relative_patch_location): grid,
patch_size, jitter, embed_dim, head_hidden, dropout_rate; every image yields the 8
(neighbour, centre) pairs.
"""
from configs import common

PRESETS = ('imagenet', 'cifar10', 'cifar10_cpu', 'imagenette64', 'smoke')


def get_config(preset='cifar10'):
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r} for configs/relative_patch_location.py; '
                     f'allowed: {list(PRESETS)}')
  c = common.get_config()
  c.task = 'relative_patch_location'
  c.tasks.relative_patch_location = common.patch_preset(c, preset)
  return c
