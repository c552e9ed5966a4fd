"""Tests of the model zoo: parameter counts, endpoint shapes, dtypes, padding semantics.

Big models are only traced (jax.eval_shape: nothing is allocated); anything that really
runs uses width k=1 and 32-px inputs so the file stays fast on 2 CPU cores.
"""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import models
from ssl_jax.models import layers
from ssl_jax.models import revnet

NAMES = tuple(models.MODELS)
RESNETS = ('resnet50_v1', 'resnet50_v2', 'revnet50')


def _variables_shape(model, size, batch=1):
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)


def _outputs_shape(model, size, batch=2):
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return jax.eval_shape(
      lambda x: model.init_with_output(jax.random.PRNGKey(0), x, train=False)[0], x)


def _trunk_params(params):
  """Every parameter except the logits layer (BN scale/bias count; batch_stats do not)."""
  return sum(p.size for k, v in params.items() if k != 'logits' for p in jax.tree.leaves(v))


# Spec table 4.1 (trunk only, 224 px), in millions.
@pytest.mark.parametrize('name,k,millions', [
    ('resnet50_v1', 4, 23.5), ('resnet50_v2', 4, 23.5), ('revnet50', 4, 5.4),
    ('vgg19_bn', 4, 34.9), ('resnet50_v1', 16, 375.4), ('resnet50_v2', 16, 375.3),
    ('revnet50', 16, 85.8), ('vgg19_bn', 16, 558.3)])
def test_trunk_parameter_counts(name, k, millions):
  variables = _variables_shape(models.create_model(name, num_classes=1000, width=k), 224)
  assert abs(_trunk_params(variables['params']) / 1e6 - millions) <= 0.1
  logits = variables['params']['logits']
  assert logits['kernel'].shape == (512 * k, 1000) and logits['bias'].shape == (1000,)


@pytest.mark.parametrize('name', NAMES)
def test_params_float32_under_bf16(name):
  # alexnet_bn's full model needs >= 227 px: its small-input variant at 64 px.
  model = models.create_model(name, num_classes=10, width=1, dtype='bfloat16',
                              small_input=name == 'alexnet_bn')
  variables = _variables_shape(model, 64)
  dtypes = {x.dtype for x in jax.tree.leaves(variables)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  logits, endpoints = _outputs_shape(model, 64)
  assert logits.dtype == jnp.float32
  assert {v.dtype for v in endpoints.values()} == {jnp.dtype(jnp.float32)}


def _spatial(endpoints, names):
  return tuple(endpoints[n].shape[1] for n in names)


@pytest.mark.parametrize('name,size,kwargs,expected', [
    (n, 224, {}, (56, 56, 28, 14, 7)) for n in RESNETS] + [
    (n, 64, {'patch_strides': True}, (32, 32, 16, 8, 8)) for n in RESNETS] + [
    (n, 32, {'small_input': True}, (32, 32, 16, 8, 4)) for n in RESNETS])
def test_resnet_endpoint_shapes(name, size, kwargs, expected):
  k = 2
  model = models.create_model(name, num_classes=7, width=k, **kwargs)
  logits, endpoints = _outputs_shape(model, size)
  assert set(endpoints) == set(models.ENDPOINTS[name])  # eval_shape sorts dict keys.
  assert _spatial(endpoints, models.ENDPOINTS[name][:5]) == expected
  for i in range(1, 5):
    assert endpoints[f'block{i}'].shape[-1] == 64 * k * 2**(i - 1)
  root_width = 64 * k if name == 'revnet50' else 16 * k
  assert endpoints['after_root'].shape == (2, expected[0], expected[0], root_width)
  assert endpoints['pre_logits'].shape == (2, 512 * k)
  assert endpoints['logits'].shape == logits.shape == (2, 7)


@pytest.mark.parametrize('size,kwargs', [(224, {}), (224, {'patch_strides': True}),
                                         (224, {'small_input': True})])
def test_vgg_endpoint_shapes(size, kwargs):
  # patch_strides / small_input are ignored by VGG, as in the study.
  k = 2
  logits, endpoints = _outputs_shape(
      models.create_model('vgg19_bn', num_classes=7, width=k, **kwargs), size)
  assert set(endpoints) == set(models.ENDPOINTS['vgg19_bn'])
  assert _spatial(endpoints, models.ENDPOINTS['vgg19_bn'][:6]) == (224, 112, 56, 28, 14, 1)
  assert [endpoints[f'block{i}'].shape[-1] for i in range(1, 6)] == [
      8 * k, 16 * k, 32 * k, 64 * k, 64 * k]
  assert endpoints['fc6'].shape == (2, 1, 1, 512 * k)
  assert endpoints['pre_logits'].shape == (2, 512 * k)
  assert logits.shape == (2, 7)


def test_create_model_errors_name_the_value():
  with pytest.raises(ValueError, match=r"'resnet18'.*resnet50_v1"):
    models.create_model('resnet18', num_classes=10)
  with pytest.raises(ValueError, match='width=0'):
    models.create_model('revnet50', num_classes=10, width=0)
  with pytest.raises(ValueError, match=r"'float16'.*bfloat16"):
    models.create_model('vgg19_bn', num_classes=10, dtype='float16')
  with pytest.raises(ValueError, match='last_relu=False.*resnet50_v1'):
    models.create_model('resnet50_v1', num_classes=10, last_relu=False)
  with pytest.raises(ValueError, match='num_classes=-1'):
    models.create_model('resnet50_v2', num_classes=-1)
  with pytest.raises(ValueError, match='last_relu=False'):  # The module checks it too.
    _outputs_shape(models.MODELS['resnet50_v1'](num_classes=3, width=1, last_relu=False), 32)
  # The "(-)" variants exist for v2 and RevNet.
  assert not models.create_model('revnet50', num_classes=3, last_relu=False).last_relu
  assert models.create_model('resnet50_v2', num_classes=3, dtype=jnp.bfloat16).dtype == (
      jnp.bfloat16)


@pytest.mark.parametrize('name', NAMES)
def test_trunk_alone_is_the_classifier_model_without_its_logits_layer(name):
  """num_classes=0: the same parameters minus `logits`, output = pre_logits."""
  size = 32
  full = models.create_model(name, num_classes=5, width=1, small_input=True)
  trunk = models.create_model(name, num_classes=0, width=1, small_input=True)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, size, size, 3))
  # unsafe_rbg: compiles the initialisers in a second instead of threefry's ~10 s on a CPU.
  variables = jax.jit(lambda x: full.init(jax.random.key(0, impl='unsafe_rbg'), x,
                                          train=False))(x)
  params = dict(variables['params'])
  params.pop('logits')
  tv = {'params': params, 'batch_stats': variables['batch_stats']}
  assert jax.tree.structure(tv) == jax.tree.structure(
      jax.eval_shape(lambda: trunk.init(jax.random.PRNGKey(0), x, train=False)))
  out, eps = jax.jit(lambda v, x: trunk.apply(v, x, train=False))(tv, x)
  logits, full_eps = jax.jit(lambda v, x: full.apply(v, x, train=False))(variables, x)
  assert 'logits' not in eps and set(eps) == set(models.trunk_endpoints(name))
  np.testing.assert_allclose(out, full_eps['pre_logits'], rtol=1e-6)
  np.testing.assert_allclose(logits, out @ variables['params']['logits']['kernel'] +
                             variables['params']['logits']['bias'], rtol=1e-4, atol=1e-5)


def test_batch_norm_settings():
  bn = layers.batch_norm(train=True, dtype=jnp.bfloat16, axis_name='data')()
  assert (bn.momentum, bn.epsilon, bn.use_running_average) == (0.99, 1e-3, False)
  assert (bn.axis_name, bn.param_dtype) == ('data', jnp.float32)


# ---- Padding semantics against numpy. -------------------------------------------------


def _np_conv(x, kernel, stride, pad):
  """Reference cross-correlation of x [H,W,Cin] with kernel [k,k,Cin,Cout]."""
  x = np.pad(x, (pad, pad, (0, 0)))
  k = kernel.shape[0]
  out_h = (x.shape[0] - k) // stride + 1
  out_w = (x.shape[1] - k) // stride + 1
  out = np.zeros((out_h, out_w, kernel.shape[-1]))
  for i in range(out_h):
    for j in range(out_w):
      patch = x[i * stride:i * stride + k, j * stride:j * stride + k]
      out[i, j] = np.einsum('hwc,hwcd->d', patch, kernel)
  return out


class _FixedConv(nn.Module):
  kernel_size: int
  strides: int

  @nn.compact
  def __call__(self, x):
    return layers.conv_fixed(x, 2, self.kernel_size, self.strides, dtype=jnp.float32,
                             name='conv')


@pytest.mark.parametrize('kernel_size,strides', [(3, 2), (3, 1), (7, 2)])
def test_conv_fixed_padding(kernel_size, strides):
  x = np.random.RandomState(0).randn(1, 8, 8, 3).astype(np.float32)
  module = _FixedConv(kernel_size, strides)
  params = module.init(jax.random.PRNGKey(0), x)
  out = np.asarray(module.apply(params, x))[0]
  kernel = np.asarray(params['params']['conv']['kernel'])
  half = (kernel_size - 1) // 2
  ref = _np_conv(x[0], kernel, strides, (half, kernel_size - 1 - half))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  if strides == 2:  # TF/Flax 'SAME' would pad (half-1, half+1) here: a shifted grid.
    same = nn.Conv(2, (kernel_size,) * 2, strides=2, padding='SAME', use_bias=False)
    assert not np.allclose(same.apply({'params': {'kernel': kernel}}, x)[0], ref)


def test_fixed_padding_even_kernel():
  out = layers.fixed_padding(jnp.ones((1, 2, 2, 1)), 4)  # 1 before, 2 after.
  np.testing.assert_array_equal(np.asarray(out)[0, :, :, 0],
                                np.pad(np.ones((2, 2)), ((1, 2), (1, 2))))


def test_root_max_pool_pads_with_zeros():
  x = -1.0 - np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)  # All negative.
  out = np.asarray(layers.max_pool_fixed(jnp.asarray(x), 3, 2))[0, :, :, 0]
  padded = np.pad(x[0, :, :, 0], 1)  # Zeros, as tf.pad before a VALID max-pool.
  ref = np.array([[padded[i:i + 3, j:j + 3].max() for j in (0, 2, 4)] for i in (0, 2, 4)])
  np.testing.assert_array_equal(out, ref)
  assert ref[1, 1] == x[0, 1, 1, 0] and ref[0, 0] == 0.0  # Border windows see the zeros.
  # -inf padding (Flax 'SAME' max-pool) would give negative values on the border.
  neg_inf = np.asarray(nn.max_pool(jnp.asarray(x), (3, 3), (2, 2), padding='SAME'))
  assert (neg_inf < 0).all()


def test_pool_and_double_layout():
  x = np.arange(1 * 3 * 3 * 4, dtype=np.float32).reshape(1, 3, 3, 4)
  out = np.asarray(revnet.pool_and_double(jnp.asarray(x), 2))
  # TF SAME avg-pool on 3 px: windows {0,1} and {2}; padded pixels are not counted.
  blocks = (slice(0, 2), slice(2, 3))
  pooled = np.array([[x[0, r, c].mean(axis=(0, 1)) for c in blocks] for r in blocks])
  assert out.shape == (1, 2, 2, 8)
  np.testing.assert_array_equal(out[0, ..., :2], 0.0)  # C/2 zeros in front,
  np.testing.assert_allclose(out[0, ..., 2:6], pooled, rtol=1e-6)
  np.testing.assert_array_equal(out[0, ..., 6:], 0.0)  # C/2 at the back.
  out = np.asarray(revnet.pool_and_double(jnp.asarray(x), 1))  # Only doubles channels.
  np.testing.assert_array_equal(out, np.pad(x, ((0, 0), (0, 0), (0, 0), (2, 2))))


def test_rev_unit_swaps_halves():
  # 64 channels: the shapes of a k=1 block1 unit (already-compiled ops, so fast).
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 64))
  unit = revnet.RevUnit()
  variables = unit.init(jax.random.PRNGKey(1), x, train=False)
  y = unit.apply(variables, x, train=False)
  np.testing.assert_array_equal(y[..., :32], x[..., 32:])  # x2 passes through first.
  assert variables['params']['conv1']['kernel'].shape == (1, 1, 32, 8)  # C/2 -> C/8.
  assert variables['params']['conv3']['kernel'].shape == (1, 1, 8, 32)  # C/8 -> C/2.
  # y1 - x1 = G(x2) depends on x2 only.
  x_other = x.at[..., :32].set(0.0)
  np.testing.assert_allclose(y[..., 32:] - x[..., :32],
                             unit.apply(variables, x_other, train=False)[..., 32:],
                             rtol=1e-5, atol=1e-6)


def test_initializers():
  """Glorot-uniform conv/dense kernels, BN scale 1 / bias 0, logits bias 0."""
  x = jnp.ones((1, 4, 4, 64))
  kernel = np.asarray(layers.conv(64, 3, dtype=jnp.float32).init(
      jax.random.PRNGKey(0), x)['params']['kernel'])
  limit = np.sqrt(6.0 / (9 * 64 + 9 * 64))  # Glorot-uniform bound, fans include 3x3.
  assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.99 * limit
  np.testing.assert_allclose(kernel.std(), limit / np.sqrt(3), rtol=0.02)
  dense = layers.logits_layer(10, dtype=jnp.float32).init(
      jax.random.PRNGKey(0), x[:, 0, 0])['params']
  limit = np.sqrt(6.0 / (64 + 10))
  assert np.abs(dense['kernel']).max() <= limit
  np.testing.assert_array_equal(dense['bias'], 0.0)
  bn = layers.batch_norm(train=False, dtype=jnp.float32, axis_name=None)().init(
      jax.random.PRNGKey(0), x)
  np.testing.assert_array_equal(bn['params']['scale'], 1.0)
  np.testing.assert_array_equal(bn['params']['bias'], 0.0)


@pytest.mark.parametrize('name', NAMES)
def test_module_names(name):
  """RevNet's root conv is `root_conv_nowd`; trunk convs are bias-free (only BN has bias)."""
  model = models.create_model(name, num_classes=5, width=1, small_input=True)
  params = _variables_shape(model, 32)['params']
  assert ('root_conv_nowd' in params) == (name == 'revnet50')
  if name == 'revnet50':
    assert set(params['root_conv_nowd']) == {'kernel'}
  for path, _ in jax.tree_util.tree_leaves_with_path(params):
    keys = [p.key for p in path]
    assert 'nowd' not in '/'.join(keys[1:])
    if keys[-1] == 'bias' and keys[0] != 'logits':
      assert 'bn' in keys[-2], keys
  assert set(params['logits']) == {'kernel', 'bias'}


# ---- Real runs (k=1, 32 px). -----------------------------------------------------------


def _random_variables(model, x, seed=0):
  """Variables with the model's structure, filled from numpy (much faster than an eager
  model.init on 2 CPU cores). BN parameters and statistics are random, not 1/0."""
  rng = np.random.RandomState(seed)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)

  def fill(path, leaf):
    key = path[-1].key
    if key == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.randn(*leaf.shape) / np.sqrt(fan_in)
    elif key in ('scale', 'var'):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:  # BN bias, BN mean, logits bias.
      value = 0.1 * rng.randn(*leaf.shape)
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope='module')
def small_runs():
  """name -> (variables, x, float32 outputs in inference mode), computed once."""
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  runs = {}
  for name in NAMES:
    model = models.create_model(name, num_classes=10, width=1, small_input=True)
    variables = _random_variables(model, x)
    runs[name] = (variables, x, model.apply(variables, x, train=False))
  return runs


def test_endpoint_order(small_runs):
  for name, (_, _, (_, endpoints)) in small_runs.items():
    assert tuple(endpoints) == models.ENDPOINTS[name]


@pytest.mark.parametrize('name', NAMES)
def test_bf16_matches_float32(small_runs, name):
  variables, x, (logits, _) = small_runs[name]
  model = models.create_model(name, num_classes=10, width=1, small_input=True,
                              dtype='bfloat16')
  logits_bf16, endpoints = model.apply(variables, x, train=False)
  first = models.ENDPOINTS[name][0]
  assert logits_bf16.dtype == jnp.float32 and endpoints[first].dtype == jnp.float32
  scale = np.abs(np.asarray(logits)).max()
  assert scale > 0.1  # A meaningful comparison, not two vanishing outputs.
  np.testing.assert_allclose(logits_bf16, logits, atol=0.05 * scale)


@pytest.mark.parametrize('name,last_relu', [('resnet50_v2', True), ('revnet50', True),
                                            ('revnet50', False)])
def test_final_bn_relu_after_block4(small_runs, name, last_relu):
  """block4 is taken before the final BN(+ReLU iff last_relu); pre_logits after it."""
  variables, x, (_, endpoints) = small_runs[name]
  if not last_relu:
    model = models.create_model(name, num_classes=10, width=1, small_input=True,
                                last_relu=False)
    _, endpoints = model.apply(variables, x, train=False)
  bn, stats = variables['params']['final_bn'], variables['batch_stats']['final_bn']
  y = (np.asarray(endpoints['block4']) - stats['mean']) / np.sqrt(stats['var'] + 1e-3)
  y = y * bn['scale'] + bn['bias']
  if last_relu:
    y = np.maximum(y, 0)
  np.testing.assert_allclose(endpoints['pre_logits'], y.mean((1, 2)), rtol=1e-4, atol=1e-5)
  logits = endpoints['pre_logits'] @ variables['params']['logits']['kernel']
  np.testing.assert_allclose(endpoints['logits'], logits + variables['params']['logits']['bias'],
                             rtol=1e-4, atol=1e-5)


def test_bn_axis_name_reaches_every_batch_norm(small_runs):
  """With bn_axis_name, each BN averages its statistics across that axis (traced only)."""
  variables, x, _ = small_runs['resnet50_v2']
  num_bn = sum(path[-1].key == 'mean' for path, _ in
               jax.tree_util.tree_leaves_with_path(variables['batch_stats']))

  def count_psums(axis_name):
    model = models.create_model('resnet50_v2', num_classes=10, width=1, small_input=True,
                                bn_axis_name=axis_name)
    fn = lambda x: model.apply(variables, x, train=True, mutable=['batch_stats'])
    jaxpr = jax.make_jaxpr(jax.vmap(fn, axis_name='data'))(x[:, None])
    return str(jaxpr).count('psum')

  assert count_psums(None) == 0
  assert count_psums('data') >= num_bn


def test_train_mode_uses_batch_stats_and_momentum(small_runs):
  variables, x, _ = small_runs['resnet50_v1']
  model = models.create_model('resnet50_v1', num_classes=10, width=1, small_input=True)
  (_, endpoints), updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  root = np.asarray(variables['params']['root_conv']['kernel'])
  conv_out = np.stack([_np_conv(np.asarray(xi), root, 1, (1, 1)) for xi in x])
  # momentum 0.99: new mean = 0.99 * old mean + 0.01 * batch mean.
  old = variables['batch_stats']['root_bn']['mean']
  np.testing.assert_allclose(updates['batch_stats']['root_bn']['mean'],
                             0.99 * old + 0.01 * conv_out.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-5)
  # The root BN normalises with the batch statistics (biased variance, eps 1e-3).
  bn = variables['params']['root_bn']
  y = (conv_out - conv_out.mean((0, 1, 2))) / np.sqrt(conv_out.var((0, 1, 2)) + 1e-3)
  np.testing.assert_allclose(endpoints['after_root'],
                             np.maximum(y * bn['scale'] + bn['bias'], 0),
                             rtol=1e-3, atol=1e-3)


def test_models_do_not_import_tensorflow():
  code = 'import sys, ssl_jax.models; assert "tensorflow" not in sys.modules'
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, '-c', code], check=True, cwd=root)


# ---- Output stride (atrous trunks for dense heads). -------------------------------------


@pytest.mark.parametrize('name,size,kwargs', [
    (n, 176, {'output_stride': 8}) for n in RESNETS] + [
    (n, 100, {'output_stride': 16}) for n in RESNETS] + [
    (n, 32, {'small_input': True, 'output_stride': 2}) for n in RESNETS] + [
    (n, 64, {'patch_strides': True, 'output_stride': 4}) for n in RESNETS] + [
    ('tiny_cnn', 30, {'output_stride': 2}), ('tiny_cnn', 16, {'small_input': True,
                                                              'output_stride': 1}),
    ('tiny_cnn', 16, {'output_stride': 4}), ('resnet50_v2', 64, {'output_stride': 32}),
    ('vgg19_bn', 64, {}), ('alexnet_bn', 32, {'small_input': True}),
    ('alexnet_bn', 61, {'small_input': True})])
def test_endpoint_strides_give_the_endpoint_shapes(name, size, kwargs):
  """ceil(size / stride) per spatial endpoint, same parameters as without output_stride."""
  strides = models.endpoint_strides(name, **kwargs)
  model = models.create_model(name, num_classes=0, width=1, **kwargs)
  _, endpoints = _outputs_shape(model, size)
  for e, s in strides.items():
    assert endpoints[e].shape[1:3] == (-(-size // s),) * 2, (e, s, endpoints[e].shape)
  assert set(endpoints) - set(strides) == ({'pre_logits', 'fc6'} if name in (
      'vgg19_bn', 'alexnet_bn') else {'pre_logits'})
  plain = {k: v for k, v in kwargs.items() if k != 'output_stride'}
  reference = models.create_model(name, num_classes=0, width=1, **plain)
  _, ref_endpoints = _outputs_shape(reference, size)
  assert {e: v.shape[-1] for e, v in endpoints.items()} == {
      e: v.shape[-1] for e, v in ref_endpoints.items()}
  same = jax.tree.map(lambda a: a.shape, _variables_shape(model, size))
  assert same == jax.tree.map(lambda a: a.shape, _variables_shape(reference, size))
  if kwargs.get('output_stride'):
    assert max(strides.values()) == kwargs['output_stride']


def test_output_stride_errors_name_the_value():
  with pytest.raises(ValueError, match=r'output_stride=8 is not supported by vgg19_bn'):
    models.create_model('vgg19_bn', num_classes=0, output_stride=8)
  with pytest.raises(ValueError, match=r'output_stride=8 is not supported by vgg19_bn'):
    _outputs_shape(models.MODELS['vgg19_bn'](num_classes=0, width=1, output_stride=8), 32)
  with pytest.raises(ValueError, match=r'output_stride=16.*tiny_cnn with small_input.*'
                                       r'\[1, 2, 4\]'):
    models.create_model('tiny_cnn', num_classes=0, small_input=True, output_stride=16)
  with pytest.raises(ValueError, match=r'output_stride=2 .*resnet50_v1.*\[4, 8, 16, 32\]'):
    models.create_model('resnet50_v1', num_classes=0, output_stride=2)
  with pytest.raises(ValueError, match=r'output_stride=12'):
    models.create_model('revnet50', num_classes=0, output_stride=12)
  with pytest.raises(ValueError, match=r'output_stride=-8'):
    models.create_model('revnet50', num_classes=0, output_stride=-8)
  with pytest.raises(ValueError, match=r'output_stride=True'):
    models.create_model('revnet50', num_classes=0, output_stride=True)
  with pytest.raises(ValueError, match=r'output_stride=8 .*tiny_cnn'):  # The module too.
    _outputs_shape(models.MODELS['tiny_cnn'](num_classes=0, width=1, small_input=True,
                                             output_stride=8), 16)
  assert models.create_model('resnet50_v2', num_classes=0, output_stride=32).output_stride == 32


class _DilatedConv(nn.Module):
  dilation: int

  @nn.compact
  def __call__(self, x):
    return layers.conv_fixed(x, 2, 3, 1, dtype=jnp.float32, dilation=self.dilation,
                             name='conv')


@pytest.mark.parametrize('dilation', [2, 3])
def test_dilated_conv_fixed_padding(dilation):
  x = np.random.RandomState(0).randn(1, 9, 9, 3).astype(np.float32)
  module = _DilatedConv(dilation)
  params = module.init(jax.random.PRNGKey(0), x)
  out = np.asarray(module.apply(params, x))[0]
  kernel = np.asarray(params['params']['conv']['kernel'])
  # A dilated kernel is the dense kernel with (dilation - 1) zeros between its taps.
  k = 2 * dilation + 1
  dense = np.zeros((k, k) + kernel.shape[2:], np.float32)
  dense[::dilation, ::dilation] = kernel
  ref = _np_conv(x[0], dense, 1, (dilation, dilation))
  assert out.shape == ref.shape == (9, 9, 2)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('window,rate,size', [(2, 1, 5), (2, 2, 7), (2, 4, 8)])
def test_dilated_mean_pool_matches_numpy(window, rate, size):
  x = np.random.RandomState(1).randn(2, size, size, 3).astype(np.float32)
  out = np.asarray(revnet.dilated_mean_pool(jnp.asarray(x), window, rate))
  ref = np.zeros_like(x)
  for i in range(size):
    for j in range(size):
      rows = [i + rate * a for a in range(window) if i + rate * a < size]
      cols = [j + rate * b for b in range(window) if j + rate * b < size]
      ref[:, i, j] = x[:, rows][:, :, cols].mean(axis=(1, 2))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  # rate 1: the stride-2 SAME pool is its subsample (the atrous identity).
  if rate == 1:
    pooled = nn.avg_pool(jnp.asarray(x), (2, 2), (2, 2), padding='SAME',
                         count_include_pad=False)
    np.testing.assert_allclose(out[:, ::2, ::2], pooled, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name,output_stride', [('resnet50_v1', 4), ('resnet50_v2', 2),
                                                ('revnet50', 2), ('tiny_cnn', 1)])
def test_atrous_trunk_subsampled_equals_the_original(small_runs, name, output_stride):
  """Inference mode: the dilated trunk's endpoints, taken every (stride ratio) pixels
  from the origin, are the original trunk's, with the same parameters (the atrous
  algorithm), so a dilated pretext trunk is the original network at denser sampling."""
  variables, x, (_, endpoints) = small_runs[name]
  model = models.create_model(name, num_classes=10, width=1, small_input=True,
                              output_stride=output_stride)
  _, dense = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  ours = models.endpoint_strides(name, small_input=True, output_stride=output_stride)
  theirs = models.endpoint_strides(name, small_input=True)
  assert max(ours.values()) == output_stride < max(theirs.values())
  for e in theirs:
    r = theirs[e] // ours[e]
    assert dense[e].shape[1] == endpoints[e].shape[1] * r, e
    scale = np.abs(np.asarray(endpoints[e])).max()
    np.testing.assert_allclose(dense[e][:, ::r, ::r], endpoints[e], rtol=1e-4,
                               atol=1e-4 * scale, err_msg=e)
  # The non-subsampled positions are new values, not copies (the map is denser).
  last = list(theirs)[-1]
  assert not np.allclose(dense[last][:, 1::2, 1::2], dense[last][:, ::2, ::2], atol=1e-3)


# ---- alexnet_bn (Goyal et al. 2019's AlexNet with BN). -----------------------------------


def _alexnet_hand_count(k, channels, small_input, num_classes):
  """Parameters by hand, per layer: grouped kernel k*k*(Cin/g)*Cout + BN scale/bias 2*Cout."""
  w = [24 * k, 64 * k, 96 * k, 96 * k, 64 * k, 1024 * k, 1024 * k]
  root, fc6 = (3, 4) if small_input else (11, 6)
  kernels = [root * root * channels * w[0],       # conv1
             5 * 5 * (w[0] // 2) * w[1],          # conv2, 2 groups
             3 * 3 * w[1] * w[2],                 # conv3
             3 * 3 * (w[2] // 2) * w[3],          # conv4, 2 groups
             3 * 3 * (w[3] // 2) * w[4],          # conv5, 2 groups
             fc6 * fc6 * w[4] * w[5],             # fc6, an unpadded conv
             w[5] * w[6]]                         # fc7, 1x1
  logits = (w[6] * num_classes + num_classes) if num_classes else 0
  return sum(kernels) + 2 * sum(w) + logits, sum(w)


@pytest.mark.parametrize('k,channels,small_input,size', [
    (1, 3, False, 227), (4, 3, False, 227), (4, 1, False, 227), (1, 3, True, 32),
    (4, 3, True, 32), (4, 3, True, 64), (2, 1, True, 64), (4, 3, False, 300)])
def test_alexnet_parameter_count_by_hand(k, channels, small_input, size):
  """Input-size independent (fixed fc6 kernel); the trunk alone lacks only `logits`."""
  model = models.create_model('alexnet_bn', num_classes=1000, width=k,
                              small_input=small_input)
  x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  params = variables['params']
  total = sum(p.size for p in jax.tree.leaves(params))
  assert total == _alexnet_hand_count(k, channels, small_input, 1000)[0]
  assert _trunk_params(params) == _alexnet_hand_count(k, channels, small_input, 0)[0]
  root = 3 if small_input else 11
  assert params['conv1']['kernel'].shape == (root, root, channels, 24 * k)
  assert params['conv2']['kernel'].shape == (5, 5, 12 * k, 64 * k)  # Grouped: Cin / 2.
  assert params['conv4']['kernel'].shape == (3, 3, 48 * k, 96 * k)
  assert params['fc6']['kernel'].shape == ((4, 4) if small_input else (6, 6)) + (
      64 * k, 1024 * k)
  assert set(params['fc7_bn']) == {'scale', 'bias'}
  assert set(variables['batch_stats']) == {f'conv{i}_bn' for i in range(1, 6)} | {
      'fc6_bn', 'fc7_bn'}


def test_alexnet_matches_the_published_alexnet_count():
  """k=4, RGB, 1000 classes is the grouped AlexNet of Krizhevsky et al. 2012 ("60 million
  parameters"): the BVLC/Caffe reference model has 60,965,224 weights + biases (its
  per-layer counts: conv1 34,944, conv2 307,456, conv3 885,120, conv4 663,936, conv5
  442,624, fc6 37,752,832, fc7 16,781,312, fc8 4,097,000; the ungrouped count often quoted
  is 62,378,344, which is 1,413,120 more: the groups halve conv2/4/5's kernels). Ours has
  no conv biases but BN's scale and bias: one more parameter per channel of the seven
  layers (their 9,568 channels)."""
  per_layer = (34_944, 307_456, 885_120, 663_936, 442_624, 37_752_832, 16_781_312, 4_097_000)
  assert sum(per_layer) == 60_965_224
  ungrouped_extra = 5 * 5 * 48 * 256 + 3 * 3 * 192 * 384 + 3 * 3 * 192 * 256
  assert ungrouped_extra == 1_413_120 and 62_378_344 - ungrouped_extra == 60_965_224
  model = models.create_model('alexnet_bn', num_classes=1000, width=4)
  params = _variables_shape(model, 227)['params']
  total = sum(p.size for p in jax.tree.leaves(params))
  channels = 96 + 256 + 384 + 384 + 256 + 4096 + 4096
  assert total - channels == 60_965_224
  assert params['logits']['kernel'].shape == (4096, 1000)


@pytest.mark.parametrize('size,small_input,expected', [
    # Unpadded floor sizes: conv1 (s - 11) // 4 + 1, pools (n - 3) // 2 + 1, fc6 n - 5.
    (227, False, (55, 27, 13, 13, 13, 1)), (259, False, (63, 31, 15, 15, 15, 2)),
    (240, False, (58, 28, 13, 13, 13, 1)),
    # small_input: conv1 keeps the size, padded pools ceil(n / 2), fc6 n - 3.
    (32, True, (32, 16, 8, 8, 8, 1)), (64, True, (64, 32, 16, 16, 16, 5)),
    (25, True, (25, 13, 7, 7, 7, 1))])
def test_alexnet_endpoint_shapes(size, small_input, expected):
  k = 2
  model = models.create_model('alexnet_bn', num_classes=7, width=k, small_input=small_input)
  logits, endpoints = _outputs_shape(model, size)
  assert set(endpoints) == set(models.ENDPOINTS['alexnet_bn'])
  assert _spatial(endpoints, models.ENDPOINTS['alexnet_bn'][:6]) == expected
  assert [endpoints[f'conv{i}'].shape[-1] for i in range(1, 6)] == [
      24 * k, 64 * k, 96 * k, 96 * k, 64 * k]
  assert endpoints['fc6'].shape == (2, expected[-1], expected[-1], 1024 * k)
  assert endpoints['pre_logits'].shape == (2, 1024 * k) and logits.shape == (2, 7)


@pytest.mark.parametrize('small_input,smallest', [(False, 227), (True, 25)])
def test_alexnet_too_small_inputs_fail_cleanly(small_input, smallest):
  """One size below the smallest raises a ValueError naming it; config_lib's bisection
  (check_model_input) finds exactly that size."""
  from ssl_jax import config_lib  # pylint: disable=g-import-not-at-top
  model = models.create_model('alexnet_bn', num_classes=0, width=1, small_input=small_input)
  with pytest.raises(ValueError, match=rf'at least {smallest} px, not {smallest - 1}x'):
    _outputs_shape(model, smallest - 1)
  with pytest.raises(ValueError, match=rf'at least {smallest} px, not 300x{smallest - 1}'):
    x = jax.ShapeDtypeStruct((1, 300, smallest - 1, 3), jnp.float32)
    jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  cfg = dict(name='alexnet_bn', width=4, dtype='float32', patch_strides=False,
             small_input=small_input, last_relu=True)  # No output_stride/unit_endpoints.
  assert not config_lib._trunk_builds('alexnet_bn', smallest - 1, 3, cfg)
  assert config_lib._trunk_builds('alexnet_bn', smallest, 1, cfg)
  lo, hi = 1, 4096  # The bisection of check_model_input.
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (lo, mid) if config_lib._trunk_builds('alexnet_bn', mid, 3, cfg) else (mid, hi)
  assert hi == smallest


def test_alexnet_unsupported_options_raise():
  with pytest.raises(ValueError, match='patch_strides=True is not supported by alexnet_bn'):
    models.create_model('alexnet_bn', num_classes=0, patch_strides=True)
  with pytest.raises(ValueError, match='output_stride=8 is not supported by alexnet_bn'):
    models.create_model('alexnet_bn', num_classes=0, small_input=True, output_stride=8)
  with pytest.raises(ValueError, match='last_relu=False is not supported by alexnet_bn'):
    models.create_model('alexnet_bn', num_classes=0, last_relu=False)
  with pytest.raises(ValueError, match=r"'conv5' is not a stage of alexnet_bn"):
    models.create_model('alexnet_bn', num_classes=0, unit_endpoints=('conv5',))
  with pytest.raises(ValueError, match='output_stride=16 is not supported by alexnet_bn'):
    _outputs_shape(models.MODELS['alexnet_bn'](num_classes=0, width=1, small_input=True,
                                               output_stride=16), 32)  # The module too.
  with pytest.raises(ValueError, match='small_input=False has no endpoint strides'):
    models.endpoint_strides('alexnet_bn')
  with pytest.raises(ValueError, match='output_stride=4 is not supported by alexnet_bn'):
    models.endpoint_strides('alexnet_bn', small_input=True, output_stride=4)
  trunk = models.create_trunk(dict(name='alexnet_bn', width=1, dtype='bfloat16',
                                   patch_strides=False, small_input=True, last_relu=True))
  assert (trunk.num_classes, trunk.width, trunk.small_input, trunk.unit_endpoints) == (
      0, 1, True, ())
  assert (trunk.bn_momentum, trunk.bn_epsilon, trunk.dropout_rate) == (0.9, 1e-5, 0.5)


class _GroupedConv(nn.Module):

  @nn.compact
  def __call__(self, x):
    return layers.conv_fixed(x, 4, 3, 1, dtype=jnp.float32, groups=2, name='conv')


def _np_grouped_conv(x, kernel, stride, pad, groups):
  """Reference grouped conv: output group g sees only input group g."""
  cin, cout = kernel.shape[2], kernel.shape[3] // groups
  return np.concatenate([
      _np_conv(x[..., g * cin:(g + 1) * cin], kernel[..., g * cout:(g + 1) * cout], stride, pad)
      for g in range(groups)], axis=-1)


def test_grouped_conv_matches_numpy():
  x = np.random.RandomState(0).randn(1, 6, 6, 6).astype(np.float32)
  module = _GroupedConv()
  params = module.init(jax.random.PRNGKey(0), x)
  kernel = np.asarray(params['params']['conv']['kernel'])
  assert kernel.shape == (3, 3, 3, 4)
  out = np.asarray(module.apply(params, x))[0]
  np.testing.assert_allclose(out, _np_grouped_conv(x[0], kernel, 1, (1, 1), 2),
                             rtol=1e-5, atol=1e-5)


def _np_bn_relu(z, params, stats, eps):
  return np.maximum((z - stats['mean']) / np.sqrt(stats['var'] + eps) * params['scale'] +
                    params['bias'], 0.0)


def _np_max_pool(x, pad):
  x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))  # Zeros (inputs are post-ReLU).
  n = (x.shape[0] - 3) // 2 + 1
  return np.array([[x[2 * i:2 * i + 3, 2 * j:2 * j + 3].max((0, 1)) for j in range(n)]
                   for i in range(n)])


@pytest.mark.parametrize('small_input,size', [(False, 227), (True, 32)])
def test_alexnet_inference_matches_numpy(small_input, size):
  """conv1, conv2 (after pool1), fc6 (after pool5) and pre_logits (fc7) recomputed in
  numpy from the previous endpoint, with BN epsilon 1e-5 and the running statistics."""
  x = jax.random.normal(jax.random.PRNGKey(3), (1, size, size, 3))
  model = models.create_model('alexnet_bn', num_classes=0, width=1, small_input=small_input)
  variables = _random_variables(model, x)
  _, eps = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  p = jax.tree.map(np.asarray, variables['params'])
  st = jax.tree.map(np.asarray, variables['batch_stats'])
  ep = {k: np.asarray(v)[0] for k, v in eps.items()}
  pad = 1 if small_input else 0
  bn = lambda z, n: _np_bn_relu(z, p[f'{n}_bn'], st[f'{n}_bn'], 1e-5)
  conv1 = _np_conv(np.asarray(x[0]), p['conv1']['kernel'], 1 if small_input else 4,
                   (1, 1) if small_input else (0, 0))
  np.testing.assert_allclose(ep['conv1'], bn(conv1, 'conv1'), rtol=1e-4, atol=1e-4)
  conv2 = _np_grouped_conv(_np_max_pool(ep['conv1'], pad), p['conv2']['kernel'], 1, (2, 2), 2)
  np.testing.assert_allclose(ep['conv2'], bn(conv2, 'conv2'), rtol=1e-4, atol=1e-4)
  fc6 = _np_conv(_np_max_pool(ep['conv5'], pad), p['fc6']['kernel'], 1, (0, 0))
  assert fc6.shape[:2] == (1, 1)
  np.testing.assert_allclose(ep['fc6'], bn(fc6, 'fc6'), rtol=1e-4, atol=1e-4)
  fc7 = bn(ep['fc6'] @ p['fc7']['kernel'][0, 0], 'fc7')
  np.testing.assert_allclose(ep['pre_logits'], fc7.mean((0, 1)), rtol=1e-4, atol=1e-4)


def test_alexnet_train_mode_dropout_and_bn_momentum():
  """Train mode: BN momentum 0.9 on batch statistics; dropout 0.5 after fc6 (changes
  pre_logits, not fc6) and in front of the logits layer (not in pre_logits)."""
  x = jax.random.normal(jax.random.PRNGKey(4), (4, 32, 32, 3))
  model = models.create_model('alexnet_bn', num_classes=5, width=1, small_input=True)
  variables = _random_variables(model, x)

  @jax.jit
  def run(v, x, seed):
    return model.apply(v, x, train=True, mutable=['batch_stats', 'intermediates'],
                       capture_intermediates=lambda m, _: isinstance(m, nn.Dropout),
                       rngs={'dropout': jax.random.PRNGKey(seed)})

  (logits_a, eps_a), updates = run(variables, x, 0)
  (_, eps_b), _ = run(variables, x, 1)
  np.testing.assert_array_equal(eps_a['fc6'], eps_b['fc6'])
  assert not np.allclose(eps_a['pre_logits'], eps_b['pre_logits'])
  drops = updates['intermediates']
  assert len(drops) == 2  # drop6 and drop7.
  for before, name in ((eps_a['fc6'], 'Dropout_0'), (eps_a['pre_logits'], 'Dropout_1')):
    before, after = np.asarray(before), np.asarray(drops[name]['__call__'][0])
    live = np.abs(before) > 1e-6
    ratio = after[live] / before[live]  # Dropped (0) or kept and scaled by 1 / (1 - 0.5).
    assert np.all(np.isclose(ratio, 0.0) | np.isclose(ratio, 2.0, rtol=1e-5))
    assert 0.35 < np.mean(np.isclose(ratio, 0.0)) < 0.65
  dense = variables['params']['logits']
  np.testing.assert_allclose(  # The classifier reads the dropped pre_logits.
      logits_a, np.asarray(drops['Dropout_1']['__call__'][0]) @ dense['kernel'] +
      dense['bias'], rtol=1e-4, atol=1e-4)
  root = np.asarray(variables['params']['conv1']['kernel'])
  conv_out = np.stack([_np_conv(np.asarray(xi), root, 1, (1, 1)) for xi in x])
  old = variables['batch_stats']['conv1_bn']['mean']
  np.testing.assert_allclose(updates['batch_stats']['conv1_bn']['mean'],
                             0.9 * old + 0.1 * conv_out.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
  bn = variables['params']['conv1_bn']
  y = (conv_out - conv_out.mean((0, 1, 2))) / np.sqrt(conv_out.var((0, 1, 2)) + 1e-5)
  np.testing.assert_allclose(eps_a['conv1'], np.maximum(y * bn['scale'] + bn['bias'], 0),
                             rtol=1e-3, atol=1e-3)


# ---- unit_endpoints (the outputs of every unit of chosen stages). ------------------------

WITH_STAGES = ('resnet50_v1', 'resnet50_v2', 'revnet50', 'vgg19_bn', 'tiny_cnn')


def test_stages_and_unit_endpoint_names():
  assert models.stages('resnet50_v2') == ('block1', 'block2', 'block3', 'block4')
  assert models.unit_endpoint_names('resnet50_v2', 'block3') == tuple(
      f'block3/unit{j}' for j in range(1, 7))
  assert models.unit_endpoint_names('revnet50', 'block4') == (
      'block4/unit1', 'block4/unit2', 'block4/unit3')
  assert models.stages('vgg19_bn') == tuple(f'block{b}' for b in range(1, 6))
  assert [len(models.unit_endpoint_names('vgg19_bn', s)) for s in models.stages('vgg19_bn')
          ] == [2, 2, 4, 4, 4]  # VGG19's 16 convs.
  assert models.unit_endpoint_names('tiny_cnn', 'block2') == ('block2/unit1',)
  assert models.stages('alexnet_bn') == ()
  with pytest.raises(ValueError, match=r"stage='block5' is not a stage of resnet50_v1; "
                                       r"allowed: \['block1'"):
    models.unit_endpoint_names('resnet50_v1', 'block5')
  with pytest.raises(ValueError, match=r"stage='after_root' is not a stage of tiny_cnn"):
    models.unit_endpoint_names('tiny_cnn', 'after_root')
  with pytest.raises(ValueError, match=r"stage='conv3' is not a stage of alexnet_bn"):
    models.unit_endpoint_names('alexnet_bn', 'conv3')
  with pytest.raises(ValueError, match=r"'resnet18' is not a known model"):
    models.stages('resnet18')


def _unit_cases():
  cases = [(n, 32, {'small_input': True}) for n in WITH_STAGES if n != 'vgg19_bn']
  return cases + [('vgg19_bn', 32, {}), ('resnet50_v2', 64, {'output_stride': 8}),
                  ('revnet50', 64, {'patch_strides': True, 'output_stride': 4}),
                  ('tiny_cnn', 16, {'output_stride': 2})]


@pytest.mark.parametrize('name,size,kwargs', _unit_cases())
def test_unit_endpoints_shapes_order_and_parameters(name, size, kwargs):
  """Every stage on: units of the stage output's shape, in order just before the stage,
  the same parameters (and BN statistics) as without the option."""
  stages = models.stages(name)
  plain = models.create_model(name, num_classes=0, width=1, **kwargs)
  model = models.create_model(name, num_classes=0, width=1, unit_endpoints=list(stages),
                              **kwargs)
  assert model.unit_endpoints == stages  # A list becomes a (hashable) tuple.
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  fn = lambda m: jax.eval_shape(lambda x: m.init_with_output(
      jax.random.PRNGKey(0), x, train=False), x)
  (_, eps), variables = fn(model)
  (_, plain_eps), plain_variables = fn(plain)
  assert jax.tree.map(lambda a: a.shape, variables) == jax.tree.map(
      lambda a: a.shape, plain_variables)
  units = [u for s in stages for u in models.unit_endpoint_names(name, s)]
  assert set(eps) == set(plain_eps) | set(units) and len(eps) == len(plain_eps) + len(units)
  for s in stages:
    for u in models.unit_endpoint_names(name, s):
      assert eps[u].shape == eps[s].shape == plain_eps[s].shape, (u, eps[u].shape)
      assert eps[u].dtype == jnp.float32
  # Order: traced outputs keep their keys sorted, so check the order on a real call.


@pytest.mark.parametrize('name', WITH_STAGES)
def test_unit_endpoints_values(small_runs, name):
  """The last unit is the stage endpoint exactly; the other endpoints are unchanged; the
  units are distinct; they come in order just before their stage."""
  variables, x, (_, endpoints) = small_runs[name]
  stages = models.stages(name)
  model = models.create_model(name, num_classes=10, width=1, small_input=True,
                              unit_endpoints=stages)
  _, eps = model.apply(variables, x, train=False)
  expected_order = []
  for e in models.ENDPOINTS[name]:
    if e in stages:
      expected_order += list(models.unit_endpoint_names(name, e))
    expected_order.append(e)
  assert tuple(eps) == tuple(expected_order)
  for e, v in endpoints.items():
    np.testing.assert_array_equal(eps[e], v, err_msg=e)
  for s in stages:
    names = models.unit_endpoint_names(name, s)
    np.testing.assert_array_equal(eps[names[-1]], eps[s])
    for a, b in zip(names[:-1], names[1:]):
      assert not np.allclose(eps[a], eps[b]), (a, b)
    if name == 'revnet50':  # concat(x2, x1 + G(x2)): unit j's x2 half opens unit j+1.
      for a, b in zip(names[:-1], names[1:]):
        half = eps[a].shape[-1] // 2
        np.testing.assert_array_equal(eps[b][..., :half], eps[a][..., half:])


def test_unit_endpoints_errors_and_create_trunk():
  with pytest.raises(ValueError, match=r"unit_endpoints='block3' must be a tuple of stage "
                                       r"names.*resnet50_v2.*\['block1'"):
    models.create_model('resnet50_v2', num_classes=0, unit_endpoints='block3')
  with pytest.raises(ValueError, match=r"'block6' is not a stage of vgg19_bn; allowed"):
    models.create_model('vgg19_bn', num_classes=0, unit_endpoints=('block1', 'block6'))
  with pytest.raises(ValueError, match=r"\('block2', 'block2'\) names a stage twice"):
    models.create_model('tiny_cnn', num_classes=0, unit_endpoints=('block2', 'block2'))
  with pytest.raises(ValueError, match=r"'block9' is not a stage of revnet50"):  # The module.
    _outputs_shape(models.MODELS['revnet50'](num_classes=0, width=1, small_input=True,
                                             unit_endpoints=('block9',)), 32)
  section = dict(name='resnet50_v2', width=1, dtype='float32', patch_strides=False,
                 small_input=True, last_relu=True)  # An old config: no unit_endpoints key.
  assert models.create_trunk(section).unit_endpoints == ()
  trunk = models.create_trunk(dict(section, unit_endpoints=['block3']))
  assert trunk.unit_endpoints == ('block3',) and trunk.num_classes == 0
  _, eps = _outputs_shape(trunk, 32)
  assert set(models.unit_endpoint_names('resnet50_v2', 'block3')) <= set(eps)
  assert not any(e.startswith('block2/') for e in eps)
