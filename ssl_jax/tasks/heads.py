"""The patch tasks' head: per-patch embedding, then the "AlexNet fc7-fc8" classifier.

The study embeds every patch with the trunk's logits layer (a Dense of `embed_dim`
= 1000 outputs on pre-logits, Glorot-uniform, zero bias, trunk weight decay 1e-4);
here that layer is the head's `embedding` submodule, since the trunk has no logits.
The classifier (`fc`, FcHead): concatenated patch embeddings -> Dense(4096) -> BN ->
ReLU -> Dropout(0.5, train only) -> Dense(num_classes). Both kernels: truncated-normal
std 0.005; first bias 0.1, last bias 0 (the study's `fully_connected`). BN momentum
0.997 and epsilon 1e-5 (not the trunk's 0.99 / 1e-3). WEIGHT_DECAY = {'fc': 5e-4}
reaches exactly the classifier's kernels, as the study's hard-coded 5e-4.
"""
import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models import layers

WEIGHT_DECAY = {'fc': 5e-4}
PATCH_SETTINGS = ('grid', 'patch_size', 'jitter', 'embed_dim', 'head_hidden',
                  'dropout_rate')


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


def patch_embeddings(endpoints, num_patches, embed_dim, dtype):
  """The per-patch embedding: Dense(embed_dim) named `embedding` on pre_logits.

  Call from inside a compact head. endpoints['pre_logits'] is f32[B * n, D] over all
  patches (image-major, one trunk pass); returns f32[B, n, embed_dim].
  """
  x = endpoints['pre_logits']
  emb = nn.Dense(embed_dim, kernel_init=layers.KERNEL_INIT, bias_init=nn.initializers.zeros,
                 dtype=dtype, param_dtype=jnp.float32, name='embedding')(x)
  emb = emb.astype(jnp.float32)
  return emb.reshape(-1, num_patches, embed_dim)


def make_fc(settings, num_classes, bn_axis_name, dtype):
  """The FcHead of a patch task's settings; call inside a compact head (name 'fc')."""
  return FcHead(num_classes=num_classes, hidden=settings['head_hidden'],
                dropout_rate=settings['dropout_rate'], bn_axis_name=bn_axis_name,
                dtype=dtype, name='fc')
