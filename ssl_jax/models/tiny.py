"""`tiny_cnn`: a three-convolution trunk for engine tests and CPU smoke runs.

Not a model of the study: it exists so that tests about the engine (sharding, BN
semantics, checkpoints, tasks' plumbing) compile and run in seconds. It follows the
zoo's conventions (Glorot-uniform bias-free convs with fixed padding, BN momentum
0.99 / epsilon 1e-3, float32 parameters, `dtype` compute) and interface.
"""
import flax.linen as nn

from ssl_jax.models import layers

ENDPOINTS = ('after_root', 'block1', 'block2', 'pre_logits', 'logits')

# One unit (its conv+BN+ReLU) per stage; the root is no stage.
STAGES = {'block1': 1, 'block2': 1}


class TinyCNN(layers.Trunk):
  """root 3x3/s conv(4k)+BN+ReLU -> block1 3x3/2 conv(8k)+BN+ReLU -> block2 3x3/2 conv(16k)+BN+ReLU.

  `__call__(x f32[N,H,W,C], train) -> (logits or pre_logits, endpoints)`; endpoints
  after_root [N,H/s,W/s,4k], block1 [.., 8k], block2 [.., 16k] (NHWC, ceil of each
  halving), pre_logits [N,16k] (global mean of block2), logits [N,num_classes] when
  num_classes > 0; all float32. s = 2 unless `small_input` or `patch_strides` (1);
  `last_relu` is ignored. Any input size >= 1 px works. `output_stride`
  (layers.atrous_plan): block1 / block2 run at stride 1 with their 3x3 conv dilated
  by the rate of the removed strides before them (the first removed conv keeps rate 1).
  unit_endpoints: block1 and block2 are stages of one unit (block<i>/unit1 = block<i>).
  """

  @nn.compact
  def __call__(self, x, train: bool):
    norm = layers.batch_norm(train=train, dtype=self.dtype, axis_name=self.bn_axis_name)
    with_units = layers.check_unit_endpoints(self.unit_endpoints, STAGES, 'tiny_cnn')
    endpoints = {}
    root_stride = 1 if (self.small_input or self.patch_strides) else 2
    plan = [(root_stride, 1, 1)] + layers.atrous_plan(root_stride, (2, 2),
                                                      self.output_stride, 'tiny_cnn')
    for (name, mult), (stride, rate, _) in zip(
        (('after_root', 4), ('block1', 8), ('block2', 16)), plan):
      x = layers.conv_fixed(x, mult * self.width, 3, stride, dtype=self.dtype,
                            dilation=rate, name=f'{name}_conv')
      x = nn.relu(norm(name=f'{name}_bn')(x))
      if name in with_units:
        endpoints[layers.unit_name(name, 1)] = x
      endpoints[name] = x
    x = layers.global_mean(x)
    endpoints['pre_logits'] = x
    return layers.finish(self, x, endpoints)
