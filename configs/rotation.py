r"""Rotation prediction (the study's headline task: RevNet50 k=16 on ImageNet).

  python -m ssl_jax.main --config configs/rotation.py:cifar10_cpu --workdir /tmp/rot

Presets:
  imagenet      the study: RevNet50 k=16, batch 64, lr 0.1*64/256, 5 warm-up epochs,
                35 epochs, x0.1 at 15 and 25; inception crop 224 + flip + colour jitter.
  cifar10       CIFAR-10 (JPEG q75) at 32 px, RevNet50 k=4 with the small-input stem
                (3x3 stride-1 root conv, no max-pool), batch 128, 100 epochs: an
                accelerator-sized run.
  cifar10_cpu   the README's main job, sized for 2 CPU cores (~15 min): VGG19-BN k=1,
                CIFAR crop + flip, 4,000 steps, then the linear evaluation of every
                layer beside a random-init trunk (deviations listed in the preset).
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
    # The README's main job, sized for 2 CPU cores (about 15 minutes with the linear
    # evaluation). Deviations from the study, chosen by measurement (runs in the
    # closing note of issue 11) and each overridable:
    # - VGG19-BN k=1 (a study model family at its narrowest), not RevNet50 k=16: on
    #   CPU budgets RevNet50 / ResNet50 k=1 stayed at or below their random-init
    #   trunks in linear evaluation, VGG19-BN's layers rose above theirs.
    # - CIFAR's pad-4 crop + flip ('pad_crop_flip'), not the ImageNet inception crop +
    #   colour jitter: Inception crops of 32-px images (down to 5% of the area) slow
    #   rotation learning (held-out rotation 49% vs 41% at step 1000).
    # - 4,000 steps of batch 64 (5.7 epochs, each image in its four rotations), lr 0.1
    #   (0.4 x 64/256), 20 warm-up steps, x0.1 at steps 3,000 and 3,600.
    # - Data held in memory, augmentation and rotations on the device (same ops).
    c.model.name = 'vgg19_bn'
    c.model.width = 1
    c.data.source = 'in_memory'
    c.input.pp_train = 'decode|pad_crop_flip'
    c.batch_size = 64
    c.eval_batch_size = 256
    c.total_steps = 4000
    c.steps_per_epoch = 100      # 'epochs' of the schedule are 100 steps here
    c.optimizer.base_lr = 0.4    # lr 0.1 at batch 64, as 0.1 * 256/256
    c.optimizer.warmup_epochs = 0.2
    c.optimizer.decay_epochs = (30.0, 36.0)
    c.log_every_steps = 250
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.max_eval_batches = 8          # 2,048 held-out images per evaluation
    c.run_linear_eval = True
    c.linear_eval_preset = 'cifar10_cpu'
  return c
