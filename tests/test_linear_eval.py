"""Linear evaluation: heads, cached vs faithful, no dropped example, frozen trunk, job."""
import copy
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import linear_eval as le_configs
from ssl_jax import models
from ssl_jax.evaluation import features
from ssl_jax.evaluation import linear
from ssl_jax.evaluation import linear_eval
from ssl_jax.evaluation import lowshot
from ssl_jax.data import sources
from ssl_jax.evaluation import knn
from ssl_jax.evaluation import solvers

TFDS_CIFAR = os.path.expanduser('~/tensorflow_datasets/cifar10')


def _separable(rng, n, num_classes=5, dim=40, scale=3.0):
  centers = np.random.RandomState(123).randn(num_classes, dim) * scale
  y = rng.randint(0, num_classes, n)
  return (centers[y] + rng.randn(n, dim)).astype(np.float32), y.astype(np.int32)


class StandInTrunk(nn.Module):
  """A small trunk with the model contract (conv+BN endpoints, 2-D pre_logits):
  compiles in a fraction of a second, unlike ResNet50."""
  num_classes: int = 4

  @nn.compact
  def __call__(self, x, train):
    eps = {}
    x = nn.Conv(8, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.99)(x))
    eps['block1'] = x
    x = nn.Conv(16, (3, 3), strides=2, use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.99)(x))
    eps['block2'] = x
    eps['pre_logits'] = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, name='logits')(eps['pre_logits'])
    eps['logits'] = logits
    return logits, eps


def _standin(size=8):
  model = StandInTrunk()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False)
  # Non-trivial moving statistics, so inference-mode BN is visible.
  variables = dict(variables)
  variables['batch_stats'] = jax.tree.map(lambda v: v + 0.3, variables['batch_stats'])
  return model, jax.tree.map(np.asarray, variables)


# ----------------------------------------------------------------------------- heads


def test_heads_reach_100_percent_on_separable_features():
  rng = np.random.RandomState(0)
  xa, y = _separable(rng, 600)
  xv, yv = _separable(rng, 151)
  xt, yt = _separable(rng, 203)
  noise = rng.randn(600, 9).astype(np.float32)   # a second, uninformative endpoint
  train = {'sep': jnp.asarray(xa), 'noise': jnp.asarray(noise)}
  val = {'sep': jnp.asarray(xv), 'noise': jnp.asarray(rng.randn(151, 9).astype(np.float32))}
  cfg = dict(epochs=20, batch_size=64, base_lrs=(0.01, 0.1), weight_decays=(0.0, 1e-4),
             decay_epochs=(15,), eval_every=5, standardize=True)
  res = linear.train_cached(train, y, val, yv, num_classes=5, cfg=cfg)
  sel = res['selected']
  assert sel['sep']['val_top1'] == 1.0
  assert sel['noise']['val_top1'] < 0.6
  scores, count = linear.score_cached({'sep': sel['sep']}, {'sep': jnp.asarray(xt)}, yt,
                                      kind='linear', stats=res['stats'])
  assert count == 203 and scores['sep']['top1'] == 1.0 and scores['sep']['top5'] == 1.0
  assert len(sel['sep']['grid']) == 4
  # MLP head and the full-batch solvers on the same features.
  mlp = linear.train_cached({'sep': train['sep']}, y, {'sep': val['sep']}, yv,
                            num_classes=5, cfg=dict(cfg, head='mlp', mlp_hidden=64,
                                                    epochs=10))
  assert mlp['selected']['sep']['val_top1'] == 1.0
  for fit in (solvers.train_lbfgs, solvers.train_ridge):
    kwargs = {'iters': 50} if fit is solvers.train_lbfgs else {}
    r = fit({'sep': train['sep']}, y, {'sep': val['sep']}, yv, num_classes=5,
            cfg=dict(weight_decays=(0.0, 1e-3), standardize=True), **kwargs)
    assert r['selected']['sep']['val_top1'] == 1.0, fit


def test_plateau_stops_early_and_reports_the_epoch():
  rng = np.random.RandomState(1)
  x, y = _separable(rng, 300)
  xv, yv = _separable(rng, 50)
  res = linear.train_cached({'a': jnp.asarray(x)}, y, {'a': jnp.asarray(xv)}, yv,
                            num_classes=5, cfg=dict(epochs=200, batch_size=100,
                                                    schedule='plateau', patience=4,
                                                    max_decays=1, eval_every=2))
  assert res['stopped_early'] and res['epochs_trained'] < 200
  assert 0 < res['selected']['a']['epoch'] <= res['epochs_trained']


def test_augmented_views():
  """Two views stacked view-major, with per-view labels: trains and selects."""
  rng = np.random.RandomState(2)
  x, y = _separable(rng, 200)
  x2 = x + 0.1 * rng.randn(*x.shape).astype(np.float32)
  perm = rng.permutation(200)   # the second view in another order, with its labels
  feats = {'a': jnp.asarray(np.concatenate([x, x2[perm]]))}
  labels = np.concatenate([y, y[perm]])
  xv, yv = _separable(rng, 40)
  res = linear.train_cached(feats, labels, {'a': jnp.asarray(xv)}, yv, num_classes=5,
                            views=2, cfg=dict(epochs=6, batch_size=50, eval_every=3))
  assert res['selected']['a']['val_top1'] == 1.0


# ----------------------------------------------------------------------------- modes


def _padded_batches(images, labels, order, batch_size):
  """Batches in `order`; the last one padded (mask False), as the cached trainer does."""
  for s in range(0, len(order), batch_size):
    idx = order[s:s + batch_size]
    pad = batch_size - len(idx)
    full = np.concatenate([idx, np.zeros(pad, idx.dtype)])
    yield {'image': images[full], 'label': labels[full],
           'mask': np.arange(batch_size) < len(idx)}


def test_cached_and_faithful_agree_on_same_data_and_schedule():
  model, variables = _standin()
  rng = np.random.RandomState(3)
  n, nv, b = 70, 23, 16
  images = rng.randint(0, 256, (n, 8, 8, 3)).astype(np.uint8)
  labels = rng.randint(0, 4, n).astype(np.int32)
  v_images = rng.randint(0, 256, (nv, 8, 8, 3)).astype(np.uint8)
  v_labels = rng.randint(0, 4, nv).astype(np.int32)
  names = ['block1', 'pre_logits']
  fn = features.make_extract_fn(model, names, pool_mode='max', target_dims=300)
  cfg = dict(epochs=4, batch_size=b, base_lrs=(0.05, 0.2), weight_decays=(0.0, 1e-3),
             schedule='step', decay_epochs=(3,), eval_every=2, seed=7)
  # Cached: features once (every example, in order), then the in-program shuffles.
  src = sources.ArraySource({'train': (images, labels), 'val': (v_images, v_labels)})
  tx, ty = features.extract(fn, variables, src.eval_batches('train', 32))
  vx, vy = features.extract(fn, variables, src.eval_batches('val', 32))
  cached = linear.train_cached({k: jnp.asarray(v) for k, v in tx.items()}, ty,
                               {k: jnp.asarray(v) for k, v in vx.items()}, vy,
                               num_classes=4, cfg=cfg)
  # Faithful: the same example order, images through the trunk at every step.
  perm_rng = jax.random.fold_in(jax.random.PRNGKey(cfg['seed']), 1)
  def train_batches():
    for e in range(cfg['epochs']):
      order = np.asarray(linear.epoch_permutation(perm_rng, e, n))
      yield from _padded_batches(images, labels, order, b)
  faithful = linear.train_faithful(
      fn, variables, train_batches(), linear.num_steps(n, b),
      lambda: src.eval_batches('val', 32), dims={k: v.shape[1] for k, v in tx.items()},
      num_classes=4, cfg=cfg)
  for name in names:
    c, f = cached['selected'][name], faithful['selected'][name]
    assert c['epoch'] == f['epoch'] and c['base_lr'] == f['base_lr']
    assert c['val_top1'] == pytest.approx(f['val_top1'], abs=1e-6)
    for leaf_c, leaf_f in zip(jax.tree.leaves(c['params']), jax.tree.leaves(f['params'])):
      np.testing.assert_allclose(leaf_c, leaf_f, rtol=1e-3, atol=1e-4)
  assert faithful['epochs_trained'] == cached['epochs_trained'] == 4


def test_no_example_dropped_for_odd_split_sizes():
  model, variables = _standin()
  rng = np.random.RandomState(4)
  n = 101
  images = rng.randint(0, 256, (n, 8, 8, 3)).astype(np.uint8)
  labels = rng.randint(0, 4, n).astype(np.int32)
  src = sources.ArraySource({'test': (images, labels)})
  batches = list(src.eval_batches('test', 32))
  assert len(batches) == 4 and sum(int(bt['mask'].sum()) for bt in batches) == n
  fn = features.make_extract_fn(model, ['pre_logits'])
  x, y = features.extract(fn, variables, iter(batches))
  assert x['pre_logits'].shape[0] == n and np.array_equal(y, labels)
  head = {'pre_logits': {'params': {
      'kernel': rng.randn(x['pre_logits'].shape[1], 4).astype(np.float32),
      'bias': np.zeros(4, np.float32)}}}
  logits = x['pre_logits'] @ head['pre_logits']['params']['kernel']
  expect = np.mean(logits.argmax(1) == labels)
  for bs in (7, 32, 1000):
    scores, count = linear.score_cached(head, {'pre_logits': jnp.asarray(x['pre_logits'])},
                                        labels, kind='linear', batch_size=bs)
    assert count == n and scores['pre_logits']['top1'] == pytest.approx(expect)
  scores, count = linear.score_faithful(head, fn, variables, iter(batches), kind='linear')
  assert count == n and scores['pre_logits']['top1'] == pytest.approx(expect, abs=1e-6)


def test_frozen_trunk_is_unchanged_and_in_inference_mode():
  model, variables = _standin()
  before = copy.deepcopy(variables)
  assert 'batch_stats' in variables
  rng = np.random.RandomState(5)
  images = rng.randint(0, 256, (32, 8, 8, 3)).astype(np.uint8)
  labels = rng.randint(0, 4, 32).astype(np.int32)
  names = ['block2', 'pre_logits']
  fn = features.make_extract_fn(model, names)
  # BatchNorm uses its moving averages: an example's features ignore its batch-mates.
  jfn = jax.jit(fn)
  full = jax.device_get(jfn(variables, jnp.asarray(images)))
  alone = jax.device_get(jfn(variables, jnp.asarray(images[3:4])))
  for k in names:
    np.testing.assert_allclose(full[k][3], alone[k][0], rtol=1e-5, atol=1e-6)
  src = sources.ArraySource({'train': (images, labels), 'val': (images, labels)})
  dims = features.feature_dims(fn, variables, (8, 8, 3))
  res = linear.train_faithful(fn, variables, src.train_batches('train', 16), 2,
                              lambda: src.eval_batches('val', 16), dims=dims,
                              num_classes=4, cfg=dict(epochs=2, batch_size=16))
  assert res['epochs_trained'] == 2
  # No gradient reaches the trunk: the faithful step's loss is a function of the head
  # only (features under stop_gradient), so d loss / d trunk variables is zero.
  params, opt_state, step = linear.make_faithful_step(fn, dims, 4, dict(epochs=1,
                                                                        batch_size=16), 2)
  batch = {'image': jnp.asarray(images[:16]), 'label': jnp.asarray(labels[:16]),
           'mask': jnp.ones((16,), bool)}
  lr_scale = {k: jnp.ones((1,)) for k in dims}

  def head_ce(trunk_vars):
    p, o = jax.tree.map(jnp.copy, (params, opt_state))  # the step donates them
    return sum(jnp.sum(v) for v in jax.tree.leaves(step(p, o, trunk_vars, batch,
                                                        lr_scale, 0)[2]))
  grads = jax.grad(head_ce)(jax.tree.map(jnp.asarray, before))
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
  # (Without the stop_gradient the same derivative is far from zero.)
  direct = jax.grad(lambda v: sum(jnp.sum(f) for f in jax.tree.leaves(fn(v, batch['image']))))
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(direct(
      jax.tree.map(jnp.asarray, before)))) > 0


# ----------------------------------------------------------------------------- low-shot


def test_ridge_leave_one_out_is_exact():
  rng = np.random.RandomState(6)
  for n, d in ((12, 5), (8, 20)):   # primal and dual forms
    x = rng.randn(n, d).astype(np.float32)
    y = 2.0 * np.eye(3)[rng.randint(0, 3, n)] - 1.0
    grid = np.array([0.1, 1.0, 10.0], np.float32)
    acc, mse = jax.device_get(lowshot._ridge_loo(jnp.asarray(x), jnp.asarray(y),
                                                 jnp.asarray(grid)))
    for g, l2 in enumerate(grid):
      preds = []
      for i in range(n):
        keep = np.arange(n) != i
        xi = x[keep].astype(np.float64)
        w = np.linalg.solve(xi.T @ xi + l2 * np.eye(d), xi.T @ y[keep])
        preds.append(x[i] @ w)
      preds = np.array(preds)
      assert acc[g] == pytest.approx(np.mean(preds.argmax(1) == y.argmax(1)))
      assert mse[g] == pytest.approx(np.mean((preds - y) ** 2), rel=1e-3)


def test_ridge_solver_primal_and_dual_match_direct_solve():
  rng = np.random.RandomState(10)
  for n, d in ((50, 20), (20, 50)):
    x = rng.randn(n, d).astype(np.float32)
    y = rng.randn(n, 3).astype(np.float32)
    w = np.asarray(solvers._ridge_path(jnp.asarray(x), jnp.asarray(y),
                                       jnp.asarray([0.5, 5.0])))
    xa = np.concatenate([x, np.ones((n, 1))], 1).astype(np.float64)
    for i, l2 in enumerate((0.5, 5.0)):
      ref = np.linalg.solve(xa.T @ xa + l2 * np.eye(d + 1), xa.T @ y)
      np.testing.assert_allclose(w[i], ref, atol=1e-4)


def test_lowshot_mean_std_over_samples():
  rng = np.random.RandomState(7)
  x, y = _separable(rng, 400, scale=1.0)
  xt, yt = _separable(rng, 99, scale=1.0)
  res = lowshot.evaluate(x, y, xt, yt, num_classes=5, shots=(1, 8), samples=3)
  assert set(res) == {1, 8}
  assert res[8]['n_train'] == 40 and len(res[8]['top1']) == 3
  assert res[8]['top1_mean'] > 0.9
  assert res[1]['top1_std'] == pytest.approx(np.std(res[1]['top1']))


# ----------------------------------------------------------------------------- the job


def _write_pretext_workdir(path, pretext_config):
  """A layout-1 pretext workdir (written before the task contract: the classifier is
  the trunk's logits layer, meta without 'layout'); its trunk must still load."""
  from ssl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  m = pretext_config.model
  model = models.create_model(m.name, num_classes=4, width=m.width,
                              small_input=m.small_input, patch_strides=m.patch_strides)
  size = 16
  variables = jax.jit(lambda r, x: model.init(r, x, train=False))(
      jax.random.key(1, impl='unsafe_rbg'), jnp.zeros((1, size, size, 3)))
  # Non-trivial BN statistics, so inference mode is visible in the features.
  stats = jax.tree.map(lambda v: v + 0.1, variables['batch_stats'])
  state = dict(params={'trunk': variables['params']}, batch_stats={'trunk': stats},
               opt_state={}, step=jnp.int32(3), rng=jax.random.PRNGKey(0))
  checkpoint.write_config(path, pretext_config)
  manager = checkpoint.make_manager(path)
  checkpoint.save(manager, 3, state, {'task': pretext_config.task, 'step': 3})
  manager.wait_until_finished()
  manager.close()


def test_run_smoke_end_to_end(tmp_path):
  """configs/linear_eval.py:smoke on a pretext checkpoint: every endpoint, every head,
  results.json, the trunk unchanged. Real CIFAR-10 through TFDS when prepared."""
  from configs import rotation  # pylint: disable=g-import-not-at-top
  from ssl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  pretext_dir = str(tmp_path / 'pretext')
  _write_pretext_workdir(pretext_dir, rotation.get_config('smoke'))
  _, p_before, s_before = checkpoint.restore_trunk(pretext_dir)
  config = le_configs.get_config('smoke')
  config.pretrained = pretext_dir
  arrays = None
  if not os.path.isdir(TFDS_CIFAR):
    rng = np.random.RandomState(8)
    arrays = {s: (rng.randint(0, 256, (m, 32, 32, 3)).astype(np.uint8),
                  rng.randint(0, 10, m).astype(np.int32))
              for s, m in (('train', 300), ('val', 100), ('test', 101))}
  workdir = str(tmp_path / 'eval')
  results = linear_eval.run(config, workdir, arrays=arrays)
  with open(os.path.join(workdir, 'results.json')) as f:
    saved = json.load(f)
  names = list(models.trunk_endpoints('revnet50'))
  assert 'logits' not in p_before                   # layout 1: dropped on restore
  assert sorted(saved['linear']) == sorted(names)
  for name in names:
    row = saved['linear'][name]
    assert row['split'] == 'test' and row['val_split'] == 'val' and row['mode'] == 'cached'
    assert row['count'] == 101                      # test[:101]: nothing dropped
    assert 0 < row['epochs'] <= row['epochs_trained'] == config.train.epochs
    assert saved['dims'][name] <= 9000
  assert saved['mlp']['pre_logits']['split'] == 'test'
  assert set(saved['lowshot']['pre_logits']['shots']) == {'1', '2'}
  assert saved['num_examples'] == {'train': 300, 'val': 100, 'test': 101}
  assert results['pretext_task'] == 'rotation'
  # The evaluated trunk is the checkpoint's: kNN on features computed here from the
  # saved variables (inference-mode BN) reproduces the reported kNN accuracy.
  m = rotation.get_config('smoke').model
  trunk = models.create_model(m.name, num_classes=0, width=m.width,
                              small_input=m.small_input)
  fn = jax.jit(features.make_extract_fn(trunk, ['pre_logits']))
  source = linear_eval.make_source(config, *linear_eval.preprocessing(config), arrays=arrays)
  variables = {'params': p_before, 'batch_stats': s_before}
  feats = {split: features.extract(fn, variables, source.eval_batches(split, 64))
           for split in ('train', 'test')}
  want = knn.knn_accuracy(feats['train'][0]['pre_logits'], feats['train'][1],
                          feats['test'][0]['pre_logits'], feats['test'][1], num_classes=10,
                          k=20, temperature=0.07)
  got = saved['knn']['k20_t0.07']['pre_logits']
  assert got['count'] == want['count'] == 101
  assert got['top1'] == pytest.approx(want['top1'], abs=1e-9)


def test_patch_model_evaluation_in_memory():
  """A jigsaw-style trunk: the study's patch geometry (resize_small 3.5p, crop 3p, 3x3
  exact cells), features averaged over the patches; numpy arrays, no TensorFlow."""
  from ssl_jax.tasks import patches  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  model, variables = _standin()
  eval_input = patches.eval_input(ml_collections.ConfigDict(dict(grid=3, patch_size=8)))
  trunk = {'model': model, 'variables': variables, 'model_config': {'name': 'standin'},
           'task': 'jigsaw', 'eval_input': eval_input, 'name': 'standin',
           'endpoints': ('block1', 'block2', 'pre_logits', 'logits')}
  config = le_configs.get_config('smoke')
  config.eval.endpoints = 'block2,pre_logits'
  config.train.update(epochs=2, eval_every=1, decay_epochs=())
  config.mlp.enabled = False
  config.lowshot.enabled = False
  rng = np.random.RandomState(9)
  arrays = {s: (rng.randint(0, 256, (m, 32, 32, 3)).astype(np.uint8),
                rng.randint(0, 10, m).astype(np.int32))
            for s, m in (('train', 64), ('val', 33), ('test', 35))}
  pp = linear_eval.preprocessing(config, eval_input)
  assert pp == ('decode|resize_small(28)|crop(24)',) * 2
  results = linear_eval.evaluate_arrays(config, arrays, trunk=trunk)
  assert results['trunk_input'] == 'patches' and results['image_shape'] == [24, 24, 3]
  assert results['linear']['pre_logits']['count'] == 35
  assert results['knn']['k20_t0.07']['pre_logits']['count'] == 35


def test_config_validation():
  config = le_configs.get_config('smoke')
  config.eval.mode = 'faithful'
  config.eval.solver = 'lbfgs'
  with pytest.raises(ValueError, match='faithful'):
    linear_eval.validate(config)
  config = le_configs.get_config('smoke')
  config.data.val_split = config.data.test_split
  with pytest.raises(ValueError, match='test split'):
    linear_eval.validate(config)
  for preset in le_configs.PRESETS:
    linear_eval.validate(le_configs.get_config(preset))


def test_random_init_baseline_is_the_same_evaluation_on_a_random_trunk(tmp_path):
  """results['baseline'] equals an evaluation of config.pretrained='' with the pretext
  run's architecture (same features, probe and seeds); rows carry baseline and gain."""
  from configs import rotation  # pylint: disable=g-import-not-at-top
  pretext = rotation.get_config('smoke')
  pretext.model.name = 'tiny_cnn'
  pretext_dir = str(tmp_path / 'pretext')
  _write_pretext_workdir(pretext_dir, pretext)
  config = le_configs.get_config('smoke')
  config.pretrained = pretext_dir
  config.train.update(epochs=2, eval_every=1, decay_epochs=())
  config.mlp.enabled = config.lowshot.enabled = False
  with config.unlocked():
    config.eval.random_init_baseline = True
    config.eval.bn_stats = config.eval.baseline_bn = 'best'   # the defaults
  rng = np.random.RandomState(11)
  arrays = {s: (rng.randint(0, 256, (m, 16, 16, 3)).astype(np.uint8),
                rng.randint(0, 10, m).astype(np.int32))
            for s, m in (('train', 64), ('val', 32), ('test', 33))}
  res = linear_eval.run(config, str(tmp_path / 'eval'), arrays=arrays)
  random_cfg = config.copy_and_resolve_references()
  random_cfg.pretrained = ''
  random_cfg.model = pretext.model
  # The default baseline's BN statistics: the better on val of the initial and the
  # re-estimated ones, as a random trunk evaluated on its own gets by default.
  assert res['baseline']['bn_stats']['method'] == config.eval.baseline_bn == 'best'
  assert random_cfg.eval.bn_stats == 'best'
  alone = linear_eval.evaluate_arrays(random_cfg, arrays)
  assert alone['pretext_task'] == 'random_init' and 'baseline' not in alone
  for name, row in res['linear'].items():
    assert res['baseline']['linear'][name]['top1'] == alone['linear'][name]['top1']
    assert row['baseline_top1'] == alone['linear'][name]['top1']
    assert row['gain'] == pytest.approx(row['top1'] - row['baseline_top1'])
  # The pretext trunk is not the random one (non-trivial BN statistics, other init).
  assert any(res['linear'][n]['top1'] != alone['linear'][n]['top1'] for n in res['linear']) or (
      res['knn'] != alone['knn'])
  table = linear_eval.format_table(res)
  assert 'random' in table and 'gain' in table
