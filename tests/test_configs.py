"""Every preset of every config builds and passes start-up validation."""
import importlib

import pytest

from ssl_jax import config_lib
from ssl_jax import tasks

PRETEXT = tuple(tasks.names())


@pytest.mark.parametrize('name', PRETEXT)
def test_every_pretext_preset_validates(name):
  module = importlib.import_module(f'configs.{name}')
  for preset in module.PRESETS:
    c = module.get_config(preset)
    assert c.task == name
    # Task settings live in the task's own section only (no top-level task keys); a
    # builder of several tasks adds exactly its members' task sections.
    task_set = config_lib.validate(c, num_devices=8)
    assert set(c.tasks) == {name} | {m.task.name for m in task_set.members}
    if task_set.single:
      assert set(c.tasks) == {name}
    if c.linear_eval_preset:  # the linear-evaluation phase it would run exists
      le = importlib.import_module('configs.linear_eval')
      assert c.linear_eval_preset in le.PRESETS, (name, preset)


@pytest.mark.parametrize('name', PRETEXT + ('linear_eval',))
def test_unknown_preset_is_an_error_naming_it(name):
  module = importlib.import_module(f'configs.{name}')
  with pytest.raises(ValueError, match="unknown preset 'nope'"):
    module.get_config('nope')


def test_host_pretext_needs_the_tfds_source():
  c = importlib.import_module('configs.rotation').get_config('smoke')
  c.data.source = 'synthetic'
  c.input.pretext_on_device = False
  with pytest.raises(config_lib.ConfigError, match='pretext_on_device=False'):
    config_lib.validate(c, num_devices=8)


def test_study_settings_of_the_imagenet_presets():
  rot = importlib.import_module('configs.rotation').get_config('imagenet')
  assert (rot.model.name, rot.model.width, rot.batch_size) == ('revnet50', 16, 64)
  assert (rot.num_epochs, rot.optimizer.warmup_epochs) == (35.0, 5.0)
  assert tuple(rot.optimizer.decay_epochs) == (15.0, 25.0)
  assert rot.optimizer.base_lr == 0.1 and rot.optimizer.lr_scale_batch_size == 256
  assert not rot.model.cross_device_bn  # per-device BN, as per TPU core in the study
  jig = importlib.import_module('configs.jigsaw').get_config('imagenet')
  assert (jig.model.name, jig.model.width, jig.batch_size) == ('resnet50_v1', 8, 128)
  assert jig.model.patch_strides
  assert (jig.tasks.jigsaw.patch_size, jig.tasks.jigsaw.jitter) == (64, 21)
  ex = importlib.import_module('configs.exemplar').get_config('imagenet')
  assert (ex.model.name, ex.model.width, ex.batch_size, ex.num_epochs) == (
      'resnet50_v1', 12, 64, 35.0)
  assert (ex.tasks.exemplar.num_copies, ex.tasks.exemplar.margin) == (8, 0.5)
  sim = importlib.import_module('configs.simclr').get_config('imagenet')
  assert (sim.batch_size, sim.num_epochs, sim.tasks.simclr.temperature) == (4096, 100.0, 0.1)
  assert sim.optimizer.name == 'lars' and sim.model.cross_device_bn
  assert importlib.import_module('configs.simclr').get_config('cifar10').tasks.simclr.temperature == 0.5
