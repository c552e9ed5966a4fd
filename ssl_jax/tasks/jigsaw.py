"""Jigsaw puzzles (Noroozi & Favaro 2016) as in the revisiting study.

Each source image gives 9 standardised patches (see patches.py). The shared trunk
embeds them in grid order (its 1000-d logits layer); an example is a pair
(image, permutation k of the set P): slot j of the concatenated 9 x E vector
holds the embedding of grid patch P[k][j], and the head predicts k (|P|-way).
Permuting embeddings equals permuting input tiles because the trunk is shared
and per-patch (BN statistics aside: all 9B patches form one BN batch).

Concatenation is slot-major (feature index = slot * E + c); the study's concat
is channel-interleaved (c * 9 + slot), which only matters for weight import.

Sampling (config.jigsaw.sampling):
  per_batch  the study: each step draws k = perms_per_step (8) distinct indices
             of P, shared by every image of the per-device batch (the pretext
             fn runs per device, with a per-device key); each image yields k
             examples (copies = k).
  per_image  VISSL: one random permutation per image (copies = 1).
Evaluation uses every permutation of P (copies = |P|), or, when 0 <
eval_permutations < |P|, a fixed seeded sample of that many (large P).
"""
import hashlib

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.tasks import common
from ssl_jax.tasks import heads
from ssl_jax.tasks import patches as patches_lib
from ssl_jax.tasks import permutations

HEAD_WEIGHT_DECAY = heads.HEAD_WEIGHT_DECAY
SAMPLINGS = ('per_batch', 'per_image')


def eval_indices(config):
  """The permutation indices scored at evaluation, sorted int32[n_eval]."""
  j = config.jigsaw
  n = j.num_permutations
  if j.eval_permutations <= 0 or j.eval_permutations >= n:
    return np.arange(n, dtype=np.int32)
  # Fixed by the set's seed, not the run's: every evaluation scores the same ones.
  rng = np.random.default_rng([j.seed, n, 0x11])
  return np.sort(rng.choice(n, j.eval_permutations, replace=False)).astype(np.int32)


def copies(config, train):
  """Examples per source image: k (per_batch), 1 (per_image) or the eval count."""
  if not train:
    return int(eval_indices(config).shape[0])
  return config.jigsaw.perms_per_step if config.jigsaw.sampling == 'per_batch' else 1


def sample_indices(rng, batch, num_perms, sampling, perms_per_step):
  """Training permutation indices, i32[B, copies].

  per_batch: the same `perms_per_step` distinct indices for every image of the
  batch (jax.random.choice without replacement); per_image: one per image.
  """
  if sampling == 'per_batch':
    idx = jax.random.choice(rng, num_perms, (perms_per_step,), replace=False)
    return jnp.broadcast_to(idx.astype(jnp.int32), (batch, perms_per_step))
  return jax.random.randint(rng, (batch, 1), 0, num_perms, dtype=jnp.int32)


def make_pretext_fn(config, train):
  """(rng, u8[B,S,S,3], labels) -> (inputs, targets i32[B, copies]).

  inputs = dict(patches=f32[B, 9, p, p, 3], perm_index=i32[B, copies]); targets
  are the same indices (labels into P). The dataset labels are unused.
  """
  j = config.jigsaw
  num_perms = j.num_permutations
  sampling, k = j.sampling, j.perms_per_step
  evals = eval_indices(config) if not train else None

  def pretext(rng, images, labels=None):
    del labels
    b = images.shape[0]
    if train:
      patch_rng, perm_rng = jax.random.split(rng)
      idx = sample_indices(perm_rng, b, num_perms, sampling, k)
    else:  # Deterministic: central patches, the fixed evaluation permutations.
      patch_rng = None
      idx = jnp.broadcast_to(jnp.asarray(evals), (b, evals.shape[0]))
    patches = patches_lib.make_pretext_patches(config, patch_rng, images, train)
    return {'patches': patches, 'perm_index': idx}, idx

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
  """The set P, int32[N, 9], as a model attribute (a constant, not a parameter).

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


class JigsawModel(nn.Module):
  """inputs dict(patches, perm_index) -> (logits f32[B*C, |P|], trunk endpoints)."""
  model: flax.core.FrozenDict    # config.model (hashable)
  patches: flax.core.FrozenDict  # config.patches
  perms: PermutationTable

  def setup(self):
    # The trunk's logits layer (embed_dim wide, linear) is the patch embedding.
    self.trunk = common.make_trunk(self.model, self.patches['embed_dim'])
    self.head = heads.make_head(self.model, self.patches, len(self.perms))

  def __call__(self, inputs, train):
    emb, endpoints = heads.embed_patches(self.trunk, inputs['patches'], train)
    idx = inputs['perm_index']                                    # [B, C]
    x = permute_embeddings(emb, jnp.asarray(self.perms.array)[idx])  # [B, C, 9, E]
    b, c = idx.shape
    logits = self.head(x.reshape(b * c, -1), train=train)
    return logits, endpoints


def make_model(config):
  """The jigsaw model; builds or loads the permutation set of config.jigsaw."""
  j = config.jigsaw
  table = permutations.get_permutations(j.num_permutations, j.method, j.seed)
  return JigsawModel(model=flax.core.FrozenDict(config.model),
                     patches=flax.core.FrozenDict(config.patches),
                     perms=PermutationTable(table))


def metrics_fn(outputs, targets):
  """Per-example loss/accuracy (and top5), image-major: f32[B * copies]."""
  return common.classification_metrics(outputs, targets.reshape(-1))


def validate_config(config):
  """ValueError for impossible jigsaw settings (called by config_lib.validate)."""
  patches_lib.validate_config(config)
  j = config.jigsaw
  if not isinstance(j.num_permutations, int) or not 2 <= j.num_permutations <= 362880:
    raise ValueError(f'config.jigsaw.num_permutations={j.num_permutations!r} must be an '
                     f'integer in [2, 9!]; presets: {list(permutations.PRESETS)}')
  try:
    permutations.resolve_method(j.num_permutations, j.method)
  except ValueError as e:
    raise ValueError(f'config.jigsaw.method: {e}') from None
  if j.sampling not in SAMPLINGS:
    raise ValueError(f'config.jigsaw.sampling={j.sampling!r}; allowed: {list(SAMPLINGS)}')
  if j.sampling == 'per_batch' and not 1 <= j.perms_per_step <= j.num_permutations:
    raise ValueError(f'config.jigsaw.perms_per_step={j.perms_per_step!r} must be in '
                     f'[1, num_permutations={j.num_permutations}]')
