"""Start-up validation of a job config: every bad value is an error before any compile.

Each error names the key, the value and what is allowed.
"""
import contextlib

JOBS = ('pretext', 'linear_eval')
SOURCES = ('tfds', 'in_memory', 'synthetic')
DTYPES = ('float32', 'bfloat16')
STEP_ROUNDINGS = ('per_epoch', 'simclr')


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
    raise ConfigError(_message(e)) from e


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
  """Checks a job config once, before anything compiles; returns the pretext task set.

  Raises ConfigError for an unknown job/task/model/source or an impossible value, in
  the job's keys and in every member's (preprocessing strings, views, batch sizes,
  the task's own checks).

  Args:
    config: the job's ConfigDict.
    num_devices: global device count for batch divisibility (default: jax's).
  Returns:
    the `tasks.TaskSet` of config.task (built here, once; build() reuses it), or None
    for a linear-evaluation config (it validates its own).
  """
  _allowed('job', config.get('job', 'pretext'), JOBS)
  if config.get('job', 'pretext') != 'pretext':
    return None  # linear_eval validates its own config.
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
  try:  # every model option the family cannot take (no trace: the module is only built)
    models.create_trunk(m.to_dict())
  except ValueError as e:
    raise ConfigError(f'config.model: {e}') from None
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
  if config.total_steps == -1:  # (total_steps and every other size: check_sizes above)
    _positive('num_epochs', config.num_epochs)
  _allowed('step_rounding', config.get('step_rounding', 'per_epoch'), STEP_ROUNDINGS)
  from ssl_jax import optim  # pylint: disable=g-import-not-at-top
  with startup_errors():  # every optimizer value that makes training meaningless
    optim.validate(config.optimizer)
  if config.run_linear_eval and not config.linear_eval_preset:
    raise ConfigError('config.run_linear_eval=True needs config.linear_eval_preset '
                      "(a preset of configs/linear_eval.py, e.g. 'cifar10')")
  try:
    task_set = tasks.get_task_set(config)
  except ConfigError:
    raise
  except (ValueError, KeyError, AttributeError) as e:
    raise ConfigError(_message(e)) from None
  for member in task_set.members:
    _validate_member(member, num_devices, task_set.single)
  return task_set


def _message(e):
  """The text of an exception raised by task code, as the one line the user sees
  (a KeyError's str() adds quotes; every other message is kept whole)."""
  text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  return text.strip()


def _validate_member(member, num_devices, single):
  """The member's stream (batch sizes, preprocessing, views) and the task's own checks."""
  c = member.config
  where = '' if single else f' (member {member.name!r})'
  if not single and ('/' in member.name or not member.name):
    raise ConfigError(f'member name {member.name!r} must be non-empty and contain no "/"')
  for key in ('batch_size', 'eval_batch_size'):
    value = c[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ConfigError(f'config.{key}={value!r}{where} must be an integer >= 1')
    if value % num_devices:
      raise ConfigError(
          f'config.{key}={value}{where} is not divisible by the {num_devices} '
          f'devices; allowed: a multiple of {num_devices}')
  try:
    _validate_preprocessing(c)
  except ConfigError as e:
    raise ConfigError(f'{e}{where}') from None
  task = member.task
  try:
    task.validate(c)
  except ConfigError:
    raise
  except (ValueError, KeyError, AttributeError) as e:
    raise ConfigError(_message(e)) from None
  from ssl_jax.data import ops  # pylint: disable=g-import-not-at-top
  for key in ('pp_train', 'pp_eval'):
    views = ops.num_views(c.input[key])
    if views != task.num_views:
      raise ConfigError(
          f'config.input.{key}={c.input[key]!r}{where} makes {views} view(s) per image; '
          f'task {task.name!r} needs {task.num_views} (write `views({task.num_views})` in '
          'the preprocessing string)' if task.num_views > 1 else
          f'config.input.{key}={c.input[key]!r}{where} makes {views} views per image; task '
          f'{task.name!r} takes one image (remove the views op)')


def _validate_preprocessing(config):
  """Every preprocessing string parses and builds, and train/eval shapes agree."""
  from ssl_jax.data import ops  # pylint: disable=g-import-not-at-top
  size = config.data.image_size
  shapes = {}
  for key, train in (('pp_train', True), ('pp_eval', False)):
    spec = config.input[key]
    # Host-only ops (jpeg): tf.data runs them per example; the in-memory source runs
    # a leading run of them once on the stored training images (never at evaluation).
    host = config.data.source == 'tfds' or (train and config.data.source == 'in_memory')
    try:
      if host and config.data.source == 'in_memory':
        ops.split_host_ops(spec)
      ops.check_spec(spec, train=train, host=host)
      shapes[key] = tuple(ops.output_shape(spec or 'decode', (size, size, 3), train=train,
                                           host=host))
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


def check_model_input(config, task, input_mode='rgb'):
  """ConfigError when the trunk cannot take the task's inputs, naming the smallest size.

  The trunk input comes from the preprocessing string's output (data.image_size
  images) through the member's input mode and the task's pretext stage (e.g. 12-px
  patches of a 48-px crop).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from ssl_jax.data import ops  # pylint: disable=g-import-not-at-top
  from ssl_jax.data import sources  # pylint: disable=g-import-not-at-top
  from ssl_jax.tasks import common  # pylint: disable=g-import-not-at-top
  size = config.data.image_size
  shape = ops.output_shape(config.input.pp_train or 'decode', (size, size, 3), train=True,
                           host=config.data.source != 'synthetic')

  def trunk_input():
    batch = sources.dummy_batch(shape, 1)
    batch = dict(batch, image=common.apply_input_mode(batch['image'], input_mode))
    return task.pretext(jax.random.key(0), batch, train=True)[0]['image']

  x = jax.eval_shape(trunk_input)
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
      f'{task.name!r} (config.input.pp_train={config.input.pp_train!r} on '
      f'{size}-px images): the smallest input size it takes is {hi}x{hi}')
