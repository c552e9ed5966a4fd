"""The fine-tuning evaluator: the engine from the trunk (init_trunk), label counts, the
from-scratch baseline, resume after a preemption, never a half-trained number."""
import dataclasses
import json
import os
import signal

import jax
import ml_collections
import numpy as np
import pytest

from configs import linear_eval as le_configs
from ssl_jax import config_lib
from ssl_jax import train
from ssl_jax.evaluation import evaluators
from ssl_jax.evaluation import linear_eval
from ssl_jax.evaluation.evaluators import finetune

from test_evaluators import _write_pretext  # pylint: disable=g-bad-import-order


def _brightness(seed, n, size=16):
  """Two classes told apart by brightness alone (dark ~60 vs bright ~190), noisy."""
  rng = np.random.RandomState(seed)
  y = (np.arange(n) % 2).astype(np.int32)
  rng.shuffle(y)
  base = np.where(y == 1, 190.0, 60.0)[:, None, None, None]
  img = base + rng.randn(n, size, size, 3) * 25
  return np.clip(img, 0, 255).astype(np.uint8), y


def _arrays(n_train=96, seed=0):
  x, y = _brightness(seed, n_train + 48 + 64)
  return {'train': (x[:n_train], y[:n_train]),
          'val': (x[n_train:n_train + 48], y[n_train:n_train + 48]),
          'test': (x[n_train + 48:], y[n_train + 48:])}


def _config(pre, **finetune):
  config = le_configs.get_config('smoke')
  config.pretrained = pre
  config.data.num_classes = 2
  config.groupings = ml_collections.ConfigDict()
  config.input.pp_train = config.input.pp_eval = 'decode'
  config.eval.solver = 'lbfgs'
  config.eval.lbfgs_iters = 100
  config.train.weight_decays = (1e-2, 1e-3)
  config.mlp.enabled = config.lowshot.enabled = config.knn.enabled = False
  config.eval_batch_size = 16
  s = dict(enabled=True, preset='smoke', label_counts=(-1,), lrs=(0.1,),
           weight_decays=(0.0,), epochs=(10.0,), min_steps=1, max_steps=60, batch_size=16,
           warmup_fraction=0.0, pp_train='decode', checkpoint_every=10)
  s.update(finetune)
  config.evals.finetune.update(s)
  return config


def _context(config, arrays):
  trunk, source, _ = linear_eval.trunk_and_source(config, arrays)
  return linear_eval.context(config, trunk, source,
                             arrays=linear_eval.raw_arrays(config, arrays))


def test_zero_steps_reproduce_the_pretext_trunks_features(tmp_path):
  pre = str(tmp_path / 'pretext')
  _write_pretext(pre)
  arrays = _arrays()
  config = _config(pre, epochs=(0.0,), min_steps=0)
  ctx = _context(config, arrays)
  ev = finetune.Finetune('finetune', config.evals.finetune, config)
  run, state, steps = ev.train_one(ctx, str(tmp_path / 'ft'), arrays['train'], 0.1, 0.0, 0.0)
  assert steps == 0
  host = jax.device_get({'params': state['params']['trunk'],
                         'batch_stats': state['batch_stats']['trunk']})
  names = ['after_root', 'block1', 'block2', 'pre_logits']
  fn = jax.jit(linear_eval.extract_fn(config, ctx.trunk, names))
  images = arrays['test'][0]
  want = jax.device_get(fn(ctx.trunk['variables'], images))
  got = jax.device_get(fn(host, images))
  for n in names:
    np.testing.assert_array_equal(got[n], want[n])
  # The network is the trunk plus a fresh classifier on pre_logits.
  assert set(state['params']) == {'trunk', 'heads'}
  assert 'supervised' in state['params']['heads']
  del run


def test_finetuning_beats_the_frozen_probe_and_the_baseline_is_from_scratch(tmp_path):
  """A trunk whose last BatchNorm has scale 0 (bias 0.1): pre_logits are constant, so
  the frozen probe on them learns the class prior only, while fine-tuning trains that
  scale (its gradient, the normalised input, is not zero) and separates the classes."""
  pre = str(tmp_path / 'pretext')
  _write_pretext(pre)
  from ssl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  _, params, stats = checkpoint.restore_trunk(pre)
  params['block2_bn']['scale'] = np.zeros_like(params['block2_bn']['scale'])
  params['block2_bn']['bias'] = np.full_like(params['block2_bn']['bias'], 0.1)
  dead = str(tmp_path / 'dead')
  _write_pretext(dead, params=params, stats=stats)
  config = _config(dead, lrs=(0.3,), epochs=(30.0,), max_steps=150)
  config.eval.endpoints = 'pre_logits'
  config.eval.random_init_baseline = True
  res = linear_eval.run(config, str(tmp_path / 'eval'), arrays=_arrays())
  by = {(r['evaluator'], r['metric'], r['split']): r for r in res['rows']}
  probe = by[('linear', 'top1', 'test')]['value']
  ft = by[('finetune', 'top1', 'test')]
  assert probe <= 0.6                            # chance: constant features
  assert ft['value'] >= 0.9 and ft['value'] > probe + 0.3
  assert ft['endpoint'] == 'network' and ft['variant'] == 'all labels' and ft['init'] == 'pretext'
  # The baseline is the same recipe from the random twin: supervised from scratch.
  assert res['baseline']['finetune']['scratch']['all']['top1'] == ft['baseline']
  assert res['finetune']['pretext']['all']['gain'] == pytest.approx(ft['gain'])
  assert os.path.exists(tmp_path / 'eval' / 'finetune' / 'finetune' / 'scratch' / 'all')
  done = tmp_path / 'eval' / 'finetune' / 'finetune' / 'pretext' / 'all' / 'lr0.3_wd0_ep30'
  assert json.load(open(done / finetune.DONE))['steps'] == 150
  assert 'finetune' in linear_eval.format_table(res)


@pytest.mark.slow  # several engine runs
def test_a_preempted_run_resumes_and_never_reports_half_trained(tmp_path, monkeypatch):
  pre = str(tmp_path / 'pretext')
  _write_pretext(pre)
  arrays = _arrays()
  config = _config(pre, epochs=(2.0,), min_steps=20, max_steps=20, label_counts=(8,))
  ctx = _context(config, arrays)
  ctx.workdir = str(tmp_path / 'eval')
  ev = finetune.Finetune('finetune', config.evals.finetune, config)
  real_build = train.build

  def build_then_preempt(*args, **kwargs):  # SIGTERM during the 7th step
    run = real_build(*args, **kwargs)
    step, calls = run.train_step, [0]

    def train_step(state, batches):
      calls[0] += 1
      if calls[0] == 7:
        os.kill(os.getpid(), signal.SIGTERM)
      return step(state, batches)
    run.train_step = train_step
    return run

  monkeypatch.setattr(train, 'build', build_then_preempt)
  with pytest.raises(finetune.Interrupted, match='stopped at step 7 of 20'):
    list(ev.run(ctx, None))
  wdir = tmp_path / 'eval' / 'finetune' / 'finetune' / 'pretext' / '8_per_class' / 'lr0.1_wd0_ep2'
  assert not (wdir / finetune.DONE).exists()           # nothing reported
  assert (wdir / 'checkpoints' / '7').exists()
  monkeypatch.setattr(train, 'build', real_build)
  resumed = [r for r in ev.run(ctx, None) if isinstance(r, dict)]
  assert json.load(open(wdir / finetune.DONE))['steps'] == 20
  # The same run without the interruption gives the same numbers.
  ctx.workdir = str(tmp_path / 'straight')
  straight = [r for r in ev.run(ctx, None) if isinstance(r, dict)]
  for a, b in zip(resumed, straight):
    assert (a['metric'], a['split'], a['variant']) == (b['metric'], b['split'], b['variant'])
    assert a['value'] == pytest.approx(b['value'], abs=1e-9)
    assert a['train_examples'] == 16                    # 8 per class, 2 classes


def test_bad_finetune_settings_fail_before_any_compile(tmp_path):
  pre = str(tmp_path / 'pretext')
  _write_pretext(pre)
  for key, value, match in (('preset', 'nope', 'is not a configs/supervised.py preset'),
                            ('label_counts', (0,), '0 is not a count'),
                            ('lrs', (-1.0,), 'must be a number > 0'),
                            ('label_counts', (100,), '100 images per class is more than')):
    config = _config(pre)
    config.evals.finetune[key] = value
    with pytest.raises(config_lib.ConfigError, match=match):
      linear_eval.run(config, str(tmp_path / 'e'), arrays=_arrays())
  # A patch-model trunk takes patches, not the RGB images fine-tuning trains on.
  config = _config(pre)
  ctx = _context(config, _arrays())
  ev = finetune.Finetune('finetune', config.evals.finetune, config)
  ctx.trunk = dict(ctx.trunk, eval_input=dataclasses.replace(ctx.trunk['eval_input'],
                                                             kind='patches'))
  with pytest.raises(ValueError, match="this trunk takes 'patches' inputs"):
    ev.check(ctx)
  assert 'finetune' in evaluators.types()
