"""benchmarks/device_check.py: the tiny run as the GPU machine would run it, and --prepare.

The tiny run goes through a subprocess in which tensorflow, tensorflow_datasets and clu
cannot be imported and ml_collections only from the carried zip (the GPU machine has
none of them), on a prepared folder written without TensorFlow.
"""
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'device_check.py')

_spec = importlib.util.spec_from_file_location('device_check', SCRIPT)
dc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dc)

# Wraps every finder on sys.meta_path in the subprocess so that what the GPU machine
# lacks is absent (find_spec None, import ModuleNotFoundError), and ml_collections is
# found only in the carried zip.
BLOCKER = r'''
import runpy, sys
BLOCKED = ('tensorflow', 'tensorflow_datasets', 'clu')
class Hide:
  def __init__(self, inner):
    self.inner = inner
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in BLOCKED or not hasattr(self.inner, 'find_spec'):
      return None
    if name == 'ml_collections':
      path = [p for p in sys.path if p.endswith('.zip')]
    return self.inner.find_spec(name, path, target)
  def invalidate_caches(self):
    getattr(self.inner, 'invalidate_caches', lambda: None)()
sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
sys.argv = [SCRIPT] + ARGS
runpy.run_path(SCRIPT, run_name='__main__')
'''


def _jpeg(image, quality=75):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


@pytest.fixture(scope='module')
def tiny_report(tmp_path_factory):
  """(report JSON, stdout, prepared arrays) of `--tiny --data DIR` run without TF."""
  tmp = tmp_path_factory.mktemp('device_check')
  rng = np.random.RandomState(0)
  sizes = {'train': 96, 'val': 24, 'test': 40}
  # Smooth random images (JPEG keeps most of them) with labels.
  encoded, expected = {}, {}
  for split, n in sizes.items():
    low = rng.randint(0, 256, (n, 4, 4, 3)).astype(np.uint8)
    images = np.repeat(np.repeat(low, 8, axis=1), 8, axis=2)
    blobs = [_jpeg(im) for im in images]
    labels = rng.randint(0, 10, n)
    encoded[split] = (blobs, labels)
    expected[split] = (np.stack([np.asarray(Image.open(io.BytesIO(b)).convert('RGB'))
                                 for b in blobs]), labels)
  data = tmp / 'prepared'
  dc.write_prepared(str(data), encoded, {'dataset': 'test', 'splits': dict(sizes)})
  dc.build_pylib(str(data / 'pylib'))
  out = tmp / 'report.json'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1',
             TF_CPP_MIN_LOG_LEVEL='2')  # XLA_FLAGS: conftest's (8 devices, fast compiles)
  # A generous deadline: on a loaded CI machine the time shares must not skip a row.
  args = ['--tiny', '--data', str(data), '--out', str(out), '--deadline', '900']
  code = f'SCRIPT = {SCRIPT!r}\nARGS = {args!r}\n' + BLOCKER
  proc = subprocess.run([sys.executable, '-c', code], cwd=str(tmp), env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  with open(out) as f:
    return json.load(f), proc.stdout, expected


def _rows(report, part):
  return [r for r in report['rows'] if r['part'] == part]


def test_tiny_run_has_every_row_with_positive_finite_ratios(tiny_report):
  report, stdout, _ = tiny_report
  # What the GPU machine would use: ml_collections from the carried zip, Pillow's decode.
  assert '.zip' in report['header']['pylib']['ml_collections']
  assert report['header']['data_sha256_ok'] is True
  assert report['skipped'] == {}
  a, b = _rows(report, 'a'), _rows(report, 'b')
  assert len(a) == 2 and len(b) == 4
  for rows in [a] + [b[i:i + 2] for i in (0, 2)]:
    measured, baseline = rows
    for r in rows:
      assert r['unit'] == 'img/s' and math.isfinite(r['value']) and r['value'] > 0
    # ratio = value / baseline, and the baseline is the next row's own measurement.
    assert measured['baseline'] == baseline['value']
    assert 0 < measured['ratio'] < math.inf
    assert measured['ratio'] == pytest.approx(measured['value'] / baseline['value'])
  assert 'finite True' in a[0]['note']
  assert '32px' in b[0]['name'] and '16px' in b[2]['name']   # both sizes of the profile
  # The printed table is the last output and holds every row.
  table = stdout[stdout.rindex('device check (tiny)'):]
  for r in report['rows']:
    assert r['name'] in table


def test_tiny_run_trains_and_reports_the_random_init_baseline(tiny_report):
  report, _, expected = tiny_report
  train = report['train']
  assert train['steps'] > 0 and train['nonfinite_step'] is None
  # 96 images at batch 16: 6 steps per epoch.
  assert train['epochs'] == pytest.approx(train['steps'] * 16 / 96)
  le = report['linear_eval']
  assert le['num_examples'] == {s: len(expected[s][1]) for s in ('train', 'val', 'test')}
  assert 'baseline' in le and set(le['baseline']['linear']) == set(le['linear'])
  probes = [r for r in _rows(report, 'c') if r['name'].startswith('linear probe')]
  # The tiny profile probes pre_logits only (each endpoint's L-BFGS compiles for seconds).
  assert [r['name'].split(': ')[1].split(' ')[0] for r in probes] == ['pre_logits']
  for r in probes:
    name = r['name'].split(': ')[1].split(' ')[0]
    assert r['value'] == pytest.approx(100 * le['linear'][name]['top1'])
    assert r['baseline'] == pytest.approx(100 * le['baseline']['linear'][name]['top1'])
    assert r['gain'] == pytest.approx(r['value'] - r['baseline'])
    # Test top-1 over 40 images: a multiple of 1/40.
    assert 0 <= r['value'] <= 100 and (r['value'] * 40 / 100) == pytest.approx(
        round(r['value'] * 40 / 100))
  names = [r['name'] for r in _rows(report, 'c')]
  assert any(n.startswith('held-out rotation accuracy') for n in names)


def test_prepared_folder_decodes_to_the_images_and_carries_ml_collections(tmp_path):
  rng = np.random.RandomState(1)
  blobs = [_jpeg(rng.randint(0, 256, (8, 8, 3)).astype(np.uint8)) for _ in range(5)]
  meta = dc.write_prepared(str(tmp_path), {'test': (blobs, [3, 1, 4, 1, 5])}, {})
  arrays, info = dc.load_prepared(str(tmp_path))
  ref = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert('RGB')) for b in blobs])
  np.testing.assert_array_equal(arrays['test'][0], ref)
  np.testing.assert_array_equal(arrays['test'][1], [3, 1, 4, 1, 5])
  assert info['sha256_ok'] == {'test': True} and meta['shape']['test'] == [5, 8, 8, 3]
  # A changed byte of the recorded digest is reported, not ignored.
  meta['sha256']['test'] = '0' * 64
  with open(tmp_path / dc.META_FILE, 'w') as f:
    json.dump(meta, f)
  assert dc.load_prepared(str(tmp_path))[1]['sha256_ok'] == {'test': False}
  (path,) = dc.build_pylib(str(tmp_path / 'pylib'))
  names = zipfile.ZipFile(path).namelist()
  assert 'ml_collections/__init__.py' in names
  assert not [n for n in names if n.endswith('.pyc') or '__pycache__' in n]


def test_budget_shares_stop_before_the_reserve_of_later_parts():
  budget = dc.Budget(100.0)
  now = budget.t0
  # A part's own share when the deadline is far ...
  assert budget.until(10.0, 0.0) == pytest.approx(now + 10.0, abs=0.5)
  # ... but never into the seconds kept for the parts after it.
  assert budget.until(10.0, 95.0) == pytest.approx(now + 5.0, abs=0.5)
  assert budget.left() == pytest.approx(100.0, abs=0.5)


def test_time_fraction_schedule_is_the_preset_schedule_on_the_budget():
  import ml_collections  # pylint: disable=g-import-not-at-top
  o = ml_collections.ConfigDict(dict(warmup_epochs=5.0, decay_epochs=(50.0, 80.0),
                                     decay_factor=0.1, schedule='step'))
  f = dc.time_fraction_schedule(o, 100.0)
  # Hand-worked: warm-up over 5% of the time, x0.1 at 50% and again at 80%.
  assert f(0.0) == 0.0 and f(0.025) == pytest.approx(0.5)
  assert f(0.05) == 1.0 and f(0.4999) == 1.0
  assert f(0.5) == pytest.approx(0.1) and f(0.7999) == pytest.approx(0.1)
  assert f(0.8) == pytest.approx(0.01) and f(1.5) == pytest.approx(0.01)
  o.update(schedule='cosine', warmup_epochs=0.0)
  f = dc.time_fraction_schedule(o, 10.0)
  assert f(0.0) == 1.0 and f(0.5) == pytest.approx(0.5) and f(1.0) == pytest.approx(0.0)
  o.schedule = 'linear'
  with pytest.raises(ValueError, match='schedule'):
    dc.time_fraction_schedule(o, 10.0)


def test_prepare_matches_input_pipeline_load_arrays(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  if not tfds.builder('cifar10').is_prepared():
    pytest.skip('cifar10 is not prepared (run ../shared/data/prepare_tfds.py)')
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from configs import linear_eval  # pylint: disable=g-import-not-at-top
  splits = {'train': 'train[:40]', 'val': 'train[40:64]', 'test': 'test[:24]'}
  dc.prepare(str(tmp_path), splits)
  arrays, info = dc.load_prepared(str(tmp_path))
  assert info['splits'] == splits and all(info['sha256_ok'].values())
  config = linear_eval.get_config('cifar10')
  for split, spec in splits.items():
    config.data[f'{split}_split'] = spec
    images, labels = input_pipeline.load_arrays(config, split)
    np.testing.assert_array_equal(arrays[split][0], images)
    np.testing.assert_array_equal(arrays[split][1], labels)
  assert [n.split('-')[0] for n in os.listdir(tmp_path / 'pylib')] == ['ml_collections']
