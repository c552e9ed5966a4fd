"""Command line: held-out colorization numbers and a picture of predicted colours.

    python -m ssl_jax.tools.colorize --workdir W --out docs/colorization.png

Command lines live outside `ssl_jax.tasks` (no task module imports the engine). The
maths (`colorize`, `picture`, `upsample_ab`) are the task's (ssl_jax.tasks.colorization).
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.tasks.colorization import bins_of, colorize, endpoint_and_stride, picture


def main(argv=None):
  """CLI: held-out pretext numbers and a picture of predicted colours of a trained run.

    python -m ssl_jax.tools.colorize --workdir W --out docs/colorization.png

  Loads the last checkpoint (BN: its moving averages, or, --bn precise, the default
  for runs with precise_bn_batches > 0, statistics re-estimated on training images)
  and the config's held-out split (`val`; TensorFlow); prints the metrics of the
  model and of two input-blind baselines (every pixel predicted as the bins' prior, or
  as the prior times the rebalancing weights) on the first --eval_images images, then
  saves the first --num images: original, L only, the targets at the head's
  resolution, and the prediction (annealed mean, T).
  """
  import argparse  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  from ssl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow: this CLI only)

  parser = argparse.ArgumentParser(description=main.__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--out', default='')
  parser.add_argument('--num', type=int, default=8)
  parser.add_argument('--eval_images', type=int, default=2048)
  parser.add_argument('--temperature', type=float, default=None)
  parser.add_argument('--split', default='val', choices=('val', 'test'))
  parser.add_argument('--bn', default='', choices=('', 'ema', 'precise'),
                      help="'' = precise if the run used precise BN, else ema")
  args = parser.parse_args(argv)

  config = checkpoint.read_config(args.workdir)
  # The engine as the run built it (train.build: the one place it is assembled), then
  # the run's newest good checkpoint on its state.
  run = train.build(config)
  task, model = run.task_set.members[0].task, run.model
  if task.name != 'colorization':
    raise SystemExit(f'error: {args.workdir} trained {task.name!r}, not colorization')
  manager = checkpoint.make_manager(args.workdir, config.max_to_keep)
  state = checkpoint.restore_latest(manager, checkpoint.abstract_of(run.state))
  manager.close()
  if state is None:
    raise SystemExit(f'error: {args.workdir} holds no usable checkpoint')
  step = int(jax.device_get(state['step']))
  bn = args.bn or ('precise' if config.precise_bn_batches > 0 else 'ema')
  if bn == 'precise':
    # As the run's val_* numbers: BN statistics re-estimated with the final weights over
    # precise_bn_batches training batches (the run's own augmented stream).
    k = max(config.precise_bn_batches, 1)
    batches = [(i, b) for i, b in zip(range(k), run.train_batches(start_step=0))]
    state = dict(state, batch_stats=train.precise_batch_stats(state, run.bn_stats_step,
                                                              batches))
  state = jax.device_get(state)
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}

  @jax.jit
  def apply_fn(inputs):
    out, _ = model.apply(variables, {'colorization': inputs}, train=False)
    return out['colorization']

  images = input_pipeline.load_arrays(config, args.split, pp=config.input.pp_eval or None)[0]
  images = images[:max(args.eval_images, args.num)]
  holder = bins_of(task)
  # Input-blind baselines: the prior (best constant for the plain cross-entropy) and
  # the prior times the rebalancing weights (about the best constant for the
  # rebalanced loss, which weights each pixel by its nearest bin's weight).
  prior = np.asarray(holder.data['prior'], np.float64)
  baselines = {'prior': np.log(np.maximum(prior, 1e-12)),
               'rebalanced_prior': np.log(np.maximum(prior * holder.weights, 1e-12))}
  sums = {'model': {}, 'prior': {}, 'rebalanced_prior': {}}
  chroma = {'prediction': 0.0, 'target': 0.0}
  for i in range(0, min(args.eval_images, len(images)), 256):
    batch = images[i:i + 256]
    out = colorize(task, config, apply_fn, batch, temperature=args.temperature)
    _, targets = task.pretext(jax.random.key(0), {'image': jnp.asarray(batch)}, train=False)
    candidates = [('model', out['logits'])] + [
        (k, jnp.broadcast_to(jnp.asarray(v, jnp.float32), out['logits'].shape))
        for k, v in baselines.items()]
    for name, logits in candidates:
      _, m = task.loss(logits, targets, None)
      for k, v in m.items():
        sums[name][k] = sums[name].get(k, 0.0) + float(jnp.sum(v))
    chroma['prediction'] += float(jnp.sum(jnp.mean(jnp.linalg.norm(out['pred_ab'], axis=-1),
                                                   axis=(1, 2))))
    chroma['target'] += float(jnp.sum(jnp.mean(jnp.linalg.norm(out['true_ab'], axis=-1),
                                               axis=(1, 2))))
  n = min(args.eval_images, len(images))
  result = {'workdir': args.workdir, 'step': step, 'split': args.split, 'num_images': n,
            'bn': bn,
            'num_bins': holder.num_bins, 'temperature': args.temperature or
            task.settings.temperature,
            **{name: {k: v / n for k, v in m.items()} for name, m in sums.items()},
            'mean_chroma': {k: v / n for k, v in chroma.items()}}
  print(json.dumps(result, indent=1), flush=True)
  if args.out:
    out = colorize(task, config, apply_fn, images[:args.num], temperature=args.temperature)
    t = result['temperature']
    s = endpoint_and_stride(config)[1]
    h = -(-images.shape[1] // s)
    image = picture([images[:args.num], out['grey'], out['target'], out['prediction']],
                    ['original', 'L input', f'true ab\nat {h}x{h}', f'predicted\nT={t}'])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    image.save(args.out)
    print(f'saved {args.out} ({image.size[0]}x{image.size[1]})', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
