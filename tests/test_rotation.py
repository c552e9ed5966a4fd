"""The rotation pretext stage against numpy's rot90, and its head."""
import functools

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


def test_pretext_scales_to_minus_one_one_and_is_jittable():
  images = np.array([[[[0, 255, 51]]]], np.uint8).repeat(2, 1).repeat(2, 2)
  fn = jax.jit(functools.partial(rotation.make_pretext('all'), train=True))
  inputs, labels = fn(jax.random.key(0), {'image': images})
  assert inputs['image'].shape == (1, 4, 2, 2, 3)
  np.testing.assert_allclose(np.asarray(inputs['image'])[0, 0, 0, 0],
                             [-1.0, 1.0, 51 / 255 * 2 - 1], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(labels), [[0, 1, 2, 3]])


def test_random_one_rotation_per_image_and_all_four_at_eval():
  rng = np.random.RandomState(1)
  images = rng.randint(0, 256, (64, 4, 4, 1)).astype(np.uint8)
  pretext = rotation.make_pretext('random_one')
  inputs, labels = pretext(jax.random.key(3), {'image': images}, train=True)
  x, k = np.asarray(inputs['image']), np.asarray(labels)
  assert x.shape == (64, 1, 4, 4, 1) and k.shape == (64, 1)
  assert set(k.ravel()) == {0, 1, 2, 3}
  for b in range(64):
    want = np.rot90(images[b], k[b, 0]).astype(np.float32) * 2 / 255 - 1
    np.testing.assert_allclose(x[b, 0], want, atol=1e-6)
  _, labels = pretext(jax.random.key(3), {'image': images}, train=False)
  assert np.asarray(labels).shape == (64, 4)


def test_head_is_the_study_classifier_on_pre_logits():
  """trunk + rotation head == the study's model with a 4-way logits layer (same
  parameters, same output): the classifier moved out of the trunk, the maths did not."""
  from configs import rotation as rotation_config  # pylint: disable=g-import-not-at-top
  from ssl_jax import models, tasks, train  # pylint: disable=g-import-not-at-top
  c = rotation_config.get_config('smoke')
  c.model.name = 'tiny_cnn'
  task = tasks.get_task('rotation', c)
  model = train.make_model(c, task)
  images = np.random.RandomState(0).randint(0, 256, (3, 16, 16, 3)).astype(np.uint8)
  inputs, _ = task.pretext(jax.random.key(0), {'image': images}, train=False)
  v = model.init({'params': jax.random.key(0)}, {'rotation': inputs}, train=False)
  assert set(v['params']['heads']['rotation']) == {'logits'}
  assert 'logits' not in v['params']['trunk']
  out = model.apply(v, {'rotation': inputs}, train=False)[0]['rotation']
  ref = models.create_model('tiny_cnn', num_classes=4, width=1, small_input=True)
  params = dict(v['params']['trunk'], logits=v['params']['heads']['rotation']['logits'])
  want, _ = ref.apply({'params': params, 'batch_stats': v['batch_stats']['trunk']},
                      inputs['image'].reshape(12, 16, 16, 3), train=False)
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
  # Initialiser: Glorot-uniform kernel (bound sqrt(6 / (fan_in + fan_out))), zero bias.
  k = np.asarray(v['params']['heads']['rotation']['logits']['kernel'])
  assert np.abs(k).max() <= np.sqrt(6 / sum(k.shape)) and not np.any(
      v['params']['heads']['rotation']['logits']['bias'])
