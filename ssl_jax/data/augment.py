"""Image augmentation in JAX, for the device-resident in-memory source.

All functions map one uint8 image [H, W, 3] (and a key) to a uint8 image of the
requested size; vmap them over a batch. They are the device-side counterparts
of the tf.data ops (inception crop, flip, colour jitter, pad-and-crop), with
JAX's half-pixel bilinear resampling instead of TF1's legacy resize.
"""
import jax
import jax.numpy as jnp


def _to_uint8(x):
  return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def flip_lr(key, image):
  """Random horizontal flip with probability 0.5."""
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def pad_crop(key, image, pad=4):
  """CIFAR-style: zero-pad `pad` px on each side, then a random crop of the original size."""
  h, w, _ = image.shape
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  dy, dx = jax.random.randint(key, (2,), 0, 2 * pad + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, image.shape[2]))


def inception_crop(key, image, size, area_range=(0.05, 1.0), aspect_range=(3 / 4, 4 / 3)):
  """Random-resized crop: area fraction and aspect (w/h) drawn uniformly, log-aspect.

  Draws one candidate box (clipped to the image) rather than TF's 100 attempts;
  resizes the box to [size, size] bilinearly.
  """
  h, w, _ = image.shape
  k1, k2, k3, k4 = jax.random.split(key, 4)
  area = jax.random.uniform(k1, (), minval=area_range[0], maxval=area_range[1]) * h * w
  log_ratio = jax.random.uniform(k2, (), minval=jnp.log(aspect_range[0]),
                                 maxval=jnp.log(aspect_range[1]))
  ratio = jnp.exp(log_ratio)
  cw = jnp.clip(jnp.sqrt(area * ratio), 1.0, w)
  ch = jnp.clip(jnp.sqrt(area / ratio), 1.0, h)
  y0 = jax.random.uniform(k3, (), maxval=h - ch + 1e-6)
  x0 = jax.random.uniform(k4, (), maxval=w - cw + 1e-6)
  scale = jnp.array([size / ch, size / cw])
  translate = -jnp.array([y0, x0]) * scale
  out = jax.image.scale_and_translate(
      image.astype(jnp.float32), (size, size, image.shape[2]), (0, 1),
      scale, translate, method='linear', antialias=False)
  return _to_uint8(out)


def color_jitter(key, image, brightness=32 / 255, saturation=(0.5, 1.5)):
  """Random brightness delta then random saturation factor (slim's fast mode)."""
  k1, k2 = jax.random.split(key)
  x = image.astype(jnp.float32) / 255.0
  x = x + jax.random.uniform(k1, (), minval=-brightness, maxval=brightness)
  gray = jnp.mean(x, axis=-1, keepdims=True)  # luma-free approximation of TF's HSV saturation
  factor = jax.random.uniform(k2, (), minval=saturation[0], maxval=saturation[1])
  x = jnp.clip(gray + (x - gray) * factor, 0.0, 1.0)
  return _to_uint8(x * 255.0)


AUGMENTATIONS = ('none', 'flip', 'pad_crop_flip', 'inception')


def augment_batch(key, images, method, size=None):
  """u8[B,H,W,3] -> u8[B,size,size,3] with `method` in AUGMENTATIONS."""
  if method not in AUGMENTATIONS:
    raise ValueError(f'in-memory augmentation {method!r}; allowed: {list(AUGMENTATIONS)}')
  if method == 'none':
    return images
  size = size or images.shape[1]
  keys = jax.random.split(key, images.shape[0])

  def one(k, im):
    k1, k2, k3 = jax.random.split(k, 3)
    if method == 'pad_crop_flip':
      im = pad_crop(k1, im)
    elif method == 'inception':
      im = color_jitter(k3, inception_crop(k1, im, size))
    return flip_lr(k2, im)

  return jax.vmap(one)(keys, images)
