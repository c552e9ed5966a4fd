r"""Cole et al. 2022, "When Does Contrastive Visual Representation Learning Work?":
pretraining quantity, label quantity, domain, corruption and granularity, with SimCLR and
rotation (../shared/spec/protocols.md 1.2-1.8).

  python -m ssl_jax.sweep --config configs/sweeps/cole.py:corruption_cpu --workdir W

Every axis but label quantity changes the PRETRAINING images only; the evaluation is
always on clean CIFAR-10 (JPEG q75) (its own config: configs/linear_eval.py).

Presets:
  corruption_cpu   rotation on VGG19-BN k=1 (the 1,000-step CPU cell, configs/sweeps/
                   lib.py) pretrained on clean / downsample(2) / downsample(4) / jpeg(10) /
                   salt_pepper(0.05) images (ops before the augmentation in
                   input.pp_train; downsample: area down, bilinear up with half-pixel
                   centres; jpeg: re-encoded once at load time; salt & pepper: fresh
                   noise per draw). 5 cells.
  corruption       accelerator: SimCLR and rotation (CIFAR-10 presets: ResNet50 k=4) x
                   the same corruptions plus jpeg(30), salt_pepper(0.01), and the
                   supervised baseline on corrupted images (Cole: supervised is more
                   robust).
  quantity_cpu     rotation CPU cell on nested subsets of 5k / 10k / 25k / 45k images.
  quantity         accelerator: SimCLR and rotation x 5k / 10k / 25k / 45k (100 epochs).
  labels_cpu       one rotation CPU trunk and the supervised baseline, each evaluated by
                   linear probes on 1 / 10 / 100 / 1,000 labelled images per class and all
                   4,500 (nested class-balanced subsets: the evaluators'
                   config.evals.linear.label_counts), beside the random-init twin.
                   (data.subset.per_class on the evaluation config is the same axis for
                   every evaluator at once.)
  labels           accelerator: SimCLR and supervised trunks, probes and fine-tuning
                   (config.evals.finetune, against supervised from scratch) at 10 / 50 /
                   100 / 500 / 4,500 per class.
  domain_cpu       in-domain vs cross-domain vs pooled at an equal total of 8,000 images:
                   rotation CPU cells pretrained on CIFAR-10 (8,000: nested subset), on
                   Imagenette64 resized to 32 px (8,000 of its train[:8469]: area resize),
                   and on a 50/50 pool of the two (data.pool, 4,000 + 4,000); all evaluated
                   on CIFAR-10. A third small dataset is not in ../shared/data's offline set
                   (only CIFAR-10 and Imagenette64 are), so no three-way pool here.
  domain           accelerator: the same with SimCLR (ResNet50 v1 k=4, 32 px).
  granularity_cpu  one rotation CPU trunk and the supervised baseline, probes trained on the
                   10 CIFAR-10 classes and scored at the coarser levels coarse4 / coarse2
                   (configs/linear_eval.py CIFAR10_GROUPINGS, on in its CIFAR-10 presets, so
                   every CIFAR-10 evaluation has these metrics: Cole's slide-63 protocol at
                   CIFAR scale; iNat21's 7 ranks are out of reach). The same two cells are
                   in goyal.py:data_size_cpu (fraction 1 and the supervised reference).
  granularity      accelerator: SimCLR and supervised (k=4) with the same groupings.
  smoke            tiny (tiny_cnn, synthetic data) for tests.
"""
from configs.sweeps import lib

PRESETS = ('corruption_cpu', 'corruption', 'quantity_cpu', 'quantity', 'labels_cpu', 'labels',
           'domain_cpu', 'domain', 'granularity_cpu', 'granularity', 'smoke')

ROT_PP = 'decode|pad_crop_flip'          # the CPU rotation cell's augmentation
CPU_CORRUPTIONS = {
    'clean': '', 'downsample2': 'downsample(2)', 'downsample4': 'downsample(4)',
    'jpeg10': 'jpeg(10)', 'salt_pepper0.05': 'salt_pepper(0.05)',
}
ACCEL_CORRUPTIONS = dict(CPU_CORRUPTIONS, jpeg30='jpeg(30)', **{'salt_pepper0.01':
                                                                  'salt_pepper(0.01)'})


def with_corruption(pp, op):
  """`decode|<op>|<rest of pp>`: the corruption right after decoding, before the
  augmentation (the pretraining images themselves are corrupted)."""
  if not op:
    return pp
  parts = pp.split('|')
  if parts[0] != 'decode':
    parts = ['decode'] + parts
  return '|'.join([parts[0], op] + parts[1:])


def _corruption_axis(corruptions, pp):
  return {'name': 'corruption', 'values': {
      name: {'input.pp_train': with_corruption(pp, op)} for name, op in corruptions.items()}}


def _simclr_pp():
  from configs import simclr  # pylint: disable=g-import-not-at-top
  return simclr.simclr_pp(32, 0.5)


def get_sweep(preset='corruption_cpu'):
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r} for configs/sweeps/cole.py; allowed: '
                     f'{list(PRESETS)}')
  cpu_base = {'base': lib.ROTATION_CPU, 'linear_eval': 'cifar10_cpu',
              'overrides': dict(lib.CPU_STEPS, **lib.CPU_EVAL)}
  if preset == 'corruption_cpu':
    return dict(cpu_base, **{
        'name': 'cole_corruption_cpu', 'study': 'Cole et al. 2022: corruption',
        'description': (
            'Rotation (VGG19-BN k=1, 1,000 steps of 64 images) pretrained on corrupted '
            'CIFAR-10 (JPEG q75) train[:45000]; linear probes on 10,000 clean training '
            'images, test split.'),
        'axes': [_corruption_axis(CPU_CORRUPTIONS, ROT_PP)],
        'plots': lib.axis_plots('bars', 'corruption', 'corruption', 'Cole corruption',
                                'rotation VGG19-BN k=1'),
        'estimate': '5 cells, about 15 min each on 2 cores (goyal.py:data_size_cpu measured 13-17 min a cell)',
    })
  if preset == 'corruption':
    tasks = {'simclr': {'config': 'configs/simclr.py:cifar10'},
             'rotation': {'config': 'configs/rotation.py:cifar10'},
             'supervised': {'config': 'configs/supervised.py:cifar10'}}
    # One axis value per (task, corruption): each task's own augmentation string.
    cells = {}
    from configs import rotation, supervised, simclr  # pylint: disable=g-import-not-at-top
    pps = {'simclr': simclr.get_config('cifar10').input.pp_train,
           'rotation': rotation.get_config('cifar10').input.pp_train,
           'supervised': supervised.get_config('cifar10').input.pp_train}
    for task, bundle in tasks.items():
      for name, op in ACCEL_CORRUPTIONS.items():
        cells[f'{task}/{name}'] = dict(bundle, **{
            'input.pp_train': with_corruption(pps[task], op)})
    return {
        'name': 'cole_corruption', 'study': 'Cole et al. 2022: corruption',
        'base': 'configs/simclr.py:cifar10', 'linear_eval': 'cifar10',
        'overrides': dict(lib.ACCEL, **{'linear_eval.eval.random_init_baseline': True}),
        'axes': [{'name': 'run', 'values': cells}],
        'plots': [{'kind': 'bars', 'x': 'run', 'rotation': 60}],
        'estimate': '21 cells of 100-1000 epochs at CIFAR-10 scale (accelerator)',
    }
  if preset in ('quantity_cpu', 'quantity'):
    counts = [5000, 10000, 25000, 45000]
    if preset == 'quantity_cpu':
      return dict(cpu_base, **{
          'name': 'cole_quantity_cpu', 'study': 'Cole et al. 2022: pretraining quantity',
          'axes': [{'name': 'images', 'key': 'data.subset.count', 'values': counts}],
          'plots': [{'kind': 'line', 'x': 'images', 'logx': True}],
          'estimate': '4 cells, about 15 min each on 2 cores (goyal.py:data_size_cpu measured 13-17 min a cell)',
      })
    return {
        'name': 'cole_quantity', 'study': 'Cole et al. 2022: pretraining quantity',
        'base': 'configs/simclr.py:cifar10', 'linear_eval': 'cifar10',
        'overrides': dict(lib.ACCEL, **{'linear_eval.eval.random_init_baseline': True}),
        'axes': [{'name': 'task', 'values': {
            'simclr': {}, 'rotation': {'config': 'configs/rotation.py:cifar10'}}},
                 {'name': 'images', 'key': 'data.subset.count', 'values': counts}],
        'plots': [{'kind': 'line', 'x': 'images', 'series': 'task', 'logx': True}],
        'estimate': '8 cells (accelerator)',
    }
  if preset in ('labels_cpu', 'labels'):
    cpu = preset == 'labels_cpu'
    counts = (1, 10, 100, 1000, -1) if cpu else (10, 50, 100, 500, -1)
    base = cpu_base if cpu else {
        'base': 'configs/simclr.py:cifar10', 'linear_eval': 'cifar10',
        'overrides': dict(lib.ACCEL, **{'linear_eval.eval.random_init_baseline': True})}
    overrides = dict(base['overrides'], **{'linear_eval.evals.linear.label_counts': counts})
    if cpu:
      overrides['linear_eval.eval.max_train_examples'] = -1   # 4,500 per class available
    else:
      overrides.update({'linear_eval.evals.finetune.enabled': True,
                        'linear_eval.evals.finetune.label_counts': counts})
    sup = ({'config': lib.SUPERVISED, 'overrides': dict(
        lib.supervised_like_rotation_cpu(), **{
            'linear_eval.evals.linear.label_counts': counts,
            'linear_eval.eval.max_train_examples': -1})} if cpu else
           {'config': 'configs/supervised.py:cifar10', 'overrides': dict(overrides)})
    return dict(base, **{
        'name': preset.replace('labels', 'cole_labels'),
        'study': 'Cole et al. 2022: label quantity',
        # One pretext run per trunk; its evaluation trains a probe (and, on accelerators,
        # a fine-tuning run) per label count on nested class-balanced subsets
        # (config.evals.linear.label_counts; rows 'linear_<n>/class' in results.csv).
        'overrides': overrides,
        'axes': [{'name': 'pretraining', 'values': {'ssl': {}}}],
        'extra_cells': [dict(sup, name='supervised', role='supervised',
                             labels={'pretraining': 'supervised'})],
        'plots': [],
        'estimate': '2 cells',
    })
  if preset in ('domain_cpu', 'domain'):
    cpu = preset == 'domain_cpu'
    total = 8000
    # Every cell is a pool (data.pool) of the same total: one dataset alone (in-domain
    # CIFAR-10, cross-domain Imagenette64) or both 50/50, each image area-resized to 32 px,
    # the pretext val split pooled alike; labels of the pool's datasets kept disjoint.
    sets = {'cifar10': ('train[:45000]', 'train[45000:46000]'),
            'imagenette64': ('train[:8469]', 'train[8469:]')}

    def pool(names, proportions):
      return {'data.pool.datasets': tuple(names),
              'data.pool.train_splits': tuple(sets[n][0] for n in names),
              'data.pool.val_splits': tuple(sets[n][1] for n in names),
              'data.pool.proportions': tuple(proportions), 'data.pool.total': total,
              'data.pool.image_size': 32, 'data.num_classes': 10 * len(names)}
    domains = {'cifar10': pool(['cifar10'], [1.0]),
               'imagenette64': pool(['imagenette64'], [1.0]),
               'pooled': pool(['cifar10', 'imagenette64'], [0.5, 0.5])}
    base = cpu_base if cpu else {
        'base': 'configs/simclr.py:cifar10', 'linear_eval': 'cifar10',
        'overrides': dict(lib.ACCEL, **{'linear_eval.eval.random_init_baseline': True})}
    return dict(base, **{
        'name': preset.replace('domain', 'cole_domain'),
        'study': 'Cole et al. 2022: domain (in-domain vs cross-domain vs pooled)',
        'axes': [{'name': 'pretraining', 'values': domains}],
        'plots': lib.axis_plots('bars', 'pretraining', 'domain', 'Cole domain on CIFAR-10',
                                'rotation VGG19-BN k=1' if cpu else 'SimCLR ResNet50 v1 k=4'),
        'estimate': ('3 cells, 34 min measured on 2 cores (2026-12-04)' if cpu
                     else '3 cells (accelerator)'),
    })
  if preset in ('granularity_cpu', 'granularity'):
    cpu = preset == 'granularity_cpu'
    base = cpu_base if cpu else {
        'base': 'configs/simclr.py:cifar10', 'linear_eval': 'cifar10',
        'overrides': dict(lib.ACCEL, **{'linear_eval.eval.random_init_baseline': True})}
    sup = ({'config': lib.SUPERVISED, 'overrides': lib.supervised_like_rotation_cpu()} if cpu
           else {'config': 'configs/supervised.py:cifar10', 'overrides': dict(lib.ACCEL)})
    return dict(base, **{
        'name': preset.replace('granularity', 'cole_granularity'),
        'study': 'Cole et al. 2022: granularity (probes scored at coarser levels)',
        # (configs/linear_eval.py's CIFAR-10 presets score every probe at the groupings)
        'axes': [{'name': 'pretraining', 'values': {'rotation': {}}}],
        'extra_cells': [dict(sup, name='supervised', role='supervised',
                             labels={'pretraining': 'supervised'})],
        'plots': [],
        'estimate': '2 cells',
    })
  return {
      'name': 'cole_smoke', 'base': 'configs/rotation.py:smoke', 'linear_eval': 'smoke',
      'overrides': {'data.source': 'synthetic', 'model.name': 'tiny_cnn',
                    'data.image_size': 8, 'total_steps': 4, 'input.pp_eval': 'decode',
                    'linear_eval.data.source': 'synthetic'},
      'axes': [_corruption_axis({'clean': '', 'down2': 'downsample(2)'}, 'decode|flip_lr')],
  }
