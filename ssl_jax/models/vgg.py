"""VGG19 with BatchNorm as in the study (spec section 4.5), NHWC.

Width w = 8k (k=8 is vanilla VGG19: 64 first-layer filters). No dropout (BN instead).
The study applies neither the patch-task strides nor a ReLU option to VGG: the fields
`patch_strides`, `small_input` and `last_relu` exist for a uniform interface and are
ignored here; `output_stride` is not supported (only 0: ValueError otherwise).
"""
import flax.linen as nn

from ssl_jax.models import layers

ENDPOINTS = ('block1', 'block2', 'block3', 'block4', 'block5', 'fc6', 'pre_logits',
             'logits')

# Convs per block; with unit_endpoints a block's units are its conv+BN+ReLU layers
# (all of the block's shape: 3x3 SAME stride 1, the block's width; the 2x2 max-pool
# comes after the block endpoint).
STAGE_SIZES = (2, 2, 4, 4, 4)
STAGES = {f'block{b + 1}': n for b, n in enumerate(STAGE_SIZES)}


class VGG19BN(layers.Trunk):
  """VGG19-BN trunk + logits layer; see layers.Trunk for the fields.

  `__call__(x f32[N,H,W,3], train) -> (logits f32[N,num_classes], endpoints)` with
  endpoints block1..block5 (NHWC, before each 2x2/2 max-pool), fc6 [N,1,1,512k],
  pre_logits [N,512k] and logits, all float32. fc6's kernel covers the whole remaining
  map (7x7 at 224 px), so the parameter count depends on the input size.
  unit_endpoints (e.g. ('block3',)): also block3/unit1..unit4, the output (after
  BN+ReLU) of each conv of the block (parameters block3_1..block3_4).
  """

  @nn.compact
  def __call__(self, x, train: bool):
    if self.output_stride:
      raise ValueError(f'output_stride={self.output_stride} is not supported by vgg19_bn '
                       '(allowed: 0)')
    norm = layers.batch_norm(train=train, dtype=self.dtype, axis_name=self.bn_axis_name)

    def conv_bn_relu(x, features, kernel, padding, name):
      x = layers.conv(features, kernel, 1, dtype=self.dtype, padding=padding,
                      name=f'{name}_conv')(x)
      return nn.relu(norm(name=f'{name}_bn')(x))

    with_units = layers.check_unit_endpoints(self.unit_endpoints, STAGES, 'vgg19_bn')
    endpoints = {}
    w = 8 * self.width
    for b, (n, features) in enumerate(zip(STAGE_SIZES, (w, 2 * w, 4 * w, 8 * w, 8 * w))):
      stage = f'block{b + 1}'
      for i in range(n):
        # 3x3 stride-1 'SAME' pads 1 on each side, the same as fixed padding.
        x = conv_bn_relu(x, features, 3, 'SAME', f'{stage}_{i + 1}')
        if stage in with_units:
          endpoints[layers.unit_name(stage, i + 1)] = x
      endpoints[stage] = x
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')

    x = conv_bn_relu(x, 512 * self.width, x.shape[1:3], 'VALID', 'fc6')
    endpoints['fc6'] = x
    x = conv_bn_relu(x, 512 * self.width, 1, 'VALID', 'fc7')
    x = x.reshape(x.shape[0], -1)  # [N,1,1,C] -> [N,C].
    endpoints['pre_logits'] = x
    return layers.finish(self, x, endpoints)
