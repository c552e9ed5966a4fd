"""Full-batch solvers for linear heads on cached features: L-BFGS and ridge.

- 'lbfgs' (`train_lbfgs`, the default cached probe): multinomial logistic regression,
  the same model and loss as the SGD head, minimised exactly:

      f(V, c) = mean_n CE(softmax(x~_n V + c), y_n) + wd / 2 * |V|^2

  with x~ the standardised features when `standardize` (V lives in those coordinates;
  the bias c is not penalised: scikit-learn's `LogisticRegression(C=1 / (N * wd))`
  with the multinomial loss has the same optimum). The L2 grid (`weight_decays`) is
  walked from the largest wd down, one grid point at a time: each point stops on its
  own criterion and warm-starts the next from its optimum and its curvature memory
  (`shift_memory`). A grid point never waits for another. The criterion: max |grad| <=
  tol (the gradient of the mean objective on standardised features, as scikit-learn's
  tol) and, for wd > 0, `gap_estimate` (1/2 g' H g, an estimate from above of the
  objective's distance to its optimum) <= gap_rtol * objective; else `iters`
  iterations or a failed line search, reported as not converged. The gradient test
  alone stopped at relative gaps of 1e-3 - 1e-2 at wd 1e-3 - 1e-4 on rank-deficient
  features (issue 17) and of 2% at wd 1e-4 on benchmarks/linear_eval.py's synthetic
  features (10,000 rows: 153 passes for the 2 x 5 grid; with the gap test 321, 1e-5).
  wd = 0 has no finite optimum on separable features: the loss and its gradient then
  vanish along the separating direction, and the point stops once max |grad| <= tol (a
  near-zero training loss) or at its `iters` cap, reported as not converged.
  A spectral preconditioner (`spectral_preconditioner`) flattens the few huge
  eigenvalues of standardised CNN features (lambda_1 ~ 10^3 on 6,400 dims): 15-65
  iterations per grid point instead of 200-1,000+ (measured on ResNet50 k=4 CIFAR-10
  features under the gradient test alone; scikit-learn's L-BFGS on the same problems:
  190-1,040).
  Features are checked first (`check_features`): NaN or inf is a ValueError naming the
  endpoint; constant columns (dead units, or all of them: the class prior is then the
  only fit) are counted and warned about in the result's `solver_checks`.
- 'ridge' (`train_ridge`): closed-form ridge regression on one-hot {-1, +1} targets with
  a bias column; one eigendecomposition of the Gram matrix serves the whole L2 grid.

Both pick the grid point with the best top-1 on the held-out validation features and
return the structure of `linear.train_cached` (with `epoch` = L-BFGS iterations, 0 for
ridge), so the driver treats every solver alike.

One objective evaluation (`objective`, a "pass") reads the features once: rows are
processed in blocks that stay in cache, each block giving its logits and its share of
the gradient before the next is read. The standardisation is folded into the weights
(x~ V + c = x (s V) + (c - mu s V)), so the raw cache is read as is, never copied
standardised. Measured on 2 shared CPU cores, 45,000 x 35,328 f32 (ResNet50 k=4's
endpoints, benchmarks/linear_eval.py): 0.71-0.84 s per pass against 0.17-0.21 s for a
plain sum over the same arrays (4-5x one read, 2-2.5x the two reads of a logits pass
then a gradient pass; numpy's BLAS: 2.3 s and more for the same products). The pass is
bound by XLA's dot kernels for 10 classes, not by memory. bfloat16 caches are widened
to float32 one endpoint at a time before solving: XLA's CPU backend converts and
multiplies bf16 several times slower than it reads f32.
"""
import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.evaluation import linear

TOL = 1e-4          # default max |gradient| of the mean objective (scikit-learn's tol)
GAP_RTOL = 1e-5     # default bound on the estimated objective gap / objective (wd > 0)
HISTORY = 10        # L-BFGS memory (pairs)
C1 = 1e-4           # Armijo's sufficient-decrease constant
BLOCK_BYTES = 6 << 20  # rows per block: about this many bytes of f32 features


def block_rows(dim, n):
  """Rows per block of a pass over f32[n, dim] features (at least 16, at most n)."""
  return int(max(16, min(n, BLOCK_BYTES // (4 * max(dim, 1)))))


# ----------------------------------------------------------------------------- objective


def _fold(theta, mean, inv_std):
  """Raw-feature weights (w f32[D, K], b f32[K]) equal to theta on standardised ones."""
  d = theta.shape[0] - 1
  w = theta[:d] * inv_std[:, None]
  return w, theta[d] - mean @ w


def precondition(v, precond, inverse=False, power=1):
  """P^power v (P^-power v when inverse) with P = I + U diag(c) U', U's columns
  orthonormal or zero (P^p = I + U diag((1 + c)^p - 1) U'); v when precond is None."""
  if precond is None:
    return v
  u, c = precond
  if inverse or power != 1:
    c = (1.0 + c) ** (-power if inverse else power) - 1.0
  return v + u @ (c[:, None] * (u.T @ v))


def _orthonormal(b):
  """Orthonormal columns spanning b's (tall): b V diag(s)^-1/2 from the eigenpairs (s,
  V) of the small Gram b'b, twice (one pass leaves an error of order eps cond(b)^2).

  A Householder QR would be a LAPACK call on the tall matrix; on a shared 2-core host
  its threads contend with XLA's and took 0.1-7 s for 6,400 x 144 where these
  matrix products take milliseconds.

  Directions of b's Gram below 1e-6 of its largest eigenvalue (b rank-deficient, e.g.
  features whose dead columns leave z of low rank) become zero columns rather than
  amplified rounding noise: the columns returned are orthonormal or zero.
  """
  for _ in range(2):
    s, v = jnp.linalg.eigh(b.T @ b)
    keep = s > 1e-6 * s[-1]
    b = b @ (v * jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, s, 1.0)), 0.0)[None, :])
  return b


@functools.partial(jax.jit, static_argnames=('rank', 'rows', 'iters'))
def _preconditioner(x, mean, inv_std, *, rank, rows, iters):
  """(U, c, eigenvalues) of `spectral_preconditioner`, in one compiled program.

  Top eigenpairs of the standardised features' covariance from `rows` rows taken at a
  fixed stride: randomised subspace iteration (Halko, Martinsson and Tropp 2011,
  algorithm 4.4) with 16 extra columns, then Rayleigh-Ritz.
  """
  n, d = x.shape
  stride = max(n // rows, 1)
  z = (x[::stride][:rows].astype(jnp.float32) - mean) * inv_std
  # Materialised: fused into the products below as an operand, XLA's CPU backend
  # falls back to a naive dot loop (seconds instead of tens of milliseconds).
  z = jax.lax.optimization_barrier(z)
  m = z.shape[0]
  q = _orthonormal(jax.random.normal(jax.random.PRNGKey(0), (d, min(rank + 16, d, m)),
                                     jnp.float32))
  for _ in range(iters):
    q = _orthonormal(z.T @ (z @ q))
  b = z @ q
  lam, v = jnp.linalg.eigh(b.T @ b / m)
  lam, u = lam[::-1][:rank], (q @ v[:, ::-1])[:, :rank]
  # The top eigenvalues are mapped down to `floor`, never below the mean eigenvalue
  # (trace / D): with sparse features (most ReLUs dead, e.g. VGG's block5) the
  # subsample's r-th eigenvalue can be ~0 while the full data's tail is not, and
  # mapping to ~0 would make the preconditioned problem far worse than the original
  # (measured: L-BFGS stuck at its iteration cap on every L2 point).
  floor = jnp.maximum(lam[-1], jnp.maximum(jnp.sum(z * z) / (m * d), 1e-6 * lam[0]))
  # Directions at or below the floor keep c = 0: with no variance at all (every column
  # constant, then standardised to 0, or all-zero features) floor = lam = 0 and
  # sqrt(floor / lam) would be NaN, making the objective NaN at every point.
  above = lam > floor
  return u, jnp.where(above, jnp.sqrt(floor / jnp.where(above, lam, 1.0)) - 1.0, 0.0), lam


def spectral_preconditioner(x, stats, rank=128, rows=2048, iters=2):
  """(U f32[D, r], c f32[r]) whose P = I + U diag(c) U' flattens the top of the spectrum.

  Standardised CNN features are strongly correlated: the covariance of 6,400-dim pooled
  ResNet features has its top eigenvalue near 10^3 and its 50th near 10 (measured on
  CIFAR-10), so the logistic loss's condition number, lambda_max / wd, costs L-BFGS
  hundreds of iterations. Optimising V' with V = P V' and c_i = sqrt(lam_r / lam_i) - 1
  maps the top-r eigenvalues lam_i to lam_r (the r-th), leaving the optimum V unchanged
  (measured on those features: 417 -> 35 iterations at wd 1e-2, 471 -> 29 at 1e-3).
  Estimated on a row subsample: it only has to be roughly right.

  Args:
    x: [N, D] raw features; stats: (mean, inv_std) or None.
    rank: r (capped at min(D, N) - 1); rows: subsample size; iters: subspace iterations.
  Returns:
    ((U, c) or None when r < 1, eigenvalues f32[r] or None).
  """
  n, d = x.shape
  rank = int(min(rank, d - 1, n - 1))
  if rank < 1:
    return None, None
  mean, inv_std = stats if stats is not None else (np.zeros(d, np.float32),
                                                   np.ones(d, np.float32))
  u, c, lam = _preconditioner(x, mean, inv_std, rank=rank, rows=int(min(rows, n)),
                              iters=iters)
  return (u, c), lam


def objective(x, y, theta, mean, inv_std, wd, *, block, precond=None):
  """Value and gradient of the regularised mean softmax CE in one read of x.

  Args:
    x: f32[N, D] raw features (not standardised).
    y: i32[N] labels in [0, K).
    theta: f32[D + 1, K]: rows 0..D-1 the kernel V on standardised features, row D the
      bias c.
    mean, inv_std: f32[D] standardisation (zeros and ones for none).
    wd: f32 scalar, the L2 coefficient of V.
    block: rows per block (static).
    precond: None, or (U f32[D, r], c f32[r]) of `spectral_preconditioner`: theta's
      kernel rows are then V' with V = P V' (the objective of V' is f(P V'), its
      gradient P grad_V).
  Returns:
    (f32 value, f32[D + 1, K] gradient).
  """
  return _objective(x, y, theta, mean, inv_std, wd, block=block, precond=precond)[:2]


def _objective(x, y, theta, mean, inv_std, wd, *, block, precond=None):
  """`objective`'s (value, gradient in theta's coordinates) and the gradient in the
  original ones, (grad_V, grad_c) on standardised features, before P is applied: the
  stopping rule reads that one as computed, not recovered as P^-1 of the first (whose
  rounding P^-1 multiplies by up to 1 / (1 + c) = sqrt(lam_1 / lam_r))."""
  n, d = x.shape
  k = theta.shape[1]
  block = min(block, n)
  v = precondition(theta[:d], precond)
  w, b = _fold(jnp.concatenate([v, theta[d:]]), mean, inv_std)

  def body(acc, i):
    # The last block is shifted back to end at row n; its rows that an earlier block
    # already read get weight 0 (one block shape: one compiled body).
    start = jnp.minimum(i * block, n - block)
    xb = jax.lax.dynamic_slice_in_dim(x, start, block)
    yb = jax.lax.dynamic_slice_in_dim(y, start, block)
    wt = (start + jnp.arange(block) >= i * block).astype(jnp.float32)
    logits = jnp.einsum('nd,dk->nk', xb, w) + b
    lse = jax.nn.logsumexp(logits, axis=-1)
    ce = lse - jnp.take_along_axis(logits, yb[:, None], axis=-1)[:, 0]
    g = (jnp.exp(logits - lse[:, None]) - jax.nn.one_hot(yb, k, dtype=logits.dtype)
         ) * wt[:, None]
    # 'nk,nd->kd' keeps x's row-major layout: XLA's CPU dot streams it (x^T g copies).
    part = (jnp.sum(ce * wt), jnp.einsum('nk,nd->kd', g, xb), jnp.sum(g, 0))
    return jax.tree.map(jnp.add, acc, part), None

  acc = (jnp.zeros((), jnp.float32), jnp.zeros((k, d), jnp.float32),
         jnp.zeros((k,), jnp.float32))
  (ce, gx, gb), _ = jax.lax.scan(body, acc, jnp.arange(-(-n // block)))
  value = ce / n + 0.5 * wd * jnp.sum(v * v)
  grad_v = inv_std[:, None] * (gx.T - mean[:, None] * gb[None, :]) / n + wd * v
  grad_b = (gb / n)[None]
  return (value, jnp.concatenate([precondition(grad_v, precond), grad_b], 0),
          jnp.concatenate([grad_v, grad_b], 0))


# ----------------------------------------------------------------------------- L-BFGS


def empty_memory(theta, history=HISTORY):
  """An empty L-BFGS memory for parameters shaped like theta.

  Pairs are kept oldest first (index history-1 is the newest); unused slots hold zero
  vectors with rho = 0, which the two-loop recursion passes through unchanged.
  """
  z = jnp.zeros((history,) + theta.shape, theta.dtype)
  return {'s': z, 'y': z, 'rho': jnp.zeros((history,), theta.dtype)}


def _direction(g, mem):
  """-H g, H the L-BFGS inverse-Hessian approximation of the stored pairs.

  The compact form of Byrd, Nocedal and Schnabel (1994, eq. 2.6), equal to the
  two-loop recursion but made of a few matrix products (a handful of kernels to
  compile, not 4m dot products): with S, Y the pairs as rows, R = triu(S Y'),
  D = diag(S Y') and gamma = s'y / y'y of the newest pair,
    H g = gamma g + S' t - gamma Y' a,  a = R^-1 S g,
    t = R^-T ((D + gamma Y Y') a - gamma Y g).
  Unused slots (zero pairs, rho = 0) get R_ii = 1 and drop out.
  """
  m = mem['s'].shape[0]
  s = mem['s'].reshape(m, -1)
  y = mem['y'].reshape(m, -1)
  gf = g.reshape(-1)
  sy = s @ y.T
  yy = y @ y.T
  used = mem['rho'] > 0
  gamma = jnp.where(used[-1], sy[-1, -1] / jnp.where(used[-1], yy[-1, -1], 1.0), 1.0)
  r = jnp.triu(sy) + jnp.diag(jnp.where(used, 0.0, 1.0))
  a = jax.scipy.linalg.solve_triangular(r, s @ gf, lower=False)
  rhs = jnp.diag(sy) * a + gamma * (yy @ a) - gamma * (y @ gf)
  t = jax.scipy.linalg.solve_triangular(r, rhs, lower=False, trans='T')
  return -(gamma * gf + t @ s - gamma * (a @ y)).reshape(g.shape)


def gap_estimate(g, mem, wd, precond=None):
  """1/2 g' H g: an estimate of f - f*, from above, for the stopping rule.

  H is the L-BFGS inverse Hessian of the stored pairs built on H0 = (P^-2 / wd on the
  kernel rows, 1 / wd on the bias row) instead of gamma I: the kernel's Hessian is at
  least wd P^2 in theta's coordinates (the CE part is positive semi-definite), so
  H0 >= Hessian^-1 there, and BFGS updates keep H - Hessian^-1 positive semi-definite
  on a quadratic (H+ - A^-1 = V'(H - A^-1)V with y = A s), whence 1/2 g' H g >=
  1/2 g' A^-1 g, the gap of the quadratic model. Without pairs it is the strong-
  convexity bound |grad|^2 / (2 wd); each pair replaces 1 / wd by the measured
  curvature along it. The bias row has no L2 term: 1 / wd there assumes its
  curvature (that of the class prior's CE) is at least wd.

  The compact form (Byrd, Nocedal and Schnabel 1994, eq. 2.6) with a general H0:
  a = R^-1 S g, t = R^-T ((D + Y H0 Y') a - Y H0 g), H g = H0 g + S' t - (H0 Y)' a.

  Args:
    g: f32[D + 1, K] gradient in theta's coordinates; mem: the L-BFGS memory (pairs in
    the same coordinates); wd: f32 scalar > 0; precond: as `objective`.
  Returns:
    f32 scalar.
  """
  def h0(v):
    return jnp.concatenate([precondition(v[:-1], precond, inverse=True, power=2),
                            v[-1:]]) / wd

  m = mem['s'].shape[0]
  s = mem['s'].reshape(m, -1)
  y = mem['y'].reshape(m, -1)
  hy = jax.vmap(h0)(mem['y']).reshape(m, -1)
  gf = g.reshape(-1)
  hg = h0(g).reshape(-1)
  sy = s @ y.T
  used = mem['rho'] > 0
  r = jnp.triu(sy) + jnp.diag(jnp.where(used, 0.0, 1.0))
  sg = s @ gf
  a = jax.scipy.linalg.solve_triangular(r, sg, lower=False)
  yhg = y @ hg
  rhs = jnp.diag(sy) * a + (y @ hy.T) @ a - yhg
  t = jax.scipy.linalg.solve_triangular(r, rhs, lower=False, trans='T')
  return 0.5 * (gf @ hg + sg @ t - yhg @ a)


def _push(mem, s, y):
  """Appends the pair (s, y) (dropping the oldest) when its curvature s.y is positive."""
  sy = jnp.vdot(s, y)
  ok = sy > 1e-10 * jnp.vdot(y, y)
  new = {'s': jnp.concatenate([mem['s'][1:], s[None]]),
         'y': jnp.concatenate([mem['y'][1:], y[None]]),
         'rho': jnp.concatenate([mem['rho'][1:], (1.0 / jnp.where(ok, sy, 1.0))[None]])}
  return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, mem)


@jax.jit
def shift_memory(mem, dwd, precond=None):
  """The memory of the same pairs for an L2 coefficient larger by dwd.

  The CE part of the objective does not depend on wd, so a gradient difference y for
  wd becomes y + dwd * P^2 s (kernel rows; P = I without preconditioner) for wd + dwd:
  curvature learned along the L2 path carries over exactly. A pair whose curvature is
  no longer positive is zeroed.
  """
  d = mem['s'].shape[1] - 1
  pp = jax.vmap(lambda s: precondition(precondition(s[:d], precond), precond))(mem['s'])
  y = mem['y'] + dwd * jnp.concatenate([pp, jnp.zeros_like(mem['s'][:, d:])], 1)
  sy = jnp.einsum('m...,m...->m', mem['s'], y)
  yy = jnp.einsum('m...,m...->m', y, y)
  ok = (sy > 1e-10 * yy) & (mem['rho'] > 0)
  keep = lambda a: a * ok.reshape((-1,) + (1,) * (a.ndim - 1))
  return {'s': keep(mem['s']), 'y': keep(y),
          'rho': jnp.where(ok, 1.0 / jnp.where(ok, sy, 1.0), 0.0)}


STATUS = ('converged', 'iteration cap', 'line search failed', 'non-finite objective')


@functools.partial(jax.jit, static_argnames=('max_iters', 'block', 'max_ls'))
def _lbfgs(x, y, mean, inv_std, wd, theta, mem, tol, gap_rtol, precond, *, max_iters,
           block, max_ls=20):
  """Minimises `objective` from theta with L-BFGS and a backtracking line search.

  The search tries the unit step (the first iteration without curvature: a step of
  unit length), accepts on Armijo's or the approximate Wolfe condition (Hager and Zhang
  2005: Armijo's on a quadratic model, read off the slope, which float32 still resolves
  where the value's decrease is below its rounding), else shrinks by quadratic
  interpolation, at most max_ls times.

  Stops when converged: max |grad| <= tol (scikit-learn's criterion) AND, for wd > 0,
  `gap_estimate` <= gap_rtol * f (the gradient read in the original coordinates, i.e.
  on standardised features, not theta's preconditioned ones). The gradient test alone
  is not sound at small wd: on rank-deficient, near-separable features max |grad| =
  1e-4 left relative gaps of 1e-3 - 1e-2 (issue 17), the flat directions' curvature
  being only wd. wd = 0 has no bound: the gradient test alone. Else stops after
  max_iters accepted steps, when a search fails, or at once when the objective at the
  start is not finite.

  One loop trip = one objective evaluation (a small state machine: the first trip
  evaluates the start, the others a trial step), so the objective, the costly part to
  compile, appears once in the program.

  Returns:
    (theta, memory, info dict: value, grad_max, gap (the last `gap_estimate`, inf
    before it is computed, for wd = 0 and until max |grad| <= tol), iters, evals
    (objective passes), converged, status (index into STATUS), values f32[max_iters +
    1]: the objective at the start and after each iteration, NaN past iters).
  """
  fg = lambda t: _objective(x, y, t, mean, inv_std, wd, block=block, precond=precond)
  zero = jnp.zeros_like(theta)
  inf = jnp.float32(jnp.inf)

  def next_direction(g, mem):
    d = _direction(g, mem)
    gd = jnp.vdot(g, d)
    descent = gd < 0  # else a stale memory: restart from steepest descent
    mem = jax.tree.map(lambda a: jnp.where(descent, a, jnp.zeros_like(a)), mem)
    d = jnp.where(descent, d, -g)
    gd = jnp.where(descent, gd, -jnp.vdot(g, g))
    t = jnp.where(descent & (mem['rho'][-1] > 0), 1.0,
                  jnp.minimum(1.0, 1.0 / jnp.sqrt(jnp.vdot(g, g))))
    return d, gd, t, mem

  def body(c):
    trial = c['theta'] + c['t'] * c['d']
    fn, gn, gon = fg(trial)
    first = c['evals'] == 0
    armijo = fn <= c['f'] + C1 * c['t'] * c['gd']
    approx = (fn <= c['f'] + 1e-6 * jnp.abs(c['f'])) & (
        jnp.vdot(gn, c['d']) <= (2 * C1 - 1) * c['gd'])
    accept = first | (jnp.isfinite(fn) & (armijo | approx))
    mem = jax.tree.map(lambda a, b: jnp.where(accept & ~first, a, b),
                       _push(c['mem'], c['t'] * c['d'], gn - c['g']), c['mem'])
    theta = jnp.where(accept, trial, c['theta'])
    f = jnp.where(accept, fn, c['f'])
    g = jnp.where(accept, gn, c['g'])
    d, gd, t_new, mem_d = next_direction(g, mem)
    # Rejected: the minimiser of the quadratic through f, gd at 0 and fn at t, kept in
    # [t/10, t/2] (t/10 when fn is not finite).
    t = c['t']
    q = -c['gd'] * t * t / (2.0 * (fn - c['f'] - c['gd'] * t))
    shrunk = jnp.where(jnp.isfinite(q), jnp.clip(q, 0.1 * t, 0.5 * t), 0.1 * t)
    searches = jnp.where(accept, 0, c['searches'] + 1)
    it = c['it'] + (accept & ~first)
    values = jnp.where(accept, c['values'].at[it].set(f), c['values'])
    gmax = jnp.where(accept, jnp.max(jnp.abs(gon)), c['gmax'])
    # The gap estimate only where it decides (max |grad| <= tol), with the memory
    # that includes the newest pair.
    gap = jax.lax.cond(accept & (gmax <= tol) & (wd > 0),
                       lambda: gap_estimate(g, mem, wd, precond), lambda: inf)
    gap = jnp.where(accept, gap, c['gap'])
    converged = (gmax <= tol) & ((wd <= 0) | (gap <= gap_rtol * jnp.abs(f)))
    status = jnp.where(converged, 0, jnp.where(
        first & ~jnp.isfinite(fn), 3, jnp.where(searches >= max_ls, 2, jnp.where(
            it >= max_iters, 1, -1))))
    return {'theta': theta, 'f': f, 'g': g, 'mem': mem_d,
            'd': jnp.where(accept, d, c['d']), 'gd': jnp.where(accept, gd, c['gd']),
            't': jnp.where(accept, t_new, shrunk), 'searches': searches, 'it': it,
            'evals': c['evals'] + 1, 'gmax': gmax, 'gap': gap, 'status': status,
            'values': values}

  c = jax.lax.while_loop(lambda c: c['status'] < 0, body, {
      'theta': theta, 'f': jnp.float32(0), 'g': zero, 'mem': mem, 'd': zero,
      'gd': jnp.float32(0), 't': jnp.float32(0), 'searches': jnp.int32(0),
      'it': jnp.int32(0), 'evals': jnp.int32(0), 'gmax': inf, 'gap': inf,
      'status': jnp.int32(-1),
      'values': jnp.full((max_iters + 1,), jnp.nan, jnp.float32)})
  info = {'value': c['f'], 'grad_max': c['gmax'], 'gap': c['gap'], 'iters': c['it'],
          'evals': c['evals'], 'converged': c['status'] == 0, 'status': c['status'],
          'values': c['values']}
  return c['theta'], c['mem'], info


@jax.jit
def _original(theta, precond):
  """theta in the original coordinates: kernel rows P V', the bias row as is."""
  return jnp.concatenate([precondition(theta[:-1], precond), theta[-1:]])


@jax.jit
def _column_summary(x):
  """(non-finite count i32[D], min f32[D], max f32[D]) per column in one blocked read
  (as `linear._stats`: XLA's CPU column reductions over all rows at once are slow)."""
  n, d = x.shape
  b = min(256, n)

  def body(acc, i):
    start = jnp.minimum(i * b, n - b)  # the last block ends at n; rows seen get weight 0
    xb = jax.lax.dynamic_slice_in_dim(x, start, b).astype(jnp.float32)
    new = (start + jnp.arange(b) >= i * b)[:, None]
    bad = ~jnp.isfinite(xb) & new
    return (acc[0] + jnp.sum(bad, 0, dtype=jnp.int32),
            jnp.minimum(acc[1], jnp.min(jnp.where(new, xb, jnp.inf), 0)),
            jnp.maximum(acc[2], jnp.max(jnp.where(new, xb, -jnp.inf), 0))), None

  acc = (jnp.zeros((d,), jnp.int32), jnp.full((d,), jnp.inf), jnp.full((d,), -jnp.inf))
  return jax.lax.scan(body, acc, jnp.arange(-(-n // b)))[0]


def _nonfinite_error(bad, name, split):
  """The one-line ValueError for non-finite features, or None (bad: int[D] counts)."""
  if not bad.any():
    return None
  cols = np.flatnonzero(bad)
  total = int(bad.sum())
  return ValueError(
      f'endpoint {name!r}: the {split} features have {total} non-finite value'
      f'{"s" * (total > 1)} (NaN or inf) in {len(cols)} of {len(bad)} columns (first: '
      f'column {cols[0]}): a diverged or broken trunk? The probes need finite features')


def check_features(x, *, name='features', split='train', stats=None, val=None):
  """Checks one endpoint's cached features before a probe is fitted on them.

  Non-finite features (NaN or inf: a diverged or broken trunk) are an error: the
  solvers would otherwise return a chance-level head after 0 iterations with no
  message. Constant columns (dead units; every column for a collapsed or dead trunk)
  are legitimate input, the probe is well defined on them (all constant: the class
  prior, through the bias), but worth a warning: they are counted, and the warning is
  logged and returned.

  Args:
    x: f32/bf16[N, D] the train features; name: the endpoint, for the messages; split:
      x's split, for the messages.
    stats: (mean, inv_std) of the standardisation, or None; with it, the columns that
      standardisation zeroes (inv_std == 0: constant or varying by less than
      `linear.inverse_std`'s floor) are counted too.
    val: optional f32/bf16[M, D] held-out features, checked for non-finite values only.
  Returns:
    {'columns': D, 'constant_columns': columns with max == min on x, 'zeroed_columns':
    columns standardisation zeroes (None without stats), 'warnings': [str]}.
  Raises:
    ValueError: (one line, naming the endpoint and the split) x or val has a NaN or inf.
  """
  summary = jax.device_get(_column_summary(x))
  err = _nonfinite_error(summary[0], name, split)
  if err is None and val is not None:
    err = _nonfinite_error(jax.device_get(_column_summary(val)[0]), name, 'val')
  if err is not None:
    raise err
  return _constant_checks(summary, name, split, stats)


def _constant_checks(summary, name, split, stats):
  """`check_features`'s result from a finite `_column_summary`; logs the warnings."""
  _, lo, hi = summary
  d = int(lo.shape[0])
  const = int(np.sum(lo == hi))
  zeroed = None if stats is None else int(np.sum(np.asarray(stats[1]) == 0))
  warnings = []
  if const == d:
    warnings.append(f'endpoint {name!r}: all {d} feature columns are constant on the '
                    f'{split} split (a dead or collapsed trunk?): the probe can only learn '
                    'the class prior')
  elif const:
    warnings.append(f'endpoint {name!r}: {const} of {d} feature columns are constant on '
                    f'the {split} split (dead units)' +
                    ('; standardisation zeroes them' if stats is not None else ''))
  if zeroed is not None and const < d and zeroed > const:
    warnings.append(f'endpoint {name!r}: {zeroed - const} of {d} feature columns vary '
                    f'by less than 1e-3 of the mean std on the {split} split; '
                    'standardisation zeroes them')
  for w in warnings:
    logging.warning('%s', w)
  return {'columns': d, 'constant_columns': const, 'zeroed_columns': zeroed,
          'warnings': warnings}


def fit_path(x, y, wds, *, num_classes, stats=None, tol=TOL, gap_rtol=GAP_RTOL,
             max_iters=500, history=HISTORY, block=None, precond_rank=128, log_fn=None,
             name='features', checks=True):
  """L-BFGS logistic regression for every wd, walked from the largest down.

  Args:
    x: f32/bf16[N, D] raw features (on device); y: int[N] labels in [0, num_classes).
    wds: L2 coefficients (per example, as `weight_decays`); any order, >= 0.
    num_classes: K.
    stats: (mean f32[D], inv_std f32[D]) standardisation, or None.
    tol: max |gradient| of the mean objective for convergence (scikit-learn's tol).
    gap_rtol: and, for wd > 0, `gap_estimate` <= gap_rtol * objective (see `_lbfgs`).
    max_iters: iteration cap of each grid point.
    history: L-BFGS memory; block: rows per block (default `block_rows`).
    precond_rank: rank of the `spectral_preconditioner` (0: none).
    log_fn: optional callback(dict) after each grid point.
    name: the endpoint, for messages; checks: run `check_features` on x first (False:
      the caller did).
  Returns:
    (thetas f32[G, D + 1, K] in the order of wds, list of G info dicts: weight_decay,
    value (the final objective), grad_max (max |gradient| on standardised features),
    gap_estimate (`gap_estimate` at the end, an estimate of value - optimum from above;
    None where never computed: wd = 0, or max |grad| > tol), iters, evals (objective
    passes, the start's included), converged, status (one of STATUS), stalled (status
    'line search failed'), warning (None, or a line saying why the point did not
    converge), seconds (wall, the first point's compilation included), values (the
    objective at the start and after each iteration), precond_seconds (the endpoint's
    preconditioner, shared by its points)).
  Raises:
    ValueError: a negative or non-finite wd, gap_rtol <= 0, non-finite features.
  """
  wds = [float(w) for w in wds]
  if any(w < 0 or not np.isfinite(w) for w in wds):
    raise ValueError(f'weight_decays={wds}: every L2 coefficient must be finite and >= 0')
  if not gap_rtol > 0:
    raise ValueError(f'gap_rtol={gap_rtol!r} must be > 0')
  if checks:
    check_features(x, name=name, stats=stats)
  if x.dtype != jnp.float32:
    x = x.astype(jnp.float32)  # One endpoint at a time (see the module docstring).
  n, d = x.shape
  y = jnp.asarray(y, jnp.int32)
  mean, inv_std = stats if stats is not None else (np.zeros(d, np.float32),
                                                   np.ones(d, np.float32))
  block = block or block_rows(d, n)
  t = time.perf_counter()
  precond = spectral_preconditioner(x, stats, precond_rank)[0] if precond_rank else None
  jax.block_until_ready(precond)
  precond_s = time.perf_counter() - t
  theta = jnp.zeros((d + 1, num_classes), jnp.float32)  # the convex problem's usual start
  mem = empty_memory(theta, history)
  thetas, infos = [None] * len(wds), [None] * len(wds)
  prev = None
  for i in sorted(range(len(wds)), key=lambda j: -wds[j]):
    if prev is not None:
      mem = shift_memory(mem, jnp.float32(wds[i] - prev), precond)
    t = time.perf_counter()
    theta, mem, info = _lbfgs(x, y, mean, inv_std, jnp.float32(wds[i]), theta, mem,
                              jnp.float32(tol), jnp.float32(gap_rtol), precond,
                              max_iters=int(max_iters), block=block)
    info = jax.device_get(info)
    status = STATUS[int(info['status'])]
    gap = float(info['gap'])
    infos[i] = {'weight_decay': wds[i], 'value': float(info['value']),
                'grad_max': float(info['grad_max']),
                'gap_estimate': gap if np.isfinite(gap) else None,
                'iters': int(info['iters']), 'evals': int(info['evals']),
                'converged': bool(info['converged']), 'status': status,
                'stalled': status == 'line search failed',
                'warning': None if info['converged'] else _unconverged(
                    name, wds[i], status, info, tol, gap_rtol),
                'seconds': time.perf_counter() - t,
                'values': [float(v) for v in info['values'][:int(info['iters']) + 1]],
                'precond_seconds': precond_s}
    if infos[i]['warning']:
      logging.warning('%s', infos[i]['warning'])
    thetas[i] = _original(theta, precond)
    prev = wds[i]
    if log_fn is not None:
      log_fn(infos[i])
  return jnp.stack(thetas), infos


def _unconverged(name, wd, status, info, tol, gap_rtol):
  """The warning line of an L2 point that did not converge."""
  f, gap = float(info['value']), float(info['gap'])
  rel = (f'{gap / abs(f):.1e}' if np.isfinite(gap) and f else 'not computed')
  return (f'endpoint {name!r}: L2 point wd={wd:g} NOT converged ({status}) after '
          f'{int(info["iters"])} iterations: max |grad| {float(info["grad_max"]):.1e} '
          f'(tol {tol:g}), gap estimate / objective {rel} (gap_rtol {gap_rtol:g})')


def _summary(checks, infos):
  """An endpoint's `solver_checks` entry: its feature checks and unconverged points."""
  unconverged = [{k: i[k] for k in ('weight_decay', 'status', 'iters', 'grad_max',
                                    'gap_estimate')} for i in infos if not i['converged']]
  return dict(checks, unconverged=unconverged, warnings=list(checks['warnings']) + [
      i['warning'] for i in infos if i.get('warning')])


def train_lbfgs(train_feats, train_labels, val_feats, val_labels, *, num_classes, cfg,
                val_mask=None, iters=500, log_fn=None, gap_rtol=GAP_RTOL):
  """L-BFGS logistic regression per endpoint; wd chosen on validation top-1.

  Args:
    train_feats: {endpoint: f32/bf16[N, D]} (one view); train_labels: int[N].
    val_feats, val_labels, val_mask: the held-out split (as `linear.train_cached`).
    num_classes: K.
    cfg: train config: weight_decays (the L2 grid), standardize, tol (max |gradient|),
      precond_rank, eval_batch_size; the SGD keys are ignored.
    iters: iteration cap of each grid point (config.eval.lbfgs_iters).
    log_fn: optional callback(endpoint, info dict) after each grid point.
    gap_rtol: the second convergence test (`fit_path`).
  Returns:
    as `linear.train_cached`; selected[endpoint]['epoch'] is the chosen grid point's
    iteration count, epochs_trained the largest count of any point, stopped_early True
    when every point converged, `solver_info` {endpoint: [info per grid point, as
    `fit_path`]}, and `solver_checks` {endpoint: {columns, constant_columns,
    zeroed_columns, unconverged: [{weight_decay, status, iters, grad_max,
    gap_estimate}], warnings: [str]}} (`check_features`; one warning line per
    unconverged point too).
  Raises:
    ValueError: labels and rows disagree; an endpoint's train or val features hold a
    NaN or inf (the message names it).
  """
  cfg = linear.make_config(cfg, base_lrs=(0.0,))
  t0 = time.perf_counter()
  y = jnp.asarray(train_labels, jnp.int32)
  rows = linear._num_rows(train_feats)  # pylint: disable=protected-access
  if int(y.shape[0]) != rows:
    raise ValueError(f'train features have {rows} rows and {y.shape[0]} labels; the '
                     'lbfgs solver fits one view')
  stats, checks = _check_all(train_feats, val_feats, cfg)
  params, infos, summaries = {}, {}, {}
  for name in sorted(train_feats):
    cb = None if log_fn is None else functools.partial(log_fn, name)
    thetas, infos[name] = fit_path(
        train_feats[name], y, cfg['weight_decays'], num_classes=num_classes,
        stats=None if stats is None else stats[name], tol=cfg['tol'], gap_rtol=gap_rtol,
        max_iters=iters, precond_rank=int(cfg['precond_rank']), log_fn=cb, name=name,
        checks=False)
    params[name] = {'kernel': thetas[:, :-1], 'bias': thetas[:, -1]}
    summaries[name] = _summary(checks[name], infos[name])
  epochs = {n: np.array([i['iters'] for i in v]) for n, v in infos.items()}
  res = _finish(params, val_feats, val_labels, val_mask, stats, cfg, epochs, t0)
  res['epochs_trained'] = int(max(e.max() for e in epochs.values()))
  res['stopped_early'] = all(i['converged'] for v in infos.values() for i in v)
  res['solver_info'] = infos
  res['solver_checks'] = summaries
  return res


def _check_all(train_feats, val_feats, cfg):
  """(standardisation stats or None, {endpoint: `check_features`}) of every endpoint,
  one read of each: non-finite values raise before any statistic is computed."""
  summaries = {}
  for name in sorted(train_feats):
    summaries[name] = jax.device_get(_column_summary(train_feats[name]))
    err = _nonfinite_error(summaries[name][0], name, 'train')
    if err is None and name in val_feats:
      err = _nonfinite_error(jax.device_get(_column_summary(val_feats[name])[0]), name,
                             'val')
    if err is not None:
      raise err
  stats = linear.feature_stats(train_feats) if cfg['standardize'] else None
  return stats, {n: _constant_checks(summaries[n], n, 'train',
                                     None if stats is None else stats[n])
                 for n in sorted(train_feats)}


# ----------------------------------------------------------------------------- ridge


@jax.jit
def _ridge_path(x, y, l2s):
  """Ridge weights [L, D+1, K] for every l2 (a ones column appended for the bias).

  One eigendecomposition for the whole path, of the smaller Gram matrix: X'X (D+1
  square, primal) when N > D, else XX' (N square, dual: W = X'U diag(1/(s+l)) U'Y).
  """
  x = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], 1)
  n, d = x.shape
  if d < n:
    s, v = jnp.linalg.eigh(x.T @ x)
    proj = v.T @ (x.T @ y)
    return jax.vmap(lambda l: v @ (proj / (jnp.maximum(s, 0) + l)[:, None]))(l2s)
  s, u = jnp.linalg.eigh(x @ x.T)
  uy = u.T @ y
  return jax.vmap(lambda l: x.T @ (u @ (uy / (jnp.maximum(s, 0) + l)[:, None])))(l2s)


def train_ridge(train_feats, train_labels, val_feats, val_labels, *, num_classes, cfg,
                val_mask=None):
  """Closed-form ridge per endpoint; L2 (cfg.weight_decays, scaled by N) chosen on val.

  Returns as `train_lbfgs` (`solver_checks` without unconverged points); raises the
  same ValueError on non-finite features.
  """
  cfg = linear.make_config(cfg, base_lrs=(0.0,))
  t0 = time.perf_counter()
  n = int(np.asarray(train_labels).shape[0])
  stats, checks = _check_all(train_feats, val_feats, cfg)
  # wd is per-example (as in the mean CE loss): the sum-of-squares objective needs n*wd.
  l2s = jnp.asarray([max(w, 1e-6) * n for w in cfg['weight_decays']], jnp.float32)
  y = 2.0 * jax.nn.one_hot(jnp.asarray(train_labels), num_classes) - 1.0
  params = {}
  for name in sorted(train_feats):
    st = None if stats is None else stats[name]
    x = linear._standardize(train_feats[name], st)  # pylint: disable=protected-access
    w = _ridge_path(x, y, l2s)
    params[name] = {'kernel': w[:, :-1, :], 'bias': w[:, -1, :]}
    del x
  res = _finish(params, val_feats, val_labels, val_mask, stats, cfg, 0, t0)
  res['solver_checks'] = {k: _summary(c, []) for k, c in checks.items()}
  return res


def _finish(params, val_feats, val_labels, val_mask, stats, cfg, epochs, t0):
  """Scores every grid point on val and selects, as linear.train_cached does.

  epochs: an int for every point, or {endpoint: int[G]} (L-BFGS iterations).
  """
  metrics, _ = linear.evaluate_cached(
      params, {k: val_feats[k] for k in params}, jnp.asarray(val_labels, jnp.int32),
      val_mask, stats, kind='linear', batch_size=cfg['eval_batch_size'])
  sel = linear._selection_init(params)  # pylint: disable=protected-access
  sel, _ = linear._selection_update(  # pylint: disable=protected-access
      sel, metrics, params, 0)
  for name in params:
    sel['epoch'][name] = np.asarray(epochs[name] if isinstance(epochs, dict) else
                                    np.full(len(sel['epoch'][name]), epochs), np.int64)
  seconds = time.perf_counter() - t0
  return {'selected': linear.select(sel, cfg), 'epochs_trained': (
              epochs if not isinstance(epochs, dict) else 0),
          'stopped_early': False, 'seconds': seconds, 'seconds_per_epoch': None,
          'chunk_seconds': [], 'stats': stats, 'history': [], 'config': cfg}
