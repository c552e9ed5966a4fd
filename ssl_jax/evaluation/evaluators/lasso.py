"""`lasso`: a linear probe on its own learned mix of a stage's unit outputs (the downstream
side of Doersch and Zisserman 2017's lasso, section 3.3 of ../shared/spec/protocols.md).

The trunk must expose the unit outputs of `stage` as endpoints '<stage>/unit<u>' (u = 1..U,
all of one shape): config.model.unit_endpoints of the pretext run, as the multitask
lasso sets it. With the cached pooled features f_u (f32[N, D] each, standardised per
column on train when `standardize`), the probe learns one row alpha (f32[U]) for the
downstream task together with the classifier (W f32[D, K], b f32[K]):

    logits = (sum_u alpha_u f_u) W + b
    loss   = mean softmax cross-entropy + wd / 2 * ||W||^2 + l1 * sum_u |alpha_u|

alpha starts at 1/U (every unit equally, as the pretext lasso), W and b at 0. It is
trained full-batch for `steps` steps of Adam's direction (optax.scale_by_adam, lr `lr`),
with the L1 term as a proximal step in Adam's own metric: alpha_u is soft-thresholded by
lr * l1 / (sqrt(v_u) + eps), v_u Adam's bias-corrected second moment of alpha_u. A unit
whose smoothed gradient stays below l1 in magnitude therefore sits at exactly 0 (the
lasso's optimality condition), which a subgradient step under Adam never reaches (Adam
rescales a small L1 subgradient to a step of about lr). alpha is unconstrained: a
normalised mix would make the L1 term constant. (wd, l1) is chosen on val top-1 over
`weight_decays` x `l1s`; test is scored once.

Notes: alpha's overall scale trades against W's (only the L1 and L2 terms fix it), so
read alpha's relative sizes and its zeros. The mix is of the pooled features
(config.eval.pool_mode): with 'avg' pooling that is the pooled mix exactly, with 'max'
a mix of each unit's pooled features. Every unit of the stage must be in one cache group
(config.eval.max_cache_gb).

Settings (config.evals.<name>; configs/linear_eval.py has the instance `lasso`, off):
  stage          the stage ('' = the first stage whose units the trunk exposes).
  l1s            L1 coefficients to try (>= 0).
  weight_decays  L2 coefficients of W to try (>= 0).
  steps, lr      full-batch steps (> 0) and Adam's learning rate (> 0).
  standardize    standardise every unit's features per column (train mean / std).
Rows: endpoint '<stage>/lasso', top1 (top5 with > 5 classes) and top1@<level> on val and
test; settings weight_decay, l1, units, units_nonzero, dims (D). Details: alpha, the
choice, the grid.
Errors (ValueError, at start-up): a trunk without unit endpoints of `stage`, bad values.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax.evaluation import evaluators


def unit_names(available, stage=''):
  """(stage, ['<stage>/unit1', ...]) of `available`, the stage's units in order ('' =
  the first stage that has units); (stage, []) where none."""
  units = [n for n in available if evaluators.is_unit(n)]
  if not stage:
    stage = units[0].split('/unit')[0] if units else ''
  mine = [n for n in units if n.split('/unit')[0] == stage]
  return stage, sorted(mine, key=lambda n: int(n.split('/unit')[1]))


def fit(units, labels, num_classes, *, weight_decay, l1, steps, lr):
  """The lasso probe's parameters on one (wd, l1) point (module docstring).

  Args:
    units: f32[U, N, D] features of the stage's units.
    labels: i32[N] in [0, num_classes).
    num_classes: K.
    weight_decay, l1: the L2 coefficient of W and the L1 coefficient of alpha (>= 0).
    steps, lr: full-batch steps and Adam's learning rate.
  Returns:
    dict(alpha f32[U], w f32[D, K], b f32[K], loss f32[]: the final objective).
  """
  num_units, _, dims = units.shape
  params = {'alpha': jnp.full((num_units,), 1.0 / num_units, jnp.float32),
            'w': jnp.zeros((dims, num_classes), jnp.float32),
            'b': jnp.zeros((num_classes,), jnp.float32)}
  adam = optax.scale_by_adam()
  b2, eps = 0.999, 1e-8  # (optax.scale_by_adam's defaults, used by the proximal step)

  def smooth(p):
    logits = jnp.einsum('u,und->nd', p['alpha'], units) @ p['w'] + p['b']
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return ce + 0.5 * weight_decay * jnp.sum(p['w'] ** 2)

  def step(carry, _):
    p, state = carry
    grads = jax.grad(smooth)(p)
    direction, state = adam.update(grads, state, p)
    p = jax.tree.map(lambda x, d: x - lr * d, p, direction)
    v_hat = state.nu['alpha'] / (1.0 - b2 ** state.count.astype(jnp.float32))
    threshold = lr * l1 / (jnp.sqrt(v_hat) + eps)
    a = p['alpha']
    p = dict(p, alpha=jnp.sign(a) * jnp.maximum(jnp.abs(a) - threshold, 0.0))
    return (p, state), None

  (params, _), _ = jax.lax.scan(step, (params, adam.init(params)), None, length=steps)
  loss = smooth(params) + l1 * jnp.sum(jnp.abs(params['alpha']))
  return dict(params, loss=loss)


def logits(params, units):
  """f32[N, K] of the fitted probe on f32[U, N, D] unit features."""
  return jnp.einsum('u,und->nd', params['alpha'], units) @ params['w'] + params['b']


@evaluators.register('lasso')
class Lasso(evaluators.Evaluator):
  """A linear probe on a learned sparse mix of one stage's unit outputs."""
  rank = 12

  def __init__(self, name, settings, config):
    super().__init__(name, settings, config)
    g = settings.get
    self.stage = g('stage', '') or ''
    self.l1s = tuple(float(v) for v in g('l1s', (1e-3,)))
    self.weight_decays = tuple(float(v) for v in g('weight_decays', (1e-3,)))
    self.steps = g('steps', 300)
    self.lr = g('lr', 0.01)
    self.standardize = bool(g('standardize', True))
    for key, values in (('l1s', self.l1s), ('weight_decays', self.weight_decays)):
      if not values or not all(v >= 0 for v in values):
        raise ValueError(f'config.{self.key(key)}={values!r} must be a non-empty list of '
                         'numbers >= 0')
    if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps <= 0:
      raise ValueError(f'config.{self.key("steps")}={self.steps!r} must be an int > 0')
    if not (isinstance(self.lr, (int, float)) and self.lr > 0):
      raise ValueError(f'config.{self.key("lr")}={self.lr!r} must be a number > 0')

  def endpoints(self, available):
    stage, names = unit_names(available, self.stage)
    if not names:
      units = sorted({n.split('/unit')[0] for n in available if evaluators.is_unit(n)})
      raise ValueError(
          f'config.{self.key("stage")}={self.stage!r}: the trunk exposes no unit outputs '
          f"of {stage or 'any stage'!r} (stages with units: {units or 'none'}); train the "
          "trunk with config.model.unit_endpoints=('<stage>',) or disable "
          f'config.evals.{self.name}')
    return names

  def run(self, ctx, cache):
    t = time.perf_counter()
    stage, names = unit_names(self.endpoints(cache.endpoints), self.stage)
    missing = [n for n in names if n not in cache.endpoints]
    if missing:
      raise ValueError(f'config.evals.{self.name}: the units {missing} are in another '
                       'cache group than the rest of the stage; raise '
                       'config.eval.max_cache_gb so that one group holds them all')
    _, levels = evaluators.train_levels(ctx, 'fine')
    n = cache.sizes['train']

    def stacked(split):
      feats = cache.device(split, names, view0=(split == 'train'))
      return jnp.stack([feats[u].astype(jnp.float32) for u in names])

    train = stacked('train')[:, :n]
    train_y = jnp.asarray(cache.train_labels[:n])
    if self.standardize:
      mean = train.mean(axis=1, keepdims=True)
      inv = 1.0 / jnp.maximum(train.std(axis=1, keepdims=True), 1e-6)
    else:
      mean, inv = 0.0, 1.0
    prep = lambda x: (x - mean) * inv
    train = prep(train)
    val, val_y = prep(stacked('val')), cache.val_labels
    fit_fn = jax.jit(fit, static_argnames=('num_classes', 'steps'))
    grid, best = [], None
    for wd in self.weight_decays:
      for l1 in self.l1s:
        p = fit_fn(train, train_y, ctx.num_classes, weight_decay=wd, l1=l1,
                   steps=self.steps, lr=float(self.lr))
        val_top1 = float(np.mean(np.argmax(np.asarray(logits(p, val)), 1) == val_y))
        grid.append({'weight_decay': wd, 'l1': l1, 'val_top1': val_top1,
                     'loss': float(p['loss']),
                     'units_nonzero': int(np.sum(np.asarray(p['alpha']) != 0))})
        if best is None or val_top1 > best[0]:
          best = (val_top1, wd, l1, p)
    _, wd, l1, p = best
    alpha = [float(a) for a in np.asarray(p['alpha'])]
    nonzero = int(sum(a != 0 for a in alpha))
    endpoint = f'{stage}/lasso'
    settings = dict(solver='prox_adam', head='linear', weight_decay=wd, l1=l1,
                    units=len(names), units_nonzero=nonzero, steps=self.steps,
                    train_examples=n, dims=int(train.shape[-1]))
    note = f'wd {wd:g}, l1 {l1:g}, {nonzero}/{len(names)} units'
    splits = [('val', val, val_y)]
    if cache.test is not None:
      splits.append(('test', prep(stacked('test')), cache.test_labels))
    detail = {'stage': stage, 'units': names, 'alpha': alpha, 'weight_decay': wd, 'l1': l1,
              'grid': grid, 'steps': self.steps, 'lr': float(self.lr)}
    for split, x, y in splits:
      scores = np.asarray(logits(p, x))
      for r in evaluators.score_rows(endpoint, scores, y, levels, split=split, note=note,
                                     **settings):
        if split == 'test':
          r['detail'] = endpoint
        yield r
        if split == 'test' and r['metric'] == 'top1':
          detail['top1'] = r['value']
    yield endpoint, detail
    ctx.timing[f'{self.name}_s'] = ctx.timing.get(f'{self.name}_s', 0.0) + (
        time.perf_counter() - t)
