r"""Doersch and Zisserman 2017, "Multi-task Self-Supervised Visual Learning": the
multi-task trunk against each of its single tasks on the same trunk and schedule.

  python -m ssl_jax.sweep --config configs/sweeps/multitask.py:cpu --workdir W

Presets:
  cpu           configs/multitask.py:cifar10_cpu_vgg (rotation + colorization on VGG19-BN
                k=1, the README main job's trunk, each member 32 images a step, 'sum', Adam
                1e-3, 1,500 steps, precise-BN pretext evaluation) and each member alone on
                the same trunk and schedule (configs/sweeps/multitask_single.py); then the
                linear evaluation of every layer (configs/linear_eval.py:cifar10_cpu
                without MLP and low-shot, probes on the first 5,000 of its 10,000 training
                images) beside the random-init twin. 3 cells, 33 minutes on 2 quiet
                cores (docs/RESULTS.md). (configs/multitask.py:cifar10_cpu, three members on
                ResNet50 v2 with the small-input stem, steps at about 10 s on 2 cores:
                over 4 hours for its cell alone; not a CPU sweep.)
  accelerator   configs/multitask.py:cifar10 (relative patch location + colorization +
                exemplar, ResNet50 v2 k=4, 100 epochs) and its three single tasks, in
                memory. 4 cells.
  smoke         tiny, for tests.
"""
from configs.sweeps import lib

PRESETS = ('cpu', 'accelerator', 'smoke')
SINGLE = 'configs/sweeps/multitask_single.py'


def get_sweep(preset='cpu'):
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r} for configs/sweeps/multitask.py; allowed: '
                     f'{list(PRESETS)}')
  if preset == 'cpu':
    base, members = 'cifar10_cpu_vgg', ('rotation', 'colorization')
    overrides = dict(lib.CPU_EVAL, **{
        'linear_eval.eval.max_train_examples': 5000, 'checkpoint_every_steps': 250})
    le = 'cifar10_cpu'
  elif preset == 'accelerator':
    base, members = 'cifar10', ('relative_patch_location', 'colorization', 'exemplar')
    overrides = dict(lib.ACCEL, **{'linear_eval.eval.random_init_baseline': True})
    le = 'cifar10'
  else:
    base, members = 'smoke', ('rotation', 'relative_patch_location')
    overrides = {'data.source': 'synthetic', 'total_steps': 4,
                 'linear_eval.data.source': 'synthetic'}
    le = 'smoke'
  tasks = {'multitask': {'config': f'configs/multitask.py:{base}'}}
  tasks.update({m: {'config': f'{SINGLE}:{base}.{m}'} for m in members})
  return {
      'name': f'multitask_{preset}', 'study': 'Doersch and Zisserman 2017: multi-task',
      'description': ('The multi-task trunk and each of its tasks alone on the same trunk '
                      'and schedule.'),
      'base': f'configs/multitask.py:{base}', 'linear_eval': le, 'overrides': overrides,
      'axes': [{'name': 'tasks', 'values': tasks}],
      'plots': [{'kind': 'bars', 'x': 'tasks', 'file': f'multitask_{preset}_best.png',
                 'title': 'Multi-task vs single tasks: best layer (val)'},
                {'kind': 'layers', 'file': f'multitask_{preset}_layers.png',
                 'baseline': False, 'title': 'Multi-task vs single tasks: per layer'}],
      'estimate': (f'the multi-task cell costs about the {len(members)} single ones '
                   'together' + ('; 33 min in all measured on 2 quiet cores (2026-12-04)'
                                 if preset == 'cpu' else '')),
  }
