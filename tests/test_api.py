"""The public research API: configs.get, ssl_jax.load_trunk / Trunk.features / random_twin,
ssl_jax.run.

Trunks are tiny_cnn workdirs of the three input kinds (rotation: RGB, jigsaw: patches,
colorization: L), written through the engine on synthetic images, with BatchNorm moving
averages moved off their initial values so that inference-mode BN is visible. References:
the linear evaluation's own feature extraction on the same checkpoint, and the trunk
applied to inputs built here with numpy / scikit-image.
"""
import importlib
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

import configs
import ssl_jax
from ssl_jax import checkpoint
from ssl_jax import config_lib
from ssl_jax import train
from ssl_jax import viz
from ssl_jax.data import ops
from ssl_jax.evaluation import features
from ssl_jax.evaluation import linear_eval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ('rotation', 'jigsaw', 'colorization')
KINDS = {'rotation': 'rgb', 'jigsaw': 'patches', 'colorization': 'lab_l'}


# ----------------------------------------------------------------------------- configs


def test_configs_names_are_the_config_files():
  files = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs'))
                 if f.endswith('.py') and not f.startswith('_') and f != 'common.py')
  # (sub-packages such as configs/sweeps/ are not job configs of their own)
  assert configs.names() == files
  for name in files:
    module = importlib.import_module(f'configs.{name}')
    assert configs.presets(name) == tuple(module.PRESETS)


def test_configs_get_applies_overrides_like_setting_them_by_hand():
  got = configs.get('rotation', 'smoke', total_steps=40, model={'name': 'tiny_cnn', 'width': 2},
                    **{'optimizer.base_lr': 1, 'data.val_split': 'train[:8]'})
  ref = importlib.import_module('configs.rotation').get_config('smoke')
  ref.total_steps = 40
  ref.model.name, ref.model.width = 'tiny_cnn', 2
  ref.optimizer.base_lr = 1.0
  ref.data.val_split = 'train[:8]'
  assert got.to_dict() == ref.to_dict()
  assert isinstance(got.optimizer.base_lr, float)        # an int sets a float key
  # The default preset is the file's; each call builds a fresh config.
  assert configs.get('rotation').to_dict() == (
      importlib.import_module('configs.rotation').get_config().to_dict())
  a, b = configs.get('jigsaw', 'smoke'), configs.get('jigsaw', 'smoke')
  a.model.width = 7
  assert b.model.width != 7
  # A tuple key takes a list; a whole section can be replaced by a ConfigDict.
  c = configs.get('linear_eval', 'smoke', **{'knn.presets': ['k200_t0.1']})
  assert tuple(c.knn.presets) == ('k200_t0.1',)
  model = ml_collections.ConfigDict(configs.get('rotation', 'cifar10_cpu').model.to_dict())
  c = configs.get('rotation', 'smoke', model=model)
  assert c.model.to_dict() == model.to_dict()


@pytest.mark.parametrize('args, kwargs, match', [
    (('rotatoin', 'smoke'), {}, r"no config 'rotatoin' \(closest: rotation"),
    (('rotation', 'smok'), {}, r"unknown preset 'smok'; allowed: \['imagenet'"),
    (('rotation', 'smoke'), {'totl_steps': 3}, r"config has no key 'totl_steps'; "
                                               r"closest: config.total_steps"),
    (('rotation', 'smoke'), {'model.widht': 2}, r"config.model has no key 'widht'; "
                                                r"closest: config.model.width"),
    (('rotation', 'smoke'), {'model': {'nme': 'x'}}, r"config.model has no key 'nme'"),
    (('rotation', 'smoke'), {'model': 3}, r'config.model is a section'),
    (('rotation', 'smoke'), {'total_steps': 'many'}, r"config.total_steps='many': "
                                                     r"expected a int"),
    (('rotation', 'smoke'), {'run_linear_eval': 1}, r'config.run_linear_eval=1: expected a '
                                                    r'bool'),
    (('rotation', 'smoke'), {'model.name.x': 1}, r'config.model.name has no key'),
])
def test_configs_get_errors_name_the_key(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    configs.get(*args, **kwargs)


# ----------------------------------------------------------------------------- workdirs


def _pretext_config(task):
  return configs.get(task, 'smoke', model={'name': 'tiny_cnn'}, data={'source': 'synthetic'})


def _shifted(state, shift, scale):
  """The state with BN moving averages moved (means by `shift`, variances times `scale`:
  visible in inference mode, features kept alive) and params scaled."""
  def move(path, v):
    return v + shift if 'mean' in jax.tree_util.keystr(path) else v * scale
  out = dict(state)
  out['batch_stats'] = jax.tree_util.tree_map_with_path(move, state['batch_stats'])
  out['params'] = jax.tree.map(lambda v: v * scale, state['params'])
  return out


@pytest.fixture(scope='module')
def workdirs(tmp_path_factory):
  """{task: workdir} with checkpoints at steps 3 and 5 (different values)."""
  out = {}
  for task in TASKS:
    wd = str(tmp_path_factory.mktemp(task))
    config = _pretext_config(task)
    run = train.build(config, wd)
    checkpoint.write_config(wd, config)
    checkpoint.save(run.manager, 3, _shifted(run.state, -0.3, 1.0), checkpoint.meta(config, 3))
    checkpoint.save(run.manager, 5, _shifted(run.state, -0.5, 1.2), checkpoint.meta(config, 5))
    run.manager.close()
    out[task] = wd
  return out


def _images(shape, n=5, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (n,) + tuple(shape)).astype(np.uint8)


def _reference_features(workdir, images, endpoints, step=None):
  """The linear evaluation's own extraction of these (already preprocessed) images."""
  le = configs.get('linear_eval', 'smoke', pretrained=workdir,
                   checkpoint_step=-1 if step is None else step)
  trunk = linear_eval.load_trunk(le)
  fn = linear_eval.extract_fn(le, trunk, list(endpoints), dtype=np.float32)
  batch = {'image': images, 'label': np.zeros(len(images), np.int32),
           'mask': np.ones(len(images), bool)}
  x, _ = features.extract(fn, jax.device_put(trunk['variables']), [batch])
  return x, le, trunk


# ----------------------------------------------------------------------------- load_trunk


@pytest.mark.parametrize('task', TASKS)
def test_features_equal_the_linear_evaluations(workdirs, task):
  trunk = ssl_jax.load_trunk(workdirs[task])
  assert trunk.input_kind == KINDS[task] and trunk.task == task and trunk.step == 5
  assert repr(trunk).startswith(f'Trunk({task}, step 5, tiny_cnn k=1, input {KINDS[task]}')
  images = _images(trunk.image_shape)
  ref, _, _ = _reference_features(workdirs[task], images, trunk.endpoints)
  # batch_size 2: two full batches and a padded one.
  got = trunk.features(images, trunk.endpoints, pp='', batch_size=2)
  assert sorted(got) == sorted(ref)
  for name in ref:
    assert got[name].dtype == np.float32 and got[name].shape == ref[name].shape
    np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)
    assert np.std(got[name]) > 1e-3, name     # not a dead (all-zero) layer
  # One endpoint by name: its array alone.
  single = trunk.features(images, 'pre_logits', pp='')
  np.testing.assert_allclose(single, ref['pre_logits'], rtol=1e-5, atol=1e-5)


def _numpy_input(task, images, trunk):
  """The trunk input of u8 images, built without the task's own code."""
  x = images.astype(np.float64)
  if task == 'rotation':
    return (x / 127.5 - 1.0).astype(np.float32)
  if task == 'colorization':
    from skimage import color as skcolor  # pylint: disable=g-import-not-at-top
    lightness = skcolor.rgb2lab(x / 255.0)[..., :1]
    return ((lightness - 50.0) / 50.0).astype(np.float32)
  # Patches: the 9 exact cells (no jitter at evaluation), each standardised over its
  # pixels and channels (tf.image.per_image_standardization), image-major.
  p = trunk.config.tasks.jigsaw.patch_size
  cells = [x[:, r * p:(r + 1) * p, c * p:(c + 1) * p] for r in range(3) for c in range(3)]
  cells = np.stack(cells, axis=1)                                   # [B, 9, p, p, 3]
  mean = cells.mean(axis=(2, 3, 4), keepdims=True)
  std = np.maximum(cells.std(axis=(2, 3, 4), keepdims=True), 1.0 / np.sqrt(p * p * 3))
  return ((cells - mean) / std).reshape((-1, p, p, 3)).astype(np.float32)


@pytest.mark.parametrize('task', TASKS)
def test_features_against_an_independent_input_and_inference_mode_bn(workdirs, task):
  trunk = ssl_jax.load_trunk(workdirs[task])
  images = _images(trunk.image_shape, n=4, seed=1)
  x = _numpy_input(task, images, trunk)
  _, eps = trunk.model.apply(trunk.variables, x, train=False)
  want = np.asarray(eps['pre_logits'])
  if task == 'jigsaw':
    want = want.reshape(len(images), 9, -1).mean(axis=1)            # averaged over patches
  got = trunk.features(images, 'pre_logits', pp='')
  tol = 2e-3 if task == 'colorization' else 1e-4   # (L of two Lab implementations)
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
  # The moving averages are used: train-mode BN (batch statistics) gives other numbers.
  (_, eps_train), _ = trunk.model.apply(trunk.variables, x, train=True,
                                        mutable=['batch_stats'])
  batch_mode = np.asarray(eps_train['pre_logits'])
  if task == 'jigsaw':
    batch_mode = batch_mode.reshape(len(images), 9, -1).mean(axis=1)
  assert np.max(np.abs(batch_mode - got)) > 1e-2
  # ... and the trunk's variables are not changed by extraction.
  before = jax.tree.map(np.copy, trunk.variables)
  trunk.features(images, trunk.endpoints)
  jax.tree.map(np.testing.assert_array_equal, trunk.variables, before)


@pytest.mark.parametrize('task', TASKS)
def test_default_preprocessing_is_the_eval_geometry(workdirs, task):
  trunk = ssl_jax.load_trunk(workdirs[task])
  s = trunk.config.data.image_size
  if task == 'jigsaw':   # the study's patch geometry, scaled: resize_small 3.5p -> crop 3p
    p = trunk.config.tasks.jigsaw.patch_size
    assert trunk.pp == f'decode|resize_small({round(3 * p * 224 / 192)})|crop({3 * p})'
    assert trunk.image_shape == (3 * p, 3 * p, 3)
  else:
    assert trunk.pp == f'decode|resize_small({s})|crop({s})' and trunk.image_shape == (s, s, 3)
  images = _images((23, 29, 3), n=3, seed=2)       # another size, not square
  pre = np.asarray(ops.make_batch_fn(trunk.pp, train=False)(jax.random.key(0), images))
  assert pre.shape[1:] == trunk.image_shape
  np.testing.assert_allclose(trunk.features(images, 'pre_logits'),
                             trunk.features(pre, 'pre_logits', pp=''), rtol=1e-6, atol=1e-6)
  if task != 'jigsaw':  # at the trunk's own size the default preprocessing changes nothing
    native = _images(trunk.image_shape, n=3, seed=3)
    np.testing.assert_array_equal(trunk.features(native, 'block1'),
                                  trunk.features(native, 'block1', pp=''))


@pytest.mark.parametrize('task', TASKS)
def test_random_twin_is_the_linear_evaluations_baseline_trunk(workdirs, task):
  trunk = ssl_jax.load_trunk(workdirs[task])
  twin = trunk.random_twin()
  assert twin.task == 'random_init' and twin.seed == 0 and twin.input_kind == trunk.input_kind
  assert twin.pp == trunk.pp and twin.image_shape == trunk.image_shape
  assert repr(twin).startswith('Trunk(random init (seed 0), tiny_cnn k=1')
  images = _images(trunk.image_shape, n=3, seed=4)
  _, le, le_trunk = _reference_features(workdirs[task], images, ('pre_logits',))
  ref = linear_eval.random_twin(le, le_trunk, trunk.image_shape)
  jax.tree.map(np.testing.assert_array_equal, twin.variables, ref['variables'])
  fn = linear_eval.extract_fn(le, ref, list(trunk.endpoints), dtype=np.float32)
  batch = {'image': images, 'label': np.zeros(3, np.int32), 'mask': np.ones(3, bool)}
  want, _ = features.extract(fn, jax.device_put(ref['variables']), [batch])
  got = twin.features(images, trunk.endpoints, pp='')
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
  # Same shapes as the trained trunk, other values; BN statistics at their initial values.
  assert (jax.tree.map(np.shape, twin.variables['params'])
          == jax.tree.map(np.shape, trunk.variables['params']))
  assert not np.allclose(got['pre_logits'], trunk.features(images, 'pre_logits', pp=''))
  for path, v in jax.tree_util.tree_leaves_with_path(twin.variables['batch_stats']):
    key = jax.tree_util.keystr(path)
    np.testing.assert_array_equal(v, np.zeros_like(v) if 'mean' in key else np.ones_like(v))
  # load_trunk(random_init=True) is the same twin without reading a checkpoint; seeds
  # give other trunks.
  other = ssl_jax.load_trunk(workdirs[task], random_init=True)
  jax.tree.map(np.testing.assert_array_equal, other.variables, twin.variables)
  seeded = trunk.random_twin(seed=1)
  assert not np.allclose(seeded.variables['params']['block1_conv']['kernel'],
                         twin.variables['params']['block1_conv']['kernel'])


@pytest.mark.parametrize('task', ('rotation', 'jigsaw'))
def test_bn_statistics_are_the_population_statistics_of_the_images(workdirs, task):
  trunk = ssl_jax.load_trunk(workdirs[task])
  images = _images(trunk.image_shape, n=7, seed=5)
  twin = trunk.random_twin(bn_images=images, pp='', batch_size=3)  # 2 batches of 3, 1 unused
  assert twin.bn_images == 6 and 'BN statistics of 6 images' in repr(twin)
  # Reference: the first BN layer's input (the root conv's output) over the 6 images'
  # trunk inputs at once, from the twin's own weights (unchanged by the re-estimation).
  fresh = trunk.random_twin()
  jax.tree.map(np.testing.assert_array_equal, twin.variables['params'],
               fresh.variables['params'])
  x = np.asarray(trunk.eval_input.fn(images[:6]))
  _, state = fresh.model.apply(fresh.variables, x, train=False,
                               capture_intermediates=True, mutable=['intermediates'])
  conv = np.asarray(state['intermediates']['after_root_conv']['__call__'][0], np.float64)
  stats = twin.variables['batch_stats']['after_root_bn']
  np.testing.assert_allclose(stats['mean'], conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats['var'], conv.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-5)
  # Every layer moved off its initial values; the features are those of the new stats.
  for v in jax.tree.leaves(fresh.variables['batch_stats']):
    assert np.all((v == 0) | (v == 1))
  assert not np.allclose(twin.features(images, 'pre_logits', pp=''),
                         fresh.features(images, 'pre_logits', pp=''))


def test_step_selection_and_missing_checkpoints(workdirs, tmp_path):
  wd = workdirs['rotation']
  images = _images((16, 16, 3), n=2)
  newest, old = ssl_jax.load_trunk(wd), ssl_jax.load_trunk(wd, step=3)
  assert (newest.step, old.step) == (5, 3)
  ref3, _, _ = _reference_features(wd, images, ('pre_logits',), step=3)
  np.testing.assert_allclose(old.features(images, 'pre_logits', pp=''), ref3['pre_logits'],
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(old.features(images, 'pre_logits'),
                         newest.features(images, 'pre_logits'))
  with pytest.raises(FileNotFoundError, match=r'no checkpoint of step 4; available steps: '
                                              r'\[3, 5\]'):
    ssl_jax.load_trunk(wd, step=4)
  with pytest.raises(FileNotFoundError, match='is not a ssl_jax workdir'):
    ssl_jax.load_trunk(str(tmp_path / 'nothing'))


def test_bad_inputs_fail_with_one_line(workdirs):
  trunk = ssl_jax.load_trunk(workdirs['rotation'])
  images = _images((16, 16, 3), n=2)
  for bad, match in ((images.astype(np.float32), 'must be uint8'),
                     (images[0], r'shape \(16, 16, 3\)'),
                     (images[:0], r'no images')):
    with pytest.raises(ValueError, match=match):
      trunk.features(bad)
  with pytest.raises(ValueError, match=r"endpoints \['block9'\] not of this trunk; allowed: "
                                       r"\['after_root'"):
    trunk.features(images, ('pre_logits', 'block9'))
  with pytest.raises(ValueError, match=r"pool='mean'; allowed: \['max'"):
    trunk.features(images, pool='mean')
  with pytest.raises(ValueError, match='patch_combine'):
    trunk.features(images, patch_combine='sum')
  with pytest.raises(ValueError, match='batch_size=0'):
    trunk.features(images, batch_size=0)
  with pytest.raises(ValueError, match='seed=-1'):
    trunk.random_twin(seed=-1)
  # Grey images are the RGB images with three equal channels.
  grey = images[..., :1]
  np.testing.assert_array_equal(trunk.features(grey, 'pre_logits'),
                                trunk.features(np.repeat(grey, 3, -1), 'pre_logits'))


def test_pool_modes_follow_the_pooling_library(workdirs):
  trunk = ssl_jax.load_trunk(workdirs['rotation'])
  images = _images((16, 16, 3), n=2)
  raw = trunk.features(images, 'block1', pool='none')
  _, eps = trunk.model.apply(trunk.variables, images.astype(np.float32) / 127.5 - 1.0,
                             train=False)
  block1 = np.asarray(eps['block1'])
  np.testing.assert_allclose(raw, block1.reshape(2, -1), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(trunk.features(images, 'block1', pool='global_avg'),
                             block1.mean(axis=(1, 2)), rtol=1e-4, atol=1e-4)


def test_importing_ssl_jax_does_not_import_jax():
  code = ('import sys, ssl_jax; assert "jax" not in sys.modules, "jax imported"; '
          'f = ssl_jax.load_trunk; assert "jax" in sys.modules; '
          'assert sorted(ssl_jax.__all__) == ["Trunk", "load_images", "load_trunk", "run"]; print("ok")')
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-2000:]
  with pytest.raises(AttributeError, match='has no attribute'):
    ssl_jax.no_such_thing  # pylint: disable=pointless-statement


def test_configs_are_found_from_another_directory(tmp_path):
  # Found failing: `ssl_jax.load_images` from a script outside the repository (an editable
  # install) raised ModuleNotFoundError: configs is not installed with ssl_jax.
  # Every path entry of the repository is removed after the import: a legacy editable
  # install (pip < 21.3, or an old setuptools: an easy-install.pth line) puts the
  # repository itself on sys.path, which would make `configs` importable anyway (found
  # failing in a fresh venv with the machine's pip 23.2.1 and its old setuptools).
  code = ('import importlib.util, os, sys; root = sys.argv[1]; sys.path.insert(0, root); '
          'import ssl_jax.api as api; '
          'sys.path[:] = [p for p in sys.path if not (os.path.isdir(p or ".") and '
          'os.path.samefile(p or ".", root))]; '
          'assert "configs" not in sys.modules and importlib.util.find_spec("configs") is None; '
          'c = api._configs(); '
          'assert os.path.samefile(c.__file__, os.path.join(root, "configs", "__init__.py")); '
          'assert c.get("rotation", "smoke").task == "rotation"; print("ok")')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  out = subprocess.run([sys.executable, '-c', code, ROOT], capture_output=True, text=True,
                       cwd=str(tmp_path), env=env, timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-2000:]


# ----------------------------------------------------------------------------- run


def _run_config():
  return configs.get('rotation', 'smoke', model={'name': 'tiny_cnn'},
                     data={'source': 'synthetic'}, total_steps=2, eval_every_steps=2,
                     checkpoint_every_steps=2, log_every_steps=1, run_linear_eval=True)


# The smallest evaluation: synthetic images, one probe, no baseline (the notebooks' test
# runs the baseline through ssl_jax.run).
LINEAR_EVAL = {'data.source': 'synthetic', 'data.synthetic_examples': 128, 'train.epochs': 2,
               'train.eval_every': 1, 'train.decay_epochs': (), 'mlp.enabled': False,
               'lowshot.enabled': False, 'knn.enabled': False, 'eval.endpoints': 'pre_logits',
               'eval.random_init_baseline': False}


def test_run_trains_then_evaluates_in_one_call(tmp_path):
  wd = str(tmp_path / 'rot')
  out = ssl_jax.run(_run_config(), wd, linear_eval=LINEAR_EVAL)
  assert out['step'] == 2 and not out['preempted']
  assert checkpoint.saved_steps(wd) == [2]
  assert 'val_accuracy' in viz.read_scalars(wd)
  results = out['linear_eval']
  with open(os.path.join(wd, 'linear_eval', 'results.json')) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  assert results['pretrained'] == wd and results['pretext_task'] == 'rotation'
  # The trunk the evaluation read is the one load_trunk gives.
  assert ssl_jax.load_trunk(wd).step == 2


def test_run_checks_the_linear_evaluation_before_training(tmp_path):
  wd = str(tmp_path / 'rot')
  with pytest.raises(config_lib.ConfigError, match=r"config has no key 'nonsense'"):
    ssl_jax.run(_run_config(), wd, linear_eval={'nonsense': 1})
  assert checkpoint.saved_steps(wd) == []   # nothing trained
  config = _run_config()
  config.run_linear_eval = False
  with pytest.raises(ValueError, match='run_linear_eval is False'):
    ssl_jax.run(config, wd, linear_eval={'train.epochs': 1})
