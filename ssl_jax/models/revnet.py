"""RevNet50 as in the study (spec section 4.4), NHWC.

Root: a 7x7/2 conv to 64k channels (no BN/ReLU, and no weight decay: the module is named
`root_conv_nowd`, which the optimizer's mask excludes), then a zero-padded 3x3/2 max-pool.
Stages of (3, 4, 6, 3) reversible units at 64k, 128k, 256k, 512k channels, joined by
`pool_and_double`. Backprop is plain autodiff (the study does not recompute activations).
"""
from typing import Any, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models import layers

Dtype = Any


def dilated_mean_pool(x, window: int, rate: int):
  """Stride-1 mean over `window` x `window` taps `rate` pixels apart, padded at the end.

  x [N,H,W,C] -> [N,H,W,C]: out[i, j] = mean of x[i + r*a, j + r*b] for 0 <= a, b < window
  over the taps inside the image (padding not counted). Subsampled every window * rate
  pixels from the origin it equals SAME avg-pooling (window, stride = window) of x
  subsampled every `rate` pixels: the atrous form of pool_and_double's pool.
  """
  pad = ((0, 0), (0, rate * (window - 1)), (0, rate * (window - 1)), (0, 0))
  reduce = lambda v: jax.lax.reduce_window(
      v, jnp.zeros((), v.dtype), jax.lax.add, (1, window, window, 1), (1, 1, 1, 1), pad,
      window_dilation=(1, rate, rate, 1))
  total = reduce(x)
  count = reduce(jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype))
  return total / count


def pool_and_double(x, stride: int, atrous_rate: int = 0):
  """Average-pools (window = stride, SAME) and doubles channels with zeros.

  x [N,H,W,C] -> [N,ceil(H/stride),ceil(W/stride),2C]: C/2 zero channels in FRONT, the
  pooled x, C/2 zero channels at the BACK. The placement decides which features land in
  the next unit's x1 (first half) vs x2 (second half), so it is kept exactly.
  Padded pixels do not count in the average (TF's SAME avg-pool); stride 1 only doubles.
  atrous_rate > 0 (output_stride): the pool of a stride-`stride` stage removed by
  layers.atrous_plan, at stride 1 and dilated by atrous_rate (dilated_mean_pool); the
  size is kept.
  """
  if atrous_rate:
    x = dilated_mean_pool(x, stride, atrous_rate)
  elif stride > 1:
    x = nn.avg_pool(x, (stride, stride), strides=(stride, stride), padding='SAME',
                    count_include_pad=False)
  half = x.shape[-1] // 2
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (half, half)))


class RevUnit(nn.Module):
  """Reversible unit on C channels: [N,H,W,C] -> [N,H,W,C].

  x1, x2 = first/second channel halves; y1 = x1 + G(x2) with G a pre-activation
  bottleneck C/2 -> C/8 -> C/2 (stride 1, no shortcut); returns concat(x2, y1).
  """
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  dilation: int = 1  # Of the 3x3 conv (atrous stages).

  @nn.compact
  def __call__(self, x, train: bool):
    norm = layers.batch_norm(train=train, dtype=self.dtype, axis_name=self.bn_axis_name)
    c = x.shape[-1]
    x1, x2 = jnp.split(x, 2, axis=-1)
    g = nn.relu(norm(name='bn1')(x2))
    g = layers.conv(c // 8, 1, dtype=self.dtype, name='conv1')(g)
    g = nn.relu(norm(name='bn2')(g))
    g = layers.conv_fixed(g, c // 8, 3, 1, dtype=self.dtype, dilation=self.dilation,
                          name='conv2')
    g = nn.relu(norm(name='bn3')(g))
    g = layers.conv(c // 2, 1, dtype=self.dtype, name='conv3')(g)
    return jnp.concatenate([x2, x1 + g], axis=-1)


class RevNet(layers.Trunk):
  """RevNet50 trunk + logits layer; see layers.Trunk for the fields.

  `__call__(x f32[N,H,W,3], train) -> (logits f32[N,num_classes], endpoints)` with
  endpoints after_root, block1..block4 (NHWC, recorded before pooling) and pre_logits
  ([N,512k]), logits, all float32. At 224 px: after_root/block1 56, block2 28, block3 14,
  block4 7. patch_strides: root stride 1 and the last pool_and_double only doubles.
  output_stride (layers.atrous_plan): a removed stage stride turns its pool into a
  stride-1 dilated mean (rate before) and dilates every 3x3 conv of the stage (rate
  after); at 224 px with output_stride=8, block3 and block4 are 28x28.
  unit_endpoints (e.g. ('block3',)): also block3/unit1..unit6, each RevUnit's whole
  output, the concatenation concat(x2, x1 + G(x2)) of its two halves in the order the
  next unit splits them (the stage's pool_and_double precedes unit1), of block3's shape.
  """
  stage_sizes: ClassVar[tuple] = (3, 4, 6, 3)

  @classmethod
  def stages(cls):
    """{stage name: number of reversible units}: block1..block4 of (3, 4, 6, 3)."""
    return {f'block{i + 1}': n for i, n in enumerate(cls.stage_sizes)}

  @nn.compact
  def __call__(self, x, train: bool):
    endpoints = {}
    k, s = (3, 1) if self.small_input else (7, 1 if self.patch_strides else 2)
    # The root conv is a (learned) projection up to 64k channels; no BN/ReLU follows.
    x = layers.conv_fixed(x, 64 * self.width, k, s, dtype=self.dtype,
                          name='root_conv_nowd')
    if not self.small_input:
      x = layers.max_pool_fixed(x, 3, 2)
    endpoints['after_root'] = x

    pool_strides = (2, 2, 1 if self.patch_strides else 2)
    root_stride = s * (1 if self.small_input else 2)
    plan = layers.atrous_plan(root_stride, (1,) + pool_strides, self.output_stride,
                              'revnet50')
    with_units = layers.check_unit_endpoints(self.unit_endpoints, self.stages(), 'revnet50')
    for i, (n, (stride, rate0, rate)) in enumerate(zip(self.stage_sizes, plan)):
      stage = f'block{i + 1}'
      if i > 0:
        x = pool_and_double(x, pool_strides[i - 1], atrous_rate=rate0 if stride == 1 and
                            pool_strides[i - 1] > 1 else 0)
      for j in range(n):
        x = RevUnit(dtype=self.dtype, bn_axis_name=self.bn_axis_name, dilation=rate,
                    name=f'{stage}_unit{j + 1}')(x, train)
        if stage in with_units:  # The unit's whole output concat(x2, y1).
          endpoints[layers.unit_name(stage, j + 1)] = x
      endpoints[stage] = x

    x = layers.batch_norm(train=train, dtype=self.dtype, axis_name=self.bn_axis_name)(
        name='final_bn')(x)
    if self.last_relu:
      x = nn.relu(x)
    x = layers.global_mean(x)
    endpoints['pre_logits'] = x
    return layers.finish(self, x, endpoints)


RevNet50 = RevNet
