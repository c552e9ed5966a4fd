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

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'
LAYOUT = 2


class LayoutError(ValueError):
  """A workdir written with another checkpoint layout."""


def meta(config, step):
  """The JSON saved beside every state."""
  return {'task': config.task, 'step': int(step), 'model': config.model.to_dict(),
          'layout': LAYOUT}


def make_manager(workdir, max_to_keep=3):
  path = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  return ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                 create=True))


def save(manager, step, state, meta):
  manager.save(int(step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def _layout(path, step):
  """meta['layout'] of a saved step (1 when the meta predates layouts)."""
  meta_path = os.path.join(path, str(step), 'meta', 'metadata')
  try:
    with open(meta_path) as f:
      return int(json.load(f).get('layout', 1))
  except (OSError, ValueError):
    return 1


def restore_latest(manager, abstract_state):
  """Restores the newest checkpoint onto `abstract_state`'s shardings, or None.

  Raises:
    LayoutError for a workdir of an older checkpoint layout (see the module docstring).
  """
  step = manager.latest_step()
  if step is None:
    return None
  layout = _layout(str(manager.directory), step)
  if layout != LAYOUT:
    raise LayoutError(
        f'{manager.directory} holds checkpoints of layout {layout} (the classifier inside '
        f'the trunk), this ssl_jax writes layout {LAYOUT} (trunk and task heads apart): '
        'the run cannot be resumed; start a new workdir (its trunk still loads for linear '
        'evaluation).')
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored['state']


def abstract_of(tree):
  """ShapeDtypeStructs with the shardings of a (device-resident) pytree."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


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
    step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint saved yet in {path}')
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
