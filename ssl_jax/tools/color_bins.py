"""Command line: derive and cache the colorization ab bins of a TFDS dataset split.

    python -m ssl_jax.tools.color_bins --dataset cifar10 --grid 5 10 15 20
    python -m ssl_jax.tools.color_bins --dataset imagenette64 --rule data in_hull

Fills the cache the colorization task reads (ssl_jax.tasks.color.get_bins, under
color.default_cache_dir() or --cache_dir, keyed by color.dataset_key) and prints the bin
count of every rule and grid. The split is decoded and counted once, only on a cache
miss (TensorFlow is imported then); an unusable cache entry is rebuilt with a warning.
Command lines live outside `ssl_jax.tasks`; the maths are ssl_jax.tasks.color's.
"""
import argparse
import functools
import sys
import time

from ssl_jax.tasks import color


def main(argv=None):
  """CLI: derive and cache the bins of a TFDS dataset split; prints the counts. Returns 0."""
  parser = argparse.ArgumentParser(description='Derive and cache colorization ab bins.')
  parser.add_argument('--dataset', required=True, help='name in configs/common.py DATASETS')
  parser.add_argument('--split', default='train', choices=('train', 'val', 'test'),
                      help="config split name (train = the dataset's train_split)")
  parser.add_argument('--grid', type=int, nargs='+', default=[10])
  parser.add_argument('--rule', nargs='+', default=['data'], choices=color.RULES)
  parser.add_argument('--goyal_quirks', action='store_true')
  parser.add_argument('--exclude_grey', action='store_true')
  parser.add_argument('--max_images', type=int, default=-1,
                      help='count only the first N images of the split (-1: all)')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--cache_dir', default=None)
  parser.add_argument('--rebuild', action='store_true')
  args = parser.parse_args(argv)

  from configs import common  # pylint: disable=g-import-not-at-top
  if args.dataset not in common.DATASETS:
    parser.error(f'--dataset={args.dataset!r}; allowed: {", ".join(common.DATASETS)}')
  if args.goyal_quirks and set(args.rule) != {'data'}:
    parser.error("--goyal_quirks applies to --rule data only")
  for grid in args.grid:
    try:
      color._check_grid(grid)  # pylint: disable=protected-access
    except ValueError as e:
      parser.error(f'--grid: {e}')
  config = common.get_config()
  config.data = common.data_config(args.dataset)
  if args.data_dir:
    config.data.data_dir = args.data_dir
  name = color.dataset_key(config.data, args.split, args.max_images)

  @functools.lru_cache(maxsize=1)
  def histogram():  # Loaded and counted once, only on a cache miss.
    t0 = time.time()
    hist = color.colour_histogram(color.dataset_images(config, args.split, args.max_images),
                                  exclude_grey=args.exclude_grey)
    print(f'loaded and counted {name}: {hist["num_images"]} images, '
          f'{len(hist["codes"])} colours, in {time.time() - t0:.1f} s', flush=True)
    return hist

  for rule in args.rule:
    for grid in args.grid:
      out = color.get_bins(name, histogram, grid, rule, goyal_quirks=args.goyal_quirks,
                           exclude_grey=args.exclude_grey, cache_dir=args.cache_dir,
                           rebuild=args.rebuild)
      print(f'{name} rule={rule} grid={grid}{" goyal_quirks" if args.goyal_quirks else ""}: '
            f'{out["num_bins"]} bins ({out["how"]}; {out["num_images"]} images, '
            f'{out["num_pixels"]} pixels, {out["num_grey_images"]} grey, '
            f'{out["num_dropped"]} dropped) -> {out["cache"]}.npz', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
