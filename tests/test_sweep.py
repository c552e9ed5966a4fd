"""The sweep command (ssl_jax/sweep.py): cells, runs, skips, resumes, failures, aggregation."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ssl_jax import sweep as sweep_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A 2 x 2 toy grid: tiny_cnn on synthetic images, seeds x nested subsets, a few steps;
# the linear evaluation on synthetic images too (no dataset needed).
TOY_OVERRIDES = {
    'data.source': 'synthetic', 'data.image_size': 8, 'data.synthetic_examples': 128,
    'model.name': 'tiny_cnn', 'input.pp_train': 'decode|flip_lr', 'input.pp_eval': 'decode',
    'total_steps': 4, 'checkpoint_every_steps': 2, 'eval_every_steps': -1,
    'log_every_steps': 2, 'max_eval_batches': 1, 'optimizer.warmup_epochs': 0.0,
    'linear_eval.data.source': 'synthetic', 'linear_eval.data.synthetic_examples': 96,
    'linear_eval.input.pp_train': 'decode|resize(8)', 'linear_eval.input.pp_eval':
    'decode|resize(8)', 'linear_eval.mlp.enabled': False, 'linear_eval.lowshot.enabled': False,
    'linear_eval.train.epochs': 1, 'linear_eval.eval.random_init_baseline': True,
    'linear_eval.eval.endpoints': 'block1,pre_logits', 'linear_eval.knn.presets': ('k20_t0.07',),
}


WIDTH_AXES = [{'name': 'width', 'key': 'model.width', 'values': [1, 2]},
              {'name': 'images', 'key': 'data.subset.count', 'values': [32, 64]}]


def toy_sweep(**extra):
  s = {
      'name': 'toy', 'base': 'configs/rotation.py:smoke', 'linear_eval': 'smoke',
      'overrides': dict(TOY_OVERRIDES),
      # (seeds: the cells compile the same programs, which the compilation cache of the
      # `compile_cache` fixture then shares, as the command's W/jax_cache does)
      'axes': [{'name': 'seed', 'key': 'seed', 'values': [0, 1]},
               {'name': 'images', 'key': 'data.subset.count', 'values': [32, 64]}],
      'plots': [{'kind': 'line', 'x': 'images', 'series': 'seed', 'logx': True},
                {'kind': 'layers'},
                {'kind': 'bars', 'x': 'images', 'series': 'seed'}],
  }
  s.update(extra)
  return sweep_lib.normalise(s, 'toy')


TOY_FILE = '''
from tests.test_sweep import TOY_OVERRIDES

def get_sweep(preset='toy'):
  s = {'name': 'toy', 'base': 'configs/rotation.py:smoke', 'linear_eval': 'smoke',
       'overrides': dict(TOY_OVERRIDES, total_steps=STEPS, checkpoint_every_steps=3,
                         log_every_steps=1),
       'axes': [{'name': 'width', 'key': 'model.width', 'values': [1]}]}
  return s
'''


# ----------------------------------------------------------------------------- cells


def test_cells_span_the_grid_with_stable_names_and_commands():
  s = toy_sweep(axes=WIDTH_AXES)
  cs = sweep_lib.cells(s)
  assert [c['labels'] for c in cs] == [{'width': '1', 'images': '32'},
                                       {'width': '1', 'images': '64'},
                                       {'width': '2', 'images': '32'},
                                       {'width': '2', 'images': '64'}]
  assert [c['name'] for c in cs] == ['width-1_images-32', 'width-1_images-64',
                                     'width-2_images-32', 'width-2_images-64']
  assert [c['index'] for c in cs] == [0, 1, 2, 3]
  c = cs[3]
  assert ('model.width', 2) in c['overrides'] and ('data.subset.count', 64) in c['overrides']
  assert ('run_linear_eval', True) in c['overrides']
  assert ('train.epochs', 1) in c['le_overrides']
  cmd = sweep_lib.main_command(c, 'W')
  assert cmd[:5] == ['python', '-m', 'ssl_jax.main', '--config', 'configs/rotation.py:smoke']
  assert '--config.model.width=2' in cmd and '--config.data.subset.count=64' in cmd
  assert '--config.linear_eval.train.epochs=1' in cmd
  assert cmd[-2:] == ['--workdir', os.path.join('W', 'cells', 'width-2_images-64')]
  # zip, exclusions and reference cells
  z = toy_sweep(mode='zip', axes=WIDTH_AXES)
  assert [c['name'] for c in sweep_lib.cells(z)] == ['width-1_images-32', 'width-2_images-64']
  ex = toy_sweep(axes=WIDTH_AXES, exclude=[{'width': 2, 'images': 32}],
                 extra_cells=[{'role': 'supervised', 'config': 'configs/supervised.py:smoke',
                               'labels': {'images': 64}}])
  names = [c['name'] for c in sweep_lib.cells(ex)]
  assert names == ['width-1_images-32', 'width-1_images-64', 'width-2_images-64',
                   'supervised_images-64']
  ref = sweep_lib.cells(ex)[-1]
  assert ref['config'] == 'configs/supervised.py:smoke' and ref['role'] == 'supervised'


def test_bundled_axis_values_set_several_keys_and_the_config():
  s = sweep_lib.normalise({
      'name': 'b', 'base': 'configs/rotation.py:smoke',
      'axes': [{'name': 'task', 'values': {
          'rotation': {}, 'jigsaw': {'config': 'configs/jigsaw.py:smoke',
                                     'model.name': 'resnet50_v1'}}}]})
  rot, jig = sweep_lib.cells(s)
  assert rot['config'] == 'configs/rotation.py:smoke' and rot['overrides'] == []
  assert jig['config'] == 'configs/jigsaw.py:smoke'
  assert jig['overrides'] == [('model.name', 'resnet50_v1')]


@pytest.mark.parametrize('bad, match', [
    ({'axes': [{'name': 'w', 'values': [1]}]}, 'needs a key'),
    ({'axes': [{'name': 'w', 'key': 'model.width', 'values': [1, 1]}]}, 'repeats a value'),
    ({'axes': [{'name': 'value', 'key': 'model.width', 'values': [1]}]}, 'reserved'),
    ({'mode': 'diagonal'}, "mode='diagonal'"),
    ({'mode': 'zip', 'axes': [{'name': 'a', 'key': 'x', 'values': [1, 2]},
                              {'name': 'b', 'key': 'y', 'values': [1]}]}, 'one length'),
    ({'plots': [{'kind': 'pie'}]}, "plot kind 'pie'"),
    ({'name': 'a b'}, 'may hold only'),
])
def test_malformed_sweeps_are_one_line_errors(bad, match):
  s = {'name': 'x', 'base': 'configs/rotation.py:smoke',
       'axes': [{'name': 'w', 'key': 'model.width', 'values': [1]}]}
  s.update(bad)
  with pytest.raises(ValueError, match=match):
    sweep_lib.normalise(s)


def test_cell_config_is_the_main_commands_config():
  """The in-process config equals the one `python -m ssl_jax.main` builds from the printed
  command (the same parser on the same text)."""
  from ssl_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  s = toy_sweep(axes=[{'name': 'width', 'key': 'model.width', 'values': [3]},
                      {'name': 'lr', 'key': 'optimizer.base_lr', 'values': [0.05]}])
  cell = sweep_lib.cells(s)[0]
  config, le = sweep_lib.cell_config(cell)
  assert config.model.width == 3 and config.optimizer.base_lr == 0.05
  assert config.data.image_size == 8 and config.run_linear_eval
  assert le.train.epochs == 1 and le.data.source == 'synthetic'
  argv = sweep_lib.main_command(cell, '/tmp/x')[2:]  # as sys.argv after `python -m`
  assert main_lib.config_argument_error(['ssl_jax.main'] + argv[1:]) is None
  ref = main_lib._load_config_file('configs/rotation.py:smoke')  # pylint: disable=protected-access
  main_lib.apply_overrides(ref, [a[len('--config.'):] for a in argv
                                 if a.startswith('--config.') and
                                 not a.startswith('--config.linear_eval.')])
  assert {'subset', 'pool', 'arrays_dir'} <= set(ref.data.keys())  # configs/common.py's
  assert ref.to_dict() == config.to_dict()


def _bundled_specs():
  import importlib  # pylint: disable=g-import-not-at-top
  out = []
  for study in ('revisiting', 'goyal', 'cole', 'multitask'):
    module = importlib.import_module(f'configs.sweeps.{study}')
    out += [f'configs/sweeps/{study}.py:{p}' for p in module.PRESETS]
  return out


@pytest.mark.parametrize('spec', _bundled_specs())
def test_every_bundled_preset_spans_valid_cells(spec):
  """Each preset's cells are configs the engines accept (keys exist, data axes and the
  evaluation valid), with the stable unique names `--cell K` relies on."""
  from ssl_jax.data import axes  # pylint: disable=g-import-not-at-top
  from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
  s = sweep_lib.load_sweep(spec)
  cs = sweep_lib.cells(s)
  assert cs and [c['index'] for c in cs] == list(range(len(cs)))
  assert len({c['name'] for c in cs}) == len(cs)
  for c in cs:
    config, le = sweep_lib.cell_config(c)
    axes.validate(config)
    axes.validate(le)
    le.pretrained = '/nonexistent'
    linear_eval.validate(le)


# ----------------------------------------------------------------------------- rows


def test_rows_adapter_reads_every_evaluator_in_percent():
  results = {
      'linear': {'block1': {'top1': 0.4, 'baseline_top1': 0.3, 'gain': 0.1, 'val_top1': 0.42,
                            'split': 'test'},
                 'pre_logits': {'top1': 0.25, 'split': 'test', 'val_top1': 0.2}},
      'mlp': {'pre_logits': {'top1': 0.5, 'baseline_top1': 0.45, 'gain': 0.05,
                             'split': 'test'}},
      'knn': {'k200_t0.1': {'pre_logits': {'top1': 0.3, 'baseline_top1': 0.2, 'gain': 0.1,
                                           'split': 'test', 'val_top1': 0.31}}},
      'lowshot': {'pre_logits': {'4': {'top1_mean': 0.2, 'top1_std': 0.01}}},
      'baseline': {'lowshot': {'pre_logits': {'4': {'top1_mean': 0.15}}},
                   'linear': {'block1': {'top1': 0.3}},
                   'mlp': {'pre_logits': {'top1': 0.45}},
                   'knn': {'k200_t0.1': {'pre_logits': {'top1': 0.2}}}},
  }
  rows = {(r['evaluator'], r['endpoint']): r for r in sweep_lib.rows_from_results(results)}
  assert set(rows) == {('linear', 'block1'), ('linear', 'pre_logits'), ('mlp', 'pre_logits'),
                       ('knn_k200_t0.1', 'pre_logits'), ('lowshot_4', 'pre_logits')}
  b1 = rows[('linear', 'block1')]
  assert (b1['value'], b1['baseline'], b1['val_value']) == pytest.approx((40, 30, 42))
  assert b1['gain'] == pytest.approx(10)
  assert rows[('linear', 'pre_logits')]['baseline'] is None
  assert rows[('lowshot_4', 'pre_logits')]['gain'] == pytest.approx(5)
  best = sweep_lib.best_rows([dict(r, cell='c') for r in rows.values()])
  assert best['c']['endpoint'] == 'block1'     # chosen on val (42 > 20), not on test
  # The evaluation's own rows (linear_eval.rows), merged per (evaluator, endpoint), agree.
  results['lowshot'] = {'pre_logits': {'shots': results['lowshot']['pre_logits']}}
  results['baseline']['lowshot'] = {'pre_logits': {'shots': {'4': {'top1_mean': 0.15}}}}
  theirs = {(r['evaluator'], r['endpoint']): r for r in sweep_lib.result_rows(results)
            if r['metric'] == 'top1'}
  mine = {(r['evaluator'].replace('_4', '_4-shot'), r['endpoint']): r
          for r in sweep_lib.rows_from_results(results)}
  assert set(theirs) == set(mine)
  for k, r in mine.items():
    # (their conversion of historic results has no kNN val rows)
    for key in ('value', 'baseline', 'gain') + (('val_value',) if k[0] == 'linear' else ()):
      assert theirs[k][key] == pytest.approx(r[key]) or (theirs[k][key], r[key]) == (None,
                                                                                     None), k


# ----------------------------------------------------------------------------- runs


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _partial_run(sweep, workdir, cell, steps):
  """The state a killed cell leaves: checkpoints up to `steps`, no evaluation, no DONE."""
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  config, _ = sweep_lib.cell_config(cell)
  config.total_steps = steps
  config.checkpoint_every_steps = steps
  train.train_and_evaluate(config, sweep_lib.cell_dir(workdir, cell))


@pytest.fixture
def compile_cache(tmp_path):
  """JAX's persistent compilation cache in tmp_path for one test (then off again)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  keys = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
          'jax_persistent_cache_min_entry_size_bytes')
  old = {k: jax.config.values[k] for k in keys}
  compilation_cache.reset_cache()
  for k, v in zip(keys, (str(tmp_path / 'jax_cache'), 0.0, 0)):
    jax.config.update(k, v)
  yield
  for k, v in old.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


def test_toy_sweep_runs_skips_resumes_and_aggregates(tmp_path, compile_cache):
  # The 2 x 2 grid, and a fifth cell that fails at its start (width 0: a ConfigError).
  s = toy_sweep(extra_cells=[{'name': 'broken', 'role': 'ssl', 'overrides': {'model.width': 0},
                              'labels': {'seed': 9, 'images': 32}}])
  w = str(tmp_path / 'sweep')
  cs, broken = sweep_lib.cells(s)[:4], sweep_lib.cells(s)[4]
  # Cell 2 was killed after step 2 of 4 (checkpoint on disk, no evaluation, no marker).
  _partial_run(s, w, cs[2], 2)
  assert not sweep_lib.is_done(w, cs[2])
  logs = []
  out = sweep_lib.run_sweep(s, w, executor='inprocess', log=logs.append)
  # The failed cell is reported; the others went on.
  assert out['failed'] == ['broken'] and not out['preempted']
  assert not sweep_lib.is_done(w, broken)
  state = json.load(open(os.path.join(w, 'sweep.json')))
  assert state['cells']['broken']['status'] == 'failed'
  assert 'model.width' in state['cells']['broken']['error']
  assert any('broken: FAILED' in m for m in logs)
  for c in cs:
    d = sweep_lib.cell_dir(w, c)
    done = json.load(open(os.path.join(d, 'DONE.json')))
    assert os.path.exists(os.path.join(d, 'linear_eval', 'results.json'))
    assert done['step'] == 4 and done['index'] == c['index']
    saved = json.load(open(os.path.join(d, 'config.json')))
    assert saved['seed'] == int(c['labels']['seed'])
    assert saved['data']['subset']['count'] == int(c['labels']['images'])
  # The killed cell resumed from its checkpoint; the others started fresh.
  resumed = {c['name']: json.load(open(os.path.join(sweep_lib.cell_dir(w, c), 'DONE.json')))
             ['resumed_from'] for c in cs}
  assert resumed == {cs[0]['name']: None, cs[1]['name']: None, cs[2]['name']: 2,
                     cs[3]['name']: None}
  # Aggregation: one row per cell x evaluator x endpoint with its axis values.
  rows = [r for r in _read_csv(os.path.join(w, 'results.csv')) if r['metric'] == 'top1']
  assert 'broken' not in {r['cell'] for r in rows}
  results = {c['name']: json.load(open(os.path.join(sweep_lib.cell_dir(w, c), 'linear_eval',
                                                   'results.json'))) for c in cs}
  expected = sum(len(r['linear']) + sum(len(v) for v in r['knn'].values())
                 for r in results.values())
  assert len(rows) == expected
  for row in rows:
    c = cs[int(row['cell_index'])]
    assert row['cell'] == c['name']
    assert (row['seed'], row['images']) == (c['labels']['seed'], c['labels']['images'])
    assert row['trunk'] == 'tiny_cnn' and row['pretext_task'] == 'rotation'
    assert row['dataset'] == 'synthetic'  # not config.data.name
    assert row['data_axes'] == f"subset {c['labels']['images']}"
    r = results[c['name']]
    if row['evaluator'] == 'linear':
      ref = r['linear'][row['endpoint']]
    else:
      ref = r['knn'][row['evaluator'][len('knn_'):]][row['endpoint']]
    assert float(row['value']) == pytest.approx(100 * ref['top1'], abs=1e-3)
    assert float(row['baseline']) == pytest.approx(100 * ref['baseline_top1'], abs=1e-3)
    assert float(row['gain']) == pytest.approx(100 * ref['gain'], abs=1e-3)
  table = open(os.path.join(w, 'table.md')).read()
  assert table.count('\n| ') >= 5 and 'seed-1_images-64' not in table  # labels, not names
  for p in sorted(os.listdir(os.path.join(w, 'plots'))):
    with open(os.path.join(w, 'plots', p), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert len(os.listdir(os.path.join(w, 'plots'))) == 3
  # Rerun: every finished cell is skipped, nothing is rewritten; the failed one is tried
  # again (and fails again).
  marks = {c['name']: os.path.getmtime(os.path.join(sweep_lib.cell_dir(w, c), 'DONE.json'))
           for c in cs}
  logs.clear()
  again = sweep_lib.run_sweep(s, w, executor='inprocess', log=logs.append)
  assert sum('done, skipped' in m for m in logs) == 4 and again['failed'] == ['broken']
  assert marks == {c['name']: os.path.getmtime(os.path.join(sweep_lib.cell_dir(w, c),
                                                             'DONE.json')) for c in cs}
  # --aggregate alone gives the same CSV.
  before = open(os.path.join(w, 'results.csv')).read()
  sweep_lib.aggregate(s, w, log=logs.append)
  assert open(os.path.join(w, 'results.csv')).read() == before
  # --list names each cell, its status and both commands.
  listed = []
  sweep_lib.list_cells(s, w, out=listed.append)
  assert sum(': done' in l for l in listed) == 4
  assert any('broken' in l and ': failed' in l for l in listed)
  assert any('--cell 3' in l for l in listed)
  assert any('ssl_jax.main' in l and '--config.seed=1' in l for l in listed)


def test_a_cell_applies_each_data_axis_once(tmp_path, monkeypatch):
  """The engines apply data.subset (pretext images; the evaluation's label quantity);
  the sweep hands them no arrays, so no call of axes.apply sees an already-subset split
  (a subset of a subset would be smaller than asked) and each subset has its size."""
  from ssl_jax.data import axes  # pylint: disable=g-import-not-at-top
  real, calls = axes.apply, []
  def spy(config, arrays, **kw):
    out = real(config, arrays, **kw)
    calls.append((int(config.data.subset.count), len(arrays['train'][1]),
                  len(out['train'][1])))
    return out
  monkeypatch.setattr(axes, 'apply', spy)
  s = toy_sweep(axes=[{'name': 'images', 'key': 'data.subset.count', 'values': [32]}],
                overrides=dict(TOY_OVERRIDES, total_steps=2, **{
                    'linear_eval.data.subset.count': 64,
                    'linear_eval.eval.random_init_baseline': False,
                    'linear_eval.eval.endpoints': 'pre_logits'}),
                plots=[])
  (cell,) = sweep_lib.cells(s)
  w = str(tmp_path / 'sweep')
  done = sweep_lib.run_cell(s, w, cell, log=lambda m: None)
  assert done['status'] == 'finished'
  # synthetic splits: 128 pretext train images (subset 32), 96 evaluation ones (subset 64)
  assert {(32, 128, 32), (64, 96, 64)} <= set(calls), calls
  assert all(n_in in (128, 96) for _, n_in, _ in calls), calls  # whole splits only
  assert [c for c in calls if c[0] == 32] == [(32, 128, 32)], calls  # pretext: once
  saved = json.load(open(os.path.join(sweep_lib.cell_dir(w, cell), 'config.json')))
  assert saved['data']['subset']['count'] == 32


# ----------------------------------------------------------------------------- the command


def _env():
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1',
              PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))


def test_command_line_errors_are_one_line(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'ssl_jax.sweep', '--config', 'nope.py:x',
                        '--workdir', str(tmp_path)], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and out.stderr.strip().count('\n') == 0
  assert "no sweep config file 'nope.py'" in out.stderr


@pytest.mark.slow
def test_command_resumes_a_killed_cell(tmp_path):
  """kill -9 a cell process after a checkpoint; the sweep command resumes it and finishes."""
  cfg = tmp_path / 'toy_sweep.py'
  cfg.write_text(TOY_FILE.replace('STEPS', '30'))
  w = str(tmp_path / 'sweep')
  base = [sys.executable, '-m', 'ssl_jax.sweep', '--config', f'{cfg}:toy', '--workdir', w]
  proc = subprocess.Popen(base + ['--cell', '0'], cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  tail = []
  for line in proc.stderr:
    tail = (tail + [line])[-30:]
    if re.search(r'\[7\] train_', line):  # after the save of step 6
      break
  else:
    raise AssertionError(''.join(tail))
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  d = os.path.join(w, 'cells', 'width-1')
  assert not os.path.exists(os.path.join(d, 'DONE.json'))
  out = subprocess.run(base, cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  log = open(os.path.join(d, 'log.txt')).read()
  assert 'resumed from step 6' in log
  done = json.load(open(os.path.join(d, 'DONE.json')))
  assert done['resumed_from'] == 6 and done['step'] == 30 and done['attempts'] == 1
  assert os.path.exists(os.path.join(w, 'results.csv'))
  again = subprocess.run(base, cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=300)
  assert again.returncode == 0 and 'done, skipped' in again.stdout
