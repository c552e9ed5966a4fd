"""`probe`: linear probes on cached features of every endpoint (the study's evaluation).

Settings (a config.evals section; the standard instance `linear` shares its keys with the
historic names: config.eval.solver is its `solver`, config.train its `train`):
  solver        'lbfgs' (solvers.train_lbfgs), 'sgd' (linear.train_cached) or 'ridge'
                (solvers.train_ridge); config.eval.mode='faithful' trains with 'sgd' on
                images through the trunk at every step (linear.train_faithful).
  train         the probe's training settings (linear.make_config keys: the L2 grid,
                the SGD schedule, standardize, tol, ...); default config.train.
  endpoints     comma-separated endpoints ('' = config.eval.endpoints, '' there = all).
  label_counts  labelled train images per class ((-1,) = all; e.g. (1, 10, 100, -1):
                one probe per count on nested seeded subsets, `labels.subset`).
  keep_predictions   store the test predictions in the details (error analysis).
  train_level   'fine' (the dataset's labels) or a config.groupings level: the probe is
                trained on that level's labels; every probe is scored at its level and
                every coarser one ('top1@<level>' rows: the predicted class mapped to
                its group, Cole et al.'s granularity protocol).
Every choice (L2 point, epoch, lr) is made on val; test is scored once per probe. Rows:
top1 (and top5 with > 5 classes) on val and test, top1@<level>; details (the historic
results[<name>][endpoint] dicts) for the all-labels probe.
"""
import logging
import time

import numpy as np

from ssl_jax.evaluation import evaluators
from ssl_jax.evaluation import labels as labels_lib
from ssl_jax.evaluation import linear
from ssl_jax.evaluation import solvers

SOLVERS = ('sgd', 'lbfgs', 'ridge')


def progress_fn(writer, prefix, every_s=20.0):
  """SGD progress callback: every evaluation to TensorBoard, a console line at most every
  `every_s` seconds (hundreds of epochs make a progress line, not a wall)."""
  last = [-float('inf')]

  def log(epoch, r):
    if writer is not None:
      writer.write_scalars(epoch, {f'{prefix}/{k}': v for k, v in r.items() if k != 'epoch'})
    now = time.perf_counter()
    if now - last[0] >= every_s:
      last[0] = now
      tops = [v for k, v in r.items() if k.startswith('val_top1/')]
      losses = [v for k, v in r.items() if k.startswith('train_loss/')]
      logging.info('%s probes: epoch %d, %d heads, best val top-1 %.4f, train loss %.3f..%.3f',
                   prefix, epoch, len(tops), max(tops, default=float('nan')),
                   min(losses, default=float('nan')), max(losses, default=float('nan')))
  return log


def solver_flags(res, name):
  """(warnings [str], converged bool or None) of one endpoint's fit, read defensively:
  the solver's `solver_checks` (constant columns, unconverged L2 points) if present."""
  checks = (res.get('solver_checks') or {}).get(name) or {}
  warnings = [str(w) for w in checks.get('warnings') or []]
  info = (res.get('solver_info') or {}).get(name)
  converged = None
  if info:
    converged = all(bool(i.get('converged', True)) for i in info)
  elif 'unconverged' in checks:
    converged = not checks['unconverged']
  return warnings, converged


def legacy_row(s, test, count, res, mode, solver):
  """The historic results[<probe>][endpoint] dict (kept: notebooks and tools read it)."""
  return {
      'top1': test['top1'], 'top5': test.get('top5', test['top1']), 'split': 'test',
      'count': count, 'val_top1': s['val_top1'], 'val_top5': s['val_top5'],
      'val_split': 'val', 'epochs': s['epoch'], 'epochs_trained': res['epochs_trained'],
      'stopped_early': res['stopped_early'], 'mode': mode, 'solver': solver,
      'base_lr': s['base_lr'], 'weight_decay': s['weight_decay'], 'grid': s['grid'],
      'standardize': bool(res['config']['standardize']),
  }


@evaluators.register('probe')
class Probe(evaluators.Evaluator):
  """Linear (or, with train.head='mlp', MLP) heads on frozen features, one per endpoint."""
  rank = 10
  head = 'linear'

  def __init__(self, name, settings, config):
    super().__init__(name, settings, config)
    g = settings.get
    self.solver, self.mode, self.train_cfg = self.training(settings)
    self.head = self.train_cfg['head']
    self.label_counts = tuple(g('label_counts', (labels_lib.ALL,)))
    self.level = g('train_level', labels_lib.FINE) or labels_lib.FINE
    self.spec = g('endpoints', '') or self.default_endpoints()
    self.views = self.job('eval.views', 1) if self.job('eval.mode', 'cached') == 'cached' else 1
    self.lbfgs_iters = self.job('eval.lbfgs_iters', 500)
    self.keep_predictions = bool(g('keep_predictions', False))
    if self.solver not in SOLVERS:
      raise ValueError(f'config.{self.key("solver")}={self.solver!r} is not allowed; '
                       f'allowed: {list(SOLVERS)}')
    if self.solver != 'sgd' and self.views > 1:
      raise ValueError(f'config.eval.views={self.views} needs the sgd solver; '
                       f'{self.solver!r} fits one view')
    if self.mode == 'faithful' and (self.label_counts != (labels_lib.ALL,) or
                                    self.level != labels_lib.FINE):
      raise ValueError(f'config.{self.key("label_counts")} / train_level need cached '
                       "features (config.eval.mode='cached')")
    # (the limits the data sets are checked in `check`)
    labels_lib.check_count_values(self.label_counts, self.key('label_counts'))

  def training(self, settings):
    """(solver, mode, train settings dict) of this probe's section."""
    g = settings.get
    solver = g('solver', None) or self.job('eval.solver', 'lbfgs')
    return (solver, self.job('eval.mode', 'cached'),
            dict(linear.make_config(g('train', None) or self.job('train'))))

  def default_endpoints(self):
    return self.job('eval.endpoints', '')

  def endpoints(self, available):
    if self.mode == 'faithful':
      return []
    return evaluators.endpoint_list(self.spec, available, self.key('endpoints'))

  def check(self, ctx):
    labels_lib.levels_at_or_above(self.level, ctx.groupings, ctx.num_classes)
    if self.label_counts != (labels_lib.ALL,) and ctx.arrays is not None:
      labels_lib.check_label_counts(self.label_counts, ctx.arrays('train')[1],
                                    ctx.num_classes, key=self.key('label_counts'))

  # --------------------------------------------------------------------------- fitting

  def fit(self, ctx, train, train_y, val, val_y, num_classes, views):
    """The solver's result (linear.train_cached structure) on device features."""
    cfg = self.train_cfg
    if self.solver == 'lbfgs':
      done, grid = {}, len(cfg['weight_decays'])

      def progress(endpoint, info):  # one line per endpoint, once its L2 path is done
        done.setdefault(endpoint, []).append(info)
        if len(done[endpoint]) == grid:
          path = done[endpoint]
          capped = [i['weight_decay'] for i in path if not i.get('converged', True)]
          logging.info('%s probe %s: %d L2 points, %s L-BFGS iterations, %.1f s, %s',
                       self.name, endpoint, grid, '/'.join(str(i['iters']) for i in path),
                       sum(i['seconds'] for i in path),
                       f'NOT converged at wd {capped}' if capped else 'all converged')
      return solvers.train_lbfgs(train, train_y, val, val_y, num_classes=num_classes,
                                 cfg=cfg, iters=self.lbfgs_iters,
                                 log_fn=progress)
    if self.solver == 'ridge':
      return solvers.train_ridge(train, train_y, val, val_y, num_classes=num_classes,
                                 cfg=cfg)
    return linear.train_cached(train, train_y, val, val_y, num_classes=num_classes,
                               cfg=cfg, views=views,
                               log_fn=progress_fn(None if ctx.baseline else ctx.writer,
                                                  self.name))

  def run(self, ctx, cache):
    if cache is None:
      yield from self._faithful(ctx)
      return
    names = [n for n in self.endpoints(cache.endpoints) if n in cache.endpoints]
    class_map, levels = evaluators.train_levels(ctx, self.level)
    k = len(levels[0][1])
    val = cache.device('val', names)
    val_y = class_map[cache.val_labels]
    test_y = None if cache.test is None else class_map[cache.test_labels]
    n = cache.sizes['train']
    fine_train_y = cache.train_labels[:n]
    for count in self.label_counts:
      variant = '' if count == labels_lib.ALL else labels_lib.count_name(count)
      if count == labels_lib.ALL:
        train = cache.device('train', names)
        train_y = class_map[cache.train_labels]
      else:
        idx = labels_lib.subset(fine_train_y, count, ctx.num_classes, ctx.seed)
        rows = np.concatenate([idx + v * n for v in range(cache.views)])
        full = cache.device('train', names)
        train = {name: full[name][rows] for name in names}
        train_y = class_map[cache.train_labels[rows]]
      res = self.fit(ctx, train, train_y, val, val_y, k, cache.views)
      sel = res['selected']
      stats = None if res['stats'] is None else {m: res['stats'][m] for m in sel}
      splits = [('val', val, val_y)]
      if test_y is not None:
        splits.append(('test', cache.device('test', names), test_y))
      for name, s in sel.items():
        warnings, converged = solver_flags(res, name)
        settings = dict(solver=self.solver, head=self.head, train_level=self.level,
                        labels_per_class=count, weight_decay=s['weight_decay'],
                        base_lr=s['base_lr'], epochs=s['epoch'], converged=converged,
                        train_examples=int(len(train_y) // cache.views))
        note = (f"wd {s['weight_decay']:g}" + (f", lr {s['base_lr']:g}" if
                                              self.solver == 'sgd' else '') +
                f", {s['epoch']} {'it' if self.solver == 'lbfgs' else 'ep'}")
        scored = {}
        for split, feats, y in splits:
          logits = linear.logits_cached({name: s}, {name: feats[name]}, kind=self.head,
                                        stats=stats)[name]
          scored[split] = labels_lib.score(logits, y, levels)
          predictions = labels_lib.topk_order(logits)[:, 0]
          for r in evaluators.score_rows(name, logits, y, levels, split=split,
                                         variant=variant, note=note, warnings=warnings,
                                         **settings):
            if split == 'test' and not variant:
              r['detail'] = name
            yield r
        if not variant and test_y is not None and self.level == labels_lib.FINE:
          detail = legacy_row(s, scored['test'], scored['test']['count'], res, 'cached',
                              self.solver)
          if res.get('solver_info', {}).get(name) is not None:  # L-BFGS: per L2 point
            detail['solver_info'] = [{key: v for key, v in i.items() if key != 'values'}
                                     for i in res['solver_info'][name]]
          checks = (res.get('solver_checks') or {}).get(name)
          if checks is not None:
            detail['solver_checks'] = checks
          if self.keep_predictions:  # (error analysis; off by default: N ints per endpoint)
            detail['test_predictions'] = [int(c) for c in predictions]
          yield name, detail
      ctx.timing[f'{self.name}_s'] = ctx.timing.get(f'{self.name}_s', 0.0) + res['seconds']

  def _faithful(self, ctx):
    """The study's protocol: images through the frozen trunk at every SGD step."""
    from ssl_jax.data import sources  # pylint: disable=g-import-not-at-top
    from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
    config, trunk, source = self.config, ctx.trunk, ctx.source
    cfg = linear.make_config(self.train_cfg)
    if config.eval.max_train_examples > 0 and isinstance(source, sources.TfdsSource):
      raise ValueError('config.eval.max_train_examples needs the in-memory source in the '
                       'faithful mode (the tf.data pipeline streams the whole split)')
    names = evaluators.endpoint_list(self.spec, trunk['endpoints'], self.key('endpoints'))
    fn = linear_eval.extract_fn(config, trunk, names, dtype=np.float32)
    from ssl_jax.evaluation import features  # pylint: disable=g-import-not-at-top
    variables = trunk['variables']
    dims = features.feature_dims(fn, variables, source.image_shape(train=False))
    steps = max(ctx.sizes['train'] // cfg['batch_size'], 1)
    res = linear.train_faithful(
        fn, variables, source.train_batches('train', cfg['batch_size'], seed=config.seed),
        steps, lambda: source.eval_batches('val', config.eval_batch_size), dims=dims,
        num_classes=ctx.num_classes, cfg=cfg,
        log_fn=progress_fn(None if ctx.baseline else ctx.writer, self.name))
    scores, count = linear.score_faithful(
        res['selected'], fn, variables, source.eval_batches('test', config.eval_batch_size),
        kind=cfg['head'])
    for name, s in res['selected'].items():
      settings = dict(solver='sgd', head=cfg['head'], train_level=labels_lib.FINE,
                      labels_per_class=labels_lib.ALL, weight_decay=s['weight_decay'],
                      base_lr=s['base_lr'], epochs=s['epoch'], converged=None,
                      train_examples=ctx.sizes['train'])
      note = f"wd {s['weight_decay']:g}, lr {s['base_lr']:g}, {s['epoch']} ep (faithful)"
      yield evaluators.row(name, 'top1', s['val_top1'], split='val', note=note, **settings)
      r = evaluators.row(name, 'top1', scores[name]['top1'], count=count, note=note,
                         **settings)
      r['detail'] = name
      yield r
      if ctx.num_classes > 5:
        yield evaluators.row(name, 'top5', scores[name]['top5'], count=count, note=note,
                             **settings)
      yield name, legacy_row(s, scores[name], count, res, 'faithful', 'sgd')
    ctx.timing[f'{self.name}_s'] = res['seconds']
    ctx.timing['faithful_s_per_epoch'] = res['seconds_per_epoch']
