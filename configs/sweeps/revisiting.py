r"""Kolesnikov, Zhai, Beyer 2019, "Revisiting Self-Supervised Visual Representation
Learning": task x family x width, every layer (Table 1 and Figures 2-4).

  python -m ssl_jax.sweep --config configs/sweeps/revisiting.py:cpu --workdir W

Tasks {rotation, exemplar, relative patch location, jigsaw} x families {ResNet50 v1,
ResNet50 v2, RevNet50, VGG19-BN} x widening factor k; each cell ends with the linear
evaluation of every layer (the per-layer curves) beside the random-init twin.

Presets:
  cpu           k=1, every task on its own CPU preset (configs/<task>.py:cifar10_cpu: its
                stem, optimiser and steps; rotation's 4,000 steps shortened to 1,000 as in
                configs/sweeps/lib.py), the family swapped in: 16 cells. Estimates: the
                rotation VGG19-BN cell ~10 min on 2 quiet cores, the patch tasks' presets
                about an hour each on one core, ResNet50 / RevNet50 trunks several times
                VGG19-BN's cost: about 10-15 hours in all (not run yet: docs/RESULTS.md).
  cpu_width     rotation x the four families x k {1, 2}: 8 cells, ~3-5 hours.
  accelerator   the study's grid at CIFAR-10 scale (the tasks' `cifar10` presets: 32 px,
                small-input stem, 100 epochs, in memory): rotation k {4, 8, 12, 16},
                exemplar {4, 8, 12}, relative patch location and jigsaw {4, 8} (Table 1's
                columns) x the four families: 44 cells.
  smoke         tiny (tiny_cnn, synthetic data) for tests.
The study's ImageNet runs (configs/<task>.py:imagenet) are the same grid with
`base`/`config` set to the imagenet presets.
"""
from configs.sweeps import lib

PRESETS = ('cpu', 'cpu_width', 'accelerator', 'smoke')
FAMILIES = ('resnet50_v1', 'resnet50_v2', 'revnet50', 'vgg19_bn')
TASK_CONFIGS = {'rotation': 'configs/rotation.py', 'exemplar': 'configs/exemplar.py',
                'relative_patch_location': 'configs/relative_patch_location.py',
                'jigsaw': 'configs/jigsaw.py'}
# Table 1's widths per task.
WIDTHS = {'rotation': (4, 8, 12, 16), 'exemplar': (4, 8, 12),
          'relative_patch_location': (4, 8), 'jigsaw': (4, 8)}


def _tasks(preset, rotation_extra=None):
  out = {}
  for task, path in TASK_CONFIGS.items():
    bundle = {'config': f'{path}:{preset}'}
    if task == 'rotation' and rotation_extra:
      bundle.update(rotation_extra)
    out[task] = bundle
  return out


def _families():
  return {f: {'model.name': f} for f in FAMILIES}


def _plots(tasks):
  plots = []
  for t in tasks:
    plots.append({'kind': 'line', 'x': 'width', 'series': 'family', 'where': {'task': t},
                  'file': f'revisiting_{t}_width.png', 'title': f'{t}: best layer vs k'})
    plots.append({'kind': 'layers', 'series': 'family', 'where': {'task': t},
                  'baseline': False, 'file': f'revisiting_{t}_layers.png',
                  'title': f'{t}: linear probes per layer'})
  return plots


def get_sweep(preset='cpu'):
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r} for configs/sweeps/revisiting.py; '
                     f'allowed: {list(PRESETS)}')
  if preset in ('cpu', 'cpu_width'):
    # Rotation's CPU preset is the README's 4,000-step job: shortened here (lib.CPU_STEPS).
    rot = dict(lib.CPU_STEPS)
    tasks = _tasks('cifar10_cpu', rot)
    if preset == 'cpu_width':
      tasks = {'rotation': tasks['rotation']}
    widths = [1] if preset == 'cpu' else [1, 2]
    return {
        'name': f'revisiting_{preset}', 'study': 'Kolesnikov et al. 2019: Table 1',
        'base': lib.ROTATION_CPU, 'linear_eval': 'cifar10_cpu',
        'overrides': dict(lib.CPU_EVAL, **{'data.source': 'in_memory'}),
        'axes': [{'name': 'task', 'values': tasks}, {'name': 'family', 'values': _families()},
                 {'name': 'width', 'key': 'model.width', 'values': widths}],
        'plots': _plots(tasks),
        'estimate': ('16 cells, about 10-15 hours on 2 cores' if preset == 'cpu' else
                     '8 cells, about 3-5 hours on 2 cores'),
    }
  if preset == 'accelerator':
    exclude = [{'task': t, 'width': k} for t in TASK_CONFIGS for k in (4, 8, 12, 16)
               if k not in WIDTHS[t]]
    return {
        'name': 'revisiting_accelerator', 'study': 'Kolesnikov et al. 2019: Table 1',
        'base': 'configs/rotation.py:cifar10', 'linear_eval': 'cifar10',
        'overrides': dict(lib.ACCEL, **{'linear_eval.eval.random_init_baseline': True}),
        'axes': [{'name': 'task', 'values': _tasks('cifar10')},
                 {'name': 'family', 'values': _families()},
                 {'name': 'width', 'key': 'model.width', 'values': [4, 8, 12, 16]}],
        'exclude': exclude,
        'plots': _plots(TASK_CONFIGS),
        'estimate': '44 cells of 100 epochs at CIFAR-10 scale (accelerator)',
    }
  return {
      'name': 'revisiting_smoke', 'base': 'configs/rotation.py:smoke', 'linear_eval': 'smoke',
      'overrides': {'data.source': 'synthetic', 'total_steps': 4,
                    'linear_eval.data.source': 'synthetic'},
      'axes': [{'name': 'task', 'values': {'rotation': {},
                                          'jigsaw': {'config': 'configs/jigsaw.py:smoke'}}},
               {'name': 'family', 'values': {'tiny_cnn': {'model.name': 'tiny_cnn'}}},
               {'name': 'width', 'key': 'model.width', 'values': [1, 2]}],
  }
