"""SimCLR (Chen et al. 2020): contrastive instance discrimination with NT-Xent.

The method Cole et al. (2022) study to ask when contrastive pretraining helps. Two
views of every image (the preprocessing string: `views(2)` then the SimCLR
augmentation per view: random resized crop, flip, colour distortion of strength s
with p = 0.8, random grayscale p = 0.2, optional blur), scaled to [-1, 1]. The shared
trunk embeds all 2B views in one BatchNorm batch (cross-device BN by default, the
paper's global BN: config.model.cross_device_bn); a projection MLP on pre-logits
(Dense -> BN -> ReLU per hidden layer, then Dense -> BN without offset to
`projection_dim` = 128) gives z. The last BN keeps a learnable per-dimension scale
(`proj_last_bn_scale=True`, default), as SimCLR's reference code does (both the TF1
`model_util.linear_layer` and the TF2 `model.LinearLayer` of google-research/simclr
build the last layer's BN with center = use_bias = False and scale left on); False
drops it (every dimension of z then has unit variance before the normalisation).
The scale is a BN parameter: no weight decay and no LARS trust ratio, as the
reference excludes 'batch_normalization' variables from both.

Loss: NT-Xent with temperature tau on cosine similarities. For every view (anchor),
its positive is the other view of its image and the negatives are *every other view
in the global batch*: the projections of all devices (and hosts) are gathered
(`all_gather` over the mesh axis, whose transpose sums the gradients back to their
device), so 8 devices give the loss and gradients of one device holding the whole
batch. Loss = mean over the 2B anchors of -log softmax(sim / tau)[positive], the
anchor itself excluded. Padding examples (mask False, evaluation only) are neither
anchors nor negatives. The pretext metric `contrastive_top1`: the positive ranked
first among the 2B - 1 candidates.

Loss scale (`loss_scale`): 'sum_directions' (default) multiplies that mean by 2,
SimCLR's reference objective (`objective.add_contrastive_loss` returns
mean(loss_a + loss_b) over the images, one cross-entropy per direction view 1 -> 2
and view 2 -> 1), which is what its learning rates and weight decays were tuned
with. 'mean' is the per-anchor mean (the paper's equation, 1/2N sum over the 2N
anchors). The factor is not cosmetic: under LARS, 'sum_directions' with
weight_decay wd equals 'mean' with wd / 2 on kernels (the trust ratio normalises the
gradient's size, not its ratio to wd * w) and twice the step for BN parameters and
biases (no trust ratio); under momentum SGD it equals 'mean' with 2x the learning
rate and wd / 2; Adam is invariant up to its eps. The per-anchor `loss` metric is
scaled too, so train and val losses are the optimised objective: under 'mean' they
are half of SimCLR's logged contrast_loss.

Settings (config.tasks.simclr): temperature, projection_hidden (tuple of widths;
() = a linear projection), projection_dim, proj_last_bn_scale (True), loss_scale
('sum_directions' | 'mean'). A config without the last two (written before they
existed) gets the behaviour it was trained with: no scale, 'mean'. Optimiser: LARS
(config.optimizer.name = 'lars'), see configs/simclr.py.

Start-up checks: batch_size and eval_batch_size >= 2 images: NT-Xent over one image
has no negative (the positive is the only candidate: loss 0, no gradient, top-1 1).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import tasks
from ssl_jax.tasks import common
from ssl_jax.models import layers

_NEG = -1e9  # Logit of excluded candidates (finite: no inf - inf in the softmax).
# loss_scale -> factor on the per-anchor mean NT-Xent.
LOSS_SCALES = {'mean': 1.0, 'sum_directions': 2.0}
# What configs without the keys (written before they existed) were trained with.
LEGACY_DEFAULTS = dict(proj_last_bn_scale=False, loss_scale='mean')


class ProjectionHead(nn.Module):
  """pre_logits f32[N, D] -> z f32[N, projection_dim] (the projection MLP g(.)).

  Hidden layers: Dense (no bias) -> BN (scale and offset) -> ReLU. Last: Dense (no
  bias) -> BN without offset, with a learnable scale iff `last_bn_scale` (SimCLR's
  reference: True). BN momentum 0.9, epsilon 1e-5 (the reference's).
  """
  hidden: tuple = (2048,)
  features: int = 128
  last_bn_scale: bool = True
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, endpoints, inputs, train):
    del inputs
    x = endpoints['pre_logits']
    bn = lambda **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                   epsilon=1e-5, axis_name=self.bn_axis_name,
                                   dtype=self.dtype, param_dtype=jnp.float32, **kw)
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width, use_bias=False, kernel_init=layers.KERNEL_INIT, dtype=self.dtype,
                   param_dtype=jnp.float32, name=f'hidden{i}')(x)
      x = nn.relu(bn(name=f'hidden{i}_bn')(x))
    x = nn.Dense(self.features, use_bias=False, kernel_init=layers.KERNEL_INIT,
                 dtype=self.dtype, param_dtype=jnp.float32, name='out')(x)
    x = bn(use_scale=self.last_bn_scale, use_bias=False, name='out_bn')(x)
    return x.astype(jnp.float32)


def nt_xent(z, mask, temperature, axis_name=None):
  """NT-Xent over the global batch.

  Args:
    z: f32[2b, D] this device's projections, image-major (row 2i + v: view v of
      image i).
    mask: bool[b] this device's valid images (False: padding).
    temperature: tau > 0.
    axis_name: mesh axis to gather the negatives over (None: this batch only).
  Returns:
    (loss f32[]: mean over this device's valid anchors, per_anchor f32[2b],
    top1 f32[2b]: 1 where the positive has the largest similarity).
  """
  z = z.astype(jnp.result_type(z.dtype, jnp.float32))  # f32, or f64 in x64 tests
  z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=1, keepdims=True), 1e-12))
  valid = jnp.repeat(mask, 2)
  if axis_name is None:
    everyone, valid_all, offset = z, valid, 0
  else:
    everyone = jax.lax.all_gather(z, axis_name, tiled=True)            # [2B, D]
    valid_all = jax.lax.all_gather(valid, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * z.shape[0]
  logits = (z @ everyone.T) / temperature                               # [2b, 2B]
  rows = jnp.arange(z.shape[0])
  me = rows + offset
  positive = jnp.bitwise_xor(rows, 1) + offset                          # the other view
  cols = jnp.arange(everyone.shape[0])
  excluded = (cols[None, :] == me[:, None]) | ~valid_all[None, :]
  logits = jnp.where(excluded, _NEG, logits)
  log_p = jax.nn.log_softmax(logits, axis=1)
  per_anchor = -jnp.take_along_axis(log_p, positive[:, None], axis=1)[:, 0]
  top1 = (jnp.argmax(logits, axis=1) == positive).astype(jnp.float32)
  w = valid.astype(jnp.float32)
  loss = jnp.sum(per_anchor * w) / jnp.maximum(jnp.sum(w), 1.0)
  return loss, per_anchor * w, top1 * w


def pretext(rng, batch, *, train):
  """u8[B, 2, H, W, 3] views -> ({'image': f32[B, 2, H, W, 3] in [-1, 1]}, {'mask'})."""
  del rng, train
  images = batch['image']
  if images.ndim != 5 or images.shape[1] != 2:
    raise ValueError(f'SimCLR needs two views: images of shape [B, 2, H, W, C], got '
                     f'{images.shape} (write views(2) in the preprocessing string)')
  return {'image': common.to_minus_one_one(images)}, {'mask': batch['mask']}


def make_loss(temperature, loss_scale='sum_directions'):
  """(z f32[2b, D], {'mask': bool[b]}, axis_name) -> (loss, per-example metrics).

  loss = LOSS_SCALES[loss_scale] x the mean NT-Xent over the global batch's valid
  anchors (this device's share); per-example `loss` (f32[2b]) carries the same
  factor, `contrastive_top1` does not. Raises ValueError for an unknown loss_scale.
  """
  if loss_scale not in LOSS_SCALES:
    raise ValueError(f'config.tasks.simclr.loss_scale={loss_scale!r} is not allowed; '
                     f'allowed: {list(LOSS_SCALES)}')
  factor = LOSS_SCALES[loss_scale]

  def loss(outputs, targets, axis_name=None):
    value, per_anchor, top1 = nt_xent(outputs, targets['mask'], temperature, axis_name)
    return factor * value, {'loss': factor * per_anchor, 'contrastive_top1': top1}
  return loss


def _setting(s, key):
  return s.get(key, LEGACY_DEFAULTS[key]) if hasattr(s, 'get') else LEGACY_DEFAULTS[key]


@tasks.register('simclr')
def build(config):
  s = tasks.settings(config, 'simclr')
  loss_scale = _setting(s, 'loss_scale')
  last_bn_scale = _setting(s, 'proj_last_bn_scale')

  def validate(config):
    if not s.temperature > 0:
      raise ValueError(f'config.tasks.simclr.temperature={s.temperature!r} must be > 0')
    widths = tuple(s.projection_hidden) + (s.projection_dim,)
    if not all(isinstance(w, int) and w >= 1 for w in widths):
      raise ValueError(f'config.tasks.simclr.projection_hidden={tuple(s.projection_hidden)} '
                       f'and projection_dim={s.projection_dim!r} must be integers >= 1')
    if not isinstance(last_bn_scale, bool):
      raise ValueError(f'config.tasks.simclr.proj_last_bn_scale={last_bn_scale!r} is not '
                       'allowed; allowed: True or False')
    # NT-Xent runs over the global batch: one image has no negative (its positive is
    # the only candidate), so the loss is 0 with no gradient and top-1 is 1.
    for key, what in (('batch_size', 'training has no negatives'),
                      ('eval_batch_size', 'val_loss and val_contrastive_top1 are constants')):
      if config[key] < 2:
        raise ValueError(f'config.{key}={config[key]!r} is not allowed for simclr: NT-Xent '
                         f'over one image has no negative ({what}); allowed: >= 2 images')

  head = ProjectionHead(hidden=tuple(s.projection_hidden), features=s.projection_dim,
                        last_bn_scale=last_bn_scale,
                        bn_axis_name=common.bn_axis(config),
                        dtype=common.compute_dtype(config))
  loss = make_loss(s.temperature, loss_scale)  # a bad loss_scale: ValueError here
  return tasks.Task(
      name='simclr', settings=s, num_views=2, pretext=pretext, head=head, loss=loss,
      eval_input=tasks.EvalInput('rgb', common.rgb_eval_fn), validate=validate)
