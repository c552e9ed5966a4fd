r"""Jigsaw puzzles (the study: ResNet50 v1 k=8, 100 permutations, 8 per step).

  python -m ssl_jax.main --config configs/jigsaw.py:imagenet --workdir /tmp/jig
  ... --config.tasks.jigsaw.num_permutations=1000 --config.tasks.jigsaw.method=max_min

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
The presets live in configs/common.py (`patch_preset`), shared with
configs/relative_patch_location.py. The patch geometry must satisfy
crop // 3 - jitter == patch_size (checked before anything compiles). Both data
sources run the same preprocessing string (tf.data ops or their JAX twins).

Settings (config.tasks.jigsaw): the patch geometry and head (grid, patch_size,
jitter, embed_dim, head_hidden, dropout_rate; see common.patch_settings) and
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
from configs import common

PRESETS = ('imagenet', 'cifar10', 'cifar10_cpu', 'imagenette64', 'smoke')


def get_config(preset='cifar10'):
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r} for configs/jigsaw.py; allowed: '
                     f'{list(PRESETS)}')
  c = common.get_config()
  c.task = 'jigsaw'
  s = common.patch_preset(c, preset)
  s.update(dict(num_permutations=100, method='auto', seed=0, sampling='per_batch',
                perms_per_step=8, eval_permutations=100))
  if preset == 'smoke':
    s.update(dict(perms_per_step=2, eval_permutations=4))
  c.tasks.jigsaw = s
  return c
