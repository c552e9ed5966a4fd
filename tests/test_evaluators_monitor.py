"""The training monitor: evaluators over cached features of a few held-in images during
pretext training, equal to the standalone evaluation of the same checkpoint."""
import ml_collections
import numpy as np
import pytest

from configs import linear_eval as le_configs
from configs import rotation
from ssl_jax import train
from ssl_jax.evaluation import linear_eval
from ssl_jax.evaluation import monitor


def _pretext_config(**evals):
  c = rotation.get_config('smoke')
  c.model.name = 'tiny_cnn'
  c.data.source = 'in_memory'
  c.total_steps, c.checkpoint_every_steps, c.eval_every_steps = 4, 4, -1
  c.max_eval_batches = 1
  s = dict(every_steps=2, train_examples=40, val_examples=24, batch_size=16,
           pool_mode='max', target_dims=9000,
           knn=ml_collections.ConfigDict(dict(type='knn', enabled=True,
                                              presets=('k20_t0.07', 'k200_t0.1'),
                                              endpoints='block1,pre_logits')))
  s.update(evals)
  c.evals = ml_collections.ConfigDict(s)
  return c


def _arrays():
  rng = np.random.RandomState(0)
  make = lambda n: (rng.randint(0, 256, (n, 16, 16, 3)).astype(np.uint8),
                    rng.randint(0, 10, n).astype(np.int32))
  return {'train': make(64), 'val': make(33)}


def test_monitor_numbers_equal_the_standalone_evaluator_on_the_checkpoint(tmp_path):
  c = _pretext_config()
  arrays = _arrays()
  run = train.build(c, str(tmp_path / 'pretext'), arrays=arrays)
  out = train.train_loop(run)
  mon = monitor.create(run)
  assert mon.every_steps == 2 and mon.sizes == {'train': 40, 'val': 24}
  got = mon(out['state'], out['step'])
  assert got['monitor/seconds'] > 0 and len(mon.seconds) == 1
  # The standalone evaluation of the saved checkpoint, same images and settings.
  le = le_configs.get_config('smoke')
  le.pretrained = str(tmp_path / 'pretext')
  le.input.pp_train = le.input.pp_eval = c.input.pp_eval
  le.eval.max_train_examples = 40
  le.eval_batch_size = 16   # (the monitor's batch: the same programs, the same numbers)
  le.eval.bn_stats = 'trained'   # the monitor reads the moving averages, as the study
  le.evals.linear.enabled = le.mlp.enabled = le.lowshot.enabled = False
  le.knn.update(presets=('k20_t0.07', 'k200_t0.1'), endpoints='block1,pre_logits')
  le.groupings = ml_collections.ConfigDict()
  val = tuple(a[:24] for a in arrays['val'])
  res = linear_eval.run(le, str(tmp_path / 'eval'),
                        arrays={'train': arrays['train'], 'val': val, 'test': val})
  vals = {r: v for r, v in got.items() if r != 'monitor/seconds'}
  assert len(vals) == 2 * 2 * 2   # 2 endpoints x 2 presets x (top1, top5)
  for r in res['rows']:
    if r['split'] == 'val':
      assert vals[f"monitor/knn/val_{r['metric']}/{r['endpoint']}/{r['variant']}"] == r['value']
  # A second call reuses the compiled extraction.
  again = mon(out['state'], out['step'])
  assert {k: v for k, v in again.items() if k != 'monitor/seconds'} == vals


def test_monitor_settings_are_checked():
  assert monitor.create(train.build(_pretext_config(every_steps=0), None,
                                    arrays=_arrays())) is None
  c = _pretext_config(finetune=le_configs.finetune_section(enabled=True))
  with pytest.raises(ValueError, match='needs the trunk itself'):
    monitor.validate(c)
  c = _pretext_config(every_steps=-3)
  with pytest.raises(ValueError, match='config.evals.every_steps=-3'):
    monitor.validate(c)
  c = _pretext_config(knn=ml_collections.ConfigDict(dict(type='knnn')))
  with pytest.raises(ValueError, match="config.evals.knn.type: unknown evaluator type 'knnn'"):
    monitor.validate(c)


def test_the_training_loop_writes_the_monitor_scalars(tmp_path):
  """config.evals.every_steps wires the monitor into train_loop: its scalars land in the
  run's event file at the monitor's steps, equal to a direct call on the final state."""
  c = _pretext_config(every_steps=2)
  arrays = _arrays()
  run = train.build(c, str(tmp_path / 'pretext'), arrays=arrays)
  out = train.train_loop(run)
  from ssl_jax import viz  # the event-file reader (tensorboard's), shared with the figures
  scalars = viz.read_scalars(str(tmp_path / 'pretext'))
  name = 'monitor/knn/val_top1/pre_logits/k20_t0.07'
  steps, values = scalars[name]
  assert list(steps) == [2, 4]
  direct = monitor.create(train.build(c, None, arrays=arrays))(out['state'], out['step'])
  assert values[-1] == pytest.approx(direct[name], abs=1e-6)


def test_bad_monitor_settings_fail_in_build_before_any_compile(tmp_path):
  with pytest.raises(Exception, match='config.evals.every_steps=-3|config.evals.train_examples=0'):
    train.build(_pretext_config(every_steps=2, train_examples=0), str(tmp_path / 'w'),
                arrays=_arrays())
