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
Override anything on the command line, e.g. `--config.model.width=8`.
"""
from configs import common

PRESETS = ('imagenet', 'cifar10', 'cifar10_cpu', 'imagenette64', 'smoke')


def get_config(preset='cifar10_cpu'):
  c = common.get_config()
  c.task = 'rotation'
  c.model.name = 'revnet50'
  if preset == 'imagenet':
    c.data = common.data_config('imagenet2012')
    c.model.width = 16
    c.batch_size = 64
    c.eval_batch_size = 16
    c.num_epochs = 35.0
    c.optimizer.warmup_epochs = 5.0
    c.optimizer.decay_epochs = (15.0, 25.0)
    c.input.pp_train = 'decode|inception_crop(224)|flip_lr|color_jitter'
    c.input.pp_eval = 'decode|inception_eval(224)'
    c.log_every_steps = 500
    c.eval_every_steps = 20_000
    c.checkpoint_every_steps = 5_000
    c.linear_eval_preset = 'imagenet'
  elif preset in ('cifar10', 'cifar10_cpu', 'smoke'):
    c.data = common.data_config('cifar10')
    c.model.small_input = True
    c.input.pp_train = 'decode|inception_crop(32)|flip_lr|color_jitter'
    c.input.pp_eval = 'decode|inception_eval(32)'
    c.input.cache = True
    c.linear_eval_preset = 'cifar10'
    if preset == 'cifar10':
      c.model.width = 4
      c.batch_size = 128
      c.eval_batch_size = 512
      c.num_epochs = 100.0
      c.optimizer.warmup_epochs = 5.0
      c.optimizer.decay_epochs = (50.0, 80.0)
      c.log_every_steps = 100
      c.eval_every_steps = 3500
      c.checkpoint_every_steps = 3500
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
    else:  # smoke
      c.model.width = 1
      c.data.train_split = 'train[:512]'
      c.data.val_split = 'train[512:600]'
      c.data.test_split = 'test[:88]'
      c.data.image_size = 16
      c.input.pp_train = 'decode|resize(16)|flip_lr'
      c.input.pp_eval = 'decode|resize(16)'
      c.input.shuffle_buffer = 256
      c.batch_size = 16
      c.eval_batch_size = 16
      c.total_steps = 6
      c.steps_per_epoch = 2
      c.optimizer.warmup_epochs = 1.0
      c.optimizer.decay_epochs = (2.0,)
      c.log_every_steps = 2
      c.eval_every_steps = 3
      c.checkpoint_every_steps = 3
      c.linear_eval_preset = 'smoke'
  elif preset == 'imagenette64':
    c.data = common.data_config('imagenette64')
    c.model.width = 4
    c.model.small_input = True
    c.batch_size = 128
    c.eval_batch_size = 256
    c.num_epochs = 60.0
    c.optimizer.warmup_epochs = 5.0
    c.optimizer.decay_epochs = (30.0, 50.0)
    c.input.pp_train = 'decode|inception_crop(64)|flip_lr|color_jitter'
    c.input.pp_eval = 'decode|inception_eval(64)'
    c.input.cache = True
    c.log_every_steps = 50
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.linear_eval_preset = 'imagenette64'
  else:
    raise ValueError(f'unknown preset {preset!r} for configs/rotation.py; allowed: {list(PRESETS)}')
  return c
