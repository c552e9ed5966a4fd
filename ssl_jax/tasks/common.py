"""Pieces shared by the task modules: input scaling and the classification metrics."""
import jax
import jax.numpy as jnp
import optax


def to_minus_one_one(images):
  """u8[...,H,W,C] -> f32 in [-1, 1]: x / 255 mapped linearly (the study's `-1_to_1`)."""
  return images.astype(jnp.float32) * (2.0 / 255.0) - 1.0


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


def make_trunk(model_config, num_classes):
  """The trunk named by `config.model` (a dict or ConfigDict).

  Call in a task model's `setup` as `self.trunk = make_trunk(...)`, so the
  trunk's parameters live under params['trunk'] in every task (linear
  evaluation relies on it).
  """
  # Deferred import keeps `ssl_jax.tasks.common` importable without the models.
  from ssl_jax import models  # pylint: disable=g-import-not-at-top
  m = model_config
  return models.create_model(
      m['name'], num_classes=num_classes, width=m['width'], dtype=m['dtype'],
      patch_strides=m['patch_strides'], small_input=m['small_input'],
      last_relu=m['last_relu'],
      bn_axis_name='data' if m['cross_device_bn'] else None)
