"""Test setup: 8 simulated CPU devices, set before JAX initialises."""
import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `configs` is imported as a package from the repo root.
  sys.path.insert(0, ROOT)

SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
