"""Shared defaults for every ssl_jax job (optimizer, schedule, data, logging, checkpointing).

Task configs (`configs/rotation.py` etc.) start from `get_config()` and override.
Every value here is checked by `ssl_jax.config_lib.validate` before anything compiles.
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
  ))


def get_config():
  c = ml_collections.ConfigDict()
  c.job = 'pretext'             # 'pretext' (task training) or 'linear_eval'
  c.task = 'rotation'
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      name='resnet50_v2', width=4, dtype='float32', patch_strides=False,
      small_input=False, last_relu=True,
      cross_device_bn=False,    # False = the study's per-device (per TPU core) BN statistics
  ))
  c.data = data_config('cifar10')

  c.input = ml_collections.ConfigDict(dict(
      pp_train='',               # preprocessing ops (input_pipeline.preprocess), '|'-separated
      pp_eval='',
      shuffle_buffer=10_000,     # the study's example shuffle buffer
      prefetch=2,
      pretext_on_device=True,    # False: the task's pretext stage runs on the host CPU
      cache=False,               # tf.data cache of decoded images (small datasets)
      # data.source='in_memory': augmentation done on the device (ssl_jax.data.augment);
      # one of 'none', 'flip', 'pad_crop_flip', 'inception'.
      in_memory_augmentation='inception',
  ))

  c.batch_size = 64              # global, in source images (before pretext copies)
  c.eval_batch_size = 64
  c.num_epochs = 35.0
  c.total_steps = -1             # > 0 overrides num_epochs
  c.steps_per_epoch = -1         # > 0 overrides the count derived from the split size

  c.optimizer = ml_collections.ConfigDict(dict(
      name='momentum',           # momentum SGD as the study; 'adam' also allowed
      base_lr=0.1,               # lr = base_lr * batch_size / lr_scale_batch_size
      lr_scale_batch_size=256,
      momentum=0.9,
      nesterov=False,
      weight_decay=1e-4,         # coupled L2 on kernels only
      schedule='step',           # 'step' (warm-up then x decay_factor at decay_epochs) or 'cosine'
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
  return c
