"""Shared pieces of the sweep configs (configs/sweeps/<study>.py).

A sweep config is a plain dict (see ssl_jax/sweep.py `normalise`); these helpers hold the
settings several studies share, so that their CPU cells are comparable with each other
and with the README's main job.
"""

# The CPU-sized rotation cell: configs/rotation.py:cifar10_cpu (VGG19-BN k=1, CIFAR-10
# (JPEG q75) in memory, pad-4 crop + flip, lr 0.1 at batch 64), shortened from the main
# job's 4,000 steps to 1,000 (decays x0.1 at 750 and 900; 20 warm-up steps) so that a
# grid of 5 cells fits about an hour of a 2-core machine. Its linear evaluation is the
# main job's (configs/linear_eval.py:cifar10_cpu: L-BFGS probes of every layer on 10,000
# training images, kNN, the random-init twin) without the MLP and low-shot heads.
ROTATION_CPU = 'configs/rotation.py:cifar10_cpu'
CPU_STEPS = {
    'total_steps': 1000, 'optimizer.decay_epochs': (7.5, 9.0),
    'eval_every_steps': 500, 'checkpoint_every_steps': 250, 'log_every_steps': 100,
}
CPU_EVAL = {'linear_eval.mlp.enabled': False, 'linear_eval.lowshot.enabled': False}

# The supervised baseline through the same engine, trunk and evaluation: the rotation
# cell's model, data, augmentation, optimiser and steps with softmax cross-entropy on the
# labels (configs/supervised.py; its trunk then goes through the same linear evaluation).
SUPERVISED = 'configs/supervised.py:cifar10_cpu'


def supervised_like_rotation_cpu(**overrides):
  """Overrides that make configs/supervised.py:cifar10_cpu the rotation CPU cell's twin."""
  o = {'model.name': 'vgg19_bn', 'model.width': 1, 'data.source': 'in_memory',
       'input.pp_train': 'decode|pad_crop_flip', 'optimizer.base_lr': 0.4,
       'optimizer.warmup_epochs': 0.2, 'steps_per_epoch': 100}
  o.update(CPU_STEPS)
  o.update(CPU_EVAL)
  o.update(overrides)
  return o


# CIFAR-10 sizes of the accelerator variants: the tasks' `cifar10` presets (the study's
# families at k=4 with the small-input stem, 100 epochs) with the data held in memory.
ACCEL = {'data.source': 'in_memory'}


def axis_plots(kind, x, stem, study, trunk, **options):
  """The three plots of a one-axis CPU sweep: the cell's best layer on val and the
  pre-logits against axis `x` (`kind` 'bars' or 'line', with `options` such as
  logx=True), then the per-layer curves of every cell. Files `<stem>_best.png`,
  `<stem>_pre_logits.png`, `<stem>_layers.png`; titles '<study>: <trunk>, ...'."""
  return [
      dict(kind=kind, x=x, file=f'{stem}_best.png',
           title=f'{study}: {trunk}, best layer (val)', **options),
      dict(kind=kind, x=x, endpoint='pre_logits', file=f'{stem}_pre_logits.png',
           title=f'{study}: {trunk}, pre-logits', **options),
      dict(kind='layers', file=f'{stem}_layers.png',
           title=f'{study}: per-layer linear probes', baseline=False),
  ]
