"""The linear-evaluation job: `run(config, workdir)` (config: configs/linear_eval.py).

1. Restore the pretext trunk (`checkpoint.restore_trunk(config.pretrained)`), frozen,
   BatchNorm in inference mode; build it with the pretext run's model settings.
2. Images from config.data (independent of the pretext data: transfer works), with
   the eval preprocessing (config.input.pp_*; patch models: the study's patch geometry).
3. Per endpoint pooled features; one head per endpoint trained jointly on the train
   split ('cached': features extracted once; 'faithful': trunk at every step).
   Epochs, lr and weight decay are selected on the held-out val split only.
4. The test split is scored once, at the end, with the selected heads; MLP head, kNN and
   low-shot likewise. Every number names its split.
5. workdir/results.json, TensorBoard scalars (clu, if installed) and a console table.

TensorFlow is imported only by the TFDS source, lazily; `evaluate_arrays` runs the
whole evaluation on numpy arrays without it.
"""
import functools
import json
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.evaluation import features
from ssl_jax.evaluation import knn
from ssl_jax.evaluation import linear
from ssl_jax.evaluation import lowshot
from ssl_jax.data import sources
from ssl_jax.evaluation import pooling
from ssl_jax.evaluation import solvers

# Size-like values of a linear-evaluation config: key -> (minimum, special values).
EVAL_SIZES = {
    'batch_size': (1, ()), 'eval_batch_size': (1, ()), 'seed': (0, ()),
    'checkpoint_step': (0, (-1,)), 'data.image_size': (1, ()), 'data.num_classes': (1, ()),
    'input.shuffle_buffer': (1, ()), 'input.prefetch': (0, ()), 'eval.views': (1, ()),
    'eval.target_dims': (1, ()), 'eval.max_train_examples': (1, (-1,)),
    'eval.lbfgs_iters': (1, ()), 'model.width': (1, ()),
    'train.batch_size': (1, ()), 'train.epochs': (1, ()), 'train.eval_every': (1, ()),
    'train.eval_batch_size': (1, ()), 'train.mlp_hidden': (1, ()),
    'train.max_decays': (0, ()), 'train.seed': (0, ()),
    'mlp.train.epochs': (1, ()), 'mlp.train.eval_every': (1, ()),
    'mlp.train.batch_size': (1, ()), 'lowshot.samples': (1, ()),
}
MODES = ('cached', 'faithful')
SOLVERS = ('sgd', 'lbfgs', 'ridge')
SPLITS = ('train', 'val', 'test')


# ----------------------------------------------------------------------------- config


def validate(config):
  """ValueError naming the key, value and what is allowed, before anything compiles."""
  def allowed(key, value, choices):
    if value not in choices:
      raise ValueError(f'config.{key}={value!r} is not allowed; allowed: {list(choices)}')
  from ssl_jax import config_lib  # pylint: disable=g-import-not-at-top
  config_lib.check_sizes(config, EVAL_SIZES, error=ValueError)
  e = config.eval
  allowed('eval.mode', e.mode, MODES)
  allowed('eval.solver', e.solver, SOLVERS)
  allowed('eval.pool_mode', e.pool_mode, pooling.MODES)
  allowed('eval.patch_combine', e.patch_combine, ('avg', 'max', 'concat'))
  allowed('eval.cache_dtype', e.cache_dtype, ('float32', 'bfloat16'))
  allowed('data.source', config.data.source, ('tfds', 'in_memory', 'synthetic'))
  if e.mode == 'faithful' and jax.process_count() > 1:
    raise ValueError("config.eval.mode='faithful' runs on one process (its heads train on "
                     "that process's batches); with several processes use mode 'cached', "
                     'whose features are gathered from every process')
  if e.mode == 'faithful' and e.solver != 'sgd':
    raise ValueError(f"config.eval.solver={e.solver!r} needs cached features; the "
                     "faithful mode trains with 'sgd'")
  for i, k in enumerate(config.lowshot.shots):
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
      raise ValueError(f'config.lowshot.shots[{i}]={k!r} must be an integer >= 1')
  if not config.data.val_split:
    raise ValueError('config.data.val_split is empty: model selection needs a held-out '
                     'validation split carved from train (never the test split)')
  if config.data.val_split == config.data.test_split:
    raise ValueError(f'config.data.val_split == test_split ({config.data.test_split!r}): '
                     'selection on the test split is not allowed')
  linear.make_config(config.train)  # Unknown keys / values fail here.
  if config.mlp.enabled:
    linear.make_config(config.train, **config.mlp.train.to_dict())
  for p in config.knn.presets:
    allowed('knn.presets[]', p, sorted(knn.PRESETS))


def _names(spec, available):
  if not spec:
    return [n for n in available if n != 'logits']
  names = [s.strip() for s in spec.split(',') if s.strip()]
  for n in names:
    if n not in available:
      raise ValueError(f'endpoint {n!r} is not an endpoint of this trunk; allowed: '
                       f'{list(available)}')
  return names


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


def load_trunk(config, image_shape=None, eval_input=None):
  """The frozen trunk: dict(model, variables, model_config, task, eval_input, name, endpoints).

  Args:
    config: the linear-eval config (pretrained, checkpoint_step, eval.trunk_dtype;
      model when pretrained == '').
    image_shape: (H, W, 3) of the eval images; needed only for a random trunk.
    eval_input: the random trunk's input (default: RGB in [-1, 1]).
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
    x = jax.eval_shape(eval_input.fn, jax.ShapeDtypeStruct((1,) + tuple(image_shape),
                                                           jnp.uint8))
    # One compiled program: eager init would compile every initializer separately.
    init = jax.jit(lambda rng, x: model.init(rng, x, train=False))
    # 'unsafe_rbg' keys compile several times faster than threefry on a CPU; the
    # values of a random baseline trunk do not need threefry's guarantees.
    variables = init(jax.random.key(config.seed, impl='unsafe_rbg'),
                     jnp.zeros(x.shape, jnp.float32))
    variables = jax.tree.map(np.asarray, dict(variables))
  else:
    variables = {'params': params}
    if stats:
      variables['batch_stats'] = stats
  return {'model': model, 'variables': variables, 'model_config': m.to_dict(),
          'task': task, 'eval_input': eval_input, 'name': m.name,
          'endpoints': tuple(models.trunk_endpoints(m.name))}


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
    import input_pipeline  # pylint: disable=g-import-not-at-top
    arrays = {s: input_pipeline.load_arrays(config, s) for s in SPLITS}
  n_max = config.eval.max_train_examples
  if arrays is not None:
    arrays = dict(arrays)
    if n_max > 0:
      arrays['train'] = tuple(a[:n_max] for a in arrays['train'])
    return sources.ArraySource(arrays, pp_train, pp_eval, seed=config.seed)
  pcfg = config.copy_and_resolve_references()
  with pcfg.unlocked():
    pcfg.input.pp_train, pcfg.input.pp_eval = pp_train, pp_eval
  return sources.TfdsSource(pcfg)


def view_batches(source, split, batch_size, seed):
  """One augmented view of a split: ceil(N / batch) train-preprocessed batches.

  Rows come shuffled (with their labels); the last batch is masked to N rows total.
  """
  n = source.num_examples(split)
  it = source.train_batches(split, batch_size, seed=seed)
  for s in range(math.ceil(n / batch_size)):
    b = dict(next(it))
    local = len(b['mask'])  # this process's rows of the global batch
    first = s * batch_size + jax.process_index() * local
    b['mask'] = b['mask'] & (first + np.arange(local) < n)
    yield b


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


# ----------------------------------------------------------------------------- run


def run(config, workdir, *, arrays=None):
  """The job: evaluates config.pretrained's trunk; writes workdir/results.json.

  With config.eval.random_init_baseline (and a pretrained trunk) the same evaluation
  (architecture, evaluation input, features, probe, seeds) also runs on a randomly
  initialised trunk; results['baseline'] holds it and every row gets `baseline_top1`
  and `gain` (test top-1 minus the baseline's).

  Args:
    config: a configs/linear_eval.py config.
    workdir: output directory (results.json, TensorBoard events).
    arrays: optional {'train'|'val'|'test': (u8 images, labels)}: no TFDS needed.
  Returns:
    the results dict (as written to results.json).
  """
  from ssl_jax import config_lib  # pylint: disable=g-import-not-at-top
  chief = jax.process_index() == 0
  with config_lib.startup_errors():  # one-line errors, before anything compiles
    validate(config)
    trunk, source, (pp_train, pp_eval) = trunk_and_source(config, arrays)
    if isinstance(source, sources.TfdsSource):
      source.check()
    sources.check_labels(config, source)
    if chief:
      os.makedirs(workdir, exist_ok=True)
  # Every process computes the whole split's numbers (features are gathered across
  # processes); only the first one writes files.
  writer = _make_writer(workdir) if chief else None
  results = evaluate_with_baseline(config, trunk, source, writer=writer)
  results['preprocessing'] = {'train': pp_train, 'eval': pp_eval}
  if chief:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2, sort_keys=True)
    print(format_table(results), flush=True)
    logging.info('linear evaluation: results in %s', os.path.join(workdir, 'results.json'))
    write_final_scalars(writer, results)
    if writer is not None:
      writer.flush()
  return results


def evaluate_arrays(config, arrays, *, trunk=None, writer=None):
  """The whole evaluation on numpy arrays (no TensorFlow), e.g. on the GPU machine.

  Args:
    config: a configs/linear_eval.py config (data.* splits are ignored).
    arrays: {'train'|'val'|'test': (u8[N,H,W,3], int[N])}.
    trunk: optional `load_trunk`-style dict (default: from config.pretrained).
    writer: optional clu metric writer.
  """
  validate(config)
  trunk, source, _ = trunk_and_source(config, arrays, trunk)
  return evaluate_with_baseline(config, trunk, source, writer=writer)


def random_twin(config, trunk, image_shape):
  """A randomly initialised trunk of `trunk`'s architecture and evaluation input."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.pretrained = ''
    cfg.model = ml_collections.ConfigDict(trunk['model_config'])
  return load_trunk(cfg, image_shape=image_shape, eval_input=trunk['eval_input'])


def evaluate_with_baseline(config, trunk, source, *, writer=None):
  """`evaluate`, plus the random-init baseline when config.eval.random_init_baseline."""
  results = evaluate(config, trunk, source, writer=writer)
  if not (config.eval.get('random_init_baseline', False) and trunk['task'] != 'random_init'):
    return results
  logging.info('random-init baseline: the same evaluation on a random %s trunk',
               trunk['name'])
  twin = random_twin(config, trunk, source.image_shape(train=False))
  base = evaluate(config, twin, source, writer=None)
  results['baseline'] = {k: base[k] for k in ('linear', 'mlp', 'knn', 'lowshot', 'timing')}
  results['baseline']['what'] = ('random-init trunk: same architecture, evaluation input, '
                                 'features, probe and seeds')
  pairs = [(results[k], base[k]) for k in ('linear', 'mlp')]
  pairs += [(rows, base['knn'].get(preset, {})) for preset, rows in results['knn'].items()]
  for rows, refs in pairs:
    for name, row in rows.items():
      if name in refs:
        row['baseline_top1'] = refs[name]['top1']
        row['gain'] = row['top1'] - refs[name]['top1']
  return results


def trunk_and_source(config, arrays=None, trunk=None):
  """(trunk dict, source, (pp_train, pp_eval)); a random trunk is built at the crop size."""
  # (A random trunk as the evaluated model is its own baseline.)
  if trunk is None and config.pretrained:
    trunk = load_trunk(config)
  pp = preprocessing(config, trunk['eval_input'] if trunk else None)
  source = make_source(config, *pp, arrays=arrays)
  if trunk is None:
    trunk = load_trunk(config, image_shape=source.image_shape(train=False))
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


def evaluate(config, trunk, source, *, writer=None):
  """Trains/selects/scores every head; returns the results dict."""
  e = config.eval
  names = _names(e.endpoints, trunk['endpoints'])
  eval_input = trunk['eval_input']
  make_fn = functools.partial(extract_fn, config, trunk)
  variables = jax.device_put(trunk['variables'])
  image_shape = source.image_shape(train=False)
  dims = features.feature_dims(make_fn(names), variables, image_shape)
  for section in ('mlp', 'knn', 'lowshot'):  # Typos fail now, not after training.
    if config[section].enabled:
      _names(config[section].endpoints, list(dims))
  sizes = split_sizes(config, source)
  num_classes = config.data.num_classes
  logging.info('trunk %s (%s), endpoints %s, pooled dims %s, splits %s', trunk['name'],
               trunk['task'], names, dims, sizes)
  results = {
      'pretrained': config.pretrained or None, 'pretext_task': trunk['task'],
      'model': trunk['model_config'], 'dataset': config.data.name,
      'splits': {s: config.data[f'{s}_split'] for s in SPLITS},
      'source': ('tfds' if isinstance(source, sources.TfdsSource)
                 else 'arrays (data.*_split not applied)'),
      'num_examples': sizes, 'mode': e.mode, 'solver': e.solver,
      'pool_mode': e.pool_mode, 'target_dims': e.target_dims,
      'trunk_input': eval_input.kind, 'image_shape': list(image_shape),
      'dims': dims, 'linear': {}, 'mlp': {}, 'knn': {}, 'lowshot': {}, 'timing': {},
      'device': f'{jax.devices()[0].platform}: {jax.devices()[0].device_kind} '
                f'x{jax.device_count()}',
  }
  t0 = time.perf_counter()
  if e.mode == 'faithful':
    _faithful(config, make_fn(names, jnp.float32), variables, source, dims, sizes,
              num_classes, results, writer)
    extra = sorted(set(_aux_endpoints(config, dims)))
    if extra:
      _cached(config, make_fn, extra, variables, source, sizes, num_classes, results,
              writer, linear_heads=False)
  else:
    bytes_per = 2 if e.cache_dtype == 'bfloat16' else 4
    rows = sizes['train'] * e.views + sizes['val'] + sizes['test']
    for group in plan_groups(dims, rows, bytes_per, e.max_cache_gb):
      _cached(config, make_fn, group, variables, source, sizes, num_classes, results,
              writer, linear_heads=True)
  results['timing']['total_s'] = time.perf_counter() - t0
  return results


def _aux_endpoints(config, dims):
  out = []
  if config.mlp.enabled:
    out += _names(config.mlp.endpoints, list(dims))
  if config.knn.enabled:
    out += _names(config.knn.endpoints, list(dims))
  if config.lowshot.enabled:
    out += _names(config.lowshot.endpoints, list(dims))
  return out


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


# ----------------------------------------------------------------------------- cached


def _extract_split(config, fn, variables, source, split, n, jit_fn):
  """Features and labels of the whole split, on every process.

  Each process extracts its own contiguous share (every process runs the same number
  of padded batches), then the shares are gathered in process order: the result is
  the single-process one, whatever the number of processes.
  """
  batches = source.eval_batches(split, config.eval_batch_size)
  count = jax.process_count()
  x, y = features.extract(fn, variables, batches,
                          num_examples=None if count > 1 else n, jit_fn=jit_fn,
                          stop_when_full=config.eval.max_train_examples > 0 and count == 1)
  if count > 1:
    x, y = features.gather_processes(x, y)
    if n is not None:
      x, y = {k: v[:n] for k, v in x.items()}, y[:n]
  return x, y


def _cached(config, make_fn, group, variables, source, sizes, num_classes, results,
            writer, linear_heads):
  """Extracts the group's features once, then trains/scores every head on them."""
  e = config.eval
  gap = features.GAP_SUFFIX
  fn = make_fn(sorted({n[:-len(gap)] if n.endswith(gap) else n for n in group}))
  jit_fn = jax.jit(fn)
  t = time.perf_counter()
  train_x, train_y = _extract_split(config, fn, variables, source, 'train',
                                    sizes['train'], jit_fn)
  views_x, views_y = [train_x], [train_y]
  for v in range(1, e.views if linear_heads else 1):
    batches = view_batches(source, 'train', config.eval_batch_size,
                           seed=config.seed + 1000 * v)
    if jax.process_count() > 1:
      x, y = features.gather_processes(*features.extract(fn, variables, batches,
                                                         jit_fn=jit_fn))
    else:
      x, y = features.extract(fn, variables, batches, num_examples=sizes['train'],
                              jit_fn=jit_fn)
    views_x.append(x)
    views_y.append(y)
  val_x, val_y = _extract_split(config, fn, variables, source, 'val', None, jit_fn)
  test_x, test_y = _extract_split(config, fn, variables, source, 'test', None, jit_fn)
  n_imgs = sizes['train'] * len(views_x) + len(val_y) + len(test_y)
  ext_s = time.perf_counter() - t
  timing = results['timing']
  timing['extract_s'] = timing.get('extract_s', 0.0) + ext_s
  timing['extract_images_per_s'] = n_imgs / max(ext_s, 1e-9)
  logging.info('extracted %s for %d images in %.1fs', group, n_imgs, ext_s)

  names = sorted(train_x)
  views = len(views_x)
  if views > 1:
    dev_train = {k: jnp.asarray(np.concatenate([vx[k] for vx in views_x])) for k in names}
    train_labels = np.concatenate(views_y)
  else:
    dev_train = {k: jnp.asarray(train_x[k]) for k in names}
    train_labels = train_y
  dev_val = {k: jnp.asarray(val_x[k]) for k in names}
  dev_test = {k: jnp.asarray(test_x[k]) for k in names}
  del views_x

  if linear_heads:
    res = _train_cached_heads(config, config.train, dev_train, train_labels, dev_val,
                              val_y, num_classes, views, writer, 'linear')
    _record(results, 'linear', res, dev_test, test_y, 'linear', e.mode, e.solver)
    timing['train_linear_s'] = timing.get('train_linear_s', 0.0) + res['seconds']
  n = sizes['train']
  if config.mlp.enabled:
    mlp_names = _subset(config.mlp.endpoints, names)
    if mlp_names:
      mcfg = linear.make_config(config.train, **config.mlp.train.to_dict())
      res = linear.train_cached({k: dev_train[k] for k in mlp_names}, train_labels,
                                {k: dev_val[k] for k in mlp_names}, val_y,
                                num_classes=num_classes, cfg=mcfg, views=views,
                                log_fn=_log_fn(writer, 'mlp'))
      _record(results, 'mlp', res, dev_test, test_y, 'mlp', 'cached', 'sgd')
      timing['train_mlp_s'] = timing.get('train_mlp_s', 0.0) + res['seconds']
  if config.knn.enabled:
    for k_name in _subset(config.knn.endpoints, names):
      for preset in config.knn.presets:
        k, temp = knn.PRESETS[preset]
        out = {}
        for split, qx, qy in (('val', val_x, val_y), ('test', test_x, test_y)):
          out[split] = knn.knn_accuracy(
              train_x[k_name][:n].astype(np.float32), train_y[:n],
              qx[k_name].astype(np.float32), qy, num_classes=num_classes, k=k,
              temperature=temp)
        results['knn'].setdefault(preset, {})[k_name] = {
            'top1': out['test']['top1'], 'top5': out['test']['top5'], 'split': 'test',
            'count': out['test']['count'], 'val_top1': out['val']['top1'],
            'k': k, 'temperature': temp}
  if config.lowshot.enabled:
    for l_name in _subset(config.lowshot.endpoints, names):
      t = time.perf_counter()
      res = lowshot.evaluate(train_x[l_name][:n].astype(np.float32), train_y[:n],
                             test_x[l_name].astype(np.float32), test_y,
                             num_classes=num_classes, shots=tuple(config.lowshot.shots),
                             samples=config.lowshot.samples, seed=config.seed)
      results['lowshot'][l_name] = {'split': 'test', 'selection': 'leave-one-out CV '
                                    'inside each low-shot sample',
                                    'shots': {str(k): v for k, v in res.items()}}
      timing['lowshot_s'] = timing.get('lowshot_s', 0.0) + time.perf_counter() - t


def _subset(spec, names):
  """The endpoints of spec ('' = all) that are among names (this group's)."""
  if not spec:
    return list(names)
  return [n.strip() for n in spec.split(',') if n.strip() in names]


def _train_cached_heads(config, train_cfg, dev_train, train_labels, dev_val, val_y,
                        num_classes, views, writer, prefix):
  """Runs config.eval.solver on the cached features (full-batch solvers: one view)."""
  solver = config.eval.solver
  if solver != 'sgd' and views > 1:
    raise ValueError(f'config.eval.views={views} needs the sgd solver; {solver!r} '
                     'fits one view')
  if solver == 'lbfgs':
    done = {}
    grid = len(train_cfg['weight_decays'])

    def progress(endpoint, info):  # one line per endpoint, once its L2 path is done
      done.setdefault(endpoint, []).append(info)
      if len(done[endpoint]) == grid:
        path = done[endpoint]
        capped = [i['weight_decay'] for i in path if not i['converged']]
        logging.info('%s probe %s: %d L2 points, %s L-BFGS iterations, %.1f s, %s', prefix,
                     endpoint, grid, '/'.join(str(i['iters']) for i in path),
                     sum(i['seconds'] for i in path),
                     f'NOT converged at wd {capped} (iteration cap)' if capped
                     else 'all converged')
    return solvers.train_lbfgs(dev_train, train_labels, dev_val, val_y,
                               num_classes=num_classes, cfg=train_cfg,
                               iters=config.eval.lbfgs_iters, log_fn=progress)
  if solver == 'ridge':
    return solvers.train_ridge(dev_train, train_labels, dev_val, val_y,
                               num_classes=num_classes, cfg=train_cfg)
  return linear.train_cached(dev_train, train_labels, dev_val, val_y,
                             num_classes=num_classes, cfg=train_cfg, views=views,
                             log_fn=_log_fn(writer, prefix))


def _record(results, key, res, dev_test, test_y, kind, mode, solver):
  """Scores the selected heads on the test split (once) and stores the row."""
  sel = res['selected']
  scores, count = linear.score_cached(sel, dev_test, test_y, kind=kind,
                                      stats=_stats_for(res['stats'], sel))
  for name, s in sel.items():
    results[key][name] = _row(s, scores[name], count, res, mode, solver)
    if res.get('solver_info', {}).get(name) is not None:  # L-BFGS: per L2 point
      results[key][name]['solver_info'] = [
          {k: v for k, v in i.items() if k != 'values'} for i in res['solver_info'][name]]


def _stats_for(stats, sel):
  return None if stats is None else {n: stats[n] for n in sel}


def _row(s, test, count, res, mode, solver):
  return {
      'top1': test['top1'], 'top5': test['top5'], 'split': 'test', 'count': count,
      'val_top1': s['val_top1'], 'val_top5': s['val_top5'], 'val_split': 'val',
      'epochs': s['epoch'], 'epochs_trained': res['epochs_trained'],
      'stopped_early': res['stopped_early'], 'mode': mode, 'solver': solver,
      'base_lr': s['base_lr'], 'weight_decay': s['weight_decay'], 'grid': s['grid'],
      'standardize': bool(res['config']['standardize']),
  }


# ----------------------------------------------------------------------------- faithful


def _faithful(config, fn, variables, source, dims, sizes, num_classes, results, writer):
  cfg = linear.make_config(config.train)
  if config.eval.max_train_examples > 0 and isinstance(source, sources.TfdsSource):
    raise ValueError('config.eval.max_train_examples needs the in-memory source in the '
                     'faithful mode (the tf.data pipeline streams the whole split)')
  steps = max(sizes['train'] // cfg['batch_size'], 1)
  res = linear.train_faithful(
      fn, variables, source.train_batches('train', cfg['batch_size'], seed=config.seed),
      steps, lambda: source.eval_batches('val', config.eval_batch_size), dims=dims,
      num_classes=num_classes, cfg=cfg, log_fn=_log_fn(writer, 'linear'))
  scores, count = linear.score_faithful(
      res['selected'], fn, variables, source.eval_batches('test', config.eval_batch_size),
      kind=cfg['head'])
  for name, s in res['selected'].items():
    results['linear'][name] = _row(s, scores[name], count, res, 'faithful', 'sgd')
  results['timing']['train_linear_s'] = res['seconds']
  results['timing']['faithful_s_per_epoch'] = res['seconds_per_epoch']


# ----------------------------------------------------------------------------- output


def _make_writer(workdir):
  """TensorBoard events only: the console gets `_log_fn`'s progress lines instead of
  one line per scalar write (which printed every metric twice)."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError:  # The TF-free GPU machine: results.json only.
    logging.warning('clu is not installed: no TensorBoard events')
    return None
  return metric_writers.SummaryWriter(workdir)


def _log_fn(writer, prefix, every_s=20.0):
  """Progress callback: every evaluation to TensorBoard, a console line at most every
  `every_s` seconds (hundreds of epochs make a progress line, not a wall)."""
  last = [-float('inf')]

  def log(epoch, row):
    if writer is not None:
      writer.write_scalars(epoch, {f'{prefix}/{k}': v for k, v in row.items()
                                   if k != 'epoch'})
    now = time.perf_counter()
    if now - last[0] >= every_s:
      last[0] = now
      tops = [v for k, v in row.items() if k.startswith('val_top1/')]
      losses = [v for k, v in row.items() if k.startswith('train_loss/')]
      logging.info('%s probes: epoch %d, %d heads, best val top-1 %.4f, train loss %.3f..%.3f',
                   prefix, epoch, len(tops), max(tops, default=float('nan')),
                   min(losses, default=float('nan')), max(losses, default=float('nan')))
  return log


def write_final_scalars(writer, results):
  if writer is None:
    return
  scalars = {}
  for key in ('linear', 'mlp'):
    for name, r in results[key].items():
      scalars[f'{key}/test_top1/{name}'] = r['top1']
      scalars[f'{key}/test_top5/{name}'] = r['top5']
      scalars[f'{key}/val_top1/{name}'] = r['val_top1']
      if 'gain' in r:
        scalars[f'{key}/baseline_test_top1/{name}'] = r['baseline_top1']
        scalars[f'{key}/gain/{name}'] = r['gain']
  for preset, d in results['knn'].items():
    for name, r in d.items():
      scalars[f'knn_{preset}/test_top1/{name}'] = r['top1']
  for name, d in results['lowshot'].items():
    for k, r in d['shots'].items():
      scalars[f'lowshot/test_top1_mean/{name}/k{k}'] = r['top1_mean']
  writer.write_scalars(0, scalars)


def format_table(results):
  """The console table: one row per endpoint and head, every number with its split.

  With a random-init baseline, each row also shows the baseline's test top-1 and the
  gain in points.
  """
  order = {n: i for i, n in enumerate(results['dims'])}
  base = 'baseline' in results
  extra = f" {'random':>7s} {'gain':>6s}" if base else ''
  lines = [f"linear evaluation of {results['pretrained'] or 'a random trunk'} "
           f"({results['pretext_task']}, {results['model'].get('name')} "
           f"k={results['model'].get('width')}) on {results['dataset']}, mode "
           f"{results['mode']}, solver {results['solver']}, pool {results['pool_mode']}",
           f"{'head':6s} {'endpoint':16s} {'dims':>6s} {'val top1':>8s} "
           f"{'test top1':>9s}{extra} {'test top5':>9s} {'epoch':>5s} {'lr':>7s} {'wd':>7s}"]

  def gain(r):
    if not base:
      return ''
    if 'baseline_top1' not in r:
      return f" {'':>7s} {'':>6s}"
    return f" {100 * r['baseline_top1']:7.2f} {100 * r['gain']:+6.2f}"

  for key in ('linear', 'mlp'):
    for name in sorted(results[key], key=lambda n: order.get(n, 99)):
      r = results[key][name]
      lines.append(f"{key:6s} {name:16s} {results['dims'].get(name, 0):6d} "
                   f"{100 * r['val_top1']:8.2f} {100 * r['top1']:9.2f}{gain(r)} "
                   f"{100 * r['top5']:9.2f} {r['epochs']:5d} {r['base_lr']:7.3g} "
                   f"{r['weight_decay']:7.3g}")
  for preset, d in results['knn'].items():
    for name, r in d.items():
      lines.append(f"{'knn':6s} {name:16s} {results['dims'].get(name, 0):6d} "
                   f"{100 * r['val_top1']:8.2f} {100 * r['top1']:9.2f}{gain(r)} "
                   f"{100 * r['top5']:9.2f}   ({preset})")
  for name, d in results['lowshot'].items():
    cells = ', '.join(f"k={k}: {100 * r['top1_mean']:.1f}+-{100 * r['top1_std']:.1f}"
                      for k, r in d['shots'].items())
    lines.append(f'low-shot {name} test top1 (mean+-std over samples): {cells}')
    if base and name in results['baseline']['lowshot']:
      cells = ', '.join(f"k={k}: {100 * r['top1_mean']:.1f}" for k, r in
                        results['baseline']['lowshot'][name]['shots'].items())
      lines.append(f'low-shot {name} random-init baseline: {cells}')
  n = results['num_examples']
  lines.append(f"splits: train={results['splits']['train']} ({n['train']}), "
               f"val={results['splits']['val']} ({n['val']}), "
               f"test={results['splits']['test']} ({n['test']}); "
               f"test scored once with the val-selected heads")
  if base:
    lines.append('random = a randomly initialised trunk of the same architecture through '
                 'the same evaluation; gain = test top-1 - random, in points')
  return '\n'.join(lines)
