"""The patch tasks' classifier ("AlexNet fc7-fc8" head of the study).

concatenated patch embeddings -> Dense(4096) -> BN -> ReLU -> Dropout(0.5, train
only) -> Dense(num_classes). Both kernels: truncated-normal std 0.005; first
bias 0.1, last bias 0 (the study's `fully_connected`). BN momentum 0.997 and
epsilon 1e-5 (not the trunk's 0.99 / 1e-3). The task model names this module
'head', so HEAD_WEIGHT_DECAY = {'head': 5e-4} reaches exactly these kernels.
"""
import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.tasks import common

HEAD_WEIGHT_DECAY = {'head': 5e-4}


def _trunc_normal(std):
  # Like tf.truncated_normal_initializer: a normal of std `std` cut at +-2 std,
  # not rescaled (the sample std is 0.88 * std).
  return nn.initializers.truncated_normal(stddev=std)


class FcHead(nn.Module):
  """f32[N, D] -> logits f32[N, num_classes]; dropout uses the 'dropout' rng."""
  num_classes: int
  hidden: int = 4096
  dropout_rate: float = 0.5
  init_std: float = 0.005
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_trunc_normal(self.init_std),
                 bias_init=nn.initializers.constant(0.1), name='fc1')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.997, epsilon=1e-5,
                     axis_name=self.bn_axis_name, dtype=self.dtype, name='bn')(x)
    x = nn.relu(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype,
                 kernel_init=_trunc_normal(self.init_std),
                 bias_init=nn.initializers.zeros, name='fc2')(x)
    return x.astype(jnp.float32)


def make_head(model, patches, num_classes):
  """FcHead from config.model and config.patches; assign it to `self.head`."""
  return FcHead(num_classes=num_classes, hidden=patches['head_hidden'],
                dropout_rate=patches['dropout_rate'],
                bn_axis_name='data' if model['cross_device_bn'] else None,
                dtype=jnp.bfloat16 if model['dtype'] == 'bfloat16' else jnp.float32)


def embed_patches(trunk, patches, train):
  """All patches through the trunk in one batch (one BN batch of B*9, as the study).

  Args:
    trunk: the bound trunk module.
    patches: f32[B, n, p, p, 3].
    train: BN mode.
  Returns:
    (embeddings f32[B, n, E], trunk endpoints over the B*n patches, image-major).
  """
  b, n = patches.shape[:2]
  emb, endpoints = trunk(patches.reshape((b * n,) + patches.shape[2:]), train=train)
  return emb.reshape(b, n, emb.shape[-1]), endpoints
