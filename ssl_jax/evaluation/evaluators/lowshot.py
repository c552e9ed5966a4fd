"""`lowshot`: k labelled examples per class, ridge classifier, L2 by leave-one-out CV
inside each sample (`lowshot.py`, big_vision's few-shot recipe).

Settings (config.evals.<name>; the standard instance `lowshot` is also config.lowshot):
  shots     k values; samples: draws per k; endpoints (default 'pre_logits').
Rows per endpoint and k (variant '<k>-shot'): test top1 and top5 (> 5 classes), the mean
over the samples (their std in `top1_std`); details results[<name>][endpoint] as before.
"""
import time

import numpy as np

from ssl_jax.evaluation import evaluators
from ssl_jax.evaluation import lowshot as lowshot_lib


@evaluators.register('lowshot')
class LowShot(evaluators.Evaluator):
  rank = 40

  def __init__(self, name, settings, config):
    super().__init__(name, settings, config)
    self.shots = tuple(settings.get('shots', lowshot_lib.DEFAULT_SHOTS))
    self.samples = settings.get('samples', 5)
    self.spec = settings.get('endpoints', 'pre_logits')
    for i, k in enumerate(self.shots):
      if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f'config.{self.key("shots")}[{i}]={k!r} must be an integer >= 1')
    if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
      raise ValueError(f'config.{self.key("samples")}={self.samples!r} must be an '
                       'integer >= 1')

  def endpoints(self, available):
    return evaluators.endpoint_list(self.spec, available, self.key('endpoints'))

  def run(self, ctx, cache):
    if cache.test is None:  # (it scores the test split only)
      return
    bank_x, bank_y = cache.split('train')
    for name in [n for n in self.endpoints(cache.endpoints) if n in cache.endpoints]:
      t = time.perf_counter()
      res = lowshot_lib.evaluate(bank_x[name].astype(np.float32), bank_y,
                                 cache.test[name].astype(np.float32), cache.test_labels,
                                 num_classes=ctx.num_classes, shots=self.shots,
                                 samples=self.samples, seed=ctx.seed)
      for k, r in res.items():
        settings = dict(shots=k, samples=self.samples, top1_std=r['top1_std'],
                        n_train=r['n_train'])
        note = f"+-{100 * r['top1_std']:.1f} over {self.samples}"
        yield evaluators.row(name, 'top1', r['top1_mean'], variant=f'{k}-shot',
                             count=len(cache.test_labels), note=note, **settings)
        if ctx.num_classes > 5:
          yield evaluators.row(name, 'top5', r['top5_mean'], variant=f'{k}-shot',
                               count=len(cache.test_labels), note=note, **settings)
      yield name, {'split': 'test',
                   'selection': 'leave-one-out CV inside each low-shot sample',
                   'shots': {str(k): v for k, v in res.items()}}
      ctx.timing[f'{self.name}_s'] = ctx.timing.get(f'{self.name}_s', 0.0) + (
          time.perf_counter() - t)
