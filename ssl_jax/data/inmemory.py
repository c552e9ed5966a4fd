"""The device-resident training stream for small datasets (CIFAR-sized): no TensorFlow.

The uint8 images live on the devices (replicated); each step gathers its batch from a
per-epoch permutation and applies the preprocessing string's JAX ops
(`ssl_jax.data.ops`) on the device, so the host does no per-step work. Deterministic
in (seed, step): a resumed run sees the same batches as an uninterrupted one.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import parallel
from ssl_jax.data import ops


def upload(mesh, images, labels):
  """(images, labels) replicated on every device of the mesh (one copy per device)."""
  return (parallel.replicate(mesh, images),
          parallel.replicate(mesh, np.asarray(labels, np.int32)))


class InMemoryTrain:
  """Training batches from arrays on device.

  Args:
    mesh: the 1-D data mesh.
    images: u8[N, H, W, C] (host numpy).
    labels: i32[N].
    batch_size: global batch (source images).
    seed: shuffling/augmentation seed.
    pp: the training preprocessing string (e.g. 'decode|inception_crop(32)|flip_lr').
    device_arrays: `upload(mesh, images, labels)` made earlier (shared by streams).
  Raises:
    ValueError for a batch larger than the split or bad arrays.
  """

  def __init__(self, mesh, images, labels, batch_size, seed, pp='', device_arrays=None):
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f'in-memory images must be uint8 [N,H,W,C], got {images.dtype} '
                       f'{images.shape}')
    self.num_examples = images.shape[0]
    if batch_size > self.num_examples:
      raise ValueError(f'batch_size={batch_size} exceeds the {self.num_examples} in-memory '
                       'examples')
    self.steps_per_epoch = self.num_examples // batch_size
    self._images, self._labels = device_arrays or upload(mesh, images, labels)
    self._key = parallel.replicate(mesh, jax.random.key_data(jax.random.key(seed)))
    self._step_sharding = parallel.replicated(mesh)
    self._fn = jax.jit(
        functools.partial(_batch, batch_size=batch_size, steps_per_epoch=self.steps_per_epoch,
                          augment=ops.make_batch_fn(pp, train=True)),
        out_shardings=parallel.batch_sharded(mesh))

  def batch(self, step):
    """The global batch of `step`: dict(image u8[B, ...], label i32[B], mask bool[B])."""
    # An explicit 4-byte copy: the loop runs under jax.transfer_guard('disallow').
    return self._fn(self._images, self._labels, self._key,
                    jax.device_put(np.int32(step), self._step_sharding))


def _batch(images, labels, key, step, *, batch_size, steps_per_epoch, augment):
  key = jax.random.wrap_key_data(key)
  epoch, index = step // steps_per_epoch, step % steps_per_epoch
  perm = jax.random.permutation(jax.random.fold_in(key, epoch), images.shape[0])
  idx = jax.lax.dynamic_slice(perm, (index * batch_size,), (batch_size,))
  ims = augment(jax.random.fold_in(jax.random.fold_in(key, 1 << 30), step), images[idx])
  return {'image': ims, 'label': labels[idx], 'mask': jnp.ones((batch_size,), bool)}
