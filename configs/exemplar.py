r"""Exemplar as the revisiting study trains it: 8 copies per image, semi-hard triplet loss.

  python -m ssl_jax.main --config configs/exemplar.py:cifar10 --workdir /tmp/exemplar

Presets:
  imagenet      the study: ResNet50 v1 k=12, batch 64 images (x 8 copies), lr
                0.1*64/256, 5 warm-up epochs, 35 epochs, x0.1 at 15 and 25, wd 1e-4;
                gray p=0.66 decided once per image, then 8 independent inception
                crops (224, flip, colour jitter), each standardised; 1000-d embedding,
                margin 0.5.
  cifar10       CIFAR-10 (JPEG q75) at 32 px: ResNet50 v1 k=4 with the small-input
                stem, batch 64 images (512 copies), 100 epochs, decays 50/80.
  cifar10_cpu   a short real run on a CPU: ResNet50 v1 k=1 with the ImageNet stem (7x7/2
                conv + max-pool: 8x8 maps after the root at 32 px, ~7x faster than the
                small-input stem on a CPU), 32 images x 8 copies, 1,200 steps, Adam 1e-3
                (not the study's momentum SGD), 128-d embedding.
  imagenette64  64 px, ResNet50 v1 k=4 small-input stem, batch 64, 60 epochs.
  smoke         tiny (k=1, 16 px, 4 copies, a few steps) for tests.
Settings (config.tasks.exemplar):
  num_copies        copies per image (the study: 8); the preprocessing strings'
                    views(N) must say the same (checked at start-up).
  embed_dim         the embedding (the study: 1000, its trunk logits layer).
  margin            triplet margin (0.5).
  normalization     'l2' (default: unit-norm embeddings, what the loss expects) or
                    'batch_axis' (the released code's quirk: each dimension scaled to
                    unit norm over the per-core batch; it produced the released models).
  eval_standardize  False: linear evaluation feeds [-1, 1] images (the released
                    evaluation config, although training saw standardised copies);
                    True: standardised images, consistent with training.
Pretext evaluation uses the training augmentation with a fixed seed (identical copies,
as the study's eval-mode inception op gives, would make every distance 0).
batch_size and eval_batch_size are global source images; the loss and nn_accuracy are
mined per device, so each device needs >= 2 images in both (checked at start-up: one
image has no negative). The study's configs have 8 (64 / 8 cores) and 2 (16 / 8).
"""
import ml_collections

from configs import common

PRESETS = ('imagenet', 'cifar10', 'cifar10_cpu', 'imagenette64', 'smoke')


def pp_copies(size, copies, crop='inception_preprocess'):
  """gray p=0.66 once per image, then `copies` independently augmented copies."""
  if crop == 'inception_preprocess':
    per_copy = f'inception_preprocess({size})'
  else:  # the same augmentation spelled with random ops (random wherever written)
    per_copy = f'inception_crop({size})|flip_lr|color_jitter'
  return f'decode|to_gray(0.66)|views({copies})|{per_copy}'


def get_config(preset='cifar10'):
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r} for configs/exemplar.py; allowed: '
                     f'{list(PRESETS)}')
  c = common.get_config()
  c.task = 'exemplar'
  c.model.name = 'resnet50_v1'
  copies = 4 if preset == 'smoke' else 8
  c.tasks.exemplar = ml_collections.ConfigDict(dict(
      num_copies=copies, embed_dim=1000, margin=0.5, normalization='l2',
      eval_standardize=False))
  common.image_preset(c, 'cifar10' if preset == 'cifar10_cpu' else preset)
  size = {'imagenet': 224, 'imagenette64': 64, 'smoke': 16}.get(preset, 32)
  c.batch_size = 64
  if preset == 'imagenet':
    c.model.width = 12
  elif preset == 'cifar10_cpu':
    c.model.width = 1
    c.model.small_input = False
    c.batch_size = 32
    c.eval_batch_size = 32
    c.total_steps = 1200
    c.steps_per_epoch = 100
    c.optimizer.name = 'adam'
    c.optimizer.base_lr = 0.008    # 0.008 * 32 / 256 = 1e-3
    c.optimizer.warmup_epochs = 0.5
    c.optimizer.decay_epochs = (9.0, 11.0)
    c.tasks.exemplar.embed_dim = 128
    c.log_every_steps = 100
    c.eval_every_steps = 600
    c.checkpoint_every_steps = 600
    c.max_eval_batches = 16        # 512 held-out images
    c.precise_bn_batches = 8
    c.linear_eval_preset = 'cifar10_cpu'
  elif preset == 'smoke':
    c.batch_size = 16
    c.tasks.exemplar.embed_dim = 32
  c.input.pp_train = pp_copies(size, copies)
  c.input.pp_eval = pp_copies(size, copies, crop='random_ops')
  return c
