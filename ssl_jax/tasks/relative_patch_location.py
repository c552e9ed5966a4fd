"""Relative patch location (Doersch et al. 2015) as in the revisiting study.

Each source image gives 9 standardised patches (patches.py), embedded by the shared
trunk and the head's per-patch `embedding` (1000-d in the study). Every image yields
all 8 (neighbour, centre) pairs (i, 4), i in NEIGHBOURS (grid index = row * 3 + col);
an example is concat(emb_i, emb_centre) and its label the position of i in NEIGHBOURS
(0..7), so there are 8 examples per image at train and eval. None of Doersch's gap /
colour tricks (the study has none).

Settings (config.tasks.relative_patch_location): grid, patch_size, jitter, embed_dim,
head_hidden, dropout_rate (see configs/relative_patch_location.py).
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ssl_jax import tasks
from ssl_jax.tasks import common
from ssl_jax.tasks import heads
from ssl_jax.tasks import patches as patches_lib

CENTRE = 4
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)   # Label k <=> neighbour NEIGHBOURS[k].


def make_pretext(settings):
  """(rng, batch, *, train) -> ({'image': patches f32[B, 9, p, p, 3]}, targets i32[B, 8]).

  targets[b, k] = k; the dataset labels are unused.
  """
  def pretext(rng, batch, *, train):
    images = batch['image']
    patches = patches_lib.make_pretext_patches(settings, rng, images, train)
    targets = jnp.broadcast_to(jnp.arange(len(NEIGHBOURS), dtype=jnp.int32),
                               (images.shape[0], len(NEIGHBOURS)))
    return {'image': patches}, targets
  return pretext


def pair_embeddings(emb):
  """[B, 9, E] -> [B, 8, 2E]: example k = concat(emb[:, NEIGHBOURS[k]], emb[:, 4])."""
  neighbours = emb[:, np.asarray(NEIGHBOURS)]                      # [B, 8, E]
  centre = jnp.broadcast_to(emb[:, CENTRE:CENTRE + 1], neighbours.shape)
  return jnp.concatenate([neighbours, centre], axis=-1)


class RelativePatchLocationHead(nn.Module):
  """(endpoints over B*9 patches, inputs, train) -> logits f32[B*8, 8], image-major."""
  embed_dim: int
  head_hidden: int
  dropout_rate: float
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, endpoints, inputs, train):
    n = inputs['image'].shape[1]
    emb = heads.patch_embeddings(endpoints, n, self.embed_dim, self.dtype)
    x = pair_embeddings(emb)
    fc = heads.make_fc({'head_hidden': self.head_hidden, 'dropout_rate': self.dropout_rate},
                       len(NEIGHBOURS), self.bn_axis_name, self.dtype)
    return fc(x.reshape(-1, x.shape[-1]), train=train)


@tasks.register('relative_patch_location')
def build(config):
  s = tasks.settings(config, 'relative_patch_location')
  head = RelativePatchLocationHead(
      embed_dim=s.embed_dim, head_hidden=s.head_hidden, dropout_rate=s.dropout_rate,
      bn_axis_name=common.bn_axis(config), dtype=common.compute_dtype(config))
  return tasks.Task(
      name='relative_patch_location', settings=s, num_views=1, pretext=make_pretext(s),
      head=head, loss=common.classification_loss,
      eval_input=patches_lib.eval_input(s), weight_decay=heads.WEIGHT_DECAY,
      validate=lambda c: patches_lib.validate_settings(c, 'relative_patch_location'))
