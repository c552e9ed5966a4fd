r"""Linear evaluation of every layer of a frozen pretext trunk (plus MLP, kNN, low-shot).

  python -m ssl_jax.main --config configs/linear_eval.py:cifar10 \
      --config.pretrained=/tmp/rot --workdir /tmp/rot_eval

`pretrained` is a pretext workdir (config.json + checkpoints/); '' evaluates a randomly
initialised trunk built from `config.model` (the random-features baseline). The data
section is independent of the pretext run's: a trunk trained on one dataset can be
evaluated on another's labels (transfer), e.g. Imagenette64 -> CIFAR-10.

Presets:
  cifar10       CIFAR-10 (JPEG q75) at 32 px: resize_small 36 -> crop 32 (the study's
                256/224 zoom), cached features, SGD on all heads for up to 500 epochs,
                lr/wd grid, stop on a validation plateau; kNN; low-shot on pre_logits.
  cifar10_cpu   the same at CPU size (the pretext `cifar10_cpu` job's last phase):
                10k train examples, 100 epochs, a small grid.
  imagenette64  Imagenette at 64 px: resize_small 73 -> crop 64; as cifar10.
  imagenet      the study's reported protocol, 'faithful': images through the trunk at
                every step, resize_small 256 -> crop 224 (random at train, central at
                test), no flip, batch 2048, lr 0.1 * 2048/256, 520 epochs, x0.1 at 480
                and 500, VALID max pooling to <= 9000 dims, wd 0.
  smoke         tiny, for tests (hundreds of examples, a few epochs, 16 px).
Patch models (pretext task jigsaw / relative_patch_location) switch to the study's patch
geometry automatically: resize_small 3.5p -> crop 3p -> 3x3 cells of p px (p = the
pretext patch size; 224 -> 192 -> 64 for the study), features averaged over patches.
"""
import ml_collections

from configs import common

PRESETS = ('cifar10', 'cifar10_cpu', 'imagenette64', 'imagenet', 'smoke')


def base_config():
  """Every key the linear evaluation reads, with neutral defaults."""
  c = ml_collections.ConfigDict()
  c.job = 'linear_eval'
  c.pretrained = ''            # pretext workdir; '' = random trunk from c.model
  c.checkpoint_step = -1       # -1: the latest checkpoint
  c.seed = 0
  # Used only when pretrained == '' (otherwise the pretext run's model is used).
  c.model = common.get_config().model
  c.data = common.data_config('cifar10')
  c.input = ml_collections.ConfigDict(dict(
      pp_train='',               # eval preprocessing with a random crop ('' = auto)
      pp_eval='',                # the same with a central crop ('' = auto)
      shuffle_buffer=10_000, prefetch=2, cache=False))
  c.batch_size = 512           # faithful-mode training batch
  c.eval_batch_size = 256      # feature-extraction / scoring batch (images)

  c.eval = ml_collections.ConfigDict(dict(
      mode='cached',             # 'cached' (features extracted once) or 'faithful'
      solver='sgd',              # cached only: 'sgd', 'lbfgs' or 'ridge'
      endpoints='',              # comma-separated subset; '' = all but logits
      pool_mode='max',           # pooling.MODES; 'max' = the study's VALID rule
      target_dims=9000,
      global_avg=False,          # also heads on globally averaged 4-D endpoints
      patch_combine='avg',       # patch models: 'avg' (study), 'max', 'concat'
      views=1,                   # cached: 1 central-crop view + (views-1) random crops
      cache_dtype='float32',     # 'float32' or 'bfloat16' feature cache
      max_cache_gb=0.0,          # > 0: train endpoint groups whose cache fits, in turn
      trunk_dtype='',            # '' = the pretext run's compute dtype
      max_train_examples=-1,     # > 0: use only the first N train examples
      lbfgs_iters=500,
  ))
  c.train = ml_collections.ConfigDict(dict(
      head='linear', mlp_hidden=1000, mlp_dropout=0.5,
      batch_size=512, epochs=500, base_lrs=(0.1,), weight_decays=(0.0,),
      momentum=0.9, nesterov=False, schedule='step', decay_epochs=(300.0, 400.0),
      decay_factor=0.1, max_decays=2, eval_every=10, patience=-1, standardize=False,
      seed=0, eval_batch_size=1024))
  c.mlp = ml_collections.ConfigDict(dict(
      enabled=False, endpoints='pre_logits',
      train=ml_collections.ConfigDict(dict(
          # An MLP without BN diverges at the linear heads' lr 0.1 on standardised
          # features (measured on cifar10_cpu: 0.03 best of 0.003..0.1).
          head='mlp', epochs=100, base_lrs=(0.01, 0.03), weight_decays=(0.0,),
          schedule='step', decay_epochs=(60.0, 80.0), eval_every=5, patience=-1))))
  c.knn = ml_collections.ConfigDict(dict(
      enabled=True, presets=('k20_t0.07', 'k200_t0.1'), endpoints='pre_logits'))
  c.lowshot = ml_collections.ConfigDict(dict(
      enabled=False, shots=(1, 2, 4, 8, 16, 32, 64, 96), samples=5,
      endpoints='pre_logits'))
  return c


def get_config(preset='cifar10'):
  c = base_config()
  if preset in ('cifar10', 'cifar10_cpu', 'imagenette64'):
    if preset == 'imagenette64':
      c.data = common.data_config('imagenette64')
      c.input.pp_train = 'decode|resize_small(73)|crop(64)'
      c.input.pp_eval = 'decode|resize_small(73)|crop(64)'
    else:
      c.input.pp_train = 'decode|resize_small(36)|crop(32)'
      c.input.pp_eval = 'decode|resize_small(36)|crop(32)'
    c.input.cache = True
    c.eval_batch_size = 500
    c.eval.cache_dtype = 'float32'
    c.train.update(batch_size=512, epochs=500, base_lrs=(0.01, 0.1),
                   weight_decays=(0.0, 1e-4), schedule='plateau', eval_every=10,
                   patience=30, max_decays=2, standardize=True)
    c.mlp.enabled = True
    c.lowshot.enabled = True
    if preset == 'cifar10_cpu':
      c.eval.max_train_examples = 10_000
      c.eval_batch_size = 250
      c.train.update(epochs=100, base_lrs=(0.1,), weight_decays=(0.0,), eval_every=5,
                     patience=15, batch_size=256)
      c.mlp.train.update(epochs=30, eval_every=5, decay_epochs=(20.0, 25.0),
                         base_lrs=(0.03,))
      c.lowshot.update(shots=(1, 4, 16, 64), samples=3)
  elif preset == 'imagenet':
    c.data = common.data_config('imagenet2012')
    c.input.pp_train = 'decode|resize_small(256)|crop(224)'
    c.input.pp_eval = 'decode|resize_small(256)|crop(224)'
    c.eval.mode = 'faithful'
    c.batch_size = 2048
    c.eval_batch_size = 512
    c.train.update(batch_size=2048, epochs=520, base_lrs=(0.1,), weight_decays=(0.0,),
                   schedule='step', decay_epochs=(480.0, 500.0), eval_every=10,
                   patience=-1, standardize=False)
    c.knn.enabled = False  # kNN over 1.28M images: run it on cached features instead.
  elif preset == 'smoke':
    c.data.train_split = 'train[:300]'
    c.data.val_split = 'train[300:400]'
    c.data.test_split = 'test[:101]'   # odd size: no example may be dropped
    c.input.pp_train = 'decode|resize_small(18)|crop(16)'
    c.input.pp_eval = 'decode|resize_small(18)|crop(16)'
    c.input.shuffle_buffer = 256
    c.batch_size = 64
    c.eval_batch_size = 64
    c.train.update(batch_size=64, epochs=6, base_lrs=(0.1,), weight_decays=(0.0, 1e-3),
                   schedule='step', decay_epochs=(4.0,), eval_every=2, patience=-1,
                   standardize=True, eval_batch_size=64)
    c.mlp.enabled = True
    c.mlp.train.update(epochs=2, eval_every=1, decay_epochs=())
    c.knn.presets = ('k20_t0.07',)
    c.lowshot.update(enabled=True, shots=(1, 2), samples=2)
  else:
    raise ValueError(f'unknown preset {preset!r} for configs/linear_eval.py; '
                     f'allowed: {list(PRESETS)}')
  return c
