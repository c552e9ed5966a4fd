r"""The notebooks: generate them from their jupytext sources, check them, execute them.

    python colabs/build.py              # colabs/<name>.py -> colabs/<name>.ipynb (no outputs)
    python colabs/build.py --check      # exit 1 if an .ipynb differs from its source
    python colabs/build.py --execute --fast            # run every notebook top to bottom
    python colabs/build.py --execute --figures docs/notebooks   # full sizes, save figures

Each notebook's source of truth is `colabs/<name>.py` in jupytext's percent format; the
`.ipynb` is generated (cell ids numbered, outputs empty) so that regenerating gives no
diff and git never holds outputs. Executing: a cell tagged `parameters` holds the
notebook's parameters (`FAST = False`, ...); `execute` inserts a cell after it with the
values given (papermill's convention), runs the notebook in a fresh kernel (cwd: the
repository root) and returns the executed notebook and its wall time. Cells tagged
`figure` must display at least one image; a cell with metadata `docs="<name>"` has its
first image saved as `<figures dir>/<name>.png`.

Needs jupytext, nbformat and nbclient (with ipykernel); the `test` extra installs them.
"""
import argparse
import base64
import glob
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Execution order: explore_representation reuses train_and_evaluate's workdir.
ORDER = ('pretext_tasks', 'train_and_evaluate', 'explore_representation')
COLAB_METADATA = {'provenance': [], 'toc_visible': True}


def sources():
  """The notebook sources, colabs/<name>.py (this script excluded), in ORDER first."""
  found = sorted(os.path.splitext(os.path.basename(p))[0]
                 for p in glob.glob(os.path.join(HERE, '*.py'))
                 if os.path.basename(p) != os.path.basename(__file__))
  return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def render(name):
  """The .ipynb text generated from colabs/<name>.py (deterministic)."""
  import jupytext  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top
  nb = jupytext.read(os.path.join(HERE, f'{name}.py'), fmt='py:percent')
  for i, cell in enumerate(nb.cells):
    cell['id'] = f'{name[:40]}-{i:02d}'
    if cell.cell_type == 'code':
      cell['outputs'] = []
      cell['execution_count'] = None
  nb.metadata['colab'] = dict(COLAB_METADATA, name=f'{name}.ipynb')
  nb.nbformat, nb.nbformat_minor = 4, 5
  nbformat.validate(nb)
  text = nbformat.writes(nb)      # nbformat's own layout: indent 1, sorted keys, lines
  return text if text.endswith('\n') else text + '\n'


def build(check=False):
  """Writes (or, with check, compares) every colabs/<name>.ipynb; returns the stale ones."""
  stale = []
  for name in sources():
    path = os.path.join(HERE, f'{name}.ipynb')
    text = render(name)
    old = open(path, encoding='utf-8').read() if os.path.exists(path) else None
    if old != text:
      stale.append(path)
      if not check:
        with open(path, 'w', encoding='utf-8') as f:
          f.write(text)
  return stale


def inject(nb, parameters):
  """Inserts a cell setting `parameters` after the cell tagged 'parameters'."""
  import nbformat  # pylint: disable=g-import-not-at-top
  index = next((i for i, c in enumerate(nb.cells)
                if 'parameters' in c.get('metadata', {}).get('tags', [])), None)
  if index is None:
    raise ValueError('the notebook has no cell tagged "parameters"')
  code = '\n'.join(f'{k} = {v!r}' for k, v in parameters.items())
  cell = nbformat.v4.new_code_cell(code, metadata={'tags': ['injected-parameters']})
  cell['id'] = 'injected-parameters'
  nb.cells.insert(index + 1, cell)
  return nb


def execute(name, parameters=None, *, timeout=600, kernel_name='python3'):
  """Runs colabs/<name>.ipynb top to bottom in a new kernel (cwd: the repository root).

  Returns:
    (the executed notebook, {'wall_s': wall seconds, 'cpu_s': CPU seconds (user +
    system) of the kernel process and its children: a figure that does not depend on
    how busy the machine is}).
  Raises:
    nbclient.exceptions.CellExecutionError naming the failing cell; TimeoutError
    (CellTimeoutError) when a cell runs longer than `timeout` seconds.
  """
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top
  nb = nbformat.read(os.path.join(HERE, f'{name}.ipynb'), as_version=4)
  if parameters:
    inject(nb, parameters)
  client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                                   resources={'metadata': {'path': ROOT}})
  t, cpu = time.perf_counter(), _children_cpu()
  client.execute()   # (starts, runs and shuts down the kernel: its CPU time is reaped)
  return nb, {'wall_s': time.perf_counter() - t, 'cpu_s': _children_cpu() - cpu}


def _children_cpu():
  import resource  # pylint: disable=g-import-not-at-top  (POSIX)
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def images(cell):
  """The PNG images (bytes) a cell displayed, in order."""
  out = []
  for o in cell.get('outputs', []):
    data = o.get('data', {})
    if 'image/png' in data:
      out.append(base64.b64decode(data['image/png']))
  return out


def missing_figures(nb):
  """Cells tagged 'figure' that displayed no image: [(index, first source line)]."""
  return [(i, c.source.splitlines()[0] if c.source else '')
          for i, c in enumerate(nb.cells)
          if 'figure' in c.get('metadata', {}).get('tags', []) and not images(c)]


def save_figures(nb, directory):
  """Writes each `docs`-named cell's first image to directory/<name>.png; returns paths."""
  os.makedirs(directory, exist_ok=True)
  written = []
  for c in nb.cells:
    name = c.get('metadata', {}).get('docs')
    shown = images(c)
    if name and shown:
      path = os.path.join(directory, f'{name}.png')
      with open(path, 'wb') as f:
        f.write(shown[0])
      written.append(path)
  return written


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true', help='only compare; exit 1 if stale')
  parser.add_argument('--execute', action='store_true', help='run the notebooks')
  parser.add_argument('--fast', action='store_true', help='with --execute: FAST = True')
  parser.add_argument('--workdir', default=None, help='with --execute: WORKDIR parameter')
  parser.add_argument('--figures', default=None, help='with --execute: save docs figures')
  parser.add_argument('--only', nargs='*', default=None, help='notebook names')
  parser.add_argument('--timeout', type=int, default=1800, help='seconds per cell')
  args = parser.parse_args(argv)
  stale = build(check=args.check)
  if args.check:
    for path in stale:
      print(f'stale: {path} (run python colabs/build.py)')
    return 1 if stale else 0
  for path in stale:
    print(f'wrote {path}')
  if not args.execute:
    return 0
  params = {'FAST': bool(args.fast)}
  if args.workdir:
    params['WORKDIR'] = args.workdir
  for name in args.only or sources():
    nb, info = execute(name, {k: v for k, v in params.items()
                              if k == 'FAST' or name != 'pretext_tasks'},
                       timeout=args.timeout)
    missing = missing_figures(nb)
    saved = save_figures(nb, args.figures) if args.figures else []
    print(f'{name}: {info["wall_s"]:.1f} s wall, {info["cpu_s"]:.1f} s CPU, {sum(len(images(c)) for c in nb.cells)} images'
          f'{", missing figures " + str(missing) if missing else ""}'
          f'{", saved " + ", ".join(saved) if saved else ""}', flush=True)
    if missing:
      return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
