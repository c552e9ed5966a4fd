"""`knn`: weighted k-nearest-neighbour classification on cached features (`knn.py`).

Settings (config.evals.<name>; the standard instance `knn` is also config.knn):
  presets     knn.PRESETS names ('k20_t0.07': solo-learn's k=20, T=0.07; 'k200_t0.1':
              VISSL's k=200, sigma=0.1).
  endpoints   comma-separated endpoints (default 'pre_logits').
The bank is the train split's view-0 features (every train example the evaluation uses),
the queries the val and test splits (test when the cache has it). No hyper-parameter is
chosen, so val numbers are as honest as test ones (the training monitor reports val).
Rows: top1 (top5 with > 5 classes) and top1@<level> per preset (the variant); details
results[<name>][preset][endpoint] as before.
"""
import time

import numpy as np

from ssl_jax.evaluation import evaluators
from ssl_jax.evaluation import knn as knn_lib
from ssl_jax.evaluation import labels as labels_lib


@evaluators.register('knn')
class Knn(evaluators.Evaluator):
  rank = 30

  def __init__(self, name, settings, config):
    super().__init__(name, settings, config)
    self.presets = tuple(settings.get('presets', ('k20_t0.07',)))
    self.spec = settings.get('endpoints', 'pre_logits')
    for p in self.presets:
      if p not in knn_lib.PRESETS:
        raise ValueError(f'config.{self.key("presets")}: {p!r} is not allowed; allowed: '
                         f'{sorted(knn_lib.PRESETS)}')

  def endpoints(self, available):
    return evaluators.endpoint_list(self.spec, available, self.key('endpoints'))

  def run(self, ctx, cache):
    t = time.perf_counter()
    _, levels = evaluators.train_levels(ctx, labels_lib.FINE)
    bank_x, bank_y = cache.split('train')
    splits = [('val', cache.val, cache.val_labels)]
    if cache.test is not None:
      splits.append(('test', cache.test, cache.test_labels))
    for name in [n for n in self.endpoints(cache.endpoints) if n in cache.endpoints]:
      bank = bank_x[name].astype(np.float32)
      for preset in self.presets:
        k, temp = knn_lib.PRESETS[preset]
        scored = {}
        for split, qx, qy in splits:
          votes = knn_lib.knn_votes(bank, bank_y, qx[name].astype(np.float32),
                                    num_classes=ctx.num_classes, k=k, temperature=temp)
          scored[split] = labels_lib.score(votes, qy, levels)
          for r in evaluators.score_rows(name, votes, qy, levels, split=split,
                                         variant=preset, note=f'k={k}, T={temp:g}', k=k,
                                         temperature=temp, bank=int(len(bank_y))):
            if split == 'test':
              r['detail'] = (preset, name)
            yield r
        if 'test' in scored:
          test, val = scored['test'], scored['val']
          yield (preset, name), {
              'top1': test['top1'], 'top5': test.get('top5', test['top1']), 'split': 'test',
              'count': test['count'], 'val_top1': val['top1'], 'k': k, 'temperature': temp}
    ctx.timing[f'{self.name}_s'] = ctx.timing.get(f'{self.name}_s', 0.0) + (
        time.perf_counter() - t)
