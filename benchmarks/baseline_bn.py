"""How much of the linear-evaluation gain over a random-init trunk is BatchNorm statistics?

The measurement behind `config.eval.baseline_bn` (issue 17): one pretext trunk and its
random-init twin, each evaluated with two kinds of BatchNorm statistics in inference mode,
through the same evaluation (configs/linear_eval.py preset, same features, probe, seeds):

  trained    the checkpoint's moving averages (what the study evaluates)
  trained*   the same weights, population statistics re-estimated on train images
  twin-init  the twin with its initial statistics (mean 0, variance 1)
  twin*      the twin with population statistics re-estimated the same way

and prints test top-1 (%) per endpoint and evaluator, the four columns side by side and
the gains trained - twin-init, trained - twin*, trained* - twin*. Writes the rows as JSON.

  python benchmarks/baseline_bn.py --pretrained workdirs/rotation_cifar10_cpu \
      --preset cifar10_cpu --out workdirs/baseline_bn_main.json [--max_train 10000]

Needs the evaluation's data (CIFAR-10 through TFDS for the cifar10_cpu preset). Hours on
two CPU cores at the preset's sizes; minutes on an accelerator.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = (('trained', 'trained', 'trained'), ('trained*', 'trained', 'reestimate'),
            ('twin-init', 'twin', 'init'), ('twin*', 'twin', 'reestimate'))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--pretrained', required=True)
  p.add_argument('--preset', default='cifar10_cpu')
  p.add_argument('--out', required=True)
  p.add_argument('--max_train', type=int, default=0, help='> 0: eval.max_train_examples')
  p.add_argument('--knn', type=int, default=1, help='1: also the kNN evaluator')
  args = p.parse_args()

  import jax
  from configs import linear_eval as le_configs
  from ssl_jax.evaluation import evaluators
  from ssl_jax.evaluation import linear_eval

  config = le_configs.get_config(args.preset)
  with config.unlocked():
    config.pretrained = args.pretrained
    if args.max_train > 0:
      config.eval.max_train_examples = args.max_train
    for name, section in evaluators.sections(config.evals):
      if name not in ('linear',) + (('knn',) if args.knn else ()):
        section.enabled = False
  evs = linear_eval.validate(config)
  trunk, source, _ = linear_eval.trunk_and_source(config)
  twin = linear_eval.random_twin(config, trunk, source.image_shape(train=False))
  out = {'pretrained': args.pretrained, 'preset': args.preset,
         'max_train_examples': config.eval.max_train_examples,
         'device': f'{jax.devices()[0].platform} x{jax.device_count()}', 'variants': {}}
  for label, which, bn in VARIANTS:
    t = time.perf_counter()
    res = linear_eval.evaluate(config, trunk if which == 'trained' else twin, source, evs,
                               bn=bn)
    rows = [r for r in linear_eval.rows(res) if r['split'] == 'test' and r['metric'] == 'top1']
    out['variants'][label] = {
        'bn_stats': res['bn_stats'], 'seconds': time.perf_counter() - t,
        'top1': {f"{r['evaluator']}/{r['endpoint']}{'/' + r['variant'] if r['variant'] else ''}":
                 r['value'] for r in rows}}
    print(f'{label}: {time.perf_counter() - t:.0f} s', flush=True)
    with open(args.out, 'w') as f:
      json.dump(out, f, indent=2)
  print(format_table(out))


def format_table(out):
  v = out['variants']
  keys = list(v['trained']['top1'])
  lines = [f"{out['pretrained']} ({out['preset']}, train examples "
           f"{out['max_train_examples']}, {out['device']}): test top-1 %",
           f"{'row':28s} {'trained':>8s} {'trained*':>8s} {'twin-init':>9s} {'twin*':>8s}"
           f" {'tr-init':>8s} {'tr-tw*':>8s} {'tr*-tw*':>8s}"]
  for k in keys:
    a, b, c, d = (100 * v[n]['top1'][k] for n in ('trained', 'trained*', 'twin-init', 'twin*'))
    lines.append(f'{k:28s} {a:8.2f} {b:8.2f} {c:9.2f} {d:8.2f} {a - c:+8.2f} {a - d:+8.2f}'
                 f' {b - d:+8.2f}')
  return '\n'.join(lines)


if __name__ == '__main__':
  main()
