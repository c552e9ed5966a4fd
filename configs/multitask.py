r"""Multi-task self-supervised learning (Doersch and Zisserman 2017): one trunk, a head per task.

  python -m ssl_jax.main --config configs/multitask.py:cifar10_cpu --workdir /tmp/mt
  # the lasso over block3's units, and input harmonization:
  python -m ssl_jax.main --config configs/multitask.py:cifar10 \
      --config.tasks.multitask.lasso.stage=block3 --config.model.unit_endpoints="('block3',)" \
      --config.tasks.colorization.endpoint=block3 --config.tasks.multitask.harmonize=True \
      --workdir /tmp/mt_lasso
  # ... and its linear evaluation also learns its own alpha row over block3's units:
  #     --config.linear_eval.evals.lasso.enabled=True (configs/linear_eval.py)

A combination of tasks is this one config: its members are registered tasks whose own
settings (config.tasks.<task>) and streams (preprocessing strings) come from their own
configs' presets of the same name, the one place a config reads other task configs
(their sections are reused, never copied). The task set is `ssl_jax/tasks/multitask.py`.

Presets:
  cifar10       the paper's image tasks, relative patch location + colorization + exemplar
                (its fourth, motion segmentation, needs video: out of scope, see
                ../shared/spec/protocols.md 3.3), on ResNet50 v2 k=4 with the small-input
                stem (CIFAR-10, 32 px; patches 24 px of a 96-px resize, the patch
                presets' geometry), schedule 'sum' with equal weights, momentum SGD, 100
                epochs of the members' combined images. Accelerator-sized.
  imagenette64  the same on Imagenette at 64 px (patches 32 px of a 127-px crop).
  cifar10_cpu   CPU-sized: rotation + relative patch location + colorization on ResNet50
                v2 k=1 (small-input stem), each member 32 images per step (96 in all),
                'sum', Adam lr 1e-3, 1,500 steps, precise-BN pretext evaluation; then the
                linear evaluation of every layer beside the random-init trunk.
  cifar10_cpu_vgg   cifar10_cpu's schedule and streams on VGG19-BN k=1 (the README main
                job's trunk) with the two members that trunk takes at 32 px, rotation +
                colorization (64 images per step; lr 1e-3 as above); relative patch
                location's 12-px patches are below VGG19's 32-px minimum. Measured on a
                2-core VM: the step runs in about 0.4 s, against about 9.7 s for
                cifar10_cpu's three members on ResNet50 v2 with the small-input stem
                (rotation alone there: 7.2 s).
  smoke         tiny (tiny_cnn-sized: k=1, 16-px images, 12-px patches of a 48-px resize,
                a few steps) for tests: rotation + relative patch location.
Deviations from the paper (every preset): ResNet50 v2 (the paper: ResNet-101 v2 cut after
block 3) at the study's stem; synchronous 'sum' (or 'sample') steps instead of
asynchronous RMSProp workers; colorization's L repeated into 3 channels so that one root
conv takes every member's input; heads read pre-logits (lasso off) or the lasso's mix.

Settings (config.tasks.multitask): schedule ('sum' | 'sample'), harmonize, eval_input,
lasso (stage, l1) and members {name: task, weight, rate, input_mode, pp_train, pp_eval,
batch_size, eval_batch_size}; see ssl_jax/tasks/multitask.py.
"""
import ml_collections

from configs import colorization as colorization_config
from configs import common
from configs import exemplar as exemplar_config
from configs import relative_patch_location as rpl_config
from configs import rotation as rotation_config

PRESETS = ('cifar10', 'imagenette64', 'cifar10_cpu', 'cifar10_cpu_vgg', 'smoke')

_MEMBER_CONFIGS = {
    'rotation': rotation_config, 'relative_patch_location': rpl_config,
    'colorization': colorization_config, 'exemplar': exemplar_config,
}


def member(task, preset, *, weight=1.0, rate=1.0, input_mode='', batch_size=-1,
           eval_batch_size=-1, pp_train=None, pp_eval=None):
  """A member spec whose stream is the task config's `preset` (its settings: `section`)."""
  c = _MEMBER_CONFIGS[task].get_config(preset)
  spec = ml_collections.ConfigDict(dict(
      task=task, weight=float(weight), rate=float(rate), input_mode=input_mode,
      pp_train=c.input.pp_train if pp_train is None else pp_train,
      pp_eval=c.input.pp_eval if pp_eval is None else pp_eval,
      batch_size=batch_size, eval_batch_size=eval_batch_size))
  return spec, c.tasks[task]


def _set_members(c, preset, members):
  """c.tasks.multitask.members and each member task's settings section."""
  specs = ml_collections.ConfigDict()
  for name, (task, kwargs) in members.items():
    spec, section = member(task, preset, **kwargs)
    specs[name] = spec
    if task not in c.tasks:
      c.tasks[task] = section
  c.tasks.multitask.members = specs


def get_config(preset='cifar10_cpu'):
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r} for configs/multitask.py; allowed: '
                     f'{list(PRESETS)}')
  c = common.get_config()
  c.task = 'multitask'
  c.tasks.multitask = ml_collections.ConfigDict(dict(
      schedule='sum', harmonize=False, eval_input='',
      lasso=ml_collections.ConfigDict(dict(stage='', l1=1e-3)),
      members=ml_collections.ConfigDict()))
  c.model.name = 'resnet50_v2'
  c.model.unit_endpoints = ()
  common.image_preset(c, 'cifar10' if preset.startswith('cifar10') else preset)
  c.model.small_input = True
  c.model.patch_strides = False
  if preset in ('cifar10', 'imagenette64'):
    _set_members(c, preset, {
        'relative_patch_location': ('relative_patch_location', {}),
        'colorization': ('colorization', {}),
        'exemplar': ('exemplar', {'batch_size': 64}),
    })
    c.model.width = 4
    c.batch_size = 128           # each member's (exemplar: 64 images x 8 copies)
    c.eval_batch_size = 128
    c.tasks.colorization.input_channels = 3
    c.linear_eval_preset = preset
  elif preset in ('cifar10_cpu', 'cifar10_cpu_vgg'):
    # Sized for 2 CPU cores.
    members = {
        'rotation': ('rotation', {}),
        'relative_patch_location': ('relative_patch_location', {}),
        'colorization': ('colorization', {}),
    }
    if preset == 'cifar10_cpu_vgg':
      del members['relative_patch_location']
    _set_members(c, 'cifar10_cpu', members)
    c.data.val_split = 'train[45000:46000]'
    c.model.width = 1
    if preset == 'cifar10_cpu_vgg':
      c.model.name = 'vgg19_bn'
    c.tasks.colorization.input_channels = 3
    c.batch_size = 32
    c.eval_batch_size = 64
    c.total_steps = 1500
    c.steps_per_epoch = 100      # 'epochs' of the schedule are 100 steps here
    c.optimizer.name = 'adam'
    # lr 1e-3 at the members' images per step (96, or 64 for the VGG pair; linear scaling)
    c.optimizer.base_lr = 1e-3 * 256 / (32 * len(members))
    c.optimizer.warmup_epochs = 1.0
    c.optimizer.decay_epochs = (11.0, 13.5)
    c.precise_bn_batches = 8
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.max_eval_batches = 8
    c.input.cache = True
    c.data.source = 'in_memory'
    c.run_linear_eval = True
    c.linear_eval_preset = 'cifar10_cpu'
  elif preset == 'smoke':
    _set_members(c, 'smoke', {
        'rotation': ('rotation', {}),
        'relative_patch_location': ('relative_patch_location', {}),
    })
    c.model.width = 1
    c.data.image_size = 16
    c.linear_eval_preset = 'smoke'
  return c
