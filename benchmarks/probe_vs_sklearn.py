r"""Check: the default cached probe (L-BFGS) against scikit-learn on real trunk features.

  python benchmarks/probe_vs_sklearn.py --pretrained WORKDIR            # a pretext run
  python benchmarks/probe_vs_sklearn.py --pretrained ''                 # a random trunk
  python benchmarks/probe_vs_sklearn.py --pretrained W --preset cifar10 --endpoints pre_logits

For every endpoint of the trunk, the features of the linear evaluation
(configs/linear_eval.py:PRESET, its splits, pooling and train-size cap) are extracted once,
then two probes are fitted on them and scored on the test split:
  ours     `solvers.train_lbfgs`, exactly as the linear evaluation runs it (standardised
           features, the preset's L2 grid walked one point at a time, chosen on `val`);
  sklearn  `LogisticRegression` (L-BFGS, multinomial) on `StandardScaler` features, with
           C = 1 / (N * wd) for every wd of the same grid (the same optimum as ours; no
           penalty for wd = 0), tol
           1e-6, max_iter 5,000, the wd chosen on `val` alike.
Prints per endpoint: the chosen wd and test top-1 of both, the difference in points, and
each one's seconds (extraction excluded), then the device. The issue's bar: ours within
1 point of scikit-learn on every endpoint. scikit-learn is a test-only dependency
(`pip install -e '.[test]'`).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--pretrained', required=True, help="pretext workdir; '' = random")
  parser.add_argument('--preset', default='cifar10_cpu')
  parser.add_argument('--endpoints', default='', help='comma-separated; default: all')
  parser.add_argument('--max_iter', type=int, default=5000)
  args = parser.parse_args(argv)

  from configs import linear_eval as le_configs  # pylint: disable=g-import-not-at-top
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  from ssl_jax.evaluation import linear  # pylint: disable=g-import-not-at-top
  from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
  from ssl_jax.evaluation import solvers  # pylint: disable=g-import-not-at-top

  config = le_configs.get_config(args.preset)
  config.pretrained = args.pretrained
  trunk, source, _ = linear_eval.trunk_and_source(config)
  e = config.eval
  names = (args.endpoints.split(',') if args.endpoints else list(trunk['endpoints']))
  # The evaluation's own feature cache (pooling, split sizes, BN statistics).
  t = time.perf_counter()
  with config.unlocked():
    config.eval.cache_dtype = 'float32'
  cache = linear_eval.cache(config, trunk, source, names)
  data = {split: cache.split(split) for split in ('train', 'val', 'test')}
  print(f'trunk {trunk["name"]} ({trunk["task"]}): features of '
        f'{sum(len(d[1]) for d in data.values())} images in {time.perf_counter() - t:.1f} s; '
        f'splits train {len(data["train"][1])}, val {len(data["val"][1])}, '
        f'test {len(data["test"][1])}')
  (xtr, ytr), (xva, yva), (xte, yte) = data['train'], data['val'], data['test']
  wds = tuple(config.train.weight_decays)
  num_classes = config.data.num_classes
  print(f'L2 grid {wds}\n')
  print(f'{"endpoint":12s} {"dims":>6s} {"ours wd":>8s} {"ours":>6s} {"s":>6s} '
        f'{"sk wd":>8s} {"sklearn":>7s} {"s":>6s} {"diff":>6s}')
  worst = 0.0
  for name in names:
    t = time.perf_counter()
    res = solvers.train_lbfgs({name: jnp.asarray(xtr[name])}, ytr,
                              {name: jnp.asarray(xva[name])}, yva, num_classes=num_classes,
                              cfg=config.train, iters=e.lbfgs_iters)
    scores, _ = linear.score_cached(res['selected'], {name: jnp.asarray(xte[name])}, yte,
                                    kind='linear', stats={name: res['stats'][name]})
    ours_s = time.perf_counter() - t
    ours = scores[name]['top1']
    ours_wd = res['selected'][name]['weight_decay']

    t = time.perf_counter()
    scaler = StandardScaler().fit(xtr[name])
    a, v, b = (scaler.transform(x[name]) for x in (xtr, xva, xte))
    best = None
    for wd in wds:
      kw = dict(C=1.0 / (len(ytr) * wd) if wd > 0 else np.inf)
      clf = LogisticRegression(tol=1e-6, max_iter=args.max_iter, **kw)
      clf.fit(a, ytr)
      val = np.mean(clf.predict(v) == yva)
      if best is None or val > best[0]:
        best = (val, wd, np.mean(clf.predict(b) == yte))
    sk_s = time.perf_counter() - t
    diff = 100 * (ours - best[2])
    worst = max(worst, abs(diff))
    print(f'{name:12s} {xtr[name].shape[1]:6d} {ours_wd:8.0e} {100 * ours:6.2f} '
          f'{ours_s:6.1f} {best[1]:8.0e} {100 * best[2]:7.2f} {sk_s:6.1f} {diff:+6.2f}')
  print(f'\nlargest |difference|: {worst:.2f} points (bar: 1.00); device '
        f'{jax.devices()[0].platform} x{jax.device_count()}')


if __name__ == '__main__':
  main()
