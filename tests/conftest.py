"""Test setup: 8 simulated CPU devices, set before JAX initialises.

XLA:CPU's optimising backend passes are switched off: the tests' programs are small and
run a few times, so compiling dominates (e.g. the threefry hashes of a model's
initialisers took ~10 s to optimise, under 1 s without); the values are the same
programs' (tests compare against references with tolerances, and the JAX/TF pixel tests
stay exact). Benchmarks and real runs keep the default optimisation.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `configs` is imported as a package from the repo root.
  sys.path.insert(0, ROOT)

from ssl_jax import xla_flags  # pylint: disable=g-import-not-at-top  (no jax: before JAX starts)

# Appended to a user's XLA_FLAGS (their values win); with the collective timeouts of
# ssl_jax/xla_flags.py, so that 8 device threads on a loaded 2-core machine do not
# make XLA abort an all-reduce after 60 s (issue 17).
_COMPILE_FLAGS = ('--xla_backend_optimization_level=0',
                  '--xla_llvm_disable_expensive_passes=true')
os.environ['XLA_FLAGS'] = xla_flags.cpu_xla_flags(os.environ.get('XLA_FLAGS'), 8,
                                                  extra=_COMPILE_FLAGS)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: over a minute of (mostly idle) wall time; deselect with -m "not slow"')
