"""CPU collective timeouts (ssl_jax/xla_flags.py) and the checks before jax.distributed.

Issue 17: with 8 simulated CPU devices on a loaded machine XLA aborted the process when
one device's thread reached an all-reduce 60 s after the others (20 s warning + 40 s
termination, XLA's defaults). The slow test below makes device 0 late by 70 s.
"""
import os
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from ssl_jax import config_lib
from ssl_jax import parallel
from ssl_jax import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARN = 'xla_cpu_collective_call_warn_stuck_timeout_seconds'
TERMINATE = 'xla_cpu_collective_call_terminate_timeout_seconds'
COUNT = 'xla_force_host_platform_device_count'


# --- XLA_FLAGS composition ---------------------------------------------------------------

def _parsed(flags):
  """'--a=1 --b=2' -> [('a', '1'), ('b', '2')] (order kept, duplicates kept)."""
  return [tuple(t[2:].split('=', 1)) for t in flags.split()]


def test_flags_from_nothing():
  assert xla_flags.cpu_xla_flags(None, 8) == (
      f'--{COUNT}=8 --{WARN}=60 --{TERMINATE}=600')
  assert xla_flags.cpu_xla_flags('', None) == f'--{WARN}=60 --{TERMINATE}=600'


def test_flags_keep_the_users_values_first_and_never_duplicate():
  old = f'--xla_dump_to=/tmp/d  --{TERMINATE}=5 --{COUNT}=4 --xla_backend_optimization_level=2'
  new = xla_flags.cpu_xla_flags(old, 8, extra=('--xla_backend_optimization_level=0',
                                               '--xla_llvm_disable_expensive_passes=true'))
  assert new.startswith(' '.join(old.split()))  # the user's flags, verbatim, first
  assert _parsed(new) == [('xla_dump_to', '/tmp/d'), (TERMINATE, '5'), (COUNT, '4'),
                          ('xla_backend_optimization_level', '2'), (WARN, '60'),
                          ('xla_llvm_disable_expensive_passes', 'true')]
  # Idempotent: conftest in a subprocess of a test applies it again.
  assert xla_flags.cpu_xla_flags(new, 8, extra=('--xla_backend_optimization_level=0',)) == new


def test_flags_match_whole_names_not_substrings():
  # A longer name containing a flag's name does not count as setting it (the old
  # conftest's substring test would have dropped the count here).
  old = f'--{COUNT}_extra=3 --{WARN}=7'
  assert _parsed(xla_flags.cpu_xla_flags(old, 8)) == [
      (f'{COUNT}_extra', '3'), (WARN, '7'), (COUNT, '8'), (TERMINATE, '600')]


@pytest.mark.parametrize('count', [0, -1, True, 8.0, '8'])
def test_flags_reject_a_bad_device_count(count):
  with pytest.raises(ValueError, match='device_count'):
    xla_flags.cpu_xla_flags('', count)


@pytest.mark.parametrize('extra', ['xla_foo=1', '--', '--a=1 --b=2', 3])
def test_flags_reject_a_malformed_extra(extra):
  with pytest.raises(ValueError, match='extra flag'):
    xla_flags.cpu_xla_flags('', 8, extra=(extra,))


def test_conftest_applied_the_timeouts():
  names = {xla_flags.flag_name(t) for t in os.environ['XLA_FLAGS'].split()}
  assert {COUNT, WARN, TERMINATE} <= names
  assert jax.device_count() == 8


# --- the flags against the installed XLA -------------------------------------------------

def _start(code, flags, *args):
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  return subprocess.Popen([sys.executable, '-c', code, *args], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_xla_knows_every_flag_name():
  # XLA aborts at start-up on a name it does not know (a typo would kill every run):
  # the project's flags start JAX; the same with one letter changed does not.
  code = 'import jax; print(jax.device_count())'
  good = _start(code, xla_flags.cpu_xla_flags(None, 8))
  typo = _start(code, xla_flags.cpu_xla_flags(None, 8).replace('_stuck_', '_stcuk_'))
  out, err = good.communicate(timeout=300)
  assert good.returncode == 0 and out.split() == ['8'], err[-3000:]
  _, err = typo.communicate(timeout=300)
  assert typo.returncode != 0 and 'Unknown flag in XLA_FLAGS' in err, err[-3000:]


# One all-reduce over 8 CPU devices; device 0's thread sleeps argv[1] s (a host callback
# inside its program) before it joins, the others wait in XLA's rendezvous.
LATE_ALL_REDUCE = r'''
import sys, time
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import io_callback
from jax.sharding import NamedSharding, PartitionSpec as P

LATE = float(sys.argv[1])
mesh = jax.make_mesh((8,), ('d',))

def host(i):
  if int(i) == 0:
    time.sleep(LATE)
  return np.float32(i)

def body(x):
  i = jax.lax.axis_index('d')
  y = io_callback(host, jax.ShapeDtypeStruct((), jnp.float32), i)
  return jax.lax.psum(x + y, 'd')

f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P('d'), out_specs=P()))
x = jax.device_put(jnp.arange(8.0, dtype=jnp.float32), NamedSharding(mesh, P('d')))
start = time.time()
print('RESULT', float(f(x)[0]), time.time() - start)
'''


def _late_run(proc):
  out, err = proc.communicate(timeout=400)
  result = [l.split() for l in out.splitlines() if l.startswith('RESULT')]
  return proc.returncode, result, err


@pytest.mark.slow
def test_all_reduce_survives_a_device_70s_late():
  """With the project's flags the all-reduce completes; with XLA's defaults the same
  program aborts (both run at once: they sleep, the wall time is one run's, ~75-90 s).
  """
  late = 70  # > 20 + 40 s, XLA's defaults; < 60 + 600 s, ours
  base = f'--{COUNT}=8'
  with_flags = _start(LATE_ALL_REDUCE, xla_flags.cpu_xla_flags(base, 8), str(late))
  defaults = _start(LATE_ALL_REDUCE, base, str(late))
  t0 = time.time()
  rc, result, err = _late_run(with_flags)
  assert rc == 0, err[-4000:]
  # psum over devices of (x_d + d), x_d = d.
  expected = float(np.sum(np.arange(8) + np.arange(8)))
  assert len(result) == 1 and float(result[0][1]) == expected
  assert float(result[0][2]) >= late  # the call did wait for device 0
  assert 'for 60 seconds and may be stuck' in err  # our warning time, not the default 20 s
  assert 'Termination timeout' not in err
  rc, result, err = _late_run(defaults)
  assert rc != 0 and not result, (rc, err[-4000:])
  assert 'Termination timeout' in err and 'for 20 seconds and may be stuck' in err, err[-4000:]
  assert time.time() - t0 < 300


# --- jax.distributed checks ----------------------------------------------------------------

CLUSTER_VARS = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
                'SLURM_LOCALID', 'SLURM_STEP_NUM_NODES', 'OMPI_MCA_orte_hnp_uri',
                'OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_LOCAL_RANK',
                'KUBERNETES_SERVICE_HOST', 'TPU_PROCESS_ADDRESSES', 'TPU_WORKER_HOSTNAMES',
                'JAX_COORDINATOR_ADDRESS')


@pytest.fixture
def off_cluster(monkeypatch):
  """No cluster in the environment; jax.distributed.initialize records its calls (and
  never touches the network: this process's backend is running anyway)."""
  for var in CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  monkeypatch.setattr(parallel, '_DISTRIBUTED_DONE', [])
  return calls


def _config(address='', num_processes=-1, process_id=-1, initialize=True):
  return ml_collections.ConfigDict(dict(distributed=dict(
      initialize=initialize, coordinator_address=address, num_processes=num_processes,
      process_id=process_id)))


def _error(config):
  with pytest.raises(config_lib.ConfigError) as e:
    parallel.maybe_initialize_distributed(config)
  message = str(e.value)
  assert '\n' not in message
  return message


def test_off_cluster_names_what_is_missing_and_the_cluster_variables(off_cluster):
  message = _error(_config())
  assert message.startswith('config.distributed.initialize=True but JAX detected no cluster')
  for key in ('coordinator_address', 'num_processes', 'process_id'):
    assert f'config.distributed.{key}' in message
  for _, names in parallel.CLUSTER_ENVIRONMENTS:
    for name in names:
      assert name in message
  assert 'JAX_COORDINATOR_ADDRESS' in message
  # Only what is missing is named.
  message = _error(_config('10.0.0.1:1234'))
  assert 'config.distributed.num_processes, config.distributed.process_id are unset' in message
  assert 'config.distributed.coordinator_address' not in message.split(' are unset')[0]
  assert off_cluster == []


def test_off_switch_does_nothing(off_cluster):
  parallel.maybe_initialize_distributed(_config(initialize=False, num_processes=0))
  assert off_cluster == []


@pytest.mark.parametrize('env', [
    # jax's SlurmCluster needs these five; jax's OmpiCluster this one.
    {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'n1', 'SLURM_NTASKS': '2',
     'SLURM_PROCID': '0', 'SLURM_LOCALID': '0'},
    {'OMPI_MCA_orte_hnp_uri': '1.2.3.4;tcp://10.0.0.1:1234'},
])
def test_cluster_variables_are_the_ones_jax_detects(off_cluster, monkeypatch, env):
  # The variables the message lists are those jax's auto-detection reacts to: with them
  # set the unset values go to jax (as None) instead of an error.
  for _, names in parallel.CLUSTER_ENVIRONMENTS:
    if set(env) <= set(names):
      break
  else:
    raise AssertionError(f'{sorted(env)} not listed in parallel.CLUSTER_ENVIRONMENTS')
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  parallel.maybe_initialize_distributed(_config())
  assert off_cluster == [dict(coordinator_address=None, num_processes=None, process_id=None)]


def test_slurm_needs_all_five_variables(off_cluster, monkeypatch):
  for k in ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID'):
    monkeypatch.setenv(k, '1')
  assert 'detected no cluster' in _error(_config())


@pytest.mark.parametrize('address,n,pid,match', [
    ('10.0.0.1:1234', 2, 2, 'process_id=2 with num_processes=2: the id must be in [0, 1]'),
    ('10.0.0.1:1234', 0, 0, 'num_processes=0: must be >= 1'),
    ('10.0.0.1:1234', 2, -2, 'process_id=-2: must be an int'),
    ('10.0.0.1:1234', -3, 0, 'num_processes=-3: must be an int'),
    ('10.0.0.1:1234', 2.0, 0, 'num_processes=2.0: must be an int'),
    ('10.0.0.1:1234', True, 0, 'num_processes=True: must be an int'),
    ('localhost', 2, 0, "coordinator_address='localhost': must be HOST:PORT"),
    ('localhost:0', 2, 0, "coordinator_address='localhost:0': must be HOST:PORT"),
    ('localhost:70000', 2, 0, 'must be HOST:PORT'),
    (':1234', 2, 0, 'must be HOST:PORT'),
    ('host:12a', 2, 0, 'must be HOST:PORT'),
    ('', 1, 3, 'process_id=3 with num_processes=1'),  # checked even before the address
])
def test_bad_explicit_values(off_cluster, address, n, pid, match):
  config = _config(address, process_id=pid)
  with config.ignore_type():
    config.distributed.num_processes = n
  assert match in _error(config)
  assert off_cluster == []


def test_bad_address_from_the_environment(off_cluster, monkeypatch):
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'node0')
  assert "JAX_COORDINATOR_ADDRESS='node0': must be HOST:PORT" in _error(_config('', 2, 0))


def test_good_explicit_values_reach_jax_once(off_cluster):
  parallel.maybe_initialize_distributed(_config('[::1]:1234', 4, 3))
  parallel.maybe_initialize_distributed(_config('[::1]:1234', 4, 3))  # once per process
  assert off_cluster == [dict(coordinator_address='[::1]:1234', num_processes=4,
                              process_id=3)]


def test_address_from_the_environment_counts_as_given(off_cluster, monkeypatch):
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'node0:1234')
  parallel.maybe_initialize_distributed(_config('', 2, 1))
  assert off_cluster == [dict(coordinator_address=None, num_processes=2, process_id=1)]


def test_jax_value_errors_become_one_line(off_cluster, monkeypatch):
  def initialize(**kw):
    raise ValueError('first line\n  second line')
  monkeypatch.setattr(jax.distributed, 'initialize', initialize)
  message = _error(_config('h:1', 2, 0))
  assert message.endswith(': first line second line')
  assert parallel._DISTRIBUTED_DONE == []  # pylint: disable=protected-access


def test_main_prints_the_one_line_off_a_cluster(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS}
  out = subprocess.run(
      [sys.executable, '-m', 'ssl_jax.main', '--config', 'configs/rotation.py:smoke',
       '--workdir', str(tmp_path / 'w'), '--config.distributed.initialize=True',
       '--config.distributed.num_processes=2'],
      cwd=ROOT, env=dict(env, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 2 and 'Traceback' not in out.stderr, out.stderr[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: config.distributed.initialize=True but JAX detected no '
                         'cluster and config.distributed.coordinator_address, '
                         'config.distributed.process_id are unset: ')
  assert not os.path.exists(tmp_path / 'w')
