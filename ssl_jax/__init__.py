"""ssl_jax: self-supervised visual representation learning in JAX/Flax.

Importing ssl_jax (and ssl_jax.models, ssl_jax.tasks) never imports TensorFlow.
"""
__version__ = '0.1.0'
