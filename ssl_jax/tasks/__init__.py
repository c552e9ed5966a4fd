"""Pretext tasks: the contract every task fulfils (`Task`), and the registry.

A task is one file in this package plus one config file. The file defines a builder
`build(config) -> Task`, registered with `@tasks.register('<name>')`; nothing else
needs editing (the registry imports every module of the package on first use). The
trunk is shared and knows nothing of tasks; a task owns:

  settings       config.tasks.<name>: every task-specific key (read-only here).
  num_views      views per source image the preprocessing string must deliver
                 (`views(n)` op; 1 = a plain image). Checked at start-up.
  pretext        pure, jittable `(rng, batch, *, train) -> (inputs, targets)`. `batch`
                 holds `image` u8[B, H, W, C] (or u8[B, V, H, W, C] with V views),
                 `label` i32[B] and `mask` bool[B] (False: padding). `inputs['image']`
                 is the trunk input f32[B, n, h, w, c]: the engine runs the trunk once on
                 all B*n of them (one BatchNorm batch, image-major), e.g. n = 4 rotations,
                 9 patches, 8 exemplar copies, 2 SimCLR views, 1 L channel. Runs inside
                 the train step on the device, or on the host CPU (same function).
  head           a linen Module `head(endpoints, inputs, train) -> outputs`: endpoints
                 of the trunk over the B*n inputs (dict of f32 arrays), the pretext
                 inputs (e.g. jigsaw's permutation indices), BN mode. Its parameters
                 live under params['heads'][name]. Dropout uses the 'dropout' rng.
  loss           `(outputs, targets, axis_name) -> (scalar, per_example)`: the scalar is
                 this device's share (the engine takes its mean over devices, inside
                 the differentiated function); `axis_name` is the mesh axis (None off
                 the mesh) for losses over the global batch (e.g. NT-Xent gathers every
                 device's embeddings). `per_example` is a dict of f32[B * c] image-major
                 values (index b * c + j; c copies per source image), with at least `loss`;
                 evaluation averages them per source image, padding masked out.
  eval_input     `EvalInput`: what the trunk takes at linear evaluation (RGB in [-1, 1],
                 standardised patches, the L channel), asked for by the evaluation.
  weight_decay   {head submodule name: L2 coefficient} overriding the default for
                 params['heads'][name][submodule] (the study's patch head: 5e-4).
  validate       `validate(config)`: start-up checks, ValueError naming the key.

The engine trains a *task set* (`TaskSet`): members, each a registered task with its own
stream (preprocessing strings and batch sizes, in the member's own config), loss weight,
sampling rate and input mode. A registered builder returns a `Task` (the engine makes it a
set of one, whose config is the job's: nothing changes for single tasks) or a `TaskSet`
(ssl_jax/tasks/multitask.py). `get_task_set(config)` is what the engine calls.

The engine wires them: trunk + heads in `PretextModel` (ssl_jax.train), the pretext
stage on the device or the host, the loss's mean over the mesh axis. See
docs/design.md ("Adding a task").
"""
import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Mapping

# name -> build(config) -> Task. Library modules of the package (common, patches,
# permutations, ...) register nothing.
_REGISTRY: dict = {}
_DISCOVERED = []


@dataclasses.dataclass(frozen=True)
class EvalInput:
  """What a task's trunk takes at evaluation time.

  Attributes:
    kind: 'rgb' (x / 255 mapped to [-1, 1]), 'patches' (standardised grid cells) or
      'lab_l' (the L channel of CIE Lab), for logs and results.
    fn: images u8[B, H, W, 3] -> trunk input f32[B * per_image, h, w, c], image-major.
    per_image: trunk inputs per image; their pooled features are combined (patch
      models: averaged over the 9 patches, as the study).
    pp: default preprocessing string of the linear evaluation for this trunk given the
      dataset ('' = the evaluation config's own), e.g. the study's patch geometry.
  """
  kind: str
  fn: Callable[[Any], Any]
  per_image: int = 1
  pp: str = ''


@dataclasses.dataclass(frozen=True)
class Task:
  """One pretext task, as the engine sees it (see the module docstring)."""
  name: str
  settings: Any
  num_views: int
  pretext: Callable[..., Any]
  head: Any
  loss: Callable[..., Any]
  eval_input: EvalInput
  weight_decay: Mapping[str, float] = dataclasses.field(default_factory=dict)
  validate: Callable[[Any], None] = lambda config: None


INPUT_MODES = ('rgb', 'gray3', 'lab_l')
SCHEDULES = ('sum', 'sample')


@dataclasses.dataclass(frozen=True)
class Member:
  """One member of a task set, as the engine trains it.

  Attributes:
    name: unique in the set; metrics `<name>/<key>`, params['heads'][name].
    task: the member's `Task` (task.name is the registered task).
    config: the member's job config: the job's, with the member's stream
      (input.pp_train / pp_eval, batch_size, eval_batch_size) in place. Sources,
      validation and the task itself read it.
    weight: w in the differentiated loss sum_m w_m * loss_m (>= 0).
    rate: sampling rate of schedule 'sample' (>= 0; drawn with p = rate / sum(rates)).
    input_mode: what the member's pretext stage receives (before its own maths):
      'rgb' (the images as they are), 'gray3' (luma grey in all three channels) or
      'lab_l' (CIE L in all three channels, as u8 L * 255 / 100; tasks.common).
  """
  name: str
  task: Task
  config: Any
  weight: float = 1.0
  rate: float = 1.0
  input_mode: str = 'rgb'


@dataclasses.dataclass(frozen=True)
class TaskSet:
  """The tasks the engine trains on one trunk.

  Attributes:
    name: config.task (the registered builder).
    members: tuple of `Member`, in order (member i's keys fold in i when there are
      several; a set of one uses the job's keys unchanged).
    schedule: 'sum' (every step runs every member on its own sub-batch and
      differentiates sum_m w_m * loss_m) or 'sample' (each step draws one member with
      probability rate_m / sum(rates), the same on every device and host).
    eval_input: the trunk's input at linear evaluation (`EvalInput`).
    settings: the builder's settings section (None for a set of one).
  """
  name: str
  members: tuple
  schedule: str = 'sum'
  eval_input: Any = None
  settings: Any = None

  @property
  def single(self):
    """True for a set of one (today's single-task runs: names and keys unchanged)."""
    return len(self.members) == 1

  @property
  def names(self):
    return tuple(m.name for m in self.members)

  def member(self, name):
    for m in self.members:
      if m.name == name:
        return m
    raise KeyError(f'task set {self.name!r} has no member {name!r}; members: '
                   f'{list(self.names)}')


def register(name):
  """Decorator registering `build(config) -> Task` under `name`."""
  def wrap(build):
    if name in _REGISTRY and _REGISTRY[name] is not build:
      raise ValueError(f'task {name!r} is registered twice')
    _REGISTRY[name] = build
    return build
  return wrap


def _discover():
  """Imports every module of this package once, so that their tasks register."""
  if _DISCOVERED:
    return
  for info in pkgutil.iter_modules(__path__):
    if not info.name.startswith('_'):
      importlib.import_module(f'{__name__}.{info.name}')
  _DISCOVERED.append(True)


def names():
  """Sorted names of every registered task."""
  _discover()
  return sorted(_REGISTRY)


def get_task(name, config):
  """What the builder registered as `name` returns for `config` (the whole job config):
  a `Task`, or a `TaskSet` for builders of several tasks (multitask).

  Raises:
    ValueError naming the unknown task and the registered ones.
  """
  _discover()
  if name not in _REGISTRY:
    raise ValueError(f'config.task={name!r} is not a known task; allowed: {names()}')
  task = _REGISTRY[name](config)
  if task.name != name:
    raise ValueError(f'task builder registered as {name!r} returned task {task.name!r}')
  return task


def as_task_set(task, config):
  """A `Task` as a set of one (member name = task name, config = the job's), or the set."""
  if isinstance(task, TaskSet):
    return task
  return TaskSet(name=task.name, members=(Member(task.name, task, config),),
                 eval_input=getattr(task, 'eval_input', None))


def get_task_set(config):
  """The `TaskSet` of config.task: what the engine trains (built once per run)."""
  return as_task_set(get_task(config.task, config), config)


def settings(config, name):
  """config.tasks.<name>, or a ValueError naming the missing section."""
  section = config.get('tasks', {}).get(name) if hasattr(config, 'get') else None
  if section is None:
    raise ValueError(f'config.tasks.{name} is missing: the settings of task {name!r} '
                     f'belong there (see configs/{name}.py)')
  return section
