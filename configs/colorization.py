r"""Colorization (Zhang et al. 2016, as scaled by Goyal et al. 2019): L in, ab bins out.

  python -m ssl_jax.tools.color_bins --dataset cifar10 --grid 10  # optional: fill the bin cache
  python -m ssl_jax.main --config configs/colorization.py:cifar10_cpu --workdir /tmp/col

Presets:
  imagenet      ResNet50 v2 k=4 on ImageNet, output stride 8 (block3/block4 dilated;
                block4 22x22 at 176 px), Zhang's 176-px crops (resize 256x256, random
                crop 176, flip; evaluation: central crop). Batch 256 and the study's
                35-epoch schedule (5 warm-up, x0.1 at 15 and 25; momentum SGD, lr 0.1 *
                256/256, wd 1e-4). Goyal et al. trained their colorization models with
                their benchmark's batch and schedule, which the sources we have do not
                fix for pretext training; we keep Goyal's batch (256 per step) and the
                epochs of every other task of this codebase (the study's 35), so the
                tasks compare on equal training. Bins from the first 100,000 training
                images (colour statistics settle long before 1.2M; decoding all of them
                for a histogram costs hours of host time).
  zhang         the imagenet preset with Zhang et al.'s bins: bin_rule='in_hull' (his 313
                pts_in_hull at grid 10, exactly), the prior counted on the data and
                smoothed (sigma 5), K = 5 (his paper). The trunk, batch and schedule stay
                the study's: Zhang's own network (VGG-style, targets at stride 4) and
                training (batch 40) are not reproduced.
  cifar10       CIFAR-10 at 32 px, ResNet50 v2 k=4 with the small-input stem, whose own
                output stride is 8 (block4 4x4), batch 128, 100 epochs (x0.1 at 50, 80).
  cifar10_cpu   the same at CPU size: k=1, batch 64, 600 steps (0.85 epoch), Adam (lr
                1e-3, x0.1 at step 500): about 10 minutes on one core; pretext
                evaluation on 2,048 held-out images with precise BN (8 batches).
  imagenette64  Imagenette at 64 px, ResNet50 v2 k=4 small-input stem (block4 8x8),
                batch 128, 60 epochs.
  smoke         tiny (k=1, 16 px, a few steps) for tests; output stride left to the
                model (the contract test swaps in tiny_cnn, whose own is 4 there).
Every preset: no colour jitter (it would change the very colours to predict; Zhang used
crops and flips only), inception crops of at least 25% of the area at 32/64 px.

Settings (config.tasks.colorization):
  grid             ab cell size: 5, 10 (standard), 15 or 20 (Goyal's bin-size axis).
  bin_rule         'data' (Goyal: cells holding training pixels), 'in_gamut' (cells
                   8-bit sRGB reaches: 261 at grid 10) or 'in_hull' (Zhang's: grid
                   points within Chebyshev distance `grid` of the sRGB ab hull: his
                   313 at grid 10; 1083 / 159 / 101 at 5 / 15 / 20); see
                   ssl_jax/tasks/color.py. The prior comes from the data either way.
  goyal_quirks     Goyal's histogram edges and lower-edge class centres ('data' only).
  exclude_grey     leave grey images out of the prior's counts (default: counted, as
                   Goyal's script).
  bins_from        'dataset': config.data's train split (cached on disk; with
                   data.source='synthetic': the synthetic images), 'file': bins_file.
  bins_file        .npz with centers [Q, 2] and prior (or counts) [Q].
  bins_max_images  -1: the whole train split; N: its first N images.
  bins_cache_dir   '' = $SSL_JAX_CACHE/color_bins or ~/.cache/ssl_jax/color_bins.
  k                nearest bins in the soft encoding: 5 (Zhang's paper; his released
                   training layer and, by a secondary source, Goyal used 10; Goyal's
                   complexity sweep ran from 2 to all bins); 1 = hard assignment.
  sigma            Gaussian of the soft encoding and of the prior smoothing (5).
  lam              rebalancing mix with the uniform distribution (0.5).
  smooth_prior     True: Zhang's prior smoothed with sigma; False: raw (Goyal).
  rebalance        False: unweighted cross-entropy (an ablation).
  grey_threshold   images whose every |a|, |b| <= it get weight 0 (5).
  input_channels   1 (the trunk's root conv takes L) or 3 (L repeated).
  endpoint         the head's endpoint ('' = the trunk's last spatial one: block4).
  head_hidden      0: one 1x1 conv to the Q logits; D: 1x1 conv(D)+BN+ReLU first.
  target_downsample 'subsample' (Zhang; the pixel the head's pixel is centred on) or
                   'mean' (block average); see ssl_jax/tasks/colorization.py.
  temperature      annealed-mean temperature for pictures (0.38).
The trunk's output stride is config.model.output_stride (0: the model's own).
"""
import ml_collections

from configs import common

PRESETS = ('imagenet', 'zhang', 'cifar10', 'cifar10_cpu', 'imagenette64', 'smoke')


def settings(**overrides):
  s = dict(grid=10, bin_rule='data', goyal_quirks=False, exclude_grey=False,
           bins_from='dataset', bins_file='', bins_max_images=-1, bins_cache_dir='',
           k=5, sigma=5.0, lam=0.5, smooth_prior=True, rebalance=True, grey_threshold=5.0,
           input_channels=1, endpoint='', head_hidden=0, target_downsample='subsample',
           temperature=0.38)
  s.update(overrides)
  return ml_collections.ConfigDict(s)


def get_config(preset='cifar10_cpu'):
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r} for configs/colorization.py; allowed: '
                     f'{list(PRESETS)}')
  c = common.get_config()
  c.task = 'colorization'
  c.tasks.colorization = settings()
  c.model.name = 'resnet50_v2'
  common.image_preset(c, {'cifar10_cpu': 'cifar10', 'zhang': 'imagenet'}.get(preset, preset))
  c.model.output_stride = 8
  if preset in ('imagenet', 'zhang'):
    c.model.width = 4
    c.batch_size = 256
    c.eval_batch_size = 256
    c.input.pp_train = 'decode|resize(256)|crop(176)|flip_lr'
    c.input.pp_eval = 'decode|resize(256)|crop(176)'
    c.tasks.colorization.bins_max_images = 100_000
    if preset == 'zhang':
      c.tasks.colorization.update(bin_rule='in_hull', smooth_prior=True, k=5)
  elif preset in ('cifar10', 'cifar10_cpu', 'imagenette64'):
    size = c.data.image_size
    c.input.pp_train = f'decode|inception_crop({size}, area_min=0.25)|flip_lr'
    c.input.pp_eval = 'decode'
  if preset == 'cifar10_cpu':
    c.model.width = 1
    c.batch_size = 64
    c.eval_batch_size = 256
    c.total_steps = 600
    c.steps_per_epoch = 100        # 'epochs' of the schedule are 100 steps here
    c.optimizer.name = 'adam'
    c.optimizer.base_lr = 0.004    # 0.004 * 64 / 256 = 1e-3
    c.optimizer.warmup_epochs = 0.5
    c.optimizer.decay_epochs = (5.0,)
    c.log_every_steps = 50
    c.eval_every_steps = 300
    c.checkpoint_every_steps = 300
    c.max_eval_batches = 8         # 2,048 held-out images per evaluation
    c.precise_bn_batches = 8
    c.linear_eval_preset = 'cifar10_cpu'
  elif preset == 'smoke':
    c.model.output_stride = 0
  return c
