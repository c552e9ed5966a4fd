"""One run per workdir, which config changes a resume takes, damaged vs mismatched
checkpoints, and saves that fail on a full disk (issue 17 §5).

The failing inputs of the reports are kept: two runs on one workdir, a resume with
data.num_classes=12 on a 10-class workdir, weight_decay 1e-4 -> 0, a linear evaluation of
a workdir whose newest step is truncated, a disk that fills during a save.
"""
import errno
import glob
import importlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from configs import linear_eval as le_configs
from configs import rotation as rotation_config
from configs import supervised as supervised_config
from ssl_jax import checkpoint
from ssl_jax import config_lib
from ssl_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(c, steps=4, every=2):
  c.model.name = 'tiny_cnn'
  c.data.source = 'synthetic'
  c.data.synthetic_examples = 32
  c.data.image_size = 8
  c.input.pp_train, c.input.pp_eval = 'decode|flip_lr', 'decode'
  c.total_steps, c.checkpoint_every_steps, c.log_every_steps = steps, every, every
  c.eval_every_steps = -1
  c.max_to_keep = 5
  return c


def _rotation(steps=4, every=2):
  return _tiny(rotation_config.get_config('smoke'), steps, every)


def _supervised(steps=4, every=2):
  return _tiny(supervised_config.get_config('smoke'), steps, every)


@pytest.fixture(scope='module')
def rotation_run(tmp_path_factory):
  """A finished 4-step rotation run with checkpoints 2 and 4 (tests copy it)."""
  workdir = str(tmp_path_factory.mktemp('rot') / 'run')
  train.train_and_evaluate(_rotation(), workdir)
  return workdir


@pytest.fixture(scope='module')
def supervised_run(tmp_path_factory):
  """A finished 4-step 10-class supervised run with checkpoints 2 and 4."""
  workdir = str(tmp_path_factory.mktemp('sup') / 'run')
  train.train_and_evaluate(_supervised(), workdir)
  return workdir


def _copy(src, tmp_path, name='run'):
  dst = str(tmp_path / name)
  shutil.copytree(src, dst)
  return dst


def _listing(workdir):
  """Every file under workdir/checkpoints with its size and content hash (a snapshot)."""
  out = {}
  for f in sorted(glob.glob(os.path.join(workdir, 'checkpoints', '**'), recursive=True)):
    if os.path.isfile(f):
      with open(f, 'rb') as fh:
        out[os.path.relpath(f, workdir)] = hash(fh.read())
  return out


def _env():
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')


# ------------------------------------------------------------------ one run per workdir

_HOLDER = textwrap.dedent("""
    import sys, time
    from ssl_jax import checkpoint
    lock = checkpoint.lock_workdir(sys.argv[1])
    print('locked', lock.held, flush=True)
    time.sleep(600)
""")


def _start_holder(workdir, deadline_s=120):
  """A second process holding workdir's lock (returns once it holds it)."""
  proc = subprocess.Popen([sys.executable, '-c', _HOLDER, workdir], cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  ready, _, _ = select.select([proc.stdout], [], [], deadline_s)
  assert ready, 'the holder did not take the lock in time'
  assert proc.stdout.readline().split() == ['locked', 'True']
  return proc


def _kill(proc):
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait(timeout=60)


def test_lock_refuses_a_second_process_and_a_killed_holder_frees_it(tmp_path):
  workdir = str(tmp_path / 'w')
  holder = _start_holder(workdir)
  try:
    t = time.time()
    with pytest.raises(ValueError) as e:
      checkpoint.lock_workdir(workdir)
    assert time.time() - t < 2  # fails at once, does not wait for the holder
    message = str(e.value)
    assert '\n' not in message
    assert f'{workdir} is in use by another run (pid {holder.pid} on ' in message
    assert '-c' in message and 'another --workdir' in message  # its command line
  finally:
    _kill(holder)  # kill -9: no handler runs, the kernel drops the flock
  # The file (with the dead holder's details) is still there: it must not matter.
  assert json.load(open(os.path.join(workdir, checkpoint.LOCK_FILE)))['pid'] == holder.pid
  with checkpoint.lock_workdir(workdir) as lock:
    assert lock.held
    info = json.load(open(os.path.join(workdir, checkpoint.LOCK_FILE)))
    assert info['pid'] == os.getpid()
  assert open(os.path.join(workdir, checkpoint.LOCK_FILE)).read() == ''  # released: no holder
  # And another process can take it after a release.
  _kill(_start_holder(workdir))


def test_lock_within_one_process_and_a_stale_file(tmp_path):
  workdir = str(tmp_path / 'w')
  os.makedirs(workdir)
  # A lock file left by a process that no longer exists: only the flock counts.
  with open(os.path.join(workdir, checkpoint.LOCK_FILE), 'w') as f:
    json.dump({'pid': 2 ** 22 + 12345, 'host': 'elsewhere', 'start': 'long ago', 'cmd': 'x'},
              f)
  lock = checkpoint.lock_workdir(workdir)
  assert lock.held
  with pytest.raises(ValueError, match=r'already in use by this process \(pid '):
    checkpoint.lock_workdir(os.path.join(workdir, '.', ''))  # the same directory
  lock.release()
  lock.release()  # idempotent
  checkpoint.lock_workdir(workdir).release()


def test_locks_that_cannot_be_taken_warn_once(tmp_path, caplog, monkeypatch):
  with caplog.at_level('WARNING'):
    for _ in range(2):
      assert not checkpoint.lock_workdir('gs://bucket/run').held
  assert caplog.text.count('no lock on gs://bucket/run: object stores') == 1

  def no_locks(fd, op):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
  monkeypatch.setattr(checkpoint.fcntl, 'flock', no_locks)
  with caplog.at_level('WARNING'):
    assert not checkpoint.lock_workdir(str(tmp_path / 'w')).held
  assert 'does not support locks' in caplog.text


def _main_cmd(workdir, steps, every=2, extra=()):
  """`python -m ssl_jax.main` with the config of `_cmd_config(steps, every)`."""
  return [sys.executable, '-m', 'ssl_jax.main', '--config', 'configs/rotation.py:smoke',
          '--workdir', workdir, '--config.data.source=synthetic', '--config.model.name=tiny_cnn',
          '--config.data.image_size=8', f'--config.total_steps={steps}',
          f'--config.checkpoint_every_steps={every}', '--config.log_every_steps=1',
          '--config.eval_every_steps=-1', *extra]


def _cmd_config(steps, every):
  c = rotation_config.get_config('smoke')
  c.data.source, c.model.name, c.data.image_size = 'synthetic', 'tiny_cnn', 8
  c.total_steps, c.checkpoint_every_steps, c.log_every_steps = steps, every, 1
  c.eval_every_steps = -1
  return c


def _run_until(cmd, pattern, deadline_s=300):
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline, tail = time.time() + deadline_s, []
  for line in proc.stderr:
    tail = (tail + [line])[-30:]
    if re.search(pattern, line):
      return proc
    assert time.time() < deadline, ''.join(tail)
  raise AssertionError('process ended before ' + pattern + ':\n' + ''.join(tail))


@pytest.mark.slow  # ~1.5 min: a real training process holds the workdir
def test_a_second_training_run_on_a_busy_workdir_fails_fast(tmp_path):
  """The report: the same command twice both trained; another seed died in orbax."""
  workdir = str(tmp_path / 'run')
  first = _run_until(_main_cmd(workdir, 100000, every=3), r'\[4\] train_')
  try:
    for seed in (0, 1):  # the same config, and another seed
      c = _cmd_config(6, 3)  # (short: without a lock this run is accepted and trains)
      c.seed = seed
      t = time.time()
      with pytest.raises(config_lib.ConfigError,
                         match=rf'is in use by another run \(pid {first.pid} on .*ssl_jax.main'):
        train.train_and_evaluate(c, workdir)
      assert time.time() - t < 10
    assert first.poll() is None  # the first run is unharmed
  finally:
    _kill(first)
  saved = checkpoint.saved_steps(workdir)
  assert saved and saved[-1] >= 3
  c = _cmd_config(saved[-1] + 2, 3)  # (total_steps may change on resume)
  out = train.train_and_evaluate(c, workdir)  # after a kill -9 the lock is free
  assert out['step'] == saved[-1] + 2 and out['train_history'][0]['step'] == saved[-1] + 1
  checkpoint.lock_workdir(workdir).release()  # train_loop released it


def test_a_linear_evaluation_on_a_busy_workdir_fails_fast(rotation_run, tmp_path):
  from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
  c = le_configs.get_config('smoke')
  c.pretrained = rotation_run
  holder = _start_holder(str(tmp_path / 'eval'))
  try:
    with pytest.raises(config_lib.ConfigError, match=rf'in use by another run \(pid {holder.pid}'):
      linear_eval.run(c, str(tmp_path / 'eval'), arrays=_eval_arrays())
  finally:
    _kill(holder)


# ------------------------------------------------------------------ resuming: config keys


def test_num_classes_change_is_refused_and_nothing_is_set_aside(supervised_run, tmp_path):
  workdir = _copy(supervised_run, tmp_path)
  before, config_before = _listing(workdir), open(os.path.join(workdir, 'config.json')).read()
  c = _supervised(steps=6)
  c.data.num_classes = 12
  with pytest.raises(config_lib.ConfigError) as e:
    train.train_and_evaluate(c, workdir)
  assert 'data.num_classes: 10 -> 12' in str(e.value) and '\n' not in str(e.value)
  assert _listing(workdir) == before
  assert not os.path.exists(os.path.join(workdir, 'checkpoints', 'unusable'))
  assert open(os.path.join(workdir, 'config.json')).read() == config_before


def test_a_mismatched_structure_is_refused_not_set_aside(supervised_run, tmp_path):
  # Without config.json (or with a key that slipped through) the saved structure itself
  # is compared with the new state before any restore.
  workdir = _copy(supervised_run, tmp_path)
  os.remove(os.path.join(workdir, 'config.json'))
  before = _listing(workdir)
  c = _supervised(steps=6)
  c.data.num_classes = 12
  with pytest.raises(config_lib.ConfigError) as e:
    train.train_and_evaluate(c, workdir)
  message = str(e.value)
  assert message.startswith(f'checkpoint step 4 of {workdir} does not match the state')
  assert 'params/heads/supervised/logits/kernel: shape (16, 10) saved, (16, 12) now' in message
  assert 'config.tasks.supervised or config.data.num_classes' in message
  assert '\n' not in message
  assert _listing(workdir) == before
  assert not os.path.exists(os.path.join(workdir, 'checkpoints', 'unusable'))


def test_structure_check_names_the_changed_keys(supervised_run, tmp_path):
  workdir = _copy(supervised_run, tmp_path)
  c = _supervised(steps=6)
  c.model.width = 2
  run = train.build(c)  # no workdir: the state of the new config
  with pytest.raises(checkpoint.StructureError) as e:
    checkpoint.restore_latest(checkpoint.make_manager(workdir),
                              checkpoint.abstract_of(run.state), config=c)
  message = str(e.value)
  # Every saved trunk kernel of width 1 against width 2, from orbax's metadata.
  saved = checkpoint.restore_numpy(os.path.join(workdir, 'checkpoints', '4', 'state'))
  kernel = saved['params']['trunk']['block1_conv']['kernel'].shape
  wanted = run.state['params']['trunk']['block1_conv']['kernel'].shape
  assert kernel != wanted
  assert 'config keys changed since the saved run: model.width 1 -> 2' in message
  assert checkpoint.saved_steps(workdir) == [2, 4]
  assert checkpoint.structure_differences(
      {'a': ((2,), 'float32'), 'b': ((3,), 'float32'), 'c': ((1,), 'int32')},
      {'a': ((2,), 'float32'), 'b': ((4,), 'float32'), 'd': ((1,), 'int32')}) == [
          'b: shape (3,) saved, (4,) now', 'c: saved, not in the new state',
          'd: new, not saved']


@pytest.mark.parametrize('key,value', [
    ('optimizer.weight_decay', 0.0),             # the objective (the report)
    ('seed', 1),                                 # another replicate
    ('batch_size', 8),                           # negatives, lr scaling, stream position
    ('input.pp_train', 'decode'),                # the augmentation
    ('data.synthetic_examples', 64),             # the data
    ('model.width', 2),                          # the architecture
    ('tasks.rotation.rotations', 'random_one'),  # the trained task's settings
    ('optimizer.name', 'adam'),                  # the optimizer state
])
def test_keys_that_change_the_objective_are_refused(rotation_run, tmp_path, key, value):
  workdir = _copy(rotation_run, tmp_path)
  before = _listing(workdir)
  c = _rotation(steps=6)
  c.update_from_flattened_dict({key: value})
  with pytest.raises(config_lib.ConfigError) as e:
    train.train_and_evaluate(c, workdir)
  assert f'{key}: ' in str(e.value) and 'cannot be resumed' in str(e.value)
  assert _listing(workdir) == before


def test_schedule_and_length_changes_resume_with_a_warning(rotation_run, tmp_path, caplog):
  workdir = _copy(rotation_run, tmp_path)
  c = _rotation(steps=6)
  c.optimizer.base_lr = 0.05
  c.log_every_steps = 1       # free: no warning for it
  c.eval_batch_size = 8       # free
  with caplog.at_level('INFO'):
    out = train.train_and_evaluate(c, workdir)
  assert out['step'] == 6 and out['train_history'][0]['step'] == 5  # resumed from 4
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING'
              and 'resuming' in r.getMessage()]
  assert len(warnings) == 1
  assert 'optimizer.base_lr: 0.1 -> 0.05' in warnings[0]
  assert 'total_steps: 4 -> 6' in warnings[0]
  assert 'log_every_steps' not in warnings[0] and 'eval_batch_size' not in warnings[0]
  assert 'log_every_steps: 2 -> 1' in caplog.text  # the INFO line
  history = [json.loads(l) for l in open(os.path.join(workdir, checkpoint.HISTORY_FILE))]
  assert len(history) == 1 and history[0]['step'] == 4
  assert history[0]['changes']['optimizer.base_lr'] == [0.1, 0.05]
  assert json.load(open(os.path.join(workdir, 'config.json')))['optimizer']['base_lr'] == 0.05


def test_every_preset_key_has_a_resume_class():
  unclassified = set()
  for name in ('rotation', 'supervised', 'jigsaw', 'relative_patch_location', 'exemplar',
               'simclr', 'colorization', 'multitask'):
    try:
      module = importlib.import_module(f'configs.{name}')
    except ImportError:
      continue
    for preset in getattr(module, 'PRESETS', ('smoke',)):
      flat = checkpoint._flat(json.loads(module.get_config(preset).to_json_best_effort()))
      sections = {k.split('.')[1] for k in flat if k.startswith('tasks.') and k.count('.') > 1}
      for key in flat:
        if 'without a resume class' in checkpoint.resume_rule(key, sections)[1]:
          unclassified.add(key)
  assert not unclassified, f'give these keys a class in checkpoint.RESUME_RULES: {unclassified}'
  rule = checkpoint.resume_rule
  assert rule('optimizer.base_lr')[0] == checkpoint.WARN
  assert rule('optimizer.weight_decay')[0] == checkpoint.REFUSE
  assert rule('model.dtype')[0] == checkpoint.WARN
  assert rule('model.width')[0] == checkpoint.REFUSE
  assert rule('tasks.jigsaw.grid', ['rotation'])[0] == checkpoint.FREE   # not trained
  assert rule('tasks.jigsaw.grid', ['jigsaw'])[0] == checkpoint.REFUSE
  assert rule('tasks.multitask.members.rotation.pp_eval', ['multitask'])[0] == checkpoint.FREE
  assert rule('a_key_nobody_classified')[0] == checkpoint.REFUSE


def test_settings_of_another_version_warn_but_a_new_section_is_refused():
  import ml_collections  # pylint: disable=g-import-not-at-top
  saved = ml_collections.ConfigDict({'task': 'multitask', 'model': {'name': 'tiny_cnn'},
                                     'tasks': {'multitask': {'members': {'rotation': {
                                         'weight': 1.0}}}}})
  new = ml_collections.ConfigDict(saved.to_dict())
  new.model.added_later = True                                       # a new leaf
  new.tasks.multitask.members.rotation.rate = 1.0                    # a new leaf
  new.tasks.multitask.members.jigsaw = {'weight': 1.0}               # a new member
  diffs = {k: cls for k, _, _, cls in checkpoint.resume_differences(saved, new)}
  assert diffs == {'model.added_later': checkpoint.WARN,
                   'tasks.multitask.members.rotation.rate': checkpoint.WARN,
                   'tasks.multitask.members.jigsaw.weight': checkpoint.REFUSE}
  assert [k for k, _, _ in checkpoint.structural_differences(saved, new)] == [
      'tasks.multitask.members.jigsaw.weight']


def test_a_run_saved_before_the_data_axes_existed_resumes_unless_an_axis_is_on():
  """Found resuming the main job: config.json of an older version has no data.subset /
  data.pool / data.arrays_dir / evals; at their no-op defaults they are no difference,
  an active subset or pool (other images) is still refused."""
  from ssl_jax.data import axes  # pylint: disable=g-import-not-at-top
  new = _rotation()
  saved = new.copy_and_resolve_references()
  with saved.unlocked():
    del saved.data['subset'], saved.data['pool'], saved.data['arrays_dir'], saved['evals']
  diffs = checkpoint.resume_differences(saved, new)
  assert diffs and all(k.startswith('evals.') and cls == checkpoint.FREE
                       for k, _, _, cls in diffs), diffs   # the monitor: never the weights
  for key, value in (('subset.count', 10), ('subset.per_class', 2),
                     ('pool.datasets', ('cifar10', 'svhn_cropped'))):
    changed = new.copy_and_resolve_references()
    section, leaf = key.split('.')
    changed.data[section][leaf] = value
    refused = [k for k, _, _ in checkpoint.structural_differences(saved, changed)]
    assert refused == [f'data.{key}'], (key, refused)
  assert set(axes.SUBSET_DEFAULTS) == set(new.data.subset.keys())
  assert set(axes.POOL_DEFAULTS) == set(new.data.pool.keys())
  changed = new.copy_and_resolve_references()
  changed.data.arrays_dir = '/prepared'   # where the same images are read from
  changed.evals.every_steps = 100
  assert {cls for *_, cls in checkpoint.resume_differences(saved, changed)} == {
      checkpoint.FREE}


# ------------------------------------------------------------------ damaged checkpoints


def _truncate_data_files(workdir, step):
  files = [f for f in glob.glob(os.path.join(workdir, 'checkpoints', str(step), 'state', '**',
                                             'd', '*'), recursive=True) if os.path.isfile(f)]
  assert files, 'no OCDBT data files: did the checkpoint format change?'
  for name in files:
    with open(name, 'r+b') as f:
      f.truncate(os.path.getsize(name) // 2)


def test_restore_trunk_walks_back_past_a_damaged_step(rotation_run, tmp_path, caplog):
  workdir = _copy(rotation_run, tmp_path)
  _truncate_data_files(workdir, 4)
  before = _listing(workdir)
  with caplog.at_level('WARNING'):
    config, params, stats = checkpoint.restore_trunk(workdir)
  assert 'checkpoint step 4 of' in caplog.text and 'is damaged' in caplog.text
  reference = checkpoint.restore_numpy(os.path.join(workdir, 'checkpoints', '2', 'state'))
  jax.tree.map(np.testing.assert_array_equal, params, dict(reference['params']['trunk']))
  jax.tree.map(np.testing.assert_array_equal, stats, dict(reference['batch_stats']['trunk']))
  assert config.task == 'rotation'
  assert _listing(workdir) == before  # an evaluation moves nothing
  with pytest.raises(checkpoint.DamagedCheckpointError) as e:
    checkpoint.restore_trunk(workdir, step=4)
  assert re.fullmatch(r'checkpoint step 4 of .* is damaged \(.*\); readable steps: \[2\]',
                      str(e.value))
  _truncate_data_files(workdir, 2)
  with pytest.raises(checkpoint.DamagedCheckpointError, match='every checkpoint of .* is '
                     r'damaged: step 4 \(.*\); step 2 \('):
    checkpoint.restore_trunk(workdir)


def test_restore_trunk_skips_a_non_finite_step(rotation_run, tmp_path, caplog):
  workdir = _copy(rotation_run, tmp_path)
  state = checkpoint.restore_numpy(os.path.join(workdir, 'checkpoints', '4', 'state'))
  state['params']['trunk']['block1_conv']['kernel'].flat[0] = np.nan
  manager = checkpoint.make_manager(workdir)
  manager.delete(4)
  checkpoint.save(manager, 4, state, checkpoint.meta(_rotation(), 4))
  manager.close()
  with caplog.at_level('WARNING'):
    _, params, _ = checkpoint.restore_trunk(workdir)
  assert 'checkpoint step 4 of' in caplog.text and 'non-finite' in caplog.text
  assert np.isfinite(params['block1_conv']['kernel']).all()


def _eval_arrays():
  rng = np.random.RandomState(3)
  return {s: (rng.randint(0, 256, (m, 16, 16, 3)).astype(np.uint8),
              rng.randint(0, 10, m).astype(np.int32))
          for s, m in (('train', 64), ('val', 32), ('test', 33))}


def test_linear_evaluation_of_a_workdir_with_a_damaged_newest_step(rotation_run, tmp_path,
                                                                  caplog):
  """The report: configs/linear_eval.py:smoke --config.pretrained=P with P/checkpoints/6
  truncated raised AttributeError: 'NoneType' object has no attribute 'tree'."""
  from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
  workdir = _copy(rotation_run, tmp_path)
  _truncate_data_files(workdir, 4)
  c = le_configs.get_config('smoke')
  c.pretrained = workdir
  c.train.update(epochs=1, eval_every=1, decay_epochs=())
  c.mlp.enabled = c.lowshot.enabled = False
  with c.unlocked():
    c.eval.random_init_baseline = False
  with caplog.at_level('WARNING'):
    results = linear_eval.run(c, str(tmp_path / 'eval'), arrays=_eval_arrays())
  assert 'checkpoint step 4 of' in caplog.text and 'is damaged' in caplog.text
  assert results['linear']
  c.checkpoint_step = 4
  with pytest.raises(config_lib.ConfigError, match=r'step 4 .* damaged .*readable steps: \[2\]'):
    linear_eval.run(c, str(tmp_path / 'eval2'), arrays=_eval_arrays())


# ------------------------------------------------------------------ saves on a full disk


@pytest.fixture
def small_disk(tmp_path):
  """A 2 MiB tmpfs (root only; skipped elsewhere: the injected-error test covers it)."""
  path = tmp_path / 'disk'
  path.mkdir()
  if os.geteuid() != 0 or subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', 'size=2M', 'tmpfs', str(path)],
      capture_output=True).returncode != 0:
    pytest.skip('cannot mount a tmpfs here')
  try:
    yield str(path)
  finally:
    subprocess.run(['umount', '-l', str(path)], capture_output=True)


def _fill(disk, leave=8192):
  filler = os.path.join(disk, 'filler')
  with open(filler, 'wb') as f:
    f.write(b'\0' * max(shutil.disk_usage(disk).free - leave, 0))
  return filler


def _no_partial_steps(workdir):
  return not glob.glob(os.path.join(workdir, 'checkpoints', '*orbax-checkpoint-tmp*'))


# orbax's writes still in flight when a save fails call back into its closed event
# loop (expected: outside pytest, checkpoint.save's unraisable hook drops them).
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_step(small_disk):
  workdir = os.path.join(small_disk, 'w')
  manager = checkpoint.make_manager(workdir)
  small = {'w': jax.numpy.arange(10.0), 'step': jax.numpy.int32(1)}
  checkpoint.save(manager, 1, small, {'step': 1})
  filler = _fill(small_disk)
  big = {'w': jax.numpy.ones((300_000,)), 'step': jax.numpy.int32(2)}
  with pytest.raises(checkpoint.SaveError) as e:
    checkpoint.save(manager, 2, big, {'step': 2})
  message = str(e.value)
  assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
  assert '\n' not in message
  free = shutil.disk_usage(small_disk).free
  assert message.startswith(f'checkpoint step 2 could not be saved: no space left on the '
                            f'device of {workdir}/checkpoints (')
  assert f'({checkpoint._human(free)} free of 2.0 MiB)' in message
  assert 'the last good checkpoint (step 1) is intact' in message
  assert _no_partial_steps(workdir) and checkpoint.saved_steps(workdir) == [1]
  np.testing.assert_array_equal(checkpoint.restore_numpy(
      os.path.join(workdir, 'checkpoints', '1', 'state'))['w'], np.arange(10.0))
  os.remove(filler)  # space again: the same manager saves
  checkpoint.save(manager, 2, big, {'step': 2})
  assert checkpoint.saved_steps(workdir) == [1, 2]


# orbax's writes still in flight when a save fails call back into its closed event
# loop (expected: outside pytest, checkpoint.save's unraisable hook drops them).
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_an_injected_disk_full_error_is_handled_the_same(tmp_path, monkeypatch):
  # Where no tmpfs can be mounted: orbax's own write of the meta item fails with ENOSPC
  # after orbax created the step's temporary directories.
  jh = importlib.import_module('orbax.checkpoint._src.handlers.json_checkpoint_handler')
  workdir = str(tmp_path / 'w')
  manager = checkpoint.make_manager(workdir)
  checkpoint.save(manager, 1, {'w': jax.numpy.arange(3.0)}, {'step': 1})

  async def full(self, x, directory):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
  monkeypatch.setattr(jh.JsonCheckpointHandler, '_save_fn', full)
  with pytest.raises(checkpoint.SaveError, match=r'^checkpoint step 2 could not be saved: no '
                     r'space left on the device of .* free of .*\(step 1\) is intact'):
    checkpoint.save(manager, 2, {'w': jax.numpy.arange(3.0)}, {'step': 2})
  assert _no_partial_steps(workdir) and checkpoint.saved_steps(workdir) == [1]


# orbax's writes still in flight when a save fails call back into its closed event
# loop (expected: outside pytest, checkpoint.save's unraisable hook drops them).
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_training_on_a_full_disk_stops_with_one_line_and_resumes(small_disk, monkeypatch):
  workdir = os.path.join(small_disk, 'run')
  real_save, filled = checkpoint.save, []

  def save(manager, step, state, meta):
    if step == 4:  # the disk fills between the checkpoints of steps 2 and 4
      filled.append(_fill(small_disk, leave=4096))
    return real_save(manager, step, state, meta)
  monkeypatch.setattr(checkpoint, 'save', save)
  with pytest.raises(checkpoint.SaveError, match=r'^checkpoint step 4 could not be saved: no '
                     r'space left .*\(step 2\) is intact'):
    train.train_and_evaluate(_rotation(steps=6), workdir)
  assert checkpoint.saved_steps(workdir) == [2] and _no_partial_steps(workdir)
  os.remove(filled[0])
  monkeypatch.setattr(checkpoint, 'save', real_save)
  out = train.train_and_evaluate(_rotation(steps=6), workdir)  # the rerun resumes from 2
  assert out['train_history'][0]['step'] == 4 and out['step'] == 6
  assert checkpoint.saved_steps(workdir) == [2, 4, 6]


@pytest.mark.slow  # a real 400-step process on a 2 MiB disk
def test_main_prints_one_line_when_the_disk_fills(small_disk):
  workdir = os.path.join(small_disk, 'run')
  out = subprocess.run(_main_cmd(workdir, 400, every=1, extra=('--config.max_to_keep=1000',)),
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert out.returncode == 1, out.stderr[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert re.match(r'error: checkpoint step \d+ could not be saved: no space left on the '
                  rf'device of {workdir}/checkpoints \(.* free of 2\.0 MiB\)', last), last
  assert 'Traceback' not in out.stderr and 'RESOURCE_EXHAUSTED' not in out.stderr
  assert _no_partial_steps(workdir)
