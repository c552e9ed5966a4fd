"""Rotation prediction (Gidaris et al. 2018), as in the revisiting study.

Every source image yields its four rotations, 0, 90, 180 and 270 degrees
counter-clockwise (label k <=> np.rot90(image, k)), all in the same batch, so the
four copies share one BatchNorm batch as in the study. The classifier is a Dense
layer with 4 outputs on pre-logits (the study's trunk logits layer: Glorot-uniform
kernel, zero bias). Exact rotations: no interpolation.

Settings (config.tasks.rotation):
  rotations  'all': the four rotations of every image (the study, Gidaris);
             'random_one': one random rotation per image (VISSL). Evaluation
             always scores all four.
"""
import jax
import jax.numpy as jnp

from ssl_jax import tasks
from ssl_jax.tasks import common

NUM_ROTATIONS = 4
MODES = ('all', 'random_one')


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


def make_pretext(mode):
  """(rng, batch, *, train) -> ({'image': f32[B, n, H, W, C] in [-1, 1]}, i32[B, n]).

  n = 4 (every rotation) or, for mode 'random_one' at training, 1 (a random one).
  """
  def pretext(rng, batch, *, train):
    images = batch['image']
    b = images.shape[0]
    rotated, labels = rotate4(images)
    rotated = rotated.reshape((b, NUM_ROTATIONS) + images.shape[1:])
    labels = labels.reshape(b, NUM_ROTATIONS)
    if train and mode == 'random_one':
      k = jax.random.randint(rng, (b,), 0, NUM_ROTATIONS)
      rotated = jnp.take_along_axis(rotated, k[:, None, None, None, None], axis=1)
      labels = k[:, None].astype(jnp.int32)
    return {'image': common.to_minus_one_one(rotated)}, labels
  return pretext


@tasks.register('rotation')
def build(config):
  s = tasks.settings(config, 'rotation')

  def validate(config):
    if s.rotations not in MODES:
      raise ValueError(f'config.tasks.rotation.rotations={s.rotations!r}; allowed: '
                       f'{list(MODES)}')

  return tasks.Task(
      name='rotation', settings=s, num_views=1, pretext=make_pretext(s.rotations),
      head=common.LinearHead(NUM_ROTATIONS, dtype=common.compute_dtype(config)),
      loss=common.classification_loss,
      eval_input=tasks.EvalInput('rgb', common.rgb_eval_fn), validate=validate)
