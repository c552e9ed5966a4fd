"""Patch geometry, jitter and per-patch standardisation against NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import jigsaw as jigsaw_config
from configs import relative_patch_location as rpl_config
from ssl_jax.tasks import patches


def np_crop(images, offsets, grid, p):
  """Reference: cell (r, c) of an S-px image starts at (r * (S // grid), c * (S // grid))."""
  b, s = images.shape[:2]
  cell = s // grid
  out = np.zeros((b, grid * grid, p, p, images.shape[-1]), images.dtype)
  for i in range(b):
    for r in range(grid):
      for c in range(grid):
        oy, ox = offsets[i, r * grid + c]
        y, x = r * cell + oy, c * cell + ox
        out[i, r * grid + c] = images[i, y:y + p, x:x + p]
  return out


def np_standardize(x):
  x = x.astype(np.float64)
  n = x[0].size
  return (x - x.mean()) / max(x.std(), 1 / np.sqrt(n))


def test_study_geometry_and_crop_matches_numpy():
  assert patches.geometry(255, 3, 21) == (85, 64)
  images = np.random.default_rng(0).integers(0, 256, (2, 255, 255, 3), dtype=np.uint8)
  offsets = patches.sample_offsets(jax.random.key(1), 2, 3, 21, train=True)
  got = patches.crop_patches(jnp.asarray(images), offsets, 3, 64)
  assert got.shape == (2, 9, 64, 64, 3) and got.dtype == jnp.uint8
  np.testing.assert_array_equal(got, np_crop(images, np.asarray(offsets), 3, 64))


def test_train_offsets_cover_zero_to_jitter_independently():
  off = np.asarray(patches.sample_offsets(jax.random.key(0), 512, 3, 21, train=True))
  assert off.shape == (512, 9, 2)
  assert set(np.unique(off)) == set(range(22))   # 0..21 inclusive, every value.
  # Independent per patch and per axis: rows/cols and patches are not tied.
  assert np.mean(off[..., 0] == off[..., 1]) < 0.1
  assert np.mean(off[:, 0] == off[:, 1]) < 0.1


def test_eval_offsets_are_central():
  off = np.asarray(patches.sample_offsets(None, 3, 3, 21, train=False))
  assert (off == 10).all()
  images = np.arange(255 * 255 * 3, dtype=np.int32).reshape(1, 255, 255, 3)
  got = np.asarray(patches.crop_patches(jnp.asarray(images), off[:1], 3, 64))
  np.testing.assert_array_equal(got[0, 4], images[0, 95:159, 95:159])  # 85 + 10.


def test_make_patches_standardises_each_patch():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
  images[1, :32, :32] = 7                       # A flat top-left cell: std floor.
  key = jax.random.key(5)
  got = np.asarray(patches.make_patches(key, jnp.asarray(images), grid=3, jitter=8,
                                        train=True, patch_size=24))
  assert got.shape == (2, 9, 24, 24, 3) and got.dtype == np.float32
  # make_patches draws its offsets with sample_offsets from the same key.
  offsets = np.asarray(patches.sample_offsets(key, 2, 3, 8, train=True))
  want = np_crop(images, offsets, 3, 24)
  for b in range(2):
    for k in range(9):
      np.testing.assert_allclose(got[b, k], np_standardize(want[b, k]), atol=2e-5)
  np.testing.assert_array_equal(got[1, 0], 0.0)


def test_geometry_mismatch_is_an_error():
  with pytest.raises(ValueError, match='patch_size=64'):
    patches.make_patches(jax.random.key(0), jnp.zeros((1, 224, 224, 3), jnp.uint8),
                         grid=3, jitter=21, train=False, patch_size=64)


@pytest.mark.parametrize('module,name', [(jigsaw_config, 'jigsaw'),
                                         (rpl_config, 'relative_patch_location')])
@pytest.mark.parametrize('preset', jigsaw_config.PRESETS)
def test_preset_geometry_is_consistent(module, name, preset):
  from ssl_jax.data import ops  # pylint: disable=g-import-not-at-top
  c = module.get_config(preset)
  patches.validate_settings(c, name)
  s = c.tasks[name]
  size = c.data.image_size
  for pp, train in ((c.input.pp_train, True), (c.input.pp_eval, False)):
    out = ops.output_shape(pp, (size, size, 3), train=train)[0]
    assert patches.geometry(out, 3, s.jitter)[1] == s.patch_size
  c.input.pp_eval = c.input.pp_eval.replace('crop(', 'crop(1')
  with pytest.raises(ValueError, match='pp_eval'):
    patches.validate_settings(c, name)


def test_unknown_preset():
  with pytest.raises(ValueError, match="'imagenet2012'.*allowed"):
    jigsaw_config.get_config('imagenet2012')
  with pytest.raises(ValueError, match='relative_patch_location.py'):
    rpl_config.get_config('cifar')
