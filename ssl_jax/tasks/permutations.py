"""Jigsaw permutation sets: the study's 100-permutation table and generated sets.

A set is an int32[N, 9] array; row k is permutation k (class label k) and, for
the jigsaw task, slot j of the concatenated embedding holds grid patch perm[j]
(grid index = row * 3 + col). NumPy only: no JAX, no TensorFlow.

Generated sets use the greedy maximal-Hamming-distance selection over all
9! = 362,880 permutations (Noroozi & Favaro 2016, Alg. 1, as in VISSL's script):
the first permutation is drawn at random (seeded), then the remaining
permutation with the largest score is added, where the score is the MEAN
(`max_avg`, Noroozi's) or the MINIMUM (`max_min`) Hamming distance to the rows
already chosen; ties go to the lexicographically first permutation, as
`argmax` over the ordered candidate list does in the reference script.
`max_avg` leaves pairs at distance 2 (one swap apart); `max_min` keeps the
minimum distance high. Sets are cached on disk by (N, method, seed).
"""
import functools
import hashlib
import itertools
import json
import os
import time

from absl import logging
import numpy as np

NUM_TILES = 9
PRESETS = (100, 701, 1000, 2000, 5000, 10000)
METHODS = ('file', 'max_avg', 'max_min')
_DATA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data',
                          'permutations_100_max.json')
_CACHE_VERSION = 1  # Bump when the generator changes; it is part of the file name.


@functools.lru_cache(maxsize=None)
def _study_table():
  """(table i32[100, 9], note dict); the sha256 note is checked against the table."""
  with open(_DATA_FILE) as f:
    note = json.load(f)
  table = np.asarray(note.pop('permutations'), np.int32)
  # Rebuild Noroozi's binary (int32 header [100, 9], then 1-based values) and
  # check its hash, so an edited or truncated table cannot pass silently.
  binary = (np.asarray(table.shape, '<i4').tobytes() +
            (table + 1).astype('<i4').tobytes())
  digest = hashlib.sha256(binary).hexdigest()
  if digest != note['binary_sha256']:
    raise ValueError(f'{_DATA_FILE}: table does not match its source note '
                     f'(sha256 {digest} != {note["binary_sha256"]})')
  _check_set(table)
  return table, note


def study_table():
  """The study's (Noroozi's) 100-permutation set, int32[100, 9], 0-based."""
  return _study_table()[0].copy()


def study_table_note():
  """Source note of the shipped table: source URL, binary_sha256, format, semantics."""
  return dict(_study_table()[1])


@functools.lru_cache(maxsize=1)
def all_permutations():
  """All 9! permutations in lexicographic order, uint8[362880, 9] (read-only)."""
  perms = np.array(list(itertools.permutations(range(NUM_TILES))), np.uint8)
  perms.flags.writeable = False
  return perms


def generate(num, method='max_avg', seed=0):
  """Greedy maximal-Hamming-distance selection of `num` permutations.

  O(num * 9!) with a running score vector over all 9! candidates: each added row
  costs 9 byte comparisons per candidate (about 0.5 ms), so N=10,000 takes seconds.

  Args:
    num: number of permutations, 1 <= num <= 9!.
    method: 'max_avg' (largest mean distance; Noroozi's) or 'max_min' (largest
      minimum distance).
    seed: seeds the first (random) permutation; everything after is deterministic.
  Returns:
    int32[num, 9], rows in selection order.
  """
  if method not in ('max_avg', 'max_min'):
    raise ValueError(f'method={method!r} cannot be generated; allowed: max_avg, max_min')
  cands = all_permutations()
  n = cands.shape[0]
  if not 1 <= num <= n:
    raise ValueError(f'num={num} must be in [1, {n}]')
  cols = np.ascontiguousarray(cands.T)  # [9, 9!]: one contiguous row per position.
  first = int(np.random.default_rng(seed).integers(n))
  chosen = np.empty(num, np.int64)
  # Scores: int32 distance sums (max 9 * num) or uint8 running minima.
  score = np.zeros(n, np.int32) if method == 'max_avg' else np.full(n, 255, np.uint8)
  matches = np.empty(n, np.uint8)
  eq = np.empty(n, np.bool_)
  # Chosen rows must never be picked again: for the sum a large negative offset
  # outlives any number of additions; a chosen row's minimum becomes 0 itself.
  taken = -(2 ** 30)
  j = first
  for i in range(num):
    chosen[i] = j
    if i == num - 1:
      break
    row = cands[j]
    matches.fill(0)
    for p in range(NUM_TILES):
      np.equal(cols[p], row[p], out=eq)
      matches += eq
    dist = NUM_TILES - matches  # uint8 Hamming distance of every candidate to row j.
    if method == 'max_avg':
      score += dist
      score[j] = taken
    else:
      np.minimum(score, dist, out=score)
    j = int(np.argmax(score))
  return cands[chosen].astype(np.int32)


def hamming_stats(perms, chunk=512):
  """Pairwise Hamming distance statistics (positions that differ, out of 9).

  Chunked over rows (memory O(chunk * N)), so N=10,000 (5e7 pairs) is fine.

  Args:
    perms: int[N, 9], N >= 2.
    chunk: rows per block.
  Returns:
    dict(num=N, mean=mean distance over the N(N-1)/2 unordered pairs,
         min=minimum distance, num_min_pairs=number of pairs at the minimum).
  """
  perms = np.asarray(perms).astype(np.uint8)
  n = perms.shape[0]
  if n < 2:
    raise ValueError(f'need at least 2 permutations, got {n}')
  cols = np.ascontiguousarray(perms.T)
  total, best, count = 0, NUM_TILES + 1, 0
  for a in range(0, n, chunk):
    b = min(a + chunk, n)
    # Block [a:b) x [a:n): only pairs (i, j) with j > i are counted.
    matches = np.zeros((b - a, n - a), np.uint8)
    for p in range(NUM_TILES):
      matches += cols[p, a:b, None] == cols[p, None, a:]
    dist = NUM_TILES - matches
    upper = np.arange(a, n)[None, :] > np.arange(a, b)[:, None]
    d = dist[upper]
    if d.size == 0:
      continue
    total += int(d.sum(dtype=np.int64))
    m = int(d.min())
    c = int(np.count_nonzero(d == m))
    if m < best:
      best, count = m, c
    elif m == best:
      count += c
  return dict(num=n, mean=total / (n * (n - 1) / 2), min=best, num_min_pairs=count)


def cache_dir():
  """$SSL_JAX_CACHE/permutations if set, else ~/.cache/ssl_jax/permutations."""
  root = os.environ.get('SSL_JAX_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'ssl_jax')
  return os.path.join(root, 'permutations')


def resolve_method(num, method):
  """'auto' -> the study's table for N=100, else Noroozi's 'max_avg'."""
  if method == 'auto':
    return 'file' if num == 100 else 'max_avg'
  if method not in METHODS:
    raise ValueError(f'jigsaw permutation method={method!r}; allowed: auto, {", ".join(METHODS)}')
  if method == 'file' and num != 100:
    raise ValueError(f"method='file' is the study's 100-permutation table, but num={num}; "
                     "use method='max_avg' (Noroozi's greedy) or 'max_min' for other sizes")
  return method


def _format_stats(s):
  return (f'N={s["num"]} mean Hamming {s["mean"]:.3f}, min {s["min"]} '
          f'({s["num_min_pairs"]} pairs)')


@functools.lru_cache(maxsize=16)
def _get(num, method, seed, directory):
  """Cached worker of get_permutations (read-only array)."""
  if method == 'file':
    perms = study_table()
    stats = hamming_stats(perms)
    logging.info('jigsaw permutations: study table (sha256 %s...): %s',
                 study_table_note()['binary_sha256'][:12], _format_stats(stats))
  else:
    base = os.path.join(directory, f'perms_{num}_{method}_seed{seed}_v{_CACHE_VERSION}')
    try:
      perms = np.load(base + '.npy').astype(np.int32)
      with open(base + '.json') as f:
        stats = json.load(f)
      _check_set(perms, num)
      how = f'loaded {base}.npy'
    except (OSError, ValueError, KeyError, EOFError):
      t0 = time.time()
      perms = generate(num, method, seed)
      stats = hamming_stats(perms)
      stats['build_seconds'] = round(time.time() - t0, 2)
      _save(base, perms, stats)
      how = f'built in {stats["build_seconds"]:.1f} s, cached at {base}.npy'
    logging.info('jigsaw permutations %s seed %d (%s): %s', method, seed, how,
                 _format_stats(stats))
  perms.flags.writeable = False
  return perms


def get_permutations(num=100, method='auto', seed=0):
  """The permutation set for (num, method, seed), int32[num, 9] (0-based).

  Args:
    num: set size N (presets: 100, 701, 1000, 2000, 5000, 10000; any N works).
    method: 'file' (the study's shipped 100-table; N=100 only), 'max_avg',
      'max_min', or 'auto' ('file' for N=100, else 'max_avg').
    seed: seed of the generated sets (ignored by 'file').
  Returns:
    A fresh int32[num, 9] array. Generated sets are built once and cached on
    disk (see cache_dir()); the mean/min Hamming distances are logged.
  """
  method = resolve_method(int(num), method)
  seed = 0 if method == 'file' else int(seed)
  return _get(int(num), method, seed, cache_dir()).copy()


def _save(base, perms, stats):
  """Atomic write (tmp + rename): concurrent hosts may build the same set."""
  try:
    os.makedirs(os.path.dirname(base), exist_ok=True)
    tmp = f'{base}.{os.getpid()}.tmp'
    with open(tmp + '.npy', 'wb') as f:
      np.save(f, perms.astype(np.uint8))
    with open(tmp + '.json', 'w') as f:
      json.dump(stats, f)
    os.replace(tmp + '.json', base + '.json')
    os.replace(tmp + '.npy', base + '.npy')
  except OSError as e:  # A read-only cache only costs a rebuild next time.
    logging.warning('could not cache permutations at %s: %s', base, e)


def _check_set(perms, num=None):
  """ValueError unless perms is a set of `num` distinct permutations of 0..8."""
  if perms.ndim != 2 or perms.shape[1] != NUM_TILES or (num and perms.shape[0] != num):
    raise ValueError(f'bad permutation set shape {perms.shape}')
  if not (np.sort(perms, axis=1) == np.arange(NUM_TILES)).all():
    raise ValueError('rows are not permutations of 0..8')
  if np.unique(perms, axis=0).shape[0] != perms.shape[0]:
    raise ValueError('permutation set has duplicate rows')
