"""Evaluators: plug-ins that score a trunk, run by the conductor (`linear_eval`) over one
shared feature cache (`features.Cache`), and by the training monitor (`monitor.Monitor`).

An evaluator is one file of this package with a class registered under its type:

    @evaluators.register('knn')
    class Knn(evaluators.Evaluator):
      rank = 30                              # order in tables (lower first)
      def __init__(self, name, settings, config): ...   # validates its section
      def endpoints(self, available): ...    # the cached endpoints it reads ([]: none)
      def run(self, ctx, cache): yield ...   # result rows and (key, value) pairs

`config.evals` holds one section per evaluator *instance* (a ConfigDict with `type`, the
registered type, and `enabled`; the instance name is the section's key: several instances
of one type, e.g. a probe at the fine and one at a coarse level, are two sections). The
conductor builds every enabled section's evaluator at start-up (so a bad section fails
before any compile), extracts each endpoint group's features once into a `Cache`, calls
`run(ctx, cache)` of every evaluator that reads endpoints of that group (cache restricted
to them), then `run(ctx, None)` once for evaluators that read no cached endpoint (they
get the trunk and the source in `ctx`: fine-tuning, the faithful probe).

`run` yields
  - rows, `row(endpoint, metric, value, ...)`: one number each (the conductor adds the
    evaluator's name and type, the random-init baseline's value and the gain; the
    scalars, results.json's 'rows' and the console table are made from rows alone), and
  - (key, value) pairs: details stored in results[<instance name>][key] (key a string or
    a tuple path), e.g. the linear probe's historical per-endpoint dicts.
Adding an evaluator is its file plus its section in the config: nothing else changes.
"""
import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Optional

import numpy as np

from ssl_jax.evaluation import labels as labels_lib

_TYPES = {}
_IMPORTED = []

# Keys of every row (settings may not use them).
ROW_KEYS = ('evaluator', 'type', 'endpoint', 'variant', 'metric', 'split', 'value', 'count',
            'baseline', 'gain', 'note', 'warnings')


def register(type_name):
  """Class decorator: registers an `Evaluator` subclass under `type_name`."""
  def wrap(cls):
    if type_name in _TYPES and _TYPES[type_name] is not cls:
      raise ValueError(f'evaluator type {type_name!r} is registered twice')
    cls.type = type_name
    _TYPES[type_name] = cls
    return cls
  return wrap


def _import_all():
  if _IMPORTED:
    return
  for info in pkgutil.iter_modules(__path__):
    importlib.import_module(f'{__name__}.{info.name}')
  _IMPORTED.append(True)


def types():
  """The registered evaluator types (every module of this package is imported first)."""
  _import_all()
  return sorted(_TYPES)


def get(type_name):
  """The evaluator class of a type; ValueError listing the registered ones."""
  _import_all()
  if type_name not in _TYPES:
    raise ValueError(f'unknown evaluator type {type_name!r}; allowed: {sorted(_TYPES)}')
  return _TYPES[type_name]


def sections(config_evals):
  """[(instance name, section)] of the ConfigDict children of `config_evals` that have a
  'type' (other keys are settings of the conductor or monitor), sorted by name."""
  if config_evals is None:
    return []
  out = []
  for name in sorted(config_evals.keys()):
    section = config_evals[name]
    if hasattr(section, 'keys') and 'type' in section:
      out.append((name, section))
  return out


def build_all(config, config_evals, *, where='evals'):
  """The enabled evaluators of `config_evals`, in table order (rank, then name).

  Raises:
    ValueError (one line, naming config.<where>.<name>) for an unknown type or a bad
    setting.
  """
  out = []
  for name, section in sections(config_evals):
    try:
      cls = get(section.type)
    except ValueError as e:
      raise ValueError(f'config.{where}.{name}.type: {e}') from None
    if not section.get('enabled', True):
      continue
    out.append(cls(name, section, config))
  return sorted(out, key=lambda e: (e.rank, e.name))


@dataclasses.dataclass
class Context:
  """What an evaluator's `run` may use besides its cache.

  Attributes:
    config: the evaluation job's config (linear_eval), or the pretext config (monitor).
    trunk: the trunk dict (`linear_eval.load_trunk`: model, variables with the BN
      statistics in use, model_config, task, eval_input, name, endpoints).
    source: the data source (eval preprocessing; None in the monitor).
    num_classes: K.
    groupings: {level: int32[K] class -> group} (`labels.check_groupings`).
    seed: the job's seed.
    workdir: the job's output directory (None: nothing may be written).
    baseline: True in the random-init baseline's pass.
    writer: optional metric writer (progress curves).
    arrays: callable split -> (u8 images, labels) of the raw split (decoded, before
      preprocessing; train capped as the evaluation's) for evaluators that train
      networks; None where unavailable.
    sizes: {split: examples evaluated}.
    timing: dict the evaluators add their seconds to ('<name>_s').
  """
  config: Any
  trunk: Any
  source: Any
  num_classes: int
  groupings: dict
  seed: int = 0
  workdir: Optional[str] = None
  baseline: bool = False
  writer: Any = None
  arrays: Optional[Callable] = None
  sizes: dict = dataclasses.field(default_factory=dict)
  timing: dict = dataclasses.field(default_factory=dict)


class Evaluator:
  """Base class. Subclasses set `rank` and implement `endpoints` and `run`."""
  type = ''
  rank = 100
  views = 1  # train views the evaluator's cache must hold

  def __init__(self, name, settings, config):
    self.name = name
    self.settings = settings
    self.config = config

  def job(self, path, default=None):
    """A value of the job's config by dotted path ('eval.solver'), or `default` where the
    job has no such key (the training monitor runs evaluators under a pretext config)."""
    node = self.config
    for part in path.split('.'):
      if node is None or not hasattr(node, 'keys') or part not in node:
        return default
      node = node[part]
    return node

  def key(self, leaf):
    """The config path of one of this evaluator's settings, for messages."""
    return f'evals.{self.name}.{leaf}'

  def endpoints(self, available):
    """The cached endpoints (of `available`, the pooled feature names) it reads."""
    del available
    return []

  def check(self, ctx):
    """Checks that need the data (sizes, labels); called before any compile. Optional."""
    del ctx

  def run(self, ctx, cache):
    """Yields rows (`row`) and (key, value) detail pairs."""
    raise NotImplementedError


def is_unit(name):
  """True for a unit endpoint '<stage>/unit<u>' (models.unit_endpoint_names), or its
  global-average variant."""
  return '/unit' in name


def endpoint_list(spec, available, key):
  """The endpoints named by a comma-separated spec ('' = all of available but logits and
  the unit endpoints '<stage>/unit<u>', which are read only where named: the lasso).

  Raises:
    ValueError naming `key` and the allowed endpoints for an unknown one.
  """
  if not spec:
    return [n for n in available if n != 'logits' and not is_unit(n)]
  names = [s.strip() for s in spec.split(',') if s.strip()]
  for n in names:
    if n not in available:
      raise ValueError(f'config.{key}: {n!r} is not an endpoint of this trunk; allowed: '
                       f'{list(available)}')
  return names


def row(endpoint, metric, value, *, split='test', variant='', count=None, note='',
        warnings=(), **settings):
  """One result row: a number with what it is (see `linear_eval.rows` for the schema)."""
  bad = sorted(set(settings) & set(ROW_KEYS))
  if bad:
    raise ValueError(f'row settings may not be named {bad}')
  return dict(settings, endpoint=endpoint, variant=variant, metric=metric, split=split,
              value=float(value), count=None if count is None else int(count), note=note,
              warnings=list(warnings))


def score_rows(endpoint, scores, labels, levels, *, split, variant='', note='',
               warnings=(), **settings):
  """Rows of every metric `labels.score` gives for (scores, labels) at `levels`."""
  metrics = labels_lib.score(scores, labels, levels)
  count = metrics.pop('count')
  return [row(endpoint, m, v, split=split, variant=variant, count=count, note=note,
              warnings=warnings if m == 'top1' else (), **settings)
          for m, v in metrics.items()]


def train_levels(ctx, level):
  """(class map of the train labels to `level`'s classes, levels to score at)."""
  levels = labels_lib.levels_at_or_above(level, ctx.groupings, ctx.num_classes)
  if level == labels_lib.FINE:
    return np.arange(ctx.num_classes, dtype=np.int32), levels
  return ctx.groupings[level], levels
