"""Relative patch location (Doersch et al. 2015) as in the revisiting study.

Each source image gives 9 standardised patches (patches.py), embedded by the
shared trunk (its 1000-d logits layer). Every image yields all 8 (neighbour,
centre) pairs (i, 4), i in NEIGHBOURS (grid index = row * 3 + col); an example
is concat(emb_i, emb_centre) and its label the position of i in NEIGHBOURS
(0..7), so copies = 8 at train and eval. None of Doersch's gap / colour tricks.
"""
import flax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ssl_jax.tasks import common
from ssl_jax.tasks import heads
from ssl_jax.tasks import patches as patches_lib

HEAD_WEIGHT_DECAY = heads.HEAD_WEIGHT_DECAY
CENTRE = 4
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)   # Label k <=> neighbour NEIGHBOURS[k].


def copies(config, train):
  del config, train
  return len(NEIGHBOURS)


def make_pretext_fn(config, train):
  """(rng, u8[B,S,S,3], labels) -> (patches f32[B, 9, p, p, 3], targets i32[B, 8]).

  targets[b, k] = k; the dataset labels are unused.
  """

  def pretext(rng, images, labels=None):
    del labels
    patches = patches_lib.make_pretext_patches(config, rng, images, train)
    targets = jnp.broadcast_to(jnp.arange(len(NEIGHBOURS), dtype=jnp.int32),
                               (images.shape[0], len(NEIGHBOURS)))
    return patches, targets

  return pretext


def pair_embeddings(emb):
  """[B, 9, E] -> [B, 8, 2E]: example k = concat(emb[:, NEIGHBOURS[k]], emb[:, 4])."""
  neighbours = emb[:, np.asarray(NEIGHBOURS)]                      # [B, 8, E]
  centre = jnp.broadcast_to(emb[:, CENTRE:CENTRE + 1], neighbours.shape)
  return jnp.concatenate([neighbours, centre], axis=-1)


class RelativePatchLocationModel(nn.Module):
  """patches f32[B, 9, p, p, 3] -> (logits f32[B*8, 8], trunk endpoints)."""
  model: flax.core.FrozenDict    # config.model (hashable)
  patches: flax.core.FrozenDict  # config.patches

  def setup(self):
    # The trunk's logits layer (embed_dim wide, linear) is the patch embedding.
    self.trunk = common.make_trunk(self.model, self.patches['embed_dim'])
    self.head = heads.make_head(self.model, self.patches, len(NEIGHBOURS))

  def __call__(self, inputs, train):
    emb, endpoints = heads.embed_patches(self.trunk, inputs, train)
    x = pair_embeddings(emb)
    logits = self.head(x.reshape(-1, x.shape[-1]), train=train)
    return logits, endpoints


def make_model(config):
  return RelativePatchLocationModel(model=flax.core.FrozenDict(config.model),
                                    patches=flax.core.FrozenDict(config.patches))


def metrics_fn(outputs, targets):
  """Per-example loss/accuracy (and top5), image-major: f32[B * 8]."""
  return common.classification_metrics(outputs, targets.reshape(-1))


def validate_config(config):
  """ValueError for an impossible patch geometry (called by config_lib.validate)."""
  patches_lib.validate_config(config)
