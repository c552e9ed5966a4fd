"""Exemplar (Dosovitskiy et al. 2014) as the revisiting study recast it: triplet metric learning.

Every source image yields `num_copies` (8) independently augmented copies (the
preprocessing string: `to_gray(0.66)` decided once per image and shared by its copies,
then `views(8)` and an inception crop, flip and colour jitter per copy), each
standardised on its own (`per_image_standardization`). The shared trunk and a Dense
embedding of `embed_dim` (1000) outputs on pre-logits (the study's trunk logits layer)
embed all 8B copies in one BatchNorm batch; copies of one image are positives, every
other image's copies negatives.

Loss: the batch semi-hard triplet loss of FaceNet (Schroff et al. 2015), as
tf.contrib.losses.metric_learning.triplet_semihard_loss, margin 0.5, on squared
Euclidean distances: for every ordered anchor-positive pair (a, p), a != p, the
negative n of the anchor with the smallest d(a, n) > d(a, p) (semi-hard); if none,
the anchor's largest negative distance; loss = mean over positive pairs of
max(d(a, p) - d(a, n) + margin, 0). Mined per device on its local batch, as per TPU
core in the study (axis_name unused). Padding copies (evaluation's last batch, mask
False) are neither anchors, positives, negatives nor nearest neighbours, and take no
part in the batch-axis normalisation: the study had no padding.

Start-up checks (`validate`): a device needs >= 2 source images in training
(config.batch_size / jax.device_count()) and in evaluation (eval_batch_size /
devices): with one, the triplet loss has no negative (its semi-hard term falls back
to the largest negative distance, 0 there: the loss only pulls copies together,
which a collapse to one point minimises) and nn_accuracy is 1 whatever the model.
Both are errors, not warnings: nothing is learnt or measured, and the fix (a larger
batch, or fewer devices) costs nothing. The study's public configs pass: 64 / 8
cores = 8 images per core in training, 16 / 8 = 2 in evaluation.

Normalisation (settings.normalization):
  'l2'          each embedding scaled to unit L2 norm (what the loss expects; default).
  'batch_axis'  the released code's quirk: tf.nn.l2_normalize(axis=0) scales each
                embedding *dimension* to unit norm across the per-core batch; this
                produced the released models (revisiting.md 5.2, 12).
Evaluation input (settings.eval_standardize): False = the released linear-evaluation
config, which feeds [-1, 1] images although training saw standardised copies (the
"consistency trap" of revisiting.md 7.1); True = standardised images, as in training.
The pretext metric `nn_accuracy` is the fraction of copies whose nearest other copy
(squared distance, same device batch) is a copy of the same image.
"""
import jax
import jax.numpy as jnp

from ssl_jax import tasks
from ssl_jax.tasks import common
from ssl_jax.tasks import patches as patches_lib

NORMALIZATIONS = ('l2', 'batch_axis')


def _at_least_f32(x):
  return x.astype(jnp.result_type(x.dtype, jnp.float32))  # f32, or f64 in x64 tests


def l2_normalize(x, axis, eps=1e-12):
  """x / sqrt(max(sum(x^2, axis), eps)), as tf.nn.l2_normalize; finite gradient at 0."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps))


def pairwise_squared_distances(x):
  """f32[N, D] -> f32[N, N]: |x_i - x_j|^2, clipped at 0, exactly 0 on the diagonal."""
  sq = jnp.sum(jnp.square(x), axis=1)
  d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
  d = jnp.maximum(d, 0.0)
  return d * (1.0 - jnp.eye(x.shape[0], dtype=d.dtype))


def triplet_semihard_loss(embeddings, labels, margin=0.5, valid=None):
  """Batch semi-hard triplet loss on squared distances.

  Args:
    embeddings: f32[N, D] (normalised by the caller).
    labels: int[N]; equal labels are positives.
    margin: the triplet margin.
    valid: bool[N] or None (all valid): invalid rows (padding) are neither anchors,
      positives nor negatives, so the result is that of the valid rows alone.
  Returns:
    (loss f32[]: mean over ordered positive pairs, per_anchor f32[N]: the mean over
    each anchor's positive pairs, 0 for an anchor without positives or invalid).
    Finite, with finite gradients, for any finite input: identical or zero
    embeddings, and a batch without negatives (then the negative distance is the
    anchor's largest negative distance, which is 0 there, as TF's masked maximum
    gives).

  O(N^2 log N) time and O(N^2) memory: each anchor's negative distances are sorted
  once and the semi-hard negative of every positive pair is a binary search, instead
  of TF's O(N^3) mask.
  """
  d = pairwise_squared_distances(_at_least_f32(embeddings))
  n = d.shape[0]
  valid = jnp.ones((n,), bool) if valid is None else valid.astype(bool)
  both = valid[:, None] & valid[None, :]
  same = labels[:, None] == labels[None, :]
  neg = ~same & both
  # Each anchor's negative distances in increasing order, non-negatives last (+inf).
  sorted_neg = jnp.sort(jnp.where(neg, d, jnp.inf), axis=1)            # [a, k]
  num_neg = jnp.sum(neg, axis=1)                                       # [a]
  # Semi-hard: the first negative strictly farther than d(a, p).
  idx = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side='right'))(sorted_neg, d)
  has_outside = idx < num_neg[:, None]
  outside = jnp.take_along_axis(sorted_neg, jnp.minimum(idx, n - 1), axis=1)
  # Otherwise the anchor's largest negative distance (0 without any negative).
  largest = jnp.max(jnp.where(neg, d, 0.0), axis=1, keepdims=True)
  semi_hard = jnp.where(has_outside, outside, largest)
  pos = (same & both & ~jnp.eye(n, dtype=bool)).astype(d.dtype)
  per_pair = jnp.maximum(margin + d - semi_hard, 0.0) * pos
  num_pos = jnp.sum(pos, axis=1)
  per_anchor = jnp.sum(per_pair, axis=1) / jnp.maximum(num_pos, 1.0)
  loss = jnp.sum(per_pair) / jnp.maximum(jnp.sum(pos), 1.0)
  return loss, per_anchor


def make_loss(margin, normalization):
  """(embeddings f32[B*c, D], targets, axis_name) -> (loss, per-example metrics).

  targets: {'label': i32[B*c], 'mask': bool[B*c]} (pretext's), or the labels alone
  (every copy valid). Per-example metrics f32[B*c]: `loss` (each anchor's mean over
  its positive pairs) and `nn_accuracy` (the nearest other valid copy is a copy of
  the same image); 0 for padding.
  """
  def loss(outputs, targets, axis_name=None):
    del axis_name  # Mined per device, as per core in the study.
    if isinstance(targets, dict):
      labels, valid = targets['label'], targets['mask'].astype(bool)
    else:
      labels, valid = targets, jnp.ones(targets.shape, bool)
    x = _at_least_f32(outputs)
    if normalization == 'batch_axis':  # each dimension over the valid copies
      x = l2_normalize(x * valid[:, None].astype(x.dtype), 0)
    else:
      x = l2_normalize(x, 1)
    value, per_anchor = triplet_semihard_loss(x, labels, margin, valid)
    d = pairwise_squared_distances(x)
    d = d + jnp.where(jnp.eye(d.shape[0], dtype=bool) | ~valid[None, :], jnp.inf, 0.0)
    nearest = jnp.argmin(d, axis=1)
    hit = ((labels[nearest] == labels) & valid).astype(jnp.float32)
    return value, {'loss': per_anchor, 'nn_accuracy': hit}
  return loss


def pretext(rng, batch, *, train):
  """u8[B, c, H, W, 3] copies -> ({'image': standardised f32[B, c, H, W, 3]}, targets).

  targets: {'label': i32[B*c], each copy's source-image index within the (device)
  batch, 'mask': bool[B*c], its image's batch['mask'] (all True without one)}.
  """
  del rng, train
  images = batch['image']
  if images.ndim != 5:
    raise ValueError(f'exemplar needs copies: images of shape [B, copies, H, W, C], got '
                     f'{images.shape} (write views(N) in the preprocessing string)')
  b, c = images.shape[:2]
  labels = jnp.repeat(jnp.arange(b, dtype=jnp.int32), c)
  mask = batch.get('mask')
  mask = jnp.ones((b,), bool) if mask is None else jnp.asarray(mask, bool)
  return {'image': patches_lib.standardize(images)}, {'label': labels,
                                                      'mask': jnp.repeat(mask, c)}


def check_images_per_device(config, num_devices=None):
  """ValueError unless every device gets >= 2 source images, in training and evaluation.

  config.batch_size and config.eval_batch_size are global images; num_devices
  defaults to jax.device_count() (the triplet loss and nn_accuracy are per device).
  """
  num_devices = jax.device_count() if num_devices is None else num_devices
  for key, what in (('batch_size', 'the triplet loss has no negative'),
                    ('eval_batch_size', 'val_nn_accuracy is 1 and val_loss meaningless')):
    per_device = config[key] // num_devices
    if per_device < 2:
      raise ValueError(
          f'config.{key}={config[key]} gives {per_device} source image(s) per device on '
          f'{num_devices} devices: exemplar mines negatives per device, so {what}; '
          f'allowed: >= {2 * num_devices} (2 images per device)')


@tasks.register('exemplar')
def build(config):
  s = tasks.settings(config, 'exemplar')

  def validate(config, num_devices=None):
    if s.normalization not in NORMALIZATIONS:
      raise ValueError(f'config.tasks.exemplar.normalization={s.normalization!r}; allowed: '
                       f'{list(NORMALIZATIONS)}')
    if not isinstance(s.num_copies, int) or s.num_copies < 2:
      raise ValueError(f'config.tasks.exemplar.num_copies={s.num_copies!r} must be an '
                       'integer >= 2 (copies of an image are the positives)')
    if not isinstance(s.embed_dim, int) or s.embed_dim < 1:
      raise ValueError(f'config.tasks.exemplar.embed_dim={s.embed_dim!r} must be >= 1')
    if not s.margin > 0:
      raise ValueError(f'config.tasks.exemplar.margin={s.margin!r} must be > 0')
    check_images_per_device(config, num_devices)

  eval_fn = ((lambda images: patches_lib.standardize(images)) if s.eval_standardize
             else common.rgb_eval_fn)
  return tasks.Task(
      name='exemplar', settings=s, num_views=s.num_copies, pretext=pretext,
      head=common.LinearHead(s.embed_dim, dtype=common.compute_dtype(config)),
      loss=make_loss(s.margin, s.normalization),
      eval_input=tasks.EvalInput('standardized_rgb' if s.eval_standardize else 'rgb',
                                 eval_fn),
      validate=validate)
