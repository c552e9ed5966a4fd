"""Registry of pretext tasks (and the supervised baseline).

A task is a module exposing `make_model`, `make_pretext_fn`, `copies` and `metrics_fn`
(see docs/design.md). Adding a task is one file plus an entry here plus a config.
"""
import importlib

TASKS = {
    'rotation': 'ssl_jax.tasks.rotation',
    'supervised': 'ssl_jax.tasks.supervised',
    'jigsaw': 'ssl_jax.tasks.jigsaw',
    'relative_patch_location': 'ssl_jax.tasks.relative_patch_location',
}


def get_task(name):
  """Returns the task module registered under `name` (ValueError naming the choices)."""
  if name not in TASKS:
    raise ValueError(f'config.task={name!r} is not a known task; allowed: {sorted(TASKS)}')
  return importlib.import_module(TASKS[name])
