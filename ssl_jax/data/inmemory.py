"""A device-resident source for small datasets (CIFAR-sized): no TensorFlow at run time.

The uint8 images live on the devices (replicated); each step gathers its batch
from a per-epoch permutation and augments it on the device, so the host does no
per-step work. Deterministic in (seed, step): a resumed run sees the same batches.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import parallel
from ssl_jax.data import augment


class InMemoryTrain:
  """Training batches from arrays on device.

  Args:
    mesh: the 1-D data mesh.
    images: u8[N, H, W, 3] (host numpy).
    labels: i32[N].
    batch_size: global batch (source images).
    seed: shuffling/augmentation seed.
    augmentation: one of `augment.AUGMENTATIONS`.
    image_size: output size (default: the stored size).
  """

  def __init__(self, mesh, images, labels, batch_size, seed, augmentation='none',
               image_size=None):
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f'in-memory images must be uint8 [N,H,W,C], got {images.dtype} {images.shape}')
    self.num_examples = images.shape[0]
    if batch_size > self.num_examples:
      raise ValueError(f'batch_size={batch_size} exceeds the {self.num_examples} in-memory examples')
    self.steps_per_epoch = self.num_examples // batch_size
    self._images = parallel.replicate(mesh, images)
    self._labels = parallel.replicate(mesh, np.asarray(labels, np.int32))
    self._key = parallel.replicate(mesh, jax.random.key_data(jax.random.key(seed)))
    self._step_sharding = parallel.replicated(mesh)
    self._fn = jax.jit(
        functools.partial(_batch, batch_size=batch_size, steps_per_epoch=self.steps_per_epoch,
                          augmentation=augmentation, image_size=image_size),
        out_shardings=parallel.batch_sharded(mesh))

  def batch(self, step):
    """The global batch of `step`: dict(image u8[B,...], label i32[B], mask bool[B])."""
    # An explicit 4-byte copy: the loop runs under jax.transfer_guard('disallow').
    return self._fn(self._images, self._labels, self._key,
                    jax.device_put(np.int32(step), self._step_sharding))


def _batch(images, labels, key, step, *, batch_size, steps_per_epoch, augmentation,
           image_size):
  key = jax.random.wrap_key_data(key)
  epoch, index = step // steps_per_epoch, step % steps_per_epoch
  perm = jax.random.permutation(jax.random.fold_in(key, epoch), images.shape[0])
  idx = jax.lax.dynamic_slice(perm, (index * batch_size,), (batch_size,))
  ims = augment.augment_batch(jax.random.fold_in(jax.random.fold_in(key, 1 << 30), step),
                              images[idx], augmentation, image_size)
  return {'image': ims, 'label': labels[idx], 'mask': jnp.ones((batch_size,), bool)}


def eval_batches(images, labels, batch_size, max_batches=-1):
  """Host batches over every example once; the last is zero-padded with mask False."""
  n = images.shape[0]
  for i, start in enumerate(range(0, n, batch_size)):
    if 0 < max_batches <= i:
      return
    ims, labs = images[start:start + batch_size], labels[start:start + batch_size]
    pad = batch_size - ims.shape[0]
    mask = np.concatenate([np.ones(ims.shape[0], bool), np.zeros(pad, bool)])
    if pad:
      ims = np.concatenate([ims, np.zeros((pad,) + ims.shape[1:], ims.dtype)])
      labs = np.concatenate([labs, np.zeros(pad, labs.dtype)])
    yield {'image': ims, 'label': labs.astype(np.int32), 'mask': mask}


def synthetic_arrays(num_train, num_val, image_size, num_classes, seed=0):
  """Random uint8 images and labels ({'train': (x, y), 'val': (x, y)}) for tests and benchmarks."""
  rng = np.random.RandomState(seed)
  make = lambda n: (rng.randint(0, 256, (n, image_size, image_size, 3)).astype(np.uint8),
                    rng.randint(0, num_classes, n).astype(np.int32))
  return {'train': make(num_train), 'val': make(num_val)}
