"""Patch extraction for the patch tasks (the study's `crop_patches` + `standardization`).

The preprocessing string delivers uint8 crops [B, S, S, 3] (the study: resize 292,
gray p=0.66, crop 255), on either data source. Here, in JAX: the crop is split into a grid x grid array of
cells of floor(S / grid) pixels (85), and inside every cell one patch of
cell - jitter pixels (64) is cut at an offset drawn uniformly from 0..jitter
(inclusive, per patch and per axis, as tf.random_crop does; eval: the central
offset jitter // 2, i.e. 10). Every patch is then standardised on its own, so
colour/brightness statistics shared between patches are no shortcut.
"""
import jax
import jax.numpy as jnp


def geometry(image_size, grid, jitter):
  """(cell, patch) sizes in pixels for a square crop of `image_size`."""
  cell = image_size // grid
  return cell, cell - jitter


def sample_offsets(rng, batch, grid, jitter, train):
  """Top-left offsets of each patch inside its cell.

  Args:
    rng: PRNG key (unused when not train).
    batch: B.
    grid: cells per side (3).
    jitter: cell - patch size (21).
    train: random offsets in [0, jitter] per patch and axis; else jitter // 2.
  Returns:
    i32[B, grid*grid, 2] (row offset, column offset), patches in row-major order.
  """
  shape = (batch, grid * grid, 2)
  if train:
    return jax.random.randint(rng, shape, 0, jitter + 1, dtype=jnp.int32)
  return jnp.full(shape, jitter // 2, jnp.int32)


def crop_patches(images, offsets, grid, patch_size):
  """Cuts one patch per grid cell at the given offsets.

  Args:
    images: [B, H, W, C] (any dtype); the last H % grid rows / W % grid columns
      are never used, as in the study.
    offsets: int[B, grid*grid, 2] from `sample_offsets`.
    grid: cells per side.
    patch_size: p <= cell size.
  Returns:
    [B, grid*grid, p, p, C] with patch index = row * grid + col; the patch of cell
    (r, c) is images[b, r*ch + oy : r*ch + oy + p, c*cw + ox : c*cw + ox + p].
  """
  b, h, w, ch = images.shape
  cell_h, cell_w = h // grid, w // grid
  if patch_size > min(cell_h, cell_w):
    raise ValueError(f'patch_size {patch_size} exceeds the {cell_h}x{cell_w} cells of a '
                     f'{h}x{w} image split {grid}x{grid}')
  # [B, H, W, C] -> [B, grid*grid, cell_h, cell_w, C]: a free reshape, then a
  # per-cell dynamic slice (a gather) instead of B*9 separate crops.
  cells = images[:, :grid * cell_h, :grid * cell_w]
  cells = cells.reshape(b, grid, cell_h, grid, cell_w, ch).transpose(0, 1, 3, 2, 4, 5)
  cells = cells.reshape(b, grid * grid, cell_h, cell_w, ch)

  def cut(cell, off):
    return jax.lax.dynamic_slice(cell, (off[0], off[1], 0), (patch_size, patch_size, ch))

  return jax.vmap(jax.vmap(cut))(cells, offsets)


def standardize(x):
  """tf.image.per_image_standardization over the last three axes, in float32.

  (x - mean) / max(std, 1/sqrt(N)), N = h*w*c, mean/std over all pixels and channels;
  the floor keeps flat (e.g. uniform) patches finite.
  """
  x = x.astype(jnp.float32)
  axes = (-3, -2, -1)
  n = x.shape[-3] * x.shape[-2] * x.shape[-1]
  mean = jnp.mean(x, axis=axes, keepdims=True)
  std = jnp.std(x, axis=axes, keepdims=True)
  return (x - mean) / jnp.maximum(std, jax.lax.rsqrt(jnp.float32(n)))


def make_patches(rng, images, *, grid, jitter, train, patch_size=None):
  """u8[B, S, S, 3] -> standardised f32[B, grid*grid, p, p, 3], p = S//grid - jitter.

  Args:
    rng: PRNG key for the offsets (train only).
    images: uint8 crops from the host pipeline.
    grid, jitter: the study's splits_per_side (3) and patch_jitter (21).
    train: random offsets; else central.
    patch_size: if given, the expected p: a mismatch between the host crop size
      and config.patches raises here, at trace time, with the sizes involved.
  """
  b, h, w, _ = images.shape
  cell, p = geometry(min(h, w), grid, jitter)
  if p < 1 or (patch_size is not None and p != patch_size):
    raise ValueError(
        f'{h}x{w} input crops split {grid}x{grid} give {cell}-px cells and, with '
        f'jitter {jitter}, {p}-px patches, but config.patches.patch_size={patch_size}; '
        'make the host crop size = grid * (patch_size + jitter) (+ remainder < grid)')
  offsets = sample_offsets(rng, b, grid, jitter, train)
  return standardize(crop_patches(images, offsets, grid, p))


def make_pretext_patches(settings, rng, images, train):
  """`make_patches` with the geometry of a patch task's settings (grid, jitter, patch_size)."""
  return make_patches(rng, images, grid=settings.grid, jitter=settings.jitter, train=train,
                      patch_size=settings.patch_size)


def eval_input(settings):
  """The patch models' evaluation input (the study's, spec section 7.1).

  Images u8[B, 3p, 3p, 3] (preprocessing `decode|resize_small(3.5p)|crop(3p)`: the
  study's 224 -> 192 for p = 64) -> f32[B * 9, p, p, 3]: nine exact cells (jitter 0),
  each standardised; features are then combined over the 9 patches.
  """
  from ssl_jax import tasks  # pylint: disable=g-import-not-at-top
  grid, p = settings.grid, settings.patch_size
  crop = grid * p
  resize = int(round(crop * 224 / 192))  # The study: 224 -> 192 = 3 x 64.

  def fn(images):
    x = make_patches(None, images, grid=grid, jitter=0, train=False)
    return x.reshape((-1,) + x.shape[2:])

  return tasks.EvalInput('patches', fn, per_image=grid * grid,
                         pp=f'decode|resize_small({resize})|crop({crop})')


def validate_settings(config, name):
  """ValueError for a patch geometry that cannot work, before anything compiles.

  Checks config.tasks.<name> and that the preprocessing strings' output size S gives
  S // grid - jitter == patch_size.
  """
  from ssl_jax.data import ops  # pylint: disable=g-import-not-at-top
  p = config.tasks[name]
  key = f'config.tasks.{name}'
  if p.grid != 3:
    raise ValueError(f'{key}.grid={p.grid!r}: the patch tasks use a 3x3 grid '
                     '(jigsaw permutes 9 patches, relative patch location needs a centre); '
                     'allowed: 3')
  for k in ('patch_size', 'embed_dim', 'head_hidden'):
    if not isinstance(p[k], int) or p[k] < 1:
      raise ValueError(f'{key}.{k}={p[k]!r} must be an integer >= 1')
  if not isinstance(p.jitter, int) or p.jitter < 0:
    raise ValueError(f'{key}.jitter={p.jitter!r} must be an integer >= 0')
  if not 0.0 <= p.dropout_rate < 1.0:
    raise ValueError(f'{key}.dropout_rate={p.dropout_rate!r} must be in [0, 1)')
  size = config.data.image_size
  for pp_key, train in (('pp_train', True), ('pp_eval', False)):
    try:
      shape = ops.output_shape(config.input[pp_key] or 'decode', (size, size, 3),
                               train=train)
    except ValueError as e:
      raise ValueError(f'config.input.{pp_key}={config.input[pp_key]!r}: {e}') from None
    s = min(shape[-3:-1])
    cell, patch = geometry(s, p.grid, p.jitter)
    if patch != p.patch_size:
      lo = p.grid * (p.patch_size + p.jitter)
      raise ValueError(
          f'config.input.{pp_key}={config.input[pp_key]!r} gives {s}-px images: {cell}-px '
          f'cells minus jitter {p.jitter} are {patch}-px patches, but {key}.patch_size='
          f'{p.patch_size}; allowed image sizes: {lo}..{lo + p.grid - 1}')
