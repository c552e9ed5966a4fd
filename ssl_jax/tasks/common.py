"""Pieces shared by the task files: input scaling, the linear head, classification loss.

Never imports TensorFlow.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ssl_jax.models import layers


def to_minus_one_one(images):
  """u8[...] -> f32 in [-1, 1]: x / 255 mapped linearly (the study's `-1_to_1`)."""
  return images.astype(jnp.float32) * (2.0 / 255.0) - 1.0


def bn_axis(config):
  """The BatchNorm axis name for heads: 'data' with cross-device BN, else None."""
  return 'data' if config.model.cross_device_bn else None


def compute_dtype(config):
  return jnp.bfloat16 if config.model.dtype == 'bfloat16' else jnp.float32


def rgb_eval_fn(images):
  """The full-image evaluation input: u8[B, H, W, 3] -> f32[B, H, W, 3] in [-1, 1]."""
  return to_minus_one_one(images)


class LinearHead(nn.Module):
  """A Dense layer on one trunk endpoint (default pre_logits): the study's classifier.

  The revisiting study's task classifier is the trunk's own logits layer (a 1x1 conv
  with bias on pre-logits): Glorot-uniform kernel, zero bias; named `logits` here as
  there, so rotation / supervised / exemplar keep its parameters and initialiser.
  `__call__(endpoints, inputs, train) -> f32[N, features]`.
  """
  features: int
  endpoint: str = 'pre_logits'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, endpoints, inputs, train):
    del inputs, train
    x = endpoints[self.endpoint]
    return layers.logits_layer(self.features, dtype=self.dtype)(x).astype(jnp.float32)


def classification_metrics(logits, labels):
  """Per-example softmax cross-entropy, top-1 and top-5 correctness.

  Args:
    logits: f32[N, K].
    labels: i32[N].
  Returns:
    dict of f32[N]: `loss`, `accuracy` (top-1 as 0/1) and, when K > 5, `top5`.
  """
  logits = logits.astype(jnp.float32)
  out = {
      'loss': optax.softmax_cross_entropy_with_integer_labels(logits, labels),
      'accuracy': (jnp.argmax(logits, -1) == labels).astype(jnp.float32),
  }
  if logits.shape[-1] > 5:
    _, top5 = jax.lax.top_k(logits, 5)
    out['top5'] = jnp.any(top5 == labels[:, None], axis=-1).astype(jnp.float32)
  return out


def classification_loss(logits, targets, axis_name=None):
  """The task loss of classification pretexts: (mean CE on this device, per-example metrics).

  Args:
    logits: f32[N, K], image-major.
    targets: i32[N] or i32[B, c] (flattened image-major).
    axis_name: unused (the mean over devices is the engine's).
  """
  del axis_name
  per_example = classification_metrics(logits, targets.reshape(-1))
  return jnp.mean(per_example['loss']), per_example


INPUT_MODES = ('rgb', 'gray3', 'lab_l')


def apply_input_mode(images, mode):
  """A member's input mode on uint8 images (before its pretext stage).

  Args:
    images: u8[..., H, W, 3] sRGB (any leading dims: views).
    mode: 'rgb' (unchanged), 'gray3' (ITU-R BT.601 luma, as to_gray's luma weights,
      rounded, in all three channels) or 'lab_l' (CIE L of Lab (D65, as skimage),
      rounded to u8 as L * 255 / 100, in all three channels: an RGB task's usual input
      x / 127.5 - 1 then equals colorization's (L - 50) / 50 up to that rounding:
      Doersch and Zisserman's input harmonization).
  Returns:
    u8 array of the same shape.
  Raises:
    ValueError for an unknown mode.
  """
  if mode == 'rgb':
    return images
  if mode not in INPUT_MODES:
    raise ValueError(f'input mode {mode!r}; allowed: {list(INPUT_MODES)}')
  if mode == 'gray3':
    weights = jnp.asarray((0.2989, 0.5870, 0.1140), jnp.float32)
    y = jnp.sum(images.astype(jnp.float32) * weights, axis=-1, keepdims=True)
  else:
    from ssl_jax.tasks import color  # pylint: disable=g-import-not-at-top
    y = color.rgb_to_lab(images)[..., :1] * (255.0 / 100.0)
  y = jnp.clip(jnp.round(y), 0, 255).astype(jnp.uint8)
  return jnp.broadcast_to(y, images.shape)
