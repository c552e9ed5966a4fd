r"""Goyal et al. 2019, "Scaling and Benchmarking Self-Supervised Visual Representation
Learning": data size x capacity x problem complexity.

  python -m ssl_jax.sweep --config configs/sweeps/goyal.py:data_size_cpu --workdir W

Presets (each a grid; `--list` prints the cells and their commands):
  data_size_cpu     rotation on VGG19-BN k=1 (the CPU rotation cell, configs/sweeps/lib.py:
                    1,000 steps of 64 images) pretrained on nested static subsets of
                    CIFAR-10 (JPEG q75) train[:45000]: 10 / 25 / 50 / 100 % (4,500 ...
                    45,000 images, data.subset.fraction, the same images in every
                    experiment); plus the supervised baseline (same trunk, data, steps
                    and evaluation). 5 cells, 73 min measured on 2 cores (2026-12-04;
                    13-17 min a rotation cell, 10 min the supervised one).
                    Goyal's axis is 1M ... 100M images at a fixed schedule; here the
                    steps are fixed too, so the smaller sets are seen for more epochs.
  data_size         the accelerator variant: jigsaw and colorization (Goyal's two tasks) on
                    ResNet50 v1 / v2 k=4 at CIFAR-10 scale (the tasks' `cifar10` presets,
                    100 epochs of 45,000 images, in memory), fractions 10 / 25 / 50 / 100 %.
  capacity_cpu      rotation on the 1,000-step CPU cell: AlexNet-BN vs VGG19-BN vs
                    ResNet50 v2 at k=1 and k=2 (6 cells, hours on 2 cores; not run here).
  capacity          accelerator: jigsaw x {alexnet_bn, resnet50_v1} x k {1, 2, 4, 8}.
  complexity_cpu    jigsaw on its CPU preset (configs/jigsaw.py:cifar10_cpu, ResNet50 v1
                    k=1, 1,200 steps) at |P| = 100, 1,000, 2,000 on AlexNet-BN vs ResNet50
                    v1 k=1, and colorization K in {2, 5, 10} x grid {10, 20} on ResNet50 v2
                    k=1 (configs/colorization.py:cifar10_cpu): about 1 h per jigsaw cell
                    and 15 min per colorization cell on one core (not run here).
  complexity        accelerator: jigsaw |P| 100 ... 10,000 x {alexnet_bn, resnet50_v1 k=4};
                    colorization K {2, 5, 10, 40} x grid {5, 10, 20} on ResNet50 v2 k=4.
  smoke             tiny (tiny_cnn, synthetic data) for tests.
Every cell ends with the linear evaluation of every layer beside the random-init twin.
"""
from configs.sweeps import lib

PRESETS = ('data_size_cpu', 'data_size', 'capacity_cpu', 'capacity', 'complexity_cpu',
           'complexity', 'smoke')
FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def _fraction_axis():
  return {'name': 'fraction', 'key': 'data.subset.fraction', 'values': list(FRACTIONS)}


def get_sweep(preset='data_size_cpu'):
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r} for configs/sweeps/goyal.py; allowed: '
                     f'{list(PRESETS)}')
  if preset == 'data_size_cpu':
    return {
        'name': 'goyal_data_size_cpu', 'study': 'Goyal et al. 2019: data size',
        'description': (
            'Rotation (VGG19-BN k=1, 1,000 steps of 64 images) pretrained on nested '
            'subsets of CIFAR-10 (JPEG q75) train[:45000]; linear probes on 10,000 clean '
            'training images, test split.'),
        'base': lib.ROTATION_CPU, 'linear_eval': 'cifar10_cpu',
        'overrides': dict(lib.CPU_STEPS, **lib.CPU_EVAL),
        'axes': [_fraction_axis()],
        'extra_cells': [{'name': 'supervised', 'role': 'supervised', 'config': lib.SUPERVISED,
                         'labels': {'fraction': 1.0},
                         'overrides': lib.supervised_like_rotation_cpu()}],
        'plots': lib.axis_plots('line', 'fraction', 'data_size', 'Goyal data size',
                                'rotation VGG19-BN k=1', logx=True),
        'estimate': '5 cells, 73 min measured on 2 cores (13-17 min a rotation cell)',
    }
  if preset == 'data_size':
    tasks = {
        'jigsaw': {'config': 'configs/jigsaw.py:cifar10'},
        'colorization': {'config': 'configs/colorization.py:cifar10',
                         'tasks.colorization.input_channels': 3},
    }
    return {
        'name': 'goyal_data_size', 'study': 'Goyal et al. 2019: data size',
        'base': 'configs/jigsaw.py:cifar10', 'linear_eval': 'cifar10',
        'overrides': dict(lib.ACCEL, **{'linear_eval.eval.random_init_baseline': True}),
        'axes': [{'name': 'task', 'values': tasks}, _fraction_axis()],
        'plots': [{'kind': 'line', 'x': 'fraction', 'series': 'task', 'logx': True},
                  {'kind': 'layers', 'series': None}],
        'estimate': '8 cells of 100 epochs at CIFAR-10 scale (accelerator)',
    }
  if preset in ('capacity_cpu', 'capacity'):
    cpu = preset == 'capacity_cpu'
    models = {'alexnet_bn': {'model.name': 'alexnet_bn', 'model.small_input': True},
              'vgg19_bn': {'model.name': 'vgg19_bn'},
              'resnet50_v2': {'model.name': 'resnet50_v2'}}
    if cpu:
      return {
          'name': 'goyal_capacity_cpu', 'study': 'Goyal et al. 2019: capacity',
          'base': lib.ROTATION_CPU, 'linear_eval': 'cifar10_cpu',
          'overrides': dict(lib.CPU_STEPS, **lib.CPU_EVAL),
          'axes': [{'name': 'family', 'values': models},
                   {'name': 'width', 'key': 'model.width', 'values': [1, 2]}],
          'plots': [{'kind': 'line', 'x': 'width', 'series': 'family'}],
          'estimate': '6 cells; ResNet50 v2 cells take several times the VGG ones',
      }
    return {
        'name': 'goyal_capacity', 'study': 'Goyal et al. 2019: capacity',
        'base': 'configs/jigsaw.py:cifar10', 'linear_eval': 'cifar10',
        'overrides': dict(lib.ACCEL, **{'linear_eval.eval.random_init_baseline': True}),
        'axes': [{'name': 'family', 'values': {
            'alexnet_bn': {'model.name': 'alexnet_bn', 'model.patch_strides': False},
            'resnet50_v1': {'model.name': 'resnet50_v1'}}},
                 {'name': 'width', 'key': 'model.width', 'values': [1, 2, 4, 8]}],
        'plots': [{'kind': 'line', 'x': 'width', 'series': 'family', 'logx': True}],
        'estimate': '8 cells (accelerator)',
    }
  if preset in ('complexity_cpu', 'complexity'):
    cpu = preset == 'complexity_cpu'
    perms = [100, 1000, 2000] if cpu else [100, 701, 1000, 2000, 5000, 10000]
    jig = 'configs/jigsaw.py:cifar10_cpu' if cpu else 'configs/jigsaw.py:cifar10'
    col = 'configs/colorization.py:cifar10_cpu' if cpu else 'configs/colorization.py:cifar10'
    families = {'alexnet_bn': {'model.name': 'alexnet_bn', 'model.patch_strides': False},
                'resnet50_v1': {'model.name': 'resnet50_v1'}}
    extra = []
    for k in ([2, 5, 10] if cpu else [2, 5, 10, 40]):
      for grid in ([10, 20] if cpu else [5, 10, 20]):
        extra.append({'name': f'colorization_K-{k}_grid-{grid}', 'role': 'ssl',
                      'config': col, 'labels': {'complexity': f'K={k},grid={grid}'},
                      'overrides': {'tasks.colorization.k': k,
                                    'tasks.colorization.grid': grid}})
    return {
        'name': preset.replace('complexity', 'goyal_complexity'),
        'study': 'Goyal et al. 2019: problem complexity',
        'base': jig, 'linear_eval': 'cifar10_cpu' if cpu else 'cifar10',
        'overrides': (dict(lib.CPU_EVAL, **{'data.source': 'in_memory'}) if cpu else
                      dict(lib.ACCEL, **{'linear_eval.eval.random_init_baseline': True})),
        'axes': [{'name': 'family', 'values': families},
                 {'name': 'complexity', 'key': 'tasks.jigsaw.num_permutations',
                  'values': perms}],
        'extra_cells': extra,
        'plots': [{'kind': 'line', 'x': 'complexity', 'series': 'family', 'logx': True}],
        'estimate': ('6 jigsaw cells (~1 h each on one core) + 6 colorization cells '
                     '(~15 min each)' if cpu else '12 jigsaw + 12 colorization cells'),
    }
  # smoke
  return {
      'name': 'goyal_smoke', 'base': 'configs/rotation.py:smoke', 'linear_eval': 'smoke',
      'overrides': {'data.source': 'synthetic', 'model.name': 'tiny_cnn',
                    'data.image_size': 8, 'total_steps': 4, 'input.pp_train': 'decode',
                    'input.pp_eval': 'decode', 'linear_eval.data.source': 'synthetic'},
      'axes': [_fraction_axis()],
  }
