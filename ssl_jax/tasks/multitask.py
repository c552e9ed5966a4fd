"""Multi-task self-supervised learning (Doersch and Zisserman 2017) on one shared trunk.

The builder returns a `tasks.TaskSet`: members, each a registered task (rotation,
exemplar, relative_patch_location, jigsaw, colorization, simclr, supervised) with its own
stream (preprocessing strings, batch sizes), loss weight, sampling rate and input mode.
The engine (ssl_jax.train) runs them: 'sum' (each step every member on its own sub-batch,
the loss sum_m w_m * loss_m) or 'sample' (each step one member drawn with probability
rate_m / sum(rates); the synchronous counterpart of the paper's asynchronous workers,
whose shares of the workers set the task mix). Full images and 64-px patches share the
trunk's parameters, not a batch.

Input harmonization (the paper's): `harmonize=True` gives relative patch location (and
jigsaw) the same L input as colorization: their input mode becomes 'lab_l' (CIE L in all
three channels, tasks.common.apply_input_mode) unless set explicitly; colorization makes
its own L input; exemplar and the others keep RGB unless set.

Lasso (the paper's "lasso over layers"): with `lasso.stage` (e.g. 'block3'), the trunk
exposes the outputs z_u of every unit of that stage as endpoints `<stage>/unit<u>`
(config.model.unit_endpoints), and each member's head reads h_t = sum_u alpha[t, u] z_u:
the head's `stage` endpoint becomes h_t, its `pre_logits` the global average of h_t, and
the endpoints after the stage are removed (so a head cannot read past the mix, as the
paper's trunk ends at block 3). alpha[t] (f32[U], params heads/<member>/lasso_alpha, no
weight decay) is unconstrained and trained jointly under the L1 penalty
lambda * sum_u |alpha[t, u]|, sown into the 'losses' collection (`extra_lasso_l1`); every
alpha is logged (`<member>/alpha_unit<u>`). A softmax- or sum-to-one-normalised mix (as
AllenNLP's ScalarMix) would make the L1 term constant and the lasso a no-op. alpha starts
at 1/U (every unit equally).

Settings (config.tasks.multitask):
  schedule     'sum' or 'sample'.
  harmonize    bool (see above).
  eval_input   the trunk input at linear evaluation: '' = 'rgb' unless every member takes
               L (then colorization's), or a member's name (its task's evaluation input).
  lasso        stage ('' = off), l1 (lambda >= 0).
  members      {name: {task, weight, rate, input_mode ('' = 'rgb' or the harmonized
               mode), pp_train, pp_eval, batch_size, eval_batch_size (-1: the job's)}}.
               The member tasks' own settings stay in config.tasks.<task>.
Members are ordered by name (their random keys fold in that index).
"""
import flax.linen as nn
import jax.numpy as jnp

from ssl_jax import tasks
from ssl_jax.tasks import common

NAME = 'multitask'
MEMBER_KEYS = ('task', 'weight', 'rate', 'input_mode', 'pp_train', 'pp_eval', 'batch_size',
               'eval_batch_size')
# Tasks whose input harmonization gives them the L input (the paper: relative position).
HARMONIZED = ('relative_patch_location', 'jigsaw')


class LassoHead(nn.Module):
  """A member's head on sum_u alpha[u] * endpoints['<stage>/unit<u>'] (Doersch and
  Zisserman's lasso). `__call__(endpoints, inputs, train)` -> the inner head's outputs.

  Attributes:
    inner: the member task's head (reads `stage` or `pre_logits`).
    stage: the trunk stage whose unit outputs are mixed.
    num_units: U, the stage's unit count.
    l1: lambda of the sown penalty lambda * sum |alpha|.
    drop: endpoint names removed from what the inner head sees (those after `stage`).
  """
  inner: nn.Module
  stage: str
  num_units: int
  l1: float = 0.0
  drop: tuple = ()

  @nn.compact
  def __call__(self, endpoints, inputs, train):
    alpha = self.param('lasso_alpha', nn.initializers.constant(1.0 / self.num_units),
                       (self.num_units,), jnp.float32)
    units = [endpoints[f'{self.stage}/unit{u + 1}'] for u in range(self.num_units)]
    mix = sum(a * z for a, z in zip(alpha, units))
    self.sow('losses', 'lasso_l1', self.l1 * jnp.sum(jnp.abs(alpha)))
    for u in range(self.num_units):
      self.sow('metrics', f'alpha_unit{u + 1}', alpha[u])
    seen = {k: v for k, v in endpoints.items() if k not in self.drop and '/unit' not in k}
    seen[self.stage] = mix
    seen['pre_logits'] = jnp.mean(mix, axis=(1, 2))
    return self.inner(seen, inputs, train)  # (a field: bound as the child 'inner')


def member_config(config, spec):
  """The job config with a member's stream in place (input strings, batch sizes, task)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.task = spec.task
    if spec.pp_train:
      c.input.pp_train = spec.pp_train
    if spec.pp_eval:
      c.input.pp_eval = spec.pp_eval
    if spec.batch_size > 0:
      c.batch_size = spec.batch_size
    if spec.eval_batch_size > 0:
      c.eval_batch_size = spec.eval_batch_size
  return c


def _error(message):
  raise ValueError(f'config.tasks.multitask.{message}')


def _lasso_units(config, stage):
  """The unit count of `stage` in config.model (ValueError if the trunk exposes none)."""
  from ssl_jax import models  # pylint: disable=g-import-not-at-top
  exposed = tuple(config.model.get('unit_endpoints', ()) or ())
  if stage not in exposed:
    _error(f"lasso.stage={stage!r} needs config.model.unit_endpoints to include it "
           f"(now {exposed!r})")
  if not hasattr(models, 'unit_endpoint_names'):
    _error('lasso needs a model zoo with unit endpoints (models.unit_endpoint_names)')
  try:
    return len(models.unit_endpoint_names(config.model.name, stage))
  except ValueError as e:
    _error(f'lasso.stage={stage!r}: {e}')


def _after(config, stage):
  from ssl_jax import models  # pylint: disable=g-import-not-at-top
  names = [e for e in models.trunk_endpoints(config.model.name) if e != 'pre_logits']
  return tuple(names[names.index(stage) + 1:]) if stage in names else ()


@tasks.register(NAME)
def build(config):
  s = tasks.settings(config, NAME)
  if s.schedule not in tasks.SCHEDULES:
    _error(f'schedule={s.schedule!r} is not allowed; allowed: {list(tasks.SCHEDULES)}')
  specs = dict(s.members)
  if not specs:
    _error('members is empty: name at least one member task')
  known = [n for n in tasks.names() if n != NAME]
  lasso_stage = s.lasso.stage
  units = _lasso_units(config, lasso_stage) if lasso_stage else 0
  if s.lasso.l1 < 0:
    _error(f'lasso.l1={s.lasso.l1!r} must be >= 0')
  members = []
  for name in sorted(specs):
    spec = specs[name]
    unknown = sorted(set(spec) - set(MEMBER_KEYS))
    if unknown:
      _error(f'members.{name} has unknown keys {unknown}; allowed: {list(MEMBER_KEYS)}')
    if spec.task not in known:
      _error(f'members.{name}.task={spec.task!r} is not a known task; allowed: {known}')
    for key in ('weight', 'rate'):
      value = spec[key]
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        _error(f'members.{name}.{key}={value!r} must be a number >= 0')
    mode = spec.input_mode or ('lab_l' if s.harmonize and spec.task in HARMONIZED
                               else 'rgb')
    if mode not in tasks.INPUT_MODES:
      _error(f'members.{name}.input_mode={spec.input_mode!r} is not allowed; allowed: '
             f"{list(tasks.INPUT_MODES)} (or '' for the default)")
    mc = member_config(config, spec)
    task = tasks.get_task(spec.task, mc)
    if task.eval_input.kind == 'lab_l' and mode != 'rgb':
      _error(f"members.{name}.input_mode={mode!r}: task {spec.task!r} makes its own L "
             "input from colour images and needs 'rgb'")
    if units:
      if spec.task == 'colorization':
        endpoint = mc.tasks.colorization.endpoint
        if endpoint != lasso_stage:
          _error(f"lasso.stage={lasso_stage!r}: member {name!r} (colorization) reads "
                 f"endpoint {endpoint or 'block4'!r}; set config.tasks.colorization."
                 f"endpoint={lasso_stage!r} so its head reads the mix")
      head = LassoHead(task.head, lasso_stage, units, float(s.lasso.l1),
                       drop=_after(config, lasso_stage))
      task = tasks.Task(**{**task.__dict__, 'head': head})
    members.append(tasks.Member(name=name, task=task, config=mc, weight=float(spec.weight),
                                rate=float(spec.rate), input_mode=mode))
  if s.schedule == 'sample' and not sum(m.rate for m in members) > 0:
    _error('members.*.rate are all zero: schedule sample needs a positive rate')
  if s.harmonize and not any(m.task.eval_input.kind == 'lab_l' for m in members):
    _error('harmonize=True needs a member whose task takes the L input (colorization) '
           'for the others to share it; the members are ' + ', '.join(
               f'{m.name} ({m.task.name})' for m in members))
  channels = {m.name: _trunk_channels(m) for m in members}
  if len(set(channels.values())) > 1:
    _error(f'members give the shared trunk inputs of different channel counts {channels}; '
           'one trunk takes one (colorization: set config.tasks.colorization.'
           'input_channels=3 beside RGB members)')
  return tasks.TaskSet(name=NAME, members=tuple(members), schedule=s.schedule,
                       eval_input=_eval_input(s, members), settings=s)


def _trunk_channels(member):
  import jax  # pylint: disable=g-import-not-at-top
  from ssl_jax.data import ops  # pylint: disable=g-import-not-at-top
  from ssl_jax.data import sources  # pylint: disable=g-import-not-at-top
  c = member.config
  size = c.data.image_size
  shape = ops.output_shape(c.input.pp_train or 'decode', (size, size, 3), train=True)

  def trunk_input():
    batch = sources.dummy_batch(shape, 1)
    batch = dict(batch, image=common.apply_input_mode(batch['image'], member.input_mode))
    return member.task.pretext(jax.random.key(0), batch, train=True)[0]['image']

  return int(jax.eval_shape(trunk_input).shape[-1])


def _eval_input(settings, members):
  """The trunk's evaluation input (see the module docstring)."""
  choice = settings.eval_input
  if choice:
    for m in members:
      if m.name == choice:
        return m.task.eval_input
    _error(f'eval_input={choice!r} is not a member; members: {[m.name for m in members]}')
  takes_l = [m for m in members if m.task.eval_input.kind == 'lab_l']
  if len(takes_l) == len(members):
    return takes_l[0].task.eval_input
  return tasks.EvalInput('rgb', common.rgb_eval_fn)
