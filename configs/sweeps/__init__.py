"""Sweep configs: the studies' grids for `python -m ssl_jax.sweep` (one file per study)."""
