"""The Colab notebooks (colabs/): in sync with their jupytext sources, committed without
outputs, and executed top to bottom with FAST = True, each displaying its figures.

Budget: the three notebooks together in FAST mode take about 3 minutes of wall time on a
quiet 2-core CPU (each kernel imports JAX and TensorFlow and compiles its programs; the
test prints each notebook's wall time). They read CIFAR-10 and Imagenette 64 px from TFDS
and skip, naming the command, where those are not prepared
(`python ../shared/data/prepare_tfds.py`, as the CI does before the tests).
"""
import glob
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(ROOT, 'colabs')
NOTEBOOKS = ('pretext_tasks', 'train_and_evaluate', 'explore_representation')
# Every notebook's wall time must stay under this (a regression guard; the budget is
# the docstring's ~3 minutes for all three on a quiet 2-core machine).
MAX_SECONDS_EACH = 600


def _build():
  spec = importlib.util.spec_from_file_location('colabs_build',
                                                os.path.join(COLABS, 'build.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _load(name):
  with open(os.path.join(COLABS, f'{name}.ipynb'), encoding='utf-8') as f:
    return json.load(f)


def test_every_source_has_its_notebook_and_back():
  sources = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(COLABS, '*.py'))
                   if not p.endswith('build.py'))
  notebooks = sorted(os.path.basename(p)[:-6] for p in glob.glob(os.path.join(COLABS, '*.ipynb')))
  assert sources == notebooks == sorted(NOTEBOOKS)
  assert tuple(_build().sources()) == NOTEBOOKS


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_committed_notebooks_hold_no_outputs(name):
  nb = _load(name)
  for i, cell in enumerate(nb['cells']):
    if cell['cell_type'] == 'code':
      assert cell['outputs'] == [], f'{name}.ipynb cell {i} holds outputs: strip them'
      assert cell['execution_count'] is None, f'{name}.ipynb cell {i} has an execution count'
    assert 'attachments' not in cell, f'{name}.ipynb cell {i} has attachments'
  assert 'widgets' not in nb['metadata']


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebooks_are_generated_from_their_sources(name):
  pytest.importorskip('jupytext')
  pytest.importorskip('nbformat')
  with open(os.path.join(COLABS, f'{name}.ipynb'), encoding='utf-8') as f:
    committed = f.read()
  assert _build().render(name) == committed, (
      f'colabs/{name}.ipynb differs from colabs/{name}.py: run python colabs/build.py')


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_structure(name):
  """A parameters cell with FAST; an install cell for Colab; figures tagged; a runtime."""
  nb = _load(name)
  cells = nb['cells']
  text = lambda c: ''.join(c['source'])
  params = [c for c in cells if 'parameters' in c['metadata'].get('tags', [])]
  assert len(params) == 1 and 'FAST = False' in text(params[0])
  assert any("'google.colab' in sys.modules" in text(c) and 'pip' in text(c) for c in cells)
  assert any('figure' in c['metadata'].get('tags', []) for c in cells)
  assert 'Runtime on CPU' in text(cells[0])
  assert nb['metadata']['kernelspec']['name'] == 'python3'
  # Cells call the library; they do not define its functions (a helper of one line or
  # two, e.g. a plot's wrapper, is allowed).
  for c in cells:
    if c['cell_type'] == 'code':
      assert 'import ssl_jax.' not in text(c) and 'jax.jit' not in text(c)


def _data_ready():
  tfds = pytest.importorskip('tensorflow_datasets')
  for name in ('cifar10', 'imagenette64'):
    if not tfds.builder(name).is_prepared():
      pytest.skip(f'TFDS dataset {name} is not prepared in {tfds.core.constants.DATA_DIR} '
                  '(run python ../shared/data/prepare_tfds.py)')


# Slow: over a minute of one worker (three kernels, each importing JAX and TensorFlow);
# the sync, no-output and structure tests above stay in the CI command.
@pytest.mark.slow
def test_notebooks_execute_top_to_bottom_and_draw_their_figures(tmp_path, capsys):
  for module in ('nbclient', 'nbformat', 'jupytext', 'ipykernel', 'matplotlib'):
    pytest.importorskip(module, reason=f'{module} is needed to run the notebooks '
                        "(pip install -e '.[test]')")
  _data_ready()
  build = _build()
  workdir = str(tmp_path / 'colab_rotation')   # written by one, read by the next
  times = {}
  for name in NOTEBOOKS:
    params = {'FAST': True}
    if name != 'pretext_tasks':
      params['WORKDIR'] = workdir
    nb, info = build.execute(name, params, timeout=MAX_SECONDS_EACH)
    seconds = info['wall_s']
    times[name] = info
    assert build.missing_figures(nb) == [], f'{name}: cells tagged figure drew nothing'
    errors = [o for c in nb.cells for o in c.get('outputs', []) if o.get('output_type') == 'error']
    assert not errors
    assert seconds < MAX_SECONDS_EACH, f'{name} took {seconds:.0f} s'
  with capsys.disabled():
    print('\nnotebooks (FAST), wall / CPU seconds: '
          + ', '.join(f"{k} {v['wall_s']:.1f} / {v['cpu_s']:.1f}" for k, v in times.items())
          + f", total {sum(v['wall_s'] for v in times.values()):.1f} / "
            f"{sum(v['cpu_s'] for v in times.values()):.1f}")
  # explore_representation reused train_and_evaluate's run (no second training).
  assert os.path.isfile(os.path.join(workdir, 'linear_eval', 'results.json'))
