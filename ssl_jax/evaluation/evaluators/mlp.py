"""`mlp`: an MLP head (the study's section 7.2) on cached features, trained with SGD.

Settings (config.evals.<name>; the standard instance `mlp` is also config.mlp):
  endpoints     comma-separated endpoints (default 'pre_logits').
  train         overrides of config.train for the MLP (head='mlp', its epochs, lrs, ...).
  label_counts, train_level   as the probe's (`probe.py`).
Rows and details as the probe's (cached mode, solver 'sgd', whatever config.eval.mode).
"""
from ssl_jax.evaluation import evaluators
from ssl_jax.evaluation import linear
from ssl_jax.evaluation.evaluators import probe


@evaluators.register('mlp')
class Mlp(probe.Probe):
  rank = 20

  def training(self, settings):
    overrides = settings.get('train', None)
    overrides = {} if overrides is None else overrides.to_dict()
    overrides.setdefault('head', 'mlp')
    return 'sgd', 'cached', dict(linear.make_config(self.job('train'), **overrides))

  def default_endpoints(self):
    return 'pre_logits'
