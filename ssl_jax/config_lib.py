"""Start-up validation of a job config: every bad value is an error before any compile.

Each error names the key, the value and what is allowed.
"""
import contextlib

JOBS = ('pretext', 'linear_eval')
SOURCES = ('tfds', 'in_memory', 'synthetic')
DTYPES = ('float32', 'bfloat16')


class ConfigError(ValueError):
  """A config value that cannot work (or a missing dataset, split or checkpoint):
  raised before anything compiles; ssl_jax.main prints it as one line."""


@contextlib.contextmanager
def startup_errors():
  """Turns the errors of a job's start-up (bad values, missing data or checkpoints)
  into ConfigError, whose message is the one line the user sees."""
  try:
    yield
  except ConfigError:
    raise
  except (ValueError, OSError, KeyError) as e:
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    raise ConfigError(message.strip()) from e


def _allowed(key, value, allowed):
  if value not in allowed:
    raise ConfigError(f'config.{key}={value!r} is not allowed; allowed: {list(allowed)}')


def _positive(key, value):
  """For real-valued keys (sizes: check_sizes)."""
  if not value > 0:
    raise ConfigError(f'config.{key}={value!r} must be > 0')


def _get(config, key):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def check_sizes(config, keys, *, error=None):
  """Every size-like value is an integer within its bounds (ConfigError naming it).

  Args:
    config: a ConfigDict.
    keys: {dotted key: (minimum, allowed special values)}, e.g. {'batch_size': (1, ())}
      or {'max_eval_batches': (1, (-1,))}; keys absent from the config are skipped.
    error: exception class (default ConfigError).
  """
  error = error or ConfigError
  for key, (minimum, special) in keys.items():
    try:
      value = _get(config, key)
    except (KeyError, AttributeError):
      continue
    if value in special and not isinstance(value, bool):
      continue
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      also = f' (or {", ".join(map(str, special))})' if special else ''
      raise error(f'config.{key}={value!r} must be an integer >= {minimum}{also}')


# Size-like values of a pretext config: key -> (minimum, allowed special values).
PRETEXT_SIZES = {
    'batch_size': (1, ()), 'eval_batch_size': (1, ()), 'model.width': (1, ()),
    'data.image_size': (1, ()), 'data.num_classes': (1, ()),
    'data.synthetic_examples': (1, ()), 'input.shuffle_buffer': (1, ()),
    'input.prefetch': (0, ()), 'total_steps': (1, (-1,)), 'steps_per_epoch': (1, (-1,)),
    'log_every_steps': (1, ()), 'checkpoint_every_steps': (1, ()), 'max_to_keep': (1, ()),
    'eval_every_steps': (1, (-1,)), 'max_eval_batches': (1, (-1,)),
    'precise_bn_batches': (0, ()), 'seed': (0, ()), 'model.output_stride': (0, ()),
}


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
  check_sizes(config, PRETEXT_SIZES)
  if num_devices is None:
    import jax  # pylint: disable=g-import-not-at-top
    num_devices = jax.device_count()
  for key in ('batch_size', 'eval_batch_size'):
    if config[key] % num_devices:
      raise ConfigError(
          f'config.{key}={config[key]} is not divisible by the {num_devices} '
          f'devices; allowed: a multiple of {num_devices}')
  if config.total_steps == -1:  # (total_steps and every other size: check_sizes above)
    _positive('num_epochs', config.num_epochs)
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



def _trunk_builds(name, size, channels, model_config):
  """Whether trunk `name` (width 1) maps a size x size input to non-empty endpoints."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ssl_jax import models  # pylint: disable=g-import-not-at-top
  trunk = models.create_trunk(dict(model_config, name=name), width=1, dtype='float32')
  x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  try:
    variables = jax.eval_shape(lambda x: trunk.init(jax.random.key(0), x, train=False), x)
    _, eps = jax.eval_shape(lambda v, x: trunk.apply(v, x, train=False), variables, x)
  except Exception:  # pylint: disable=broad-except
    return False
  return all(all(d > 0 for d in e.shape) for e in eps.values())


def check_model_input(config, task):
  """ConfigError when the trunk cannot take the task's inputs, naming the smallest size.

  The trunk input comes from the preprocessing string's output (data.image_size
  images) through the task's pretext stage (e.g. 12-px patches of a 48-px crop).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  from ssl_jax.data import ops  # pylint: disable=g-import-not-at-top
  size = config.data.image_size
  shape = ops.output_shape(config.input.pp_train or 'decode', (size, size, 3), train=True)
  x = jax.eval_shape(lambda: task.pretext(jax.random.key(0), train.dummy_batch(shape, 1),
                                          train=True)[0]['image'])
  h, w, c = x.shape[-3:]
  m = config.model
  if _trunk_builds(m.name, min(h, w), c, m.to_dict()):
    return
  lo, hi = min(h, w), 4096
  if not _trunk_builds(m.name, hi, c, m.to_dict()):
    raise ConfigError(f'config.model.name={m.name!r} cannot be built for {h}x{w}x{c} '
                      'inputs (nor larger ones): check the model options')
  while hi - lo > 1:  # The smallest size that works, by bisection (shapes only).
    mid = (lo + hi) // 2
    lo, hi = (lo, mid) if _trunk_builds(m.name, mid, c, m.to_dict()) else (mid, hi)
  raise ConfigError(
      f'config.model.name={m.name!r} cannot take the {h}x{w} trunk inputs of task '
      f'{config.task!r} (config.input.pp_train={config.input.pp_train!r} on '
      f'{size}-px images): the smallest input size it takes is {hi}x{hi}')
