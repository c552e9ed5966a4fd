"""`alexnet_bn`: AlexNet with BatchNorm, Goyal et al. 2019's low-capacity trunk, NHWC.

The layout is the AlexNet of Goyal et al.'s benchmark ("Scaling and Benchmarking
Self-Supervised Visual Representation Learning", ICCV 2019; fair_self_supervision_benchmark's
colorization AlexNet, the same layout as VISSL's `alexnet_colorization` trunk), at k=4:
  conv1  96 11x11/4 unpadded       -> BN -> ReLU -> max-pool 3x3/2
  conv2 256  5x5 pad 2, 2 groups   -> BN -> ReLU -> max-pool 3x3/2
  conv3 384  3x3 pad 1             -> BN -> ReLU
  conv4 384  3x3 pad 1, 2 groups   -> BN -> ReLU
  conv5 256  3x3 pad 1, 2 groups   -> BN -> ReLU -> max-pool 3x3/2 (pool5)
  fc6  4096  6x6 unpadded conv     -> BN -> ReLU -> dropout 0.5
  fc7  4096  1x1 conv              -> BN -> ReLU (-> dropout 0.5 -> the classifier)
The pools are unpadded with floor sizes (Caffe2's and PyTorch's default), so the input
must be at least 227 px (the benchmark's crop; 224 px gives a 5x5 pool5, too small for
fc6): at 227 px conv1 is 55x55, conv2 27, conv3-conv5 13, pool5 6 and fc6/fc7 1x1.
Larger inputs make fc6/fc7 maps (the fc layers are convs) and pre_logits is their mean.

Where it differs from the benchmark's graph (the zoo's conventions, models.layers, unless
said):
- bias-free convs with Glorot-uniform kernels (the benchmark's convs have biases, which the
  BN right after them cancels; its init is Gaussian std 0.01 for convs, Xavier for fc6/fc7,
  and the pretext initialisation is unpublished);
- BN momentum 0.9 / epsilon 1e-5 are Goyal's (the benchmark's AlexNet configs: BN_MOMENTUM
  0.9, BN_EPSILON 1.0000001e-5, Caffe2's convention, the same as Flax's), not the zoo's
  TF 0.99 / 1e-3 (class fields bn_momentum / bn_epsilon);
- widening factor k: conv widths 24k, 64k, 96k, 96k, 64k and fc widths 1024k, so k=4 is
  Goyal's AlexNet as k=4 is the standard ResNet50 (every width stays even for the groups);
- the input may have any channel count (Goyal's colorization AlexNet takes L: 1 channel).

`small_input=True` (32/64-px images) is OUR deviation; no source has a small-image
AlexNet-BN. With the 11x11/4 root a 32-px image is a 6x6 conv1 and a 2x2 pool1, with
nothing left for pool2, so: conv1 is a 3x3 stride-1 conv (fixed padding, the zoo's
small-input root), the three 3x3/2 max-pools stay but are zero-padded to ceil(H/2)
(exact after a ReLU), and fc6 is a 4x4 unpadded conv, which covers the whole 4x4 pool5 of
a 32-px image as the 6x6 fc6 covers the 227-px pool5. Maps at 32 px: conv1 32, conv2 16,
conv3-conv5 8, pool5 4, fc6/fc7 1; at 64 px: 64, 32, 16, 8 (about the 227-px model's 55,
27, 13, 6) and fc6/fc7 5x5.
The smallest input is 25 px. The parameters are the 227-px model's but for conv1 and
fc6 (input-size independent in both variants).

Not supported (ValueError): patch_strides, output_stride != 0, last_relu=False (fc7 always
ends in a ReLU), unit_endpoints (AlexNet has no stages of same-shaped units).
"""
import flax.linen as nn

from ssl_jax.models import layers

ENDPOINTS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'pre_logits', 'logits')

# (name, width / k, kernel, groups, max-pool after) of the five convs.
CONVS = (('conv1', 24, 11, 1, True), ('conv2', 64, 5, 2, True), ('conv3', 96, 3, 1, False),
         ('conv4', 96, 3, 2, False), ('conv5', 64, 3, 2, True))
FC_WIDTH = 1024  # fc6 / fc7 width over k.
FC6_KERNEL = {False: 6, True: 4}  # By small_input.
# Strides of the spatial endpoints (small_input only; see endpoint_strides).
SMALL_INPUT_STRIDES = {'conv1': 1, 'conv2': 2, 'conv3': 4, 'conv4': 4, 'conv5': 4}


def check_options(*, patch_strides=False, last_relu=True, output_stride=0, unit_endpoints=()):
  """ValueError (naming the value) for the zoo options alexnet_bn does not have."""
  if patch_strides:
    raise ValueError(f'patch_strides={patch_strides!r} is not supported by alexnet_bn '
                     '(allowed: False); for 64-px patches use small_input=True')
  if not last_relu:
    raise ValueError(f'last_relu={last_relu!r} is not supported by alexnet_bn (allowed: '
                     'True): fc7 always ends in BN then ReLU')
  if output_stride:
    raise ValueError(f'output_stride={output_stride!r} is not supported by alexnet_bn '
                     '(allowed: 0); use resnet50_v1, resnet50_v2, revnet50 or tiny_cnn')
  layers.check_unit_endpoints(unit_endpoints, {}, 'alexnet_bn')


def map_sizes(size, small_input=False):
  """Side lengths of the maps for a size-px input: dict conv1, pool1, ..., pool5, fc6.

  Full model: unpadded convs / pools, floor((n - k) / s) + 1 (conv2-conv5 keep the size);
  small_input: conv1 keeps the size, each pool ceil(n / 2). A value < 1 means the input
  is too small (every later value is then meaningless).
  """
  down = lambda n, k, s: (n - k) // s + 1
  if small_input:
    c1 = size
    pool = lambda n: -(-n // 2)
  else:
    c1 = down(size, 11, 4)
    pool = lambda n: down(n, 3, 2)
  p1 = pool(c1)
  p2 = pool(p1)
  p5 = pool(p2)
  return {'conv1': c1, 'pool1': p1, 'conv2': p1, 'pool2': p2, 'conv3': p2, 'conv4': p2,
          'conv5': p2, 'pool5': p5, 'fc6': p5 - FC6_KERNEL[bool(small_input)] + 1}


def min_input_size(small_input=False):
  """The smallest input side (px) alexnet_bn takes: 227 (small_input: 25)."""
  size = 1
  while min(map_sizes(size, small_input).values()) < 1:
    size += 1
  return size


class AlexNetBN(layers.Trunk):
  """AlexNet-BN trunk + logits layer; see the module docstring and layers.Trunk.

  `__call__(x f32[N,H,W,C], train) -> (output, endpoints)`, H, W >= 227 (small_input: 25),
  else ValueError. Endpoints (float32): conv1..conv5 after BN+ReLU, before the pools
  (the layers Goyal et al. and VISSL probe): [N, 55, 55, 24k], [N, 27, 27, 64k],
  [N, 13, 13, 96k] x 2, [N, 13, 13, 64k] at 227 px; fc6 [N, h, w, 1024k] after BN+ReLU,
  before dropout (1x1 at 227 / 32 px); pre_logits [N, 1024k], the spatial mean of fc7
  after BN+ReLU; logits [N, num_classes] when num_classes > 0.
  Dropout (rate dropout_rate, the 'dropout' rng in train mode): after fc6 inside the
  trunk, and after fc7 only in front of the logits layer (a bare trunk's output is the
  un-dropped pre_logits; task heads own their dropout).
  """
  dropout_rate: float = 0.5
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool):
    check_options(patch_strides=self.patch_strides, last_relu=self.last_relu,
                  output_stride=self.output_stride, unit_endpoints=self.unit_endpoints)
    small = bool(self.small_input)
    h, w = x.shape[1:3]
    if min(map_sizes(min(h, w), small).values()) < 1:
      raise ValueError(f'alexnet_bn{" with small_input" if small else ""} takes inputs of at '
                       f'least {min_input_size(small)} px, not {h}x{w}: pool5 would be smaller '
                       f'than fc6\'s {FC6_KERNEL[small]}x{FC6_KERNEL[small]} kernel')
    norm = layers.batch_norm(train=train, dtype=self.dtype, axis_name=self.bn_axis_name,
                             momentum=self.bn_momentum, epsilon=self.bn_epsilon)
    endpoints = {}
    for name, mult, kernel, groups, pool in CONVS:
      features = mult * self.width
      if name == 'conv1' and not small:  # 11x11/4 with no padding.
        x = layers.conv(features, kernel, 4, dtype=self.dtype, name=name)(x)
      else:  # Symmetric padding (k - 1) / 2, stride 1 (small_input's 3x3 conv1 too).
        x = layers.conv_fixed(x, features, 3 if name == 'conv1' else kernel, 1,
                              dtype=self.dtype, groups=groups, name=name)
      x = nn.relu(norm(name=f'{name}_bn')(x))
      endpoints[name] = x
      if pool:
        # small_input: zero padding to ceil(H/2), harmless after the ReLU (values >= 0).
        x = (layers.max_pool_fixed(x, 3, 2) if small else
             nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID'))

    fc_width = FC_WIDTH * self.width
    x = layers.conv(fc_width, FC6_KERNEL[small], 1, dtype=self.dtype, name='fc6')(x)
    x = nn.relu(norm(name='fc6_bn')(x))
    endpoints['fc6'] = x
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = layers.conv(fc_width, 1, 1, dtype=self.dtype, name='fc7')(x)
    x = nn.relu(norm(name='fc7_bn')(x))
    x = layers.global_mean(x)
    endpoints['pre_logits'] = x
    if self.num_classes:  # drop7 sits between fc7 and the classifier.
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return layers.finish(self, x, endpoints)
