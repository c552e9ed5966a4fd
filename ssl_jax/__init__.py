"""ssl_jax: self-supervised visual representation learning in JAX/Flax.

The public research API (ssl_jax/api.py):

    import ssl_jax, configs
    trunk = ssl_jax.load_trunk('workdirs/rot')          # a pretext run's frozen trunk
    feats = trunk.features(images_u8)['pre_logits']     # f32[N, D] numpy
    out = ssl_jax.run(configs.get('rotation', 'smoke'), 'workdirs/rot_smoke')   # a job

`load_trunk`, `Trunk`, `run` and `load_images` are loaded on first use: importing ssl_jax (and
ssl_jax.models, ssl_jax.tasks) imports neither JAX nor TensorFlow, so environment
settings (XLA_FLAGS, JAX_PLATFORMS) made after `import ssl_jax` still apply.
"""
__version__ = '0.1.0'

_API = ('load_trunk', 'Trunk', 'run', 'load_images')
__all__ = list(_API)


def __getattr__(name):
  if name in _API:
    from ssl_jax import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(_API))
