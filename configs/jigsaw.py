r"""Jigsaw puzzles (the study: ResNet50 v1 k=8, 100 permutations, 8 per step).

  python -m ssl_jax.main --config configs/jigsaw.py:imagenet --workdir /tmp/jig
  ... --config.jigsaw.num_permutations=1000 --config.jigsaw.method=max_min

Presets (shared with configs/relative_patch_location.py):
  imagenet      the study: ResNet50 v1 k=8 with the patch strides (root conv and
                last stage stride 1), batch 128, lr 0.1*128/256, 5 warm-up epochs,
                35 epochs, x0.1 at 15 and 25, wd 1e-4 (head 5e-4). Host: squash
                to 292, gray p=0.66 (also at eval, as the study), crop 255 (central
                at eval) -> 3x3 cells of 85 px, 64-px patches, jitter 21.
  cifar10       32-px CIFAR-10, upsampled: resize 110, crop 96 -> 32-px cells,
                24-px patches, jitter 8 (patch/cell 0.75 and crop/resize 0.87 as
                the study's 64/85 and 255/292). Trunk ResNet50 v1 k=4 with the
                small-input stem and patch strides: 24 -> 24, 12, 6, 6 px maps.
                Batch 128, 100 epochs, decays 50/80.
  imagenette64  64-px Imagenette: resize 146, crop 127 -> 42-px cells, 32-px
                patches, jitter 10 (the study's geometry halved); ResNet50 v1 k=4,
                small-input stem + patch strides: 32 -> 32, 16, 8, 8 px maps (the
                study's 64-px patch also ends at 8x8). Batch 128, 60 epochs.
  cifar10_cpu   a short real run on a CPU (about an hour per task on one core):
                CIFAR-10 upsampled to 48 px (no crop) -> 16-px cells, 12-px patches,
                jitter 4; ResNet50 v1 k=1 (small-input stem, patch strides), 128-d
                embedding, head 1024 wide; batch 64, 1,200 steps. Not the study's
                optimiser: Adam at lr 1e-3 (100 warm-up steps, x0.1 at 800 and
                1,100), because with momentum SGD (lr 0.1) jigsaw stayed at chance
                for 400 steps. Held-out: 1,000 images of the train split, evaluated
                with precise BN over the last 16 batches (moving averages lag
                badly after a few hundred steps; both are logged).
  smoke         tiny (k=1, 12-px patches from a 48-px crop, 64-d embedding,
                6 steps of 16 images) for CPU tests.
The patch geometry must satisfy crop // 3 - jitter == patches.patch_size (checked
before anything compiles). The in-memory data source has no resize/gray/crop ops,
so these presets use the tf.data source.

Jigsaw options (config.jigsaw):
  num_permutations  |P|: 100 (the study's table) or any N; presets 100, 701, 1000,
                    2000, 5000, 10000.
  method            'auto' (the study's file for N=100, else 'max_avg'), 'file',
                    'max_avg' (Noroozi's greedy), 'max_min' (greedy on the minimum
                    Hamming distance); generated sets are cached on disk
                    ($SSL_JAX_CACHE or ~/.cache/ssl_jax/permutations).
  seed              seed of a generated set and of the evaluation sample.
  sampling          'per_batch' (the study: perms_per_step indices per device batch)
                    or 'per_image' (VISSL: one per image).
  eval_permutations evaluate every permutation if 0 or >= |P|, else a fixed seeded
                    sample of this many (eval cost does not grow with |P|).
"""
import ml_collections

from configs import common

PRESETS = ('imagenet', 'cifar10', 'cifar10_cpu', 'imagenette64', 'smoke')


def patch_task_config(preset, task):
  """The config shared by the patch tasks ('jigsaw', 'relative_patch_location')."""
  c = common.get_config()
  c.task = task
  c.model.name = 'resnet50_v1'
  c.model.patch_strides = True
  # Geometry and the shared FC head (heads.FcHead) of both patch tasks.
  c.patches = ml_collections.ConfigDict(dict(
      grid=3, patch_size=64, jitter=21,
      embed_dim=1000,        # the trunk's logits layer = the per-patch embedding
      head_hidden=4096, dropout_rate=0.5))
  if preset == 'imagenet':
    c.data = common.data_config('imagenet2012')
    c.model.width = 8
    c.batch_size = 128
    c.eval_batch_size = 64
    c.num_epochs = 35.0
    c.optimizer.warmup_epochs = 5.0
    c.optimizer.decay_epochs = (15.0, 25.0)
    c.input.pp_train = 'decode|resize(292)|to_gray(0.66)|crop(255)'
    c.input.pp_eval = 'decode|resize(292)|to_gray(0.66)|crop(255)'
    c.log_every_steps = 500
    c.eval_every_steps = 20_000
    c.checkpoint_every_steps = 5_000
  elif preset == 'cifar10':
    c.data = common.data_config('cifar10')
    c.model.width = 4
    c.model.small_input = True
    c.patches.update(patch_size=24, jitter=8)
    c.input.pp_train = 'decode|resize(110)|to_gray(0.66)|crop(96)'
    c.input.pp_eval = 'decode|resize(110)|to_gray(0.66)|crop(96)'
    c.input.cache = True
    c.batch_size = 128
    c.eval_batch_size = 128
    c.num_epochs = 100.0
    c.optimizer.warmup_epochs = 5.0
    c.optimizer.decay_epochs = (50.0, 80.0)
    c.log_every_steps = 100
    c.eval_every_steps = 3500
    c.checkpoint_every_steps = 3500
  elif preset == 'imagenette64':
    c.data = common.data_config('imagenette64')
    c.model.width = 4
    c.model.small_input = True
    c.patches.update(patch_size=32, jitter=10)
    c.input.pp_train = 'decode|resize(146)|to_gray(0.66)|crop(127)'
    c.input.pp_eval = 'decode|resize(146)|to_gray(0.66)|crop(127)'
    c.input.cache = True
    c.batch_size = 128
    c.eval_batch_size = 128
    c.num_epochs = 60.0
    c.optimizer.warmup_epochs = 5.0
    c.optimizer.decay_epochs = (30.0, 50.0)
    c.log_every_steps = 50
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
  elif preset == 'cifar10_cpu':
    c.data = common.data_config('cifar10')
    c.data.val_split = 'train[45000:46000]'
    c.model.width = 1
    c.model.small_input = True
    c.patches.update(patch_size=12, jitter=4, embed_dim=128, head_hidden=1024)
    c.input.pp_train = 'decode|resize(48)|to_gray(0.66)|crop(48)'
    c.input.pp_eval = 'decode|resize(48)|to_gray(0.66)|crop(48)'
    c.input.cache = True
    c.batch_size = 64
    c.eval_batch_size = 64
    c.total_steps = 1200
    c.steps_per_epoch = 100      # 'epochs' of the schedule are 100 steps here
    c.optimizer.name = 'adam'
    c.optimizer.base_lr = 0.004  # 0.004 * 64 / 256 = 1e-3
    c.optimizer.warmup_epochs = 1.0
    c.optimizer.decay_epochs = (8.0, 11.0)
    c.precise_bn_batches = 16
    c.log_every_steps = 50
    c.eval_every_steps = 300
    c.checkpoint_every_steps = 300
  elif preset == 'smoke':
    c.data = common.data_config('cifar10')
    c.data.train_split = 'train[:512]'
    c.data.val_split = 'train[512:600]'
    c.data.test_split = 'test[:88]'
    c.model.width = 1
    c.model.small_input = True
    c.patches.update(patch_size=12, jitter=4, embed_dim=64, head_hidden=64)
    c.input.pp_train = 'decode|resize(48)|to_gray(0.66)|crop(48)'
    c.input.pp_eval = 'decode|resize(48)|to_gray(0.66)|crop(48)'
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
  else:
    raise ValueError(f'unknown preset {preset!r} for configs/{task}.py; '
                     f'allowed: {list(PRESETS)}')
  # The linear-evaluation preset of the same data (patch geometry is automatic there);
  # used when --config.run_linear_eval=True.
  c.linear_eval_preset = preset
  return c


def get_config(preset='cifar10'):
  c = patch_task_config(preset, 'jigsaw')
  c.jigsaw = ml_collections.ConfigDict(dict(
      num_permutations=100, method='auto', seed=0,
      sampling='per_batch', perms_per_step=8,
      eval_permutations=100))
  if preset == 'smoke':
    c.jigsaw.perms_per_step = 2
    c.jigsaw.eval_permutations = 4
  return c
