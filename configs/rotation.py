r"""Rotation prediction (the study's headline task: RevNet50 k=16 on ImageNet).

  python -m ssl_jax.main --config configs/rotation.py:cifar10_cpu --workdir /tmp/rot

Presets:
  imagenet      the study: RevNet50 k=16, batch 64, lr 0.1*64/256, 5 warm-up epochs,
                35 epochs, x0.1 at 15 and 25; inception crop 224 + flip + colour jitter.
  cifar10       CIFAR-10 (JPEG q75) at 32 px, RevNet50 k=4 with the small-input stem
                (3x3 stride-1 root conv, no max-pool), batch 128, 100 epochs: an
                accelerator-sized run.
  cifar10_cpu   the same at CPU size (k=1, 300 steps): the README's main job; a few
                minutes on 2 cores, ends with a linear evaluation of every layer.
  imagenette64  Imagenette at 64 px, RevNet50 k=4 small-input stem, 60 epochs.
  smoke         tiny (k=1, 16 px, a few steps) for tests.
Task settings (config.tasks.rotation):
  rotations     'all' (the study: the four rotations of every image in one batch) or
                'random_one' (VISSL: one random rotation per image).
Override anything on the command line, e.g. `--config.model.width=8`.
"""
import ml_collections

from configs import common

PRESETS = ('imagenet', 'cifar10', 'cifar10_cpu', 'imagenette64', 'smoke')


def get_config(preset='cifar10_cpu'):
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r} for configs/rotation.py; allowed: '
                     f'{list(PRESETS)}')
  c = common.get_config()
  c.task = 'rotation'
  c.tasks.rotation = ml_collections.ConfigDict(dict(rotations='all'))
  c.model.name = 'revnet50'
  common.image_preset(c, preset)
  if preset == 'imagenet':
    c.model.width = 16
  elif preset == 'cifar10_cpu':
    c.model.width = 1
    c.batch_size = 64
    c.eval_batch_size = 256
    c.total_steps = 300
    # A short run: warm up for 20 steps, decay once near the end.
    c.steps_per_epoch = 100
    c.optimizer.base_lr = 0.4      # lr 0.1 at batch 64, as 0.1 * 256/256
    c.optimizer.warmup_epochs = 0.2
    c.optimizer.decay_epochs = (2.5,)
    c.log_every_steps = 25
    c.eval_every_steps = 150
    c.checkpoint_every_steps = 150
    c.max_eval_batches = 8          # 2,048 held-out images per evaluation
    c.run_linear_eval = True
    c.linear_eval_preset = 'cifar10_cpu'
  return c
