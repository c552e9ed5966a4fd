"""Colorization (Zhang et al. 2016), as scaled by Goyal et al. 2019, on the task contract.

The trunk sees only the lightness of an image and predicts, per pixel of a dense
endpoint, a distribution over quantised ab colours (Q bins); the colour maths live in
ssl_jax.tasks.color (Lab, bins, soft encoding, rebalancing, grey mask, decoding).

Pretext (`pretext(rng, batch, *, train)`, no randomness of its own: the augmentation is
the preprocessing string's)
  images u8[B, H, W, 3] (sRGB) -> Lab (color.rgb_to_lab: float32, D65, as skimage).
  Input: (L - 50) / 50, i.e. Zhang's L - 50 scaled to [-1, 1], as
    f32[B, 1, H, W, c] with c = input_channels: 1 (the trunk's root conv takes one
    channel, as the benchmark's colorization ResNet-50 and AlexNet) or 3 (L repeated,
    for an RGB-shaped trunk).
  Targets at the head's resolution: the head reads `endpoint` (default: the trunk's
  last spatial endpoint, block4 for the ResNets) whose stride s comes from
  models.endpoint_strides (config.model.output_stride: 8 keeps block3/block4 at stride
  8 with dilated convs). ab is brought to ceil(H/s) x ceil(W/s) by
    'subsample' (default): the pixel at (s*i, s*j). This is Zhang's (a stride-4
      subsampling) and, with fixed padding, exactly the input pixel on which the head's
      pixel (i, j) is centred (ResNet / tiny_cnn; RevNet's 2x2 pools put it up to
      (s-1)/2 px off). Targets are real pixel colours, so they follow the pixel
      distribution the prior was counted on, at the cost of aliasing. The rebalancing
      weights average 1 under the prior they were normalised with: under that pixel
      distribution only with smooth_prior=False (Goyal's raw prior); with the default
      smoothed prior (Zhang's) they average 1 under the smoothed prior and less over
      the pixels (CIFAR-10 train[:45000] at 32 px, grid 10, 'data' bins: 0.86).
    'mean': the mean ab of each s x s block (partial blocks at the border: their
      pixels only). Smoother but it mixes colours across edges (desaturating the
      targets, which the prior then no longer describes) and is centred (s-1)/2 px off
      the head's pixel.
  then soft-encoded over the K nearest of the Q bin centres (Gaussian sigma 5; K = 1 is
  the hard assignment). Each head pixel is weighted by the class-rebalancing weight of
  its nearest bin (color.rebalance_weights of the bins' prior: lambda 0.5, prior
  smoothed with sigma (Zhang) or raw (Goyal)); images whose every |a| and |b| is <= 5
  (at full resolution, after augmentation) are grey and weighted 0.
  targets = dict(soft f32[B, h, w, Q], nearest i32[B, h, w], weight f32[B, h, w],
  non_grey f32[B]).

Head: 1x1 conv(s) on the endpoint to Q logits per pixel, f32[B, h, w, Q]: head_hidden
  = 0 gives one 1x1 conv with bias (Zhang's conv8_313 / the benchmark's class conv);
  head_hidden = D adds a 1x1 conv to D channels + BN + ReLU before it.

Loss: the rebalanced soft cross-entropy. Per image b:
    loss_b = non_grey_b * mean over its h*w head pixels of w_p * (-sum_q t_pq log p_pq)
  and the scalar is the mean of loss_b over this device's images (the engine averages
  over devices). Grey images count in the denominator with loss 0, so the scalar is
  always the mean of the per-example losses (the contract's invariant); with a fraction g
  of grey images it is (1 - g) times the mean over valid pixels (measured here with
  python -m ssl_jax.tools.color_bins: CIFAR-10 train[:45000] g = 764/45,000 = 1.7%,
  Imagenette64 train[:8469] 210/8,469 = 2.5%, 234 in its whole train split of 9,469).
  Zhang's Caffe layer multiplies the gradient by the weights instead; the gradient is
  the same.
  Per-example metrics f32[B]: loss, ce (unweighted, unmasked soft cross-entropy),
  accuracy (fraction of head pixels whose argmax bin is the target's nearest bin),
  non_grey (1 / 0).

Bins (computed lazily, the first time the pretext or head is traced, so building the
task and validating configs stay cheap): bins_from='dataset' derives them from
config.data's train split (color.get_bins: cached on disk under color.default_cache_dir()
with key color.dataset_key, e.g. 'cifar10:train[:45000]@32px'; TensorFlow is imported
only on a cache miss; `python -m ssl_jax.tools.color_bins --dataset cifar10` pre-fills
it; an unusable cache entry is rebuilt with a warning), or from the synthetic training
images when config.data.source='synthetic' (no TFDS); bins_from='file' loads an .npz
with `centers` f32[Q, 2] and `prior` (or `counts`) [Q], e.g. a cache file
(color.read_bins_file: a file that fails any check is a one-line ValueError naming it,
at start-up). The bin count is logged. bin_rule: 'data' (Goyal: the cells holding
training pixels), 'in_gamut' (the cells 8-bit sRGB reaches: 261 at grid 10) or
'in_hull' (Zhang's: the grid points within Chebyshev distance `grid` of the sRGB ab
hull, exactly his 313 at grid 10; see color.py); the prior always comes from the data.

Evaluation input: EvalInput('lab_l', fn): u8[B, H, W, 3] -> the same (L - 50) / 50
input, f32[B, H, W, input_channels].

Settings (config.tasks.colorization): see configs/colorization.py.
"""
import copy
import functools
import os

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import models
from ssl_jax import tasks
from ssl_jax.models import layers
from ssl_jax.tasks import color
from ssl_jax.tasks import common

DOWNSAMPLE = ('subsample', 'mean')
BINS_FROM = ('dataset', 'file')
INPUT_CHANNELS = (1, 3)

# Bins derived in this process, by key (building a task twice derives them once).
_BINS_MEMO: dict = {}


# --------------------------------------------------------------------------
# Inputs and targets (JAX, jittable)
# --------------------------------------------------------------------------

def lab_l_input(images, channels=1):
  """The trunk input: u8[..., H, W, 3] sRGB -> f32[..., H, W, channels] = (L - 50) / 50.

  L of CIE Lab (color.rgb_to_lab), in [0, 100], shifted by -50 (Zhang, Goyal) and scaled
  by 1/50 to [-1, 1]; channels = 3 repeats it.
  """
  return _l_input(color.rgb_to_lab(images), channels)


def _l_input(lab, channels):
  x = (lab[..., :1] - 50.0) / 50.0
  return jnp.repeat(x, channels, axis=-1) if channels > 1 else x


def downsample_ab(ab, stride, mode='subsample'):
  """ab f32[B, H, W, 2] -> f32[B, ceil(H/s), ceil(W/s), 2] at a head's stride s.

  'subsample': ab[:, s*i, s*j] (the pixel the head's pixel (i, j) is centred on).
  'mean': the mean over each s x s block, border blocks over their pixels only.
  """
  if mode not in DOWNSAMPLE:
    raise ValueError(f'target_downsample={mode!r}; allowed: {list(DOWNSAMPLE)}')
  if stride == 1:
    return ab
  if mode == 'subsample':
    return ab[:, ::stride, ::stride]
  b, h, w, c = ab.shape
  ph, pw = -h % stride, -w % stride
  pad = ((0, 0), (0, ph), (0, pw), (0, 0))
  total = jnp.pad(ab, pad).reshape(b, (h + ph) // stride, stride, (w + pw) // stride, stride,
                                   c).sum(axis=(2, 4))
  count = jnp.pad(jnp.ones((1, h, w, 1), ab.dtype), pad).reshape(
      1, (h + ph) // stride, stride, (w + pw) // stride, stride, 1).sum(axis=(2, 4))
  return total / count


def make_targets(ab, centers, bin_weights, *, stride, k, sigma=5.0, downsample='subsample',
                 grey_threshold=color.GREY_THRESHOLD):
  """Targets of full-resolution ab f32[B, H, W, 2] for a head of stride `stride`.

  Args:
    ab: f32[B, H, W, 2] (a, b) of the (augmented) images.
    centers: f32[Q, 2] bin centres.
    bin_weights: f32[Q] rebalancing weight per bin (ones: no rebalancing).
    stride: the head endpoint's stride s.
    k, sigma: soft encoding (color.soft_encode).
    downsample: 'subsample' or 'mean' (downsample_ab).
    grey_threshold: images whose every |a|, |b| (full resolution) is <= it get weight 0.
  Returns:
    dict(soft f32[B, h, w, Q] rows summing to 1, nearest i32[B, h, w], weight f32[B, h, w]
    (bin_weights at the nearest bin), non_grey f32[B] (0 for grey images)), h, w =
    ceil(H/s), ceil(W/s).
  """
  non_grey = 1.0 - color.grey_mask(ab, grey_threshold).astype(jnp.float32)
  small = downsample_ab(ab, stride, downsample)
  soft, nearest = color.soft_encode(small, centers, k=k, sigma=sigma, return_nearest=True)
  return {'soft': soft, 'nearest': nearest,
          'weight': color.pixel_weights(nearest, bin_weights), 'non_grey': non_grey}


def colorization_loss(logits, targets, axis_name=None):
  """The rebalanced soft cross-entropy (see the module docstring).

  Args:
    logits: f32[B, h, w, Q] head outputs.
    targets: make_targets' dict at the same h, w.
    axis_name: unused (the engine averages the scalar over devices).
  Returns:
    (scalar f32[]: mean of the per-image losses, dict of f32[B]: loss, ce, accuracy,
    non_grey).
  Raises:
    ValueError: logits and targets of different resolutions or bin counts.
  """
  del axis_name
  logits = logits.astype(jnp.float32)
  soft = targets['soft']
  if logits.shape != soft.shape:
    raise ValueError(f'colorization head outputs {logits.shape} but targets are '
                     f'{soft.shape} [B, h, w, Q]: the endpoint stride and the targets\' '
                     'resolution disagree')
  ce = -jnp.sum(soft * jax.nn.log_softmax(logits, axis=-1), axis=-1)       # [B, h, w]
  per_image = jnp.mean(targets['weight'] * ce, axis=(1, 2)) * targets['non_grey']
  hit = (jnp.argmax(logits, axis=-1) == targets['nearest']).astype(jnp.float32)
  metrics = {'loss': per_image, 'ce': jnp.mean(ce, axis=(1, 2)),
             'accuracy': jnp.mean(hit, axis=(1, 2)), 'non_grey': targets['non_grey']}
  return jnp.mean(per_image), metrics


class ColorHead(nn.Module):
  """1x1 conv(s) from a spatial endpoint to per-pixel bin logits.

  `__call__(endpoints, inputs, train) -> f32[N, h, w, Q]`. `bins` is the task's lazy
  bin holder (`num_bins` read at trace time). Kernels Glorot-uniform (the zoo's), the
  logits conv has a zero-initialised bias; the hidden conv (head_hidden > 0) is bias-free,
  followed by the trunk's BN (momentum 0.99, eps 1e-3) and a ReLU.
  """
  bins: object
  endpoint: str
  hidden: int = 0
  bn_axis_name: object = None
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, endpoints, inputs, train):
    del inputs
    if self.endpoint not in endpoints or endpoints[self.endpoint].ndim != 4:
      raise ValueError(f'colorization endpoint {self.endpoint!r} is not a spatial endpoint '
                       f'of the trunk; it has {sorted(endpoints)}')
    x = endpoints[self.endpoint]
    if self.hidden:
      x = layers.conv(self.hidden, 1, dtype=self.dtype, name='hidden')(x)
      x = layers.batch_norm(train=train, dtype=self.dtype, axis_name=self.bn_axis_name)(
          name='hidden_bn')(x)
      x = nn.relu(x)
    x = nn.Conv(self.bins.num_bins, (1, 1), use_bias=True, kernel_init=layers.KERNEL_INIT,
                bias_init=nn.initializers.zeros, dtype=self.dtype, param_dtype=jnp.float32,
                name='logits')(x)
    return x.astype(jnp.float32)


# --------------------------------------------------------------------------
# Bins (host, lazily)
# --------------------------------------------------------------------------

def _bins_key(config):
  s, d = config.tasks.colorization, config.data
  if s.bins_from == 'file':
    return ('file', os.path.abspath(s.bins_file))
  common_key = (s.grid, s.bin_rule, bool(s.goyal_quirks), bool(s.exclude_grey))
  if d.source == 'synthetic':
    return ('synthetic', d.synthetic_examples, d.image_size, d.num_classes, config.seed) + (
        common_key)
  return ('dataset', color.dataset_key(d, 'train', s.bins_max_images),
          s.bins_cache_dir) + common_key


def load_bins_file(path):
  """{'centers' f32[Q, 2], 'prior' f64[Q], 'num_bins', ...} from an .npz (prior or counts).

  Raises a one-line ValueError naming config.tasks.colorization.bins_file and the file
  for anything color.read_bins_file rejects (unreadable, missing arrays, wrong shapes,
  non-finite or negative values, an all-zero prior).
  """
  try:
    out = color.read_bins_file(path)
  except color.BinsFileError as e:
    raise ValueError(f'config.tasks.colorization.bins_file: {e}') from None
  return dict(out, how='file', cache=path)


def resolve_bins(config, *, build=True):
  """The bins of a colorization config: dict(centers f32[Q, 2], prior [Q], num_bins, ...).

  build=False returns None instead of deriving them from a dataset (TFDS) when they are
  not memoised or cached on disk (validation must stay cheap); files and synthetic
  images are read either way.
  """
  s, d = config.tasks.colorization, config.data
  key = _bins_key(config)
  if key in _BINS_MEMO:
    return _BINS_MEMO[key]
  kwargs = dict(goyal_quirks=bool(s.goyal_quirks), exclude_grey=bool(s.exclude_grey))
  if s.bins_from == 'file':
    out = load_bins_file(s.bins_file)
  elif d.source == 'synthetic':
    from ssl_jax.data import sources  # pylint: disable=g-import-not-at-top
    images = sources.synthetic_arrays(d.synthetic_examples, 1, d.image_size, d.num_classes,
                                      config.seed)['train'][0]
    out = color.derive_bins(images, s.grid, s.bin_rule, **kwargs)
    out['how'], out['cache'] = 'derived', f'{len(images)} synthetic images'
  else:
    name = color.dataset_key(d, 'train', s.bins_max_images)
    cache_dir = s.bins_cache_dir or None
    if build:
      out = color.get_bins(
          name, lambda: color.dataset_images(config, 'train', s.bins_max_images),
          s.grid, s.bin_rule, cache_dir=cache_dir, **kwargs)
    else:
      out = color.cached_bins(name, s.grid, s.bin_rule, cache_dir=cache_dir, **kwargs)
      if out is None:
        return None
  what = 'a file' if s.bins_from == 'file' else f'grid {s.grid}, rule {s.bin_rule}'
  logging.info('colorization bins: %d (%s), %s from %s', out['num_bins'], what,
               out.get('how', ''), out.get('cache', ''))
  _BINS_MEMO[key] = out
  return out


class _Bins:
  """The task's bins and everything derived from them, computed on first use."""

  def __init__(self, config, bins=None):
    self._config = config
    self._bins = bins

  @functools.cached_property
  def data(self):
    if self._bins is not None:
      out = self._bins
    else:
      out = resolve_bins(self._config)
    _check_k(self._config.tasks.colorization.k, out['num_bins'])
    return out

  @property
  def num_bins(self):
    return int(self.data['num_bins'])

  @property
  def centers(self):
    return np.asarray(self.data['centers'], np.float32)

  @functools.cached_property
  def weights(self):
    s = self._config.tasks.colorization
    if not s.rebalance:
      return np.ones(self.num_bins, np.float32)
    return color.rebalance_weights(self.data['prior'], self.centers, lam=s.lam,
                                   sigma=s.sigma, smooth=s.smooth_prior)


# --------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------

def _check_k(k, num_bins):
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_bins:
    raise ValueError(f'config.tasks.colorization.k={k!r} must be an integer in [1, Q] with '
                     f'Q = {num_bins} bins (1: hard assignment)')


def endpoint_and_stride(config):
  """(endpoint name, its stride) of the head for config.model; ValueError if unknown."""
  m, s = config.model, config.tasks.colorization
  strides = models.endpoint_strides(m.name, small_input=m.small_input,
                                    patch_strides=m.patch_strides,
                                    output_stride=m.get('output_stride', 0))
  endpoint = s.endpoint or list(strides)[-1]
  if endpoint not in strides:
    raise ValueError(f'config.tasks.colorization.endpoint={s.endpoint!r} is not a spatial '
                     f'endpoint of {m.name}; allowed: {list(strides)} or "" (the last)')
  return endpoint, strides[endpoint]


def validate_settings(config):
  """Start-up checks of config.tasks.colorization (ValueError naming the key)."""
  s = config.tasks.colorization
  key = 'config.tasks.colorization'
  if s.grid not in color.GRIDS or isinstance(s.grid, bool):
    raise ValueError(f'{key}.grid={s.grid!r}; allowed: {list(color.GRIDS)}')
  if s.bin_rule not in color.RULES:
    raise ValueError(f'{key}.bin_rule={s.bin_rule!r}; allowed: {list(color.RULES)}')
  if s.goyal_quirks and s.bin_rule != 'data':
    raise ValueError(f"{key}.goyal_quirks=True applies to bin_rule='data' only")
  if s.bins_from not in BINS_FROM:
    raise ValueError(f'{key}.bins_from={s.bins_from!r}; allowed: {list(BINS_FROM)}')
  if s.bins_from == 'file' and not os.path.isfile(s.bins_file):
    raise ValueError(f"{key}.bins_file={s.bins_file!r} is not a file (bins_from='file' "
                     'needs an .npz with centers and prior)')
  if not isinstance(s.bins_max_images, int) or not (s.bins_max_images == -1 or
                                                    s.bins_max_images > 0):
    raise ValueError(f'{key}.bins_max_images={s.bins_max_images!r} must be -1 (all) or > 0')
  if isinstance(s.k, bool) or not isinstance(s.k, int) or s.k < 1:
    raise ValueError(f'{key}.k={s.k!r} must be an integer in [1, Q] (1: hard assignment)')
  if not s.sigma > 0:
    raise ValueError(f'{key}.sigma={s.sigma!r} must be > 0')
  if not 0.0 <= s.lam <= 1.0:
    raise ValueError(f'{key}.lam={s.lam!r} must be in [0, 1]')
  if not s.grey_threshold >= 0:
    raise ValueError(f'{key}.grey_threshold={s.grey_threshold!r} must be >= 0')
  if not s.temperature > 0:
    raise ValueError(f'{key}.temperature={s.temperature!r} must be > 0')
  if s.input_channels not in INPUT_CHANNELS or isinstance(s.input_channels, bool):
    raise ValueError(f'{key}.input_channels={s.input_channels!r}; allowed: '
                     f'{list(INPUT_CHANNELS)} (1: the L channel; 3: L repeated)')
  if s.target_downsample not in DOWNSAMPLE:
    raise ValueError(f'{key}.target_downsample={s.target_downsample!r}; allowed: '
                     f'{list(DOWNSAMPLE)}')
  if isinstance(s.head_hidden, bool) or not isinstance(s.head_hidden, int) or s.head_hidden < 0:
    raise ValueError(f'{key}.head_hidden={s.head_hidden!r} must be an integer >= 0 '
                     '(0: a single 1x1 conv)')
  endpoint_and_stride(config)
  # K <= Q when the bins are known without deriving them (else checked when they are).
  bins = resolve_bins(config, build=False)
  if bins is not None:
    _check_k(s.k, bins['num_bins'])


def make_task(config, bins=None):
  """The colorization Task of `config`; `bins` (a dict with centers and prior) overrides
  resolve_bins (tests). Nothing is derived or traced here: the bins are resolved when
  the pretext or the head is first traced. The task keeps a copy of the config (later
  edits of `config` do not change a built task)."""
  settings = tasks.settings(config, 'colorization')
  config = copy.deepcopy(config)
  s = config.tasks.colorization
  holder = _Bins(config, bins)

  def head_geometry():
    return endpoint_and_stride(config)

  def pretext(rng, batch, *, train):
    del rng, train  # Deterministic: the preprocessing string holds the augmentation.
    images = batch['image']
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'colorization takes RGB images u8[B, H, W, 3], got {images.shape} '
                       '(no views(N) in the preprocessing string)')
    lab = color.rgb_to_lab(images)
    x = _l_input(lab, s.input_channels)
    _, stride = head_geometry()
    targets = make_targets(lab[..., 1:], holder.centers, holder.weights, stride=stride,
                           k=s.k, sigma=s.sigma, downsample=s.target_downsample,
                           grey_threshold=s.grey_threshold)
    return {'image': x[:, None]}, targets

  def validate(config):
    validate_settings(config)

  endpoint = s.endpoint
  try:
    endpoint = head_geometry()[0]
  except ValueError:
    pass  # validate() names the problem.
  channels = s.input_channels
  return tasks.Task(
      name='colorization', settings=settings, num_views=1, pretext=pretext,
      head=ColorHead(holder, endpoint, hidden=s.head_hidden, bn_axis_name=common.bn_axis(config),
                     dtype=common.compute_dtype(config)),
      loss=colorization_loss,
      eval_input=tasks.EvalInput('lab_l', lambda images: lab_l_input(images, channels)),
      validate=validate)


@tasks.register('colorization')
def build(config):
  return make_task(config)


def bins_of(task):
  """The lazy bin holder of a colorization task (centers, weights, num_bins), for tools
  (pictures, analysis) that decode predictions."""
  return task.head.bins


# --------------------------------------------------------------------------
# Pictures of predictions (host tools; the command line is ssl_jax.tools.colorize)
# --------------------------------------------------------------------------

def _linear_axis(x, axis, size, stride, offset):
  """Linear interpolation along `axis` to `size` samples: sample y sits at source
  coordinate (y - offset) / stride, clamped to the first / last source pixel."""
  n = x.shape[axis]
  u = jnp.clip((jnp.arange(size, dtype=jnp.float32) - offset) / stride, 0.0, n - 1.0)
  lo = jnp.floor(u).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, n - 1)
  frac = (u - lo).reshape((-1,) + (1,) * (x.ndim - axis - 1))
  return jnp.take(x, lo, axis=axis) * (1.0 - frac) + jnp.take(x, hi, axis=axis) * frac


def upsample_ab(ab, stride, size, downsample='subsample'):
  """Head-resolution ab f32[B, h, w, 2] -> f32[B, H, W, 2] (bilinear, edges held),
  aligned with the targets: 'subsample' puts head pixel (i, j) on input pixel
  (s*i, s*j), 'mean' on the centre of its block, (s*i + (s-1)/2, s*j + (s-1)/2)."""
  offset = 0.0 if downsample == 'subsample' else (stride - 1) / 2.0
  ab = _linear_axis(ab, 1, size[0], stride, offset)
  return _linear_axis(ab, 2, size[1], stride, offset)


def colorize(task, config, apply_fn, images, *, temperature=None):
  """Colours predicted for u8[B, H, W, 3] images, and the targets' own rendering.

  Args:
    task: the colorization Task.
    config: its config (for the endpoint's stride).
    apply_fn: inputs dict -> head logits f32[B, h, w, Q] (the trained model, eval mode).
    images: u8[B, H, W, 3].
    temperature: annealed-mean T (default settings.temperature, 0.38).
  Returns:
    dict(prediction u8[B, H, W, 3]: the image's own L with the annealed-mean ab,
    upsampled; target u8[B, H, W, 3]: the same with the true ab brought to the head's
    resolution and back (the most a perfect head could show); grey u8: L only;
    logits; pred_ab, true_ab f32[B, h, w, 2]).
  """
  s = task.settings
  t = s.temperature if temperature is None else temperature
  holder = bins_of(task)
  _, stride = endpoint_and_stride(config)
  images = jnp.asarray(images)
  lab = color.rgb_to_lab(images)
  inputs, _ = task.pretext(jax.random.key(0), {'image': images}, train=False)
  logits = apply_fn(inputs)
  pred_ab = color.annealed_mean(logits, holder.centers, t)
  true_ab = downsample_ab(lab[..., 1:], stride, s.target_downsample)
  size = images.shape[1:3]

  def render(ab_small):
    ab = upsample_ab(ab_small, stride, size, s.target_downsample)
    rgb = color.lab_to_rgb(jnp.concatenate([lab[..., :1], ab], axis=-1))
    return np.asarray(jnp.round(rgb * 255.0)).astype(np.uint8)

  grey = render(jnp.zeros_like(true_ab))
  return {'prediction': render(pred_ab), 'target': render(true_ab), 'grey': grey,
          'logits': logits, 'pred_ab': pred_ab, 'true_ab': true_ab}


def picture(rows, labels, scale=3, gap=2):
  """Rows of u8[N, H, W, 3] images -> one u8 grid image with a label column (PIL)."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  n, h, w = rows[0].shape[:3]
  label_w = 80
  out = np.full((len(rows) * (h * scale + gap) + gap, label_w + n * (w * scale + gap) + gap,
                 3), 255, np.uint8)
  for r, row in enumerate(rows):
    for i, img in enumerate(row):
      y = gap + r * (h * scale + gap)
      x = label_w + gap + i * (w * scale + gap)
      out[y:y + h * scale, x:x + w * scale] = np.repeat(np.repeat(img, scale, 0), scale, 1)
  image = Image.fromarray(out)
  draw = ImageDraw.Draw(image)
  for r, label in enumerate(labels):
    y = gap + r * (h * scale + gap) + h * scale // 2 - 12
    for j, line in enumerate(label.split('\n')):
      draw.text((4, y + 12 * j), line, fill=(0, 0, 0))
  return image
