r"""Entry point: pretext training (then optionally linear evaluation), or linear evaluation.

  python -m ssl_jax.main --config configs/rotation.py:cifar10_cpu --workdir /tmp/rot
  python -m ssl_jax.main --config configs/linear_eval.py:cifar10 \
      --config.pretrained=/tmp/rot --workdir /tmp/rot_eval

Any config value can be overridden: `--config.model.width=8`. Running the same
command on an existing workdir resumes from its latest checkpoint. A pretext job whose
config runs the linear evaluation last (config.run_linear_eval) takes overrides of that
evaluation's config (configs/linear_eval.py, preset config.linear_eval_preset) as
`--config.linear_eval.<key>=VALUE`, e.g. `--config.linear_eval.eval.max_train_examples=2000`.
"""
import contextlib
import ast
import difflib
import importlib.util
import logging as logging_lib
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Config file, with an optional :preset.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints and metrics go.')
flags.mark_flags_as_required(['config', 'workdir'])

LINEAR_EVAL_PREFIX = '--config.linear_eval.'
# `--config.linear_eval.KEY=VALUE` arguments, taken out of argv before absl parses it.
_LINEAR_EVAL_OVERRIDES = []


def _parse_value(text, current):
  """An override's value with the type of the key's current value."""
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if isinstance(current, bool):
    if isinstance(value, str) and value.lower() in ('true', 'false'):
      return value.lower() == 'true'
    return bool(value)
  if isinstance(current, float) and isinstance(value, int):
    return float(value)
  if isinstance(current, (tuple, list)) and not isinstance(value, (tuple, list)):
    return (value,)
  return value


def apply_overrides(config, overrides, where='config'):
  """Applies ['a.b=VALUE', ...] to a ConfigDict (ValueError naming an unknown key)."""
  for item in overrides:
    key, _, text = item.partition('=')
    node, parts = config, key.split('.')
    for i, part in enumerate(parts):
      keys = list(node.keys()) if hasattr(node, 'keys') else []
      if part not in keys:
        walked = '.'.join([where] + parts[:i])
        close = difflib.get_close_matches(part, keys, n=3, cutoff=0.5)
        hint = (f"closest: {', '.join(f'{walked}.{c}' for c in close)}" if close else
                f"{walked} has: {', '.join(sorted(keys)) or 'no keys (not a section)'}")
        raise ValueError(f'--{where}.{key}: {walked} has no key {part!r}; {hint}')
      if i < len(parts) - 1:
        node = node[part]
    with config.unlocked() if hasattr(config, 'unlocked') else contextlib.nullcontext():
      node[parts[-1]] = _parse_value(text, node[parts[-1]])
  return config


def linear_eval_config(preset, pretrained, overrides=()):
  """The configs/linear_eval.py preset used as the last phase of a pretext job, with
  the command line's `--config.linear_eval.*` overrides."""
  from configs import linear_eval  # pylint: disable=g-import-not-at-top
  c = linear_eval.get_config(preset)
  c.pretrained = pretrained
  return apply_overrides(c, overrides, where='config.linear_eval')


def _load_config_file(spec):
  """get_config(preset) of a --config FILE[:PRESET] spec (as config_flags loads it)."""
  path, _, preset = spec.partition(':')
  if not os.path.isfile(path):
    raise ValueError(f'no config file {path!r}')
  module_spec = importlib.util.spec_from_file_location('_ssl_jax_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(preset) if preset else module.get_config()


def config_argument_error(argv):
  """One line naming a bad --config file / preset or an override of a missing key, or None.

  Checked before absl parses the flags: ml_collections reports an unknown override
  key with a long traceback; here it is one line naming the key and the closest ones.
  """
  spec, overrides = None, []
  args = list(argv[1:])
  for i, arg in enumerate(args):
    if arg.startswith(LINEAR_EVAL_PREFIX):
      continue
    if arg.startswith('--config='):
      spec = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(args):
      spec = args[i + 1]
    elif arg.startswith('--config.'):
      overrides.append(arg[len('--config.'):].split('=', 1)[0])
  if spec is None:
    return None
  try:
    config = _load_config_file(spec)
  except ValueError as e:
    return f'--config={spec}: {e}'
  for key in overrides:
    node, walked = config, []
    for part in key.split('.'):
      keys = list(node.keys()) if hasattr(node, 'keys') else []
      if part not in keys:
        where = '.'.join(['config'] + walked)
        close = difflib.get_close_matches(part, keys, n=3, cutoff=0.5)
        hint = (f"closest: {', '.join(f'{where}.{c}' for c in close)}" if close else
                f"{where} has: {', '.join(sorted(keys)) or 'no keys (not a section)'}")
        return f'--config.{key}: {where} has no key {part!r}; {hint}'
      node = node[part]
      walked.append(part)
  le = [a[len(LINEAR_EVAL_PREFIX):] for a in args if a.startswith(LINEAR_EVAL_PREFIX)]
  if le:
    if not config.get('linear_eval_preset'):
      return (f'--config.linear_eval.*: the config {spec} runs no linear evaluation '
              '(config.linear_eval_preset is empty)')
    try:
      linear_eval_config(config.linear_eval_preset, '', le)
    except ValueError as e:
      return str(e)
  return None


class _QuietLibraries(logging_lib.Filter):
  """Drops the INFO chatter of orbax (dozens of lines per checkpoint) and TFDS from the
  console; their warnings and errors still show, except two that are expected here:
  orbax's "Type handler registry ... overriding jax.Array" (its own registration at
  import) and "Metadata file does not exist" when the linear evaluation reads the
  `state` item of a step directly (the step's metadata sits one level up)."""
  NOISY = ('/orbax/', '/tensorflow_datasets/')
  EXPECTED = ('Type handler registry type', 'Metadata file does not exist')

  def filter(self, record):
    if any(n in record.pathname for n in self.NOISY):
      if record.levelno < logging_lib.WARNING:
        return False
      return not any(e in str(record.msg) for e in self.EXPECTED)
    return True


def main(argv):
  del argv
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # Generous CPU collective timeouts (never the device count): a loaded CPU running
  # several simulated devices must not abort inside an all-reduce.
  from ssl_jax import xla_flags  # pylint: disable=g-import-not-at-top
  os.environ['XLA_FLAGS'] = xla_flags.cpu_xla_flags(os.environ.get('XLA_FLAGS'))
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from ssl_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = flags.FLAGS.config
  workdir = flags.FLAGS.workdir
  from ssl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  try:
    code = _run_job(config, workdir)
  except config_lib.ConfigError as e:
    # A bad value, missing data / checkpoint, foreign or unwritable workdir: found
    # before anything compiled or was written; one line, no traceback.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except (train.NonFiniteLossError, checkpoint.SaveError) as e:
    # Training stopped; the last good checkpoint is intact: fix the cause and rerun.
    _quiet_shutdown()
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  if code:
    sys.exit(code)


def _quiet_shutdown():
  """After a failed save, orbax's background threads may still post to their asyncio
  loop while the interpreter shuts down; Python then prints 'Exception ignored ...
  RuntimeError: Event loop is closed' with a traceback after our one-line error (seen
  on a loaded machine only: a race). Those, and only those, are dropped."""
  default = sys.unraisablehook

  def hook(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and 'Event loop is closed' in str(exc):
      return
    default(unraisable)
  sys.unraisablehook = hook


def _run_job(config, workdir):
  """Runs the job; returns the exit status (143 after a SIGTERM, as preempted jobs do)."""
  from ssl_jax import config_lib  # pylint: disable=g-import-not-at-top
  if config.get('job', 'pretext') == 'linear_eval':
    from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
    linear_eval.run(config, workdir)
    return 0
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  if _LINEAR_EVAL_OVERRIDES and not config.run_linear_eval:
    # (found: the overrides were silently unused)
    raise config_lib.ConfigError(
        f'--config.linear_eval.{_LINEAR_EVAL_OVERRIDES[0]}: this job runs no linear '
        'evaluation (config.run_linear_eval=False); add --config.run_linear_eval=True')
  if config.run_linear_eval:
    with config_lib.startup_errors():
      # Built now so a bad preset fails before hours of pretext training.
      le_config = linear_eval_config(config.linear_eval_preset, workdir,
                                     _LINEAR_EVAL_OVERRIDES)
      from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
      linear_eval.validate(le_config)
  run = train.build(config, workdir)  # validates the config, once
  out = train.train_loop(run)
  if out.get('preempted'):
    return 128 + 15
  if config.run_linear_eval:
    from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
    logging.info('pretext training done; linear evaluation of every layer')
    linear_eval.run(le_config, os.path.join(workdir, 'linear_eval'))
  return 0


def run():
  error = config_argument_error(sys.argv)
  if error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)
  _LINEAR_EVAL_OVERRIDES[:] = [a[len(LINEAR_EVAL_PREFIX):] for a in sys.argv[1:]
                               if a.startswith(LINEAR_EVAL_PREFIX)]
  # Out of sys.argv itself: ml_collections' config flag reads overrides from it.
  sys.argv = [a for a in sys.argv if not a.startswith(LINEAR_EVAL_PREFIX)]
  app.run(main)


if __name__ == '__main__':
  run()
