"""`finetune`: the whole network initialised from the trunk and trained on the labels,
through the engine (`train.build(..., init_trunk=...)`, `train.train_loop`), at label counts.

Cole et al. 2022 (protocols.md 1.4, 1.8): linear probes and end-to-end fine-tuning
against the number of labelled images, each beside supervised training from scratch on
the same labels. Here the fine-tuning run is the `supervised` task of
configs/supervised.py (preset `preset`) with the trunk's architecture; the trunk starts
from the evaluated trunk's parameters and BatchNorm statistics, the classifier fresh.
In the random-init baseline's pass the trunk is the random twin: the same recipe from a
random initialisation, i.e. supervised training from scratch, so each row's `baseline`
is the from-scratch number and `gain` the pretext initialisation's advantage.

Settings (config.evals.<name>, see configs/linear_eval.py `finetune_section`):
  label_counts     images per class (nested seeded subsets of the train examples the
                   evaluation uses, `labels.subset`; -1: all of them).
  lrs, weight_decays, epochs   the grid: every combination is one engine run per label
                   count; the one with the best val top-1 is kept (ties: grid order);
                   test is scored once, with it.
  min_steps, max_steps   each run's steps: ceil(epochs x n / batch), clipped (0 steps:
                   the initial network, no training).
  batch_size       (capped by the subset's size, a multiple of the device count).
  warmup_fraction  linear warm-up share of the steps, then a cosine decay.
  pp_train, pp_eval  the preprocessing strings (augmentation: pp_train; '' = the
                   evaluation's). checkpoint_every: steps between checkpoints.
Each run lives in its own workdir, <evaluation workdir>/finetune/<name>/<pretext|
scratch>/<n>_per_class/lr<lr>_wd<wd>_ep<epochs>, so a killed evaluation resumes every
run from its last checkpoint (the same command again); a run's numbers are used only
once it has trained all its steps (`done.json`), never from a half-trained network.
Rows (endpoint 'network', variant '<n>/class' or 'all labels'): val and test top1, top5
(> 5 classes), top1@<level>. The trunk must take RGB images (tasks whose trunk input is
'rgb'; patch and L-channel trunks: a one-line error before any compile).
"""
import json
import logging
import math
import os
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.evaluation import evaluators
from ssl_jax.evaluation import features
from ssl_jax.evaluation import labels as labels_lib

DONE = 'done.json'


class Interrupted(RuntimeError):
  """A fine-tuning run stopped before its last step (preemption): nothing is reported."""


def _positive(key, values, allow_zero=False):
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (
        v < 0 if allow_zero else v <= 0):
      raise ValueError(f'config.{key}: {v!r} must be a number {">= 0" if allow_zero else "> 0"}')


@evaluators.register('finetune')
class Finetune(evaluators.Evaluator):
  rank = 60

  def __init__(self, name, settings, config):
    super().__init__(name, settings, config)
    s = settings
    from configs import supervised  # pylint: disable=g-import-not-at-top
    if s.preset not in supervised.PRESETS:
      raise ValueError(f'config.{self.key("preset")}={s.preset!r} is not a '
                       f'configs/supervised.py preset; allowed: {list(supervised.PRESETS)}')
    self.label_counts = tuple(s.label_counts)
    labels_lib.check_count_values(self.label_counts, self.key('label_counts'))
    _positive(self.key('lrs'), s.lrs)
    _positive(self.key('weight_decays'), s.weight_decays, allow_zero=True)
    _positive(self.key('epochs'), s.epochs, allow_zero=True)
    for key in ('min_steps', 'max_steps', 'batch_size', 'checkpoint_every'):
      v = s[key]
      low = 0 if key == 'min_steps' else 1
      if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f'config.{self.key(key)}={v!r} must be an integer >= {low}')
    if s.max_steps < s.min_steps:
      raise ValueError(f'config.{self.key("max_steps")}={s.max_steps} < min_steps='
                       f'{s.min_steps}')
    if not 0.0 <= s.warmup_fraction < 1.0:
      raise ValueError(f'config.{self.key("warmup_fraction")}={s.warmup_fraction!r} must '
                       'be in [0, 1)')
    from ssl_jax.data import ops  # pylint: disable=g-import-not-at-top
    try:
      if s.pp_train:
        ops.check_spec(s.pp_train, train=True)
      if s.pp_eval:
        ops.check_spec(s.pp_eval, train=False)
    except ValueError as e:
      raise ValueError(f'config.{self.key("pp_train")} / pp_eval: {e}') from None
    self.grid = [(float(lr), float(wd), float(ep)) for lr in s.lrs
                 for wd in s.weight_decays for ep in s.epochs]

  # --------------------------------------------------------------------------- config

  def steps(self, n, epochs, batch):
    s = self.settings
    return int(min(max(math.ceil(epochs * n / batch), s.min_steps), s.max_steps))

  def batch(self, n):
    """The run's global batch: batch_size, at most n, a multiple of the device count."""
    d = jax.device_count()
    b = min(self.settings.batch_size, n)
    b = max(b // d * d, d)
    if b > n:
      raise ValueError(f'config.{self.key("label_counts")}: a subset of {n} images is '
                       f'smaller than one example per device ({d} devices)')
    return b

  def engine_config(self, ctx, n, lr, wd, epochs, image_size):
    """The configs/supervised.py config of one run on n labelled images."""
    from configs import supervised  # pylint: disable=g-import-not-at-top
    s, e = self.settings, ctx.config
    c = supervised.get_config(s.preset)
    batch = self.batch(n)
    steps = self.steps(n, epochs, batch)
    d = jax.device_count()
    from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
    pp_train, pp_eval = linear_eval.preprocessing(e, ctx.trunk['eval_input'])
    with c.unlocked():
      c.model = ml_collections.ConfigDict(ctx.trunk['model_config'])
      c.data.name = e.data.name
      c.data.num_classes = ctx.num_classes
      c.data.source = 'in_memory'
      c.data.image_size = int(image_size)
      c.input.pp_train = s.pp_train or pp_train
      c.input.pp_eval = s.pp_eval or pp_eval
      c.batch_size = batch
      c.eval_batch_size = max(min(e.eval_batch_size, 512) // d * d, d)
      c.total_steps = max(steps, 1)
      c.steps_per_epoch = max(steps, 1)    # schedule 'epochs' = fractions of the run
      c.optimizer.base_lr = lr
      c.optimizer.weight_decay = wd
      c.optimizer.schedule = 'cosine'
      c.optimizer.warmup_epochs = s.warmup_fraction
      c.log_every_steps = max(steps // 4, 1)
      c.eval_every_steps = -1
      c.checkpoint_every_steps = s.checkpoint_every
      c.max_to_keep = 1
      c.max_eval_batches = 1               # the engine's own val pass; ours is below
      c.precise_bn_batches = 0
      c.seed = s.seed
      c.run_linear_eval = False
    return c, steps

  def check(self, ctx):
    if ctx.trunk['eval_input'].kind != 'rgb':
      raise ValueError(f'config.evals.{self.name}: fine-tuning trains the supervised task '
                       f"on RGB images; this trunk takes {ctx.trunk['eval_input'].kind!r} "
                       'inputs (disable the evaluator for it)')
    if ctx.arrays is None:
      raise ValueError(f'config.evals.{self.name}: fine-tuning needs the decoded splits')
    train_y = ctx.arrays('train')[1]
    labels_lib.check_label_counts(self.label_counts, train_y, ctx.num_classes,
                                  key=self.key('label_counts'))
    from ssl_jax import config_lib  # pylint: disable=g-import-not-at-top
    from ssl_jax import tasks  # pylint: disable=g-import-not-at-top
    size = ctx.arrays('val')[0].shape[1]
    for count in self.label_counts:
      n = len(train_y) if count == labels_lib.ALL else count * ctx.num_classes
      c, _ = self.engine_config(ctx, n, *self.grid[0], size)
      config_lib.validate(c)
      config_lib.check_model_input(c, tasks.get_task('supervised', c))

  def endpoints(self, available):
    del available
    return []

  # --------------------------------------------------------------------------- runs

  def train_one(self, ctx, workdir, train_arrays, lr, wd, epochs):
    """One engine run (resumed if its workdir has checkpoints). Returns (run, state,
    steps); the state is the final one. Raises Interrupted when stopped early."""
    from ssl_jax import train  # pylint: disable=g-import-not-at-top
    images, labels = train_arrays
    c, steps = self.engine_config(ctx, len(labels), lr, wd, epochs, images.shape[1])
    arrays = {'train': train_arrays, 'val': ctx.arrays('val')}
    trunk = ctx.trunk['variables']
    init = (trunk['params'], trunk.get('batch_stats', {}))
    run = train.build(c, workdir, arrays=arrays, init_trunk=init)
    # train.with_trunk re-initialises the optimizer state with a plain jit, whose
    # constant outputs (zero momenta) land on one device, not replicated on the mesh:
    # the guarded train step then refuses them. Placed here until the engine does it.
    from ssl_jax import parallel  # pylint: disable=g-import-not-at-top
    run.state = dict(run.state, opt_state=jax.device_put(run.state['opt_state'],
                                                         parallel.replicated(run.mesh)))
    if steps == 0 or run.start_step >= steps:
      return run, run.state, steps
    out = train.train_loop(run)
    if out.get('preempted') or out['step'] < steps:
      raise Interrupted(f'fine-tuning run {workdir} stopped at step {out["step"]} of '
                        f'{steps}; run the same command again to resume it')
    return run, out['state'], steps

  def logits(self, run, state, arrays, split):
    """(logits np.float32[N, K], labels) of the network on a raw split (eval preprocessing)."""
    from ssl_jax.data import sources  # pylint: disable=g-import-not-at-top
    task = run.task_set.members[0]
    name = task.name
    src = sources.ArraySource({split: arrays}, run.config.input.pp_train,
                              run.config.input.pp_eval, seed=run.config.seed)
    host = jax.device_get({'params': state['params'], 'batch_stats': state['batch_stats']})
    model = run.model

    def fn(variables, images):
      batch = {'image': images, 'label': jnp.zeros(images.shape[:1], jnp.int32),
               'mask': jnp.ones(images.shape[:1], bool)}
      inputs, _ = task.task.pretext(jax.random.key(0), batch, train=False)
      out, _ = model.apply(variables, {name: inputs}, train=False)
      return {'logits': out[name].astype(jnp.float32)}

    x, y = features.extract(fn, jax.device_put(host),
                            src.eval_batches(split, run.config.eval_batch_size))
    if jax.process_count() > 1:
      x, y = features.gather_processes(x, y)
    return x['logits'], y

  def run(self, ctx, cache):
    del cache
    s = self.settings
    init = 'scratch' if ctx.baseline else 'pretext'
    temporary = ctx.workdir is None
    root = (tempfile.mkdtemp(prefix='finetune_') if temporary else
            os.path.join(ctx.workdir, 'finetune', self.name, init))
    t0 = time.perf_counter()
    try:
      train_x, train_y = ctx.arrays('train')
      _, levels = evaluators.train_levels(ctx, labels_lib.FINE)
      for count in self.label_counts:
        idx = labels_lib.subset(train_y, count, ctx.num_classes, s.seed)
        subset = (train_x[idx], train_y[idx])
        tag = 'all' if count == labels_lib.ALL else f'{count}_per_class'
        grid, best = [], None
        for lr, wd, ep in self.grid:
          wdir = os.path.join(root, tag, f'lr{lr:g}_wd{wd:g}_ep{ep:g}')
          val = _read_done(wdir)
          if val is None:
            run, state, steps = self.train_one(ctx, wdir, subset, lr, wd, ep)
            logits, y = self.logits(run, state, ctx.arrays('val'), 'val')
            val = dict(labels_lib.score(logits, y, levels), steps=steps)
            _write_done(wdir, val)
          grid.append(dict(lr=lr, weight_decay=wd, epochs=ep, val_top1=val['top1'],
                           steps=val['steps']))
          if best is None or val['top1'] > best[1]['top1']:
            best = ((lr, wd, ep, wdir), val)
        (lr, wd, ep, wdir), val = best
        run, state, steps = self.train_one(ctx, wdir, subset, lr, wd, ep)  # (restores)
        logits, y = self.logits(run, state, ctx.arrays('test'), 'test')
        variant = labels_lib.count_name(count)
        settings = dict(init=init, labels_per_class=count, train_examples=int(len(idx)),
                        lr=lr, weight_decay=wd, epochs=ep, steps=steps)
        note = f'lr {lr:g}, wd {wd:g}, {ep:g} ep ({steps} steps), n={len(idx)}'
        for metric, value in val.items():
          if metric not in ('count', 'steps'):
            yield evaluators.row('network', metric, value, split='val', variant=variant,
                                 count=val['count'], note=note, **settings)
        for r in evaluators.score_rows('network', logits, y, levels, split='test',
                                       variant=variant, note=note, **settings):
          r['detail'] = (init, tag)
          yield r
        test = labels_lib.score(logits, y, levels)
        yield (init, tag), dict(test, split='test', val=val, selected=settings, grid=grid)
        logging.info('%s (%s init, %s): val top-1 %.4f, test top-1 %.4f (%s)', self.name,
                     init, variant, val['top1'], test['top1'], note)
    finally:
      if temporary:
        shutil.rmtree(root, ignore_errors=True)
    ctx.timing[f'{self.name}_s'] = ctx.timing.get(f'{self.name}_s', 0.0) + (
        time.perf_counter() - t0)


def _read_done(workdir):
  path = os.path.join(workdir, DONE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_done(workdir, val):
  """The run's val scores, written once it has trained every step (atomic rename)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, DONE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(val, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(workdir, DONE))
