"""The job configs, loadable from Python with overrides (notebooks never shell out).

    import configs
    config = configs.get('rotation', 'smoke', total_steps=40, model={'name': 'tiny_cnn'})
    config = configs.get('linear_eval', 'smoke', pretrained='workdirs/rot',
                         **{'eval.random_init_baseline': True})
    configs.names()              # ['colorization', 'exemplar', 'jigsaw', ...]
    configs.presets('jigsaw')    # ('imagenet', 'cifar10', 'cifar10_cpu', ...)

`get(name, preset, **overrides)` is `configs/<name>.py`'s `get_config(preset)` (the same
object `--config configs/<name>.py:<preset>` gives the command line) with the overrides
applied by `override`: a key is a top-level name (`total_steps=40`), a dotted path
(`**{'model.width': 2}`, as `--config.model.width=2`) or a section given a dict, which
updates the keys it names and keeps the others (`model={'name': 'tiny_cnn'}`).
Values are Python objects, not strings: no parsing. Every key must exist in the preset
(a typo is an error naming the closest keys, before anything runs) and keeps its type
(ml_collections' rule: an int may set a float, a list a tuple; a bool sets only a bool).
The job's own checks (ssl_jax.config_lib.validate, in `ssl_jax.train.build`) still run
on the result.

This package is imported from the repository root (`configs/<name>.py` import
`configs.common`); it imports ml_collections only.
"""
import contextlib
import difflib
import importlib
import pkgutil
from typing import Any, Mapping

import ml_collections

# Library modules of the package: shared defaults, no presets of their own.
_LIBRARIES = ('common',)


def names():
  """Sorted names of the job configs: the package's modules (configs/<name>.py) but the
  shared library `common`. Sub-packages (e.g. configs/sweeps/) are not listed; `get`
  takes their modules by dotted name ('sweeps.goyal')."""
  found = []
  for info in pkgutil.iter_modules(__path__):
    if info.name.startswith('_') or info.name in _LIBRARIES or info.ispkg:
      continue
    found.append(info.name)
  return sorted(found)


def _module(name):
  known = names()
  if isinstance(name, str) and '.' in name and not name.startswith('.'):
    try:
      module = importlib.import_module(f'{__name__}.{name}')
    except ModuleNotFoundError:
      module = None
    if module is not None and hasattr(module, 'get_config'):
      return module
  if not isinstance(name, str) or name not in known:
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    hint = f' (closest: {", ".join(close)})' if close else ''
    raise ValueError(f'configs.get: no config {name!r}{hint}; allowed: {known} (or a '
                     "sub-package's module, e.g. 'sweeps.<name>')")
  return importlib.import_module(f'{__name__}.{name}')


def presets(name):
  """The presets of configs/<name>.py (its PRESETS), in the file's order."""
  return tuple(getattr(_module(name), 'PRESETS', ()))


def get(name, preset=None, /, **overrides):
  """configs/<name>.py's get_config(preset) with `overrides` applied (see the module doc).

  Args:
    name: a config file's name, e.g. 'rotation', 'jigsaw', 'linear_eval' (`names()`),
      or a dotted module of a sub-package with a get_config ('sweeps.goyal').
    preset: one of `presets(name)`; None: the file's default preset.
    **overrides: {key or dotted path: value}; a section's key takes a dict (merged).
  Returns:
    a fresh, unlocked ml_collections.ConfigDict (each call builds a new one).
  Raises:
    ValueError: unknown config, preset or key, or a value of the wrong type, naming it
      and what is allowed.
  """
  module = _module(name)
  allowed = presets(name)
  if preset is None:
    config = module.get_config()
  else:
    if allowed and preset not in allowed:
      raise ValueError(f'configs.get({name!r}): unknown preset {preset!r}; allowed: '
                       f'{list(allowed)}')
    config = module.get_config(preset)
  return override(config, overrides, where='config')


def _is_section(value):
  return isinstance(value, (ml_collections.ConfigDict, Mapping))


def _set(node, key, value, path):
  """node[key] = value with the preset's type, or a ValueError naming `path`."""
  current = node[key]
  if _is_section(current):
    if isinstance(value, ml_collections.ConfigDict):
      node[key] = value  # a whole section replaced (e.g. copied from another config)
      return
    if not isinstance(value, Mapping):
      raise ValueError(f'{path} is a section ({", ".join(sorted(current.keys()))}); give '
                       f'it a dict of keys to update, not {value!r}')
    for k, v in value.items():
      _walk_set(current, str(k), v, path)
    return
  if isinstance(value, bool) != isinstance(current, bool) and current is not None:
    raise ValueError(f'{path}={value!r}: expected a {type(current).__name__} like the '
                     f"preset's {current!r}")
  try:
    node[key] = value
  except TypeError as e:
    raise ValueError(f'{path}={value!r}: expected a {type(current).__name__} like the '
                     f"preset's {current!r} ({e})") from None


def _walk_set(config, dotted, value, where):
  parts = dotted.split('.')
  node = config
  for i, part in enumerate(parts):
    keys = list(node.keys()) if _is_section(node) else []
    walked = '.'.join([where] + parts[:i])
    if part not in keys:
      close = difflib.get_close_matches(part, keys, n=3, cutoff=0.5)
      hint = (f"closest: {', '.join(f'{walked}.{c}' for c in close)}" if close else
              f"{walked} has: {', '.join(sorted(keys)) or 'no keys (not a section)'}")
      raise ValueError(f'{where}.{dotted}: {walked} has no key {part!r}; {hint}')
    if i < len(parts) - 1:
      node = node[part]
  _set(node, parts[-1], value, '.'.join([where] + parts))


def override(config, overrides: Mapping[str, Any], where='config'):
  """Applies {key or dotted path: value} to `config` in place and returns it.

  A dict given to a section updates the keys it names (recursively); a ConfigDict
  replaces the section. Raises ValueError for an unknown key (naming the closest) or a
  value the key's type cannot hold.
  """
  with config.unlocked() if hasattr(config, 'unlocked') else contextlib.nullcontext():
    for key, value in overrides.items():
      _walk_set(config, str(key), value, where)
  return config
