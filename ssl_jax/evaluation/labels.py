"""Labels of an evaluation: class groupings (granularity), nested label subsets, scores.

Granularity (Cole et al. 2022, protocols.md 1.4 and 1.7): a classifier trained on the
finest labels is scored at coarser levels by mapping its predicted class to the
predicted class's group (a predicted species counts as right at the genus rank when it
is of the true genus). A grouping is a partition of the K classes, given as a tuple of
groups of class indices (config: `groupings = {level: ((0, 1, 8, 9), (2, ...)), ...}`);
level A is *coarser* than level B when every group of B lies inside one group of A
(the fine labels are the finest level of all).

Label subsets (Cole's label-quantity axis): for n labelled images per class, each class's
train examples are ordered once by a seeded permutation and the first n are taken, so the
subsets of a seed are nested (n < m: subset(n) is inside subset(m)), exact per class, and
the same for every evaluator that draws them (probe, fine-tuning).

No TensorFlow; numpy only.
"""
import numpy as np

FINE = 'fine'   # the level of the dataset's own labels
ALL = -1        # a label count meaning every train example


def check_groupings(groupings, num_classes, key='groupings'):
  """{level: int32[K] class -> group} of a config's groupings; ValueError for bad ones.

  Args:
    groupings: mapping level name -> sequence of groups, each a sequence of class
      indices; together the groups must hold each class 0..K-1 exactly once.
    num_classes: K.
    key: the config key, for the messages.
  Returns:
    {level: np.int32[K]} (group index of every class, groups in the given order).
  Raises:
    ValueError (one line naming the level) for a missing, repeated or out-of-range
    class, an empty group, or a level named 'fine'.
  """
  out = {}
  for level in sorted(groupings or {}):
    groups = groupings[level]
    if level == FINE:
      raise ValueError(f'config.{key}: the level name {FINE!r} is reserved for the '
                       "dataset's own labels")
    mapping = np.full((num_classes,), -1, np.int32)
    for g, members in enumerate(groups):
      members = list(members)
      if not members:
        raise ValueError(f'config.{key}.{level}: group {g} is empty')
      for c in members:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not (
            0 <= c < num_classes):
          raise ValueError(f'config.{key}.{level}: class {c!r} in group {g} is not a '
                           f'class index 0..{num_classes - 1}')
        if mapping[c] >= 0:
          raise ValueError(f'config.{key}.{level}: class {c} is in groups {mapping[c]} '
                           f'and {g}; each class belongs to exactly one group')
        mapping[c] = g
    missing = np.flatnonzero(mapping < 0)
    if missing.size:
      raise ValueError(f'config.{key}.{level}: classes {missing.tolist()} are in no group '
                       f'(every class 0..{num_classes - 1} must be in one)')
    out[level] = mapping
  return out


def is_coarser(coarse, fine):
  """True when every group of `fine` (int[K] class -> group) lies in one group of `coarse`."""
  coarse, fine = np.asarray(coarse), np.asarray(fine)
  for g in np.unique(fine):
    if np.unique(coarse[fine == g]).size > 1:
      return False
  return True


def levels_at_or_above(level, mappings, num_classes):
  """The levels a classifier trained at `level` is scored at: itself and every coarser
  one, as [(name, int[K_level] group of each of its classes -> coarse group)].

  Args:
    level: FINE or a key of mappings.
    mappings: `check_groupings`' result.
    num_classes: K (the fine classes).
  Returns:
    [(name, np.int32 map from the trained level's classes to the scored level's)],
    the trained level first (the identity).
  Raises:
    ValueError naming an unknown level.
  """
  fine = np.arange(num_classes, dtype=np.int32)
  if level != FINE and level not in mappings:
    raise ValueError(f'train_level={level!r} is not a grouping; allowed: '
                     f'{[FINE] + sorted(mappings)}')
  base = fine if level == FINE else mappings[level]
  out = [(level, np.arange(int(base.max()) + 1, dtype=np.int32))]
  for name in sorted(mappings):
    m = mappings[name]
    if name == level or not is_coarser(m, base):
      continue
    # base group b -> the coarse group of any of its classes (all agree).
    out.append((name, np.asarray([m[np.flatnonzero(base == b)[0]]
                                  for b in range(int(base.max()) + 1)], np.int32)))
  return out


def per_class_order(labels, num_classes, seed):
  """{class: indices of that class in a seeded random order} (the subsets' prefix order)."""
  labels = np.asarray(labels)
  rng = np.random.RandomState(seed)
  out = {}
  for c in range(num_classes):
    idx = np.flatnonzero(labels == c)
    out[c] = idx[rng.permutation(idx.size)]
  return out


def check_count_values(counts, key='label_counts'):
  """ValueError (one line) unless every count is an integer >= 1 or ALL (-1)."""
  if not len(counts):
    raise ValueError(f'config.{key} is empty: give counts per class, or ({ALL},) for all')
  for n in counts:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or (n < 1 and n != ALL):
      raise ValueError(f'config.{key}: {n!r} is not a count of images per class '
                       f'(an integer >= 1, or {ALL} for all)')


def check_label_counts(counts, labels, num_classes, key='label_counts'):
  """ValueError (one line) for a count larger than a class's examples or an empty class.

  Args:
    counts: labelled images per class (ints >= 1, or ALL = -1).
    labels: int[N] the train labels subsets are drawn from.
    num_classes: K.
  """
  check_count_values(counts, key)
  labels = np.asarray(labels)
  per_class = np.bincount(labels, minlength=num_classes)[:num_classes]
  empty = np.flatnonzero(per_class == 0)
  for n in counts:
    if n == ALL:
      continue
    if empty.size:
      raise ValueError(f'config.{key}: classes {empty.tolist()} have no train example, '
                       f'so no subset of {n} per class exists')
    if n > per_class.min():
      c = int(np.argmin(per_class))
      raise ValueError(f'config.{key}: {n} images per class is more than the train '
                       f'split has of class {c} ({int(per_class.min())}); allowed: at '
                       f'most {int(per_class.min())}, or {ALL} for all')


def subset(labels, count, num_classes, seed):
  """Sorted indices of `count` train examples per class (ALL: every index).

  Nested in count for a fixed seed; exactly `count` of every class.
  Raises:
    ValueError as `check_label_counts`.
  """
  labels = np.asarray(labels)
  if count == ALL:
    return np.arange(labels.size)
  check_label_counts((count,), labels, num_classes)
  order = per_class_order(labels, num_classes, seed)
  return np.sort(np.concatenate([order[c][:count] for c in range(num_classes)]))


def count_name(count):
  """The row variant of a label count: 'all labels' or '<n>/class'."""
  return 'all labels' if count == ALL else f'{count}/class'


def topk_order(scores):
  """Classes by decreasing score, ties to the lower index (as jax.lax.top_k)."""
  return np.argsort(-np.asarray(scores, np.float32), axis=1, kind='stable')


def metric_name(base, level):
  """'top1' at the fine level, 'top1@<level>' at a grouping."""
  return base if level == FINE else f'{base}@{level}'


def score(scores, labels, levels=None):
  """Top-1 (and top-5 where the trained level has more than 5 classes) of class scores.

  Args:
    scores: f32[N, K] (logits, votes: higher is better) over the trained level's K
      classes.
    labels: int[N] true classes of that level.
    levels: `levels_at_or_above` pairs (default: the fine level only); the first is the
      trained level. Metric names: 'top1', 'top5' at the fine level, 'top1@L' at a
      grouping L (the predicted class mapped to its group, the true class likewise;
      top-5 only at the trained level).
  Returns:
    {metric: fraction}, and 'count' (N).
  """
  scores = np.asarray(scores, np.float32)
  labels = np.asarray(labels)
  n, k = scores.shape
  order = topk_order(scores)
  out = {'count': int(n)}
  levels = levels or [(FINE, np.arange(k, dtype=np.int32))]
  for i, (name, mapping) in enumerate(levels):
    hit = mapping[order[:, 0]] == mapping[labels]
    out[metric_name('top1', name)] = float(np.mean(hit)) if n else 0.0
    if i == 0 and k > 5:
      top5 = np.any(order[:, :5] == labels[:, None], 1)
      out[metric_name('top5', name)] = float(np.mean(top5)) if n else 0.0
  return out
