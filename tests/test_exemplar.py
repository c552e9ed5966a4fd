"""Exemplar: the semi-hard triplet loss against a brute-force reference, its gradients,
its degenerate cases, and the copies the preprocessing string makes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import exemplar as exemplar_config
from ssl_jax import tasks
from ssl_jax.data import ops
from ssl_jax.tasks import exemplar


def reference_triplet_semihard(x, labels, margin):
  """The TF contrib algorithm, written out with loops (float64 numpy)."""
  x = np.asarray(x, np.float64)
  n = len(x)
  d = ((x[:, None] - x[None]) ** 2).sum(-1)
  total, count = 0.0, 0
  per_anchor = np.zeros(n)
  for a in range(n):
    negs = [d[a, k] for k in range(n) if labels[k] != labels[a]]
    terms = []
    for p in range(n):
      if p == a or labels[p] != labels[a]:
        continue
      farther = [v for v in negs if v > d[a, p]]
      if farther:
        neg = min(farther)
      else:
        neg = max(negs) if negs else 0.0
      terms.append(max(d[a, p] - neg + margin, 0.0))
    total += sum(terms)
    count += len(terms)
    per_anchor[a] = np.mean(terms) if terms else 0.0
  return total / max(count, 1), per_anchor


def np_normalize(x, axis):
  return x / np.sqrt(np.maximum((x ** 2).sum(axis, keepdims=True), 1e-12))


@pytest.mark.parametrize('normalization,axis', [('l2', 1), ('batch_axis', 0)])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_triplet_loss_matches_bruteforce(normalization, axis, seed):
  rng = np.random.RandomState(seed)
  images, copies, dim = 5, 4, 6
  emb = rng.randn(images * copies, dim).astype(np.float32)
  labels = np.repeat(np.arange(images), copies)
  perm = rng.permutation(len(labels))                 # any order of the examples
  emb, labels = emb[perm], labels[perm]
  loss_fn = exemplar.make_loss(0.5, normalization)
  loss, metrics = loss_fn(jnp.asarray(emb), jnp.asarray(labels), None)
  want, per_anchor = reference_triplet_semihard(np_normalize(emb, axis), labels, 0.5)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics['loss'], per_anchor, rtol=1e-5, atol=1e-6)
  assert 0 < want < 0.5 + 4  # a real mix of active and inactive triplets
  # nn_accuracy: the nearest other example is a copy of the same image.
  xn = np_normalize(emb, axis)
  d = ((xn[:, None] - xn[None]) ** 2).sum(-1) + np.diag(np.full(len(xn), np.inf))
  np.testing.assert_array_equal(metrics['nn_accuracy'],
                                labels[d.argmin(1)] == labels)


def test_semi_hard_choice_hand_worked():
  # 1-D points: anchor 0 at 0, its positive at 1 (d=1), negatives at sqrt(0.5) (d=0.5,
  # closer: not semi-hard) and sqrt(1.2) (d=1.2, the semi-hard one): loss 1 - 1.2 + 0.5.
  x = jnp.asarray([[0.0], [1.0], [np.sqrt(0.5)], [np.sqrt(1.2)]])
  labels = jnp.asarray([0, 0, 1, 2])
  _, per_anchor = exemplar.triplet_semihard_loss(x, labels, margin=0.5)
  np.testing.assert_allclose(per_anchor[0], 0.3, rtol=1e-5)


def test_gradient_matches_finite_differences():
  rng = np.random.RandomState(3)
  x = rng.randn(6, 3)
  labels = np.array([0, 0, 1, 1, 2, 2])
  with jax.enable_x64(True):
    f = lambda e: exemplar.make_loss(0.5, 'l2')(e, jnp.asarray(labels), None)[0]
    g = np.asarray(jax.grad(f)(jnp.asarray(x, jnp.float64)))
    eps = 1e-6
    num = np.zeros_like(x)
    for i in range(x.shape[0]):
      for j in range(x.shape[1]):
        up, down = x.copy(), x.copy()
        up[i, j] += eps
        down[i, j] -= eps
        num[i, j] = (f(jnp.asarray(up)) - f(jnp.asarray(down))) / (2 * eps)
  assert np.abs(g).max() > 1e-3
  np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('normalization', ['l2', 'batch_axis'])
@pytest.mark.parametrize('case', ['equal', 'zero', 'one_image'])
def test_degenerate_batches_give_finite_loss_and_gradient(normalization, case):
  rng = np.random.RandomState(0)
  if case == 'equal':
    emb, labels = np.tile(rng.randn(1, 5), (16, 1)), np.repeat(np.arange(2), 8)
  elif case == 'zero':
    emb, labels = np.zeros((16, 5)), np.repeat(np.arange(2), 8)
  else:  # one image per device: 8 copies, all positives, no negative at all
    emb, labels = rng.randn(8, 5), np.zeros(8, np.int32)
  f = lambda e: exemplar.make_loss(0.5, normalization)(e, jnp.asarray(labels), None)[0]
  loss, grad = jax.value_and_grad(f)(jnp.asarray(emb, jnp.float32))
  assert np.isfinite(loss) and np.isfinite(np.asarray(grad)).all()
  if case in ('equal', 'zero'):
    np.testing.assert_allclose(loss, 0.5, rtol=1e-6)   # d(a,p) = d(a,n) = 0: the margin
  want, _ = reference_triplet_semihard(np_normalize(emb, 0 if normalization == 'batch_axis'
                                                     else 1), labels, 0.5)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)


def test_copies_share_the_gray_decision_and_differ_otherwise():
  c = exemplar_config.get_config('cifar10')
  assert ops.num_views(c.input.pp_train) == c.tasks.exemplar.num_copies == 8
  rng = np.random.RandomState(0)
  # Colourful images: a gray copy is exactly R == G == B everywhere.
  images = rng.randint(0, 256, (48, 32, 32, 3)).astype(np.uint8)
  fn = jax.jit(ops.make_batch_fn(c.input.pp_train, train=True))
  out = np.asarray(fn(jax.random.key(0), images))
  assert out.shape == (48, 8, 32, 32, 3)
  gray = (out[..., 0] == out[..., 1]).all((2, 3)) & (out[..., 1] == out[..., 2]).all((2, 3))
  assert (gray == gray[:, :1]).all()                 # one decision per image
  assert 0.4 < gray[:, 0].mean() < 0.9               # p = 0.66
  # Independent augmentation per copy: no two copies of an image are identical.
  for b in range(48):
    flat = out[b].reshape(8, -1)
    assert len({row.tobytes() for row in flat}) == 8
  np.testing.assert_array_equal(out, np.asarray(fn(jax.random.key(0), images)))
  assert not np.array_equal(out, np.asarray(fn(jax.random.key(1), images)))


def test_pretext_standardises_each_copy_and_labels_source_images():
  c = exemplar_config.get_config('smoke')
  task = tasks.get_task('exemplar', c)
  rng = np.random.RandomState(1)
  images = rng.randint(0, 256, (3, 4, 8, 8, 3)).astype(np.uint8)
  inputs, targets = task.pretext(None, {'image': images}, train=True)
  x = np.asarray(inputs['image'])
  np.testing.assert_allclose(x.mean((2, 3, 4)), 0.0, atol=1e-5)
  np.testing.assert_allclose(x.std((2, 3, 4)), 1.0, rtol=1e-4)
  np.testing.assert_array_equal(targets['label'], np.repeat(np.arange(3), 4))
  assert np.asarray(targets['mask']).all()
  # The batch's mask (False: padding) reaches every copy of its image.
  _, targets = task.pretext(None, {'image': images, 'mask': np.array([True, False, True])},
                            train=True)
  np.testing.assert_array_equal(targets['mask'], np.repeat([True, False, True], 4))
  with pytest.raises(ValueError, match='views'):
    task.pretext(None, {'image': images[:, 0]}, train=True)


def test_bad_settings_are_errors():
  from ssl_jax import config_lib  # pylint: disable=g-import-not-at-top
  for key, value, match in (('normalization', 'axis0', 'normalization'),
                            ('num_copies', 1, 'num_copies'), ('margin', 0.0, 'margin')):
    c = exemplar_config.get_config('smoke')
    c.tasks.exemplar[key] = value
    with pytest.raises(config_lib.ConfigError, match=match):
      config_lib.validate(c, num_devices=8)
  c = exemplar_config.get_config('smoke')
  c.input.pp_train = c.input.pp_train.replace('views(4)', 'views(3)')
  c.input.pp_eval = c.input.pp_eval.replace('views(4)', 'views(3)')
  with pytest.raises(config_lib.ConfigError, match=r'3 view\(s\).*needs 4'):
    config_lib.validate(c, num_devices=8)


@pytest.mark.parametrize('normalization,axis', [('l2', 1), ('batch_axis', 0)])
def test_padding_copies_take_no_part(normalization, axis):
  """Masked copies (evaluation padding) change nothing: the loss, per-anchor losses and
  nn_accuracy of the valid copies are those of the valid copies alone (brute force),
  wherever the padding lies, even on top of an anchor."""
  rng = np.random.RandomState(4)
  images, copies, dim = 5, 4, 6
  emb = rng.randn(images * copies, dim).astype(np.float32)
  labels = np.repeat(np.arange(images), copies)
  mask = np.repeat([True, True, False, True, False], copies)
  emb[~mask] = emb[0] + 1e-3 * rng.randn((~mask).sum(), dim)   # adversarial padding
  loss_fn = exemplar.make_loss(0.5, normalization)
  loss, metrics = loss_fn(jnp.asarray(emb), {'label': jnp.asarray(labels),
                                             'mask': jnp.asarray(mask)}, None)
  xv = np_normalize(emb[mask], axis)
  want, want_per = reference_triplet_semihard(xv, labels[mask], 0.5)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(metrics['loss'])[mask], want_per, rtol=1e-5,
                             atol=1e-6)
  d = ((xv[:, None] - xv[None]) ** 2).sum(-1) + np.diag(np.full(len(xv), np.inf))
  np.testing.assert_array_equal(np.asarray(metrics['nn_accuracy'])[mask],
                                labels[mask][d.argmin(1)] == labels[mask])
  assert not np.asarray(metrics['loss'])[~mask].any()
  assert not np.asarray(metrics['nn_accuracy'])[~mask].any()
  # Without the mask the padding would count (the fault this guards against).
  unmasked, _ = loss_fn(jnp.asarray(emb), jnp.asarray(labels), None)
  assert abs(float(unmasked) - want) > 1e-3


def test_one_image_per_device_is_meaningless():
  """Why validate() refuses it: one source image has no negative, so nn_accuracy is 1
  for any embedding and the loss is minimised by collapsing the copies (no push)."""
  rng = np.random.RandomState(5)
  loss_fn = exemplar.make_loss(0.5, 'l2')
  labels = jnp.zeros(8, jnp.int32)
  for _ in range(3):
    _, metrics = loss_fn(jnp.asarray(rng.randn(8, 5), jnp.float32), labels, None)
    np.testing.assert_array_equal(metrics['nn_accuracy'], 1.0)
  collapsed, _ = loss_fn(jnp.ones((8, 5), jnp.float32), labels, None)
  np.testing.assert_allclose(collapsed, 0.5, rtol=1e-6)   # the margin: its minimum


@pytest.mark.parametrize('key,value,devices,ok', [
    ('batch_size', 8, 8, False), ('batch_size', 16, 8, True), ('batch_size', 8, 4, True),
    ('batch_size', 8, 1, True), ('eval_batch_size', 8, 8, False),
    ('eval_batch_size', 16, 8, True), ('eval_batch_size', 1, 1, False)])
def test_fewer_than_two_images_per_device_is_an_error(key, value, devices, ok):
  c = exemplar_config.get_config('smoke')
  c[key] = value
  if ok:
    exemplar.check_images_per_device(c, devices)
    return
  with pytest.raises(ValueError, match=rf'config\.{key}={value} gives {value // devices} '
                     rf'source image\(s\) per device on {devices} devices.*allowed: >= '
                     rf'{2 * devices}'):
    exemplar.check_images_per_device(c, devices)


def test_validate_refuses_one_image_per_device_at_start_up():
  """Through config_lib (the Task.validate hook, jax.device_count() = 8 here)."""
  from ssl_jax import config_lib  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 8
  c = exemplar_config.get_config('smoke')
  config_lib.validate(c, num_devices=8)                # 16 / 8 = 2 images: allowed
  for key in ('batch_size', 'eval_batch_size'):
    c = exemplar_config.get_config('smoke')
    c[key] = 8
    with pytest.raises(config_lib.ConfigError, match=rf'config\.{key}=8 gives 1 source'):
      config_lib.validate(c, num_devices=8)
  # The study's public configs: 64 / 8 cores in training, 16 / 8 in evaluation.
  c = exemplar_config.get_config('imagenet')
  assert (c.batch_size, c.eval_batch_size) == (64, 16)
  exemplar.check_images_per_device(c, 8)
