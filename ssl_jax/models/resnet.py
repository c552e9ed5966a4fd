"""ResNet50 v1 and v2 as in the study (spec section 4.2/4.3), NHWC.

Widths for widening factor k: root conv 16k, stage outputs 64k/128k/256k/512k, bottleneck
inner width = stage width / 4, pre-logits 512k. k=4 is the standard ResNet50.
The stride of a bottleneck sits on its 3x3 conv ("v1.5"), never on the first 1x1.
`output_stride` (layers.atrous_plan): stages past it run at stride 1 with dilated 3x3
convs; the stage's first unit (whose stride is removed) keeps the previous rate, its
later units take the rate times the removed stride (DeepLab / TF-slim semantics).
"""
from typing import Any, ClassVar, Optional

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models import layers

Dtype = Any


class BottleneckV1(nn.Module):
  """Post-activation bottleneck: [N,H,W,Cin] -> [N,H/s,W/s,features]."""
  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  dilation: int = 1  # Of the 3x3 conv (atrous stages, see layers.atrous_plan).

  @nn.compact
  def __call__(self, x, train: bool):
    norm = layers.batch_norm(train=train, dtype=self.dtype, axis_name=self.bn_axis_name)
    conv = lambda f, k, s, name: layers.conv(f, k, s, dtype=self.dtype, name=name)
    shortcut = x
    if self.strides > 1 or x.shape[-1] != self.features:
      # 1x1 convs: TF 'SAME' equals VALID for k=1, whatever the stride.
      shortcut = conv(self.features, 1, self.strides, 'proj_conv')(x)
      shortcut = norm(name='proj_bn')(shortcut)
    y = conv(self.features // 4, 1, 1, 'conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = layers.conv_fixed(y, self.features // 4, 3, self.strides, dtype=self.dtype,
                          dilation=self.dilation, name='conv2')
    y = nn.relu(norm(name='bn2')(y))
    y = conv(self.features, 1, 1, 'conv3')(y)
    y = norm(name='bn3')(y)
    return nn.relu(shortcut + y)


class BottleneckV2(nn.Module):
  """Pre-activation bottleneck: [N,H,W,Cin] -> [N,H/s,W/s,features].

  The projection shortcut (if any) reads the pre-activated input; the identity shortcut
  reads the raw input; no activation after the sum.
  """
  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  dilation: int = 1  # Of the 3x3 conv (atrous stages, see layers.atrous_plan).

  @nn.compact
  def __call__(self, x, train: bool):
    norm = layers.batch_norm(train=train, dtype=self.dtype, axis_name=self.bn_axis_name)
    conv = lambda f, k, s, name: layers.conv(f, k, s, dtype=self.dtype, name=name)
    shortcut = x
    x = nn.relu(norm(name='preact_bn')(x))
    if self.strides > 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, self.strides, 'proj_conv')(x)
    y = conv(self.features // 4, 1, 1, 'conv1')(x)
    y = nn.relu(norm(name='bn2')(y))
    y = layers.conv_fixed(y, self.features // 4, 3, self.strides, dtype=self.dtype,
                          dilation=self.dilation, name='conv2')
    y = nn.relu(norm(name='bn3')(y))
    y = conv(self.features, 1, 1, 'conv3')(y)
    return shortcut + y


class ResNet(layers.Trunk):
  """ResNet50 trunk + logits layer; see layers.Trunk for the fields.

  `__call__(x f32[N,H,W,C], train) -> (logits f32[N,num_classes], endpoints)` with
  endpoints after_root, block1..block4 (NHWC) and pre_logits, logits ([N,C]), all float32
  (num_classes=0: the trunk alone, returning pre_logits and no logits endpoint).
  At 224 px: after_root/block1 56x56, block2 28, block3 14, block4 7; with
  output_stride=8: block3 and block4 28 (dilation 2 and 4), 16: block4 14.
  unit_endpoints (e.g. ('block3',)): also block3/unit1..unit6, each bottleneck's output
  (v1: after its final ReLU; v2: the sum, un-activated), all of block3's shape.
  """
  version: ClassVar[str] = 'v2'
  stage_sizes: ClassVar[tuple] = (3, 4, 6, 3)

  @classmethod
  def stages(cls):
    """{stage name: number of residual units}: block1..block4 of (3, 4, 6, 3)."""
    return {f'block{i + 1}': n for i, n in enumerate(cls.stage_sizes)}

  @nn.compact
  def __call__(self, x, train: bool):
    v1 = self.version == 'v1'
    if v1 and not self.last_relu:
      raise ValueError('last_relu=False is not supported by resnet50_v1 (the study '
                       'rejects it: v1 always ends in a ReLU); use resnet50_v2.')
    unit = BottleneckV1 if v1 else BottleneckV2
    norm = layers.batch_norm(train=train, dtype=self.dtype, axis_name=self.bn_axis_name)
    endpoints = {}

    # Root: 7x7/2 conv (patch_strides: stride 1; small_input: 3x3/1, no max-pool).
    k, s = (3, 1) if self.small_input else (7, 1 if self.patch_strides else 2)
    x = layers.conv_fixed(x, 16 * self.width, k, s, dtype=self.dtype, name='root_conv')
    if v1:  # v2's root has no BN/ReLU: the first unit pre-activates it.
      x = nn.relu(norm(name='root_bn')(x))
    if not self.small_input:
      x = layers.max_pool_fixed(x, 3, 2)
    endpoints['after_root'] = x

    # Stage 1 keeps the resolution; stages 2-4 stride their first unit (patch: 2, 2, 1).
    strides = (1, 2, 2, 1 if self.patch_strides else 2)
    root_stride = s * (1 if self.small_input else 2)
    plan = layers.atrous_plan(root_stride, strides, self.output_stride,
                              f'resnet50_{self.version}')
    with_units = layers.check_unit_endpoints(self.unit_endpoints, self.stages(),
                                             f'resnet50_{self.version}')
    for i, (n, (stride, rate0, rate)) in enumerate(zip(self.stage_sizes, plan)):
      stage = f'block{i + 1}'
      for j in range(n):
        x = unit(64 * self.width * 2**i, stride if j == 0 else 1, dtype=self.dtype,
                 bn_axis_name=self.bn_axis_name, dilation=rate0 if j == 0 else rate,
                 name=f'{stage}_unit{j + 1}')(x, train)
        if stage in with_units:  # The residual unit's output (v2: before any final BN).
          endpoints[layers.unit_name(stage, j + 1)] = x
      endpoints[stage] = x

    if not v1:  # block4 is recorded before the final BN(+ReLU).
      x = norm(name='final_bn')(x)
      if self.last_relu:
        x = nn.relu(x)
    x = layers.global_mean(x)
    endpoints['pre_logits'] = x
    return layers.finish(self, x, endpoints)


class ResNet50V1(ResNet):
  """ResNet50 v1 (post-activation, BN on the projection shortcut, no final BN)."""
  version: ClassVar[str] = 'v1'


class ResNet50V2(ResNet):
  """ResNet50 v2 (pre-activation, final BN then ReLU iff last_relu)."""
  version: ClassVar[str] = 'v2'
