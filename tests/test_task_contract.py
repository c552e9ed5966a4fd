"""The task contract, checked for every registered task (present and future).

A new task gets these checks for free by registering itself (ssl_jax.tasks) and
shipping configs/<name>.py with a `smoke` preset: pretext shapes and dtypes on both
placements' inputs, the head on the trunk's endpoints, a finite loss with image-major
per-example metrics, one data-parallel step on 8 devices through the engine, a
checkpoint, and a linear evaluation of its trunk with the input the task asks for.
"""
import functools
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import checkpoint
from ssl_jax import config_lib
from ssl_jax import tasks
from ssl_jax import train
from ssl_jax.data import ops
from ssl_jax.tasks import common

TASKS = tasks.names()


def smoke_config(name):
  """The task's smoke preset on the tiny model with synthetic data."""
  c = importlib.import_module(f'configs.{name}').get_config('smoke')
  c.model.name = 'tiny_cnn'
  c.data.source = 'synthetic'
  c.data.synthetic_examples = 32
  c.batch_size = 16
  c.eval_batch_size = 16
  return c


def test_every_task_has_a_config_with_a_smoke_preset():
  assert {'rotation', 'supervised', 'jigsaw', 'relative_patch_location', 'exemplar',
          'simclr'} <= set(TASKS)
  for name in TASKS:
    module = importlib.import_module(f'configs.{name}')
    assert 'smoke' in module.PRESETS
    for preset in module.PRESETS:
      c = module.get_config(preset)
      assert c.task == name and name in c.tasks
      config_lib.validate(c, num_devices=8)


@pytest.mark.parametrize('name', TASKS)
def test_pretext_head_and_loss(name):
  c = smoke_config(name)
  c.model.cross_device_bn = False  # Outside a mesh here (the 8-device test covers it).
  built = tasks.get_task(name, c)
  task_set = tasks.as_task_set(built, c)
  assert isinstance(built, (tasks.Task, tasks.TaskSet))
  assert task_set.eval_input is not None
  # A builder of several tasks (multitask): every member fulfils the contract on the
  # shared trunk, with its own stream (its config) and its params['heads'][member].
  model = train.make_model(c, task_set)
  for member in task_set.members:
    _check_member(member, model, set(task_set.names))
  if isinstance(built, tasks.TaskSet):
    _check_eval_input(task_set.eval_input, c)


def _check_member(member, model, head_names):
  c, task, name = member.config, member.task, member.name
  size = c.data.image_size
  rng = np.random.RandomState(0)
  raw = rng.randint(0, 256, (4, size, size, 3)).astype(np.uint8)
  shapes = {}
  for is_train in (True, False):
    spec = c.input.pp_train if is_train else c.input.pp_eval
    pp = jax.jit(ops.make_batch_fn(spec, train=is_train))
    batch = {'image': pp(jax.random.key(1), raw), 'label': jnp.asarray(rng.randint(0, 10, 4)),
             'mask': jnp.ones((4,), bool)}
    want = ops.output_shape(spec, (size, size, 3), train=is_train)
    assert batch['image'].shape == (4,) + tuple(want) and batch['image'].dtype == jnp.uint8
    assert len(want) == (4 if task.num_views > 1 else 3)
    batch['image'] = common.apply_input_mode(batch['image'], member.input_mode)
    inputs, targets = jax.jit(functools.partial(task.pretext, train=is_train))(
        jax.random.key(2), batch)
    x = inputs['image']
    assert x.ndim == 5 and x.shape[0] == 4 and x.dtype == jnp.float32, x.shape
    assert np.isfinite(np.asarray(x)).all()
    shapes[is_train] = x.shape[2:]
    variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)},
                           {name: inputs}, train=False)
    assert set(variables['params']) == {'trunk', 'heads'}
    assert set(variables['params']['heads']) == {name} and name in head_names
    assert 'logits' not in variables['params']['trunk']
    (outputs, endpoints), _ = model.apply(variables, {name: inputs}, train=True,
                                          mutable=['batch_stats', 'losses', 'metrics'],
                                          rngs={'dropout': jax.random.key(3)})
    assert endpoints[name]['pre_logits'].shape[0] == 4 * x.shape[1]
    loss, per_example = task.loss(outputs[name], targets, None)
    assert loss.shape == () and np.isfinite(loss)
    assert 'loss' in per_example
    for k, v in per_example.items():
      assert v.dtype == jnp.float32 and v.ndim == 1 and v.shape[0] % 4 == 0, (k, v.shape)
      assert np.isfinite(np.asarray(v)).all(), k
    # The per-example mean is the loss (equal copies per image), for training.
    if is_train:
      np.testing.assert_allclose(np.mean(per_example['loss']), loss, rtol=1e-4, atol=1e-6)
  assert shapes[True] == shapes[False]
  # The evaluation input the task asks the linear evaluation for.
  _check_eval_input(task.eval_input, c)


def _check_eval_input(ev, c):
  size = c.data.image_size
  rng = np.random.RandomState(0)
  h = w = size
  if ev.pp:
    h, w = ops.output_shape(ev.pp, (size, size, 3), train=False)[:2]
  y = ev.fn(jnp.asarray(rng.randint(0, 256, (2, h, w, 3)), jnp.uint8))
  assert y.shape[0] == 2 * ev.per_image and y.dtype == jnp.float32


@pytest.mark.parametrize('name', TASKS)
def test_one_step_on_8_devices_then_linear_evaluation(name, tmp_path):
  from configs import linear_eval as le_configs  # pylint: disable=g-import-not-at-top
  from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 8
  c = smoke_config(name)
  c.total_steps, c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 2, 1, 2, -1
  c.max_eval_batches = 1
  out = train.train_and_evaluate(c, str(tmp_path / 'pretext'))
  assert out['step'] == 2 and np.isfinite(out['train_history'][-1]['train_loss'])
  # A set of several reports each member's numbers as `<member>/<key>`.
  names = tasks.get_task_set(c).names
  prefixes = [''] if len(names) == 1 else [f'{n}/' for n in names]
  for p in prefixes:
    assert np.isfinite(out['val'][p + 'loss']) and out['val'][p + 'num_examples'] == 16
    assert np.isfinite(out['train_history'][-1][p + 'train_loss'])
  meta = json.load(open(tmp_path / 'pretext' / 'checkpoints' / '2' / 'meta' / 'metadata'))
  assert meta['layout'] == checkpoint.LAYOUT and meta['task'] == name
  task_set = tasks.get_task_set(c)
  assert meta.get('members') == (None if task_set.single else list(task_set.names))

  le = le_configs.get_config('smoke')
  le.pretrained = str(tmp_path / 'pretext')
  le.train.update(epochs=1, eval_every=1)
  le.mlp.enabled = le.knn.enabled = le.lowshot.enabled = False
  rng = np.random.RandomState(1)
  arrays = {s: (rng.randint(0, 256, (n, 16, 16, 3)).astype(np.uint8),
                rng.randint(0, 10, n).astype(np.int32))
            for s, n in (('train', 32), ('val', 16), ('test', 17))}
  res = linear_eval.run(le, str(tmp_path / 'eval'), arrays=arrays)
  assert res['pretext_task'] == name
  assert res['trunk_input'] == tasks.get_task_set(c).eval_input.kind
  assert set(res['linear']) == {'after_root', 'block1', 'block2', 'pre_logits'}
  for row in res['linear'].values():
    assert row['count'] == 17 and 0.0 <= row['top1'] <= 1.0
  assert os.path.exists(tmp_path / 'eval' / 'results.json')
