r"""SimCLR (Chen et al. 2020), the contrastive method of Cole et al. (2022).

  python -m ssl_jax.main --config configs/simclr.py:cifar10 --workdir /tmp/simclr

Presets:
  imagenet      the paper's: ResNet-50 (resnet50_v1 k=4), batch 4096, 100 epochs,
                temperature 0.1, LARS lr 0.3 x batch/256 = 4.8, weight decay 1e-6 (off
                BN and biases), 10 warm-up epochs then cosine decay; projection MLP
                2048 -> 128; views: random resized crop 224 (area 8-100%), flip,
                colour distortion s=1 (p 0.8), grayscale p=0.2, blur p=0.5; global
                (cross-device) BN.
  cifar10       the SimCLR README's CIFAR-10 recipe on ResNet50 k=4 with the small-input
                stem (3x3 stride-1 root, no max-pool): batch 512, temperature 0.5, LARS
                lr 1.0 x batch/256, weight decay 1e-4, colour strength 0.5, no blur;
                1000 epochs, 10 warm-up, cosine. Step counts are the reference's
                (step_rounding='simclr', in every epoch-based preset here): total =
                num_examples * epochs // batch + 1, warm-up = int(round(warmup_epochs *
                num_examples // batch)), i.e. floored (TF1 model_util, TF2 model.py of
                google-research/simclr): 87,891 / 878 on our 45,000 training images
                (97,657 / 976 on the reference's 50,000: it trains on the whole train
                split and reports on test; we hold 5,000 out for val). The engine's
                default counting (step_rounding='per_epoch': 45,000 // 512 = 87 steps an
                epoch) would give 87,000 / 870. `optim.simclr_step_counts` computes them.
  cifar10_cpu   a short real run on a CPU: ResNet50 v1 k=1 with the ImageNet stem (~7x
                faster than the small-input stem on a CPU), batch 128 (256 views), 1,500
                steps, Adam 1e-3 (not LARS), projection 256 -> 128, temperature 0.5.
  imagenette64  64 px, ResNet50 v1 k=4 small-input stem, batch 256, s=1 with blur,
                500 epochs.
  smoke         tiny (k=1, 16 px, a few steps) for tests.
Settings (config.tasks.simclr): temperature, projection_hidden (widths of the hidden
layers; () = linear), projection_dim (128), and two conventions of SimCLR's reference
code (google-research/simclr), on by default because the presets' learning rates and
weight decays are the ones tuned under them:
  proj_last_bn_scale  True: the projection's last BN has a learnable scale (no
                      offset), as the reference's; False: neither scale nor offset.
  loss_scale          'sum_directions': the reference's objective, the sum of the two
                      directions' cross-entropies averaged over images = 2 x the
                      per-anchor mean; 'mean': the per-anchor mean (the paper's
                      equation). Under LARS the factor 2 is not cosmetic: 'sum_directions'
                      at weight_decay wd = 'mean' at wd / 2 on kernels, and 2x the step
                      of BN parameters and biases (no trust ratio there).
Comparing numbers with SimCLR's: our train/val `loss` is SimCLR's logged contrast_loss
under 'sum_directions' and half of it under 'mean'. `contrastive_top1` ranks the
positive among all 2B - 1 other views, for every anchor; SimCLR's contrast_acc takes
the argmax over logits_ab only (first-view anchors against the B second views), an
easier ranking (each of our hits on a first-view anchor is a hit of theirs): not
the same number.
Optimiser keys: optimizer.name='lars', optimizer.lr_scaling 'linear' (base_lr x
batch/256) or 'sqrt' (base_lr x sqrt(batch), SimCLR's advice for small batches),
optimizer.schedule='cosine', optimizer.warmup_epochs.
"""
import ml_collections

from configs import common

PRESETS = ('imagenet', 'cifar10', 'cifar10_cpu', 'imagenette64', 'smoke')


def simclr_pp(size, strength=1.0, blur=False):
  """Two views, each: random resized crop, flip, colour distortion, grayscale, blur."""
  pp = (f'decode|views(2)|inception_crop({size}, area_min=0.08)|flip_lr|'
        f'color_distort({strength}, p=0.8)|to_gray(0.2, weights="luma")')
  return pp + ('|gaussian_blur(0.5)' if blur else '')


def get_config(preset='cifar10'):
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r} for configs/simclr.py; allowed: '
                     f'{list(PRESETS)}')
  c = common.get_config()
  c.task = 'simclr'
  c.tasks.simclr = ml_collections.ConfigDict(dict(
      temperature=0.5, projection_hidden=(2048,), projection_dim=128,
      proj_last_bn_scale=True,        # the reference's last BN: scale, no offset
      loss_scale='sum_directions'))   # the reference's objective: 2 x per-anchor mean
  common.image_preset(c, 'cifar10' if preset == 'cifar10_cpu' else preset)
  c.model.name = 'resnet50_v1'
  c.model.cross_device_bn = True      # SimCLR's global BN
  o = c.optimizer
  o.name, o.schedule, o.lr_scaling = 'lars', 'cosine', 'linear'
  o.decay_epochs = ()
  c.step_rounding = 'simclr'          # the reference's step counts (epoch-based presets)
  if preset == 'imagenet':
    c.model.width = 4
    c.batch_size = 4096
    c.eval_batch_size = 1024
    c.num_epochs = 100.0
    c.tasks.simclr.temperature = 0.1
    o.base_lr, o.weight_decay, o.warmup_epochs = 0.3, 1e-6, 10.0
    c.input.pp_train = simclr_pp(224, 1.0, blur=True)
    c.input.pp_eval = c.input.pp_train
  elif preset == 'cifar10':
    c.batch_size = 512
    # 1000 epochs of 45,000 images: SimCLR's formulas give 87,891 steps / 878 warm-up
    # (step_rounding='simclr'; the engine's per-epoch counting would give 87,000 / 870).
    c.num_epochs = 1000.0
    o.base_lr, o.weight_decay, o.warmup_epochs = 1.0, 1e-4, 10.0
    c.input.pp_train = simclr_pp(32, 0.5)
    c.input.pp_eval = c.input.pp_train
  elif preset == 'imagenette64':
    c.batch_size = 256
    c.num_epochs = 500.0
    o.base_lr, o.weight_decay, o.warmup_epochs = 0.3, 1e-6, 10.0
    c.input.pp_train = simclr_pp(64, 1.0, blur=True)
    c.input.pp_eval = c.input.pp_train
  elif preset == 'cifar10_cpu':
    c.model.width = 1
    c.model.small_input = False
    c.batch_size = 128
    c.eval_batch_size = 128
    c.total_steps = 1500
    c.steps_per_epoch = 100
    o.name, o.base_lr, o.weight_decay, o.warmup_epochs = 'adam', 0.002, 0.0, 0.5
    c.tasks.simclr.projection_hidden = (256,)
    c.input.pp_train = simclr_pp(32, 0.5)
    c.input.pp_eval = c.input.pp_train
    c.log_every_steps = 100
    c.eval_every_steps = 750
    c.checkpoint_every_steps = 750
    c.max_eval_batches = 16
    c.linear_eval_preset = 'cifar10_cpu'
  else:  # smoke
    c.tasks.simclr.projection_hidden = (32,)
    c.tasks.simclr.projection_dim = 16
    c.input.pp_train = simclr_pp(16, 0.5)
    c.input.pp_eval = c.input.pp_train
  return c
