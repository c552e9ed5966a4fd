"""The rotation pretext stage against numpy's rot90."""
import jax
import numpy as np

from ssl_jax.tasks import rotation


def test_rotate4_matches_numpy_rot90_image_major():
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (3, 5, 5, 3)).astype(np.uint8)
  rotated, labels = rotation.rotate4(images)
  rotated, labels = np.asarray(rotated), np.asarray(labels)
  assert rotated.shape == (12, 5, 5, 3) and rotated.dtype == np.uint8
  for b in range(3):
    for k in range(4):
      # Counter-clockwise: label k <=> np.rot90(image, k) over the (H, W) axes.
      np.testing.assert_array_equal(rotated[4 * b + k], np.rot90(images[b], k))
      assert labels[4 * b + k] == k


def test_rotation_is_counter_clockwise():
  # A single bright pixel at the top-right corner moves to the top-left after 90 deg CCW.
  image = np.zeros((1, 3, 3, 1), np.uint8)
  image[0, 0, 2, 0] = 255
  rotated, _ = rotation.rotate4(image)
  assert np.asarray(rotated)[1, 0, 0, 0] == 255


def test_pretext_fn_scales_to_minus_one_one_and_is_jittable():
  images = np.array([[[[0, 255, 51]]]], np.uint8).repeat(2, 1).repeat(2, 2)
  fn = jax.jit(rotation.make_pretext_fn(None, train=True))
  inputs, labels = fn(jax.random.key(0), images, np.zeros(1, np.int32))
  np.testing.assert_allclose(np.asarray(inputs)[0, 0, 0], [-1.0, 1.0, 51 / 255 * 2 - 1], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(labels), [0, 1, 2, 3])
