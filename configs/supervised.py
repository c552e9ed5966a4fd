r"""The supervised baseline through the same engine (softmax CE; top-1/top-5).

  python -m ssl_jax.main --config configs/supervised.py:cifar10_cpu --workdir /tmp/sup

Presets:
  imagenet      the study: ResNet50 v2 (the release's default mode) k=4, batch 256,
                lr 0.1, 5 warm-up epochs, 90 epochs, x0.1 at 30, 60 and 80. The study
                trained on all 1,281,167 images; we train on `train` and keep the
                held-out split for model choice (set data.train_split to change).
  cifar10       ResNet50 v2 k=4, small-input stem, batch 128, 100 epochs.
  cifar10_cpu   k=1, 300 steps on 2 CPU cores.
  imagenette64  ResNet50 v2 k=4, small-input stem, 60 epochs.
  smoke         tiny, for tests.
The task has no settings of its own (config.tasks.supervised is empty); the classes
are config.data.num_classes.
"""
import ml_collections

from configs import common

PRESETS = ('imagenet', 'cifar10', 'cifar10_cpu', 'imagenette64', 'smoke')


def get_config(preset='cifar10_cpu'):
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r} for configs/supervised.py; allowed: '
                     f'{list(PRESETS)}')
  c = common.get_config()
  c.task = 'supervised'
  c.tasks.supervised = ml_collections.ConfigDict()
  c.model.name = 'resnet50_v2'
  common.image_preset(c, preset)
  if preset == 'imagenet':
    c.model.width = 4
    c.batch_size = 256
    c.eval_batch_size = 256
    c.num_epochs = 90.0
    c.optimizer.decay_epochs = (30.0, 60.0, 80.0)
  elif preset == 'cifar10_cpu':
    c.model.width = 1
    c.batch_size = 64
    c.eval_batch_size = 256
    c.total_steps = 300
    c.steps_per_epoch = 100
    c.optimizer.base_lr = 0.4
    c.optimizer.warmup_epochs = 0.2
    c.optimizer.decay_epochs = (2.5,)
    c.log_every_steps = 25
    c.eval_every_steps = 150
    c.checkpoint_every_steps = 150
    c.max_eval_batches = 8
  return c
