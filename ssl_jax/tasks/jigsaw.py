"""Jigsaw puzzles (Noroozi & Favaro 2016) as in the revisiting study.

Each source image gives 9 standardised patches (see patches.py). The shared trunk and
the head's per-patch `embedding` (1000-d, the study's trunk logits layer) embed them in
grid order; an example is a pair
(image, permutation k of the set P): slot j of the concatenated 9 x E vector
holds the embedding of grid patch P[k][j], and the head predicts k (|P|-way).
Permuting embeddings equals permuting input tiles because the trunk is shared
and per-patch (BN statistics aside: all 9B patches form one BN batch).

Concatenation is slot-major (feature index = slot * E + c); the study's concat
is channel-interleaved (c * 9 + slot), which only matters for weight import.

Settings (config.tasks.jigsaw): the patch geometry and head (grid, patch_size,
jitter, embed_dim, head_hidden, dropout_rate) and num_permutations, method, seed,
sampling, perms_per_step, eval_permutations (see configs/jigsaw.py).

Sampling (settings.sampling):
  per_batch  the study: each step draws k = perms_per_step (8) distinct indices
             of P, shared by every image of the per-device batch (the pretext
             fn runs per device, with a per-device key); each image yields k
             examples (copies = k).
  per_image  VISSL: one random permutation per image (copies = 1).
Evaluation uses every permutation of P (copies = |P|), or, when 0 <
eval_permutations < |P|, a fixed seeded sample of that many (large P).
"""
import hashlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import tasks
from ssl_jax.tasks import common
from ssl_jax.tasks import heads
from ssl_jax.tasks import patches as patches_lib
from ssl_jax.tasks import permutations

SAMPLINGS = ('per_batch', 'per_image')


def eval_indices(settings):
  """The permutation indices scored at evaluation, sorted int32[n_eval]."""
  n = settings.num_permutations
  if settings.eval_permutations <= 0 or settings.eval_permutations >= n:
    return np.arange(n, dtype=np.int32)
  # Fixed by the set's seed, not the run's: every evaluation scores the same ones.
  rng = np.random.default_rng([settings.seed, n, 0x11])
  return np.sort(rng.choice(n, settings.eval_permutations, replace=False)).astype(np.int32)


def copies(settings, train):
  """Examples per source image: k (per_batch), 1 (per_image) or the eval count."""
  if not train:
    return int(eval_indices(settings).shape[0])
  return settings.perms_per_step if settings.sampling == 'per_batch' else 1


def sample_indices(rng, batch, num_perms, sampling, perms_per_step):
  """Training permutation indices, i32[B, copies].

  per_batch: the same `perms_per_step` distinct indices for every image of the
  batch (jax.random.choice without replacement); per_image: one per image.
  """
  if sampling == 'per_batch':
    idx = jax.random.choice(rng, num_perms, (perms_per_step,), replace=False)
    return jnp.broadcast_to(idx.astype(jnp.int32), (batch, perms_per_step))
  return jax.random.randint(rng, (batch, 1), 0, num_perms, dtype=jnp.int32)


def make_pretext(settings):
  """(rng, batch, *, train) -> (inputs, targets i32[B, copies]).

  inputs = dict(image=patches f32[B, 9, p, p, 3], perm_index=i32[B, copies]); targets
  are the same indices (labels into P). The dataset labels are unused. Evaluation is
  deterministic: central patches, the fixed evaluation permutations.
  """
  num_perms = settings.num_permutations
  sampling, k = settings.sampling, settings.perms_per_step
  evals = eval_indices(settings)

  def pretext(rng, batch, *, train):
    images = batch['image']
    b = images.shape[0]
    if train:
      patch_rng, perm_rng = jax.random.split(rng)
      idx = sample_indices(perm_rng, b, num_perms, sampling, k)
    else:
      patch_rng = None
      idx = jnp.broadcast_to(jnp.asarray(evals), (b, evals.shape[0]))
    patches = patches_lib.make_pretext_patches(settings, patch_rng, images, train)
    return {'image': patches, 'perm_index': idx}, idx

  return pretext


def permute_embeddings(emb, perms):
  """Slot j of example (b, c) <- emb[b, perms[b, c, j]].

  Args:
    emb: [B, 9, E] patch embeddings in grid order.
    perms: int[B, C, 9] permutations (rows of P).
  Returns:
    [B, C, 9, E].
  """
  return jnp.take_along_axis(emb[:, None], perms[..., None], axis=2)


class PermutationTable:
  """The set P, int32[N, 9], as a module attribute (a constant, not a parameter).

  Hashable by content and printed in one line: N can be 10,000.
  """

  def __init__(self, perms):
    self.array = np.array(perms, np.int32)
    self.array.flags.writeable = False
    self.digest = hashlib.sha1(self.array.tobytes()).hexdigest()

  def __len__(self):
    return self.array.shape[0]

  def __hash__(self):
    return hash(self.digest)

  def __eq__(self, other):
    return isinstance(other, PermutationTable) and self.digest == other.digest

  def __repr__(self):
    return f'PermutationTable({len(self)}x9, sha1 {self.digest[:12]})'


class JigsawHead(nn.Module):
  """(endpoints over B*9 patches, inputs, train) -> logits f32[B*C, |P|], image-major."""
  perms: PermutationTable
  embed_dim: int
  head_hidden: int
  dropout_rate: float
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, endpoints, inputs, train):
    n = inputs['image'].shape[1]
    emb = heads.patch_embeddings(endpoints, n, self.embed_dim, self.dtype)
    idx = inputs['perm_index']                                       # [B, C]
    x = permute_embeddings(emb, jnp.asarray(self.perms.array)[idx])  # [B, C, 9, E]
    b, c = idx.shape
    fc = heads.make_fc({'head_hidden': self.head_hidden, 'dropout_rate': self.dropout_rate},
                       len(self.perms), self.bn_axis_name, self.dtype)
    return fc(x.reshape(b * c, -1), train=train)


def validate(config):
  """ValueError for impossible jigsaw settings (before anything compiles)."""
  patches_lib.validate_settings(config, 'jigsaw')
  j = config.tasks.jigsaw
  if not isinstance(j.num_permutations, int) or not 2 <= j.num_permutations <= 362880:
    raise ValueError(f'config.tasks.jigsaw.num_permutations={j.num_permutations!r} must be '
                     f'an integer in [2, 9!]; presets: {list(permutations.PRESETS)}')
  try:
    permutations.resolve_method(j.num_permutations, j.method)
  except ValueError as e:
    raise ValueError(f'config.tasks.jigsaw.method: {e}') from None
  if j.sampling not in SAMPLINGS:
    raise ValueError(f'config.tasks.jigsaw.sampling={j.sampling!r}; allowed: '
                     f'{list(SAMPLINGS)}')
  if j.sampling == 'per_batch' and not 1 <= j.perms_per_step <= j.num_permutations:
    raise ValueError(f'config.tasks.jigsaw.perms_per_step={j.perms_per_step!r} must be in '
                     f'[1, num_permutations={j.num_permutations}]')


@tasks.register('jigsaw')
def build(config):
  """The jigsaw task; builds or loads the permutation set of its settings."""
  s = tasks.settings(config, 'jigsaw')
  validate(config)  # Before generating a (possibly large) permutation set.
  table = permutations.get_permutations(s.num_permutations, s.method, s.seed)
  head = JigsawHead(perms=PermutationTable(table), embed_dim=s.embed_dim,
                    head_hidden=s.head_hidden, dropout_rate=s.dropout_rate,
                    bn_axis_name=common.bn_axis(config), dtype=common.compute_dtype(config))
  return tasks.Task(
      name='jigsaw', settings=s, num_views=1, pretext=make_pretext(s), head=head,
      loss=common.classification_loss, eval_input=patches_lib.eval_input(s),
      weight_decay=heads.WEIGHT_DECAY, validate=validate)
