"""The evaluators during pretext training: a kNN (or probe) monitor over a few thousand
held-in images, the way solo-learn and lightly users watch SSL training.

    monitor = monitor_lib.create(run)         # None when config.evals.every_steps <= 0
    ...
    if monitor and step % monitor.every_steps == 0:
      writer.write_scalars(step, monitor(state, step))

The pretext config's `evals` section (configs/common.py; off by default):
  every_steps     > 0: run every N training steps (0: off).
  train_examples  the first N train-split images: the kNN bank / the probe's train set.
  val_examples    the first M val-split images: the numbers reported (split 'val').
  batch_size      extraction batch (images).
  pool_mode, target_dims   pooling of 4-D endpoints (as config.eval's in linear_eval).
  <name>          evaluator sections as in configs/linear_eval.py (type, enabled, and the
                  type's settings), e.g. knn=dict(type='knn', presets=('k20_t0.07',),
                  endpoints='pre_logits'); evaluators that need the trunk itself
                  (fine-tuning) are refused.
The images are preprocessed once (the task's evaluation input: the source's eval
preprocessing, or the patch geometry of patch tasks) and kept on the host; each call
extracts their features with the state's trunk (inference-mode BatchNorm with its
moving averages, as the linear evaluation of that checkpoint) and runs the evaluators on
that cache: the numbers equal those of the standalone evaluator on the same checkpoint,
images and settings. Scalars: 'monitor/<evaluator>/val_<metric>/<endpoint>[/<variant>]'
and 'monitor/seconds' (this call's wall time; the first includes compilation).
"""
import logging
import time

import jax
import numpy as np

from ssl_jax.evaluation import evaluators
from ssl_jax.evaluation import features
from ssl_jax.evaluation import labels as labels_lib

DEFAULTS = dict(every_steps=0, train_examples=2000, val_examples=1000, batch_size=250,
                pool_mode='max', target_dims=9000)


def settings(config):
  """The monitor's settings (DEFAULTS where the config's evals section has no value)."""
  cfg = config.get('evals')
  out = dict(DEFAULTS)
  if cfg is not None:
    out.update({k: cfg[k] for k in DEFAULTS if k in cfg})
  return out


def validate(config):
  """ValueError (one line, naming config.evals.<key>) for bad monitor settings; the
  evaluators (built). Call it at start-up, before anything compiles."""
  s = settings(config)
  for key, low in (('every_steps', 0), ('train_examples', 1), ('val_examples', 1),
                   ('batch_size', 1), ('target_dims', 1)):
    v = s[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
      raise ValueError(f'config.evals.{key}={v!r} must be an integer >= {low}')
  from ssl_jax import models  # pylint: disable=g-import-not-at-top
  evs = evaluators.build_all(config, config.get('evals'))
  available = [e for e in models.trunk_endpoints(config.model.name) if e != 'logits']
  for ev in evs:
    if not ev.endpoints(available):
      raise ValueError(f'config.evals.{ev.name}: the training monitor runs evaluators of '
                       f'cached features; {ev.type!r} needs the trunk itself')
  if s['every_steps'] > 0 and not evs:
    raise ValueError('config.evals.every_steps > 0 but config.evals has no enabled '
                     'evaluator section (e.g. knn=dict(type="knn", ...))')
  return evs


def create(run):
  """A `Monitor` of the run, or None when config.evals.every_steps <= 0 (off)."""
  if settings(run.config)['every_steps'] <= 0:
    return None
  return Monitor(run)


def _host(tree):
  """Host numpy copy of a (replicated) device pytree, on any number of processes."""
  def one(x):
    if hasattr(x, 'addressable_data'):
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(one, tree)


def _take(batches, n):
  """The first n examples of eval batches (padding dropped on the host), as batches."""
  out, kept = [], 0
  for b in batches:
    if kept >= n:
      break
    mask = np.asarray(b['mask'], bool).copy()
    room = n - kept
    valid = np.flatnonzero(mask)
    if valid.size > room:
      mask[valid[room:]] = False
    out.append({'image': np.asarray(b['image']), 'label': np.asarray(b['label'], np.int32),
                'mask': mask})
    kept += int(mask.sum())
  return out


class Monitor:
  """`Monitor(run)`, then `monitor(state, step) -> {scalar name: value}`.

  Attributes:
    every_steps: the interval (config.evals.every_steps).
    evaluators: the evaluators run at each call.
    seconds: wall time of each call so far.
  """

  def __init__(self, run):
    from ssl_jax import models  # pylint: disable=g-import-not-at-top
    config = run.config
    self.config = config
    self.settings = s = settings(config)
    self.every_steps = s['every_steps']
    self.evaluators = validate(config)
    self.num_classes = config.data.num_classes
    self.groupings = labels_lib.check_groupings(config.evals.get('groupings'),
                                                self.num_classes, 'evals.groupings')
    self.eval_input = run.task_set.eval_input
    self.model = models.create_trunk(config.model)
    self.model_config = config.model.to_dict()
    source = self._source(run)
    names = sorted({n for ev in self.evaluators for n in ev.endpoints(
        [e for e in models.trunk_endpoints(config.model.name) if e != 'logits'])})
    self.endpoints = names
    self.fn = features.make_extract_fn(self.model, names, eval_input=self.eval_input,
                                       pool_mode=s['pool_mode'],
                                       target_dims=s['target_dims'])
    self.jit_fn = jax.jit(self.fn)
    t = time.perf_counter()
    self.batches = {'train': _take(source.eval_batches('train', s['batch_size']),
                                   s['train_examples']),
                    'val': _take(source.eval_batches('val', s['batch_size']),
                                 s['val_examples'])}
    self.sizes = {k: int(sum(b['mask'].sum() for b in v)) for k, v in self.batches.items()}
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      self.sizes = {k: int(np.sum(multihost_utils.process_allgather(np.int64(v))))
                    for k, v in self.sizes.items()}
    self.seconds = []
    logging.info('monitor: %s every %d steps on %d train / %d val images (%s), images '
                 'prepared in %.1fs', [ev.name for ev in self.evaluators], self.every_steps,
                 self.sizes['train'], self.sizes['val'], names, time.perf_counter() - t)

  def _source(self, run):
    """The run's data source with the task's evaluation preprocessing."""
    from ssl_jax.data import sources  # pylint: disable=g-import-not-at-top
    source = run.sources[run.task_set.members[0].name]
    pp = self.eval_input.pp
    if not pp:
      return source
    if isinstance(source, sources.ArraySource):
      raw = {k: source._raw[k] for k in ('train', 'val')}  # pylint: disable=protected-access
      return sources.ArraySource(raw, pp, pp, seed=self.config.seed)
    cfg = self.config.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.input.pp_train = cfg.input.pp_eval = pp
    return sources.TfdsSource(cfg)

  def cache(self, variables):
    """The `features.Cache` of the kept images under `variables` (no test split)."""
    t = time.perf_counter()
    out = {}
    for split, batches in self.batches.items():
      x, y = features.extract(self.fn, variables, iter(batches), jit_fn=self.jit_fn,
                              log_every_s=1e9)
      if jax.process_count() > 1:
        x, y = features.gather_processes(x, y)
      out[split] = (x, y)
    (tx, ty), (vx, vy) = out['train'], out['val']
    return features.Cache(
        endpoints=tuple(sorted(tx)), train=tx, train_labels=ty, views=1, val=vx,
        val_labels=vy, test=None, test_labels=None,
        sizes={'train': len(ty), 'val': len(vy), 'test': 0},
        dims={k: int(v.shape[1]) for k, v in tx.items()}, trunk_input=self.eval_input.kind,
        seconds=time.perf_counter() - t, images=len(ty) + len(vy))

  def __call__(self, state, step):
    """{'monitor/<evaluator>/val_<metric>/<endpoint>[/<variant>]': value, ...}."""
    t = time.perf_counter()
    host = _host({'params': state['params']['trunk'],
                  'batch_stats': state['batch_stats'].get('trunk', {})})
    variables = jax.device_put(host)  # one device: not a replica per mesh device
    cache = self.cache(variables)
    trunk = {'model': self.model, 'variables': host, 'model_config': self.model_config,
             'task': self.config.task, 'eval_input': self.eval_input,
             'name': self.config.model.name, 'endpoints': tuple(self.endpoints)}
    ctx = evaluators.Context(config=self.config, trunk=trunk, source=None,
                             num_classes=self.num_classes, groupings=self.groupings,
                             seed=self.config.seed, sizes=cache.sizes)
    out = {}
    for ev in self.evaluators:
      for item in ev.run(ctx, cache):
        if isinstance(item, dict) and item['split'] == 'val':
          tail = f"/{item['variant']}" if item['variant'] else ''
          out[f"monitor/{ev.name}/val_{item['metric']}/{item['endpoint']}{tail}"] = (
              item['value'])
    cache.release()
    seconds = time.perf_counter() - t
    self.seconds.append(seconds)
    out['monitor/seconds'] = seconds
    logging.info('monitor step %d (%.1fs): %s', step, seconds, ', '.join(
        f'{k[len("monitor/"):]} {v:.4f}' for k, v in sorted(out.items())
        if k != 'monitor/seconds'))
    return out
