"""Test setup: 8 simulated CPU devices, set before JAX initialises.

XLA:CPU's optimising backend passes are switched off: the tests' programs are small and
run a few times, so compiling dominates (e.g. the threefry hashes of a model's
initialisers took ~10 s to optimise, under 1 s without); the values are the same
programs' (tests compare against references with tolerances, and the JAX/TF pixel tests
stay exact). Benchmarks and real runs keep the default optimisation.
"""
import os
import sys

_FLAGS = ('--xla_force_host_platform_device_count=8',
          '--xla_backend_optimization_level=0',
          '--xla_llvm_disable_expensive_passes=true')
os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', '')] +
    [f for f in _FLAGS if f.split('=')[0] not in os.environ.get('XLA_FLAGS', '')]).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `configs` is imported as a package from the repo root.
  sys.path.insert(0, ROOT)

SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
