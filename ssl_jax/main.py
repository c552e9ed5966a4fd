r"""Entry point: pretext training (then optionally linear evaluation), or linear evaluation.

  python -m ssl_jax.main --config configs/rotation.py:cifar10_cpu --workdir /tmp/rot
  python -m ssl_jax.main --config configs/linear_eval.py:cifar10 \
      --config.pretrained=/tmp/rot --workdir /tmp/rot_eval

Any config value can be overridden: `--config.model.width=8`. Running the same
command on an existing workdir resumes from its latest checkpoint.
"""
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Config file, with an optional :preset.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints and metrics go.')
flags.mark_flags_as_required(['config', 'workdir'])


def linear_eval_config(preset, pretrained):
  """The configs/linear_eval.py preset used as the last phase of a pretext job."""
  from configs import linear_eval  # pylint: disable=g-import-not-at-top
  c = linear_eval.get_config(preset)
  c.pretrained = pretrained
  return c


def main(argv):
  del argv
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  config = flags.FLAGS.config
  workdir = flags.FLAGS.workdir
  if config.get('job', 'pretext') == 'linear_eval':
    from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
    linear_eval.run(config, workdir)
    return
  from ssl_jax import config_lib  # pylint: disable=g-import-not-at-top
  from ssl_jax import parallel  # pylint: disable=g-import-not-at-top
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  parallel.maybe_initialize_distributed(config)
  config_lib.validate(config)
  if config.run_linear_eval:
    # Built now so a bad preset fails before hours of pretext training.
    le_config = linear_eval_config(config.linear_eval_preset, workdir)
  train.train_and_evaluate(config, workdir)
  if config.run_linear_eval:
    from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
    logging.info('pretext training done; linear evaluation of every layer')
    linear_eval.run(le_config, os.path.join(workdir, 'linear_eval'))


if __name__ == '__main__':
  app.run(main)
