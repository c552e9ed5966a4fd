"""Pictures as library functions: each returns a matplotlib `Figure` (never shown or saved).

    pip install 'ssl_jax[viz]'          # matplotlib (scikit-learn for t-SNE, optional)

    from ssl_jax import tasks, viz
    config = importlib.import_module('configs.rotation').get_config('smoke')
    fig = viz.pretext_figure(tasks.get_task(config.task, config), config, images_u8)
    fig.savefig('rotation.png')

Figures are made with `matplotlib.figure.Figure`, not pyplot: nothing global stays open
(safe in loops, on headless machines, in tests); `fig.savefig(path)` writes them. In a
notebook, run `%matplotlib inline` once (or import matplotlib.pyplot: IPython then
registers its figure display) and a figure returned by a cell displays itself, or call
`display(fig)`. Only when pyplot is not loaded, no MPLBACKEND is set, no display exists
and no IPython kernel runs is the Agg backend selected, so a later pyplot import works
headless.

What is here (shapes: B images, Q queries, N gallery / points, D feature dims):
  pretext_figure(task, config, images)   what a pretext task sees, dispatched by task name
    rotation_figure, jigsaw_figure, relative_patch_location_figure, exemplar_figure,
    simclr_figure, colorization_figure, inputs_figure (any other task: the trunk inputs)
    run_pretext(task, config, images)    the numbers behind them (preprocessing + pretext)
  accuracy_bars(series, order)           per-layer bars of {label: {endpoint: top1}}
    linear_accuracies(results)           adapter from a linear evaluation's results.json
    layer_accuracy_figure(results), compare_layer_accuracy_figure({label: results})
  cosine_topk(q, g, k) / retrieval_figure   nearest neighbours by cosine similarity
  pca_2d, tsne_2d / projection_figure    2-D projections of features coloured by class
  read_scalars(workdir) / training_curves_figure   TensorBoard scalars of a run
  display_range, tile_mosaic, image_grid helpers for showing arrays as images

Imports: numpy only at module level. matplotlib when a figure is made, JAX and the
ssl_jax task modules when a pretext figure is made, tensorboard's protos (not TensorFlow)
when event files are read, scikit-learn for t-SNE only.
"""
import fnmatch
import functools
import glob
import math
import numbers
import os
import struct
import sys
import textwrap
from typing import Mapping

import numpy as np

INSTALL_HINT = "pip install 'ssl_jax[viz]'"
CELL_INCHES = 1.5          # size of one image panel
CORRECT, WRONG = '#1a9850', '#d73027'   # retrieval frames: green / red


# ----------------------------------------------------------------------------- matplotlib


def _matplotlib():
  """matplotlib, imported on first use; ImportError with the install line if missing."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(f'ssl_jax.viz needs matplotlib: {INSTALL_HINT}') from None
  headless = not (os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))
  if (headless and 'matplotlib.pyplot' not in sys.modules and 'ipykernel' not in sys.modules
      and not os.environ.get('MPLBACKEND')):
    matplotlib.use('Agg')
  return matplotlib


def _figure(width, height):
  """A new pyplot-free Figure of width x height inches (constrained layout)."""
  _matplotlib()
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(figsize=(max(width, 2.0), max(height, 1.5)), layout='constrained')


def _panel_grid(rows, cols, title=None, cell=CELL_INCHES):
  """(fig, axes[rows, cols]) of image panels without ticks."""
  fig = _figure(cols * cell, rows * cell + (0.4 if title else 0.0))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(textwrap.fill(title, max(30, int(cols * cell * 11))), fontsize=9)
  return fig, axes


def _show(ax, image, title=None, color=None):
  """Draws one [H, W, 3] or [H, W(, 1)] image with values in [0, 1] (grey: gray map)."""
  image = np.asarray(image, np.float32)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    ax.imshow(image, cmap='gray', vmin=0.0, vmax=1.0, interpolation='nearest')
  else:
    ax.imshow(np.clip(image, 0.0, 1.0), interpolation='nearest')
  if title is not None:
    ax.set_title(title, fontsize=7, **({} if color is None else {'color': color}))


# ----------------------------------------------------------------------------- arrays


SCALES = ('uint8', 'minus_one_one', 'minmax', 'unit')


def display_range(x, scale):
  """Maps arrays to displayable values in [0, 1].

  Args:
    x: [..., H, W, C] array (C = 1 or 3).
    scale: 'uint8' (x / 255), 'minus_one_one' ((x + 1) / 2, for the trunk's [-1, 1]
      inputs), 'minmax' (each image [H, W, C] stretched from its own min to its max, for
      standardised patches and views; a constant image becomes 0.5), 'unit' (x clipped
      to [0, 1]).
  Returns:
    float32 array of x's shape in [0, 1].
  Raises:
    ValueError: unknown scale, or x with fewer than 3 axes for 'minmax'.
  """
  x = np.asarray(x)
  if scale == 'uint8':
    return np.clip(x.astype(np.float32) / 255.0, 0.0, 1.0)
  if scale == 'minus_one_one':
    return np.clip((x.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)
  if scale == 'unit':
    return np.clip(x.astype(np.float32), 0.0, 1.0)
  if scale == 'minmax':
    if x.ndim < 3:
      raise ValueError(f"display_range(scale='minmax') needs [..., H, W, C], got {x.shape}")
    x = x.astype(np.float64)
    lo = x.min(axis=(-3, -2, -1), keepdims=True)
    span = x.max(axis=(-3, -2, -1), keepdims=True) - lo
    out = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.5)
    return out.astype(np.float32)
  raise ValueError(f'display_range: scale={scale!r}; allowed: {list(SCALES)}')


def _as_unit_images(images, what='images'):
  """u8 (/255) or float in [0, 1] (clipped) images -> float32 in [0, 1]."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return display_range(images, 'uint8')
  if np.issubdtype(images.dtype, np.floating):
    return display_range(images, 'unit')
  raise ValueError(f'{what}: expected uint8 (0..255) or float (0..1) images, got dtype '
                   f'{images.dtype}')


def tile_mosaic(tiles, rows, cols, *, gap=1, fill=1.0, background=1.0):
  """Tiles f32[n, p, p, C] (n <= rows*cols, row-major; None entries left blank) -> one
  image f32[rows*(p+gap)-gap, cols*(p+gap)-gap, C].

  Tile t sits at [r*(p+gap) : r*(p+gap)+p, c*(p+gap) : ...] with (r, c) = divmod(t, cols);
  blank slots hold `fill`, gaps `background`. Raises ValueError for too many tiles.
  """
  tiles = list(tiles)
  if len(tiles) > rows * cols:
    raise ValueError(f'tile_mosaic: {len(tiles)} tiles do not fit {rows}x{cols}')
  first = next((np.asarray(t) for t in tiles if t is not None), None)
  if first is None:
    raise ValueError('tile_mosaic: no tiles')
  p_h, p_w, c = first.shape
  out = np.full((rows * (p_h + gap) - gap, cols * (p_w + gap) - gap, c), background,
                np.float32)
  for t in range(rows * cols):
    r, col = divmod(t, cols)
    y, x = r * (p_h + gap), col * (p_w + gap)
    tile = tiles[t] if t < len(tiles) else None
    out[y:y + p_h, x:x + p_w] = fill if tile is None else np.asarray(tile, np.float32)
  return out


def image_grid(images, titles=None, *, ncols=8, title=None):
  """A grid of images.

  Args:
    images: u8[N, H, W, C] or float [N, H, W, C] in [0, 1] (C = 1 or 3; [N, H, W] grey).
    titles: optional N strings.
    ncols: panels per row.
    title: the figure's title.
  Returns:
    Figure with N image axes (the grid's unused cells hidden).
  """
  images = _as_unit_images(images)
  if images.ndim == 3:
    images = images[..., None]
  n = images.shape[0]
  if titles is not None and len(titles) != n:
    raise ValueError(f'image_grid: {len(titles)} titles for {n} images')
  ncols = max(1, min(ncols, n))
  rows = math.ceil(n / ncols)
  fig, axes = _panel_grid(rows, ncols, title)
  for i, ax in enumerate(axes.flat):
    if i < n:
      _show(ax, images[i], None if titles is None else titles[i])
    else:
      ax.remove()
  return fig


# ----------------------------------------------------------------------------- pretext


def _single_task(task):
  """A Task; a TaskSet of one member is unwrapped; ValueError for larger sets."""
  members = getattr(task, 'members', None)
  if members is None:
    return task
  if len(members) == 1:
    return members[0].task
  raise ValueError(f'task set {task.name!r} has {len(members)} members '
                   f'{[m.name for m in members]}: draw one, e.g. '
                   'pretext_figure(m.task, m.config, images) for m in task_set.members')


@functools.lru_cache(maxsize=32)
def _batch_fn(spec, train):
  """The jitted preprocessing of `spec` (kept: the same string compiles once per shape)."""
  import jax  # pylint: disable=g-import-not-at-top
  from ssl_jax.data import ops  # pylint: disable=g-import-not-at-top
  return jax.jit(ops.make_batch_fn(spec, train=train))


def run_pretext(task, config, images, *, train=True, seed=0, labels=None, preprocess=True):
  """What a task's trunk and loss see for a batch of images.

  Args:
    task: a `tasks.Task` (`ssl_jax.tasks.get_task(config.task, config)`); a task set of
      one member is unwrapped.
    config: the job config (config.input.pp_train / pp_eval).
    images: u8[B, H, W, 3] decoded source images; with preprocess=False, the
      preprocessing's output instead, u8[B, (V,) h, w, 3].
    train: True: config.input.pp_train and the training pretext (random patch offsets,
      sampled permutations); False: pp_eval and the evaluation pretext (central patches,
      the fixed evaluation permutations).
    seed: the PRNG seed of the preprocessing and the pretext (split in two).
    labels: optional int[B] dataset labels (default zeros; only `supervised` uses them).
    preprocess: apply the preprocessing string (ssl_jax.data.ops.make_batch_fn) first.
  Returns:
    dict(images=u8[B, (V,) h, w, 3] the pretext's input batch, inputs=dict of numpy
    arrays (inputs['image'] f32[B, n, h', w', c], the trunk's input), targets=numpy array
    or dict of them), as task.pretext returns.
  Raises:
    ValueError: non-uint8 images or a wrong rank.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  task = _single_task(task)
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f'run_pretext: images must be uint8 [B, H, W, 3], got {images.dtype}')
  ok_ranks = (4,) if preprocess else (4, 5)
  if images.ndim not in ok_ranks:
    raise ValueError(f'run_pretext: images must be u8[B, H, W, 3]'
                     f'{"" if preprocess else " or [B, V, H, W, 3]"}, got {images.shape}')
  pp_key, task_key = jax.random.split(jax.random.key(seed))
  spec = config.input.pp_train if train else config.input.pp_eval
  batch_images = jnp.asarray(images)
  if preprocess and spec:
    batch_images = _batch_fn(spec, train)(pp_key, batch_images)
  b = images.shape[0]
  labels = np.zeros(b, np.int32) if labels is None else np.asarray(labels, np.int32)
  batch = {'image': batch_images, 'label': jnp.asarray(labels),
           'mask': jnp.ones(b, bool)}
  # Jitted (the contract's pretext is pure and jittable): one compile instead of one per
  # op, and JAX's cache serves repeated calls with the same task and shapes.
  inputs, targets = jax.jit(task.pretext, static_argnames='train')(task_key, batch,
                                                                    train=train)
  to_np = lambda t: jax.tree.map(np.asarray, t)
  return {'images': np.asarray(batch_images), 'inputs': to_np(inputs),
          'targets': to_np(targets)}


def _labels_per_input(targets, b, n):
  """Integer targets as i32[b, n] (one per trunk input), or None.

  Accepts i32[b, n], [b * n] (image-major), [b] (one per image, repeated) or a dict
  holding one of these under 'label' (tasks whose targets carry a mask too).
  """
  if isinstance(targets, Mapping):
    targets = targets.get('label', targets.get('labels'))
  if not isinstance(targets, np.ndarray) or not np.issubdtype(targets.dtype, np.integer):
    return None
  if targets.size == b * n:
    return targets.reshape(b, n)
  if targets.shape == (b,):
    return np.repeat(targets[:, None], n, axis=1)
  return None


def _source_panel(ax, out, b, images):
  """Column 0: the preprocessed image (or the raw source when there are views)."""
  pp = out['images'][b]
  if pp.ndim == 3:
    _show(ax, display_range(pp, 'uint8'), 'preprocessed')
  else:
    _show(ax, display_range(np.asarray(images[b]), 'uint8'), 'source')


def rotation_figure(task, config, images, *, train=True, seed=0, max_images=4):
  """Rotation: each image's rotated copies as the trunk sees them, with their labels.

  Args:
    task, config: the rotation task and its config (see `run_pretext`).
    images: u8[B, H, W, 3] source images (square after preprocessing).
    train: the training preprocessing / pretext (mode 'random_one': one copy) or eval.
    seed: PRNG seed; max_images: rows drawn (the first ones).
  Returns:
    Figure, one row per image: the preprocessed image, then every copy k (label k =
    k * 90 degrees counter-clockwise, np.rot90), inputs in [-1, 1] shown as (x + 1) / 2.
  """
  images = np.asarray(images)[:max_images]
  out = run_pretext(task, config, images, train=train, seed=seed)
  x = out['inputs']['image']
  labels = _labels_per_input(out['targets'], x.shape[0], x.shape[1])
  rows = min(x.shape[0], max_images)
  fig, axes = _panel_grid(rows, 1 + x.shape[1],
                          'rotation: trunk inputs ([-1, 1] shown as [0, 1]) and labels')
  for b in range(rows):
    _source_panel(axes[b, 0], out, b, images)
    for j in range(x.shape[1]):
      k = None if labels is None else int(labels[b, j])
      _show(axes[b, 1 + j], display_range(x[b, j], 'minus_one_one'),
            None if k is None else f'label {k}: {90 * k}\N{DEGREE SIGN}')
  return fig


def jigsaw_figure(task, config, images, *, train=True, seed=0, max_images=3, max_perms=3):
  """Jigsaw: the 9 tiles in grid order and in the permuted orders the head classifies.

  Args:
    task, config: the jigsaw task and its config (see `run_pretext`).
    images: u8[B, H, W, 3] source images (the preprocessing makes the 3x3-cell crops).
    train: random patch offsets and the sampled permutations; False: central patches
      and the evaluation permutations.
    max_images: rows; max_perms: permuted examples drawn per image (of the copies).
  Returns:
    Figure, one row per image: the preprocessed crop, its tiles in grid order, then per
    example c with label k (an index into the permutation set P) the tiles in slot
    order: slot j holds grid tile P[k][j] (as jigsaw.JigsawHead permutes embeddings).
    Each tile is a standardised patch, shown min-max scaled on its own.
  """
  task = _single_task(task)
  images = np.asarray(images)[:max_images]
  out = run_pretext(task, config, images, train=train, seed=seed)
  patches, idx = out['inputs']['image'], out['inputs']['perm_index']      # [B, 9, ...]
  table = np.asarray(task.head.perms.array)
  grid = int(task.settings.grid)
  rows, perms = min(patches.shape[0], max_images), min(idx.shape[1], max_perms)
  fig, axes = _panel_grid(rows, 2 + perms,
                          'jigsaw: standardised tiles (each min-max scaled), grid order and '
                          'permuted; label = permutation index')
  for b in range(rows):
    tiles = display_range(patches[b], 'minmax')
    _source_panel(axes[b, 0], out, b, images)
    _show(axes[b, 1], tile_mosaic(tiles, grid, grid), 'grid order')
    for c in range(perms):
      k = int(idx[b, c])
      _show(axes[b, 2 + c], tile_mosaic(tiles[table[k]], grid, grid),
            f'label {k}\n{"".join(str(int(i)) for i in table[k])}')
  return fig


POSITIONS = ('top-left', 'top', 'top-right', 'left', 'centre', 'right', 'bottom-left',
             'bottom', 'bottom-right')   # grid index row * 3 + col


def relative_patch_location_figure(task, config, images, *, train=True, seed=0,
                                   max_images=3, max_pairs=8):
  """Relative patch location: the (neighbour, centre) pairs and their position labels.

  Args:
    task, config: the relative_patch_location task and its config (see `run_pretext`).
    images: u8[B, H, W, 3] source images.
    train: random patch offsets; False: central ones.
    max_images: rows; max_pairs: pairs drawn per image (of 8).
  Returns:
    Figure, one row per image: the preprocessed crop, all 9 tiles, then per pair with
    label k the 3x3 layout holding only the centre tile and neighbour
    relative_patch_location.NEIGHBOURS[k] (blank slots grey). Tiles are standardised
    patches, each shown min-max scaled.
  """
  from ssl_jax.tasks import relative_patch_location as rpl  # pylint: disable=g-import-not-at-top
  task = _single_task(task)
  images = np.asarray(images)[:max_images]
  out = run_pretext(task, config, images, train=train, seed=seed)
  patches = out['inputs']['image']                                        # [B, 9, ...]
  labels = _labels_per_input(out['targets'], patches.shape[0], len(rpl.NEIGHBOURS))
  if labels is None:
    raise ValueError('relative_patch_location_figure: the pretext\'s targets are not one '
                     f'position label per pair: {out["targets"]!r:.200}')
  rows, pairs = min(patches.shape[0], max_images), min(labels.shape[1], max_pairs)
  fig, axes = _panel_grid(rows, 2 + pairs,
                          'relative patch location: centre + neighbour (tiles min-max '
                          'scaled each); label = neighbour position')
  for b in range(rows):
    tiles = display_range(patches[b], 'minmax')
    _source_panel(axes[b, 0], out, b, images)
    _show(axes[b, 1], tile_mosaic(tiles, 3, 3), 'all 9 tiles')
    for j in range(pairs):
      k = int(labels[b, j])
      where = rpl.NEIGHBOURS[k]
      slots = [tiles[i] if i in (where, rpl.CENTRE) else None for i in range(9)]
      _show(axes[b, 2 + j], tile_mosaic(slots, 3, 3, fill=0.85),
            f'label {k}: {POSITIONS[where]}')
  return fig


def _views_figure(task, config, images, *, train, seed, max_images, max_views, scale, what):
  images = np.asarray(images)[:max_images]
  out = run_pretext(task, config, images, train=train, seed=seed)
  x = out['inputs']['image']                                             # [B, V, ...]
  labels = _labels_per_input(out['targets'], x.shape[0], x.shape[1])
  rows, views = min(x.shape[0], max_images), min(x.shape[1], max_views)
  fig, axes = _panel_grid(rows, 1 + views, what)
  for b in range(rows):
    _source_panel(axes[b, 0], out, b, images)
    for v in range(views):
      if labels is not None:
        note = f'copy {v}, label {int(labels[b, v])}'
      else:
        note = f'view {v + 1} of image {b}'
      _show(axes[b, 1 + v], display_range(x[b, v], scale), note)
  return fig


def exemplar_figure(task, config, images, *, train=True, seed=0, max_images=4, max_views=8):
  """Exemplar: the augmented copies of each image (positives share a label).

  Args:
    task, config: the exemplar task and its config; its preprocessing string's
      views(N) makes the copies.
    images: u8[B, H, W, 3] source images.
    max_images: rows; max_views: copies drawn per image.
  Returns:
    Figure, one row per image: the source image, then its copies as the trunk sees them
    (each standardised on its own; shown min-max scaled per copy), titled with the
    triplet label (the source image's index in the batch).
  """
  return _views_figure(task, config, images, train=train, seed=seed, max_images=max_images,
                       max_views=max_views, scale='minmax',
                       what='exemplar: standardised copies (each min-max scaled); '
                            'label = source image')


def simclr_figure(task, config, images, *, train=True, seed=0, max_images=4):
  """SimCLR: the two augmented views of each image (the positive pair).

  Args:
    task, config: the simclr task and its config; views(2) in its preprocessing string.
    images: u8[B, H, W, 3] source images.
    max_images: rows.
  Returns:
    Figure, one row per image: the source image and its two views ([-1, 1] inputs
    shown as (x + 1) / 2); every other view in the batch is a negative.
  """
  return _views_figure(task, config, images, train=train, seed=seed, max_images=max_images,
                       max_views=2, scale='minus_one_one',
                       what='SimCLR: two views per image ([-1, 1] shown as [0, 1])')


def colorization_figure(task, config, images, *, train=True, seed=0, max_images=4,
                        logits=None, temperature=None):
  """Colorization: the L input, the ab target decoded onto the image, and its colours.

  Args:
    task, config: the colorization task and its config (the head's stride comes from
      config.model; bins from the task, resolved on first use).
    images: u8[B, H, W, 3] sRGB source images.
    train: the training or the evaluation preprocessing.
    max_images: rows.
    logits: optional head outputs f32[B, h, w, Q] for these images (e.g. a trained
      model's, in eval mode, on the same preprocessing: train=False; the first
      max_images are used) adds a prediction column (annealed mean, as
      colorization.colorize decodes).
    temperature: annealed-mean T (default settings.temperature).
  Returns:
    Figure, one row per image, columns: the preprocessed RGB image; the trunk's input
    (L - 50) / 50 shown as L / 100; the target decoded onto the image (the image's own L
    with the soft-encoded target's mean ab, sum_q t_q c_q, upsampled from the head's
    resolution with colorization.upsample_ab); the target's ab alone at L = 50 (its
    colours); [the prediction]. Grey images (loss weight 0) are marked.
  Raises:
    ValueError: logits of the wrong shape.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ssl_jax.tasks import color  # pylint: disable=g-import-not-at-top
  from ssl_jax.tasks import colorization  # pylint: disable=g-import-not-at-top
  task = _single_task(task)
  s = task.settings
  images = np.asarray(images)[:max_images]
  out = run_pretext(task, config, images, train=train, seed=seed)
  x, t = out['inputs']['image'][:, 0], out['targets']                   # [B, H, W, c]
  soft = t['soft']                                                        # [B, h, w, Q]
  _, stride = colorization.endpoint_and_stride(config)
  centers = colorization.bins_of(task).centers
  size = x.shape[1:3]
  lightness = x[..., :1] * 50.0 + 50.0

  def render(ab_small, l_channel):
    ab = colorization.upsample_ab(jnp.asarray(ab_small), stride, size, s.target_downsample)
    return np.asarray(color.lab_to_rgb(jnp.concatenate([jnp.asarray(l_channel), ab], -1)))

  ab_target = soft @ centers
  columns = [('preprocessed', display_range(out['images'], 'uint8')),
             ('L input', np.clip(lightness / 100.0, 0.0, 1.0)),
             ('target ab on L', render(ab_target, lightness)),
             ('target ab, L=50', render(ab_target, np.full_like(lightness, 50.0)))]
  if logits is not None:
    logits = np.asarray(logits)[:max_images]
    if logits.shape != soft.shape:
      raise ValueError(f'colorization_figure: logits {logits.shape} must match the targets '
                       f'[B, h, w, Q] = {soft.shape}')
    temp = s.temperature if temperature is None else temperature
    pred = color.annealed_mean(jnp.asarray(logits), centers, float(temp))
    columns.append((f'prediction (T={temp:g})', render(pred, lightness)))
  rows = min(x.shape[0], max_images)
  fig, axes = _panel_grid(rows, len(columns),
                          f'colorization: L in, ab out (stride {stride}, {len(centers)} bins)')
  for b in range(rows):
    grey = float(t['non_grey'][b]) == 0.0
    for j, (name, arr) in enumerate(columns):
      _show(axes[b, j], arr[b], name + (' (grey: weight 0)' if grey and j == 2 else ''))
  return fig


def inputs_figure(task, config, images, *, labels=None, train=True, seed=0, max_images=4,
                  max_views=8):
  """Any task: the trunk inputs inputs['image'] f32[B, n, h, w, c] per image.

  Args:
    task, config, images, train, seed: as `run_pretext`; labels: optional int[B]
      dataset labels (the supervised task's targets).
    max_images: rows; max_views: inputs drawn per image.
  Returns:
    Figure, one row per image: the preprocessed image (or the source, with views), then
    its trunk inputs. Inputs within [-1, 1] are shown as (x + 1) / 2, others min-max
    scaled per input (said in the title); one channel in grey. Targets are printed when
    there is one integer per input (i32[B], [B, n] or [B * n], or a dict holding one
    under 'label').
  """
  task = _single_task(task)
  images = np.asarray(images)[:max_images]
  labels = None if labels is None else np.asarray(labels)[:max_images]
  out = run_pretext(task, config, images, train=train, seed=seed, labels=labels)
  x, targets = out['inputs']['image'], out['targets']
  scale = 'minus_one_one' if np.all(np.abs(x) <= 1.0 + 1e-6) else 'minmax'
  rows, n = min(x.shape[0], max_images), min(x.shape[1], max_views)
  per = _labels_per_input(targets, x.shape[0], x.shape[1])
  how = '[-1, 1] shown as [0, 1]' if scale == 'minus_one_one' else 'each min-max scaled'
  fig, axes = _panel_grid(rows, 1 + n, f'{task.name}: trunk inputs ({how})')
  for b in range(rows):
    _source_panel(axes[b, 0], out, b, images)
    for j in range(n):
      _show(axes[b, 1 + j], display_range(x[b, j], scale),
            None if per is None else f'label {int(per[b, j])}')
  return fig


PRETEXT_FIGURES = {
    'rotation': rotation_figure,
    'jigsaw': jigsaw_figure,
    'relative_patch_location': relative_patch_location_figure,
    'exemplar': exemplar_figure,
    'simclr': simclr_figure,
    'colorization': colorization_figure,
}


def pretext_figure(task, config, images, *, labels=None, **kwargs):
  """What a pretext task sees: the figure function of its name (PRETEXT_FIGURES), else
  `inputs_figure` (supervised and any other task).

  Args:
    task: `ssl_jax.tasks.get_task(config.task, config)` (a task set of one is unwrapped;
      a larger set raises ValueError: draw its members).
    config: its config.
    images: u8[B, H, W, 3] decoded source images (any size the preprocessing accepts).
    labels: optional int[B] dataset labels (used by `inputs_figure` only).
    **kwargs: the figure function's (train, seed, max_images, ...).
  Returns:
    the Figure.
  """
  task = _single_task(task)
  fn = PRETEXT_FIGURES.get(task.name)
  if fn is None:
    return inputs_figure(task, config, images, labels=labels, **kwargs)
  return fn(task, config, images, **kwargs)


# ----------------------------------------------------------------------------- accuracies


def _number(x):
  return (isinstance(x, numbers.Real) and not isinstance(x, bool)
          and math.isfinite(float(x)))


def endpoint_order(results):
  """Endpoints of a results dict in the trunk's order (input to output).

  The model's own order (ssl_jax.models.trunk_endpoints of results['model']['name']) for
  the endpoints it knows, then the rest in results['dims'] order (results.json is
  written with sorted keys), then any other endpoint with a row. Unknown models and
  missing keys are tolerated.
  """
  names = []
  for key in ('linear', 'mlp'):
    rows = results.get(key)
    if isinstance(rows, Mapping):
      names += [n for n, row in rows.items() if isinstance(row, Mapping) and n not in names]
  dims = results.get('dims')
  dims = list(dims) if isinstance(dims, (Mapping, list, tuple)) else []
  known = []
  model = results.get('model')
  if isinstance(model, Mapping) and isinstance(model.get('name'), str):
    try:
      from ssl_jax import models  # pylint: disable=g-import-not-at-top
      known = list(models.trunk_endpoints(model['name']))
    except Exception:  # pylint: disable=broad-except  (an unknown or renamed model)
      known = []
  present = set(names) | set(dims)
  order = [e for e in known if e in present]
  order += [e for e in dims if e not in order]
  order += [e for e in names if e not in order]
  return order


def linear_accuracies(results, *, label=None, head='linear', metric='top1', baseline=True,
                      baseline_label='random init'):
  """Adapter: a linear evaluation's results dict (results.json) -> (series, order).

  Args:
    results: the dict linear_eval.run writes: results[head][endpoint][metric] (test
      split); the random-init baseline from results['baseline'][head][endpoint][metric]
      or the row's f'baseline_{metric}'. Rows or values that are missing or not numbers
      are skipped (the format may gain keys).
    label: the series' name (default results['pretext_task'], else 'pretrained').
    head: 'linear' or 'mlp'.
    metric: a row key, e.g. 'top1', 'top5', 'val_top1'.
    baseline: add the random-init series when the results have one.
    baseline_label: its name.
  Returns:
    ({label: {endpoint: value}, [baseline_label: {...}]}, endpoint_order(results)).
  """
  rows = results.get(head)
  rows = rows if isinstance(rows, Mapping) else {}
  label = label or results.get('pretext_task') or 'pretrained'
  main, base = {}, {}
  base_rows = results.get('baseline')
  base_rows = base_rows.get(head) if isinstance(base_rows, Mapping) else None
  base_rows = base_rows if isinstance(base_rows, Mapping) else {}
  for name, row in rows.items():
    if not isinstance(row, Mapping):
      continue
    if _number(row.get(metric)):
      main[name] = float(row[metric])
    ref = base_rows.get(name)
    value = ref.get(metric) if isinstance(ref, Mapping) else row.get(f'baseline_{metric}')
    if _number(value):
      base[name] = float(value)
  series = {label: main}
  if baseline and base:
    series[baseline_label] = base
  return series, endpoint_order(results)


def accuracy_bars(series, order=None, *, title=None, ylabel='test top-1 (%)', scale=100.0,
                  annotate=True):
  """Grouped bars, one group per endpoint (layer), one bar per series.

  Args:
    series: {label: {endpoint: accuracy}}, accuracies as fractions (scale 100: bars in
      %); missing or non-finite values draw no bar.
    order: endpoints along the x axis (default: first seen across the series); only
      these are drawn.
    title, ylabel: the axes'.
    scale: bar height = scale * accuracy.
    annotate: write each bar's value above it.
  Returns:
    Figure with one axes; ax.containers[i] is series i's BarContainer, its bars at the
    endpoints (in order) where the series has a value.
  Raises:
    ValueError: no series or no endpoint.
  """
  if not series:
    raise ValueError('accuracy_bars: no series ({label: {endpoint: top1}})')
  if order is None:
    order = []
    for values in series.values():
      order += [e for e in values if e not in order]
  order = list(order)
  if not order:
    raise ValueError('accuracy_bars: no endpoints to draw')
  n = len(series)
  width = 0.8 / n
  fig = _figure(min(14.0, 1.0 + 0.35 * len(order) * max(n, 2)), 3.2)
  ax = fig.subplots()
  for i, (label, values) in enumerate(series.items()):
    xs, hs = [], []
    for j, e in enumerate(order):
      v = values.get(e)
      if _number(v):
        xs.append(j + (i - (n - 1) / 2) * width)
        hs.append(scale * float(v))
    bars = ax.bar(xs, hs, width=width * 0.95, label=label)
    if annotate and hs:
      ax.bar_label(bars, fmt='%.1f', fontsize=6, padding=1)
  ax.set_xticks(range(len(order)), order, rotation=30, ha='right', fontsize=8)
  ax.set_ylabel(ylabel)
  ax.set_ylim(bottom=0)
  ax.legend(fontsize=7)
  if title:
    ax.set_title(title, fontsize=9)
  return fig


def layer_accuracy_figure(results, *, head='linear', metric='top1', baseline=True,
                          title=None):
  """Per-layer linear-evaluation accuracy of one results dict, beside its random-init
  baseline when present (see `linear_accuracies`, `accuracy_bars`)."""
  series, order = linear_accuracies(results, head=head, metric=metric, baseline=baseline)
  if title is None:
    model = results.get('model') if isinstance(results.get('model'), Mapping) else {}
    what = ' '.join(str(x) for x in (results.get('pretext_task'), model.get('name')) if x)
    data = results.get('dataset')
    title = f"{what}{' on ' + str(data) if data else ''}: {head} {metric}".strip(': ')
  return accuracy_bars(series, order, title=title, ylabel=f'{metric} (%)')


def compare_layer_accuracy_figure(results_by_label, *, head='linear', metric='top1',
                                  baseline=False, title=None):
  """Several results dicts (e.g. rotation, jigsaw, a random-init trunk) layer by layer.

  Args:
    results_by_label: {label: results dict}, in legend order.
    head, metric: as `linear_accuracies`.
    baseline: also draw each one's random-init baseline (as '<label>: random init').
    title: the axes' title.
  Returns:
    `accuracy_bars`' Figure; endpoints in the first results' trunk order, then others.
  """
  series, order = {}, []
  for label, results in results_by_label.items():
    s, o = linear_accuracies(results, label=label, head=head, metric=metric,
                             baseline=baseline, baseline_label=f'{label}: random init')
    series.update(s)
    order += [e for e in o if e not in order]
  return accuracy_bars(series, order, title=title, ylabel=f'{metric} (%)')


# ----------------------------------------------------------------------------- retrieval


def cosine_topk(query_features, gallery_features, k, *, exclude=None):
  """The k gallery items most cosine-similar to each query (pure numpy).

  Args:
    query_features: float [Q, D].
    gallery_features: float [N, D].
    k: neighbours per query, 1 <= k <= N (N - 1 with `exclude`).
    exclude: optional int[Q]: gallery index never returned for query q (e.g. the query
      itself when the gallery contains the queries; -1 = none).
  Returns:
    (indices int64[Q, k], similarities float64[Q, k]), most similar first; ties go to
    the lower gallery index. Rows are L2-normalised first (a zero row has similarity 0
    with everything).
  Raises:
    ValueError: wrong ranks, different D, or k out of range.
  """
  q = np.asarray(query_features, np.float64)
  g = np.asarray(gallery_features, np.float64)
  if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
    raise ValueError(f'cosine_topk: features must be [Q, D] and [N, D], got {q.shape} and '
                     f'{g.shape}')
  n = g.shape[0]
  if exclude is not None:
    exclude = np.asarray(exclude, np.int64).reshape(-1)
    if exclude.shape[0] != q.shape[0] or np.any((exclude < -1) | (exclude >= n)):
      raise ValueError(f'cosine_topk: exclude must hold {q.shape[0]} gallery indices in '
                       f'[-1, {n}) (-1: none), got {exclude.tolist()}')
  limit = n - (1 if exclude is not None else 0)
  if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= limit:
    raise ValueError(f'cosine_topk: k={k!r} must be an integer in [1, {limit}] '
                     f'({n} gallery items)')
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  q, g = unit(q), unit(g)
  indices = np.empty((q.shape[0], k), np.int64)
  sims = np.empty((q.shape[0], k), np.float64)
  chunk = max(1, (1 << 22) // max(n, 1))     # bounds the [chunk, N] similarity block
  for start in range(0, q.shape[0], chunk):
    s = q[start:start + chunk] @ g.T
    if exclude is not None:
      rows = np.arange(s.shape[0])
      ex = exclude[start:start + chunk]
      s[rows[ex >= 0], ex[ex >= 0]] = -np.inf
    order = np.argsort(-s, axis=1, kind='stable')[:, :k]
    indices[start:start + chunk] = order
    sims[start:start + chunk] = np.take_along_axis(s, order, axis=1)
  return indices, sims


def retrieval_figure(query_images, gallery_images, query_features, gallery_features, *,
                     k=5, query_labels=None, gallery_labels=None, exclude=None,
                     class_names=None, title=None):
  """Nearest-neighbour retrieval grid by cosine similarity of features.

  Args:
    query_images: u8[Q, H, W, C] (or float in [0, 1]).
    gallery_images: u8[N, H', W', C] (or float in [0, 1]).
    query_features: float [Q, D]; gallery_features: float [N, D] (e.g. pooled trunk
      features of one endpoint).
    k: neighbours shown per query.
    query_labels, gallery_labels: optional int[Q], int[N] class labels: each neighbour
      is framed and titled green (same class as the query) or red.
    exclude: as `cosine_topk` (e.g. np.arange(Q) when the queries are the gallery's
      first Q items).
    class_names: optional names indexed by label.
    title: the figure's title.
  Returns:
    Figure with Q rows of 1 + k image axes: the query, then its neighbours titled with
    their similarity (and class).
  Raises:
    ValueError: images and features of different counts, labels given for one side only.
  """
  query_images, gallery_images = np.asarray(query_images), np.asarray(gallery_images)
  if len(query_images) != len(query_features) or len(gallery_images) != len(gallery_features):
    raise ValueError(f'retrieval_figure: {len(query_images)} query images for '
                     f'{len(query_features)} features, {len(gallery_images)} gallery images '
                     f'for {len(gallery_features)} features')
  if (query_labels is None) != (gallery_labels is None):
    raise ValueError('retrieval_figure: give both query_labels and gallery_labels, or neither')
  idx, sims = cosine_topk(query_features, gallery_features, k, exclude=exclude)
  qi = _as_unit_images(query_images, 'query_images')
  gi = _as_unit_images(gallery_images, 'gallery_images')
  name = lambda y: str(class_names[y]) if class_names is not None else str(y)
  fig, axes = _panel_grid(len(qi), 1 + k,
                          title or f'nearest neighbours (cosine similarity, top {k})')
  for q in range(len(qi)):
    _show(axes[q, 0], qi[q], 'query' + ('' if query_labels is None
                                       else f'\n{name(int(query_labels[q]))}'))
    for j in range(k):
      g = int(idx[q, j])
      text, colour = f'{sims[q, j]:.3f}', None
      if gallery_labels is not None:
        hit = int(gallery_labels[g]) == int(query_labels[q])
        colour = CORRECT if hit else WRONG
        text += f'\n{name(int(gallery_labels[g]))}'
      ax = axes[q, 1 + j]
      _show(ax, gi[g], text, colour)
      if colour is not None:
        for spine in ax.spines.values():
          spine.set_edgecolor(colour)
          spine.set_linewidth(2.5)
  return fig


# ----------------------------------------------------------------------------- projections


def _features_2d(features, what):
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f'{what}: features must be [N, D] with N >= 2, got {x.shape}')
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{what}: features hold non-finite values')
  return x


def pca_2d(features, n_components=2):
  """Principal-component scores (numpy SVD of the centred features).

  Args:
    features: float [N, D], N >= 2.
    n_components: 1 <= n_components <= min(N, D).
  Returns:
    float64[N, n_components]: (x - mean) projected on the leading principal axes, in
    decreasing variance; each axis' sign makes its largest-magnitude loading positive
    (sklearn's PCA gives the same up to sign).
  Raises:
    ValueError: bad shapes or non-finite features.
  """
  x = _features_2d(features, 'pca_2d')
  if not 1 <= n_components <= min(x.shape):
    raise ValueError(f'pca_2d: n_components={n_components} must be in [1, {min(x.shape)}]')
  x = x - x.mean(axis=0)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  axes = vt[:n_components]
  signs = np.sign(axes[np.arange(n_components), np.argmax(np.abs(axes), axis=1)])
  return x @ (axes * np.where(signs == 0, 1.0, signs)[:, None]).T


def tsne_2d(features, *, perplexity=30.0, seed=0):
  """2-D t-SNE embedding (scikit-learn's TSNE, PCA initialisation).

  Args:
    features: float [N, D].
    perplexity: must be < N (sklearn's rule).
    seed: its random_state.
  Returns:
    float64[N, 2].
  Raises:
    ImportError: scikit-learn missing; ValueError: perplexity >= N.
  """
  x = _features_2d(features, 'tsne_2d')
  try:
    from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('tsne_2d needs scikit-learn: pip install scikit-learn') from None
  if not 0 < perplexity < x.shape[0]:
    raise ValueError(f'tsne_2d: perplexity={perplexity} must be in (0, N={x.shape[0]})')
  return TSNE(n_components=2, perplexity=perplexity, init='pca',
              random_state=seed).fit_transform(x).astype(np.float64)


PROJECTIONS = ('pca', 'tsne')


def projection_figure(features, labels=None, *, method='pca', class_names=None, title=None,
                      perplexity=30.0, seed=0, point_size=8.0):
  """Features projected to 2-D, points coloured by class.

  Args:
    features: float [N, D].
    labels: optional int[N] classes (one colour and legend entry each).
    method: 'pca' (pca_2d) or 'tsne' (tsne_2d, scikit-learn).
    class_names: optional names indexed by label.
    title: the axes' title; perplexity, seed: t-SNE's.
    point_size: scatter marker size.
  Returns:
    Figure with one axes holding one scatter collection per class (sorted labels), in
    the projection's coordinates.
  Raises:
    ValueError: unknown method, labels of the wrong length.
  """
  if method not in PROJECTIONS:
    raise ValueError(f'projection_figure: method={method!r}; allowed: {list(PROJECTIONS)}')
  xy = pca_2d(features) if method == 'pca' else tsne_2d(features, perplexity=perplexity,
                                                          seed=seed)
  fig = _figure(4.5, 4.0)
  ax = fig.subplots()
  if labels is None:
    ax.scatter(xy[:, 0], xy[:, 1], s=point_size)
  else:
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != xy.shape[0]:
      raise ValueError(f'projection_figure: {labels.shape[0]} labels for {xy.shape[0]} '
                       'points')
    classes = np.unique(labels)
    cmap = _matplotlib().colormaps['tab10' if len(classes) <= 10 else 'tab20']
    for i, c in enumerate(classes):
      sel = labels == c
      ax.scatter(xy[sel, 0], xy[sel, 1], s=point_size, color=cmap(i % cmap.N),
                 label=str(class_names[c]) if class_names is not None else str(c))
    ax.legend(fontsize=6, markerscale=1.5, loc='best')
  ax.set_xlabel(f'{method} 1')
  ax.set_ylabel(f'{method} 2')
  ax.set_title(title or f'{method.upper()} of {xy.shape[0]} feature vectors', fontsize=9)
  return fig


# ----------------------------------------------------------------------------- event files


def _crc32c_table():
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data):
  """TFRecord's masked CRC-32C (Castagnoli) of `data`."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(path):
  """The records of a TFRecord file (TensorBoard's event files), TensorFlow-free.

  Record: u64 length, u32 masked CRC of the length, data, u32 masked CRC of the data. The
  length CRC is checked (a bad one raises ValueError); a truncated last record (a file
  still being written) ends the file; the data CRC is not checked (pure-Python CRC of
  every byte would dominate; protobuf parsing catches most corruption).
  """
  with open(path, 'rb') as f:
    while True:
      offset = f.tell()
      header = f.read(12)
      if len(header) < 12:
        return
      length, = struct.unpack('<Q', header[:8])
      if _masked_crc32c(header[:8]) != struct.unpack('<I', header[8:])[0]:
        raise ValueError(f'{path}: corrupt record header at byte {offset}')
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        return
      yield data


def _scalar_of(value, tensor_util):
  """A summary value's scalar, or None (images, histograms, text, ...)."""
  kind = value.WhichOneof('value')
  if kind == 'simple_value':
    return float(value.simple_value)
  if kind == 'tensor':
    try:
      arr = tensor_util.make_ndarray(value.tensor)
    except Exception:  # pylint: disable=broad-except  (a dtype tensorboard cannot decode)
      return None
    if arr.size == 1 and arr.dtype.kind in 'fiub':
      return float(arr.reshape(()))
  return None


def event_files(workdir, *, recursive=False):
  """TensorBoard event files of a directory (sorted by name: creation order)."""
  pattern = os.path.join(workdir, '**' if recursive else '', 'events.out.tfevents.*')
  return sorted(glob.glob(pattern, recursive=recursive))


def read_scalars(workdir, tags=None, *, recursive=False):
  """Scalars of a run's TensorBoard event files, without TensorFlow.

  Reads `events.out.tfevents.*` in `workdir` (the engine's and the linear evaluation's
  clu writers put them there) with tensorboard's protos: TF2 tensor summaries (clu)
  and TF1 simple values alike.

  Args:
    workdir: a directory.
    tags: optional tag names or fnmatch patterns (e.g. 'val_*'); default every scalar.
    recursive: also read sub-directories' files; their tags become '<subdir>/<tag>'.
  Returns:
    {tag: (steps int64[T], values float64[T])} sorted by step; a step written more than
    once (a run resumed from a checkpoint) keeps the last value written (files in
    name order, which is creation order).
  Raises:
    FileNotFoundError: no event file in workdir. ImportError: tensorboard missing.
  """
  try:
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('read_scalars needs tensorboard: pip install tensorboard') from None
  files = event_files(workdir, recursive=recursive)
  if not files:
    raise FileNotFoundError(f'read_scalars: no events.out.tfevents.* files in {workdir!r}'
                            f'{" or below" if recursive else ""}')
  patterns = None if tags is None else [tags] if isinstance(tags, str) else list(tags)
  found = {}
  for path in files:
    sub = os.path.relpath(os.path.dirname(path), workdir)
    prefix = '' if sub == '.' else sub.replace(os.sep, '/') + '/'
    for record in _records(path):
      event = event_pb2.Event.FromString(record)
      if not event.HasField('summary'):
        continue
      for value in event.summary.value:
        tag = prefix + value.tag
        if patterns is not None and not any(fnmatch.fnmatchcase(tag, p) for p in patterns):
          continue
        x = _scalar_of(value, tensor_util)
        if x is not None:
          found.setdefault(tag, {})[int(event.step)] = x
  out = {}
  for tag in sorted(found):
    steps = np.array(sorted(found[tag]), np.int64)
    out[tag] = (steps, np.array([found[tag][s] for s in steps], np.float64))
  return out


def training_curves_figure(source, tags=('train_loss', 'val_accuracy'), *, ncols=2,
                           title=None, recursive=False):
  """Training curves, one subplot per tag.

  Args:
    source: a workdir (read with `read_scalars`) or a {tag: (steps, values)} dict.
    tags: tag names or fnmatch patterns (each pattern expands to its matching tags,
      sorted), e.g. ('train_loss', 'val_*').
    ncols: subplots per row.
    title: the figure's title (default: the workdir).
    recursive: passed to read_scalars.
  Returns:
    Figure with one axes per tag (in the order given), each with one line (steps,
    values).
  Raises:
    ValueError: a tag or pattern that matches nothing (the message lists the tags there).
  """
  scalars = (read_scalars(source, recursive=recursive) if isinstance(source, (str, os.PathLike))
             else source)
  chosen = []
  for t in ([tags] if isinstance(tags, str) else tags):
    match = sorted(n for n in scalars if fnmatch.fnmatchcase(n, t))
    if not match:
      raise ValueError(f'training_curves_figure: no scalar tag {t!r}; available: '
                       f'{sorted(scalars)}')
    chosen += [m for m in match if m not in chosen]
  ncols = max(1, min(ncols, len(chosen)))
  rows = math.ceil(len(chosen) / ncols)
  fig = _figure(3.2 * ncols, 2.4 * rows + 0.3)
  for i, tag in enumerate(chosen):
    ax = fig.add_subplot(rows, ncols, i + 1)
    steps, values = scalars[tag]
    ax.plot(np.asarray(steps), np.asarray(values), marker='.' if len(steps) < 30 else None,
            linewidth=1.2)
    ax.set_title(tag, fontsize=9)
    ax.set_xlabel('step', fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  if title or isinstance(source, (str, os.PathLike)):
    fig.suptitle(title or str(source), fontsize=9)
  return fig
