"""Data parallelism with pmap semantics, written with `jax.shard_map` over a 1-D mesh.

One program per device: every device sees its own slice of the global batch,
BatchNorm statistics are per device unless the model was built with
`bn_axis_name='data'`, and gradients are the mean over the global batch.
"""
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

AXIS = 'data'


_DISTRIBUTED_DONE = []


def maybe_initialize_distributed(config):
  """`jax.distributed.initialize` when `config.distributed.initialize` (once per process).

  With an empty coordinator address JAX reads the cluster from the environment
  (TPU pods, SLURM, ...); otherwise the explicit address, process count and id.
  Must run before anything touches the devices.
  """
  d = config.distributed
  if not d.initialize or _DISTRIBUTED_DONE:
    return
  kwargs = {}
  if d.coordinator_address:
    kwargs = dict(coordinator_address=d.coordinator_address,
                  num_processes=d.num_processes, process_id=d.process_id)
  jax.distributed.initialize(**kwargs)
  _DISTRIBUTED_DONE.append(True)


def make_mesh(devices=None):
  """A 1-D mesh named 'data' over every device of every host (classic Auto axes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharded(mesh):
  return NamedSharding(mesh, P(AXIS))


def global_batch(mesh, local_batch):
  """Host-local numpy batch (pytree) -> global jax arrays sharded along 'data'.

  Each host passes its own share (global batch / process count); this is an
  explicit transfer, allowed under the transfer guard.
  """
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def replicate(mesh, tree):
  """Puts a pytree (identical on every host) on every device of the mesh.

  Works across hosts, where `jax.device_put` to non-addressable devices cannot.
  """
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)

