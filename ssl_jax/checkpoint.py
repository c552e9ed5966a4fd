"""Checkpoints with orbax `CheckpointManager` (no home-made formats).

Layout of a workdir:
  workdir/config.json              the run's config (written once, at start)
  workdir/checkpoints/<step>/state the train state: dict(params, batch_stats,
                                   opt_state, step, rng)
  workdir/checkpoints/<step>/meta  JSON: task, model, step, layout
Saves are asynchronous; `close()` waits for them.

Checkpoint layouts (meta['layout']):
  2 (current)  params['trunk'] is the bare trunk (no logits layer); the task's head
               is params['heads'][task] (rotation's classifier: heads/rotation/logits;
               the patch tasks' embedding and fc: heads/<task>/embedding, .../fc).
  1 (absent)   ssl_jax before the task contract: the task classifier or patch
               embedding was the trunk's own logits layer (params['trunk']['logits'])
               and the patch head was params['head']. Such workdirs cannot be resumed
               (the parameter tree differs; a clear error says so); their trunk still
               loads for linear evaluation (`restore_trunk` drops the logits layer).
"""
import json
import os
import tempfile
import time

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'
LAYOUT = 2


class LayoutError(ValueError):
  """A workdir written with another checkpoint layout."""


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


def save(manager, step, state, meta):
  """Saves (state, meta) as `step` and returns once it is committed on disk.

  Raises:
    RuntimeError if orbax declined to save (e.g. a step >= this one already exists).
  """
  saved = manager.save(int(step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()
  if not saved:
    raise RuntimeError(f'checkpoint of step {step} was not saved: {manager.directory} '
                       f'already holds steps {sorted(manager.all_steps())}')


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


def restore_latest(manager, abstract_state):
  """Restores the newest usable checkpoint onto `abstract_state`'s shardings, or None.

  Newest first; a step that cannot be read (truncated or garbled files) or holds a
  non-finite value (params, batch_stats, opt_state) is set aside with a warning
  naming it, and the next older one is tried.

  Raises:
    LayoutError for a workdir of an older checkpoint layout (see the module docstring).
  """
  for step in sorted(manager.all_steps(), reverse=True):
    layout = _layout(str(manager.directory), step)
    if layout != LAYOUT:
      raise LayoutError(
          f'{manager.directory} holds checkpoints of layout {layout} (the classifier '
          f'inside the trunk), this ssl_jax writes layout {LAYOUT} (trunk and task heads '
          'apart): the run cannot be resumed; start a new workdir (its trunk still loads '
          'for linear evaluation).')
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))['state']
    except Exception as e:  # pylint: disable=broad-except
      # orbax raises bare Exception, ValueError, KeyError, JSON or Unicode errors
      # depending on which file is damaged.
      where = set_aside(manager, step, 'unreadable') if jax.process_index() == 0 else '-'
      logging.warning('checkpoint step %d cannot be read (%s: %s); skipped (moved to %s), '
                      'trying an older one', step, type(e).__name__,
                      str(e).splitlines()[0][:200] if str(e) else '', where)
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


# Config keys that define the saved state's structure or meaning: resuming a workdir
# with other values cannot work (or would silently mix two runs). model.dtype (the
# compute dtype; params are float32 either way) may change.
STRUCTURAL = ('task', 'model', 'tasks', 'optimizer.name', 'data.image_size')
MAY_CHANGE = ('model.dtype',)


def _flat(d, prefix=''):
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(_flat(v, key + '.'))
    else:
      out[key] = tuple(v) if isinstance(v, list) else v
  return out


def structural_differences(saved, config, task_sections=None):
  """[(key, saved value, new value)] of the STRUCTURAL keys that differ.

  For `tasks`, only the sections of the trained tasks count: config.task's and
  `task_sections` (a task set's member tasks).
  """
  a = _flat(saved.to_dict() if hasattr(saved, 'to_dict') else dict(saved))
  b = _flat(json.loads(config.to_json_best_effort()))
  sections = [config.task] + [t for t in (task_sections or ()) if t != config.task]
  prefixes = [p for p in STRUCTURAL if p != 'tasks'] + [f'tasks.{t}' for t in sections]
  keys = sorted(k for k in set(a) | set(b)
                if any(k == p or k.startswith(p + '.') for p in prefixes)
                and k not in MAY_CHANGE)
  missing = object()
  diffs = []
  for k in keys:
    va, vb = a.get(k, missing), b.get(k, missing)  # (_flat made lists tuples)
    if va != vb:
      diffs.append((k, '<absent>' if va is missing else va, '<absent>' if vb is missing else vb))
  return diffs


def check_resume(workdir, config, task_set=None):
  """ValueError naming the keys if `workdir` holds another run (before anything is written).

  A workdir with config.json and at least one checkpoint is resumed; its structural
  keys (task, model, the settings of the task or of every member task of a task set
  (members, their weights, rates and streams included), optimizer name, image size)
  must match.
  """
  path = os.path.join(workdir, 'config.json')
  if not (os.path.exists(path) and saved_steps(workdir)):
    return
  sections = [m.task.name for m in task_set.members] if task_set is not None else None
  saved = read_config(workdir)
  if sections and 'tasks' in saved:  # the saved run's member tasks count too
    saved_members = saved.tasks.get(config.task, {}).get('members', {})
    sections += [v.get('task', k) for k, v in saved_members.items()
                 if hasattr(v, 'get')]
  diffs = structural_differences(saved, config, sections)
  if diffs:
    shown = '; '.join(f'{k}: {a!r} -> {b!r}' for k, a, b in diffs[:6])
    more = f' (and {len(diffs) - 6} more)' if len(diffs) > 6 else ''
    raise ValueError(f'{workdir} holds a run with other settings, which cannot be resumed '
                     f'with this config: {shown}{more}. Use a new --workdir, or the saved '
                     'values.')


def write_config(workdir, config):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))


def read_config(workdir):
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} does not exist: {workdir!r} is not a ssl_jax workdir '
        '(expected config.json and checkpoints/ from a pretext run).')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_trunk(workdir, step=None):
  """The frozen trunk of a pretext run, for evaluation.

  Returns:
    (config of the pretext run, trunk params, trunk batch_stats) as host numpy
    pytrees (params['trunk'] and batch_stats['trunk'] of the task model).
  Raises:
    FileNotFoundError naming the path when the workdir or checkpoint is missing.
  """
  config = read_config(workdir)
  path = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no checkpoints in {path}')
  with ocp.CheckpointManager(path) as manager:
    steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f'no checkpoint saved yet in {path}')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f'{path} has no checkpoint of step {step}; available steps: '
                            f'{steps}')
  state = restore_numpy(os.path.join(path, str(step), 'state'))
  params = dict(state['params']['trunk'])
  batch_stats = state.get('batch_stats', {}).get('trunk', {})
  if _layout(path, step) == 1:
    params.pop('logits', None)  # Layout 1: the task's classifier / patch embedding.
  return config, params, batch_stats


def restore_numpy(state_dir):
  """A saved pytree as host numpy arrays, whatever mesh saved it (no target needed)."""
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(state_dir).item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))
