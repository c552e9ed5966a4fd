"""Building blocks shared by the model zoo (NHWC, Flax linen).

These reproduce TF1 `tf.layers` defaults as the study used them (spec section 4):
Glorot-uniform kernels, bias-free trunk convs, BN momentum 0.99 / epsilon 1e-3 (alexnet_bn
passes Goyal et al.'s 0.9 / 1e-5), and the "fixed padding" (explicit pad, then VALID) of
the TF ResNet code. Parameters are always float32; `dtype` only sets the compute dtype
(float32 or bfloat16).
"""
import functools
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

Dtype = Any

# tf.layers.conv2d / dense default kernel init (Flax's default is LeCun-normal).
KERNEL_INIT = nn.initializers.glorot_uniform()

# Endpoint names every ResNet-family trunk returns (VGG has its own list in vgg.py).
RESNET_ENDPOINTS = ('after_root', 'block1', 'block2', 'block3', 'block4',
                    'pre_logits', 'logits')


def _pair(k: Union[int, Sequence[int]]) -> tuple:
  return (k, k) if isinstance(k, int) else tuple(k)


def fixed_padding(x, kernel_size: Union[int, Sequence[int]], dilation: int = 1):
  """Pads H and W of x [N,H,W,C] with zeros: (k-1)//2 before, the rest after.

  Unlike TF/Flax 'SAME' (which puts the extra pixel after and pads nothing before when the
  stride divides the size), this is independent of the input size and the stride.
  With `dilation` r, k is the dilated kernel's extent (k - 1) * r + 1 (TF-slim's atrous
  convs pad the same way), so a stride-1 dilated conv keeps the size.
  """
  pads = []
  for k in _pair(kernel_size):
    total = (k - 1) * dilation
    pads.append((total // 2, total - total // 2))
  return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


def conv(features: int, kernel_size, strides=1, *, dtype: Dtype, padding='VALID',
         dilation: int = 1, groups: int = 1, name: Optional[str] = None) -> nn.Conv:
  """A bias-free trunk conv (Glorot-uniform kernel, float32 params, `dtype` compute).

  `dilation` r > 1 makes it atrous (taps r pixels apart); the parameters do not change.
  `groups` g > 1 (AlexNet's two-GPU convs): input and output channels split into g
  groups, each output group seeing only its input group; kernel [k, k, Cin/g, Cout].
  """
  return nn.Conv(features, _pair(kernel_size), strides=_pair(strides), padding=padding,
                 kernel_dilation=_pair(dilation), feature_group_count=groups,
                 use_bias=False, kernel_init=KERNEL_INIT, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


def conv_fixed(x, features: int, kernel_size: int, strides: int = 1, *, dtype: Dtype,
               name: str, dilation: int = 1, groups: int = 1):
  """Fixed padding then a VALID bias-free conv; call from inside a compact method.

  x [N,H,W,Cin] -> [N, ceil(H/strides), ceil(W/strides), features] for odd kernel sizes
  (any `dilation`: the padding covers the dilated kernel). `groups`: as conv.
  """
  return conv(features, kernel_size, strides, dtype=dtype, dilation=dilation, groups=groups,
              name=name)(fixed_padding(x, kernel_size, dilation))


def atrous_plan(root_stride: int, stage_strides: Sequence[int], output_stride: int = 0,
                model: str = 'model'):
  """Per-stage (stride, rate_before, rate_after) for an output stride (atrous convolution).

  The stages of a trunk nominally multiply the stride of their input (`root_stride`,
  that of after_root) by `stage_strides`. With output_stride = 0 every stage keeps its
  stride (rates 1). Otherwise, once the stride reaches output_stride, later stages run at
  stride 1 and their 3x3 convs are dilated instead (Chen et al., DeepLab; TF-slim's
  `output_stride`): a stage whose stride s is removed has rate_after = rate_before * s.
  Ops that consumed the stride (ResNet: the first unit's strided 3x3 conv and 1x1
  projection; RevNet: the average pool before the stage) run at stride 1 with
  rate_before; every later conv of the stage uses rate_after. In inference mode the
  dilated trunk's endpoints, subsampled every (stride ratio) pixels from the origin,
  equal the original trunk's (tested), so checkpoints transfer both ways.

  Returns:
    list of (stride, rate_before, rate_after) per stage.
  Raises:
    ValueError: output_stride not reachable: it must be 0 or one of the strides the
      nominal trunk passes through, from root_stride up to its own output stride.
  """
  reachable = [root_stride]
  for s in stage_strides:
    if s > 1:
      reachable.append(reachable[-1] * s)
  if isinstance(output_stride, bool) or not isinstance(output_stride, (int, np.integer)) or (
      output_stride and output_stride not in reachable):
    raise ValueError(f'output_stride={output_stride!r} is not reachable by {model}; allowed: '
                     f'0 (its own, {reachable[-1]}) or one of {reachable}')
  current, rate, plan = root_stride, 1, []
  for s in stage_strides:
    if output_stride and current * s > output_stride:
      plan.append((1, rate, rate * s))
      rate *= s
    else:
      plan.append((s, rate, rate))
      current *= s
  return plan


def batch_norm(*, train: bool, dtype: Dtype, axis_name: Optional[str], momentum: float = 0.99,
               epsilon: float = 1e-3):
  """nn.BatchNorm with tf.layers.batch_normalization defaults (call with name=...).

  `axis_name=None` gives per-device statistics (the study's per-core BN); a mesh/pmap axis
  name averages the statistics across that axis. momentum / epsilon: TF's 0.99 / 1e-3
  unless a model follows another source (alexnet_bn: Goyal's Caffe2 0.9 / 1e-5); momentum
  m means running = m * running + (1 - m) * batch (TF, Caffe2 and Flax agree).
  """
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=momentum, epsilon=epsilon,
      scale_init=nn.initializers.ones, bias_init=nn.initializers.zeros,
      dtype=dtype, param_dtype=jnp.float32, axis_name=axis_name)


def max_pool_fixed(x, window: int = 3, strides: int = 2):
  """The root max-pool: zero fixed padding, then a VALID max-pool.

  The padding is ZEROS, not -inf (TF pads with tf.pad before a VALID pool), which matters
  where the input can be negative (ResNet v2 and RevNet roots have no ReLU).
  x [N,H,W,C] -> [N, ceil(H/strides), ceil(W/strides), C].
  """
  x = fixed_padding(x, window)
  return nn.max_pool(x, (window, window), strides=(strides, strides), padding='VALID')


def global_mean(x):
  """[N,H,W,C] -> float32 [N,C]; accumulated in float32 even under bf16 compute."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def logits_layer(num_classes: int, *, dtype: Dtype) -> nn.Dense:
  """The classifier on pre-logits: the study's 1x1 conv with bias == Dense on [N,C].

  Named `logits`; its kernel is Glorot-uniform and its bias zero-initialised.
  """
  return nn.Dense(num_classes, use_bias=True, kernel_init=KERNEL_INIT,
                  bias_init=nn.initializers.zeros, dtype=dtype,
                  param_dtype=jnp.float32, name='logits')


def to_float32(logits, endpoints):
  """Casts the logits and every endpoint to float32 (the contract of every model)."""
  return (logits.astype(jnp.float32),
          {k: v.astype(jnp.float32) for k, v in endpoints.items()})


def finish(trunk, pre_logits, endpoints):
  """The end of every model: the logits layer on pre-logits, or none for a bare trunk.

  Call from inside the model's compact `__call__`. num_classes > 0: a Dense `logits`
  layer (the study's 1x1 conv with bias) and the `logits` endpoint; num_classes == 0:
  the trunk alone, whose output is pre_logits (task heads live outside the trunk).
  Returns (output f32[N, num_classes or D], endpoints, all float32).
  """
  if not trunk.num_classes:
    return to_float32(pre_logits, endpoints)
  logits = logits_layer(trunk.num_classes, dtype=trunk.dtype)(pre_logits)
  endpoints['logits'] = logits
  return to_float32(logits, endpoints)


class Trunk(nn.Module):
  """Fields shared by every model in the zoo (see ssl_jax.models.create_model).

  Attributes:
    num_classes: width of the logits layer; 0 = the trunk alone (no logits layer).
    width: widening factor k (k=4 is the standard ResNet50: 64 root filters, 2048-d
      pre-logits).
    dtype: compute dtype (jnp.float32 or jnp.bfloat16); parameters stay float32.
    patch_strides: the patch tasks' trunk (root conv stride 1, last stage stride 1).
    small_input: 32/64-px full images: 3x3 stride-1 root conv and no root max-pool.
    last_relu: ReLU after the final BN (ResNet v2 / RevNet); False = the paper's "(-)".
    bn_axis_name: axis name for cross-device BN statistics; None = per-device.
    output_stride: 0 = the model's own strides; N > 0: the stages that would take the
      stride past N run at stride 1 with dilated 3x3 convs (see atrous_plan), so the
      last endpoints keep stride N (dense heads: colorization). Parameters unchanged.
    unit_endpoints: stage names (e.g. ('block3',)) whose every unit's output is also an
      endpoint `<stage>/unit<j>` (j = 1..n, as the parameter names <stage>_unit<j>),
      recorded just before the stage endpoint, which equals the last unit's; () = none.
      Every unit of a stage has the stage output's shape. Parameters unchanged.
  """
  num_classes: int
  width: int = 4
  dtype: Dtype = jnp.float32
  patch_strides: bool = False
  small_input: bool = False
  last_relu: bool = True
  bn_axis_name: Optional[str] = None
  output_stride: int = 0
  unit_endpoints: tuple = ()


def unit_name(stage: str, j: int) -> str:
  """The endpoint name of unit j (1-based) of `stage`: '<stage>/unit<j>'."""
  return f'{stage}/unit{j}'


def check_unit_endpoints(unit_endpoints, stages, model: str) -> tuple:
  """Validates a Trunk's unit_endpoints against the model's stages.

  Args:
    unit_endpoints: the requested stage names (tuple or list of str).
    stages: dict stage name -> number of units, in order ({} for a model without stages).
    model: the model's name, for the message.
  Returns:
    the stage names as a tuple.
  Raises:
    ValueError: not a tuple/list of str, an unknown stage or a repeated one.
  """
  allowed = list(stages) or '() only: it has no stages of units'
  if isinstance(unit_endpoints, str) or not isinstance(unit_endpoints, (tuple, list)):
    raise ValueError(f'unit_endpoints={unit_endpoints!r} must be a tuple of stage names, e.g. '
                     f"('block3',); allowed stages of {model}: {allowed}")
  for stage in unit_endpoints:
    if not isinstance(stage, str) or stage not in stages:
      raise ValueError(f'unit_endpoints={tuple(unit_endpoints)!r}: {stage!r} is not a stage '
                       f'of {model}; allowed: {allowed}')
  if len(set(unit_endpoints)) != len(unit_endpoints):
    raise ValueError(f'unit_endpoints={tuple(unit_endpoints)!r} names a stage twice')
  return tuple(unit_endpoints)
