r"""Build time and Hamming statistics of the jigsaw permutation sets.

  python benchmarks/permutations.py                  # every preset N, both methods
  python benchmarks/permutations.py --sizes 10000 --seed 1

Builds with `permutations.generate` (no disk cache, so the time is the build
time) on one core, and prints one row per (N, method): build seconds, mean and
minimum pairwise Hamming distance (positions out of 9) and the number of pairs
at the minimum. The study's shipped 100-table is printed first.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssl_jax.tasks import permutations  # pylint: disable=g-import-not-at-top


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', type=int, nargs='+', default=list(permutations.PRESETS))
  parser.add_argument('--methods', nargs='+', default=['max_avg', 'max_min'])
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()

  print(f'{"set":>22} {"N":>6} {"build s":>8} {"mean":>7} {"min":>4} {"#min pairs":>10}')
  s = permutations.hamming_stats(permutations.study_table())
  print(f'{"study table (file)":>22} {100:>6} {"-":>8} {s["mean"]:7.3f} {s["min"]:4d} '
        f'{s["num_min_pairs"]:10d}')
  permutations.all_permutations()  # Enumerating 9! once is not part of any build.
  for n in args.sizes:
    for method in args.methods:
      t0 = time.perf_counter()
      perms = permutations.generate(n, method, args.seed)
      dt = time.perf_counter() - t0
      s = permutations.hamming_stats(perms)
      print(f'{method + " seed " + str(args.seed):>22} {n:>6} {dt:8.2f} {s["mean"]:7.3f} '
            f'{s["min"]:4d} {s["num_min_pairs"]:10d}', flush=True)


if __name__ == '__main__':
  main()
