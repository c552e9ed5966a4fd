"""Model zoo: the study's trunks (ResNet50 v1/v2, RevNet50, VGG19-BN) in Flax linen,
plus Goyal et al. 2019's AlexNet-BN (`alexnet_bn`, the low-capacity model).

Every model is `__call__(x f32[N,H,W,C], train: bool) -> (output, endpoints)`. With
num_classes > 0 the output is the logits f32[N,num_classes] of a Dense `logits` layer on
pre-logits (the study's classifier); with num_classes=0 the model is the trunk alone
and the output is pre_logits (task heads live outside the trunk, see ssl_jax.tasks).
Endpoints are float32, NHWC except the 2-D `pre_logits` and `logits`. The input may
have any channel count C (RGB 3, the L channel of Lab 1): the root conv adapts.
Parameters are float32; `dtype='bfloat16'` only changes the compute dtype.
`tiny_cnn` is a three-conv test model (not the study's). `output_stride` (ResNet50 v1/v2,
RevNet50, tiny_cnn) keeps the last endpoints at a stride of 8 or 16 with dilated
(atrous) convs, for dense per-pixel heads; `endpoint_strides` tells each endpoint's
stride. `unit_endpoints` (a tuple of stage names; `stages`, `unit_endpoint_names`) adds
the output of every unit of those stages as endpoints `<stage>/unit<j>`.
Never imports TensorFlow.
"""
import numbers

import jax.numpy as jnp

from ssl_jax.models import alexnet
from ssl_jax.models import layers
from ssl_jax.models import resnet
from ssl_jax.models import revnet
from ssl_jax.models import tiny
from ssl_jax.models import vgg

MODELS = {
    'resnet50_v1': resnet.ResNet50V1,
    'resnet50_v2': resnet.ResNet50V2,
    'revnet50': revnet.RevNet50,
    'vgg19_bn': vgg.VGG19BN,
    'tiny_cnn': tiny.TinyCNN,
    'alexnet_bn': alexnet.AlexNetBN,
}

ENDPOINTS = {
    'resnet50_v1': layers.RESNET_ENDPOINTS,
    'resnet50_v2': layers.RESNET_ENDPOINTS,
    'revnet50': layers.RESNET_ENDPOINTS,
    'vgg19_bn': vgg.ENDPOINTS,
    'tiny_cnn': tiny.ENDPOINTS,
    'alexnet_bn': alexnet.ENDPOINTS,
}

# {model: {stage: number of units}} for unit_endpoints (alexnet_bn has no stages).
STAGES = {
    'resnet50_v1': resnet.ResNet50V1.stages(),
    'resnet50_v2': resnet.ResNet50V2.stages(),
    'revnet50': revnet.RevNet50.stages(),
    'vgg19_bn': dict(vgg.STAGES),
    'tiny_cnn': dict(tiny.STAGES),
    'alexnet_bn': {},
}


def trunk_endpoints(name):
  """The endpoints of the bare trunk `name` (num_classes=0): ENDPOINTS without logits."""
  return tuple(e for e in ENDPOINTS[name] if e != 'logits')


def _check_name(name):
  if name not in MODELS:
    raise ValueError(f'model name={name!r} is not a known model; allowed: {sorted(MODELS)}')


def stages(name):
  """The stage names of model `name` usable in unit_endpoints, in order (may be empty).

  Raises:
    ValueError: unknown name.
  """
  _check_name(name)
  return tuple(STAGES[name])


def unit_endpoint_names(name, stage):
  """('<stage>/unit1', ..., '<stage>/unit<n>'): the unit endpoints of `stage` of `name`.

  With unit_endpoints=(stage,), the model returns these endpoints (in this order, just
  before `stage`, which equals the last). Units: the residual units (ResNet v1/v2), the
  reversible units (RevNet: a unit's output is concat(x2, x1 + G(x2)), both halves),
  the conv+BN+ReLU layers of a block (VGG), the one conv of a stage (tiny_cnn).
  Raises:
    ValueError: unknown name, or `stage` is not a stage of it (alexnet_bn has none).
  """
  _check_name(name)
  if not isinstance(stage, str) or stage not in STAGES[name]:
    raise ValueError(f'stage={stage!r} is not a stage of {name}; allowed: '
                     f'{list(STAGES[name]) or "none (it has no stages of units)"}')
  return tuple(layers.unit_name(stage, j + 1) for j in range(STAGES[name][stage]))


DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def create_trunk(model_config, **overrides):
  """The trunk alone (num_classes=0) described by a `config.model` section.

  Args:
    model_config: a mapping with name, width, dtype, patch_strides, small_input,
      last_relu and optionally output_stride and unit_endpoints (absent in configs
      older than them: 0 and ()).
    **overrides: create_model arguments that replace the section's (e.g. dtype,
      bn_axis_name, width).
  Returns:
    a flax Module, see create_model.
  Raises:
    ValueError: as create_model.
  """
  m = model_config
  units = m.get('unit_endpoints', ()) or ()
  kwargs = dict(width=m['width'], dtype=m['dtype'], patch_strides=m['patch_strides'],
                small_input=m['small_input'], last_relu=m['last_relu'],
                output_stride=int(m.get('output_stride', 0) or 0),
                unit_endpoints=tuple(units) if isinstance(units, (list, tuple)) else units)
  kwargs.update(overrides)
  return create_model(m['name'], num_classes=0, **kwargs)


# Nominal stride of the first stages (after_root's stride comes from the root).
_STAGE_STRIDES = {'resnet': (1, 2, 2, 2), 'resnet_patch': (1, 2, 2, 1), 'tiny_cnn': (2, 2)}


def endpoint_strides(name, *, small_input=False, patch_strides=False, output_stride=0):
  """{endpoint: stride} of the spatial (4-D, NHWC) endpoints of the trunk `name`.

  An endpoint of stride s on an H x W input is ceil(H / s) x ceil(W / s) (fixed padding:
  every stride-2 step takes the ceiling), and its pixel (i, j) is centred on input pixel
  (s*i, s*j) for the ResNets and tiny_cnn (RevNet's 2x2 pools shift that by up to
  (s - 1) / 2). VGG's fc6 ([N, 1, 1, C] whatever the input) and alexnet_bn's fc6 (an
  unpadded conv) are not listed. alexnet_bn has strides only with small_input (its
  conv1..conv5 at 1, 2, 4, 4, 4): the full model's unpadded 11x11/4 conv and pools give
  floor-size maps off that grid (conv5 13x13 at 227 px, not ceil(227/16) = 15).
  Unit endpoints (unit_endpoints) have their stage's stride and are not listed.

  Args:
    name: one of MODELS.
    small_input, patch_strides: as create_model.
    output_stride: as create_model (0: the model's own).
  Returns:
    dict endpoint name -> int stride, in endpoint order.
  Raises:
    ValueError: unknown name, an output_stride the model cannot reach (see
      create_model), or alexnet_bn without small_input (or with patch_strides).
  """
  _check_name(name)
  if name == 'alexnet_bn':
    alexnet.check_options(patch_strides=patch_strides, output_stride=output_stride)
    if not small_input:
      raise ValueError('alexnet_bn with small_input=False has no endpoint strides: its '
                       'unpadded 11x11/4 conv1 and pools give floor-size maps (conv5 13x13 '
                       'at 227 px, not ceil(227/16) = 15); allowed: small_input=True')
    return dict(alexnet.SMALL_INPUT_STRIDES)
  if name == 'vgg19_bn':
    if output_stride:
      raise ValueError(f'output_stride={output_stride!r} is not supported by vgg19_bn '
                       '(allowed: 0); use resnet50_v1, '
                       'resnet50_v2, revnet50 or tiny_cnn')
    return {f'block{i + 1}': 2**i for i in range(5)}
  if name == 'tiny_cnn':
    root, stages, names = (1 if small_input or patch_strides else 2), (2, 2), ('block1',
                                                                               'block2')
  else:
    root = 1 if small_input else (2 if patch_strides else 4)
    stages = _STAGE_STRIDES['resnet_patch' if patch_strides else 'resnet']
    names = tuple(f'block{i + 1}' for i in range(4))
  label = name + (' with small_input' if small_input else
                  ' with patch_strides' if patch_strides else '')
  out = {'after_root': root}
  current = root
  for n, (stride, _, _) in zip(names, layers.atrous_plan(root, stages, output_stride, label)):
    current *= stride
    out[n] = current
  return out


def _is_int(value):
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _dtype_name(dtype):
  try:
    return jnp.dtype(dtype).name
  except TypeError:
    return None


def create_model(name, *, num_classes, width=4, dtype='float32', patch_strides=False,
                 small_input=False, last_relu=True, bn_axis_name=None, output_stride=0,
                 unit_endpoints=()):
  """Builds the trunk `name` (see MODELS), with a `num_classes`-way logits layer if > 0.

  Args:
    name: one of MODELS.
    num_classes: width of the logits layer; 0 = the trunk alone (no logits layer,
      output pre_logits), as the pretext tasks use it.
    width: widening factor k >= 1 (k=4: standard ResNet50 and Goyal's AlexNet-BN; VGG
      width is 8k, so k=8 is vanilla VGG19).
    dtype: compute dtype, 'float32' or 'bfloat16' (params are float32 either way).
    patch_strides: the patch tasks' trunk: root conv stride 1 and last stage stride 1
      (ResNet/RevNet). Ignored by vgg19_bn, as in the study; alexnet_bn rejects it.
    small_input: 32/64-px full images: 3x3 stride-1 root conv, no root max-pool
      (ResNet/RevNet; ignored by vgg19_bn; alexnet_bn: our small-image variant, a 3x3/1
      conv1, padded pools and a 4x4 fc6, see models.alexnet).
    last_relu: ReLU after the final BN (resnet50_v2, revnet50; False = the paper's "(-)"
      models). resnet50_v1 and alexnet_bn reject False (the study does for v1); vgg19_bn
      ignores it (the study never passes it to VGG, whose pre-logits are always
      post-ReLU).
    bn_axis_name: axis name for cross-device BatchNorm statistics; None = per-device
      statistics (the study's per-core BN).
    output_stride: 0 = the model's own strides. N > 0 (resnet50_v1/v2, revnet50,
      tiny_cnn): the stages that would take the stride past N run at stride 1 with
      dilated 3x3 convs (atrous; layers.atrous_plan), so the last endpoints have stride
      N, e.g. 8 at 224 px: block3/block4 28x28. N must be a stride the model passes
      through: ResNet/RevNet {4, 8, 16, 32} ({1, 2, 4, 8} with small_input, {2, 4, 8}
      with patch_strides), tiny_cnn {2, 4, 8} ({1, 2, 4}). The parameters are the same
      as without it. vgg19_bn, alexnet_bn: not supported (ValueError).
    unit_endpoints: tuple of stage names (see `stages`), e.g. ('block3',): the output of
      every unit of those stages becomes an endpoint `<stage>/unit<j>` (names from
      `unit_endpoint_names`), each of the stage output's shape; () = none. The
      parameters are the same.

  Returns:
    An unbound flax.linen Module.

  Raises:
    ValueError: naming the bad value and the allowed values.
  """
  _check_name(name)
  if not _is_int(num_classes) or num_classes < 0:
    raise ValueError(f'num_classes={num_classes!r} must be an integer >= 0 '
                     '(0: the trunk alone, without a logits layer)')
  if not _is_int(width) or width < 1:
    raise ValueError(f'width={width!r} must be an integer >= 1 (widening factor k; '
                     'k=4 is the standard ResNet50)')
  dtype_name = _dtype_name(dtype)
  if dtype_name not in DTYPES:
    raise ValueError(f'dtype={dtype!r} is not supported; allowed: {sorted(DTYPES)}')
  if name == 'resnet50_v1' and not last_relu:
    raise ValueError(f'last_relu={last_relu!r} is not allowed for resnet50_v1 (the study '
                     'rejects it: v1 has no final BN and always ends in a ReLU); allowed: '
                     'last_relu=True, or use resnet50_v2/revnet50 for the "(-)" variants')
  if not _is_int(output_stride) or output_stride < 0:
    raise ValueError(f'output_stride={output_stride!r} must be an integer >= 0 (0: the '
                     "model's own)")
  units = layers.check_unit_endpoints(unit_endpoints, STAGES[name], name)
  if name == 'alexnet_bn':
    alexnet.check_options(patch_strides=patch_strides, last_relu=last_relu,
                          output_stride=output_stride)
  else:
    endpoint_strides(name, small_input=small_input, patch_strides=patch_strides,
                     output_stride=int(output_stride))  # Raises for unreachable values.
  return MODELS[name](num_classes=int(num_classes), width=int(width), dtype=DTYPES[dtype_name],
                      patch_strides=bool(patch_strides), small_input=bool(small_input),
                      last_relu=bool(last_relu), bn_axis_name=bn_axis_name,
                      output_stride=int(output_stride), unit_endpoints=units)
