"""Rotation prediction (Gidaris et al. 2018), as in the revisiting study.

Every source image yields its four rotations, 0, 90, 180 and 270 degrees
counter-clockwise (label k <=> np.rot90(image, k)), all in the same batch, so
the four copies share one BatchNorm batch as in the study. The classifier is
the trunk's own logits layer with 4 outputs.
"""
import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.tasks import common

NUM_ROTATIONS = 4


def copies(config, train):
  del config, train
  return NUM_ROTATIONS


def rotate4(images):
  """All four counter-clockwise rotations of every image, image-major.

  Args:
    images: [B, H, W, C] with H == W (any dtype).
  Returns:
    (rotated [4B, H, W, C], labels i32[4B]) where rotated[4b + k] =
    np.rot90(images[b], k) and labels[4b + k] = k. Exact: no interpolation.
  """
  if images.shape[1] != images.shape[2]:
    raise ValueError(f'rotation needs square images, got {images.shape[1:3]}')
  rots = [jnp.rot90(images, k, axes=(1, 2)) for k in range(NUM_ROTATIONS)]
  stacked = jnp.stack(rots, axis=1)                       # [B, 4, H, W, C]
  b = images.shape[0]
  labels = jnp.tile(jnp.arange(NUM_ROTATIONS, dtype=jnp.int32), b)
  return stacked.reshape((b * NUM_ROTATIONS,) + images.shape[1:]), labels


def make_pretext_fn(config, train):
  """(rng, u8[B,H,W,3], labels) -> (f32[4B,H,W,3] in [-1,1], i32[4B] rotation labels)."""
  del config, train  # The rotation stage is deterministic; augmentation is upstream.

  def pretext(rng, images, labels=None):
    del rng, labels
    rotated, rot_labels = rotate4(images)
    return common.to_minus_one_one(rotated), rot_labels

  return pretext


class RotationModel(nn.Module):
  """The trunk with a 4-way logits layer; outputs f32[N, 4]."""
  config: dict

  def setup(self):
    self.trunk = common.make_trunk(self.config['model'], NUM_ROTATIONS)

  def __call__(self, x, train):
    return self.trunk(x, train=train)


def make_model(config):
  return RotationModel(config={'model': dict(config.model)})


def metrics_fn(outputs, targets):
  return common.classification_metrics(outputs, targets)
