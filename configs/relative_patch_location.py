r"""Relative patch location (the study: ResNet50 v1 k=8, the 8 pairs of every image).

  python -m ssl_jax.main --config configs/relative_patch_location.py:imagenet --workdir /tmp/rpl

Presets, geometry and the shared FC head are those of configs/jigsaw.py
(imagenet, cifar10, imagenette64, smoke); see its docstring. The task has no
options of its own: every image yields the 8 (neighbour, centre) pairs.
"""
from configs import jigsaw

PRESETS = jigsaw.PRESETS


def get_config(preset='cifar10'):
  return jigsaw.patch_task_config(preset, 'relative_patch_location')
