r"""Label-quantity curves (Cole et al. 2022): test top-1 against labelled images per class,
fine-tuning from the pretext trunk vs the same recipe from scratch vs frozen probes.

  python -m ssl_jax.evaluation.curves WORKDIR/results.json --out docs/finetune_cifar10_cpu.png

Reads the rows of an evaluation (`linear_eval.rows`) that have `labels_per_class`
(the probe's and fine-tuning's label-count variants; -1 = all, drawn at the pool's
per-class count); the fine-tuning rows' `baseline` is the from-scratch run. matplotlib
is imported when drawing.
"""
import argparse
import json


def label_curves(results, *, metric='top1', split='test', evaluators=None):
  """{series label: {labels per class: value}} of the label-count rows.

  Series: '<evaluator> <endpoint>' (probes), '<evaluator>: pretext init' and
  '<evaluator>: from scratch' (fine-tuning: its value and its baseline), and
  '<evaluator> <endpoint> (random trunk)' for a probe's baseline. 'all' (-1) maps to
  the per-class count of the train examples used (train_examples / classes).
  """
  from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
  classes = results.get('num_classes') or 10
  out = {}
  for r in linear_eval.rows(results):
    if (r['metric'] != metric or r['split'] != split or 'labels_per_class' not in r or
        (evaluators and r['evaluator'] not in evaluators)):
      continue
    n = r['labels_per_class']
    if n == -1:
      n = r['train_examples'] / classes
    if r['type'] == 'finetune':
      out.setdefault(f"{r['evaluator']}: pretext init", {})[n] = r['value']
      if r.get('baseline') is not None:
        out.setdefault(f"{r['evaluator']}: from scratch", {})[n] = r['baseline']
    else:
      out.setdefault(f"{r['evaluator']} probe {r['endpoint']}", {})[n] = r['value']
      if r.get('baseline') is not None:
        out.setdefault(f"{r['evaluator']} probe {r['endpoint']} (random trunk)", {})[n] = (
            r['baseline'])
  return out


def figure(curves, *, title=None, scale=100.0):
  """A log-x line plot of `label_curves` output; returns the matplotlib Figure."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if not curves:
    raise ValueError('no label-count rows to draw (probe or finetune label_counts)')
  fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
  for label, values in curves.items():
    xs = sorted(values)
    style = '--' if 'random trunk' in label or 'scratch' in label else '-'
    ax.plot(xs, [scale * values[x] for x in xs], style, marker='o', label=label)
  ax.set_xscale('log')
  ax.set_xlabel('labelled train images per class')
  ax.set_ylabel('test top-1 (%)')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7)
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  return fig


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('results', help='an evaluation results.json')
  p.add_argument('--out', required=True, help='PNG path')
  p.add_argument('--title', default=None)
  args = p.parse_args(argv)
  with open(args.results) as f:
    results = json.load(f)
  curves = label_curves(results)
  title = args.title or (f"{results.get('pretext_task')} {results['model'].get('name')} "
                         f"k={results['model'].get('width')} on {results.get('dataset')}: "
                         'fine-tuning vs from scratch vs frozen probes')
  figure(curves, title=title).savefig(args.out)
  for label, values in curves.items():
    print(f'{label:45s} ' + '  '.join(f'{k:g}: {100 * v:.2f}' for k, v in
                                      sorted(values.items())))
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
