"""Checkpoints with orbax `CheckpointManager` (no home-made formats).

Layout of a workdir:
  workdir/.lock                    the exclusive lock of the run using it (lock_workdir)
  workdir/config.json              the run's config (rewritten at every start)
  workdir/config_history.jsonl     one JSON line per start that changed config.json:
                                   the changed keys (old and new values), time, step
  workdir/checkpoints/<step>/state the train state: dict(params, batch_stats,
                                   opt_state, step, rng)
  workdir/checkpoints/<step>/meta  JSON: task, model, step, layout
  workdir/checkpoints/unusable/    damaged steps set aside (<step>-<reason>-<time>)
Saves are synchronous (`save` returns once the step is committed).

Checkpoint layouts (meta['layout']):
  2 (current)  params['trunk'] is the bare trunk (no logits layer); the task's head
               is params['heads'][task] (rotation's classifier: heads/rotation/logits;
               the patch tasks' embedding and fc: heads/<task>/embedding, .../fc).
  1 (absent)   ssl_jax before the task contract: the task classifier or patch
               embedding was the trunk's own logits layer (params['trunk']['logits'])
               and the patch head was params['head']. Such workdirs cannot be resumed
               (the parameter tree differs; a clear error says so); their trunk still
               loads for linear evaluation (`restore_trunk` drops the logits layer).

One run per workdir (`lock_workdir`):
  A run (training, or a linear evaluation on its own workdir) holds an exclusive
  `fcntl.flock` on workdir/.lock for its whole life; a second one fails at once with a
  ValueError naming the holder (pid, host, start time, command line, which the holder
  writes into the file). The kernel drops the lock with the process however it ends
  (kill -9 included), so a lock file left by a dead process never blocks anyone (the
  file stays; only the flock counts). Only process 0 of a multi-process job locks.
  Filesystems: local ones: as above. NFS: Linux emulates flock with a whole-file POSIX
  lock, which NFSv3 (NLM/lockd) and NFSv4 send to the server, so runs on two hosts
  exclude each other; the lock of a host that crashed is freed when the server's lease
  expires (NFSv4: ~90 s) or the client reboots (NLM); a `nolock` / `local_lock=flock`
  mount only excludes runs on the same host. A filesystem without locks (ENOLCK,
  EOPNOTSUPP: some FUSE mounts) and non-local paths (`gs://...`: object stores have no
  advisory locks) get no lock and a one-time warning saying so. Within one process the
  lock is also kept in a registry (a second lock of the same workdir is refused without
  touching the file: on NFS closing any descriptor of the file would drop the lock).

Resuming (`check_resume`, before anything is written; `config_history.jsonl` records
every accepted change). Each config key is in one class (RESUME_RULES; the most
specific entry wins; a key in no entry is refused):
  refuse  the saved state's structure or the objective: `task`, `model.*` (but
          model.dtype), the trained tasks' sections `tasks.<task>.*` (a task set: its
          members' sections and the members themselves; their pp_eval /
          eval_batch_size / eval_input / bins_cache_dir are free), `optimizer.name`,
          `optimizer.weight_decay` (the L2 term is part of the loss), `data.*` (which
          images, classes, size, source; but data_dir, val/test splits and
          skip_decode_errors), `input.pp_train` (the augmentation), `batch_size` (the
          contrastive tasks' negatives, the learning-rate scaling, the stream's
          position), `seed` (another seed is another replicate: use another workdir).
          A run that mixed two objectives would be described by neither config.
  warn    how the remaining steps optimise, not what: the learning rate and its
          schedule (optimizer.base_lr, schedule, decay_*, warmup_epochs, lr_scaling,
          lr_scale_batch_size), momentum, nesterov, LARS trust_coefficient; the run's
          length (total_steps, num_epochs, steps_per_epoch, step_rounding);
          input.shuffle_buffer (the data order); model.dtype (compute precision).
          Accepted with one WARNING line naming each key (a valid run of the same
          objective, but not one that a single config from step 0 reproduces).
  free    never reach the weights: logging, checkpoint and evaluation cadence and
          sizes, max_to_keep, data_dir, val/test splits, pp_eval, input.cache /
          prefetch / pretext_on_device (both placements compute the same), the
          distributed and linear-evaluation settings, the sections of tasks not
          trained. Accepted with an INFO line.
  A key that only one side has, inside a section both have (a setting added or removed
  by another ssl_jax version), is accepted with a warning (assumed at its default); a
  whole section only one side has (a member added or removed) follows its class.

Restoring: "the config does not match" and "the files are damaged" are told apart.
Before a step is restored its saved structure (orbax metadata: tree paths, shapes,
dtypes) is compared with the state the config builds; a difference is a
`StructureError` naming the paths and the config keys that likely caused it, and
nothing is set aside or written. Only a step whose metadata or data cannot be read
(truncated, garbled) or which holds non-finite values is damage: training sets it aside
(checkpoints/unusable/) and walks back to the next older step; `restore_trunk` (the
evaluations) walks back with a warning and moves nothing (the pretext workdir may be
read-only or in use).

Saving: a save that fails on the filesystem (disk full, quota, I/O error) raises
`SaveError`, one line naming the directory, the free space and the last good step; the
partial step directory is removed and the committed steps stay intact.
"""
import errno
import fcntl
import json
import logging as std_logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'
LOCK_FILE = '.lock'
HISTORY_FILE = 'config_history.jsonl'
LAYOUT = 2


class LayoutError(ValueError):
  """A workdir written with another checkpoint layout."""


class StructureError(ValueError):
  """A saved step whose structure (tree paths, shapes, dtypes) differs from the state
  the config builds: the config does not match the run; nothing is set aside."""


class DamagedCheckpointError(ValueError):
  """A saved step whose files cannot be read (or hold non-finite values)."""


class SaveError(OSError):
  """A checkpoint that could not be written (disk full, quota, I/O error).

  str() is one line naming the directory, the free space and the last good step;
  `errno` is set when known (errno.ENOSPC for a full disk). The partial step is removed.
  """


def meta(config, step, members=None):
  """The JSON saved beside every state (a set of several tasks: its member names too)."""
  out = {'task': config.task, 'step': int(step), 'model': config.model.to_dict(),
         'layout': LAYOUT}
  if members:
    out['members'] = list(members)
  return out


_HANDLER_REGISTERED = []


def _register_array_handler():
  """Saves replicated arrays from one replica, not split over all devices.

  orbax's default "replica-parallel" saving slices every replicated array into one
  piece per device, compiling one small XLA program per piece: it made the first
  save block the loop for 6-22 s on a CPU and later ones 0.2-0.6 s. Our state is
  replicated (pmap semantics), so one replica holds everything. Process-wide.
  """
  if not _HANDLER_REGISTERED:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    _HANDLER_REGISTERED.append(True)


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


# ------------------------------------------------------------------ one run per workdir

_HELD = {}      # realpath of a lock file -> the WorkdirLock this process holds on it
_WARNED = set()


def _warn_once(key, message, *args):
  if key not in _WARNED:
    _WARNED.add(key)
    logging.warning(message, *args)


class WorkdirLock:
  """The exclusive lock of a workdir (see `lock_workdir`); a context manager.

  `release()` is idempotent; the lock is also released when the object is collected
  and, by the kernel, when the process ends. `held` is False for the no-op lock of a
  path that cannot be locked (non-local, no lock support, process > 0).
  """

  def __init__(self, path=None, fd=None):
    self.path, self._fd = path, fd

  @property
  def held(self):
    return self._fd is not None

  def release(self):
    fd, self._fd = self._fd, None
    if fd is None:
      return
    _HELD.pop(self.path, None)
    try:
      os.ftruncate(fd, 0)  # a free lock names no holder
    except OSError:
      pass
    try:
      fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
      pass
    finally:
      os.close(fd)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()
    return False

  def __del__(self):
    try:
      self.release()
    except Exception:  # pylint: disable=broad-except
      pass  # (interpreter shutdown: the kernel frees the lock anyway)

  def __repr__(self):
    return f'WorkdirLock({self.path!r}, held={self.held})'


def _holder_text(fd):
  """'pid N on HOST, started T: COMMAND' from a lock file's contents ('' if unreadable)."""
  try:
    info = json.loads(os.pread(fd, 65536, 0).decode('utf-8', 'replace') or '{}')
  except (OSError, ValueError):
    return ''
  if not isinstance(info, dict) or 'pid' not in info:
    return ''
  cmd = ' '.join(str(info.get('cmd', '')).split())
  if len(cmd) > 240:
    cmd = cmd[:240] + '...'
  return (f"pid {info['pid']} on {info.get('host', '?')}, started "
          f"{info.get('start', '?')}: {cmd}")


_NO_LOCK_SUPPORT = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
if hasattr(errno, 'ENOTSUP'):
  _NO_LOCK_SUPPORT.add(errno.ENOTSUP)


def lock_workdir(workdir):
  """Takes the exclusive lock of `workdir` for this run (see the module docstring).

  Creates workdir if needed; writes this process's pid, host, start time and command
  line into workdir/.lock. Hold the returned lock for the run's life and `release()`
  it at the end (or use it as a context manager); the kernel frees it if the process
  dies. Only process 0 of a multi-process job locks (the others get a no-op lock).

  Args:
    workdir: a directory path; a URL (`scheme://...`) gets no lock (one-time warning).
  Returns:
    a `WorkdirLock` (`.held` False when no lock could be taken: URL, no lock support).
  Raises:
    ValueError (one line) naming the holder when another run holds the lock, or when
      this process already holds it.
    OSError when the workdir or its lock file cannot be created.
  """
  workdir = str(workdir)
  if '://' in workdir:
    _warn_once(('url', workdir.split('://')[0]),
               'no lock on %s: object stores have no advisory locks, so two runs on one '
               'workdir at once are not detected there', workdir)
    return WorkdirLock()
  if jax.process_index() != 0:
    return WorkdirLock()
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(os.path.realpath(workdir), LOCK_FILE)
  if path in _HELD:
    raise ValueError(f'{workdir} is already in use by this process (pid {os.getpid()}): '
                     'release its lock (train_loop does at its end) before starting another '
                     'run on it')
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      holder = _holder_text(fd) or 'a process that has not written its details yet'
      os.close(fd)
      raise ValueError(
          f'{workdir} is in use by another run ({holder}); two runs on one workdir would '
          'overwrite each other\'s checkpoints: wait for it to end or stop it, or use '
          'another --workdir') from None
    os.close(fd)
    if e.errno in _NO_LOCK_SUPPORT:
      _warn_once(('nolock', os.path.dirname(path)),
                 'the filesystem of %s does not support locks (%s): two runs on one workdir '
                 'at once are not detected there', workdir, os.strerror(e.errno))
      return WorkdirLock()
    raise OSError(f'cannot lock {path}: {e.strerror or e}') from None
  info = {'pid': os.getpid(), 'host': socket.gethostname(),
          'start': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
          'cmd': ' '.join([os.path.basename(sys.executable)] + sys.argv)}
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + '\n').encode(), 0)
    os.fsync(fd)
  except OSError:
    pass  # the flock is what excludes; the details only improve the message
  lock = WorkdirLock(path, fd)
  _HELD[path] = lock
  return lock


# ------------------------------------------------------------------ saving


def make_manager(workdir, max_to_keep=3):
  """A CheckpointManager over workdir/checkpoints with synchronous saves.

  Synchronous: `save` returns once the step is committed (its directory renamed from
  the temporary name), so a run killed at any time loses at most one checkpoint
  interval. With orbax's asynchronous saves the newest step stayed uncommitted for
  1-3 s (10-20 CPU steps) and a kill soon after a save lost ~1.5 intervals.
  Directories are created synchronously too: an unwritable folder fails at once
  instead of leaving orbax threads waiting for minutes.
  """
  _register_array_handler()
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False,
          async_options=ocp.AsyncOptions(create_directories_asynchronously=False)))


_DISK_FULL = {errno.ENOSPC: 'no space left on the device',
              errno.EDQUOT: 'the disk quota is exceeded'}


def _save_errno(e):
  """errno of a failed save: OSError's, or the os_error_code tensorstore puts in its text."""
  for x in (e, e.__cause__, e.__context__):
    if isinstance(x, OSError) and x.errno:
      return x.errno
  m = re.search(r"os_error_code='?(\d+)", str(e))
  if m:
    return int(m.group(1))
  if 'No space left on device' in str(e):
    return errno.ENOSPC
  return None


def _is_filesystem_error(e):
  return isinstance(e, OSError) or _save_errno(e) is not None or 'RESOURCE_EXHAUSTED' in str(e)


def _human(n):
  for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
    if abs(n) < 1024 or unit == 'TiB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
    n /= 1024


def _partial_dirs(directory, step):
  try:
    return sorted(os.path.join(directory, n) for n in os.listdir(directory)
                  if n.startswith(f'{step}.orbax-checkpoint-tmp'))
  except OSError:
    return []


def _snapshot(paths):
  out = []
  for p in paths:
    for root, _, files in os.walk(p):
      for f in files:
        try:
          st = os.stat(os.path.join(root, f))
          out.append((root, f, st.st_size, st.st_mtime_ns))
        except OSError:
          pass
  return sorted(out)


def _remove_partial(directory, step, settle_s=0.3, timeout_s=30.0):
  """Removes orbax's temporary directories of `step` (`<step>.orbax-checkpoint-tmp*`).

  When one item's write fails, orbax raises while the other items' writes are still in
  flight (they are not awaited, and they recreate files): the directories are removed
  once nothing in them changed for `settle_s`, until none comes back (<= timeout_s).
  """
  deadline = time.time() + timeout_s
  while True:
    paths = _partial_dirs(directory, step)
    if not paths:
      return
    before = _snapshot(paths)
    time.sleep(settle_s)
    if _snapshot(paths) != before and time.time() < deadline:
      continue  # still being written
    for p in paths:
      shutil.rmtree(p, ignore_errors=True)
    time.sleep(settle_s)
    if time.time() >= deadline:
      for p in _partial_dirs(directory, step):
        shutil.rmtree(p, ignore_errors=True)
      return


class _DropReported(std_logging.Filter):
  """Drops orbax's and asyncio's copies of a filesystem error that SaveError reports
  (orbax logs a long traceback from its writer thread; asyncio logs the orphaned write
  tasks when they are collected)."""

  def filter(self, record):
    text = str(record.msg)
    if record.exc_info and record.exc_info[1] is not None:
      text += str(record.exc_info[1])
    elif record.args:
      text += ' '.join(str(a) for a in record.args)
    from_orbax = '/orbax/' in record.pathname or record.name == 'asyncio'
    return not (from_orbax and record.levelno >= std_logging.ERROR and
                any(m in text for m in _FILESYSTEM_MARKERS))


# What orbax's and tensorstore's messages of a failed write contain.
_FILESYSTEM_MARKERS = ('RESOURCE_EXHAUSTED', 'os_error_code', '.orbax-checkpoint-tmp',
                       'No space left on device', 'Disk quota exceeded', '[Errno ')


_DROP_REPORTED = _DropReported()


def _quiet_closed_loop_callbacks():
  """Drops the unraisable RuntimeError('Event loop is closed') of a failed save.

  When one item's write fails, orbax closes its event loop while the other items'
  tensorstore writes are in flight; each of them then calls back into the closed loop
  and Python prints a traceback per call (no "Exception ignored" header). SaveError has
  reported the failure: these are dropped, every other unraisable is reported as before.
  Installed once per process, after the first failed save.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'ssl_jax_quiet', False):
    return

  def hook(unraisable):
    if (isinstance(unraisable.exc_value, RuntimeError) and
        str(unraisable.exc_value) == 'Event loop is closed'):
      return
    previous(unraisable)
  hook.ssl_jax_quiet = True
  sys.unraisablehook = hook


def save(manager, step, state, meta):
  """Saves (state, meta) as `step` and returns once it is committed on disk.

  Raises:
    SaveError (one line: what failed, the directory, its free space, the last good
      step) when the filesystem fails (disk full, quota, I/O); the partial step
      directory is removed first and the committed steps are left as they were.
    RuntimeError if orbax declined to save (e.g. a step >= this one already exists).
  """
  directory = str(manager.directory)
  loggers = [std_logging.getLogger('absl'), std_logging.getLogger('asyncio')]
  for lg in loggers:
    lg.addFilter(_DROP_REPORTED)
  try:
    saved = manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    if _is_filesystem_error(e):
      _quiet_closed_loop_callbacks()
    if jax.process_index() == 0:
      _remove_partial(directory, step)
    try:
      manager.reload()
    except Exception:  # pylint: disable=broad-except
      pass
    if not _is_filesystem_error(e):
      raise
    # The orphaned write tasks are collected later: keep asyncio's filter on.
    loggers.remove(std_logging.getLogger('asyncio'))
    line, code = _save_error_line(directory, step, e)
    err = SaveError(line)
    err.errno = code
    raise err from e
  finally:
    for lg in loggers:
      lg.removeFilter(_DROP_REPORTED)
  if not saved:
    raise RuntimeError(f'checkpoint of step {step} was not saved: {manager.directory} '
                       f'already holds steps {sorted(manager.all_steps())}')


def _save_error_line(directory, step, e):
  code = _save_errno(e)
  good = [s for s in saved_steps(os.path.dirname(directory)) if s != step]
  last = (f'the last good checkpoint (step {good[-1]}) is intact' if good else
          'no checkpoint was saved before')
  try:
    usage = shutil.disk_usage(directory)
    space = f'{_human(usage.free)} free of {_human(usage.total)}'
  except OSError:
    space = 'free space unknown'
  if code in _DISK_FULL:
    line = (f'checkpoint step {step} could not be saved: {_DISK_FULL[code]} of '
            f'{directory} ({space}); the partial step was removed and {last}: free space '
            '(or lower --config.max_to_keep, or use another --workdir) and run the same '
            'command to resume')
  else:
    first = (str(e).splitlines() or [type(e).__name__])[0][:300]
    line = (f'checkpoint step {step} could not be saved to {directory} ({space}): '
            f'{type(e).__name__}: {first}; the partial step was removed and {last}')
  return line, code


# ------------------------------------------------------------------ reading steps


def _layout(path, step):
  """meta['layout'] of a saved step (1 when the meta predates layouts)."""
  meta_path = os.path.join(path, str(step), 'meta', 'metadata')
  try:
    with open(meta_path) as f:
      return int(json.load(f).get('layout', 1))
  except (OSError, ValueError):
    return 1


def saved_steps(workdir):
  """Sorted steps with a directory in workdir/checkpoints ([] if none or no folder)."""
  path = checkpoint_dir(workdir)
  if not os.path.isdir(path):
    return []
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def check_writable(workdir):
  """Creates workdir/checkpoints if needed and proves it writable (one-line OSError).

  A probe directory and file (dot-prefixed: never read as a step) are created,
  written, synced and removed; root ignores permission bits, so this is the only
  reliable test (an immutable or read-only folder fails here).
  """
  path = checkpoint_dir(workdir)
  try:
    os.makedirs(path, exist_ok=True)
    probe_dir = tempfile.mkdtemp(prefix='.write_probe_', dir=path)
    probe = os.path.join(probe_dir, 'probe')
    with open(probe, 'wb') as f:
      f.write(b'\0' * 4096)
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
    os.rmdir(probe_dir)
  except OSError as e:
    raise OSError(f'checkpoint directory {path} is not writable: '
                  f'{type(e).__name__}: {e.strerror or e}') from None


def _all_finite(tree):
  for x in jax.tree.leaves(tree):
    a = np.asarray(jax.device_get(x))
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
      return False
  return True


def set_aside(manager, step, reason):
  """Moves a step that cannot be restored to checkpoints/unusable/<step>-<reason>.

  Kept for inspection, out of orbax's view (a bad newest step would otherwise also
  block saving that step again: orbax skips steps <= its latest).
  """
  src = os.path.join(str(manager.directory), str(step))
  dst_dir = os.path.join(str(manager.directory), 'unusable')
  os.makedirs(dst_dir, exist_ok=True)
  dst = os.path.join(dst_dir, f'{step}-{reason}-{int(time.time())}')
  os.rename(src, dst)
  manager.reload()
  return dst


def _key_name(k):
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _path_str(path):
  return '/'.join(path)


def _first_line(e):
  text = str(e).strip()
  return f'{type(e).__name__}: {text.splitlines()[0][:200]}' if text else type(e).__name__


def saved_structure(state_dir):
  """{path: (shape, dtype name)} of the arrays of a saved pytree (orbax metadata only).

  Paths are '/'-joined keys (dict keys, sequence indices, namedtuple fields), as
  `structure_of` names a live tree's leaves.
  Raises:
    DamagedCheckpointError when the metadata cannot be read (truncated or garbled
      files: orbax then returns no metadata at all).
  """
  try:
    with open(os.path.join(state_dir, '_METADATA')) as f:
      tree = json.load(f)['tree_metadata']
    paths = [tuple(str(k['key']) for k in v['key_metadata']) for v in tree.values()
             if not v['value_metadata'].get('skip_deserialize', False)]
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise DamagedCheckpointError(f'its tree metadata cannot be read ({_first_line(e)})') \
        from None
  try:
    item = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata
    leaves = jax.tree_util.tree_flatten_with_path(
        item.tree if hasattr(item, 'tree') else item)[0]
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpointError(f'its array metadata cannot be read ({_first_line(e)})') \
        from None
  if item is None:
    raise DamagedCheckpointError('its array metadata cannot be read (orbax finds none)')
  arrays = {}
  for path, md in leaves:
    arrays[tuple(_key_name(k) for k in path)] = (
        tuple(getattr(md, 'shape', None) or ()),
        _dtype_name(getattr(md, 'dtype', None)))
  out = {}
  for p in paths:
    if p not in arrays:
      raise DamagedCheckpointError(f'its array metadata lacks {_path_str(p)}')
    out[_path_str(p)] = arrays[p]
  return out


def _dtype_name(d):
  if d is None:
    return None
  try:
    return str(np.dtype(d))
  except TypeError:
    return str(d)


def structure_of(tree):
  """{path: (shape, dtype name)} of a live or abstract pytree's array leaves."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[_path_str(tuple(_key_name(k) for k in path))] = (
        tuple(np.shape(x)), _dtype_name(getattr(x, 'dtype', None)))
  return out


def structure_differences(saved, wanted):
  """['path: what differs', ...] between two `saved_structure` / `structure_of` dicts."""
  diffs = []
  for p in sorted(set(saved) | set(wanted)):
    if p not in wanted:
      diffs.append(f'{p}: saved, not in the new state')
    elif p not in saved:
      diffs.append(f'{p}: new, not saved')
    else:
      (sa, da), (sb, db) = saved[p], wanted[p]
      if sa != sb:
        diffs.append(f'{p}: shape {sa} saved, {sb} now')
      elif da is not None and db is not None and da != db:
        diffs.append(f'{p}: dtype {da} saved, {db} now')
  return diffs


def _likely_causes(diffs, workdir, config):
  """The config keys that likely caused structure differences (a short phrase)."""
  if config is not None and os.path.exists(os.path.join(workdir, 'config.json')):
    try:
      changed = sorted((d for d in resume_differences(read_config(workdir), config,
                                                      all_sections=True) if d[3] != FREE),
                       key=lambda d: d[3] != REFUSE)  # the refused keys first
    except (OSError, ValueError):
      changed = []
    if changed:
      shown = ', '.join(f'{k} {a!r} -> {b!r}' for k, a, b, _ in changed[:4])
      return f'config keys changed since the saved run: {shown}'
  parts = set()
  for d in diffs:
    path = d.split(':')[0].split('/')
    if 'trunk' in path:
      parts.add('config.model')
    if 'heads' in path and path.index('heads') + 1 < len(path):
      t = path[path.index('heads') + 1]
      parts.add(f'config.tasks.{t}' + (' or config.data.num_classes' if t == 'supervised'
                                        else ''))
    if path[0] == 'opt_state' and 'trunk' not in path and 'heads' not in path:
      parts.add('config.optimizer')
  if not parts:
    parts.add('config.optimizer' if all(d.startswith('opt_state') for d in diffs)
              else 'the task or model settings')
  return 'likely cause: ' + ' / '.join(sorted(parts))


def check_structure(step_dir, abstract_state, workdir=None, config=None):
  """StructureError (one line) if the state saved in `step_dir` cannot take `abstract_state`.

  Raises:
    StructureError naming up to 4 differing paths and the likely config keys.
    DamagedCheckpointError when the saved metadata cannot be read.
  """
  diffs = structure_differences(saved_structure(os.path.join(step_dir, 'state')),
                                structure_of(abstract_state))
  if diffs:
    step = os.path.basename(step_dir.rstrip('/'))
    more = f' (and {len(diffs) - 4} more)' if len(diffs) > 4 else ''
    where = workdir or os.path.dirname(os.path.dirname(step_dir))
    raise StructureError(
        f'checkpoint step {step} of {where} does not match the state this config builds: '
        f'{"; ".join(diffs[:4])}{more} ({_likely_causes(diffs, where, config)}); nothing '
        'was changed: use the saved settings or a new --workdir')


def restore_latest(manager, abstract_state, config=None):
  """Restores the newest usable checkpoint onto `abstract_state`'s shardings, or None.

  Newest first. Each step's saved structure is first compared with `abstract_state`
  (a mismatch is the config's fault, not the files': StructureError, nothing set
  aside). A step whose files cannot be read (truncated or garbled) or which holds a
  non-finite value (params, batch_stats, opt_state) is set aside with a warning naming
  it, and the next older one is tried.

  Args:
    manager: from `make_manager`.
    abstract_state: the state the config builds (`abstract_of(state)`).
    config: the new config, optional: a StructureError then names the changed keys.
  Raises:
    LayoutError for a workdir of an older checkpoint layout (see the module docstring).
    StructureError when a step does not match the state (before anything is written).
  """
  directory = str(manager.directory)
  workdir = os.path.dirname(directory)
  for step in sorted(manager.all_steps(), reverse=True):
    layout = _layout(directory, step)
    if layout != LAYOUT:
      raise LayoutError(
          f'{manager.directory} holds checkpoints of layout {layout} (the classifier '
          f'inside the trunk), this ssl_jax writes layout {LAYOUT} (trunk and task heads '
          'apart): the run cannot be resumed; start a new workdir (its trunk still loads '
          'for linear evaluation).')
    try:
      check_structure(os.path.join(directory, str(step)), abstract_state, workdir, config)
      try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))['state']
      except Exception as e:  # pylint: disable=broad-except
        # The structure matched, so this is the files: orbax raises bare Exception,
        # ValueError, KeyError, JSON or Unicode errors depending on which is damaged.
        raise DamagedCheckpointError(_first_line(e)) from None
    except DamagedCheckpointError as e:
      where = set_aside(manager, step, 'unreadable') if jax.process_index() == 0 else '-'
      logging.warning('checkpoint step %d cannot be read (%s); skipped (moved to %s), '
                      'trying an older one', step, e, where)
      continue
    if not _all_finite(restored):
      where = set_aside(manager, step, 'nonfinite') if jax.process_index() == 0 else '-'
      logging.warning('checkpoint step %d holds non-finite values; skipped (moved to %s), '
                      'trying an older one', step, where)
      continue
    return restored
  return None


def abstract_of(tree):
  """ShapeDtypeStructs with the shardings of a (device-resident) pytree."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


# ------------------------------------------------------------------ resuming: config keys

REFUSE, WARN, FREE = 'refuse', 'warn', 'free'

# (key or section, class, why). The most specific entry wins; `tasks` is special-cased
# (`resume_rule`). Every key of every preset has a class (tests/test_checkpoint_resume).
RESUME_RULES = (
    ('task', REFUSE, 'the trained task'),
    ('model', REFUSE, 'the architecture: what the parameters are'),
    ('model.dtype', WARN, 'compute precision: the same parameters, another trajectory'),
    ('optimizer', WARN, 'how the remaining steps optimise (learning rate, schedule, '
                        'momentum, trust coefficient), not what'),
    ('optimizer.name', REFUSE, "the optimizer state's structure"),
    ('optimizer.weight_decay', REFUSE, 'part of the objective (the L2 term)'),
    ('data', REFUSE, 'the training data (which images, classes, size, source)'),
    ('data.data_dir', FREE, 'where the same data is read from'),
    ('data.val_split', FREE, 'evaluation only'),
    ('data.test_split', FREE, 'evaluation only'),
    ('data.skip_decode_errors', FREE, 'drops only images that cannot be trained on'),
    ('data.arrays_dir', FREE, 'where the same data is read from (prepared splits)'),
    ('evals', FREE, 'the evaluators during training (monitor): they never reach the weights'),
    ('input', FREE, 'how the input is fed (cache, prefetch, placement: the same values)'),
    ('input.pp_train', REFUSE, 'the augmentation: part of the objective'),
    ('input.shuffle_buffer', WARN, 'the data order from the resumed step on'),
    ('batch_size', REFUSE, "the contrastive tasks' negatives, the learning-rate scaling "
                           "and the data stream's position"),
    ('seed', REFUSE, 'the replicate: another seed is another run (use another workdir)'),
    ('num_epochs', WARN, 'the length of the run and the schedule over it'),
    ('total_steps', WARN, 'the length of the run and the schedule over it'),
    ('steps_per_epoch', WARN, 'the length of the run and the schedule over it'),
    ('step_rounding', WARN, 'the length of the run and the schedule over it'),
    ('eval_batch_size', FREE, 'evaluation only'),
    ('max_eval_batches', FREE, 'evaluation only'),
    ('eval_every_steps', FREE, 'evaluation only'),
    ('precise_bn_batches', FREE, 'evaluation only (the checkpointed averages are kept)'),
    ('log_every_steps', FREE, 'logging'),
    ('checkpoint_every_steps', FREE, 'checkpoint cadence'),
    ('max_to_keep', FREE, 'checkpoint retention'),
    ('job', FREE, 'the job kind'),
    ('run_linear_eval', FREE, 'the evaluation after training'),
    ('linear_eval_preset', FREE, 'the evaluation after training'),
    ('linear_eval', FREE, 'the evaluation after training'),
    ('distributed', FREE, 'how processes connect'),
)
_RULES = {k: (c, why) for k, c, why in RESUME_RULES}
# Leaves of a trained task's section (or a task-set member's) that never reach the
# weights: its evaluation stream, the linear evaluation's input, a cache location.
TASK_FREE_LEAVES = ('eval_batch_size', 'pp_eval', 'eval_input', 'bins_cache_dir')


def resume_rule(key, task_sections=()):
  """(class, why) of a flattened config key: class REFUSE, WARN or FREE (see the
  module docstring); `task_sections`: the trained tasks' section names."""
  parts = key.split('.')
  if parts[0] == 'tasks':
    if len(parts) < 2 or parts[1] not in task_sections:
      return FREE, 'the settings of a task not trained'
    if parts[-1] in TASK_FREE_LEAVES:
      return FREE, "a task's evaluation stream or cache location"
    return REFUSE, "the trained task's settings (its objective and head)"
  for i in range(len(parts), 0, -1):
    rule = _RULES.get('.'.join(parts[:i]))
    if rule is not None:
      return rule
  return REFUSE, 'a key without a resume class (RESUME_RULES in ssl_jax/checkpoint.py)'


def _flat(d, prefix=''):
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(_flat(v, key + '.'))
    else:
      out[key] = tuple(v) if isinstance(v, list) else v
  return out


def _config_dict(c):
  if hasattr(c, 'to_json_best_effort'):
    return json.loads(c.to_json_best_effort())
  return json.loads(json.dumps(c.to_dict() if hasattr(c, 'to_dict') else dict(c),
                               default=str))


_ABSENT = '<absent>'


def _known_defaults():
  """{flattened key: value} of settings added by later ssl_jax versions whose default
  changes nothing (the data axes off, no prepared arrays, the training monitor off): a
  run saved before they existed resumes with them at these values."""
  from ssl_jax.data import axes  # pylint: disable=g-import-not-at-top
  out = {f'data.subset.{k}': v for k, v in axes.SUBSET_DEFAULTS.items()}
  out.update({f'data.pool.{k}': v for k, v in axes.POOL_DEFAULTS.items()})
  out['data.arrays_dir'] = ''
  return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


def resume_differences(saved, config, task_sections=None, *, all_sections=False):
  """[(key, saved value, new value, class)] of every flattened key that differs.

  `class` is REFUSE, WARN or FREE (`resume_rule`). A key only one side has, in a
  section both have (a setting another ssl_jax version added or removed), is WARN.
  For `tasks`, the sections of the trained tasks count: config.task's and
  `task_sections` (all of them with all_sections).
  """
  a, b = _flat(_config_dict(saved)), _flat(_config_dict(config))
  sections = {config.task, *(task_sections or ())}
  if all_sections:
    sections |= {k.split('.')[1] for k in set(a) | set(b)
                 if k.startswith('tasks.') and k.count('.') >= 2}

  def has_section(flat, key):
    parent = key.rpartition('.')[0]
    return not parent or any(k.startswith(parent + '.') for k in flat)

  known = _known_defaults()
  diffs = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, _ABSENT), b.get(k, _ABSENT)  # (_flat made lists tuples)
    if va == vb:
      continue
    if k in known and _ABSENT in (va, vb) and (va if vb == _ABSENT else vb) == known[k]:
      continue  # a section added later (e.g. data.subset), present at its no-op value
    cls = resume_rule(k, sections)[0]
    if cls == REFUSE and (k not in a or k not in b) and has_section(a, k) and has_section(b, k):
      cls = WARN  # a setting of another ssl_jax version, assumed at its default
    diffs.append((k, va, vb, cls))
  return diffs


def structural_differences(saved, config, task_sections=None):
  """[(key, saved value, new value)] of the keys that differ and forbid resuming (class
  REFUSE, see `resume_rule`). For `tasks`, only the sections of the trained tasks count:
  config.task's and `task_sections` (a task set's member tasks)."""
  return [(k, va, vb) for k, va, vb, cls in resume_differences(saved, config, task_sections)
          if cls == REFUSE]


def check_resume(workdir, config, task_set=None):
  """Refuses (ValueError naming the keys) to resume `workdir` with a config of another run.

  Call it before anything is written. A workdir with config.json and at least one
  checkpoint is resumed; the classes of the keys that differ (module docstring,
  RESUME_RULES) decide: any REFUSE key is a one-line ValueError naming each key and
  both values; WARN keys are accepted with one WARNING line; FREE keys with an INFO
  line. For a task set (`task_set`: a `tasks.TaskSet`) the member tasks' sections count
  as trained sections, those of the saved run's members too.

  Returns:
    [(key, saved value, new value, class)] of the accepted differences ([] for a new
    workdir).
  Raises:
    ValueError naming the refused keys.
  """
  path = os.path.join(workdir, 'config.json')
  if not (os.path.exists(path) and saved_steps(workdir)):
    return []
  sections = [m.task.name for m in task_set.members] if task_set is not None else []
  saved = read_config(workdir)
  if sections and 'tasks' in saved:  # the saved run's member tasks count too
    saved_members = saved.tasks.get(config.task, {}).get('members', {})
    sections += [v.get('task', k) for k, v in saved_members.items()
                 if hasattr(v, 'get')]
  diffs = resume_differences(saved, config, sections)
  refused = [d for d in diffs if d[3] == REFUSE]
  if refused:
    shown = '; '.join(f'{k}: {a!r} -> {b!r}' for k, a, b, _ in refused[:6])
    more = f' (and {len(refused) - 6} more)' if len(refused) > 6 else ''
    why = sorted({resume_rule(k, sections + [config.task])[1] for k, *_ in refused[:6]})
    raise ValueError(f'{workdir} holds a run with other settings, which cannot be resumed '
                     f'with this config: {shown}{more} (they change {"; ".join(why)}). Use a '
                     'new --workdir, or the saved values.')
  warned = [d for d in diffs if d[3] == WARN]
  if warned:
    logging.warning('resuming %s with changed settings: %s (accepted: they change how the '
                    'rest of the run trains, not its objective; %s records the change)',
                    workdir, '; '.join(f'{k}: {a!r} -> {b!r}' for k, a, b, _ in warned),
                    HISTORY_FILE)
  free = [d for d in diffs if d[3] == FREE]
  if free:
    logging.info('resuming %s with changed logging/evaluation settings: %s', workdir,
                 '; '.join(f'{k}: {a!r} -> {b!r}' for k, a, b, _ in free))
  return diffs


def write_config(workdir, config):
  """Writes workdir/config.json (atomically); a change of it is appended to
  workdir/config_history.jsonl (time, latest saved step, {key: [old, new]})."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'config.json')
  text = config.to_json_best_effort(indent=2)
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = _flat(json.load(f))
    except (OSError, ValueError):
      old = {}
    new = _flat(json.loads(text))
    changes = {k: [old.get(k, _ABSENT), new.get(k, _ABSENT)] for k in sorted(set(old) | set(new))
               if old.get(k, _ABSENT) != new.get(k, _ABSENT)}
    if changes:
      steps = saved_steps(workdir)
      entry = {'time': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
               'step': steps[-1] if steps else None, 'changes': changes}
      with open(os.path.join(workdir, HISTORY_FILE), 'a') as f:
        f.write(json.dumps(entry, default=str) + '\n')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def read_config(workdir):
  """The ConfigDict of workdir/config.json (FileNotFoundError / ValueError naming it)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} does not exist: {workdir!r} is not a ssl_jax workdir '
        '(expected config.json and checkpoints/ from a pretext run).')
  with open(path) as f:
    try:
      return ml_collections.ConfigDict(json.load(f))
    except ValueError as e:
      raise ValueError(f'{path} is not valid JSON ({e})') from None


# ------------------------------------------------------------------ evaluation


def _load_trunk_state(path, step):
  """The state of `step` as host numpy (DamagedCheckpointError if unreadable or
  non-finite)."""
  state = restore_numpy(os.path.join(path, str(step), 'state'))
  if not _all_finite(state):
    raise DamagedCheckpointError('it holds non-finite values')
  return state


def restore_trunk(workdir, step=None):
  """The frozen trunk of a pretext run, for evaluation.

  The newest readable step (or `step`). A damaged step (unreadable files, non-finite
  values) is skipped with a warning naming it, and the next older one is used; nothing
  in the workdir is moved or written (it may be read-only or in use by a training run).

  Returns:
    (config of the pretext run, trunk params, trunk batch_stats) as host numpy
    pytrees (params['trunk'] and batch_stats['trunk'] of the task model).
  Raises:
    FileNotFoundError naming the path when the workdir or checkpoint is missing.
    DamagedCheckpointError (a ValueError, one line) when `step` is damaged (naming the
      readable steps) or every step is.
  """
  config = read_config(workdir)
  path = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no checkpoints in {path}')
  with ocp.CheckpointManager(path) as manager:
    steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f'no checkpoint saved yet in {path}')
  if step is not None and step not in steps:
    raise FileNotFoundError(f'{path} has no checkpoint of step {step}; available steps: '
                            f'{steps}')
  state, damaged = None, []
  for s in ([step] if step is not None else reversed(steps)):
    try:
      state = _load_trunk_state(path, s)
      break
    except DamagedCheckpointError as e:
      damaged.append((s, e))
      if step is None:
        logging.warning('checkpoint step %d of %s is damaged (%s); using an older one',
                        s, path, e)
  if state is None:
    if step is not None:
      good = []
      for s in steps:  # (an error path: reading the others is worth its time)
        if s != step:
          try:
            _load_trunk_state(path, s)
            good.append(s)
          except DamagedCheckpointError:
            pass
      raise DamagedCheckpointError(
          f'checkpoint step {step} of {path} is damaged ({damaged[0][1]}); readable steps: '
          f'{good or "none"}')
    raise DamagedCheckpointError(f'every checkpoint of {path} is damaged: ' + '; '.join(
        f'step {s} ({e})' for s, e in damaged))
  step = s
  params = dict(state['params']['trunk'])
  batch_stats = state.get('batch_stats', {}).get('trunk', {})
  if _layout(path, step) == 1:
    params.pop('logits', None)  # Layout 1: the task's classifier / patch embedding.
  return config, params, batch_stats


def restore_numpy(state_dir):
  """A saved pytree as host numpy arrays, whatever mesh saved it (no target needed).

  Raises:
    DamagedCheckpointError (one line) when its metadata or data cannot be read.
  """
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    item = checkpointer.metadata(state_dir).item_metadata
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpointError(f'its metadata cannot be read ({_first_line(e)})') from None
  if item is None:  # (orbax logs why and returns none when its files are damaged)
    raise DamagedCheckpointError('its metadata cannot be read (orbax finds none)')
  tree = item.tree if hasattr(item, 'tree') else item
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  try:
    return checkpointer.restore(state_dir,
                                args=ocp.args.PyTreeRestore(restore_args=restore_args))
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpointError(f'its data cannot be read ({_first_line(e)})') from None
