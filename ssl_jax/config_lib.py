"""Start-up validation of a job config: every bad value is an error before any compile.

Each error names the key, the value and what is allowed.
"""
JOBS = ('pretext', 'linear_eval')
SOURCES = ('tfds', 'in_memory', 'synthetic')
DTYPES = ('float32', 'bfloat16')


class ConfigError(ValueError):
  """A config value that cannot work."""


def _allowed(key, value, allowed):
  if value not in allowed:
    raise ConfigError(f'config.{key}={value!r} is not allowed; allowed: {list(allowed)}')


def _positive(key, value, allow_minus_one=False):
  if allow_minus_one and value == -1:
    return
  if not value > 0:
    extra = ' (or -1 for the default)' if allow_minus_one else ''
    raise ConfigError(f'config.{key}={value!r} must be > 0{extra}')


def validate(config, num_devices=None):
  """Raises ConfigError for an unknown job/task/model/source or an impossible value.

  Args:
    config: the job's ConfigDict.
    num_devices: global device count for batch divisibility (default: jax's).
  """
  _allowed('job', config.get('job', 'pretext'), JOBS)
  if config.get('job', 'pretext') != 'pretext':
    return  # linear_eval validates its own config.
  # Registries are imported here so a typo is caught before the models are built.
  from ssl_jax import models, tasks  # pylint: disable=g-import-not-at-top
  _allowed('task', config.task, tasks.names())
  m = config.model
  _allowed('model.name', m.name, sorted(models.MODELS))
  if not isinstance(m.width, int) or m.width < 1:
    raise ConfigError(f'config.model.width={m.width!r} must be an integer >= 1 '
                      '(k=4 is the standard ResNet50)')
  _allowed('model.dtype', m.dtype, DTYPES)
  if not m.last_relu and m.name == 'resnet50_v1':
    raise ConfigError('config.model.last_relu=False is not allowed for resnet50_v1 '
                      '(the "(-)" variant exists for resnet50_v2 and revnet50 only)')
  _allowed('data.source', config.data.source, SOURCES)
  if not config.input.pretext_on_device and config.data.source != 'tfds':
    raise ConfigError(
        'config.input.pretext_on_device=False is allowed only with '
        f"data.source='tfds', not {config.data.source!r}: in-memory data is already on the "
        'device, so its pretext stage runs there')
  for key in ('batch_size', 'eval_batch_size'):
    _positive(key, config[key])
  if num_devices is None:
    import jax  # pylint: disable=g-import-not-at-top
    num_devices = jax.device_count()
  for key in ('batch_size', 'eval_batch_size'):
    if config[key] % num_devices:
      raise ConfigError(
          f'config.{key}={config[key]} is not divisible by the {num_devices} '
          f'devices; allowed: a multiple of {num_devices}')
  if config.total_steps == -1:
    _positive('num_epochs', config.num_epochs)
  else:
    _positive('total_steps', config.total_steps)
  _positive('steps_per_epoch', config.steps_per_epoch, allow_minus_one=True)
  o = config.optimizer
  from ssl_jax import optim  # pylint: disable=g-import-not-at-top
  _allowed('optimizer.name', o.name, optim.NAMES)
  _allowed('optimizer.schedule', o.schedule, optim.SCHEDULES)
  _allowed('optimizer.lr_scaling', o.lr_scaling, optim.SCALINGS)
  _positive('optimizer.base_lr', o.base_lr)
  if o.weight_decay < 0:
    raise ConfigError(f'config.optimizer.weight_decay={o.weight_decay} must be >= 0')
  if o.warmup_epochs < 0:
    raise ConfigError(f'config.optimizer.warmup_epochs={o.warmup_epochs} must be >= 0')
  if list(o.decay_epochs) != sorted(o.decay_epochs):
    raise ConfigError(f'config.optimizer.decay_epochs={tuple(o.decay_epochs)} must be increasing')
  for key in ('log_every_steps', 'checkpoint_every_steps', 'max_to_keep'):
    _positive(key, config[key])
  if config.eval_every_steps != -1:
    _positive('eval_every_steps', config.eval_every_steps, allow_minus_one=True)
  pbn = config.precise_bn_batches
  if not isinstance(pbn, int) or pbn < 0:
    raise ConfigError(f'config.precise_bn_batches={pbn!r} must be an integer >= 0 '
                      '(0: evaluate with the BN moving averages)')
  if config.run_linear_eval and not config.linear_eval_preset:
    raise ConfigError('config.run_linear_eval=True needs config.linear_eval_preset '
                      "(a preset of configs/linear_eval.py, e.g. 'cifar10')")
  _validate_preprocessing(config)
  try:
    task = tasks.get_task(config.task, config)
    task.validate(config)
  except ConfigError:
    raise
  except (ValueError, KeyError, AttributeError) as e:
    raise ConfigError(str(e).strip('"\'')) from None
  from ssl_jax.data import ops  # pylint: disable=g-import-not-at-top
  for key in ('pp_train', 'pp_eval'):
    views = ops.num_views(config.input[key])
    if views != task.num_views:
      raise ConfigError(
          f'config.input.{key}={config.input[key]!r} makes {views} view(s) per image; task '
          f'{task.name!r} needs {task.num_views} (write `views({task.num_views})` in the '
          'preprocessing string)' if task.num_views > 1 else
          f'config.input.{key}={config.input[key]!r} makes {views} views per image; task '
          f'{task.name!r} takes one image (remove the views op)')


def _validate_preprocessing(config):
  """Every preprocessing string parses and builds, and train/eval shapes agree."""
  from ssl_jax.data import ops  # pylint: disable=g-import-not-at-top
  size = config.data.image_size
  shapes = {}
  for key, train in (('pp_train', True), ('pp_eval', False)):
    spec = config.input[key]
    try:
      ops.check_spec(spec, train=train)
      shapes[key] = tuple(ops.output_shape(spec or 'decode', (size, size, 3), train=train))
    except ValueError as e:
      raise ConfigError(f'config.input.{key}={spec!r}: {e}') from None
  if shapes['pp_train'] != shapes['pp_eval']:
    raise ConfigError(
        f"config.input.pp_train gives examples of shape {shapes['pp_train']} but pp_eval "
        f"{shapes['pp_eval']} (from {size}-px images); the model needs one shape: end both "
        'with ops of the same output size')

