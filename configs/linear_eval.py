r"""Linear evaluation of every layer of a frozen pretext trunk (plus MLP, kNN, low-shot).

  python -m ssl_jax.main --config configs/linear_eval.py:cifar10 \
      --config.pretrained=/tmp/rot --workdir /tmp/rot_eval

`pretrained` is a pretext workdir (config.json + checkpoints/); '' evaluates a randomly
initialised trunk built from `config.model` (the random-features baseline). The data
section is independent of the pretext run's: a trunk trained on one dataset can be
evaluated on another's labels (transfer), e.g. Imagenette64 -> CIFAR-10.

Linear probes on cached features (eval.solver):
  'lbfgs' (default): multinomial logistic regression on standardised features solved to
          max |gradient| <= train.tol for every L2 coefficient of train.weight_decays
          (per example: scikit-learn's C = 1 / (N wd)), each point on its own, largest
          first, warm-started; the best on the val split is kept (solvers.py).
  'sgd':  momentum SGD with a schedule (linear.py); with train.lr_scaling='features' its
          lr is set from the cached features' scale (stable on any endpoint); 'batch' is
          the study's lr 0.1 x batch / 256 (the faithful mode's, which oscillates on wide
          standardised features). Needed for eval.views > 1.
  'ridge': closed-form ridge regression on +-1 targets.

Presets:
  cifar10       CIFAR-10 (JPEG q75) at 32 px: resize_small 36 -> crop 32 (the study's
                256/224 zoom), cached features, L-BFGS probes on all heads over an L2
                grid; kNN; low-shot on pre_logits. solver='sgd' gives the long SGD
                schedule (up to 500 epochs, lr/wd grid, stop on a validation plateau).
  cifar10_cpu   the same at CPU size (the pretext `cifar10_cpu` job's last phase):
                10k train examples (SGD: 100 epochs, a small grid).
  imagenette64  Imagenette at 64 px: resize_small 73 -> crop 64; as cifar10.
  imagenet      the study's reported protocol, 'faithful': images through the trunk at
                every step, resize_small 256 -> crop 224 (random at train, central at
                test), no flip, batch 2048, lr 0.1 * 2048/256, 520 epochs, x0.1 at 480
                and 500, VALID max pooling to <= 9000 dims, wd 0 (SGD, lr_scaling
                'batch').
  smoke         tiny, for tests (hundreds of examples, a few epochs, 16 px; SGD).
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
      solver='lbfgs',            # cached: 'lbfgs', 'sgd' or 'ridge'; faithful: 'sgd'
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
      # True: the same evaluation (architecture, evaluation input, features, probe,
      # seeds) also runs on a randomly initialised trunk; every row gets its test top-1
      # and the gain (on by default in the CPU-sized presets).
      random_init_baseline=False,
      lbfgs_iters=500,           # L-BFGS iteration cap of each L2 point
  ))
  c.train = ml_collections.ConfigDict(dict(
      head='linear', mlp_hidden=1000, mlp_dropout=0.5,
      batch_size=512, epochs=500, base_lrs=(0.1,),
      # The L2 grid (per example). wd = 0 has no finite optimum on separable features:
      # L-BFGS stops it when the loss's gradient vanishes below tol, or at lbfgs_iters.
      weight_decays=(1.0, 1e-1, 1e-2, 1e-3, 1e-4),
      momentum=0.9, nesterov=False, schedule='step', decay_epochs=(300.0, 400.0),
      decay_factor=0.1, max_decays=2, eval_every=10, patience=-1, standardize=True,
      seed=0, eval_batch_size=1024,
      lr_scaling='batch',        # SGD: 'batch' (the study's) or 'features' (cached)
      tol=1e-4,                  # L-BFGS: max |gradient| of the mean objective
      precond_rank=128))         # L-BFGS: rank of the spectral preconditioner
  c.mlp = ml_collections.ConfigDict(dict(
      enabled=False, endpoints='pre_logits',
      train=ml_collections.ConfigDict(dict(
          # An MLP without BN diverges at the linear heads' lr 0.1 on standardised
          # features (measured on cifar10_cpu: 0.03 best of 0.003..0.1).
          head='mlp', epochs=100, base_lrs=(0.01, 0.03), weight_decays=(0.0,),
          schedule='step', decay_epochs=(60.0, 80.0), eval_every=5, patience=-1,
          lr_scaling='batch'))))
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
    c.eval.solver = 'lbfgs'
    # L-BFGS: the L2 grid. SGD (solver='sgd'): base lrs in units of the features'
    # inverse curvature (lr_scaling='features'), the same L2 grid, plateau decays.
    c.train.update(batch_size=512, epochs=500, base_lrs=(0.3, 1.0),
                   weight_decays=(1.0, 1e-1, 1e-2, 1e-3, 1e-4), schedule='plateau',
                   eval_every=10, patience=30, max_decays=2, standardize=True,
                   lr_scaling='features', tol=1e-4, precond_rank=128)
    c.mlp.enabled = True
    c.lowshot.enabled = True
    if preset == 'cifar10_cpu':
      c.eval.random_init_baseline = True
      c.eval.max_train_examples = 10_000
      c.eval_batch_size = 250
      c.train.update(epochs=100, base_lrs=(1.0,), eval_every=5, patience=15,
                     batch_size=256)
      c.mlp.train.update(epochs=30, eval_every=5, decay_epochs=(20.0, 25.0),
                         base_lrs=(0.03,))
      c.lowshot.update(shots=(1, 4, 16, 64), samples=3)
  elif preset == 'imagenet':
    c.data = common.data_config('imagenet2012')
    c.input.pp_train = 'decode|resize_small(256)|crop(224)'
    c.input.pp_eval = 'decode|resize_small(256)|crop(224)'
    c.eval.mode = 'faithful'
    c.eval.solver = 'sgd'
    c.batch_size = 2048
    c.eval_batch_size = 512
    c.train.update(batch_size=2048, epochs=520, base_lrs=(0.1,), weight_decays=(0.0,),
                   schedule='step', decay_epochs=(480.0, 500.0), eval_every=10,
                   patience=-1, standardize=False, lr_scaling='batch')
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
    c.eval.solver = 'sgd'  # tests check the SGD schedule's bookkeeping end to end
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
