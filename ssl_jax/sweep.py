r"""Sweeps: the studies' grids as one command, each cell an ordinary workdir.

  python -m ssl_jax.sweep --config configs/sweeps/goyal.py:data_size_cpu --workdir W
  python -m ssl_jax.sweep --config ... --workdir W --list        # cells, status, commands
  python -m ssl_jax.sweep --config ... --workdir W --cell 3      # one cell (array jobs)
  python -m ssl_jax.sweep --config ... --workdir W --aggregate   # only collect

A sweep config (configs/sweeps/<study>.py, `get_sweep(preset) -> dict`) declares axes
over any config keys, pretext (`model.width`) and evaluation (`linear_eval.eval.*`), and
the cells they span (product or zip, minus exclusions, plus reference cells such as the
supervised baseline on the same evaluation). Cell K is the workdir W/cells/<name>: the
pretext run (config.json, checkpoints/, events) and its evaluation
(linear_eval/results.json), exactly what

  python -m ssl_jax.main --config <task config> --config.<key>=<value> ... --workdir W/cells/<name>

writes (`--list` prints that command for every cell); so a cell can be inspected, resumed
or rerun alone.

Execution. Each cell runs in its own process (`--executor subprocess`, the default): the
driver starts `python -m ssl_jax.sweep ... --cell K`, one cell at a time, its output
appended to W/cells/<name>/log.txt. A process per cell isolates failures (a crash, an
XLA abort, an out-of-memory kill end that cell only; the driver reports it and goes on)
and memory (compiled programs, device buffers and the in-memory dataset are freed when the
process ends, so a long sweep does not grow). `--executor inprocess` runs the cells in
this process (tests, notebooks): exceptions are caught per cell.

Resumability. A cell is finished when W/cells/<name>/DONE.json exists; it is written only
after the evaluation's results.json (so a cell killed at any point is never taken as
done). Running the sweep again skips finished cells; an unfinished one is started again
with the same config, and the engine resumes it from its newest good checkpoint
(ssl_jax.checkpoint), then runs its evaluation (the evaluation itself restarts: it has no
checkpoints, and takes minutes). A failed cell's status and log tail go to W/sweep.json;
the others go on; the exit status is 1 if any cell failed. SIGTERM to the driver reaches
the running cell (same process group), which saves its step and exits 143; the driver
then stops.

Aggregation (after the cells, or `--aggregate`): W/results.csv, one row per cell x
evaluator x endpoint (linear, mlp, kNN presets, low-shot shots) with every axis value, the
cell's task/model/width/data axes, the test top-1 (percent), the random-init baseline on
the same evaluation and the gain, the val top-1 (what the best layer is chosen on), the
cell's wall time and hardware; W/table.md, per cell the layer chosen on val, pre-logits,
kNN and the supervised reference; PNG plots under W/plots/ as the sweep config asks
(accuracy vs an axis per task or family, per-layer curves, bars per corruption or domain)
when matplotlib is installed (the `viz` extra; without it the CSV and table are written
and the plots skipped with one line).

The data axes (ssl_jax.data.axes: data.subset, data.pool) are config keys like any
other; this module adds their sections to configs that lack them (`axes.ensure_keys`) and
never applies them itself: the engines do, once (ssl_jax.train._member_sources for the
pretext data, ssl_jax.evaluation.linear_eval.make_source for the evaluation's own data),
so a cell passes no arrays to either.
"""
import argparse
import csv
import datetime
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback

DONE = 'DONE.json'
CELL_SPEC = 'cell.json'
LOG = 'log.txt'
STATUS = 'sweep.json'
EXECUTORS = ('subprocess', 'inprocess')
MODES = ('product', 'zip')
PLOT_KINDS = ('line', 'layers', 'bars')
# Keys of an axis value bundle that are not config keys.
CONFIG_KEY = 'config'          # the cell's base config spec (FILE:PRESET)
LINEAR_EVAL_PREFIX = 'linear_eval.'
CSV_FIELDS_HEAD = ('sweep', 'cell_index', 'cell', 'role')
CSV_FIELDS_TAIL = (
    'base_config', 'pretext_task', 'trunk', 'trunk_width', 'data_axes', 'pp_train', 'total_steps', 'evaluator',
    'endpoint', 'metric', 'split', 'value', 'baseline', 'gain', 'val_value', 'unit', 'count',
    'eval_train_examples', 'dataset', 'wall_s', 'pretext_s', 'eval_s', 'load_average',
    'hardware', 'status')


# ----------------------------------------------------------------------------- sweep configs


def load_sweep(spec):
  """The normalised sweep dict of `FILE[:PRESET]` (the file's get_sweep(preset)).

  Raises ValueError (one line) for a missing file, an unknown preset (the file's own
  error) or a malformed sweep (see `normalise`).
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, preset = spec.partition(':')
  if not os.path.isfile(path):
    raise ValueError(f'--config={spec}: no sweep config file {path!r}')
  module_spec = importlib.util.spec_from_file_location('_ssl_jax_sweep_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'--config={spec}: {path} defines no get_sweep(preset)')
  sweep = module.get_sweep(preset) if preset else module.get_sweep()
  return normalise(sweep, spec)


def normalise(sweep, spec='<dict>'):
  """Checks a sweep dict and fills its defaults; returns a new dict.

  Keys: name, base (FILE:PRESET), axes [{name, key?, values}], mode ('product' | 'zip'),
  overrides {key: value} (every cell), exclude [{axis: label}], extra_cells [{labels,
  config?, overrides, role}], linear_eval (a configs/linear_eval.py preset or None: the
  base config's own), plots [{kind, ...}], description, study, estimate.
  Raises ValueError naming the offending entry.
  """
  s = dict(sweep)
  s['spec'] = spec
  for key in ('name', 'base', 'axes'):
    if key not in s:
      raise ValueError(f'sweep {spec}: missing {key!r}')
  if not re.fullmatch(r'[A-Za-z0-9_.=-]+', s['name']):
    raise ValueError(f"sweep {spec}: name {s['name']!r} may hold only letters, digits and _.=-")
  s.setdefault('mode', 'product')
  if s['mode'] not in MODES:
    raise ValueError(f"sweep {spec}: mode={s['mode']!r}; allowed: {list(MODES)}")
  s.setdefault('overrides', {})
  s.setdefault('exclude', [])
  s.setdefault('extra_cells', [])
  s.setdefault('linear_eval', None)
  s.setdefault('plots', [])
  s.setdefault('description', '')
  s.setdefault('study', '')
  s.setdefault('estimate', '')
  axes_ = []
  names = set()
  for i, a in enumerate(s['axes']):
    a = dict(a)
    if 'name' not in a or 'values' not in a:
      raise ValueError(f'sweep {spec}: axis {i} needs a name and values')
    if a['name'] in names or a['name'] in CSV_FIELDS_HEAD + CSV_FIELDS_TAIL:
      raise ValueError(f"sweep {spec}: axis name {a['name']!r} is repeated or reserved")
    names.add(a['name'])
    values = a['values']
    if isinstance(values, dict):
      a['labels'] = [str(k) for k in values]
      a['bundles'] = [dict(v) for v in values.values()]
    else:
      if 'key' not in a:
        raise ValueError(f"sweep {spec}: axis {a['name']!r} lists plain values: it needs a "
                         'key (or give {label: {key: value}} bundles)')
      a['labels'] = [_label(v) for v in values]
      a['bundles'] = [{a['key']: v} for v in values]
    if not a['labels']:
      raise ValueError(f"sweep {spec}: axis {a['name']!r} has no values")
    if len(set(a['labels'])) != len(a['labels']):
      raise ValueError(f"sweep {spec}: axis {a['name']!r} repeats a value")
    axes_.append(a)
  s['axes'] = axes_
  if s['mode'] == 'zip' and len({len(a['labels']) for a in axes_}) > 1:
    raise ValueError(f'sweep {spec}: mode zip needs axes of one length')
  for p in s['plots']:
    if p.get('kind') not in PLOT_KINDS:
      raise ValueError(f"sweep {spec}: plot kind {p.get('kind')!r}; allowed: "
                       f'{list(PLOT_KINDS)}')
  return s


def _label(value):
  if isinstance(value, float):
    return f'{value:g}'
  if isinstance(value, (tuple, list)):
    return '+'.join(_label(v) for v in value) or 'none'
  return str(value)


def _slug(text):
  return re.sub(r'[^A-Za-z0-9_.=+-]+', '-', text).strip('-') or 'x'


def with_arrays_dir(sweep, arrays_dir):
  """The sweep with every cell reading prepared arrays from `arrays_dir` (no TensorFlow:
  the GPU machine): data.arrays_dir and linear_eval.data.arrays_dir, both in memory."""
  s = dict(sweep, arrays_dir=arrays_dir)
  s['overrides'] = dict(sweep['overrides'], **{
      'data.arrays_dir': arrays_dir, 'linear_eval.data.arrays_dir': arrays_dir,
      'linear_eval.data.source': 'in_memory'})
  if s['overrides'].get('data.source', 'in_memory') == 'tfds':
    s['overrides']['data.source'] = 'in_memory'
  return s


def needed_splits(cell):
  """{(dataset, split string)} a cell reads: its pretext splits (train, val, pool
  datasets) and its evaluation's (train, val, test); synthetic data reads none."""
  from ssl_jax.data import axes  # pylint: disable=g-import-not-at-top
  config, le = cell_config(cell)
  out = set()
  for c, splits in ((config, ('train', 'val')), (le, ('train', 'val', 'test'))):
    if c is None or c.data.source == 'synthetic':
      continue
    p = axes.pool_of(c.data)
    if p['datasets']:
      out |= set(zip(p['datasets'], p['train_splits'])) | set(zip(p['datasets'],
                                                                   p['val_splits']))
      splits = tuple(s for s in splits if s == 'test')
    out |= {(c.data.name, c.data[f'{s}_split']) for s in splits}
  return out


def cells(sweep):
  """The sweep's cells, in a stable order (index K = position).

  Each: dict(index, name, labels {axis: label}, role ('ssl' | a reference's role),
  config (FILE:PRESET), overrides [(key, value)] (pretext config keys, in order),
  le_overrides [(key, value)] (configs/linear_eval.py keys)).
  """
  import itertools  # pylint: disable=g-import-not-at-top
  axes_ = sweep['axes']
  if sweep['mode'] == 'product':
    combos = list(itertools.product(*[range(len(a['labels'])) for a in axes_]))
  else:
    combos = [(i,) * len(axes_) for i in range(len(axes_[0]['labels']))]
  out = []
  for combo in combos:
    labels = {a['name']: a['labels'][i] for a, i in zip(axes_, combo)}
    if any(all(labels.get(k) == _label(v) for k, v in ex.items())
           for ex in sweep['exclude']):
      continue
    bundle = {}
    for a, i in zip(axes_, combo):
      bundle.update(a['bundles'][i])
    out.append(_cell(sweep, labels, bundle, 'ssl'))
  for extra in sweep['extra_cells']:
    bundle = dict(extra.get('overrides', {}))
    if 'config' in extra:
      bundle[CONFIG_KEY] = extra['config']
    labels = {a['name']: _label(extra.get('labels', {}).get(a['name'], ''))
              for a in axes_}
    cell = _cell(sweep, labels, bundle, extra.get('role', 'reference'),
                 name=extra.get('name'))
    out.append(cell)
  names = [c['name'] for c in out]
  if len(set(names)) != len(names):
    dup = sorted({n for n in names if names.count(n) > 1})
    raise ValueError(f"sweep {sweep['spec']}: cells share names {dup}")
  for i, c in enumerate(out):
    c['index'] = i
  return out


def _cell(sweep, labels, bundle, role, name=None):
  merged = dict(sweep['overrides'])
  merged.update(bundle)
  config = merged.pop(CONFIG_KEY, sweep['base'])
  if sweep['linear_eval']:
    merged.setdefault('run_linear_eval', True)
    merged.setdefault('linear_eval_preset', sweep['linear_eval'])
  pre = [(k, v) for k, v in merged.items() if not k.startswith(LINEAR_EVAL_PREFIX)]
  le = [(k[len(LINEAR_EVAL_PREFIX):], v) for k, v in merged.items()
        if k.startswith(LINEAR_EVAL_PREFIX)]
  if name is None:
    name = '_'.join(f'{k}-{_slug(v)}' for k, v in labels.items() if v != '') or 'cell'
    if role != 'ssl':
      name = f'{role}_{name}'
  return {'name': _slug(name), 'labels': labels, 'role': role, 'config': config,
          'overrides': pre, 'le_overrides': le}


def value_text(value):
  """A value as the command line writes it (ssl_jax.main parses it back the same)."""
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  if isinstance(value, str):
    return value
  return repr(value)


def cell_dir(workdir, cell):
  return os.path.join(workdir, 'cells', cell['name'])


def main_command(cell, workdir):
  """The `python -m ssl_jax.main` command that is this cell (argv list)."""
  argv = ['python', '-m', 'ssl_jax.main', '--config', cell['config']]
  argv += [f'--config.{k}={value_text(v)}' for k, v in cell['overrides']]
  argv += [f'--config.linear_eval.{k}={value_text(v)}' for k, v in cell['le_overrides']]
  return argv + ['--workdir', cell_dir(workdir, cell)]


def sweep_command(sweep, workdir, cell=None, python='python'):
  """The `python -m ssl_jax.sweep` command of the sweep (or of one cell)."""
  argv = [python, '-m', 'ssl_jax.sweep', '--config', sweep['spec'], '--workdir', workdir]
  if sweep.get('arrays_dir'):
    argv += ['--arrays_dir', sweep['arrays_dir']]
  return argv + (['--cell', str(cell['index'])] if cell is not None else [])


def shell(argv):
  return ' '.join(shlex.quote(a) for a in argv)


# ----------------------------------------------------------------------------- cell configs


def _load_config(spec):
  """get_config(preset) of a task config FILE[:PRESET] (as ssl_jax.main loads it)."""
  from ssl_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  return main_lib._load_config_file(spec)  # pylint: disable=protected-access


def cell_config(cell):
  """(pretext config, linear-eval config or None) of a cell: base + overrides.

  The values go through ssl_jax.main's own parser (`apply_overrides` on their command-line
  text), so the config is the one `main_command` builds. ValueError naming a bad key.
  """
  from ssl_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  from ssl_jax.data import axes  # pylint: disable=g-import-not-at-top
  config = axes.ensure_keys(_load_config(cell['config']))
  main_lib.apply_overrides(config, [f'{k}={value_text(v)}' for k, v in cell['overrides']])
  le = None
  if config.get('run_linear_eval', False):
    le = main_lib.linear_eval_config(
        config.linear_eval_preset, '', [])
    axes.ensure_keys(le)
    main_lib.apply_overrides(le, [f'{k}={value_text(v)}' for k, v in cell['le_overrides']],
                             where='config.linear_eval')
  elif cell['le_overrides']:
    raise ValueError(f"cell {cell['name']}: linear_eval.* overrides but the config runs no "
                     'linear evaluation (set the sweep\'s linear_eval preset)')
  return config, le


def is_done(workdir, cell):
  return os.path.exists(os.path.join(cell_dir(workdir, cell), DONE))


def read_json(path, default=None):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return default


def _write_json(path, obj):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def hardware():
  """One line: the JAX devices, CPU count and processor of this process's machine."""
  import jax  # pylint: disable=g-import-not-at-top
  d = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      model = [l.split(':', 1)[1].strip() for l in f if l.startswith('model name')]
    cpu = model[0] if model else cpu
  except OSError:
    pass
  return (f'{d.platform}: {d.device_kind} x{jax.device_count()}; {os.cpu_count()} CPU cores '
          f'({cpu})')


def run_cell(sweep, workdir, cell, *, log=print):
  """Runs one cell in this process: pretext training (resumed), then its evaluation.

  Returns a status dict: status 'done' (skipped: already finished), 'finished',
  'preempted' (SIGTERM: checkpoint saved; rerun resumes). Exceptions propagate (the
  caller reports them). DONE.json is written only after results.json exists.
  """
  from ssl_jax import config_lib, train  # pylint: disable=g-import-not-at-top
  from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
  d = cell_dir(workdir, cell)
  if is_done(workdir, cell):
    return dict(read_json(os.path.join(d, DONE), {}), status='done', skipped=True)
  os.makedirs(d, exist_ok=True)
  spec = dict(cell, sweep=sweep['name'], sweep_spec=sweep['spec'],
              main_command=shell(main_command(cell, workdir)),
              sweep_command=shell(sweep_command(sweep, workdir, cell)))
  _write_json(os.path.join(d, CELL_SPEC), spec)
  attempts_path = os.path.join(d, 'attempts.jsonl')
  t0 = time.time()
  started = datetime.datetime.now().isoformat(timespec='seconds')
  load_start = _load_average()
  with config_lib.startup_errors():
    config, le = cell_config(cell)
    if le is None:
      raise ValueError(f"cell {cell['name']}: the config runs no evaluation; set the sweep's "
                       "linear_eval preset (or config.run_linear_eval)")
    le.pretrained = d
    linear_eval.validate(le)
  log(f"[sweep] cell {cell['index']} {cell['name']}: {shell(main_command(cell, workdir))}")
  # No arrays: the engine loads config.data itself and applies the data axes once
  # (train._member_sources / linear_eval.make_source call ssl_jax.data.axes.apply).
  run = train.build(config, d)
  resumed_from = run.restored_from
  out = train.train_loop(run)
  pretext_s = time.time() - t0
  status = {'status': 'preempted' if out.get('preempted') else 'pretext_done',
            'step': int(out['step']), 'resumed_from': resumed_from, 'started': started,
            'pretext_s': pretext_s, 'load_average_start': load_start}
  if out.get('preempted'):
    _append_jsonl(attempts_path, dict(status, wall_s=time.time() - t0))
    return status
  t1 = time.time()
  eval_dir = os.path.join(d, 'linear_eval')
  linear_eval.run(le, eval_dir)
  eval_s = time.time() - t1
  if not os.path.exists(os.path.join(eval_dir, 'results.json')):
    raise RuntimeError(f'{eval_dir}/results.json was not written')
  attempt = dict(status, status='finished', eval_s=eval_s, wall_s=time.time() - t0,
                 finished=datetime.datetime.now().isoformat(timespec='seconds'),
                 load_average_end=_load_average())
  _append_jsonl(attempts_path, attempt)
  attempts = _read_jsonl(attempts_path)
  done = dict(attempt, cell=cell['name'], index=cell['index'], hardware=hardware(),
              attempts=len(attempts), total_wall_s=sum(a.get('wall_s', 0) for a in attempts),
              results=os.path.join('linear_eval', 'results.json'),
              main_command=spec['main_command'])
  _write_json(os.path.join(d, DONE), done)
  return done


def _load_average():
  """The machine's 1-minute load average (how busy the cores were: wall times on a shared
  machine are not a quiet machine's), or None where the OS has none."""
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


def _append_jsonl(path, obj):
  with open(path, 'a') as f:
    f.write(json.dumps(obj, default=str) + '\n')


def _read_jsonl(path):
  out = []
  try:
    with open(path) as f:
      for line in f:
        try:
          out.append(json.loads(line))
        except ValueError:
          pass
  except OSError:
    pass
  return out


# ----------------------------------------------------------------------------- the driver


def run_sweep(sweep, workdir, *, executor='subprocess', only=None, log=print, env=None):
  """Runs every unfinished cell, one at a time; then aggregates.

  Args:
    sweep: a normalised sweep (load_sweep).
    workdir: the sweep's directory (cells under workdir/cells/).
    executor: 'subprocess' (a process per cell) or 'inprocess'.
    only: optional iterable of cell indices.
    env: environment of the cell processes (default: this one's).
  Returns:
    {'cells': {name: status}, 'failed': [names], 'preempted': bool}; W/sweep.json too.
  """
  if executor not in EXECUTORS:
    raise ValueError(f'--executor={executor!r}; allowed: {list(EXECUTORS)}')
  all_cells = cells(sweep)
  chosen = all_cells if only is None else [all_cells[i] for i in only]
  os.makedirs(workdir, exist_ok=True)
  status_path = os.path.join(workdir, STATUS)
  state = read_json(status_path, {}) or {}
  state.update({'sweep': sweep['name'], 'spec': sweep['spec'],
                'command': shell(sweep_command(sweep, workdir))})
  state.setdefault('cells', {})
  failed, preempted = [], False
  t_sweep = time.time()
  for cell in chosen:
    name = cell['name']
    if is_done(workdir, cell):
      log(f"[sweep] cell {cell['index']} {name}: done, skipped")
      state['cells'][name] = dict(state['cells'].get(name, {}), status='done')
      continue
    log(f"[sweep] cell {cell['index']} {name}: running ({executor})")
    t = time.time()
    if executor == 'subprocess':
      rc, tail = _run_subprocess(sweep, workdir, cell, env)
      ok = rc == 0 and is_done(workdir, cell)
      entry = {'status': 'finished' if ok else ('preempted' if rc == 143 else 'failed'),
               'returncode': rc, 'wall_s': time.time() - t}
      if not ok:
        entry['log_tail'] = tail
        entry['log'] = os.path.join(cell_dir(workdir, cell), LOG)
    else:
      try:
        res = run_cell(sweep, workdir, cell, log=log)
        entry = {'status': res['status'] if res['status'] != 'pretext_done' else 'failed',
                 'wall_s': time.time() - t}
      except Exception as e:  # pylint: disable=broad-except
        entry = {'status': 'failed', 'error': f'{type(e).__name__}: {e}',
                 'wall_s': time.time() - t}
        os.makedirs(cell_dir(workdir, cell), exist_ok=True)
        with open(os.path.join(cell_dir(workdir, cell), 'error.txt'), 'w') as f:
          f.write(traceback.format_exc())
      finally:
        _clear_jax_caches()
    state['cells'][name] = entry
    _write_json(status_path, state)
    if entry['status'] == 'failed':
      failed.append(name)
      log(f"[sweep] cell {cell['index']} {name}: FAILED "
          f"({entry.get('error') or 'exit status %s' % entry.get('returncode')}); "
          f"log: {entry.get('log', os.path.join(cell_dir(workdir, cell), 'error.txt'))}")
    elif entry['status'] == 'preempted':
      preempted = True
      log(f"[sweep] cell {cell['index']} {name}: preempted; the same command resumes it")
      break
    else:
      log(f"[sweep] cell {cell['index']} {name}: finished in {entry['wall_s']:.0f} s")
  state['last_run_s'] = time.time() - t_sweep
  state['failed'] = failed
  _write_json(status_path, state)
  if not preempted:
    aggregate(sweep, workdir, log=log)
  return {'cells': state['cells'], 'failed': failed, 'preempted': preempted}


def _clear_jax_caches():
  try:
    import jax  # pylint: disable=g-import-not-at-top
    jax.clear_caches()
  except Exception:  # pylint: disable=broad-except
    pass


def _run_subprocess(sweep, workdir, cell, env):
  d = cell_dir(workdir, cell)
  os.makedirs(d, exist_ok=True)
  argv = sweep_command(sweep, workdir, cell, python=sys.executable)
  with open(os.path.join(d, LOG), 'a') as f:
    f.write(f'\n===== {datetime.datetime.now().isoformat(timespec="seconds")} '
            f'{shell(argv)}\n')
    f.flush()
    proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env,
                            cwd=os.getcwd())
    try:
      rc = proc.wait()
    except KeyboardInterrupt:
      proc.send_signal(signal.SIGTERM)
      rc = proc.wait()
  tail = ''
  try:
    with open(os.path.join(d, LOG), errors='replace') as f:
      tail = ''.join(f.readlines()[-15:])
  except OSError:
    pass
  return rc, tail


def list_cells(sweep, workdir, out=print):
  """Prints every cell: index, name, status, the sweep --cell command and the main one."""
  state = (read_json(os.path.join(workdir, STATUS), {}) or {}).get('cells', {})
  all_cells = cells(sweep)
  out(f"sweep {sweep['name']} ({sweep['spec']}): {len(all_cells)} cells"
      + (f"; {sweep['estimate']}" if sweep.get('estimate') else ''))
  for c in all_cells:
    status = 'done' if is_done(workdir, c) else state.get(c['name'], {}).get(
        'status', 'started' if os.path.isdir(cell_dir(workdir, c)) else 'not started')
    labels = ', '.join(f'{k}={v}' for k, v in c['labels'].items() if v != '')
    out(f"[{c['index']}] {c['name']}  ({c['role']}; {labels}): {status}")
    out(f'    {shell(sweep_command(sweep, workdir, c))}')
    out(f'    = {shell(main_command(c, workdir))}')
  return all_cells


# ----------------------------------------------------------------------------- aggregation


def _percent(x):
  return None if x is None else 100.0 * float(x)


def rows_from_results(results):
  """Flat rows of a results.json (the adapter until linear_eval.rows exists).

  Each: evaluator ('linear', 'mlp', 'knn_<preset>', 'lowshot_<shots>'), endpoint,
  metric 'top1', split, value, baseline (random-init trunk, same evaluation), gain,
  val_value; values in percent.
  """
  base = results.get('baseline', {}) or {}
  rows = []
  for evaluator in ('linear', 'mlp'):
    for endpoint, r in (results.get(evaluator) or {}).items():
      rows.append({'evaluator': evaluator, 'endpoint': endpoint, 'metric': 'top1',
                   'split': r.get('split', 'test'), 'value': _percent(r.get('top1')),
                   'baseline': _percent(r.get('baseline_top1')),
                   'gain': _percent(r.get('gain')), 'val_value': _percent(r.get('val_top1'))})
  for preset, per in (results.get('knn') or {}).items():
    for endpoint, r in per.items():
      rows.append({'evaluator': f'knn_{preset}', 'endpoint': endpoint, 'metric': 'top1',
                   'split': r.get('split', 'test'), 'value': _percent(r.get('top1')),
                   'baseline': _percent(r.get('baseline_top1')),
                   'gain': _percent(r.get('gain')), 'val_value': _percent(r.get('val_top1'))})
  for endpoint, per in (results.get('lowshot') or {}).items():
    per = per.get('shots', per)
    for shots, r in per.items():
      if not isinstance(r, dict) or 'top1_mean' not in r:
        continue
      b = ((base.get('lowshot') or {}).get(endpoint) or {})
      b = b.get('shots', b).get(shots) or {}
      value, bval = _percent(r['top1_mean']), _percent(b.get('top1_mean'))
      rows.append({'evaluator': f'lowshot_{shots}', 'endpoint': endpoint, 'metric': 'top1',
                   'split': r.get('split', 'test'), 'value': value, 'baseline': bval,
                   'gain': None if bval is None else value - bval, 'val_value': None})
  return rows


def result_rows(results):
  """Rows of a results dict in the sweep's form, from linear_eval.rows when the evaluation
  provides it (else `rows_from_results`).

  linear_eval.rows gives one number per (evaluator, endpoint, variant, metric, split);
  here the test value and the val value of one (evaluator, endpoint, variant, metric) are
  one row: evaluator '<evaluator>' or '<evaluator>_<variant>' (a kNN preset, 'k-shot',
  a label count), accuracies in percent.
  """
  try:
    from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
    fn = getattr(linear_eval, 'rows', None)
  except ImportError:
    fn = None
  if fn is None:
    return rows_from_results(results)
  groups = {}
  for r in fn(results):
    key = (r.get('evaluator'), r.get('variant') or '', r.get('endpoint'),
           r.get('metric', 'top1'))
    groups.setdefault(key, {})[r.get('split', 'test')] = r
  out = []
  for (evaluator, variant, endpoint, metric), by in groups.items():
    main = by.get('test') or next(iter(by.values()))
    val = by.get('val') if main is not by.get('val') else None
    scale = 100.0 if str(metric).startswith('top') else 1.0
    num = lambda v: None if v is None or isinstance(v, str) else float(v) * scale
    out.append({'evaluator': f'{evaluator}_{variant}' if variant else evaluator,
                'type': main.get('type'), 'variant': variant, 'endpoint': endpoint,
                'metric': metric, 'split': main.get('split', 'test'),
                'value': num(main.get('value')), 'baseline': num(main.get('baseline')),
                'gain': num(main.get('gain')),
                'val_value': num(val.get('value')) if val else None,
                'count': main.get('count')})
  return out


def _cell_facts(workdir, cell):
  """Config facts of a finished (or started) cell: from its config.json."""
  d = cell_dir(workdir, cell)
  cfg = read_json(os.path.join(d, 'config.json'), {}) or {}
  data = cfg.get('data', {})
  axes_desc = []
  sub = data.get('subset') or {}
  if sub.get('count', -1) > 0:
    axes_desc.append(f"subset {sub['count']}")
  if sub.get('fraction', -1) > 0:
    axes_desc.append(f"subset {sub['fraction']:g}")
  if sub.get('per_class', -1) > 0:
    axes_desc.append(f"subset {sub['per_class']}/class")
  pool = data.get('pool') or {}
  if pool.get('datasets'):
    axes_desc.append('pool ' + '+'.join(f'{q:g}x{n}' for n, q in
                                        zip(pool['datasets'], pool['proportions'])))
  model = cfg.get('model', {})
  return {'pretext_task': cfg.get('task', ''), 'trunk': model.get('name', ''),
          'trunk_width': model.get('width', ''), 'data_axes': '; '.join(axes_desc),
          'pp_train': (cfg.get('input') or {}).get('pp_train', ''),
          'total_steps': cfg.get('total_steps', ''), 'base_config': cell['config']}


def _eval_dataset(cell, results):
  """The evaluation's dataset: results.json names config.data.name even when the images
  were synthetic (data.source='synthetic': then 'synthetic')."""
  name = results.get('dataset')
  try:
    _, le = cell_config(cell)
  except ValueError:  # the sweep config changed since the cell ran: keep the recorded name
    return name
  return 'synthetic' if le is not None and le.data.source == 'synthetic' else name


def collect(sweep, workdir):
  """Rows of every finished cell (see `aggregate`), in cell order."""
  rows = []
  for cell in cells(sweep):
    d = cell_dir(workdir, cell)
    done = read_json(os.path.join(d, DONE))
    results = read_json(os.path.join(d, 'linear_eval', 'results.json'))
    if done is None or results is None:
      continue
    facts = _cell_facts(workdir, cell)
    for r in result_rows(results):
      row = {'sweep': sweep['name'], 'cell_index': cell['index'], 'cell': cell['name'],
             'role': cell['role']}
      row.update(cell['labels'])
      row.update(facts)
      row.update(r)
      row.update({'unit': 'percent',
                  'eval_train_examples': (results.get('num_examples') or {}).get('train'),
                  'dataset': _eval_dataset(cell, results),
                  'wall_s': done.get('total_wall_s'), 'pretext_s': done.get('pretext_s'),
                  'eval_s': done.get('eval_s'), 'hardware': done.get('hardware'),
                  'load_average': done.get('load_average_start'),
                  'status': 'done'})
      rows.append(row)
  return rows


def _fmt(v, digits=2):
  if v is None or v == '':
    return ''
  if isinstance(v, float):
    return f'{v:.{digits}f}'
  return str(v)


def best_rows(rows, evaluator='linear', metric='top1'):
  """{cell: the `metric` row of `evaluator` whose endpoint is best on val (ties: the
  later endpoint in the row order)}; cells without val values fall back to test."""
  out = {}
  for r in rows:
    if r['evaluator'] != evaluator or r.get('metric', 'top1') != metric:
      continue
    key = r['val_value'] if r.get('val_value') is not None else r['value']
    cur = out.get(r['cell'])
    if cur is None or key >= (cur['val_value'] if cur.get('val_value') is not None
                              else cur['value']):
      out[r['cell']] = r
  return out


def table_markdown(sweep, rows, workdir):
  """The sweep's table: per cell the linear probe's layer chosen on val, pre-logits, kNN,
  each with the random-init baseline and gain; the reference cells beside them."""
  axis_names = [a['name'] for a in sweep['axes']]
  by_cell = {}
  for r in rows:
    by_cell.setdefault(r['cell'], []).append(r)
  best = best_rows(rows)
  lines = [f"### {sweep['name']}", '']
  if sweep.get('description'):
    lines += [sweep['description'], '']
  lines += [f"Command: `{shell(sweep_command(sweep, workdir))}`", '',
            'Test top-1 (%) of linear probes on the frozen trunk (layer chosen on the val '
            'split), beside a random-init trunk of the same architecture through the same '
            'evaluation (`random`) and the gain.', '']
  head = axis_names + ['role', 'best layer (val)', 'top-1', 'random', 'gain', 'pre_logits',
                       'random', 'gain', 'kNN', 'kNN random', 'wall']
  lines.append('| ' + ' | '.join(head) + ' |')
  lines.append('|' + '---|' * len(head))
  for cell in cells(sweep):
    rs = by_cell.get(cell['name'])
    if not rs:
      lines.append('| ' + ' | '.join([cell['labels'].get(a, '') for a in axis_names]
                                     + [cell['role'], '(not run)'] + [''] * 9) + ' |')
      continue
    b = best.get(cell['name'], {})
    rs = [r for r in rs if r.get('metric', 'top1') == 'top1']
    pl = next((r for r in rs if r['evaluator'] == 'linear' and r['endpoint'] == 'pre_logits'),
              {})
    knn = next((r for r in rs if r['evaluator'].startswith('knn_k200')), None) or next(
        (r for r in rs if r['evaluator'].startswith('knn_')), {})
    wall = rs[0].get('wall_s')
    lines.append('| ' + ' | '.join(
        [cell['labels'].get(a, '') for a in axis_names] +
        [cell['role'], str(b.get('endpoint', '')), _fmt(b.get('value')),
         _fmt(b.get('baseline')), _signed(b.get('gain')), _fmt(pl.get('value')),
         _fmt(pl.get('baseline')), _signed(pl.get('gain')), _fmt(knn.get('value')),
         _fmt(knn.get('baseline')),
         f'{wall / 60:.0f} min' if isinstance(wall, (int, float)) else '']) + ' |')
  hw = sorted({r['hardware'] for r in rows if r.get('hardware')})
  if hw:
    lines += ['', 'Hardware: ' + '; '.join(hw)]
  return '\n'.join(lines) + '\n'


def _signed(v):
  return '' if v is None else f'{v:+.2f}'


def write_csv(path, rows, axis_names):
  fields = list(CSV_FIELDS_HEAD) + list(axis_names) + list(CSV_FIELDS_TAIL)
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
    w.writeheader()
    for r in rows:
      w.writerow({k: ('' if r.get(k) is None else
                      (f'{r[k]:.4f}' if isinstance(r.get(k), float) else r[k]))
                  for k in fields})
  os.replace(tmp, path)


def aggregate(sweep, workdir, *, log=print):
  """Writes W/results.csv, W/table.md and W/plots/*.png from the finished cells.

  Returns {'rows': [...], 'csv': path, 'table': path, 'plots': [paths]}.
  """
  rows = collect(sweep, workdir)
  os.makedirs(workdir, exist_ok=True)
  csv_path = os.path.join(workdir, 'results.csv')
  write_csv(csv_path, rows, [a['name'] for a in sweep['axes']])
  table = table_markdown(sweep, rows, workdir)
  table_path = os.path.join(workdir, 'table.md')
  with open(table_path, 'w') as f:
    f.write(table)
  plots = []
  if rows and sweep['plots']:
    try:
      plots = draw_plots(sweep, rows, os.path.join(workdir, 'plots'))
    except ImportError:
      log('[sweep] matplotlib is not installed (pip install ssl_jax[viz]): plots skipped')
  n = len({r['cell'] for r in rows})
  log(f'[sweep] aggregated {n} of {len(cells(sweep))} cells: {csv_path}, {table_path}'
      + (f", {len(plots)} plots in {os.path.join(workdir, 'plots')}" if plots else ''))
  return {'rows': rows, 'csv': csv_path, 'table': table_path, 'plots': plots}


# ----------------------------------------------------------------------------- plots


def _numeric(label):
  try:
    return float(label)
  except (TypeError, ValueError):
    return None


def _select(rows, plot):
  """The rows a plot draws: its evaluator, and its endpoint ('best': chosen on val)."""
  evaluator = plot.get('evaluator', 'linear')
  endpoint = plot.get('endpoint', 'best')
  metric = plot.get('metric', 'top1')
  if endpoint == 'best':
    return list(best_rows(rows, evaluator, metric).values())
  return [r for r in rows if r['evaluator'] == evaluator and r['endpoint'] == endpoint
          and r.get('metric', 'top1') == metric]


def draw_plots(sweep, rows, out_dir):
  """PNG files of the sweep config's plots; returns their paths. Needs matplotlib.

  `where` {axis: value} keeps the rows of those axis values (e.g. one task of a grid);
  reference cells are drawn in every plot. Kinds: 'line' (x: an axis, one line per
  `series` axis value, the random-init baseline
  dashed, reference cells as horizontal lines), 'layers' (x: the endpoints in trunk
  order, one line per cell or per `series` value; baselines dashed), 'bars' (x: an axis's
  values, bars of the trunk beside its random-init baseline; `series` groups bars).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for i, plot in enumerate(sweep['plots']):
    kind = plot['kind']
    where = {k: _label(v) for k, v in (plot.get('where') or {}).items()}
    mine = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    if not mine:
      continue
    fig, ax = plt.subplots(figsize=plot.get('figsize', (6.4, 4.2)))
    ssl = [r for r in mine if r['role'] == 'ssl']
    refs = [r for r in rows if r['role'] != 'ssl']
    title = plot.get('title', f"{sweep['name']}: {kind}")
    if kind == 'line':
      _line(ax, plot, _select(ssl, plot), _select(refs, plot))
    elif kind == 'layers':
      pick = lambda rs: [r for r in rs if r['evaluator'] == plot.get('evaluator', 'linear')
                         and r.get('metric', 'top1') == plot.get('metric', 'top1')]
      _layers(ax, plot, pick(ssl), pick(refs))
    else:
      _bars(ax, plot, _select(ssl, plot), _select(refs, plot))
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(plot.get('ylabel', f"test top-1 (%), {plot.get('evaluator', 'linear')}"
                                     f" {plot.get('endpoint', 'best')}"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc=plot.get('legend', 'best'))
    fig.tight_layout()
    path = os.path.join(out_dir, plot.get('file', f'{sweep["name"]}_{i}_{kind}.png'))
    fig.savefig(path, dpi=plot.get('dpi', 110))
    plt.close(fig)
    paths.append(path)
  return paths


def _series_of(r, plot):
  s = plot.get('series')
  return r.get(s, '') if s else ''


def _line(ax, plot, rows, refs):
  x_axis = plot['x']
  groups = {}
  for r in rows:
    groups.setdefault(_series_of(r, plot), []).append(r)
  for j, (name, rs) in enumerate(sorted(groups.items())):
    pts = sorted(((_numeric(r[x_axis]), r) for r in rs if _numeric(r[x_axis]) is not None),
                 key=lambda t: t[0])
    if not pts:
      continue
    xs = [p[0] for p in pts]
    color = f'C{j}'
    label = f'{plot.get("series")}={name}' if plot.get('series') else 'trunk'
    ax.plot(xs, [p[1]['value'] for p in pts], 'o-', color=color, label=label)
    if all(p[1].get('baseline') is not None for p in pts):
      ax.plot(xs, [p[1]['baseline'] for p in pts], 'x--', color=color, alpha=0.6,
              label=f'{label} random-init')
  for k, r in enumerate(refs):
    ax.axhline(r['value'], color=f'C{len(groups) + k}', ls=':',
               label=f"{r['role']} ({r['cell']})")
  ax.set_xlabel(plot.get('xlabel', x_axis))
  if plot.get('logx'):
    ax.set_xscale('log')


def _layers(ax, plot, rows, refs):
  order = plot.get('endpoints')
  groups = {}
  for r in rows + refs:
    groups.setdefault(r['cell'], []).append(r)
  if order is None:  # first-seen order (results.json keeps the trunk's order)
    order = []
    for r in rows + refs:
      if r['endpoint'] not in order:
        order.append(r['endpoint'])
  xs = list(range(len(order)))
  for j, (cell, rs) in enumerate(groups.items()):
    by = {r['endpoint']: r for r in rs}
    ys = [by[e]['value'] if e in by else math.nan for e in order]
    ref = rs[0]['role'] != 'ssl'
    label = cell if not plot.get('series') else f"{plot['series']}={_series_of(rs[0], plot)}"
    ax.plot(xs, ys, 's:' if ref else 'o-', color=f'C{j}', label=label)
    if plot.get('baseline', True) and not ref:
      bs = [by[e]['baseline'] if e in by and by[e]['baseline'] is not None else math.nan
            for e in order]
      ax.plot(xs, bs, 'x--', color=f'C{j}', alpha=0.5, label=f'{label} random-init')
  ax.set_xticks(xs)
  ax.set_xticklabels(order, rotation=30, fontsize=7)
  ax.set_xlabel('layer')


def _bars(ax, plot, rows, refs):
  x_axis = plot['x']
  labels = []
  for r in rows:
    if r[x_axis] not in labels:
      labels.append(r[x_axis])
  series = sorted({_series_of(r, plot) for r in rows})
  width = 0.8 / max(len(series) * 2, 1)
  for j, s in enumerate(series):
    by = {r[x_axis]: r for r in rows if _series_of(r, plot) == s}
    pos = [i + (2 * j) * width - 0.4 + width / 2 for i in range(len(labels))]
    name = f'{plot["series"]}={s}' if plot.get('series') else 'trunk'
    ax.bar(pos, [by[l]['value'] if l in by else 0 for l in labels], width, color=f'C{j}',
           label=name)
    ax.bar([p + width for p in pos],
           [by[l]['baseline'] if l in by and by[l]['baseline'] is not None else 0
            for l in labels], width, color=f'C{j}', alpha=0.35, label=f'{name} random-init')
  for k, r in enumerate(refs):
    ax.axhline(r['value'], color=f'C{len(series) + k}', ls=':',
               label=f"{r['role']} ({r['cell']})")
  ax.set_xticks(range(len(labels)))
  ax.set_xticklabels(labels, rotation=plot.get('rotation', 0), fontsize=8)
  ax.set_xlabel(plot.get('xlabel', x_axis))


# ----------------------------------------------------------------------------- main


def _setup_process(jax_cache=''):
  """What ssl_jax.main does before a job (CPU collective timeouts, quiet libraries), and
  JAX's persistent compilation cache in `jax_cache` (inherited by the cell processes:
  cells that differ only in data, seeds or corruptions compile the same programs)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if jax_cache and jax_cache != 'none':
    os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', jax_cache)
  from ssl_jax import xla_flags  # pylint: disable=g-import-not-at-top
  os.environ['XLA_FLAGS'] = xla_flags.cpu_xla_flags(os.environ.get('XLA_FLAGS'))
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  from ssl_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  import logging as logging_lib  # pylint: disable=g-import-not-at-top
  root = logging_lib.getLogger()
  for h in list(root.handlers):  # a library's basicConfig handler would print every line twice
    if h is not logging.get_absl_handler():
      root.removeHandler(h)
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(main_lib._QuietLibraries())  # pylint: disable=protected-access


def prepare(sweep, arrays_dir, log=print):
  """--prepare: every split the sweep's cells read, as files for --arrays_dir."""
  from input_pipeline import datasets  # pylint: disable=g-import-not-at-top
  pairs, config = set(), None
  for cell in cells(sweep):
    pairs |= needed_splits(cell)
    config = config or cell_config(cell)[0]
  if not pairs:
    log('[sweep] the cells read no dataset (synthetic data): nothing to prepare')
    return 0
  t = time.time()
  written = datasets.prepare_arrays(config, arrays_dir, sorted(pairs))
  for w in written:
    log(f"[sweep] {w['dataset']} {w['split']}: {w['count']} images, {w['mib']:.1f} MiB, "
        f"{w['verified'] or 'not verified'} -> {w['path']}")
  log(f'[sweep] prepared {len(written)} splits in {arrays_dir} '
      f"({sum(w['mib'] for w in written):.1f} MiB) in {time.time() - t:.0f} s; run the "
      f'sweep with --arrays_dir {arrays_dir}')
  return 0


def parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m ssl_jax.sweep', description=(
      'Run, list or aggregate a sweep (configs/sweeps/<study>.py:<preset>).'))
  p.add_argument('--config', required=True, help='sweep config FILE[:PRESET]')
  p.add_argument('--workdir', required=True, help='the sweep directory')
  g = p.add_mutually_exclusive_group()
  g.add_argument('--list', action='store_true', help='print the cells and their commands')
  g.add_argument('--cell', type=int, default=None, help='run cell K only, in this process')
  g.add_argument('--aggregate', action='store_true', help='only collect the results')
  p.add_argument('--executor', default='subprocess', choices=EXECUTORS)
  p.add_argument('--cells', default='', help='comma-separated cell indices to run')
  p.add_argument('--arrays_dir', default='', help=(
      'read every split from prepared arrays in this folder (no TensorFlow needed: the '
      'GPU machine); write them first with --prepare on a machine with TFDS'))
  g.add_argument('--prepare', default='', metavar='DIR', help=(
      "write the encoded splits every cell reads into DIR (for --arrays_dir), then exit"))
  p.add_argument('--jax_cache', default='', help=(
      "JAX's persistent compilation cache for the cells ('' = WORKDIR/jax_cache, 'none': "
      'off; an existing JAX_COMPILATION_CACHE_DIR wins)'))
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    sweep = load_sweep(args.config)
    if args.arrays_dir:
      sweep = with_arrays_dir(sweep, args.arrays_dir)
    all_cells = cells(sweep)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.prepare:
    return prepare(sweep, args.prepare)
  if args.list:
    list_cells(sweep, args.workdir)
    return 0
  if args.aggregate:
    aggregate(sweep, args.workdir)
    return 0
  _setup_process(args.jax_cache or os.path.join(args.workdir, 'jax_cache'))
  if args.cell is not None:
    from ssl_jax import config_lib, train  # pylint: disable=g-import-not-at-top
    if not 0 <= args.cell < len(all_cells):
      print(f'error: --cell={args.cell}; the sweep has cells 0..{len(all_cells) - 1}',
            file=sys.stderr)
      return 2
    cell = all_cells[args.cell]
    try:
      res = run_cell(sweep, args.workdir, cell)
    except config_lib.ConfigError as e:
      print(f'error: cell {cell["name"]}: {e}', file=sys.stderr)
      return 2
    except train.NonFiniteLossError as e:
      print(f'error: cell {cell["name"]}: {e}', file=sys.stderr)
      return 1
    if res['status'] == 'preempted':
      return 143
    print(f"[sweep] cell {cell['index']} {cell['name']}: {res['status']}", flush=True)
    return 0
  only = None
  if args.cells:
    try:
      only = [int(x) for x in args.cells.split(',') if x.strip()]
    except ValueError:
      print(f'error: --cells={args.cells!r}: comma-separated integers', file=sys.stderr)
      return 2
    bad = [i for i in only if not 0 <= i < len(all_cells)]
    if bad:
      print(f'error: --cells {bad}: the sweep has cells 0..{len(all_cells) - 1}',
            file=sys.stderr)
      return 2
  out = run_sweep(sweep, args.workdir, executor=args.executor, only=only,
                  log=lambda m: print(m, flush=True))
  if out['preempted']:
    return 143
  return 1 if out['failed'] else 0


if __name__ == '__main__':
  sys.exit(main())
