"""Data parallelism with pmap semantics, written with `jax.shard_map` over a 1-D mesh.

One program per device: every device sees its own slice of the global batch,
BatchNorm statistics are per device unless the model was built with
`bn_axis_name='data'`, and gradients are the mean over the global batch.
"""
import os

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from ssl_jax import config_lib

AXIS = 'data'


_DISTRIBUTED_DONE = []

# What jax.distributed.initialize's cluster auto-detection reads (jax 0.10.2,
# jax/_src/clusters): any one of these environments fills the values left unset.
# tests/test_collectives.py checks the SLURM and Open MPI names against jax's detection.
CLUSTER_ENVIRONMENTS = (
    ('SLURM', ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
               'SLURM_LOCALID')),
    ('Open MPI', ('OMPI_MCA_orte_hnp_uri', 'OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK')),
    ('Kubernetes (with the kubernetes package)', ('KUBERNETES_SERVICE_HOST',)),
    ('GKE TPU', ('TPU_PROCESS_ADDRESSES or TPU_WORKER_HOSTNAMES',)),
)
COORDINATOR_ENV = 'JAX_COORDINATOR_ADDRESS'  # read by jax when no address is given


def _cluster_detected():
  """True when one of jax's (non opt-in) cluster environments is present, as
  `jax.distributed.initialize` would see it; None when that cannot be told (jax's
  private cluster registry moved), in which case jax decides."""
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
    envs = [e for e in clusters.ClusterEnv._cluster_types  # pylint: disable=protected-access
            if not e.opt_in_only_method]
  except (ImportError, AttributeError):
    return None
  return any(e.is_env_present() for e in envs)


def _check_address(address, where):
  host, sep, port = address.rpartition(':')
  if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
    raise config_lib.ConfigError(
        f'{where}={address!r}: must be HOST:PORT (process 0\'s host name or IP and a '
        'free port 1..65535), e.g. 10.0.0.1:1234')


def distributed_kwargs(d, environ=None):
  """Checks `config.distributed` and returns the kwargs for `jax.distributed.initialize`.

  Args:
    d: the `config.distributed` ConfigDict: coordinator_address (str, '' = unset),
      num_processes (int, -1 = unset), process_id (int, -1 = unset).
    environ: the environment (default os.environ), for JAX_COORDINATOR_ADDRESS.
  Returns:
    dict(coordinator_address=str|None, num_processes=int|None, process_id=int|None):
    None where unset, for jax's cluster auto-detection to fill.
  Raises:
    config_lib.ConfigError (a ValueError; one line): an explicit value out of range
    (num_processes < 1, process_id not in [0, num_processes), an address not
    HOST:PORT, other negatives than -1), or values left unset off a cluster (naming
    the missing ones and the environment variables auto-detection reads). Nothing
    here touches the network, so a bad value never waits on a connection timeout.
  """
  environ = os.environ if environ is None else environ
  address, n, pid = d.coordinator_address, d.num_processes, d.process_id
  for key, value in (('num_processes', n), ('process_id', pid)):
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
      raise config_lib.ConfigError(
          f'config.distributed.{key}={value!r}: must be an int (-1: from the cluster)')
  if not isinstance(address, str):
    raise config_lib.ConfigError(
        f'config.distributed.coordinator_address={address!r}: must be a str (HOST:PORT)')
  if n == 0:
    raise config_lib.ConfigError('config.distributed.num_processes=0: must be >= 1 '
                                 '(-1: from the cluster)')
  if n > 0 and pid >= n:
    raise config_lib.ConfigError(
        f'config.distributed.process_id={pid} with num_processes={n}: the id must be '
        f'in [0, {n - 1}]')
  if address:
    _check_address(address, 'config.distributed.coordinator_address')
  elif environ.get(COORDINATOR_ENV):
    _check_address(environ[COORDINATOR_ENV], COORDINATOR_ENV)
  missing = [name for name, unset in (
      ('coordinator_address', not address and not environ.get(COORDINATOR_ENV)),
      ('num_processes', n < 0), ('process_id', pid < 0)) if unset]
  if missing and _cluster_detected() is False:
    names = ', '.join(f'config.distributed.{m}' for m in missing)
    envs = '; '.join(f'{name}: {", ".join(v)}' for name, v in CLUSTER_ENVIRONMENTS)
    raise config_lib.ConfigError(
        f'config.distributed.initialize=True but JAX detected no cluster and {names} '
        f'{"is" if len(missing) == 1 else "are"} unset: pass coordinator_address=HOST:PORT of '
        'process 0, num_processes and process_id (0..num_processes-1) to '
        f'every process (the address may also come from {COORDINATOR_ENV}), or run where '
        f'JAX auto-detects the cluster from the environment ({envs}) or on a Cloud TPU VM')
  return dict(coordinator_address=address or None,
              num_processes=n if n >= 0 else None,
              process_id=pid if pid >= 0 else None)


def maybe_initialize_distributed(config):
  """`jax.distributed.initialize` when `config.distributed.initialize` (once per process).

  Unset values (empty coordinator address, -1 counts) are left to JAX's cluster
  auto-detection (TPU pods, SLURM, Open MPI, ...); set ones are passed explicitly.
  Must run before anything touches the devices.

  Raises:
    config_lib.ConfigError (one line, before any connection is attempted): see
    `distributed_kwargs`; also jax's own ValueError/TypeError about the values.
  """
  d = config.distributed
  if not d.initialize or _DISTRIBUTED_DONE:
    return
  kwargs = distributed_kwargs(d)
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, TypeError) as e:
    raise config_lib.ConfigError(
        f'jax.distributed.initialize({", ".join(f"{k}={v!r}" for k, v in kwargs.items())}): '
        f'{" ".join(str(e).split())}') from e
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

