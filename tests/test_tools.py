"""Command lines outside the task package, and the main entry point's argument handling."""
import json
import os
import subprocess
import sys

import pytest

from ssl_jax import config_lib
from ssl_jax import main as main_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cifar_prepared():
  tfds = pytest.importorskip('tensorflow_datasets')
  if not tfds.builder('cifar10').is_prepared():
    pytest.skip('cifar10 is not prepared (run ../shared/data/prepare_tfds.py)')


def test_no_task_module_imports_the_engine():
  # Command lines live outside ssl_jax.tasks: importing every task module must not
  # import ssl_jax.train (checked in a fresh interpreter).
  code = ('import sys; from ssl_jax import tasks; tasks.names(); '
          "print(sorted(m for m in sys.modules if m in ('ssl_jax.train', 'ssl_jax.main', "
          "'ssl_jax.checkpoint', 'ssl_jax.config_lib')))")
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True,
                       capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.stdout.strip() == '[]', out.stdout


def test_colorize_tool_on_a_trained_run(tmp_path, capsys):
  _cifar_prepared()
  from configs import colorization  # pylint: disable=g-import-not-at-top
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  from ssl_jax.tools import colorize  # pylint: disable=g-import-not-at-top
  c = colorization.get_config('smoke')
  c.model.name = 'tiny_cnn'
  c.total_steps, c.eval_every_steps = 3, -1
  train.train_and_evaluate(c, str(tmp_path / 'w'))
  capsys.readouterr()
  out = tmp_path / 'pic.png'
  assert colorize.main(['--workdir', str(tmp_path / 'w'), '--out', str(out),
                        '--eval_images', '32', '--num', '2']) == 0
  printed = capsys.readouterr().out
  result = json.loads(printed[:printed.rindex('}') + 1])
  assert result['step'] == 3 and result['num_images'] == 32 and result['bn'] == 'ema'
  for name in ('model', 'prior', 'rebalanced_prior'):
    assert 0.0 <= result[name]['accuracy'] <= 1.0
  assert out.exists() and out.stat().st_size > 0


def test_linear_eval_overrides_from_the_pretext_command_line():
  c = main_lib.linear_eval_config('cifar10_cpu', '/w', ['eval.max_train_examples=2000',
                                                        'knn.enabled=False',
                                                        'train.weight_decays=(0.1, 0.01)'])
  assert c.eval.max_train_examples == 2000 and c.knn.enabled is False
  assert tuple(c.train.weight_decays) == (0.1, 0.01) and c.pretrained == '/w'
  with pytest.raises(ValueError, match="config.linear_eval.eval has no key 'max_train'"):
    main_lib.linear_eval_config('cifar10_cpu', '/w', ['eval.max_train=2'])
  argv = ['main', '--config', 'configs/rotation.py:cifar10_cpu',
          '--config.linear_eval.eval.nope=1']
  assert 'has no key' in main_lib.config_argument_error(argv)
  argv = ['main', '--config', 'configs/rotation.py:cifar10_cpu',
          '--config.linear_eval.eval.max_train_examples=100']
  assert main_lib.config_argument_error(argv) is None


def test_linear_eval_overrides_reach_the_evaluation_of_a_pretext_job(tmp_path):
  # The pretext job takes them, fails before training on a bad one, names it.
  out = subprocess.run(
      [sys.executable, '-m', 'ssl_jax.main', '--config', 'configs/rotation.py:smoke',
       '--config.linear_eval.eval.solver=newton', '--config.run_linear_eval=True',
       f'--workdir={tmp_path / "w"}'], cwd=ROOT, capture_output=True, text=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "error: config.eval.solver='newton' is not allowed" in out.stderr
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')
  # ... and refuses them where it runs no evaluation (they used to be silently unused).
  out = subprocess.run(
      [sys.executable, '-m', 'ssl_jax.main', '--config', 'configs/rotation.py:smoke',
       '--config.linear_eval.evals.lasso.enabled=True', f'--workdir={tmp_path / "v"}'],
      cwd=ROOT, capture_output=True, text=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  assert ('error: --config.linear_eval.evals.lasso.enabled=True: this job runs no linear '
          'evaluation (config.run_linear_eval=False)') in out.stderr
  assert not os.path.exists(tmp_path / 'v' / 'checkpoints')


def test_a_task_error_message_is_kept_whole():
  # config_lib used to strip quotes from both ends of a task's message, cutting it.
  from configs import rotation  # pylint: disable=g-import-not-at-top
  c = rotation.get_config('smoke')
  c.tasks.rotation.rotations = 'some'
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c, num_devices=8)
  assert str(e.value) == ("config.tasks.rotation.rotations='some'; allowed: "
                          "['all', 'random_one']")
