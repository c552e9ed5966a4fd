"""The evaluation job: `run(config, workdir)` (config: configs/linear_eval.py), the conductor
of the evaluators (`ssl_jax.evaluation.evaluators`) over one shared feature cache.

1. Restore the pretext trunk (`checkpoint.restore_trunk(config.pretrained)`), frozen,
   BatchNorm in inference mode with the statistics config.eval.bn_stats says; build it
   with the pretext run's model settings; ask the task which input it takes.
2. Images from config.data (independent of the pretext data: transfer works), with the
   evaluation preprocessing (config.input.pp_*; patch models: the study's patch geometry).
3. Build every enabled evaluator of config.evals (probe, mlp, knn, lowshot, finetune, ...:
   one file each, a registry); a bad section is a one-line error before any compile.
4. Per endpoint group, extract the features of every split once (`features.Cache`) and
   run each evaluator that reads them; then the evaluators that need the trunk itself
   (fine-tuning, the faithful probe). Every choice is made on val; test is scored once.
5. With config.eval.random_init_baseline, steps 4 again on a random-init twin (same
   architecture, input, features, evaluators and seeds; BN statistics per
   config.eval.baseline_bn): every row gets its `baseline` and `gain`.
6. workdir/results.json, TensorBoard scalars (clu, if installed) and a console table,
   all made from the rows alone.

Rows (`rows(results)`, results['rows']): a list of flat dicts, one number each:
  evaluator   the instance name (the config.evals key: 'linear', 'mlp', 'knn', ...)
  type        the evaluator type ('probe', 'mlp', 'knn', 'lowshot', 'finetune', ...)
  endpoint    the trunk endpoint ('block3', 'pre_logits', ...; 'network' for fine-tuning)
  variant     '' or what distinguishes rows of one endpoint: a kNN preset
              ('k20_t0.07'), '<k>-shot', '<n>/class' (label count), ...
  metric      'top1', 'top5' (more than 5 classes), 'top1@<level>' (granularity: the
              prediction mapped to its config.groupings group), ...
  split       'val' or 'test'
  value       the number (a fraction for accuracies)
  count       examples scored
  baseline    the random-init twin's value of the same (evaluator, endpoint, variant,
              metric, split), or None; gain: value - baseline, or None
  note        a short human summary of the chosen settings (the table's last column)
  warnings    [str]: the solver's degenerate-feature / unconverged-point lines
  detail      (some rows) the results[<evaluator>] key holding the historic dict
  ...         the evaluator's settings, flat (solver, weight_decay, epochs, converged,
              labels_per_class, k, temperature, shots, lr, ...)
results[<evaluator>] holds each evaluator's details (for the standard instances the
historic dicts: results['linear'][endpoint], results['knn'][preset][endpoint], ...);
results['baseline'][<evaluator>] the twin's; results['baseline']['bn_stats'] how the
twin's BatchNorm statistics were obtained.

TensorFlow is imported only by the TFDS source, lazily; `evaluate_arrays` runs the
whole evaluation on numpy arrays without it.
"""
import functools
import json
import logging
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.data import axes
from ssl_jax.data import sources
from ssl_jax.evaluation import evaluators
from ssl_jax.evaluation import features
from ssl_jax.evaluation import labels as labels_lib
from ssl_jax.evaluation import pooling

# Size-like values of a linear-evaluation config: key -> (minimum, special values).
EVAL_SIZES = {
    'batch_size': (1, ()), 'eval_batch_size': (1, ()), 'seed': (0, ()),
    'checkpoint_step': (0, (-1,)), 'data.image_size': (1, ()), 'data.num_classes': (1, ()),
    'input.shuffle_buffer': (1, ()), 'input.prefetch': (0, ()), 'eval.views': (1, ()),
    'eval.target_dims': (1, ()), 'eval.max_train_examples': (1, (-1,)),
    'eval.lbfgs_iters': (1, ()), 'eval.bn_batches': (1, ()), 'model.width': (1, ()),
    'train.batch_size': (1, ()), 'train.epochs': (1, ()), 'train.eval_every': (1, ()),
    'train.eval_batch_size': (1, ()), 'train.mlp_hidden': (1, ()),
    'train.max_decays': (0, ()), 'train.seed': (0, ()),
    'mlp.train.epochs': (1, ()), 'mlp.train.eval_every': (1, ()),
    'mlp.train.batch_size': (1, ()), 'lowshot.samples': (1, ()),
}
MODES = ('cached', 'faithful')
SOLVERS = ('sgd', 'lbfgs', 'ridge')
SPLITS = ('train', 'val', 'test')
BN_STATS = ('best', 'trained', 'reestimate')
BASELINE_BN = ('best', 'init', 'reestimate')
# 'best': both kinds of statistics, per result group the better on val (`evaluate_bn`).
BN_OPTIONS = {'trunk': ('trained', 'reestimate'), 'twin': ('init', 'reestimate')}


# ----------------------------------------------------------------------------- config


def validate(config):
  """ValueError naming the key, value and what is allowed, before anything compiles.

  Returns:
    the enabled evaluators of config.evals (built: their sections are valid).
  """
  def allowed(key, value, choices):
    if value not in choices:
      raise ValueError(f'config.{key}={value!r} is not allowed; allowed: {list(choices)}')
  from ssl_jax import config_lib  # pylint: disable=g-import-not-at-top
  config_lib.check_sizes(config, {k: v for k, v in EVAL_SIZES.items()
                                  if k.split('.')[0] in config}, error=ValueError)
  e = config.eval
  allowed('eval.mode', e.mode, MODES)
  allowed('eval.solver', e.solver, SOLVERS)
  allowed('eval.pool_mode', e.pool_mode, pooling.MODES)
  allowed('eval.patch_combine', e.patch_combine, ('avg', 'max', 'concat'))
  allowed('eval.cache_dtype', e.cache_dtype, ('float32', 'bfloat16'))
  allowed('eval.bn_stats', e.bn_stats, BN_STATS)
  allowed('eval.baseline_bn', e.baseline_bn, BASELINE_BN)
  allowed('data.source', config.data.source, ('tfds', 'in_memory', 'synthetic'))
  if e.mode == 'faithful' and jax.process_count() > 1:
    raise ValueError("config.eval.mode='faithful' runs on one process (its heads train on "
                     "that process's batches); with several processes use mode 'cached', "
                     'whose features are gathered from every process')
  if e.mode == 'faithful' and e.solver != 'sgd':
    raise ValueError(f"config.eval.solver={e.solver!r} needs cached features; the "
                     "faithful mode trains with 'sgd'")
  if not config.data.val_split:
    raise ValueError('config.data.val_split is empty: model selection needs a held-out '
                     'validation split carved from train (never the test split)')
  if config.data.val_split == config.data.test_split:
    raise ValueError(f'config.data.val_split == test_split ({config.data.test_split!r}): '
                     'selection on the test split is not allowed')
  labels_lib.check_groupings(config.get('groupings'), config.data.num_classes)
  return evaluators.build_all(config, config.evals)


# ----------------------------------------------------------------------------- trunk


def eval_input_of(pretext_config):
  """The EvalInput of the task a pretext config trained (the task says what it takes).

  Layout-1 workdirs (written before the task contract) keep their settings at the
  top level: the patch tasks' geometry in config.patches.
  """
  from ssl_jax import tasks  # pylint: disable=g-import-not-at-top
  from ssl_jax.tasks import patches  # pylint: disable=g-import-not-at-top
  if 'tasks' not in pretext_config:
    if 'patches' in pretext_config:
      return patches.eval_input(pretext_config.patches)
    return tasks.EvalInput('rgb', features.to_minus_one_one)
  return tasks.get_task(pretext_config.task, pretext_config).eval_input


def load_trunk(config, image_shape=None, eval_input=None, *, init=True):
  """The frozen trunk: dict(model, variables, model_config, task, eval_input, name, endpoints).

  Args:
    config: the linear-eval config (pretrained, checkpoint_step, eval.trunk_dtype;
      model when pretrained == '').
    image_shape: (H, W, 3) of the eval images; needed only for a random trunk.
    eval_input: the random trunk's input (default: RGB in [-1, 1]).
    init: False leaves a random trunk's variables None (its description alone, for the
      checks that come before any compile); `with_variables` initialises them.
  Raises:
    FileNotFoundError naming a missing workdir or checkpoint.
  """
  from ssl_jax import models  # pylint: disable=g-import-not-at-top
  from ssl_jax import tasks  # pylint: disable=g-import-not-at-top
  if config.pretrained:
    from ssl_jax import checkpoint  # pylint: disable=g-import-not-at-top
    step = None if config.checkpoint_step < 0 else config.checkpoint_step
    pretext, params, stats = checkpoint.restore_trunk(config.pretrained, step=step)
    m, task = pretext.model, pretext.task
    eval_input = eval_input_of(pretext)
  else:
    m, task, params, stats = config.model, 'random_init', None, None
    eval_input = eval_input or tasks.EvalInput('rgb', features.to_minus_one_one)
  model = models.create_trunk(m, dtype=config.eval.trunk_dtype or m.dtype)
  if params is None:
    if image_shape is None:
      raise ValueError('a random trunk needs the image shape')
    variables = None
  else:
    variables = {'params': params}
    if stats:
      variables['batch_stats'] = stats
  # The unit endpoints of config.model.unit_endpoints (the lasso's) are listed after the
  # stage endpoints; evaluators read them only where they name them.
  units = tuple(u for stage in (m.get('unit_endpoints', ()) or ())
                for u in models.unit_endpoint_names(m.name, stage))
  trunk = {'model': model, 'variables': variables, 'model_config': m.to_dict(),
           'task': task, 'eval_input': eval_input, 'name': m.name,
           'endpoints': tuple(models.trunk_endpoints(m.name)) + units,
           'image_shape': None if image_shape is None else tuple(image_shape),
           'seed': config.seed}
  return with_variables(trunk) if init else trunk


def with_variables(trunk):
  """`trunk` with its variables: a random trunk (variables None) initialised at its
  image shape from its seed (`random_variables`); any other trunk as it is."""
  if trunk['variables'] is not None:
    return trunk
  return dict(trunk, variables=random_variables(trunk['model'], trunk['eval_input'],
                                                trunk['image_shape'], trunk['seed']))


def random_variables(model, eval_input, image_shape, seed):
  """The random-init variables of trunk `model` for u8[H, W, 3] images of `image_shape`
  under `eval_input`: {'params', 'batch_stats'} as numpy arrays, from the model's own
  initialisers under jax.random.key(seed, impl='unsafe_rbg')."""
  x = jax.eval_shape(eval_input.fn, jax.ShapeDtypeStruct((1,) + tuple(image_shape),
                                                         jnp.uint8))
  # One compiled program: eager init would compile every initializer separately.
  init = jax.jit(lambda rng, x: model.init(rng, x, train=False))
  # 'unsafe_rbg' keys compile several times faster than threefry on a CPU; the
  # values of a random baseline trunk do not need threefry's guarantees.
  variables = init(jax.random.key(int(seed), impl='unsafe_rbg'),
                   jnp.zeros(x.shape, jnp.float32))
  return jax.tree.map(np.asarray, dict(variables))


def preprocessing(config, eval_input=None):
  """(pp_train, pp_eval): the task's evaluation geometry (patch models: the study's,
  scaled to the patch size), else the config's, else the dataset's native size."""
  if eval_input is not None and eval_input.pp:
    return eval_input.pp, eval_input.pp
  default = f'decode|resize({config.data.image_size})'
  return config.input.pp_train or default, config.input.pp_eval or default


def make_source(config, pp_train, pp_eval, arrays=None):
  """A ssl_jax.data.sources object for config.data (or the given arrays)."""
  if arrays is None and config.data.source == 'synthetic':
    arrays = synthetic_arrays(config)
  if arrays is None and config.data.source == 'in_memory':
    arrays = {s: axes.load_split(config, s) for s in SPLITS}
  n_max = config.eval.max_train_examples
  if arrays is not None:
    # data.subset here is the label-quantity axis (nested subsets of the train split).
    arrays = axes.apply(config, dict(arrays))
    if n_max > 0:
      arrays['train'] = tuple(a[:n_max] for a in arrays['train'])
    return sources.ArraySource(arrays, pp_train, pp_eval, seed=config.seed)
  pcfg = config.copy_and_resolve_references()
  with pcfg.unlocked():
    pcfg.input.pp_train, pcfg.input.pp_eval = pp_train, pp_eval
  return sources.TfdsSource(pcfg)


def synthetic_arrays(config):
  """Random uint8 images with the dataset's size (benchmarks without data)."""
  rng = np.random.RandomState(config.seed)
  size = config.data.image_size
  n = config.data.get('synthetic_examples', 1024)
  out = {}
  for split, m in (('train', n), ('val', max(n // 10, 1)), ('test', max(n // 5, 1))):
    out[split] = (rng.randint(0, 256, (m, size, size, 3), dtype=np.uint8),
                  rng.randint(0, config.data.num_classes, (m,)).astype(np.int32))
  return out



def random_twin(config, trunk, image_shape):
  """A randomly initialised trunk of `trunk`'s architecture and evaluation input."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.pretrained = ''
    cfg.model = ml_collections.ConfigDict(trunk['model_config'])
  return load_trunk(cfg, image_shape=image_shape, eval_input=trunk['eval_input'])



def trunk_and_source(config, arrays=None, trunk=None, *, init=True):
  """(trunk dict, source, (pp_train, pp_eval)); a random trunk is built at the crop size
  (init=False: described only, see load_trunk)."""
  # (A random trunk as the evaluated model is its own baseline.)
  if trunk is None and config.pretrained:
    trunk = load_trunk(config)
  pp = preprocessing(config, trunk['eval_input'] if trunk else None)
  source = make_source(config, *pp, arrays=arrays)
  if trunk is None:
    trunk = load_trunk(config, image_shape=source.image_shape(train=False), init=init)
  return trunk, source, pp



def extract_fn(config, trunk, endpoints, dtype=None):
  """The feature function of `trunk` under config.eval (trunk input, pooling, target
  dims, patch combination, global-average extras), see features.make_extract_fn.

  dtype: the features' dtype (default: config.eval.cache_dtype).
  """
  e = config.eval
  if dtype is None:
    dtype = jnp.bfloat16 if e.cache_dtype == 'bfloat16' else jnp.float32
  return features.make_extract_fn(
      trunk['model'], endpoints, eval_input=trunk['eval_input'], pool_mode=e.pool_mode,
      target_dims=e.target_dims, patch_combine=e.patch_combine, global_avg=e.global_avg,
      out_dtype=dtype)


def split_sizes(config, source):
  """{split: examples evaluated}: the source's sizes, train capped by
  config.eval.max_train_examples (> 0)."""
  sizes = {s: source.num_examples(s) for s in SPLITS}
  if config.eval.max_train_examples > 0:
    sizes['train'] = min(sizes['train'], config.eval.max_train_examples)
  return sizes


def bn_statistics(config, trunk, source, bn):
  """(variables, description): the trunk's variables with the BN statistics `bn` asks for.

  bn: 'trained' / 'init' (the statistics the trunk has: a checkpoint's moving averages,
  a random trunk's initial mean 0 / variance 1) or 'reestimate' (population statistics
  of the train split's first config.eval.bn_batches batches of eval_batch_size images
  under the evaluation preprocessing, `features.reestimate_batch_stats`; weights as they are).
  """
  if bn == 'best':  # (one set of statistics wanted, e.g. a notebook's cache: the own)
    bn = 'trained'
  if bn != 'reestimate' or not trunk['variables'].get('batch_stats'):
    kind = 'initial (mean 0, variance 1)' if trunk['task'] == 'random_init' else (
        "the checkpoint's moving averages")
    return trunk['variables'], {'method': bn, 'what': kind}
  t = time.perf_counter()
  variables, used = features.reestimate_batch_stats(
      trunk['model'], trunk['variables'],
      source.eval_batches('train', config.eval_batch_size),
      num_batches=config.eval.bn_batches, eval_input=trunk['eval_input'], seed=config.seed)
  seconds = time.perf_counter() - t
  logging.info('BN statistics of the %s trunk re-estimated on %d train images in %.1fs',
               trunk['task'], used, seconds)
  return variables, {'method': 'reestimate', 'images': used, 'seconds': seconds,
                     'what': f'population statistics of {used} train-split images '
                             '(evaluation preprocessing), weights unchanged'}



def plan_groups(dims, rows, bytes_per_value, max_gb):
  """Endpoint groups whose cached features (rows x dims) fit in max_gb (0: one group).

  Names ending in the global-average suffix stay with their endpoint.
  """
  base = {}
  for name, d in dims.items():
    root = name[:-len(features.GAP_SUFFIX)] if name.endswith(features.GAP_SUFFIX) else name
    base[root] = base.get(root, 0) + d
  if max_gb <= 0:
    return [sorted(base)]
  budget = max_gb * 2**30
  groups, cur, used = [], [], 0
  for name in sorted(base, key=lambda n: -base[n]):
    size = base[name] * rows * bytes_per_value
    if cur and used + size > budget:
      groups.append(cur)
      cur, used = [], 0
    cur.append(name)
    used += size
  if cur:
    groups.append(cur)
  return groups



# ----------------------------------------------------------------------------- run


def run(config, workdir, *, arrays=None):
  """The job: evaluates config.pretrained's trunk; writes workdir/results.json.

  Args:
    config: a configs/linear_eval.py config.
    workdir: output directory (results.json, TensorBoard events, fine-tuning runs).
    arrays: optional {'train'|'val'|'test': (u8 images, labels)}: no TFDS needed.
  Returns:
    the results dict (as written to results.json).
  Raises:
    config_lib.ConfigError (one line) for a bad config, missing data or checkpoint, or
    an output path that cannot be written, before any work.
  """
  from ssl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from ssl_jax import config_lib  # pylint: disable=g-import-not-at-top
  chief = jax.process_index() == 0
  with config_lib.startup_errors():  # one-line errors, before anything compiles
    evs = validate(config)
    if chief:
      check_outputs(workdir)
    # A random trunk is only described here: its init is work, after the checks.
    trunk, source, (pp_train, pp_eval) = trunk_and_source(config, arrays, init=False)
    if isinstance(source, sources.TfdsSource):
      source.check()
    sources.check_labels(config, source)
    raw = raw_arrays(config, arrays)
    check_evaluators(config, evs, trunk, source, raw)
    # One job per workdir (checkpoint.lock_workdir): a second evaluation, or a pretext
    # run, on this workdir fails here, naming the holder, instead of overwriting it.
    lock = checkpoint.lock_workdir(workdir)
  with lock:
    trunk = with_variables(trunk)
    # Every process computes the whole split's numbers (features are gathered across
    # processes); only the first one writes files.
    writer = _make_writer(workdir) if chief else None
    results = evaluate_with_baseline(config, trunk, source, writer=writer, evals=evs,
                                     workdir=workdir, arrays=raw)
    results['preprocessing'] = {'train': pp_train, 'eval': pp_eval}
    if chief:
      with open(os.path.join(workdir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2, sort_keys=True)
      print(format_table(results), flush=True)
      logging.info('evaluation: results in %s', os.path.join(workdir, 'results.json'))
      write_final_scalars(writer, results)
      if writer is not None:
        writer.flush()
  return results


def evaluate_arrays(config, arrays, *, trunk=None, writer=None, workdir=None):
  """The whole evaluation on numpy arrays (no TensorFlow), e.g. on the GPU machine.

  Args:
    config: a configs/linear_eval.py config (data.* splits are ignored).
    arrays: {'train'|'val'|'test': (u8[N,H,W,3], int[N])}.
    trunk: optional `load_trunk`-style dict (default: from config.pretrained).
    writer: optional clu metric writer.
    workdir: where evaluators that train networks keep their runs (default: a
      temporary directory, removed at the end).
  """
  evs = validate(config)
  trunk, source, _ = trunk_and_source(config, arrays, trunk)
  raw = raw_arrays(config, arrays)
  check_evaluators(config, evs, trunk, source, raw)
  return evaluate_with_baseline(config, trunk, source, writer=writer, evals=evs,
                                workdir=workdir, arrays=raw)


def check_outputs(workdir):
  """OSError / ValueError (one line) unless workdir and workdir/results.json can be
  written: checked before any work (a results.json path that is a directory used to
  fail only after the whole evaluation)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f'--workdir {workdir} exists and is not a directory')
  os.makedirs(workdir, exist_ok=True)
  out = os.path.join(workdir, 'results.json')
  if os.path.isdir(out):
    raise ValueError(f'{out} is a directory; the evaluation writes its results there '
                     '(remove it or choose another --workdir)')
  try:
    fd, probe = tempfile.mkstemp(prefix='.write_probe_', dir=workdir)
    os.close(fd)
    os.remove(probe)
    if os.path.exists(out):
      with open(out, 'a'):
        pass
  except OSError as e:
    raise OSError(f'cannot write the evaluation outputs in {workdir}: {e}') from None


def raw_arrays(config, arrays):
  """split -> (u8 images, labels) of the decoded splits (train capped as evaluated),
  loaded on first use and kept; for evaluators that train networks (fine-tuning)."""
  memo = {}

  def get(split):
    if split not in memo:
      if arrays is not None:
        images, labels = arrays[split]
      elif config.data.source == 'synthetic':
        images, labels = synthetic_arrays(config)[split]
      else:
        import input_pipeline  # pylint: disable=g-import-not-at-top
        images, labels = input_pipeline.load_arrays(config, split)
      n = config.eval.max_train_examples
      if split == 'train' and n > 0:
        images, labels = images[:n], labels[:n]
      memo[split] = (np.asarray(images), np.asarray(labels, np.int32))
    return memo[split]
  return get


def context(config, trunk, source, *, writer=None, workdir=None, arrays=None,
            baseline=False):
  """The `evaluators.Context` of one pass (the trunk's variables as given)."""
  return evaluators.Context(
      config=config, trunk=trunk, source=source, num_classes=config.data.num_classes,
      groupings=labels_lib.check_groupings(config.get('groupings'),
                                           config.data.num_classes),
      seed=config.seed, workdir=workdir, baseline=baseline, writer=writer, arrays=arrays,
      sizes=split_sizes(config, source))


def check_evaluators(config, evs, trunk, source, arrays):
  """Every evaluator's data-dependent checks (label counts, levels, endpoints), before
  any compile."""
  ctx = context(config, trunk, source, arrays=arrays)
  names = with_units(config, evs, trunk)
  available = names + [n + features.GAP_SUFFIX for n in names] if config.eval.global_avg \
      else names
  for ev in evs:
    ev.endpoints(available)
    ev.check(ctx)


def with_units(config, evs, trunk):
  """The endpoints to extract: config.eval.endpoints' (all but the unit endpoints by
  default), then the trunk's unit endpoints that an evaluator names (the lasso's)."""
  names = evaluators.endpoint_list(config.eval.endpoints, trunk['endpoints'],
                                   'eval.endpoints')
  units = [n for n in trunk['endpoints'] if evaluators.is_unit(n) and n not in names]
  if units:
    offered = names + units
    if config.eval.global_avg:
      offered = offered + [n + features.GAP_SUFFIX for n in offered]
    asked = {n for ev in evs for n in ev.endpoints(offered)}
    names = names + [u for u in units
                     if u in asked or u + features.GAP_SUFFIX in asked]
  return names


def evaluate_with_baseline(config, trunk, source, *, writer=None, evals=None,
                           workdir=None, arrays=None):
  """`evaluate`, plus the random-init baseline when config.eval.random_init_baseline.

  The baseline is the same evaluation (architecture, evaluation input, features,
  evaluators, seeds) of a randomly initialised trunk (`random_twin`) whose BatchNorm
  statistics are config.eval.baseline_bn's: 'best' (default: both kinds, chosen per row
  group on val, as config.eval.bn_stats='best' does for the trained trunk: `evaluate_bn`),
  'init' (mean 0, variance 1) or 'reestimate' (population statistics of train images).
  results['baseline'] holds its details; every row gets `baseline` and `gain`.
  """
  evs = validate(config) if evals is None else evals
  results = evaluate_bn(config, trunk, source, evs, config.eval.bn_stats, writer=writer,
                        workdir=workdir, arrays=arrays)
  if not (config.eval.get('random_init_baseline', False) and trunk['task'] != 'random_init'):
    return results
  logging.info('random-init baseline: the same evaluation on a random %s trunk',
               trunk['name'])
  twin = random_twin(config, trunk, source.image_shape(train=False))
  base = evaluate_bn(config, twin, source, evs, config.eval.baseline_bn, baseline=True,
                     workdir=workdir, arrays=arrays)
  results['baseline'] = {name: base[name] for name, _ in evaluators.sections(config.evals)}
  results['baseline'].update(timing=base['timing'], bn_stats=base['bn_stats'], what=(
      'random-init trunk: same architecture, evaluation input, features, evaluators and '
      f"seeds; BatchNorm statistics: {base['bn_stats']['what']}"))
  merge_baseline(results, base)
  return results


def _group_key(r):
  return (r['evaluator'], r['endpoint'], r['variant'])


def evaluate_bn(config, trunk, source, evs, bn, *, baseline=False, **kwargs):
  """`evaluate` with BatchNorm statistics `bn`; bn='best': once per kind of statistics
  (BN_OPTIONS: the trunk's own, then re-estimated on train images) and, per result group
  (evaluator, endpoint, variant), the rows of the pass whose val top-1 is higher (ties
  and groups without a val row: the first kind). Test numbers never take part in the
  choice. Evaluators that read no cached features (fine-tuning, the faithful probe)
  run once, with the first kind. Every row gets `bn` (the kind used); results['bn_stats']
  says what was compared and what was chosen.

  Why (measured, README "Linear evaluation"): on CIFAR-10 a random VGG19-BN twin with
  its initial statistics (mean 0, variance 1) beats the same twin with data statistics
  by 5-6 points at block5 / fc6 / pre-logits and loses by 1-2 at block2 / block3; no
  single kind is the strongest baseline at every layer, so both sides get the same
  choice, made on val.
  """
  if bn != 'best':
    return evaluate(config, trunk, source, evs, bn=bn, baseline=baseline, **kwargs)
  first, second = BN_OPTIONS['twin' if baseline or trunk['task'] == 'random_init'
                             else 'trunk']
  a = evaluate(config, trunk, source, evs, bn=first, baseline=baseline, **kwargs)
  cached = [ev for ev in evs if ev.endpoints(list(a['dims']))]
  try:
    b = evaluate(config, trunk, source, cached, bn=second, baseline=baseline, **kwargs)
  except ValueError as e:
    if 'no full batch' not in str(e):
      raise
    # A train split smaller than one eval batch: only the first kind exists.
    logging.warning('eval.bn_stats / baseline_bn = best: %s; using %s only', e, first)
    for r in a['rows']:
      r['bn'] = first
    a['bn_stats'] = dict(a['bn_stats'], method='best', what=a['bn_stats']['what'] + (
        ' (re-estimation impossible: fewer train images than one batch)'))
    return a

  def val_top1(res):
    return {_group_key(r): r['value'] for r in res['rows']
            if r['split'] == 'val' and r['metric'] == 'top1'}
  va, vb = val_top1(a), val_top1(b)
  groups_b = {}
  for r in b['rows']:
    groups_b.setdefault(_group_key(r), []).append(r)
  chosen, out = {}, []
  for r in a['rows']:
    g = _group_key(r)
    if g not in chosen:
      chosen[g] = second if (g in va and g in vb and vb[g] > va[g] and g in groups_b) else first
      if chosen[g] == second:
        for rb in groups_b[g]:
          out.append(dict(rb, bn=second))
          _copy_detail(b, a, rb)
    if chosen[g] == first:
      out.append(dict(r, bn=first))
  a['rows'] = out
  a['timing'] = {k: a['timing'].get(k, 0.0) + b['timing'].get(k, 0.0)
                 for k in set(a['timing']) | set(b['timing'])}
  picks = {' / '.join(x for x in g if x): kind for g, kind in chosen.items()}
  a['bn_stats'] = {
      'method': 'best', 'options': {first: a['bn_stats'], second: b['bn_stats']},
      'chosen': picks,
      'what': (f"per row group the better on val of {a['bn_stats']['what']} and "
               f"{b['bn_stats']['what']} ({sum(k == second for k in picks.values())} of "
               f'{len(picks)} groups took the re-estimated ones)')}
  return a


def _copy_detail(src, dst, row):
  """Copies the historic detail dict a row names (row['detail']) from src to dst."""
  path = row.get('detail')
  if path is None:
    return
  path = list(path) if isinstance(path, (list, tuple)) else [path]
  s, d = src.get(row['evaluator']), dst.setdefault(row['evaluator'], {})
  for k in path[:-1]:
    if not isinstance(s, dict) or k not in s:
      return
    s, d = s[k], d.setdefault(k, {})
  if isinstance(s, dict) and path[-1] in s:
    d[path[-1]] = s[path[-1]]


def _row_key(r):
  return (r['evaluator'], r['endpoint'], r['variant'], r['metric'], r['split'])


def merge_baseline(results, base):
  """Adds `baseline` and `gain` to results' rows from the twin's rows (same key), and
  baseline_top1 / gain to the historic detail dicts the test top-1 rows name."""
  ref = {_row_key(r): r['value'] for r in base['rows']}
  for r in results['rows']:
    b = ref.get(_row_key(r))
    r['baseline'] = b
    r['gain'] = None if b is None else r['value'] - b
    path = r.get('detail')
    if b is not None and path is not None and r['metric'] == 'top1' and r['split'] == 'test':
      node = results[r['evaluator']]
      for k in (path if isinstance(path, (list, tuple)) else [path]):
        node = node.get(k, {}) if isinstance(node, dict) else {}
      if isinstance(node, dict) and node:
        node['baseline_top1'] = b
        node['gain'] = r['value'] - b


def evaluate(config, trunk, source, evals=None, *, writer=None, bn='trained',
             baseline=False, workdir=None, arrays=None):
  """One pass of every evaluator over `trunk`; returns the results dict (no baseline).

  bn: the BatchNorm statistics to use ('trained'/'init': the trunk's; 'reestimate':
  `bn_statistics`). baseline: this is the twin's pass (evaluators label and place
  their outputs accordingly).
  """
  e = config.eval
  evs = validate(config) if evals is None else evals
  t0 = time.perf_counter()
  variables, bn_info = bn_statistics(config, trunk, source, bn)
  trunk = dict(trunk, variables=variables)
  names = with_units(config, evs, trunk)
  make_fn = functools.partial(extract_fn, config, trunk)
  image_shape = source.image_shape(train=False)
  dims = features.feature_dims(make_fn(names), variables, image_shape)
  needs = {ev.name: ev.endpoints(list(dims)) for ev in evs}
  wanted = [n for n in dims if any(n in v for v in needs.values())]
  sizes = split_sizes(config, source)
  ctx = context(config, trunk, source, writer=writer, workdir=workdir, arrays=arrays,
                baseline=baseline)
  ctx.timing['bn_s'] = bn_info.get('seconds', 0.0)
  logging.info('trunk %s (%s), endpoints %s, pooled dims %s, splits %s', trunk['name'],
               trunk['task'], names, dims, sizes)
  results = {
      'pretrained': config.pretrained or None, 'pretext_task': trunk['task'],
      'model': trunk['model_config'], 'dataset': config.data.name,
      'num_classes': config.data.num_classes,
      'splits': {s: config.data[f'{s}_split'] for s in SPLITS},
      'source': ('tfds' if isinstance(source, sources.TfdsSource)
                 else 'arrays (data.*_split not applied)'),
      'num_examples': sizes, 'mode': e.mode, 'solver': e.solver,
      'pool_mode': e.pool_mode, 'target_dims': e.target_dims,
      'trunk_input': trunk['eval_input'].kind, 'image_shape': list(image_shape),
      'dims': dims, 'bn_stats': bn_info, 'timing': ctx.timing, 'rows': [],
      'evaluators': {ev.name: {'type': ev.type, 'rank': ev.rank} for ev in evs},
      'groupings': {k: [int(g) for g in v] for k, v in ctx.groupings.items()},
      'device': f'{jax.devices()[0].platform}: {jax.devices()[0].device_kind} '
                f'x{jax.device_count()}',
  }
  for name, _ in evaluators.sections(config.evals):
    results[name] = {}  # (disabled ones too: readers of the historic keys find them)

  def collect(ev, outputs):
    for item in outputs:
      if isinstance(item, tuple):
        key, value = item
        node = results[ev.name]
        path = list(key) if isinstance(key, (list, tuple)) else [key]
        for k in path[:-1]:
          node = node.setdefault(k, {})
        node[path[-1]] = value
      else:
        results['rows'].append(dict(item, evaluator=ev.name, type=ev.type))

  bytes_per = 2 if e.cache_dtype == 'bfloat16' else 4
  views = max([ev.views for ev in evs if needs[ev.name]] or [1])
  rows = sizes['train'] * views + sizes['val'] + sizes['test']
  if wanted:
    for group in plan_groups({n: dims[n] for n in wanted}, rows, bytes_per, e.max_cache_gb):
      gap = features.GAP_SUFFIX
      roots = sorted({n[:-len(gap)] if n.endswith(gap) else n for n in group})
      cache = build_cache(config, trunk, source, roots, views=views, sizes=sizes,
                          make_fn=make_fn)
      ctx.timing['extract_s'] = ctx.timing.get('extract_s', 0.0) + cache.seconds
      ctx.timing['extract_images_per_s'] = cache.images / max(cache.seconds, 1e-9)
      for ev in evs:
        if any(n in cache.endpoints for n in needs[ev.name]):
          collect(ev, ev.run(ctx, cache))
      cache.release()
  for ev in evs:
    if not needs[ev.name]:
      collect(ev, ev.run(ctx, None))
  ctx.timing['total_s'] = time.perf_counter() - t0
  return results


def build_cache(config, trunk, source, endpoints, *, views=1, sizes=None, make_fn=None):
  """The `features.Cache` of `endpoints` under config.eval (pooling, dtype, train cap)."""
  sizes = sizes or split_sizes(config, source)
  fn = (make_fn or functools.partial(extract_fn, config, trunk))(endpoints)
  return features.build_cache(
      fn, jax.device_put(trunk['variables']), source, train_examples=sizes['train'],
      batch_size=config.eval_batch_size, views=views, seed=config.seed,
      capped=config.eval.max_train_examples > 0, trunk_input=trunk['eval_input'].kind)


def cache(config, trunk=None, source=None, endpoints=None, *, views=1, bn=None,
          arrays=None):
  """The feature cache of a trunk, for notebooks and benchmarks.

  Args:
    config: a configs/linear_eval.py config (pretrained, data, eval.* pooling).
    trunk, source: from `trunk_and_source(config, arrays)` when None.
    endpoints: names ('' / None: config.eval.endpoints, all by default).
    views: train views (1 + augmented ones).
    bn: BatchNorm statistics ('trained' / 'reestimate'; default config.eval.bn_stats).
  Returns:
    a `features.Cache` of every split.
  """
  if trunk is None or source is None:
    trunk, source, _ = trunk_and_source(config, arrays, trunk)
  variables, _ = bn_statistics(config, trunk, source, bn or config.eval.bn_stats)
  trunk = dict(trunk, variables=variables)
  names = evaluators.endpoint_list(endpoints if isinstance(endpoints, str) else
                                   ','.join(endpoints or ()), trunk['endpoints'],
                                   'endpoints')
  return build_cache(config, trunk, source, names, views=views)


# ----------------------------------------------------------------------------- output


def rows(results):
  """The result rows of a results dict (results.json) as flat dicts (module docstring).

  Results written before the rows existed (only the historic per-head sections) are
  converted: linear / mlp rows from results[head][endpoint], kNN from
  results['knn'][preset][endpoint], low-shot from results['lowshot'][endpoint]['shots'].
  """
  if 'rows' in results:
    return [dict(r) for r in results['rows']]
  out = []
  base = results.get('baseline') or {}

  def add(evaluator, kind, endpoint, variant, metric, split, value, ref=None, **extra):
    out.append(dict(extra, evaluator=evaluator, type=kind, endpoint=endpoint,
                    variant=variant, metric=metric, split=split, value=value, count=None,
                    baseline=ref, gain=None if ref is None else value - ref, note='',
                    warnings=[]))

  for head, kind in (('linear', 'probe'), ('mlp', 'mlp')):
    for name, r in (results.get(head) or {}).items():
      ref = (base.get(head) or {}).get(name, {})
      for metric, split, key in (('top1', 'test', 'top1'), ('top5', 'test', 'top5'),
                                 ('top1', 'val', 'val_top1')):
        if key in r:
          add(head, kind, name, '', metric, split, r[key], ref.get(key),
              weight_decay=r.get('weight_decay'), solver=r.get('solver'))
  for preset, d in (results.get('knn') or {}).items():
    for name, r in d.items():
      ref = ((base.get('knn') or {}).get(preset) or {}).get(name, {})
      add('knn', 'knn', name, preset, 'top1', 'test', r['top1'], ref.get('top1'))
  for name, d in (results.get('lowshot') or {}).items():
    for k, r in d.get('shots', {}).items():
      ref = (((base.get('lowshot') or {}).get(name) or {}).get('shots') or {}).get(k, {})
      add('lowshot', 'lowshot', name, f'{k}-shot', 'top1', 'test', r['top1_mean'],
          ref.get('top1_mean'))
  return out


def _make_writer(workdir):
  """TensorBoard events only: the console gets the evaluators' progress lines instead of
  one line per scalar write (which printed every metric twice)."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError:  # The TF-free GPU machine: results.json only.
    logging.warning('clu is not installed: no TensorBoard events')
    return None
  return metric_writers.SummaryWriter(workdir)


def scalar_name(r, prefix=''):
  """'<evaluator>/<prefix><split>_<metric>/<endpoint>[/<variant>]' of a row."""
  tail = f"/{r['variant']}" if r['variant'] else ''
  return f"{r['evaluator']}/{prefix}{r['split']}_{r['metric']}/{r['endpoint']}{tail}"


def scalars(results):
  """{name: value} of every row, and of its baseline and gain (`scalar_name`)."""
  out = {}
  for r in rows(results):
    out[scalar_name(r)] = r['value']
    if r.get('baseline') is not None:
      out[scalar_name(r, 'baseline_')] = r['baseline']
      out[scalar_name(r, 'gain_')] = r['gain']
  return out


def write_final_scalars(writer, results):
  if writer is not None:
    writer.write_scalars(0, scalars(results))


def format_table(results):
  """The console table: one line per evaluator, endpoint and variant, made from the rows.

  Columns: val top-1, test top-1, with a baseline the random-init twin's test top-1 and
  the gain in points, test top-5, every other metric (granularity levels) with its gain,
  and the evaluator's note; '!' marks rows with solver warnings (listed below the table).
  """
  rs = rows(results)
  dims = results.get('dims', {})
  base = 'baseline' in results
  order = {n: i for i, n in enumerate(dims)}
  ranks = {k: v.get('rank', 100) for k, v in (results.get('evaluators') or {}).items()}
  groups = {}
  for r in rs:
    groups.setdefault((r['evaluator'], r['endpoint'], r['variant']), []).append(r)
  keys = sorted(groups, key=lambda k: (ranks.get(k[0], 100), k[0], order.get(k[1], 99),
                                       k[1], _variant_order(k[2])))
  bn = results.get('bn_stats', {}).get('what', '')
  lines = [f"evaluation of {results['pretrained'] or 'a random trunk'} "
           f"({results['pretext_task']}, {results['model'].get('name')} "
           f"k={results['model'].get('width')}) on {results['dataset']}, mode "
           f"{results['mode']}, pool {results['pool_mode']}; BN: {bn}"]
  if base:
    lines.append(f"random = {results['baseline'].get('what', 'random-init trunk')}")
  extra = f" {'random':>7s} {'gain':>6s}" if base else ''
  lines.append(f"{'evaluator':10s} {'endpoint':14s} {'variant':11s} {'dims':>6s} "
               f"{'val top1':>8s} {'test top1':>9s}{extra} {'test top5':>9s}  other / settings")
  warned = []

  def pct(v):
    return f'{100 * v:.2f}' if v is not None else ''

  for key in keys:
    by = {(r['metric'], r['split']): r for r in groups[key]}
    test, val = by.get(('top1', 'test')), by.get(('top1', 'val'))
    top5 = by.get(('top5', 'test'))
    main = test or val
    cells = ''
    if base:
      b = test.get('baseline') if test else None
      gain = '' if b is None else f"{100 * test['gain']:+.2f}"
      cells = f' {pct(b):>7s} {gain:>6s}'
    others = []
    for (metric, split), r in sorted(by.items()):
      if metric in ('top1', 'top5') or split != 'test':
        continue
      g = '' if r.get('gain') is None else f" ({100 * r['gain']:+.2f})"
      others.append(f"{metric} {pct(r['value'])}{g}")
    flag = ''
    ws = [w for r in groups[key] for w in r.get('warnings') or []]
    if ws or (main and main.get('converged') is False):
      flag = ' !'
      warned.append((key, sorted(set(ws)) or ['not every L2 point converged']))
    note = (main or {}).get('note', '')
    # (an endpoint that is not a cached one, e.g. the lasso's mix, gives its dims itself)
    width = dims.get(key[1], (main or {}).get('dims', 0)) or 0
    lines.append(f"{key[0]:10s} {key[1]:14s} {key[2]:11s} {int(width):6d} "
                 f"{pct(val['value'] if val else None):>8s} "
                 f"{pct(test['value'] if test else None):>9s}{cells} "
                 f"{pct(top5['value'] if top5 else None):>9s}  "
                 f"{'; '.join(others + ([note] if note else []))}{flag}")
  n = results['num_examples']
  lines.append(f"splits: train={results['splits']['train']} ({n['train']}), "
               f"val={results['splits']['val']} ({n['val']}), "
               f"test={results['splits']['test']} ({n['test']}); "
               f"test scored once with the val-selected heads")
  if base:
    lines.append('gain = test top-1 - random, in points')
  for (evaluator, endpoint, variant), ws in warned:
    for w in ws:
      lines.append(f"! {evaluator} {endpoint} {variant}: {w}".replace('  ', ' '))
  return '\n'.join(lines)


def _variant_order(v):
  """Variants in a readable order: '' first, then by their leading number."""
  if not v:
    return (0, 0, v)
  head = v.split('/')[0].split('-')[0]
  try:
    return (1, float(head), v)
  except ValueError:
    return (2, 0, v) if v != 'all labels' else (3, 0, v)
