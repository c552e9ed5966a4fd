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
  cifar10_cpu_finetune   Cole et al.'s label-quantity comparison at CPU size, on the
                cifar10_cpu setting: linear probes (block3, pre_logits) and fine-tuning
                of the whole network (configs/supervised.py:cifar10_cpu recipe, CIFAR
                crop + flip) at 10 / 100 / all (1,000) labels per class, each beside the
                random-init trunk through the same recipe (fine-tuning: supervised from
                scratch); lr in {0.03, 0.1} chosen on val; 100-600 steps per run.
  cifar10_finetune       the same at study size, for accelerators: every endpoint, 45,000
                train images, 1 / 4 / 10 / 50 / 100 / 500 / all labels per class, lr
                {0.01, 0.03, 0.1} x wd {1e-4, 5e-4} x {30, 100} epochs, up to 20,000
                steps per run.
Evaluators (config.evals, one section per instance, see ssl_jax/evaluation/evaluators):
  linear (probe), mlp, knn, lowshot (the historic sections, also reachable as
  config.train / config.mlp / config.knn / config.lowshot), finetune (off by default),
  lasso (off: a probe on a learned sparse mix of a stage's unit outputs, for trunks
  trained with config.model.unit_endpoints, e.g. the multitask lasso).
  Add an instance with a section of a registered type, e.g. a probe trained on a coarse
  level: config.evals.linear_coarse4 = dict(type='probe', train_level='coarse4').
BatchNorm in inference mode: eval.bn_stats for the evaluated trunk and eval.baseline_bn
for the random-init twin. 'best' (default, both): the evaluation runs with each kind of
statistics (trunk: its moving averages, then population statistics re-estimated on
eval.bn_batches train batches; twin: its initial mean 0 / variance 1, then re-estimated)
and takes, per evaluator, endpoint and variant, the rows of the kind better on val: the
same choice on both sides, so the gain is not BatchNorm statistics (measured: neither kind
is the stronger baseline at every layer; README "Linear evaluation"). Twice the cached
evaluators' time. Single kinds: 'trained' (the study's) / 'reestimate' for the trunk,
'init' / 'reestimate' for the twin.
Patch models (pretext task jigsaw / relative_patch_location) switch to the study's patch
geometry automatically: resize_small 3.5p -> crop 3p -> 3x3 cells of p px (p = the
pretext patch size; 224 -> 192 -> 64 for the study), features averaged over patches.
"""
import ml_collections

from configs import common

PRESETS = ('cifar10', 'cifar10_cpu', 'imagenette64', 'imagenet', 'smoke',
           'cifar10_cpu_finetune', 'cifar10_finetune')


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
      # BatchNorm statistics in inference mode. bn_stats (the evaluated trunk):
      # 'best' (both kinds below, per result group the better on val), 'trained' (the
      # checkpoint's moving averages, the study) or 'reestimate' (population mean /
      # variance of its BN inputs over bn_batches batches of eval_batch_size
      # train-split images, evaluation preprocessing, weights untouched). baseline_bn
      # (the random-init twin): 'best', 'init' (mean 0, variance 1: in inference mode
      # the twin's units see unnormalised inputs) or 'reestimate'.
      bn_stats='best',
      baseline_bn='best',
      bn_batches=20,
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
  # The evaluators to run: one section per instance, `type` = a registered evaluator
  # (ssl_jax/evaluation/evaluators/<type>.py), `enabled`. The standard four are the
  # historic sections under a second name (the same objects: config.mlp IS
  # config.evals.mlp, config.train IS config.evals.linear.train, and
  # config.evals.linear.solver follows config.eval.solver), so older command lines and
  # scripts keep working.
  c.evals = ml_collections.ConfigDict()
  c.evals.linear = ml_collections.ConfigDict(dict(
      type='probe', enabled=True, endpoints='', label_counts=(-1,), train_level='fine',
      keep_predictions=False))
  c.evals.linear.solver = c.eval.get_ref('solver')
  c.evals.linear.train = c.train
  for name in ('mlp', 'knn', 'lowshot'):
    c[name].type = name
    c.evals[name] = c[name]
  c.evals.finetune = finetune_section()
  # Doersch and Zisserman's lasso read by the downstream task: a probe on its own learned
  # mix of a stage's unit outputs (ssl_jax/evaluation/evaluators/lasso.py). Needs a trunk
  # trained with config.model.unit_endpoints (the multitask lasso); off by default.
  c.evals.lasso = ml_collections.ConfigDict(dict(
      type='lasso', enabled=False, stage='', l1s=(1e-3, 1e-2), weight_decays=(1e-3,),
      steps=300, lr=0.01, standardize=True))
  # Class groupings for granularity (Cole et al.): {level: groups of class indices};
  # probes, kNN and fine-tuning are also scored at each level ('top1@<level>').
  c.groupings = ml_collections.ConfigDict()
  return c


# CIFAR-10 classes: 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog,
# 7 horse, 8 ship, 9 truck. Two nested semantic levels (WordNet hypernyms), so a
# coarser level's groups are unions of the finer one's, as taxonomic ranks are:
#   coarse2: vehicle (airplane, automobile, ship, truck) | animal (the other six)
#   coarse4: aircraft and vessel (airplane, ship) | road vehicle (automobile, truck) |
#            bird and amphibian (bird, frog) | mammal (cat, deer, dog, horse)
CIFAR10_GROUPINGS = {
    'coarse2': ((0, 1, 8, 9), (2, 3, 4, 5, 6, 7)),
    'coarse4': ((0, 8), (1, 9), (2, 6), (3, 4, 5, 7)),
}


def finetune_section(**overrides):
  """config.evals.finetune: the whole network from the trunk, through the engine.

  See ssl_jax/evaluation/evaluators/finetune.py. Off by default (its cost is that of
  supervised training runs); the `cifar10_cpu_finetune` preset switches it on.
  """
  s = dict(
      type='finetune', enabled=False,
      preset='cifar10_cpu',          # configs/supervised.py preset: the recipe's base
      label_counts=(-1,),            # images per class (-1: every train example used)
      lrs=(0.1,),                    # base lr (the engine's: x batch / 256)
      weight_decays=(1e-4,),
      epochs=(30.0,),                # epochs over the labelled subset
      min_steps=100, max_steps=2000,  # each run's steps: epochs x n / batch, clipped
      batch_size=64,
      warmup_fraction=0.05,          # linear warm-up share of the steps, then cosine
      pp_train='decode|pad_crop_flip',  # the augmentation ('' = the evaluation's)
      pp_eval='',                    # '' = the evaluation's eval preprocessing
      checkpoint_every=200,          # steps between checkpoints (resume)
      seed=0)
  s.update(overrides)
  return ml_collections.ConfigDict(s)


def get_config(preset='cifar10'):
  if preset in ('cifar10_cpu_finetune', 'cifar10_finetune'):
    return _finetune_preset(preset)
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
    if preset != 'imagenette64':
      c.groupings = ml_collections.ConfigDict(CIFAR10_GROUPINGS)
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
    c.eval.bn_stats = 'trained'  # the study's; 'best' would train every probe twice
    c.batch_size = 2048
    c.eval_batch_size = 512
    c.train.update(batch_size=2048, epochs=520, base_lrs=(0.1,), weight_decays=(0.0,),
                   schedule='step', decay_epochs=(480.0, 500.0), eval_every=10,
                   patience=-1, standardize=False, lr_scaling='batch')
    c.knn.enabled = False  # kNN over 1.28M images: run it on cached features instead.
  elif preset == 'smoke':
    # One BN kind per side (tests of the engine stay fast); tests of 'best' set it.
    c.eval.bn_stats, c.eval.baseline_bn = 'trained', 'init'
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
    c.groupings = ml_collections.ConfigDict(CIFAR10_GROUPINGS)
  else:
    raise ValueError(f'unknown preset {preset!r} for configs/linear_eval.py; '
                     f'allowed: {list(PRESETS)}')
  return c


def _finetune_preset(preset):
  """Probes and fine-tuning at label counts beside the random-init baseline (Cole)."""
  cpu = preset == 'cifar10_cpu_finetune'
  c = get_config('cifar10_cpu' if cpu else 'cifar10')
  c.eval.random_init_baseline = True
  c.mlp.enabled = c.lowshot.enabled = False
  if cpu:
    counts = (10, 100, -1)
    c.eval.endpoints = 'block3,pre_logits'
    c.evals.finetune.update(
        enabled=True, preset='cifar10_cpu', label_counts=counts, lrs=(0.03, 0.1),
        weight_decays=(1e-4,), epochs=(30.0,), min_steps=100, max_steps=600,
        batch_size=64, checkpoint_every=200)
  else:
    counts = (1, 4, 10, 50, 100, 500, -1)
    c.evals.finetune.update(
        enabled=True, preset='cifar10', label_counts=counts, lrs=(0.01, 0.03, 0.1),
        weight_decays=(1e-4, 5e-4), epochs=(30.0, 100.0), min_steps=200,
        max_steps=20_000, batch_size=128, checkpoint_every=1000)
  c.evals.linear.label_counts = counts
  return c
