"""Patch extraction for the patch tasks (the study's `crop_patches` + `standardization`).

The host pipeline delivers uint8 crops [B, S, S, 3] (the study: resize 292, gray
p=0.66, crop 255). Here, in JAX: the crop is split into a grid x grid array of
cells of floor(S / grid) pixels (85), and inside every cell one patch of
cell - jitter pixels (64) is cut at an offset drawn uniformly from 0..jitter
(inclusive, per patch and per axis, as tf.random_crop does; eval: the central
offset jitter // 2, i.e. 10). Every patch is then standardised on its own, so
colour/brightness statistics shared between patches are no shortcut.
"""
import re

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


def make_pretext_patches(config, rng, images, train):
  """`make_patches` with the geometry of `config.patches` (grid, jitter, patch_size)."""
  p = config.patches
  return make_patches(rng, images, grid=p.grid, jitter=p.jitter, train=train,
                      patch_size=p.patch_size)


def validate_config(config):
  """ValueError for a patch geometry that cannot work, before anything compiles.

  Checks config.patches and, where the host preprocessing strings end in
  `crop(S)`, that S // grid - jitter == patch_size.
  """
  p = config.patches
  if p.grid != 3:
    raise ValueError(f'config.patches.grid={p.grid!r}: the patch tasks use a 3x3 grid '
                     '(jigsaw permutes 9 patches, relative patch location needs a centre); '
                     'allowed: 3')
  for key in ('patch_size', 'embed_dim', 'head_hidden'):
    if not isinstance(p[key], int) or p[key] < 1:
      raise ValueError(f'config.patches.{key}={p[key]!r} must be an integer >= 1')
  if not isinstance(p.jitter, int) or p.jitter < 0:
    raise ValueError(f'config.patches.jitter={p.jitter!r} must be an integer >= 0')
  if not 0.0 <= p.dropout_rate < 1.0:
    raise ValueError(f'config.patches.dropout_rate={p.dropout_rate!r} must be in [0, 1)')
  for key in ('pp_train', 'pp_eval'):
    size = crop_size(config.input[key])
    if size is not None and geometry(size, p.grid, p.jitter)[1] != p.patch_size:
      cell, patch = geometry(size, p.grid, p.jitter)
      raise ValueError(
          f'config.input.{key}={config.input[key]!r} crops {size} px: {cell}-px cells '
          f'minus jitter {p.jitter} give {patch}-px patches, but '
          f'config.patches.patch_size={p.patch_size}; allowed crop sizes: '
          f'{p.grid * (p.patch_size + p.jitter)}..'
          f'{p.grid * (p.patch_size + p.jitter) + p.grid - 1}')


def crop_size(pp):
  """S of the last `crop(S)` op of a preprocessing string, else None."""
  sizes = re.findall(r'(?:^|\|)\s*crop\((\d+)\)', pp or '')
  return int(sizes[-1]) if sizes else None
