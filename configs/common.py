"""Shared defaults for every ssl_jax job (optimizer, schedule, data, logging, checkpointing).

Task configs (`configs/rotation.py` etc.) start from `get_config()`, apply a shared data
preset (`image_preset` for full-image tasks, `patch_preset` for the patch tasks) and add
their own section `config.tasks.<name>` holding every task-specific key. Task configs do
not import each other. Every value is checked by `ssl_jax.config_lib.validate` before
anything compiles.
"""
import ml_collections

# Datasets known to the presets: TFDS name -> (splits, number of classes, image size).
# `train_split` / `val_split` carve the held-out validation split out of train: it is the
# split for pretext evaluation and every model choice; `test_split` is for final reports only.
DATASETS = {
    'cifar10': dict(train_split='train[:45000]', val_split='train[45000:]',
                    test_split='test', num_classes=10, image_size=32),
    'imagenette64': dict(train_split='train[:8469]', val_split='train[8469:]',
                         test_split='validation', num_classes=10, image_size=64),
    # The study: 1,231,121 train / 50,046 held-out; TFDS cannot reproduce the shard
    # membership, so we hold out the last 50,046 images of the TFDS train split.
    'imagenet2012': dict(train_split='train[:1231121]', val_split='train[1231121:]',
                         test_split='validation', num_classes=1000, image_size=224),
}


def data_config(name):
  d = DATASETS[name]
  return ml_collections.ConfigDict(dict(
      # 'tfds' (tf.data on host), 'in_memory' (the split's uint8 images held on the
      # device: no per-step host work, no TensorFlow at run time once loaded) or
      # 'synthetic' (random uint8 images on the device, for tests and benchmarks).
      source='tfds',
      name=name,                # TFDS name
      data_dir=ml_collections.FieldReference(None, field_type=str),
      train_split=d['train_split'],
      val_split=d['val_split'],
      test_split=d['test_split'],
      num_classes=d['num_classes'],
      image_size=d['image_size'],
      skip_decode_errors=False,  # True: skip and count undecodable images instead of failing
      synthetic_examples=512,    # data.source='synthetic': number of training images
      # Pretraining data axes (Cole et al. 2022; ssl_jax/data/axes.py). subset: a nested
      # static subset of the train split (count, fraction or per_class; its own seed, so
      # the same images in every experiment). pool: train/val mixed from several datasets
      # at one resolution in exact proportions (data.source='in_memory' only).
      subset=ml_collections.ConfigDict(dict(count=-1, fraction=-1.0, per_class=-1, seed=0)),
      pool=ml_collections.ConfigDict(dict(
          datasets=(), train_splits=(), val_splits=(), proportions=(), total=-1,
          val_total=-1, image_size=0, resize='area', seed=0)),
      # '' or a folder of prepared splits (python -m ssl_jax.sweep ... --prepare DIR):
      # data.source='in_memory' then reads them with Pillow, no TensorFlow (GPU machine).
      arrays_dir='',
  ))


def get_config():
  c = ml_collections.ConfigDict()
  c.job = 'pretext'             # 'pretext' (task training) or 'linear_eval'
  c.task = 'rotation'
  c.tasks = ml_collections.ConfigDict()  # one section per task: config.tasks.<name>
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      name='resnet50_v2', width=4, dtype='float32', patch_strides=False,
      small_input=False, last_relu=True,
      cross_device_bn=False,    # False = the study's per-device (per TPU core) BN statistics
      output_stride=0,          # 0: the model's own; 8 / 16: dilated last stages (dense heads)
      unit_endpoints=(),        # stage names, e.g. ('block3',): <stage>/unit<j> endpoints (lasso)
  ))
  c.data = data_config('cifar10')

  c.input = ml_collections.ConfigDict(dict(
      pp_train='',               # preprocessing ops (input_pipeline.preprocess), '|'-separated
      pp_eval='',
      shuffle_buffer=10_000,     # the study's example shuffle buffer
      prefetch=2,
      pretext_on_device=True,    # False: the task's pretext stage runs on the host CPU
      cache=False,               # tf.data cache of decoded images (small datasets)
  ))
  # The preprocessing strings drive both sources: tf.data ops (input_pipeline) for
  # 'tfds', the same ops in JAX on the device (ssl_jax.data.ops) for 'in_memory'.

  c.batch_size = 64              # global, in source images (before pretext copies)
  c.eval_batch_size = 64
  c.num_epochs = 35.0
  c.total_steps = -1             # > 0 overrides num_epochs
  c.steps_per_epoch = -1         # > 0 overrides the count derived from the split size
  # 'per_epoch': steps/epoch = train examples // batch, total = ceil(epochs * that);
  # 'simclr': SimCLR's reference counts (total = examples * epochs // batch + 1, warm-up
  # floor(warmup_epochs * examples / batch); train.step_counts, optim.simclr_step_counts).
  c.step_rounding = 'per_epoch'

  c.optimizer = ml_collections.ConfigDict(dict(
      name='momentum',           # momentum SGD as the study; 'adam', 'lars' also allowed
      base_lr=0.1,               # lr = base_lr * batch_size / lr_scale_batch_size
      lr_scaling='linear',       # 'linear' (as above) or 'sqrt': base_lr * sqrt(batch_size)
      lr_scale_batch_size=256,
      trust_coefficient=1e-3,    # lars only
      momentum=0.9,
      nesterov=False,
      weight_decay=1e-4,         # coupled L2 on kernels only
      schedule='step',           # 'step' (warm-up then x decay_factor at decay_epochs), 'cosine' or 'constant'
      warmup_epochs=5.0,
      decay_epochs=(15.0, 25.0),
      decay_factor=0.1,
  ))

  c.log_every_steps = 100
  c.eval_every_steps = 1000      # pretext evaluation on the held-out split; -1: only at the end
  c.checkpoint_every_steps = 1000
  c.max_to_keep = 3
  c.max_eval_batches = -1        # > 0: evaluate on a prefix only (smoke tests)
  # 0: evaluate with the BN moving averages (the study). K > 0: "precise BN": before
  # each evaluation, re-estimate every BN layer's statistics over the last K training
  # batches with the current parameters (val_*), and also report the moving-average
  # result (val_ema_*). For short runs, where moving averages (momentum 0.99, head
  # 0.997) lag the fast-changing weights; checkpoints keep the moving averages.
  c.precise_bn_batches = 0

  c.distributed = ml_collections.ConfigDict(dict(
      initialize=False,          # True: jax.distributed.initialize() (multi-host)
      coordinator_address='',
      num_processes=-1,
      process_id=-1,
  ))

  c.run_linear_eval = False      # True: linear evaluation as the last phase of a pretext job
  c.linear_eval_preset = ''      # preset of configs/linear_eval.py used then
  # Evaluators during pretext training (ssl_jax/evaluation/monitor.py): every
  # every_steps steps (0: off) they run on the features of the first train_examples
  # train-split and val_examples val-split images (TensorBoard 'monitor/...'); the
  # sections are those of configs/linear_eval.py's config.evals (fine-tuning refused).
  c.evals = ml_collections.ConfigDict(dict(
      every_steps=0, train_examples=2000, val_examples=1000, batch_size=250,
      pool_mode='max', target_dims=9000,
      knn=ml_collections.ConfigDict(dict(type='knn', enabled=True, presets=('k20_t0.07',),
                                         endpoints='pre_logits')),
  ))
  return c


def _smoke_loop(c):
  """The smoke presets' loop: batch 16, 6 steps, an evaluation and a checkpoint every 3."""
  c.input.shuffle_buffer = 256
  c.input.cache = True
  c.batch_size = 16
  c.eval_batch_size = 16
  c.total_steps = 6
  c.steps_per_epoch = 2
  c.optimizer.warmup_epochs = 1.0
  c.optimizer.decay_epochs = (2.0,)
  c.log_every_steps = 2
  c.eval_every_steps = 3
  c.checkpoint_every_steps = 3


def image_preset(c, preset):
  """Data, preprocessing and schedule of the full-image presets (rotation, supervised).

  imagenet: the study's (inception crop 224 + flip + colour jitter; 35 epochs, 5 warm-up,
  x0.1 at 15 and 25). cifar10 / imagenette64: 32 / 64 px with the small-input stem,
  100 / 60 epochs. smoke: tiny (16 px, 6 steps) for tests. `cifar10_cpu` is each task's
  own. Raises ValueError for an unknown preset.
  """
  if preset == 'imagenet':
    c.data = data_config('imagenet2012')
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
  elif preset in ('cifar10', 'imagenette64', 'cifar10_cpu'):
    name, size = ('imagenette64', 64) if preset == 'imagenette64' else ('cifar10', 32)
    c.data = data_config(name)
    c.model.small_input = True
    c.input.pp_train = f'decode|inception_crop({size})|flip_lr|color_jitter'
    c.input.pp_eval = f'decode|inception_eval({size})'
    c.input.cache = True
    c.model.width = 4
    c.batch_size = 128
    c.eval_batch_size = 512 if preset == 'cifar10' else 256
    c.num_epochs = 100.0 if preset == 'cifar10' else 60.0
    c.optimizer.warmup_epochs = 5.0
    c.optimizer.decay_epochs = (50.0, 80.0) if preset == 'cifar10' else (30.0, 50.0)
    c.log_every_steps = 100 if preset == 'cifar10' else 50
    c.eval_every_steps = 3500 if preset == 'cifar10' else 1000
    c.checkpoint_every_steps = c.eval_every_steps
    c.linear_eval_preset = preset
  elif preset == 'smoke':
    c.data = data_config('cifar10')
    c.model.small_input = True
    c.model.width = 1
    c.data.train_split = 'train[:512]'
    c.data.val_split = 'train[512:600]'
    c.data.test_split = 'test[:88]'
    c.data.image_size = 16
    c.input.pp_train = 'decode|resize(16)|flip_lr'
    c.input.pp_eval = 'decode|resize(16)'
    _smoke_loop(c)
    c.linear_eval_preset = 'smoke'
  else:
    raise ValueError(f'unknown preset {preset!r}')
  return c


def patch_settings(**overrides):
  """The patch tasks' geometry and head (config.tasks.<jigsaw|relative_patch_location>).

  The study: a 3x3 grid of 85-px cells of a 255-px crop, 64-px patches (jitter 21),
  a 1000-d per-patch embedding, FC head 4096 wide with dropout 0.5.
  """
  s = dict(grid=3, patch_size=64, jitter=21, embed_dim=1000, head_hidden=4096,
           dropout_rate=0.5)
  s.update(overrides)
  return ml_collections.ConfigDict(s)


def patch_preset(c, preset):
  """Data, preprocessing, model and schedule of the patch tasks' presets.

  Returns the patch settings of the preset (see `patch_settings`), for the task's
  section. The geometry must satisfy S // 3 - jitter == patch_size for the
  preprocessed size S (checked before anything compiles). Presets: see
  configs/jigsaw.py. Raises ValueError for an unknown preset.
  """
  c.model.name = 'resnet50_v1'
  c.model.patch_strides = True
  if preset == 'imagenet':
    c.data = data_config('imagenet2012')
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
    geometry = patch_settings()
  elif preset in ('cifar10', 'imagenette64'):
    cifar = preset == 'cifar10'
    c.data = data_config(preset)
    c.model.width = 4
    c.model.small_input = True
    if cifar:
      geometry = patch_settings(patch_size=24, jitter=8)
      c.input.pp_train = 'decode|resize(110)|to_gray(0.66)|crop(96)'
    else:
      geometry = patch_settings(patch_size=32, jitter=10)
      c.input.pp_train = 'decode|resize(146)|to_gray(0.66)|crop(127)'
    c.input.pp_eval = c.input.pp_train
    c.input.cache = True
    c.batch_size = 128
    c.eval_batch_size = 128
    c.num_epochs = 100.0 if cifar else 60.0
    c.optimizer.warmup_epochs = 5.0
    c.optimizer.decay_epochs = (50.0, 80.0) if cifar else (30.0, 50.0)
    c.log_every_steps = 100 if cifar else 50
    c.eval_every_steps = 3500 if cifar else 1000
    c.checkpoint_every_steps = c.eval_every_steps
  elif preset == 'cifar10_cpu':
    c.data = data_config('cifar10')
    c.data.val_split = 'train[45000:46000]'
    c.model.width = 1
    c.model.small_input = True
    geometry = patch_settings(patch_size=12, jitter=4, embed_dim=128, head_hidden=1024)
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
    c.data = data_config('cifar10')
    c.data.train_split = 'train[:512]'
    c.data.val_split = 'train[512:600]'
    c.data.test_split = 'test[:88]'
    c.model.width = 1
    c.model.small_input = True
    geometry = patch_settings(patch_size=12, jitter=4, embed_dim=64, head_hidden=64)
    c.input.pp_train = 'decode|resize(48)|to_gray(0.66)|crop(48)'
    c.input.pp_eval = 'decode|resize(48)|to_gray(0.66)|crop(48)'
    _smoke_loop(c)
  else:
    raise ValueError(f'unknown preset {preset!r}')
  # The linear-evaluation preset of the same data (patch geometry is automatic there).
  c.linear_eval_preset = preset
  return geometry
