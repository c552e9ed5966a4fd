"""Evaluators as plug-ins: registry, rows, granularity, top-5, label subsets, the fair
random-init baseline (BN statistics re-estimated), output checks and bad input."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import linear_eval as le_configs
from ssl_jax import bn_stats
from ssl_jax import config_lib
from ssl_jax import models
from ssl_jax.evaluation import evaluators
from ssl_jax.evaluation import features
from ssl_jax.evaluation import labels
from ssl_jax.evaluation import linear_eval


def _write_pretext(path, model_name='tiny_cnn', params=None, stats=None, size=16,
                   units=()):
  """A layout-2 pretext workdir (rotation, `model_name`, config.model.unit_endpoints
  `units`) with the given trunk variables (default: an initialisation with shifted BN
  statistics)."""
  from configs import rotation  # pylint: disable=g-import-not-at-top
  from ssl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  c = rotation.get_config('smoke')
  c.model.name = model_name
  c.model.unit_endpoints = tuple(units)
  if params is None:
    trunk = models.create_trunk(c.model)
    v = jax.jit(lambda r, x: trunk.init(r, x, train=False))(
        jax.random.key(1, impl='unsafe_rbg'), jnp.zeros((1, size, size, 3)))
    params = v['params']
    stats = jax.tree.map(lambda s: s + 0.1, v['batch_stats'])
  state = dict(params={'trunk': params}, batch_stats={'trunk': stats},
               opt_state={}, step=jnp.int32(3), rng=jax.random.PRNGKey(0))
  checkpoint.write_config(path, c)
  manager = checkpoint.make_manager(path)
  checkpoint.save(manager, 3, state, checkpoint.meta(c, 3))
  manager.wait_until_finished()
  manager.close()
  return c


def _arrays(seed=0, sizes=(('train', 96), ('val', 40), ('test', 41)), size=16, classes=10):
  rng = np.random.RandomState(seed)
  return {s: (rng.randint(0, 256, (m, size, size, 3)).astype(np.uint8),
              rng.randint(0, classes, m).astype(np.int32)) for s, m in sizes}


def _structured(seed, n, size=16, classes=10):
  """Bright images (mean ~200) whose class sets the phase of a faint stripe pattern: the
  information is in small variations on a large offset, where BatchNorm statistics
  decide what survives each ReLU."""
  rng = np.random.RandomState(seed)
  y = np.arange(n) % classes
  rng.shuffle(y)
  xx = np.arange(size)[None, :, None]
  phase = 2 * np.pi * y[:, None, None] / classes
  pattern = 25 * np.sin(2 * np.pi * xx / 6.0 + phase)                  # [n, 1, W]
  img = 200 + pattern[..., None] * np.array([1.0, -0.5, 0.3]) + rng.randn(n, size, size, 3) * 6
  return np.clip(img, 0, 255).astype(np.uint8), y.astype(np.int32)


def _fast(config, solver='lbfgs'):
  """Small, fast settings: L-BFGS on a short L2 grid, no MLP / low-shot."""
  config.eval.solver = solver
  config.train.update(weight_decays=(1e-2, 1e-3), epochs=2, eval_every=1, decay_epochs=())
  config.mlp.enabled = config.lowshot.enabled = False
  config.eval.lbfgs_iters = 100
  return config


# ----------------------------------------------------------------------------- labels


def test_label_subsets_are_nested_seeded_and_exact_per_class():
  rng = np.random.RandomState(0)
  y = rng.randint(0, 5, 400)
  prev = None
  for n in (1, 3, 10, 40):
    idx = labels.subset(y, n, 5, seed=7)
    assert np.array_equal(np.bincount(y[idx], minlength=5), np.full(5, n))
    assert len(set(idx)) == len(idx) and np.all(np.diff(idx) > 0)
    if prev is not None:
      assert set(prev) <= set(idx)                     # nested
    prev = idx
  assert np.array_equal(labels.subset(y, 10, 5, seed=7), labels.subset(y, 10, 5, seed=7))
  assert not np.array_equal(labels.subset(y, 10, 5, seed=7), labels.subset(y, 10, 5, seed=8))
  assert np.array_equal(labels.subset(y, labels.ALL, 5, seed=7), np.arange(400))
  # The per-class draw is a seeded permutation of that class's indices (brute force).
  order = labels.per_class_order(y, 5, seed=7)
  for c in range(5):
    assert sorted(order[c]) == list(np.flatnonzero(y == c))


def test_label_count_errors_are_one_line():
  y = np.array([0, 0, 0, 1, 1, 2])
  with pytest.raises(ValueError, match='3 images per class is more than the train split has '
                     'of class 2 \\(1\\)'):
    labels.check_label_counts((1, 3), y, 3)
  with pytest.raises(ValueError, match='classes \\[3\\] have no train example'):
    labels.check_label_counts((1,), y, 4)
  with pytest.raises(ValueError, match='0 is not a count'):
    labels.check_count_values((0,))
  labels.check_label_counts((1, -1), y, 3)


def test_groupings_errors_and_levels():
  g = le_configs.CIFAR10_GROUPINGS
  m = labels.check_groupings(g, 10)
  assert m['coarse2'].tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
  assert labels.is_coarser(m['coarse2'], m['coarse4'])
  assert not labels.is_coarser(m['coarse4'], m['coarse2'])
  names = [n for n, _ in labels.levels_at_or_above('coarse4', m, 10)]
  assert names == ['coarse4', 'coarse2']
  assert [n for n, _ in labels.levels_at_or_above('fine', m, 10)] == ['fine', 'coarse2',
                                                                       'coarse4']
  with pytest.raises(ValueError, match=r'classes \[9\] are in no group'):
    labels.check_groupings({'bad': ((0, 1, 2, 3, 4), (5, 6, 7, 8))}, 10)
  with pytest.raises(ValueError, match='class 3 is in groups 0 and 1'):
    labels.check_groupings({'bad': ((0, 1, 2, 3), (3, 4))}, 5)
  with pytest.raises(ValueError, match='class 7 in group 1 is not a class index'):
    labels.check_groupings({'bad': ((0, 1), (2, 7))}, 3)


def test_top5_and_granularity_scores_against_numpy():
  rng = np.random.RandomState(3)
  scores = rng.randn(500, 10).astype(np.float32)
  scores[:50, 3] = scores[:50, 4] = 9.0       # exact ties: the lower class ranks first
  y = rng.randint(0, 10, 500)
  m = labels.check_groupings(le_configs.CIFAR10_GROUPINGS, 10)
  out = labels.score(scores, y, labels.levels_at_or_above('fine', m, 10))
  ranked = np.array([sorted(range(10), key=lambda c: (-s[c], c)) for s in scores])
  assert out['top1'] == pytest.approx(np.mean(ranked[:, 0] == y))
  assert out['top5'] == pytest.approx(np.mean([y[i] in ranked[i, :5] for i in range(500)]))
  for level in ('coarse2', 'coarse4'):
    want = np.mean([m[level][ranked[i, 0]] == m[level][y[i]] for i in range(500)])
    assert out[f'top1@{level}'] == pytest.approx(want)
  # No top-5 with 5 classes or fewer.
  assert 'top5' not in labels.score(scores[:, :5], y % 5)


# ----------------------------------------------------------------------------- registry


@evaluators.register('test_toy')
class _Toy(evaluators.Evaluator):
  """Mean L2 norm of an endpoint's test features: a toy evaluator for the registry test."""
  rank = 5

  def endpoints(self, available):
    return [self.settings.endpoint]

  def run(self, ctx, cache):
    x, _ = cache.split('test')
    norm = float(np.mean(np.linalg.norm(x[self.settings.endpoint], axis=1)))
    yield evaluators.row(self.settings.endpoint, 'mean_norm', norm, note='toy')
    yield 'norm', norm


def test_a_toy_evaluator_appears_in_results_scalars_and_table(tmp_path):
  pre = str(tmp_path / 'pretext')
  _write_pretext(pre)
  config = _fast(le_configs.get_config('smoke'))
  config.pretrained = pre
  config.eval.random_init_baseline = True
  config.evals.toy = ml_collections.ConfigDict(dict(type='test_toy', endpoint='pre_logits'))
  res = linear_eval.run(config, str(tmp_path / 'eval'), arrays=_arrays())
  toy = [r for r in linear_eval.rows(res) if r['evaluator'] == 'toy']
  assert len(toy) == 1 and toy[0]['metric'] == 'mean_norm' and toy[0]['type'] == 'test_toy'
  assert res['toy']['norm'] == toy[0]['value'] and res['baseline']['toy']['norm'] > 0
  assert toy[0]['baseline'] == res['baseline']['toy']['norm']
  assert toy[0]['gain'] == pytest.approx(toy[0]['value'] - toy[0]['baseline'])
  s = linear_eval.scalars(res)
  assert s['toy/test_mean_norm/pre_logits'] == toy[0]['value']
  assert s['toy/gain_test_mean_norm/pre_logits'] == pytest.approx(toy[0]['gain'])
  table = linear_eval.format_table(res)
  assert any(line.startswith('toy ') and 'mean_norm' in line for line in table.splitlines())
  # The historic keys hold the same numbers as the rows.
  by = {(r['evaluator'], r['endpoint'], r['variant'], r['metric'], r['split']): r
        for r in linear_eval.rows(res)}
  for name, d in res['linear'].items():
    assert by[('linear', name, '', 'top1', 'test')]['value'] == d['top1']
    assert by[('linear', name, '', 'top5', 'test')]['value'] == d['top5']
    assert by[('linear', name, '', 'top1', 'test')]['baseline'] == d['baseline_top1']
  for preset, d in res['knn'].items():
    for name, r in d.items():
      assert by[('knn', name, preset, 'top1', 'test')]['value'] == r['top1']


def test_unknown_evaluator_and_bad_sections_fail_before_any_compile(tmp_path):
  config = le_configs.get_config('smoke')
  config.evals.x = ml_collections.ConfigDict(dict(type='nope'))
  with pytest.raises(config_lib.ConfigError, match=r"config.evals.x.type: unknown evaluator "
                     r"type 'nope'; allowed: \[.*'knn'.*\]"):
    linear_eval.run(config, str(tmp_path / 'e'), arrays=_arrays())
  config = le_configs.get_config('smoke')
  config.evals.linear.label_counts = (5, 0)
  with pytest.raises(config_lib.ConfigError, match='evals.linear.label_counts: 0 is not'):
    linear_eval.run(config, str(tmp_path / 'e'), arrays=_arrays())
  config = le_configs.get_config('smoke')
  config.groupings.coarse2 = ((0, 1, 8), (2, 3, 4, 5, 6, 7))
  with pytest.raises(config_lib.ConfigError, match=r'coarse2: classes \[9\] are in no group'):
    linear_eval.run(config, str(tmp_path / 'e'), arrays=_arrays())


def test_label_count_above_the_split_fails_before_any_compile(tmp_path):
  pre = str(tmp_path / 'pretext')
  _write_pretext(pre)
  config = le_configs.get_config('smoke')
  config.pretrained = pre
  config.evals.linear.label_counts = (2, 500)
  with pytest.raises(config_lib.ConfigError, match='500 images per class is more than'):
    linear_eval.run(config, str(tmp_path / 'e'), arrays=_arrays())
  assert not os.path.exists(tmp_path / 'e' / 'results.json')


def test_output_paths_are_checked_before_any_work(tmp_path):
  (tmp_path / 'e' / 'results.json').mkdir(parents=True)
  config = le_configs.get_config('smoke')
  with pytest.raises(config_lib.ConfigError, match='results.json is a directory'):
    linear_eval.run(config, str(tmp_path / 'e'), arrays=_arrays())
  (tmp_path / 'f').write_text('')
  with pytest.raises(config_lib.ConfigError, match='exists and is not a directory'):
    linear_eval.run(config, str(tmp_path / 'f'), arrays=_arrays())


# ----------------------------------------------------------------------------- granularity


def test_granularity_scores_equal_those_of_the_fine_predictions(tmp_path):
  """The probe's top1@level rows equal its fine predictions mapped to groups, computed
  here from the selected head on the cache; and a probe trained at the coarse level."""
  pre = str(tmp_path / 'pretext')
  _write_pretext(pre)
  config = _fast(le_configs.get_config('smoke'))
  config.pretrained = pre
  config.knn.enabled = False
  config.eval.endpoints = 'block1,pre_logits'
  config.evals.linear.keep_predictions = True
  config.evals.coarse = ml_collections.ConfigDict(dict(
      type='probe', train_level='coarse4', endpoints='pre_logits'))
  x, y = _structured(0, 300)
  arrays = {'train': (x[:160], y[:160]), 'val': (x[160:220], y[160:220]),
            'test': (x[220:], y[220:])}
  res = linear_eval.run(config, str(tmp_path / 'eval'), arrays=arrays)
  by = {(r['evaluator'], r['endpoint'], r['metric'], r['split']): r['value']
        for r in res['rows']}
  m = labels.check_groupings(config.groupings, 10)
  yte = arrays['test'][1]
  for name in ('block1', 'pre_logits'):
    pred = np.asarray(res['linear'][name]['test_predictions'])
    assert by[('linear', name, 'top1', 'test')] == pytest.approx(np.mean(pred == yte), abs=1e-12)
    for level in ('coarse2', 'coarse4'):
      want = np.mean(m[level][pred] == m[level][yte])
      assert by[('linear', name, f'top1@{level}', 'test')] == pytest.approx(want, abs=1e-12)
  # Trained at coarse4: scored at coarse4 and coarse2 only; its coarse2 score is that of
  # its own predictions.
  metrics = {k[2] for k in by if k[0] == 'coarse'}
  assert metrics == {'top1@coarse4', 'top1@coarse2'}
  assert 0.0 <= by[('coarse', 'pre_logits', 'top1@coarse4', 'test')] <= by[
      ('coarse', 'pre_logits', 'top1@coarse2', 'test')]


def test_probe_at_label_counts_uses_the_nested_subsets(tmp_path):
  pre = str(tmp_path / 'pretext')
  _write_pretext(pre)
  config = _fast(le_configs.get_config('smoke'))
  config.pretrained = pre
  config.knn.enabled = False
  config.eval.endpoints = 'pre_logits'
  config.evals.linear.label_counts = (2, 5, -1)
  x, y = _structured(1, 260)
  arrays = {'train': (x[:160], y[:160]), 'val': (x[160:200], y[160:200]),
            'test': (x[200:], y[200:])}
  res = linear_eval.run(config, str(tmp_path / 'eval'), arrays=arrays)
  test = {r['variant']: r for r in res['rows'] if r['split'] == 'test' and r['metric'] == 'top1'}
  assert set(test) == {'2/class', '5/class', ''}
  assert test['2/class']['train_examples'] == 20 and test['5/class']['train_examples'] == 50
  assert test['']['train_examples'] == 160 and test['']['labels_per_class'] == -1
  assert set(res['linear']) == {'pre_logits'}   # the historic dict: all labels only


# ----------------------------------------------------------------------------- BN baseline


class _ConvBN(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    x = nn.Conv(6, (3, 3), name='conv1')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bn1')(x)
    x = nn.Conv(4, (3, 3), strides=2, name='conv2')(nn.relu(x))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bn2')(x)
    return x, {'out': x}


def test_reestimated_bn_statistics_are_the_population_moments():
  """Against numpy: each BN layer's mean / variance over every example and position of
  the K full batches (padded batches skipped), its input computed in train mode."""
  model = _ConvBN()
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (70, 8, 8, 3)).astype(np.uint8)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)
  batches = [{'image': images[i:i + 16], 'label': np.zeros(16, np.int32),
              'mask': np.ones(16, bool)} for i in range(0, 64, 16)]
  batches.insert(1, {'image': images[:16], 'label': np.zeros(16, np.int32),
                     'mask': np.arange(16) < 5})   # padding: skipped
  new, used = features.reestimate_batch_stats(model, v, iter(batches), num_batches=3)
  assert used == 48
  x = features.to_minus_one_one(np.concatenate([b['image'] for b in batches[:1] + batches[2:4]]))
  # BN inputs in train mode, batch by batch (the second layer sees the first one
  # normalised with its batch's statistics).
  ins = {'bn1': [], 'bn2': []}
  for b in range(3):
    _, inter = model.apply(v, x[16 * b:16 * (b + 1)], train=True, mutable=['batch_stats',
                                                                           'intermediates'],
                           capture_intermediates=True)
    ins['bn1'].append(np.asarray(inter['intermediates']['conv1']['__call__'][0]))
    ins['bn2'].append(np.asarray(inter['intermediates']['conv2']['__call__'][0]))
  for layer in ('bn1', 'bn2'):
    a = np.concatenate(ins[layer]).astype(np.float64).reshape(-1, ins[layer][0].shape[-1])
    np.testing.assert_allclose(new['batch_stats'][layer]['mean'], a.mean(0), atol=1e-5)
    np.testing.assert_allclose(new['batch_stats'][layer]['var'], a.var(0), rtol=1e-4,
                               atol=1e-5)
  # Weights untouched.
  for p, q in zip(jax.tree.leaves(new['params']), jax.tree.leaves(v['params'])):
    np.testing.assert_array_equal(p, q)


def _data_stats_twin(config, arrays, tmp_path, steps=60, momentum=0.9):
  """A pretext workdir whose trunk has the random twin's weights and BN statistics that
  moving averages (momentum 0.9 over `steps` shuffled train batches of 32 per-batch
  statistics, weights frozen) estimated on the data: what training's statistics are,
  minus learning; another estimator than the evaluation's population statistics."""
  pre0 = str(tmp_path / 'init')
  c = _write_pretext(pre0)
  config.pretrained = pre0
  trunk, source, _ = linear_eval.trunk_and_source(config, arrays)
  twin = linear_eval.random_twin(config, trunk, source.image_shape(train=False))
  model, v = twin['model'], twin['variables']
  stats = v['batch_stats']

  @jax.jit
  def update(stats, images):
    def update_fn(filled):
      _, new = model.apply({'params': v['params'], 'batch_stats': filled},
                           features.to_minus_one_one(images), train=True,
                           mutable=['batch_stats'])
      return new['batch_stats']
    m = bn_stats.moments(update_fn, stats)   # this batch's E[x], E[x^2] per layer
    batch = {layer: {'mean': d['mean'], 'var': d['var'] - d['mean'] ** 2}
             for layer, d in m.items()}        # (tiny_cnn's BN layers: one level)
    return jax.tree.map(lambda old, b: momentum * old + (1 - momentum) * b, stats, batch)
  src_batches = source.train_batches('train', 32, seed=5)
  for _ in range(steps):
    b = next(src_batches)
    stats = update(stats, jnp.asarray(b['image']))
  pre = str(tmp_path / 'data_stats')
  _write_pretext(pre, params=v['params'], stats=jax.device_get(stats))
  del c
  return pre


def test_twin_with_data_statistics_has_no_gain_under_the_default_baseline(tmp_path):
  """A trunk = the random twin's weights + BN statistics estimated on the data: no
  endpoint gains more than the probe's noise under the default baseline ('best' on both
  sides) nor under a twin with re-estimated statistics, while a twin with its initial
  statistics alone credits BatchNorm statistics as learned features."""
  x, y = _structured(2, 520)
  arrays = {'train': (x[:320], y[:320]), 'val': (x[320:400], y[320:400]),
            'test': (x[400:], y[400:])}
  config = _fast(le_configs.get_config('smoke'))
  config.input.pp_train = config.input.pp_eval = 'decode'
  config.eval.random_init_baseline = True
  config.eval_batch_size = 32
  config.eval.bn_batches = 10
  config.knn.presets = ('k20_t0.07',)
  defaults = le_configs.base_config().eval
  assert defaults.baseline_bn == defaults.bn_stats == 'best'     # the defaults
  config.eval.bn_stats = config.eval.baseline_bn = 'best'
  config.pretrained = _data_stats_twin(config, arrays, tmp_path)
  n = len(arrays['test'][1])

  def gains(res):
    out = {(r['evaluator'], r['endpoint']): r['gain'] for r in res['rows']
           if r['split'] == 'test' and r['metric'] == 'top1'}
    assert len(out) == 5, out   # 4 probe endpoints + kNN
    return out
  fair = linear_eval.run(config, str(tmp_path / 'fair'), arrays=arrays)
  b = fair['baseline']['bn_stats']
  assert b['method'] == 'best' and set(b['options']) == {'init', 'reestimate'}
  assert b['options']['reestimate']['images'] == 320
  assert set(fair['bn_stats']['options']) == {'trained', 'reestimate'}
  for key, g in gains(fair).items():
    assert g <= 3.0 / n, (key, g)      # never credited: a few of 120 test images at most
  config.eval.baseline_bn = 'reestimate'
  config.eval.bn_stats = 'trained'
  same = linear_eval.run(config, str(tmp_path / 'same'), arrays=arrays)
  for key, g in gains(same).items():
    assert abs(g) <= 3.0 / n, (key, g)
  # A twin with its initial statistics only: the trunk's data statistics look learned.
  config.eval.baseline_bn = 'init'
  old = linear_eval.run(config, str(tmp_path / 'old'), arrays=arrays)
  old_gains = gains(old)
  assert max(abs(g) for g in old_gains.values()) > 10.0 / n, old_gains


def test_best_statistics_are_chosen_on_val_per_group_never_on_test(monkeypatch):
  """evaluate_bn('best'): per (evaluator, endpoint, variant) the pass with the higher val
  top-1, whatever test says; groups without a val row and trunk evaluators keep the first
  kind; detail dicts follow their rows."""
  def row(ev, ep, split, value, metric='top1', detail=None):
    return dict(evaluator=ev, type=ev, endpoint=ep, variant='', metric=metric, split=split,
                value=value, detail=detail)
  passes = {
      'trained': [row('linear', 'b1', 'val', .5), row('linear', 'b1', 'test', .9, detail='b1'),
                  row('linear', 'b2', 'val', .5), row('linear', 'b2', 'test', .1, detail='b2'),
                  row('lowshot', 'b2', 'test', .3), row('finetune', 'network', 'val', .2)],
      'reestimate': [row('linear', 'b1', 'val', .6), row('linear', 'b1', 'test', .2, detail='b1'),
                     row('linear', 'b2', 'val', .4), row('linear', 'b2', 'test', .8, detail='b2'),
                     row('lowshot', 'b2', 'test', .7)],
  }
  seen = []

  class Ev:
    def __init__(self, name, cached):
      self.name, self.cached = name, cached

    def endpoints(self, available):
      return ['b1', 'b2'] if self.cached else []

  def fake_evaluate(config, trunk, source, evs, *, bn, baseline=False, **kw):
    seen.append((bn, [e.name for e in evs]))
    return {'rows': [dict(r) for r in passes[bn]], 'dims': {'b1': 4, 'b2': 4},
            'timing': {'total_s': 1.0}, 'bn_stats': {'method': bn, 'what': bn},
            'linear': {'b1': {'top1': passes[bn][1]['value']},
                       'b2': {'top1': passes[bn][3]['value']}}}
  monkeypatch.setattr(linear_eval, 'evaluate', fake_evaluate)
  evs = [Ev('linear', True), Ev('lowshot', True), Ev('finetune', False)]
  res = linear_eval.evaluate_bn(None, {'task': 'rotation'}, None, evs, 'best')
  assert seen == [('trained', ['linear', 'lowshot', 'finetune']),
                  ('reestimate', ['linear', 'lowshot'])]
  got = {(r['evaluator'], r['endpoint'], r['split']): (r['value'], r['bn']) for r in res['rows']}
  assert got == {('linear', 'b1', 'val'): (.6, 'reestimate'),
                 ('linear', 'b1', 'test'): (.2, 'reestimate'),
                 ('linear', 'b2', 'val'): (.5, 'trained'),      # a tie on val: the first
                 ('linear', 'b2', 'test'): (.1, 'trained'),
                 ('lowshot', 'b2', 'test'): (.3, 'trained'),    # no val row: the first
                 ('finetune', 'network', 'val'): (.2, 'trained')}
  assert res['linear'] == {'b1': {'top1': .2}, 'b2': {'top1': .1}}
  assert res['bn_stats']['chosen']['linear / b1'] == 'reestimate'
  assert res['timing']['total_s'] == 2.0


# ----------------------------------------------------------------------------- lasso


def _lasso_config(units=('block2',)):
  c = le_configs.get_config('smoke')
  c.model.unit_endpoints = units
  c.eval.solver = 'lbfgs'
  c.eval.lbfgs_iters = 50
  c.train.update(weight_decays=(1e-3,))
  c.mlp.enabled = c.lowshot.enabled = False
  c.evals.lasso.update(enabled=True, steps=50, l1s=(1e-2,))
  c.eval.random_init_baseline = True
  return c


def test_the_lasso_probe_runs_in_the_evaluation_beside_the_random_twin(tmp_path):
  pre = str(tmp_path / 'pretext')
  _write_pretext(pre, units=('block2',))
  config = _lasso_config()
  config.pretrained = pre
  res = linear_eval.run(config, str(tmp_path / 'e'), arrays=_arrays())
  rows = linear_eval.rows(res)
  mine = [r for r in rows if r['evaluator'] == 'lasso']
  assert {(r['endpoint'], r['split'], r['metric']) for r in mine} >= {
      ('block2/lasso', 'val', 'top1'), ('block2/lasso', 'test', 'top1')}
  test = [r for r in mine if r['split'] == 'test' and r['metric'] == 'top1'][0]
  assert test['units'] == 1 and 0.0 <= test['value'] <= 1.0
  # The random-init twin has the same units and goes through the same probe.
  assert test['baseline'] is not None
  assert test['gain'] == pytest.approx(test['value'] - test['baseline'])
  assert res['baseline']['lasso']['block2/lasso']['units'] == ['block2/unit1']
  detail = res['lasso']['block2/lasso']
  assert detail['units'] == ['block2/unit1'] and len(detail['alpha']) == 1
  assert detail['top1'] == test['value']
  # The probes' default endpoints are the stages, never the unit endpoints.
  assert not any(evaluators.is_unit(r['endpoint']) for r in rows)


def test_the_lasso_probe_on_a_trunk_without_units_is_a_one_line_error(tmp_path, monkeypatch):
  def no_init(trunk):
    raise AssertionError('the random trunk was initialised before the config checks')
  monkeypatch.setattr(linear_eval, 'with_variables', no_init)   # errors come first
  c = _lasso_config(units=())
  with pytest.raises(config_lib.ConfigError, match=r"exposes no unit outputs.*"
                     r"config.model.unit_endpoints"):
    linear_eval.run(c, str(tmp_path / 'e'), arrays=_arrays())
  c = _lasso_config()
  c.evals.lasso.l1s = (-1.0,)
  with pytest.raises(config_lib.ConfigError, match=r'evals.lasso.l1s=\(-1.0,\) must be'):
    linear_eval.run(c, str(tmp_path / 'e'), arrays=_arrays())
