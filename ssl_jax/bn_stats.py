"""Population BatchNorm statistics ("precise BN"): the one implementation the engine's
pretext evaluation and the linear evaluation's BN re-estimation share. No TensorFlow.

Flax's BatchNorm exposes a batch's statistics only through its moving-average update
    new = m * old + (1 - m) * batch_statistic,
so a train-mode forward pass is run twice, once with every moving average filled with 0
and once with 1: their difference is the layer's momentum m, and batch = new0 / (1 - m).
This works for any momentum and any BatchNorm layer, with no change to the models.

`moments(update_fn, batch_stats)` -> E[x] ('mean' leaves) and E[x^2] ('var' leaves) of
every BN layer's input on one batch; `population(moments_list)` -> mean and (biased)
variance over every example of equal-size batches (the law of total variance: the mean
of the per-batch variances plus the variance of the per-batch means): the statistics a
converged moving average approaches for fixed weights.
"""
import flax
import jax
import jax.numpy as jnp


def moments(update_fn, batch_stats):
  """E[x] and E[x^2] of every BN layer's input in one train-mode pass.

  Args:
    update_fn: filled batch_stats tree -> the batch_stats tree after one train-mode
      forward pass (a BatchNorm layer's update from the filled values; traceable).
    batch_stats: a tree like update_fn's argument (its leaves give shapes and dtypes).
  Returns:
    a tree like batch_stats with E[x] in the 'mean' leaves and E[x^2] in the 'var' leaves
    (per channel, over the examples and positions of the batch this pass normalised).
  """
  def run(fill):
    return update_fn(jax.tree.map(lambda x: jnp.full_like(x, fill), batch_stats))

  new0, new1 = run(0.0), run(1.0)
  stats = flax.traverse_util.flatten_dict(
      jax.tree.map(lambda a, b: a / (1.0 - (b - a)), new0, new1))
  out = {path: value + stats[path[:-1] + ('mean',)] ** 2 if path[-1] == 'var' else value
         for path, value in stats.items()}
  return flax.traverse_util.unflatten_dict(out)


def population(moment_trees):
  """Mean and variance over equal-size batches from their `moments` trees.

  Args:
    moment_trees: non-empty sequence of trees from `moments` (same structure).
  Returns:
    a tree like them: 'mean' = E[x], 'var' = max(E[x^2] - E[x]^2, 0) over all batches.
  Raises:
    ValueError for an empty sequence.
  """
  moment_trees = list(moment_trees)
  if not moment_trees:
    raise ValueError('population BN statistics need at least one batch')
  total = moment_trees[0]
  for m in moment_trees[1:]:
    total = jax.tree.map(jnp.add, total, m)
  flat = flax.traverse_util.flatten_dict(
      jax.tree.map(lambda t: t / len(moment_trees), total))
  out = {path: jnp.maximum(value - flat[path[:-1] + ('mean',)] ** 2, 0.0)
         if path[-1] == 'var' else value for path, value in flat.items()}
  return flax.traverse_util.unflatten_dict(out)
