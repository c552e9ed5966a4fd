"""SGD training of one head per endpoint on frozen features: cached and faithful modes.

Both modes share one update (`_update`): every endpoint's head, for every point of a
hyper-parameter grid (base lr x weight decay, G points), is trained jointly on the same
batch. The loss is the sum over heads and grid points of each one's mean softmax CE
(heads never interact, so each gets exactly its own gradient), plus coupled L2
(gradient wd * W on kernels), momentum SGD through `optax.trace`, lr = base_lr * batch /
256 times the schedule's factor (no warm-up, as the study's linear evaluation).

- cached (`train_cached`): features f32/bf16[N, D] per endpoint live on the device; a
  jitted `lax.scan` over epochs and steps gathers shuffled batches from them. Several
  augmented views ([V*N, D], view-major) are supported: each epoch uses one random view
  of every example.
- faithful (`train_faithful`): images go through the frozen trunk at every step
  (`extract_fn(trunk_variables, images) -> {endpoint: f32[B, D]}`).

Model selection (epochs, lr, weight decay) uses the held-out validation features only:
every `eval_every` epochs each (head, grid point) is scored on the whole validation set;
its best parameters, epoch and scores are kept. Training stops when no (head, grid point)
improved for `patience` epochs (a validation plateau); with schedule 'plateau' a stale
(head, grid point) first has its lr multiplied by `decay_factor` (up to `max_decays`
times). `select` then picks the grid point with the best validation top-1 per endpoint.

Learning rate (train.lr_scaling):
- 'batch' (the study's): lr = base_lr * batch / 256, whatever the features' scale. On
  standardised D-dim features a step's curvature grows with D (about (lambda_max + D /
  batch) / 2, see `lr_factors`): lr 0.1 with momentum 0.9 oscillates on 6,400 dims.
- 'features' (cached, linear heads): lr = base_lr * `lr_factors` (2 / that curvature,
  measured on the cached train features), so base_lr is dimensionless (<= 1: stable).

Train config keys (a dict or ConfigDict; see configs/linear_eval.py `train`):
  head ('linear'|'mlp'), mlp_hidden, mlp_dropout, batch_size, epochs, base_lrs (tuple),
  weight_decays (tuple), momentum, nesterov, schedule ('step'|'cosine'|'constant'|
  'plateau'), decay_epochs, decay_factor, max_decays, eval_every, patience (epochs;
  <= 0 disables early stopping), standardize (bool), seed, eval_batch_size,
  lr_scaling ('batch'|'features'); for the L-BFGS solver only (solvers.py): tol (max
  |gradient| at convergence), precond_rank (its spectral preconditioner's rank).
"""
import functools
import itertools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax.evaluation import heads

DEFAULTS = dict(
    head='linear', mlp_hidden=1000, mlp_dropout=0.5, batch_size=512, epochs=100,
    base_lrs=(0.1,), weight_decays=(0.0,), momentum=0.9, nesterov=False,
    schedule='step', decay_epochs=(), decay_factor=0.1, max_decays=2, eval_every=1,
    patience=-1, standardize=False, seed=0, eval_batch_size=1024, lr_scaling='batch',
    tol=1e-4, precond_rank=128)
LR_SCALINGS = ('batch', 'features')


def make_config(cfg=None, **overrides):
  """A plain dict of train settings: DEFAULTS, updated by cfg then overrides."""
  out = dict(DEFAULTS)
  if cfg is not None:
    cfg = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
      raise ValueError(f'unknown train config keys {sorted(unknown)}; '
                       f'allowed: {sorted(DEFAULTS)}')
    out.update(cfg)
  out.update(overrides)
  for key in ('base_lrs', 'weight_decays', 'decay_epochs'):
    out[key] = tuple(float(v) for v in out[key])
  if out['head'] not in heads.KINDS:
    raise ValueError(f"train.head={out['head']!r}; allowed: {list(heads.KINDS)}")
  if out['schedule'] not in ('step', 'cosine', 'constant', 'plateau'):
    raise ValueError(f"train.schedule={out['schedule']!r}; allowed: "
                     "'step', 'cosine', 'constant', 'plateau'")
  if not out['base_lrs'] or not out['weight_decays']:
    raise ValueError('train.base_lrs and train.weight_decays must be non-empty')
  if out['lr_scaling'] not in LR_SCALINGS:
    raise ValueError(f"train.lr_scaling={out['lr_scaling']!r}; allowed: "
                     f"{list(LR_SCALINGS)}")
  if out['lr_scaling'] == 'features' and out['head'] != 'linear':
    raise ValueError("train.lr_scaling='features' is derived for linear heads; "
                     f"train.head={out['head']!r} needs lr_scaling='batch'")
  if not out['tol'] > 0:
    raise ValueError(f"train.tol={out['tol']!r} must be > 0")
  if int(out['precond_rank']) != out['precond_rank'] or out['precond_rank'] < 0:
    raise ValueError(f"train.precond_rank={out['precond_rank']!r} must be an int >= 0")
  return out


def grid(cfg):
  """The hyper-parameter grid: list of (base_lr, weight_decay), G entries."""
  return list(itertools.product(cfg['base_lrs'], cfg['weight_decays']))


def schedule_factor(cfg, steps_per_epoch):
  """optax schedule: global step -> lr multiplier (1 at step 0; no warm-up).

  'step': x decay_factor at each absolute epoch of `decay_epochs` (the study's);
  'cosine': cosine decay to 0 over `epochs`; 'constant' and 'plateau': 1 (the plateau
  decays are applied on the host, see `_Stopper`).
  """
  if cfg['schedule'] == 'step':
    bounds = {}
    for e in cfg['decay_epochs']:
      step = int(round(e * steps_per_epoch))
      bounds[step] = bounds.get(step, 1.0) * cfg['decay_factor']
    return optax.piecewise_constant_schedule(1.0, bounds)
  if cfg['schedule'] == 'cosine':
    return optax.cosine_decay_schedule(1.0, max(cfg['epochs'] * steps_per_epoch, 1))
  return optax.constant_schedule(1.0)


def epoch_permutation(rng, epoch, n):
  """The example order of `epoch` in cached mode: a permutation of range(n)."""
  return jax.random.permutation(jax.random.fold_in(rng, epoch), n)


# ----------------------------------------------------------------------------- init


def init_heads(seed, dims, num_classes, cfg):
  """G-stacked head parameters: {endpoint: pytree with leading axis G}.

  Drawn on the host with numpy (Glorot-uniform kernels, zero biases): compiling
  JAX's random initialisers costs seconds on a CPU, this costs nothing.
  """
  g = len(grid(cfg))
  params = {}
  for i, name in enumerate(sorted(dims)):
    rng = np.random.RandomState([seed, i])
    heads_g = [heads.init_np(cfg['head'], rng, dims[name], num_classes, cfg['mlp_hidden'])
               for _ in range(g)]
    params[name] = jax.tree.map(lambda *v: jnp.asarray(np.stack(v)), *heads_g)
  return params


def _tx(cfg):
  return optax.trace(decay=cfg['momentum'], nesterov=cfg['nesterov'])


def hyper_arrays(names, cfg, batch_size):
  """Per-endpoint f32[G] arrays of the actual lr (base * batch / 256) and weight decay."""
  pts = grid(cfg)
  lr = np.array([b * batch_size / 256.0 for b, _ in pts], np.float32)
  wd = np.array([w for _, w in pts], np.float32)
  return ({n: jnp.asarray(lr) for n in names}, {n: jnp.asarray(wd) for n in names})


# ----------------------------------------------------------------------------- update


def _bcast(v, leaf):
  """Broadcasts a per-grid-point f32[G] over a G-stacked leaf."""
  return v.reshape(v.shape + (1,) * (leaf.ndim - 1))


def _standardize(x, stats):
  if stats is None:
    return x.astype(jnp.float32)
  mean, inv_std = stats
  return (x.astype(jnp.float32) - mean) * inv_std


def _logits(kind, params, x, *, train=False, rng=None, dropout=0.5):
  """Logits f32[G, B, K] of G stacked heads on shared features x [B, D]."""
  if kind == 'linear':  # One matmul for all grid points.
    return jnp.einsum('bd,gdk->gbk', x, params['kernel']) + params['bias'][:, None, :]
  g = jax.tree.leaves(params)[0].shape[0]
  rngs = jax.random.split(rng, g) if rng is not None else [None] * g
  if rng is None:
    return jax.vmap(lambda p: heads.apply(kind, p, x))(params)
  return jax.vmap(lambda p, r: heads.apply(kind, p, x, train=train, rng=r,
                                           dropout=dropout))(params, rngs)


def _update(params, opt_state, feats, labels, weights, lr, wd, rng, stats, *, cfg):
  """One momentum-SGD step of every (head, grid point).

  Args:
    params: {endpoint: G-stacked head params}.
    opt_state: {endpoint: optax.trace state}.
    feats: {endpoint: [B, D]} batch features.
    labels: i32[B]; weights: f32[B] (0 for padding rows).
    lr, wd: {endpoint: f32[G]} learning rate at this step and L2 coefficient.
    rng: PRNG key (dropout).
    stats: {endpoint: (mean f32[D], inv_std f32[D])} or None.
    cfg: train config (static).
  Returns:
    (params, opt_state, {endpoint: f32[G] batch CE}).
  """
  names = sorted(params)

  def loss_fn(p):
    per_head = {}
    for i, name in enumerate(names):
      x = _standardize(feats[name], None if stats is None else stats[name])
      logits = _logits(cfg['head'], p[name], x, train=True,
                       rng=jax.random.fold_in(rng, i), dropout=cfg['mlp_dropout'])
      per_head[name] = jax.vmap(heads.cross_entropy, (0, None, None))(
          logits, labels, weights)
    return sum(jnp.sum(v) for v in per_head.values()), per_head

  grads, per_head = jax.grad(loss_fn, has_aux=True)(params)
  new_params, new_opt = {}, {}
  for name in names:
    mask = heads.decay_mask(params[name])
    g = jax.tree.map(lambda gr, pr, m: gr + _bcast(wd[name], pr) * pr if m else gr,
                     grads[name], params[name], mask)
    u, new_opt[name] = _tx(cfg).update(g, opt_state[name], params[name])
    new_params[name] = jax.tree.map(lambda pr, up: pr - _bcast(lr[name], pr) * up,
                                    params[name], u)
  return new_params, new_opt, per_head


# ----------------------------------------------------------------------------- eval


def _eval_sums(kind, params, feats, labels, weights, stats):
  """{endpoint: dict(top1, top5, loss) of f32[G] sums} over one batch."""
  out = {}
  for name in sorted(params):
    x = _standardize(feats[name], None if stats is None else stats[name])
    logits = _logits(kind, params[name], x)  # [G, B, K]
    ce = jax.vmap(lambda lg: optax.softmax_cross_entropy_with_integer_labels(
        lg, labels))(logits)
    hits = jax.vmap(lambda lg: heads.correct_topk(lg, labels))(logits)
    out[name] = {'loss': jnp.sum(ce * weights, -1),
                 'top1': jnp.sum(hits['top1'] * weights, -1),
                 'top5': jnp.sum(hits['top5'] * weights, -1)}
  out['count'] = jnp.sum(weights)
  return out


@functools.partial(jax.jit, static_argnames=('kind', 'batch_size'))
def evaluate_cached(params, feats, labels, mask, stats, *, kind, batch_size):
  """Scores G-stacked heads on cached features; every example counts (no drop).

  Args:
    params: {endpoint: G-stacked head params}.
    feats: {endpoint: [N, D]}; labels: i32[N]; mask: bool[N] or None (all valid).
    stats: standardization stats or None.
    kind: head kind; batch_size: rows per chunk (a remainder chunk is handled apart).
  Returns:
    {endpoint: dict(top1, top5, loss) f32[G] means over the valid examples}, count.
  """
  n = labels.shape[0]
  weights = jnp.ones((n,), jnp.float32) if mask is None else mask.astype(jnp.float32)
  b = min(batch_size, n)
  full = n // b

  def chunk(start, size):
    sl = lambda a: jax.lax.dynamic_slice_in_dim(a, start, size)
    return _eval_sums(kind, params, {k: sl(v) for k, v in feats.items()},
                      sl(labels), sl(weights), stats)

  def body(acc, i):
    s = chunk(i * b, b)
    return jax.tree.map(jnp.add, acc, s), None

  zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: chunk(0, b)))
  acc, _ = jax.lax.scan(body, zero, jnp.arange(full))
  if n - full * b:  # The remainder rows, as a static-size last chunk.
    acc = jax.tree.map(jnp.add, acc, chunk(full * b, n - full * b))
  acc.pop('count')
  count = jnp.maximum(jnp.sum(weights), 1.0)
  return jax.tree.map(lambda v: v / count, acc), jnp.sum(weights)


# ----------------------------------------------------------------------------- selection


def _selection_init(params):
  g = jax.tree.leaves(params)[0].shape[0]
  return {
      'params': params,
      'top1': {n: np.full(g, -1.0) for n in params},
      'top5': {n: np.zeros(g) for n in params},
      'loss': {n: np.full(g, np.inf) for n in params},
      'epoch': {n: np.zeros(g, np.int64) for n in params},
  }


def _selection_update(sel, metrics, params, epoch):
  """Keeps, per (endpoint, grid point), the parameters of the best val top-1 so far.

  Ties in top-1 go to the lower validation loss.

  Returns (sel, improved {endpoint: bool[G]}): improved = a strictly higher val top-1
  (what the plateau/patience logic watches; the loss alone can creep down for ever).
  """
  improved, kept = {}, {}
  for name in params:
    m = jax.device_get(metrics[name])
    better = (m['top1'] > sel['top1'][name]) | (
        (m['top1'] == sel['top1'][name]) & (m['loss'] < sel['loss'][name]))
    improved[name] = m['top1'] > sel['top1'][name]
    kept[name] = better
    for key in ('top1', 'top5', 'loss'):
      sel[key][name] = np.where(better, m[key], sel[key][name])
    sel['epoch'][name] = np.where(better, epoch, sel['epoch'][name])
  sel['params'] = _keep_better(kept, params, sel['params'])
  return sel, improved


@jax.jit
def _keep_better(better, new, old):
  """Per (endpoint, grid point): the new parameters where better, else the old."""
  return {n: jax.tree.map(lambda a, b, m=better[n]: jnp.where(_bcast(m, a), a, b),
                          new[n], old[n]) for n in new}


def select(sel, cfg):
  """Picks the grid point with the best validation top-1 for every endpoint.

  Returns:
    {endpoint: dict(params (single head), base_lr, weight_decay, epoch, val_top1,
    val_top5, val_loss, grid (list of per-point dicts))}.
  """
  pts = grid(cfg)
  out = {}
  host_params = jax.device_get(sel['params'])  # Host indexing: no per-leaf compiles.
  for name in sel['params']:
    top1, loss = sel['top1'][name], sel['loss'][name]
    order = sorted(range(len(pts)), key=lambda i: (-top1[i], loss[i]))
    i = order[0]
    out[name] = {
        'params': jax.tree.map(lambda v, i=i: np.asarray(v[i]), host_params[name]),
        'base_lr': pts[i][0], 'weight_decay': pts[i][1],
        'epoch': int(sel['epoch'][name][i]),
        'val_top1': float(top1[i]), 'val_top5': float(sel['top5'][name][i]),
        'val_loss': float(loss[i]),
        'grid': [{'base_lr': p[0], 'weight_decay': p[1],
                  'val_top1': float(top1[j]), 'epoch': int(sel['epoch'][name][j])}
                 for j, p in enumerate(pts)],
    }
  return out


class _Stopper:
  """Patience and lr-on-plateau bookkeeping per (endpoint, grid point), on the host."""

  def __init__(self, names, g, cfg):
    self.cfg = cfg
    self.last = {n: np.zeros(g) for n in names}      # epoch of the last improvement
    self.scale = {n: np.ones(g, np.float32) for n in names}
    self.decays = {n: np.zeros(g, np.int64) for n in names}
    self.done = {n: np.zeros(g, bool) for n in names}

  def update(self, improved, epoch):
    """Returns True when every (endpoint, grid point) has plateaued."""
    patience = self.cfg['patience']
    for n, imp in improved.items():
      self.last[n] = np.where(imp, epoch, self.last[n])
      if patience <= 0:
        continue
      stale = (epoch - self.last[n] >= patience) & ~self.done[n]
      if self.cfg['schedule'] == 'plateau':
        can_decay = stale & (self.decays[n] < self.cfg['max_decays'])
        self.scale[n] = np.where(can_decay, self.scale[n] * self.cfg['decay_factor'],
                                 self.scale[n]).astype(np.float32)
        self.decays[n] += can_decay
        self.last[n] = np.where(can_decay, epoch, self.last[n])
        self.done[n] |= stale & ~can_decay
      else:
        self.done[n] |= stale
    return patience > 0 and all(d.all() for d in self.done.values())

  def lr_scale(self):
    return {n: jnp.asarray(v) for n, v in self.scale.items()}


# ----------------------------------------------------------------------------- cached


def _num_rows(feats):
  return next(iter(feats.values())).shape[0]


def inverse_std(std, rel_floor=1e-3):
  """1/std per dim, and 0 for (near-)constant dims: std below rel_floor x the mean std.

  A dim that never varies on the train set carries no information there; dividing by
  its tiny std would blow up any test example that does vary in it.
  """
  floor = rel_floor * jnp.mean(std)
  return jnp.where(std > floor, 1.0 / jnp.maximum(std, floor), 0.0)


@jax.jit
def _stats(x):
  """(mean, 1/std) per column in one blocked read (XLA's CPU column reductions over
  all rows at once run at a fraction of the memory bandwidth)."""
  n, d = x.shape
  b = min(256, n)
  shift = x[0].astype(jnp.float32)  # sums of x - shift: no cancellation in E[x^2] - m^2

  def body(acc, i):
    start = jnp.minimum(i * b, n - b)  # the last block ends at n; rows seen get weight 0
    xb = jax.lax.dynamic_slice_in_dim(x, start, b).astype(jnp.float32) - shift
    w = (start + jnp.arange(b) >= i * b).astype(jnp.float32)
    return (acc[0] + w @ xb, acc[1] + w @ (xb * xb)), None

  (s1, s2), _ = jax.lax.scan(body, (jnp.zeros((d,)), jnp.zeros((d,))),
                             jnp.arange(-(-n // b)))
  m = s1 / n
  return m + shift, inverse_std(jnp.sqrt(jnp.maximum(s2 / n - m * m, 0.0)))


def feature_stats(feats):
  """Per-dim (mean, 1/std) of every endpoint's train features, for `standardize`."""
  return {n: _stats(v) for n, v in feats.items()}


@functools.partial(jax.jit, static_argnames=('iters',))
def _second_moment_spectrum(x, mean, inv_std, *, iters):
  """(top eigenvalue, trace) of E[z z'] with z = [(x - mean) * inv_std, 1].

  Power iteration from a fixed start; the Rayleigh quotient of its last iterate (a
  lower bound that converges from below: the eigen-gap of such features is large).
  """
  n = x.shape[0]
  x = x.astype(jnp.float32)

  def apply(v):  # E[z z'] v in two reads of x; the standardisation folded into v.
    w = v[:-1] * inv_std
    u = jnp.einsum('nd,d->n', x, w) + (v[-1] - mean @ w)
    xu = jnp.einsum('n,nd->d', u, x)
    return jnp.concatenate([inv_std * (xu - mean * jnp.sum(u)), jnp.sum(u)[None]]) / n

  v0 = jnp.ones((x.shape[1] + 1,), jnp.float32)
  v0 = v0 / jnp.linalg.norm(v0)
  def step(_, v):
    a = apply(v)
    return a / jnp.linalg.norm(a)

  v = jax.lax.fori_loop(0, iters, step, v0)
  var = jnp.mean(jnp.square(x - mean), 0)
  return jnp.vdot(v, apply(v)), jnp.sum(var * inv_std * inv_std) + 1.0


def lr_factors(feats, stats, batch_size, iters=30):
  """{endpoint: lr per unit of base lr} for train.lr_scaling='features'.

  A linear softmax head's loss on a batch of B examples has curvature at most
  lambda_max(Z_B' Z_B / B) / 2 (the softmax Jacobian's norm is <= 1/2), Z_B the features
  it sees (standardised, with a 1 for the bias); for B random rows that is about
  (lambda_max(S) + tr(S) / B) / 2 =: L with S = E[z z'] on the train set. The lr is
  base_lr / L: base_lr = 1 steps to the minimum of the batch's quadratic model along its
  most curved direction, and heavy-ball momentum is stable for lr L < 2 (1 + momentum),
  i.e. base_lr < 3.8 at momentum 0.9 (smaller is less noisy). Measured on ResNet50 k=4
  CIFAR-10 features: after_root (6,400 dims, standardised) has lambda_max ~ 1,300 and
  tr(S) = 6,401, so at B = 256 L ~ 660 and the study's lr 0.1 is lr L ~ 66 (about 17x
  the bound): its training loss sits at 13-17 for tens of epochs; with 'features' it
  falls from the first epoch.

  Args:
    feats: {endpoint: [N, D]} cached train features; stats: `feature_stats` or None.
    batch_size: B.
    iters: power iterations.
  Returns:
    ({endpoint: float factor}, {endpoint: (lambda_max, trace)}).
  """
  factors, spectra = {}, {}
  for name, x in feats.items():
    d = x.shape[1]
    mean, inv_std = (stats[name] if stats is not None else
                     (np.zeros(d, np.float32), np.ones(d, np.float32)))
    lam, tr = (float(v) for v in jax.device_get(
        _second_moment_spectrum(x, mean, inv_std, iters=iters)))
    spectra[name] = (lam, tr)
    factors[name] = 2.0 / (lam + tr / batch_size)
  return factors, spectra


@functools.partial(jax.jit, static_argnames=('cfg_items', 'num_epochs', 'n', 'views'),
                   donate_argnums=(0, 1))
def _run_epochs(params, opt_state, feats, labels, lr0, lr_scale, wd, stats, rng,
                first_epoch, *, cfg_items, num_epochs, n, views):
  """`num_epochs` epochs of cached training in one program (scan over epochs, steps)."""
  cfg = dict(cfg_items)
  b = cfg['batch_size']
  steps = -(-n // b)
  factor = schedule_factor(cfg, steps)

  def epoch_body(carry, epoch):
    params, opt_state, loss_sum = carry
    erng = jax.random.fold_in(rng, epoch)
    perm = epoch_permutation(rng, epoch, n)
    perm = jnp.concatenate([perm, jnp.full((steps * b - n,), n, perm.dtype)])
    view = (jax.random.randint(jax.random.fold_in(erng, 1), (n + 1,), 0, views)
            if views > 1 else None)

    def step_body(carry, s):
      params, opt_state, loss_sum = carry
      idx = jax.lax.dynamic_slice_in_dim(perm, s * b, b)
      valid = idx < n
      idx = jnp.minimum(idx, n - 1)
      rows = idx if view is None else view[idx] * n + idx
      x = {k: jnp.take(v, rows, axis=0) for k, v in feats.items()}
      lab = labels[rows] if labels.shape[0] == views * n else labels[idx]
      t = factor(epoch * steps + s)
      lr = {k: lr0[k] * lr_scale[k] * t for k in lr0}
      params, opt_state, per_head = _update(
          params, opt_state, x, lab, valid.astype(jnp.float32), lr, wd,
          jax.random.fold_in(erng, s + 2), stats, cfg=cfg)
      loss_sum = jax.tree.map(lambda a, l: a + l / steps, loss_sum, per_head)
      return (params, opt_state, loss_sum), None

    (params, opt_state, loss_sum), _ = jax.lax.scan(
        step_body, (params, opt_state, loss_sum), jnp.arange(steps))
    return (params, opt_state, loss_sum), None

  zero = {k: jnp.zeros_like(v) for k, v in lr0.items()}
  (params, opt_state, loss_sum), _ = jax.lax.scan(
      epoch_body, (params, opt_state, zero), first_epoch + jnp.arange(num_epochs))
  return params, opt_state, jax.tree.map(lambda v: v / num_epochs, loss_sum)


def train_cached(train_feats, train_labels, val_feats, val_labels, *, num_classes,
                 cfg, val_mask=None, views=1, log_fn=None):
  """Trains every endpoint's head on cached features; selects on the validation set.

  Args:
    train_feats: {endpoint: [views * N, D]} on device (view-major rows), f32 or bf16.
    train_labels: i32[N] (every view in the same example order) or i32[views * N].
    val_feats: {endpoint: [M, D]}; val_labels: i32[M]; val_mask: bool[M] or None.
    num_classes: K.
    cfg: train config (dict/ConfigDict, see `make_config`).
    views: number of augmented views stacked in train_feats.
    log_fn: optional callback(epoch, dict of scalars) for progress logging.
  Returns:
    dict(selected=`select(...)`, epochs_trained, stopped_early, seconds (wall, with
    compilation), seconds_per_epoch, chunk_seconds [(epochs, seconds) per evaluation
    period, validation included; the first holds the compilation], stats
    (standardization stats or None), history, config).
  """
  cfg = make_config(cfg)
  names = sorted(train_feats)
  rows = _num_rows(train_feats)
  n = rows // views
  if rows != views * n or int(train_labels.shape[0]) not in (n, rows):
    raise ValueError(f'train features have {rows} rows and {train_labels.shape[0]} '
                     f'labels; expected views * N rows ({views} views) and N or views * N '
                     'labels')
  dims = {k: int(v.shape[-1]) for k, v in train_feats.items()}
  rng = jax.random.PRNGKey(cfg['seed'])
  params = init_heads(cfg['seed'], dims, num_classes, cfg)
  opt_state = {k: _tx(cfg).init(v) for k, v in params.items()}
  lr0, wd = hyper_arrays(names, cfg, cfg['batch_size'])
  stats = feature_stats(train_feats) if cfg['standardize'] else None
  spectra = None
  if cfg['lr_scaling'] == 'features':
    factors, spectra = lr_factors(train_feats, stats, cfg['batch_size'])
    base = jnp.asarray([b for b, _ in grid(cfg)], jnp.float32)
    lr0 = {n: base * factors[n] for n in names}
  sel = _selection_init(jax.device_get(params))
  stopper = _Stopper(names, len(grid(cfg)), cfg)
  cfg_items = tuple(sorted((k, v) for k, v in cfg.items()))
  train_labels = jnp.asarray(train_labels, jnp.int32)
  val_labels = jnp.asarray(val_labels, jnp.int32)

  epoch, history, stopped, chunks = 0, [], False, []
  t0 = time.perf_counter()
  while epoch < cfg['epochs']:
    chunk = min(cfg['eval_every'], cfg['epochs'] - epoch)
    tc = time.perf_counter()
    params, opt_state, train_loss = _run_epochs(
        params, opt_state, train_feats, train_labels, lr0, stopper.lr_scale(), wd,
        stats, jax.random.fold_in(rng, 1), jnp.int32(epoch), cfg_items=cfg_items,
        num_epochs=chunk, n=n, views=views)
    epoch += chunk
    metrics, _ = evaluate_cached(params, val_feats, val_labels, val_mask, stats,
                                 kind=cfg['head'], batch_size=cfg['eval_batch_size'])
    sel, improved = _selection_update(sel, metrics, params, epoch)  # (synchronises)
    chunks.append((chunk, time.perf_counter() - tc))
    history.append(_history_row(epoch, train_loss, metrics))
    if log_fn is not None:
      log_fn(epoch, history[-1])
    if stopper.update(improved, epoch):
      stopped = True
      break
  seconds = time.perf_counter() - t0
  return {'selected': select(sel, cfg), 'epochs_trained': epoch, 'stopped_early': stopped,
          'seconds': seconds, 'seconds_per_epoch': seconds / max(epoch, 1),
          'chunk_seconds': chunks, 'lr': jax.device_get(lr0), 'spectra': spectra,
          'stats': stats, 'history': history, 'config': cfg}


def _history_row(epoch, train_loss, metrics):
  row = {'epoch': epoch}
  for name in sorted(metrics):
    row[f'train_loss/{name}'] = float(np.min(jax.device_get(train_loss[name])))
    row[f'val_top1/{name}'] = float(np.max(jax.device_get(metrics[name]['top1'])))
  return row


# ----------------------------------------------------------------------------- faithful


def make_faithful_step(extract_fn, dims, num_classes, cfg, steps_per_epoch):
  """Initial heads and the jitted faithful train step.

  Returns:
    (params, opt_state, train_step) with
    train_step(params, opt_state, trunk_variables, batch, lr_scale, step) ->
    (params, opt_state, {endpoint: f32[G] batch CE}); batch = dict(image u8, label,
    mask) as device arrays; lr_scale {endpoint: f32[G]} (1 = the schedule's lr).
  """
  cfg = make_config(cfg)
  if cfg['lr_scaling'] != 'batch':
    raise ValueError(f"train.lr_scaling={cfg['lr_scaling']!r} needs cached features; the "
                     "faithful mode uses the study's lr_scaling='batch'")
  names = sorted(dims)
  params = init_heads(cfg['seed'], dims, num_classes, cfg)
  opt_state = {k: _tx(cfg).init(v) for k, v in params.items()}
  lr0, wd = hyper_arrays(names, cfg, cfg['batch_size'])
  factor = schedule_factor(cfg, steps_per_epoch)
  step_rng = jax.random.fold_in(jax.random.PRNGKey(cfg['seed']), 1)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, trunk_vars, batch, lr_scale, step):
    feats = jax.lax.stop_gradient(extract_fn(trunk_vars, batch['image']))
    t = factor(step)
    lr = {k: lr0[k] * lr_scale[k] * t for k in lr0}
    return _update(params, opt_state, feats, batch['label'],
                   batch['mask'].astype(jnp.float32), lr, wd,
                   jax.random.fold_in(step_rng, step), None, cfg=cfg)

  return params, opt_state, train_step


def train_faithful(extract_fn, trunk_variables, train_batches, steps_per_epoch,
                   val_batches, *, dims, num_classes, cfg, log_fn=None):
  """The study's protocol: images through the frozen trunk at every step.

  Args:
    extract_fn: pure (trunk_variables, images u8[B,...]) -> {endpoint: f32[B, D]};
      the trunk must run in inference mode (BN moving averages), e.g.
      `features.make_extract_fn`.
    trunk_variables: the frozen trunk's {'params', 'batch_stats'}.
    train_batches: iterator of dicts image/label/mask with the train preprocessing
      (random crop), at least epochs * steps_per_epoch batches of cfg.batch_size.
    steps_per_epoch: steps per epoch.
    val_batches: callable () -> iterable of eval batches (image/label/mask) covering
      the whole validation split.
    dims: {endpoint: D}; num_classes: K.
    cfg: train config; `standardize` is not supported here (the study has none).
    log_fn: optional callback(epoch, dict of scalars).
  Returns:
    as `train_cached`.
  """
  cfg = make_config(cfg)
  if cfg['standardize']:
    raise ValueError('train.standardize=True needs cached features; the faithful mode '
                     'trains on raw pooled features as the study (set it to False)')
  names = sorted(dims)
  params, opt_state, train_step = make_faithful_step(extract_fn, dims, num_classes, cfg,
                                                     steps_per_epoch)
  sel = _selection_init(jax.device_get(params))
  stopper = _Stopper(names, len(grid(cfg)), cfg)

  @jax.jit
  def eval_step(params, trunk_vars, batch):
    feats = extract_fn(trunk_vars, batch['image'])
    return _eval_sums(cfg['head'], params, feats, batch['label'],
                      batch['mask'].astype(jnp.float32), None)

  def evaluate():
    sums = [eval_step(params, trunk_variables, _as_batch(b)) for b in val_batches()]
    return _mean_of_sums(sums)

  epoch, step, history, stopped, chunks = 0, 0, [], False, []
  it = iter(train_batches)
  t0 = time.perf_counter()
  while epoch < cfg['epochs']:
    chunk = min(cfg['eval_every'], cfg['epochs'] - epoch)
    tc = time.perf_counter()
    losses = []
    for _ in range(chunk * steps_per_epoch):
      batch = _as_batch(next(it))
      params, opt_state, per_head = train_step(
          params, opt_state, trunk_variables, batch, stopper.lr_scale(), step)
      step += 1
      losses.append(per_head)
    epoch += chunk
    losses = jax.device_get(losses)
    train_loss = {k: np.mean([l[k] for l in losses], 0) for k in names}
    metrics = evaluate()
    sel, improved = _selection_update(sel, metrics, params, epoch)  # (synchronises)
    chunks.append((chunk, time.perf_counter() - tc))
    history.append(_history_row(epoch, train_loss, metrics))
    if log_fn is not None:
      log_fn(epoch, history[-1])
    if stopper.update(improved, epoch):
      stopped = True
      break
  seconds = time.perf_counter() - t0
  return {'selected': select(sel, cfg), 'epochs_trained': epoch, 'stopped_early': stopped,
          'seconds': seconds, 'seconds_per_epoch': seconds / max(epoch, 1),
          'chunk_seconds': chunks,
          'stats': None, 'history': history, 'config': cfg}


def _as_batch(batch):
  return {'image': jnp.asarray(batch['image']),
          'label': jnp.asarray(batch['label'], jnp.int32),
          'mask': jnp.asarray(batch['mask'], bool)}


# ----------------------------------------------------------------------------- scoring


def stack_selected(selected):
  """{endpoint: single head params} -> {endpoint: params with a G=1 axis} (host)."""
  return {n: jax.tree.map(lambda v: np.asarray(v)[None], s['params'])
          for n, s in selected.items()}


def _mean_of_sums(sums):
  """Host-side mean over batches of `_eval_sums` outputs (with their 'count')."""
  sums = jax.device_get(sums)
  count = max(sum(float(s['count']) for s in sums), 1.0)
  out = {}
  for name in sums[0]:
    if name == 'count':
      continue
    out[name] = {k: sum(s[name][k] for s in sums) / count for k in sums[0][name]}
  return out


def score_cached(selected, feats, labels, *, kind, stats=None, mask=None,
                 batch_size=1024):
  """Top-1/top-5/loss per endpoint of the selected heads on cached features."""
  params = stack_selected(selected)
  m, count = evaluate_cached(params, {n: feats[n] for n in params},
                             jnp.asarray(labels, jnp.int32), mask, stats, kind=kind,
                             batch_size=batch_size)
  m = jax.device_get(m)
  return {n: {k: float(v[0]) for k, v in d.items()} for n, d in m.items()}, int(count)


@functools.partial(jax.jit, static_argnames=('kind',))
def _head_logits(kind, params, x, stats):
  return _logits(kind, params, _standardize(x, stats))[0]


def logits_cached(selected, feats, *, kind, stats=None, batch_size=2048):
  """Logits of the selected heads on cached features: {endpoint: np.float32[N, K]}.

  The same computation `score_cached` scores (standardisation with the train `stats`,
  then the head), in row blocks of `batch_size` (a remainder block compiles once more).
  """
  params = stack_selected(selected)
  out = {}
  for name in sorted(params):
    x = feats[name]
    st = None if stats is None else stats[name]
    n = int(x.shape[0])
    out[name] = np.concatenate(
        [np.asarray(_head_logits(kind, params[name], x[s:s + batch_size], st))
         for s in range(0, n, batch_size)]) if n else np.zeros((0, 0), np.float32)
  return out


def score_faithful(selected, extract_fn, trunk_variables, batches, *, kind):
  """Top-1/top-5/loss per endpoint of the selected heads, images through the trunk."""
  params = stack_selected(selected)

  @jax.jit
  def step(params, trunk_vars, batch):
    feats = extract_fn(trunk_vars, batch['image'])
    return _eval_sums(kind, params, {n: feats[n] for n in params}, batch['label'],
                      batch['mask'].astype(jnp.float32), None)

  sums = [step(params, trunk_variables, _as_batch(b)) for b in batches]
  m = _mean_of_sums(sums)
  count = int(round(sum(float(s['count']) for s in jax.device_get(sums))))
  return {n: {k: float(v[0]) for k, v in d.items() if k != 'count'}
          for n, d in m.items() if n != 'count'}, count


def num_steps(n, batch_size):
  return math.ceil(n / batch_size)

