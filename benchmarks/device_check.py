r"""One device check, TensorFlow-free: engine speed, the pretext stage's cost, a short run.

Prints ONE table (and writes it as JSON with --out):
  (a) the engine's train step (shard_map, assembled by `train.build`; supervised task,
      ResNet50 v1 k=4, bf16, 224 px, batch 256, random uint8 arrays) in images/s, beside a
      plain `jax.jit` step of the same model (SGD momentum, coupled L2 on kernels, no
      shard_map) measured in the same run: the ratio is the engine's overhead.
  (b) the rotation train step with its pretext stage on the device (uint8 in) vs the
      same step fed pre-rotated float inputs (the stage left out), at 224 and 32 px
      (ResNet50 v1 k=4 bf16, ImageNet stem at both sizes, as stack.md's reference).
  (c) configs/rotation.py:cifar10 (RevNet50 k=4, small-input stem) through the in-memory
      path for a wall-clock budget, its held-out rotation accuracy, then the linear
      evaluation (`linear_eval.evaluate_arrays`, configs/linear_eval.py:cifar10, cached
      features) with the random-init baseline: test top-1 per endpoint, baseline, gain.
Every part has a time share and the whole run a deadline (default 460 s: under 8 minutes
on one H100/H200, data decoding included); results are written after each part, so a
killed run keeps its rows. Compiles always run (each pair's ratio needs both programs);
the shares bound the timed steps (a: 70 s, b: 100 s), and (c) trains for
min(--train_seconds = 240, what the deadline leaves after 155 s kept for the held-out
rotation accuracy, the checkpoint and the linear evaluation with its baseline), at least
30 s: a slow compile shortens the training, never the evaluation. `--parts c` alone gives
(c) its full 240 s. The table says how long each part took.

The schedule of (c) is the preset's compressed onto the budget: the learning rate is the
preset's peak (optim.peak_learning_rate) times the preset's step schedule evaluated at the
fraction of the budget used (warm-up 5/100, x0.1 at 50/100 and 80/100 of the time), set
before every step through an `optax.inject_hyperparams(optax.scale)` stage appended to the
engine's optimizer (equivalent to scaling the learning rate: momentum SGD scales the
momentum buffer by the rate after accumulating it). Wall-clock based: not bit-repeatable.

Data. The GPU machine has no TensorFlow, and the device tool carries at most 64 MiB, so the
uint8 CIFAR-10 arrays (184 MB) do not travel. `--prepare DIR` (here, with TFDS) stores the
JPEG bytes of the TFDS cifar10 splits (train[:45000], train[45000:], test; the preset's)
as they are in TFDS (deflated: 17.6 MiB, plus a 66 KiB zip), checks that Pillow's decode
of them equals `input_pipeline.load_arrays` image for image, records the arrays' sha256,
and zips the installed pure-Python ml_collections (configs/ and ssl_jax.checkpoint import
it; the GPU machine lacks it) into DIR/pylib. `--data DIR` decodes with Pillow (on the GPU machine),
checks the sha256 and puts DIR/pylib/*.zip on sys.path if ml_collections is missing.
Without --data, (c) runs on random arrays of CIFAR-10's shape (marked 'synthetic').

Overrides: --c_set KEY=VALUE (the pretext config, e.g. model.dtype=bfloat16), --le_set
(the linear-eval config, e.g. eval.endpoints=pre_logits), --parts, --deadline.

Here, once (TensorFlow and the prepared TFDS cifar10 needed; ~1 minute):
  python benchmarks/device_check.py --prepare .data/device_check
On the accelerator machine (any CUDA or TPU host with JAX; no TensorFlow, TFDS or
ml_collections needed there): copy this repository and the prepared DIR to it, then
  python3 benchmarks/device_check.py --data .data/device_check --out device_check.json
(about 8 minutes; the table is printed and written to --out after every part).
CPU smoke run (toy sizes, tiny_cnn, a few seconds of training; tests run it):
  python benchmarks/device_check.py --tiny --out /tmp/device_check.json
"""
import argparse
import concurrent.futures
import functools
import glob
import hashlib
import importlib
import importlib.util
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `configs` and `ssl_jax` from the repo root.
  sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

# ssl_jax.train, configs/* and the linear evaluation import ml_collections: they are
# imported inside the functions, after `add_pylib` could put the carried copy on sys.path.
from ssl_jax import models, optim, parallel, tasks  # pylint: disable=g-import-not-at-top

PURE_PYTHON = ('ml_collections',)   # carried in DIR/pylib for the GPU machine
DATA_FILE = 'cifar10_jpeg.npz'
META_FILE = 'meta.json'
SPLITS = ('train', 'val', 'test')

# Sizes and time shares. `full`: one H100/H200 in < 8 minutes. `tiny`: CPU, tests.
PROFILES = {
    'full': dict(
        deadline=460.0, share_a=70.0, share_b=100.0, train_seconds=240.0, min_train=30.0,
        ev_reserve=25.0, le_reserve=130.0, warmup=2, chunk=5, max_steps=60, sync_every=10,
        a=dict(model='resnet50_v1', width=4, dtype='bfloat16', size=224, batch=256,
               classes=1000),
        b=dict(model='resnet50_v1', width=4, dtype='bfloat16', sizes=(224, 32),
               batches=(64, 256)),
        c=dict(preset='cifar10', le_preset='cifar10', overrides={}),
        synthetic=(45000, 5000, 10000)),
    'tiny': dict(
        deadline=150.0, share_a=15.0, share_b=25.0, train_seconds=3.0, min_train=1.0,
        ev_reserve=5.0, le_reserve=30.0, warmup=1, chunk=2, max_steps=4, sync_every=2,
        a=dict(model='tiny_cnn', width=1, dtype='float32', size=32, batch=16, classes=10),
        b=dict(model='tiny_cnn', width=1, dtype='float32', sizes=(32, 16),
               batches=(16, 16)),
        c=dict(preset='cifar10', le_preset='cifar10',
               overrides={'model.name': 'tiny_cnn', 'model.width': 1, 'batch_size': 16,
                          'eval_batch_size': 16},
               le_overrides={'eval_batch_size': 64, 'eval.lbfgs_iters': 50,
                             'eval.endpoints': 'pre_logits',
                             'knn.presets': ('k20_t0.07',)}),
        synthetic=(256, 64, 64)),
}


# ----------------------------------------------------------------------------- budget


class Budget:
  """Seconds since start and to the run's deadline (time.perf_counter)."""

  def __init__(self, deadline_s):
    self.t0 = time.perf_counter()
    self.deadline = self.t0 + deadline_s

  def elapsed(self):
    return time.perf_counter() - self.t0

  def left(self):
    return self.deadline - time.perf_counter()

  def until(self, share_s, reserve_s=0.0):
    """The perf_counter time a part given `share_s` must stop starting new work at:
    its share, but never into `reserve_s` kept for the parts after it."""
    return min(time.perf_counter() + share_s, self.deadline - reserve_s)


def time_fraction_schedule(opt_config, num_epochs):
  """f(p) -> lr factor in [0, 1] at fraction p of the budget: the preset's schedule
  (config.optimizer: warm-up, then 'step' / 'cosine' / 'constant') with every epoch e
  mapped to the fraction e / num_epochs. The factor multiplies the peak rate."""
  warm = opt_config.warmup_epochs / num_epochs
  decays = [e / num_epochs for e in opt_config.decay_epochs]
  kind = opt_config.schedule
  if kind not in optim.SCHEDULES:
    raise ValueError(f'config.optimizer.schedule={kind!r}; allowed: {list(optim.SCHEDULES)}')

  def f(p):
    p = min(max(float(p), 0.0), 1.0)
    if warm > 0 and p < warm:
      return p / warm
    if kind == 'step':
      return opt_config.decay_factor ** sum(p >= d for d in decays)
    if kind == 'cosine':
      return 0.5 * (1.0 + math.cos(math.pi * (p - warm) / max(1.0 - warm, 1e-9)))
    return 1.0
  return f


# ----------------------------------------------------------------------------- data


def add_pylib(data_dir):
  """Puts DIR/pylib/<package>-<version>.zip on sys.path for each package not importable.

  Returns {package: where it is imported from} for the packages in PURE_PYTHON.
  """
  zips = sorted(glob.glob(os.path.join(data_dir, 'pylib', '*.zip'))) if data_dir else []
  for path in zips:
    name = os.path.basename(path).split('-')[0]
    try:
      found = importlib.util.find_spec(name) is not None
    except ImportError:
      found = False
    if not found and path not in sys.path:
      sys.path.append(path)
  where = {}
  for name in PURE_PYTHON:
    try:
      where[name] = importlib.import_module(name).__file__
    except ImportError:
      where[name] = None
  return where


def build_pylib(out_dir, packages=PURE_PYTHON):
  """Zips installed pure-Python packages (their .py files) for zipimport; returns paths.

  Raises ValueError for a package holding compiled extensions (a zip cannot carry them).
  """
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name in packages:
    pkg = os.path.dirname(importlib.import_module(name).__file__)
    path = os.path.join(out_dir, f'{name}-{metadata.version(name)}.zip')
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as z:
      for folder, dirs, files in os.walk(pkg):
        dirs[:] = [d for d in dirs if d != '__pycache__']
        for f in sorted(files):
          if f.endswith(('.so', '.pyd', '.dylib')):
            raise ValueError(f'package {name!r} holds compiled code ({f}): not pure Python')
          if f.endswith('.pyc'):
            continue
          full = os.path.join(folder, f)
          z.write(full, os.path.relpath(full, os.path.dirname(pkg)))
    paths.append(path)
  return paths


def decode_jpegs(blob, offsets, threads=8):
  """Concatenated encoded images -> u8[N, H, W, 3] with Pillow (which matches
  TensorFlow's INTEGER_ACCURATE JPEG decode, input_pipeline's, exactly)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  blob = np.asarray(blob, np.uint8)
  n = len(offsets) - 1

  def one(i):
    with Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())) as im:
      return np.asarray(im.convert('RGB'))

  if n == 0:
    return np.zeros((0, 0, 0, 3), np.uint8)
  first = one(0)
  out = np.empty((n,) + first.shape, np.uint8)
  out[0] = first

  def fill(lo, hi):
    for i in range(lo, hi):
      out[i] = one(i)

  step = max(1, math.ceil((n - 1) / threads))
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # Pillow frees the GIL.
    list(pool.map(lambda lo: fill(lo, min(lo + step, n)), range(1, n, step)))
  return out


def sha256_of(images):
  return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def write_prepared(out_dir, encoded, meta):
  """Writes DIR/cifar10_jpeg.npz and DIR/meta.json.

  Args:
    encoded: {split: (list of encoded-image bytes, int labels)}.
    meta: JSON-able dict; `sha256` and `shape` of each split's decoded images are added.
  """
  os.makedirs(out_dir, exist_ok=True)
  arrays, meta = {}, dict(meta, sha256={}, shape={})
  for split, (blobs, labels) in encoded.items():
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    blob = np.frombuffer(b''.join(blobs), np.uint8)
    arrays[f'{split}_jpeg'], arrays[f'{split}_offsets'] = blob, offsets
    arrays[f'{split}_label'] = np.asarray(labels, np.int32)
    images = decode_jpegs(blob, offsets)
    meta['sha256'][split], meta['shape'][split] = sha256_of(images), list(images.shape)
  # Deflate: every small JPEG repeats the same ~600 header bytes (quantisation and
  # Huffman tables), so CIFAR-10's 56 MB of JPEG files shrink to about 19 MB.
  np.savez_compressed(os.path.join(out_dir, DATA_FILE), **arrays)
  with open(os.path.join(out_dir, META_FILE), 'w') as f:
    json.dump(meta, f, indent=2)
  return meta


def load_prepared(data_dir):
  """({split: (u8 images, i32 labels)}, info) from a --prepare folder.

  info: the meta plus `sha256_ok` {split: decoded arrays equal the prepared ones}.
  Raises FileNotFoundError naming a missing file.
  """
  paths = [os.path.join(data_dir, f) for f in (DATA_FILE, META_FILE)]
  for p in paths:
    if not os.path.exists(p):
      raise FileNotFoundError(f'{p} is missing: run `python benchmarks/device_check.py '
                              f'--prepare {data_dir}` on a machine with TFDS')
  with open(paths[1]) as f:
    info = json.load(f)
  arrays, info['sha256_ok'] = {}, {}
  with np.load(paths[0]) as z:
    for split in SPLITS:
      if f'{split}_jpeg' not in z:
        continue
      images = decode_jpegs(z[f'{split}_jpeg'], z[f'{split}_offsets'])
      arrays[split] = (images, z[f'{split}_label'].astype(np.int32))
      info['sha256_ok'][split] = sha256_of(images) == info['sha256'].get(split)
  return arrays, info


def prepare(out_dir, splits=None, verify=True):
  """--prepare: the TFDS cifar10 splits as JPEG bytes + ml_collections, for the device.

  Args:
    out_dir: folder to write (DIR/cifar10_jpeg.npz, DIR/meta.json, DIR/pylib/*.zip).
    splits: {'train'|'val'|'test': TFDS split string}; default the preset's
      (configs/linear_eval.py:cifar10: train[:45000], train[45000:], test).
    verify: compare Pillow's decode with `input_pipeline.load_arrays` (TensorFlow),
      image for image; RuntimeError naming the split when they differ.
  Returns:
    the meta dict (also DIR/meta.json).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from configs import linear_eval as le_configs  # pylint: disable=g-import-not-at-top
  config = le_configs.get_config('cifar10')
  if splits:
    for k, v in splits.items():
      if k not in SPLITS:
        raise ValueError(f'--prepare_splits key {k!r}; allowed: {list(SPLITS)}')
      config.data[f'{k}_split'] = v
  t = time.perf_counter()
  encoded = {}
  for split in SPLITS:
    ds = tfds.load(config.data.name, split=config.data[f'{split}_split'],
                   data_dir=config.data.data_dir, shuffle_files=False,
                   decoders={'image': tfds.decode.SkipDecoding()})
    blobs, labels = [], []
    for ex in tfds.as_numpy(ds):
      blobs.append(bytes(ex['image']))
      labels.append(int(ex['label']))
    encoded[split] = (blobs, labels)
  meta = write_prepared(out_dir, encoded, {
      'dataset': config.data.name, 'what': 'CIFAR-10 (JPEG q75) as stored in TFDS',
      'splits': {s: config.data[f'{s}_split'] for s in SPLITS}})
  if verify:
    arrays, info = load_prepared(out_dir)
    for split in SPLITS:
      ref_images, ref_labels = input_pipeline.load_arrays(config, split)
      images, labels = arrays[split]
      if images.shape != ref_images.shape or not np.array_equal(labels, ref_labels):
        raise RuntimeError(f'split {split}: shapes {images.shape} vs {ref_images.shape} or '
                           'labels differ from input_pipeline.load_arrays')
      bad = int(np.sum(np.any(images != ref_images, axis=(1, 2, 3))))
      if bad:
        raise RuntimeError(f'split {split}: {bad} of {len(images)} images decode '
                           'differently from input_pipeline.load_arrays')
    meta['verified'] = 'equal to input_pipeline.load_arrays (images and labels)'
    with open(os.path.join(out_dir, META_FILE), 'w') as f:
      json.dump(meta, f, indent=2)
  meta['pylib'] = [os.path.basename(p) for p in build_pylib(os.path.join(out_dir, 'pylib'))]
  size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out_dir) for f in fs)
  print(f'prepared {out_dir}: {size / 2**20:.1f} MiB (splits '
        f"{ {s: meta['shape'][s][0] for s in SPLITS} }, pylib {meta['pylib']}, "
        f"{meta.get('verified', 'not verified')}) in {time.perf_counter() - t:.0f} s")
  return meta


def synthetic_cifar(sizes, seed=0):
  """Random u8[N, 32, 32, 3] images and labels of 10 classes for train, val and test."""
  rng = np.random.RandomState(seed)
  return {s: (rng.randint(0, 256, (n, 32, 32, 3), dtype=np.uint8),
              rng.randint(0, 10, n).astype(np.int32)) for s, n in zip(SPLITS, sizes)}


# ----------------------------------------------------------------------------- timing


# On a CPU (the tiny profile: plumbing, not speed) programs compile without XLA's
# expensive optimisations: several times faster, slower to run.
CPU_FAST_COMPILE = {'xla_backend_optimization_level': 0,
                    'xla_llvm_disable_expensive_passes': True}


def compile_step(step, *args):
  """(the AOT-compiled step, seconds): compile time kept out of every rate."""
  t = time.perf_counter()
  compiled = step.lower(*args).compile(
      CPU_FAST_COMPILE if jax.default_backend() == 'cpu' else None)
  return compiled, time.perf_counter() - t


def make_runner(compiled, state, batch):
  """run(n) -> seconds of n steps, blocked at the end; the (donated) state is kept."""
  cell = {'state': state, 'out': None}

  def run(n):
    t = time.perf_counter()
    s, out = cell['state'], None
    for _ in range(n):
      s, out = compiled(s, batch)
    jax.block_until_ready(out)
    cell['state'], cell['out'] = s, out
    return time.perf_counter() - t

  run.last = lambda: cell['out']
  return run


def time_variants(runners, until, *, warmup, chunk, max_steps):
  """Images/s of each variant, timed in alternating chunks (drift hits all alike).

  Args:
    runners: {name: (run, images per step)}.
    until: perf_counter time after which no new round starts (one round always runs).
  Returns:
    {name: dict(images_per_s, steps, seconds, spread)}; spread = (max - min) / median
    of the per-chunk rates (noise indicator).
  """
  for run, _ in runners.values():
    run(warmup)
  rates = {k: [] for k in runners}
  totals = {k: [0, 0.0] for k in runners}
  while True:
    for name, (run, per_step) in runners.items():
      dt = run(chunk)
      rates[name].append(chunk * per_step / dt)
      totals[name][0] += chunk
      totals[name][1] += dt
    done = min(t[0] for t in totals.values())
    if done + chunk > max_steps or time.perf_counter() >= until:
      break
  out = {}
  for name, (_, per_step) in runners.items():
    steps, seconds = totals[name]
    r = np.asarray(rates[name])
    out[name] = dict(images_per_s=steps * per_step / seconds, steps=steps, seconds=seconds,
                     spread=float((r.max() - r.min()) / np.median(r)))
  return out


def random_batch(batch, size, classes, seed=0):
  rng = np.random.RandomState(seed)
  return {'image': rng.randint(0, 256, (batch, size, size, 3), dtype=np.uint8),
          'label': rng.randint(0, classes, batch).astype(np.int32),
          'mask': np.ones(batch, bool)}


def engine_run(config, image_shape, lr=0.1, classes=10, tx_suffix=None):
  """The engine for a benchmark, assembled by `train.build` (the one place it is): the
  config's optimizer at a constant learning rate `lr`, random in-memory data of
  `image_shape` (enough images for one batch)."""
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  o = config.optimizer
  o.schedule, o.warmup_epochs, o.decay_epochs = 'constant', 0.0, ()
  o.base_lr = lr / optim.peak_learning_rate(o, config.batch_size) * o.base_lr
  config.data.source = 'in_memory'
  config.total_steps = max(config.total_steps, 1)
  n = max(config.batch_size, config.eval_batch_size)
  rng = np.random.RandomState(0)
  arrays = {s: (rng.randint(0, 256, (n,) + tuple(image_shape), dtype=np.uint8),
                rng.randint(0, classes, n).astype(np.int32)) for s in ('train', 'val')}
  return train.build(config, arrays=arrays, tx_suffix=tx_suffix)


def make_plain_step(m, classes, size, lr=0.1, momentum=0.9, weight_decay=1e-4):
  """The baseline: one jax.jit step of the same network, no shard_map, no extra checks.

  `models.create_model` with a `classes`-way logits layer, inputs u8 -> [-1, 1] as the
  tasks' `to_minus_one_one`, mean softmax cross-entropy, coupled L2 on every >1-D
  parameter (the kernels) and SGD momentum. Returns (state, jit(state, batch) ->
  (state, loss)).
  """
  model = models.create_model(m['model'], num_classes=classes, width=m['width'],
                              dtype=m['dtype'])
  init = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((2, size, size, 3)),
                                    train=False)).lower()
  # As train.init_state: XLA:CPU would spend seconds optimising a program run once.
  variables = init.compile(CPU_FAST_COMPILE if jax.default_backend() == 'cpu' else None)()
  tx = optax.chain(
      optax.add_decayed_weights(weight_decay, mask=lambda p: jax.tree.map(
          lambda x: x.ndim > 1, p)),
      optax.sgd(lr, momentum=momentum))
  params = variables['params']
  state = (params, variables['batch_stats'], tx.init(params))

  def step(state, batch):
    params, batch_stats, opt_state = state
    x = batch['image'].astype(jnp.float32) * (2.0 / 255.0) - 1.0

    def loss_fn(p):
      (logits, _), mutated = model.apply({'params': p, 'batch_stats': batch_stats}, x,
                                    train=True, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), batch['label']).mean()
      return loss, mutated['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

  return state, jax.jit(step, donate_argnums=0)


def num_params(tree):
  return int(sum(x.size for x in jax.tree.leaves(tree)))


# ----------------------------------------------------------------------------- parts


def part_a(p, budget, until):
  """(a) the engine's supervised step vs a plain jit step of the same model."""
  from configs import supervised  # pylint: disable=g-import-not-at-top
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  a = p['a']
  c = supervised.get_config('imagenet')
  c.model.update(name=a['model'], width=a['width'], dtype=a['dtype'], small_input=False)
  c.data.num_classes = a['classes']
  c.batch_size = a['batch']
  c.input.pp_train = c.input.pp_eval = 'decode'
  host = random_batch(a['batch'], a['size'], a['classes'])
  run = engine_run(c, (a['size'], a['size'], 3), classes=a['classes'])
  state = run.state
  ours_params = num_params(state['params'])
  data = parallel.global_batch(run.mesh, host)
  ours, ours_compile = compile_step(run.train_step_for(('supervised',)), state, data)
  plain_state, plain_step = make_plain_step(a, a['classes'], a['size'])
  plain_params = num_params(plain_state[0])
  plain_data = jax.device_put({k: host[k] for k in ('image', 'label')})
  plain, plain_compile = compile_step(plain_step, plain_state, plain_data)
  runners = {'engine': (make_runner(ours, state, data), a['batch']),
             'plain': (make_runner(plain, plain_state, plain_data), a['batch'])}
  res = time_variants(runners, until, warmup=p['warmup'], chunk=p['chunk'],
                      max_steps=p['max_steps'])
  metrics = jax.device_get(runners['engine'][0].last())
  plain_loss = float(jax.device_get(runners['plain'][0].last()))
  what = (f"supervised {a['model']} k={a['width']} {a['dtype']} {a['size']}px "
          f"batch {a['batch']}")
  ratio = res['engine']['images_per_s'] / res['plain']['images_per_s']
  return [
      row('a', f'engine step (shard_map), {what}', res['engine']['images_per_s'], 'img/s',
          baseline=res['plain']['images_per_s'], ratio=ratio,
          note=(f"compile {ours_compile:.0f}s, {res['engine']['steps']} steps, spread "
                f"{res['engine']['spread']:.0%}, loss {float(metrics['loss']):.2f}, "
                f"finite {bool(metrics['finite'])}, {ours_params / 1e6:.2f}M params")),
      row('a', 'plain jax.jit step, same model (baseline)', res['plain']['images_per_s'],
          'img/s', note=(f"compile {plain_compile:.0f}s, {res['plain']['steps']} steps, "
                         f"spread {res['plain']['spread']:.0%}, loss {plain_loss:.2f}, "
                         f"{plain_params / 1e6:.2f}M params")),
  ]


def part_b(p, budget, until):
  """(b) rotation step: pretext stage on the device vs pre-rotated float inputs."""
  from configs import rotation  # pylint: disable=g-import-not-at-top
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  b = p['b']
  mesh = parallel.make_mesh()
  rows = []
  sizes = list(zip(b['sizes'], b['batches']))
  for i, (size, batch) in enumerate(sizes):
    # An equal slice of what is left of the part for each size.
    size_until = time.perf_counter() + (until - time.perf_counter()) / (len(sizes) - i)
    c = rotation.get_config('imagenet')
    c.model.update(name=b['model'], width=b['width'], dtype=b['dtype'], small_input=False)
    c.data.image_size = size
    c.batch_size = batch
    c.input.pp_train = c.input.pp_eval = 'decode'
    run = engine_run(c, (size, size, 3))
    task, model, tx, state_on = run.task_set.members[0].task, run.model, run.tx, run.state
    # The same initial state for the other variant (both are donated by their step).
    state_off = jax.jit(lambda s: jax.tree.map(jnp.copy, s),
                        out_shardings=parallel.replicated(mesh))(state_on)
    host = random_batch(batch, size, 10, seed=size)
    on_data = parallel.global_batch(mesh, host)
    inputs, targets = jax.jit(functools.partial(task.pretext, train=True))(
        jax.random.key(0), jax.device_put(host))
    off_data = parallel.global_batch(
        mesh, {'inputs': jax.tree.map(np.asarray, inputs), 'targets': np.asarray(targets)})
    c_off = c.copy_and_resolve_references()
    c_off.input.pretext_on_device = False
    on, on_compile = compile_step(run.train_step_for(('rotation',)), state_on, on_data)
    # The same engine's step with the stage left out (its host placement's inputs).
    off, off_compile = compile_step(train.make_train_step(c_off, run.task_set, model, tx,
                                                          mesh), state_off, off_data)
    runners = {'on': (make_runner(on, state_on, on_data), batch),
               'off': (make_runner(off, state_off, off_data), batch)}
    res = time_variants(runners, size_until, warmup=p['warmup'], chunk=p['chunk'],
                        max_steps=p['max_steps'])
    n = inputs['image'].shape[1]
    ratio = res['on']['images_per_s'] / res['off']['images_per_s']
    what = f"rotation {b['model']} k={b['width']} {b['dtype']} {size}px batch {batch}x{n}"
    rows += [
        row('b', f'{what}: pretext stage on the device (uint8 in)',
            res['on']['images_per_s'], 'img/s', baseline=res['off']['images_per_s'],
            ratio=ratio,
            note=(f"{res['on']['images_per_s'] * n:.0f} trunk inputs/s, compile "
                  f"{on_compile:.0f}s, {res['on']['steps']} steps, spread "
                  f"{res['on']['spread']:.0%}")),
        row('b', f'{what}: pre-rotated float inputs (stage left out)',
            res['off']['images_per_s'], 'img/s',
            note=(f"{res['off']['images_per_s'] * n:.0f} trunk inputs/s, compile "
                  f"{off_compile:.0f}s, {res['off']['steps']} steps, spread "
                  f"{res['off']['spread']:.0%}")),
    ]
  return rows


def set_keys(config, overrides):
  """config[key] = value for dotted keys (ValueError naming an unknown key)."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for name in parents:
      node = node[name]
    if leaf not in node:
      raise ValueError(f'override {key}={value!r}: {key!r} is not a config key')
    node[leaf] = value


def parse_sets(items):
  """['a.b=1', ...] -> {'a.b': 1}: values read as Python literals, else strings."""
  import ast  # pylint: disable=g-import-not-at-top
  out = {}
  for item in items:
    if '=' not in item:
      raise ValueError(f'override {item!r}: expected key=value')
    key, value = item.split('=', 1)
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def train_rotation(p, budget, arrays, overrides, train_seconds, log):
  """(c), first half: the rotation preset through the in-memory path for a time budget.

  Training runs for min(train_seconds, what the deadline leaves after the reserves of
  the evaluations), at least p['min_train'] seconds, counted after the step compiled.
  Returns (rows, info, config, state, run) (run: the `train.build` Run); info holds steps,
  epochs, seconds and `nonfinite_step` (None, or the step whose loss or state was
  NaN/inf: training stops there, the engine kept the state before it).
  """
  from configs import rotation  # pylint: disable=g-import-not-at-top
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  c = p['c']
  config = rotation.get_config(c['preset'])
  config.data.source = 'in_memory'
  set_keys(config, overrides)
  # The schedule's horizon in epochs (presets give num_epochs, or total_steps).
  num_train = len(arrays['train'][1])
  steps_per_epoch = (config.steps_per_epoch if config.steps_per_epoch > 0
                     else max(num_train // config.batch_size, 1))
  horizon = (config.total_steps / steps_per_epoch if config.total_steps > 0
             else config.num_epochs)
  factor = time_fraction_schedule(config.optimizer, horizon)
  peak = optim.peak_learning_rate(config.optimizer, config.batch_size)
  # The engine's optimizer at its peak rate (a constant schedule), then x f(p) set
  # before every step through an injected scale appended to it (train.build's tx_suffix).
  run_config = config.copy_and_resolve_references()
  run_config.optimizer.update(schedule='constant', warmup_epochs=0.0, decay_epochs=())
  t = time.perf_counter()
  run = train.build(run_config, arrays={k: arrays[k] for k in ('train', 'val')},
                    tx_suffix=optax.inject_hyperparams(optax.scale)(step_size=0.0))
  replicated = parallel.replicated(run.mesh)

  def with_factor(state, f):
    opt = state['opt_state']
    inj = opt[-1]
    value = jax.device_put(np.float32(f), replicated)
    return dict(state, opt_state=opt[:-1] + (
        inj._replace(hyperparams=dict(inj.hyperparams, step_size=value)),))

  state = with_factor(run.state, 0.0)
  stream = run.train_batches()
  batch = next(stream)['rotation']
  step_fn, compile_s = compile_step(run.train_step_for(('rotation',)), state, batch)
  setup_s = time.perf_counter() - t
  # Never into the reserves of what follows, but at least min_train seconds.
  budget_s = max(min(train_seconds, budget.left() - p['le_reserve'] - p['ev_reserve']),
                 p['min_train'])
  log(f'(c) setup+compile {setup_s:.0f}s; training for {budget_s:.0f}s '
      f'(peak lr {peak:g}, {num_train} images, batch {config.batch_size})')
  t0 = time.perf_counter()
  step, pending, done, nonfinite = 0, [], [], None
  while True:
    frac = (time.perf_counter() - t0) / budget_s if budget_s > 0 else 1.0
    if frac >= 1.0 and step > 0:
      break
    state = with_factor(state, factor(frac))
    state, metrics = step_fn(state, batch)
    step += 1
    pending.append(metrics)
    batch = next(stream)['rotation']
    if step % p['sync_every'] == 0:
      # Keep one group of steps queued on the device while reading the one before.
      ready, pending = pending[:-p['sync_every']], pending[-p['sync_every']:]
      done += jax.device_get(ready)
      if any(not bool(m['finite']) for m in done):
        nonfinite = step
        break
  done += jax.device_get(pending)
  train_s = time.perf_counter() - t0
  if nonfinite is None and not all(bool(m['finite']) for m in done):
    nonfinite = step
  tail = done[-max(len(done) // 10, 1):]
  loss = float(np.mean([m['loss'] for m in tail]))
  acc = float(np.mean([m['accuracy'] for m in tail]))
  epochs = step * config.batch_size / num_train
  m = config.model
  what = (f"rotation {c['preset']} in-memory: {m.name} k={m.width} {m.dtype} "
          f"small_input={m.small_input}, batch {config.batch_size}")
  rows = [row('c', f'{what}: training', step * config.batch_size / train_s, 'img/s',
              note=(f'{train_s:.0f}s ({epochs:.2f} epochs, {step} steps) after '
                    f'{setup_s:.0f}s setup+compile ({compile_s:.0f}s step compile); '
                    f'lr schedule compressed onto the time budget'
                    + (f'; NON-FINITE at step {nonfinite}' if nonfinite else ''))),
          row('c', 'rotation train accuracy (last 10% of steps)', 100 * acc, '%',
              note=f'train loss {loss:.3f}; chance 25%')]
  info = dict(steps=step, epochs=epochs, train_seconds=train_s, setup_seconds=setup_s,
              nonfinite_step=nonfinite)
  return rows, info, config, state, run


def pretext_eval(run, state):
  """Held-out rotation accuracy (eval-mode pretext stage, all four rotations)."""
  t = time.perf_counter()
  res = run.evaluate(state)
  return row('c', 'held-out rotation accuracy (val split, 4 rotations)',
             100 * res['accuracy'], '%',
             note=(f"{int(res['num_examples'])} images, loss {res['loss']:.3f}, "
                   f'{time.perf_counter() - t:.0f}s incl. compile'))


def linear_evaluation(p, config, state, arrays, workdir, extras, overrides):
  """(c), second half: save the trunk as the engine does, then evaluate_arrays on it
  (restore_trunk, cached features, L-BFGS probes) with the random-init baseline."""
  from configs import linear_eval as le_configs  # pylint: disable=g-import-not-at-top
  from ssl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
  t = time.perf_counter()
  checkpoint.write_config(workdir, config)
  manager = checkpoint.make_manager(workdir, 1)
  step = int(jax.device_get(state['step']))
  checkpoint.save(manager, step, state, checkpoint.meta(config, step))
  manager.wait_until_finished()
  manager.close()
  le = le_configs.get_config(p['c']['le_preset'])
  le.pretrained = workdir
  with le.unlocked():
    le.eval.random_init_baseline = True
  if not extras:  # The time share: linear probes and kNN only.
    le.mlp.enabled = False
    le.lowshot.enabled = False
  set_keys(le, overrides)
  results = linear_eval.evaluate_arrays(le, arrays)
  seconds = time.perf_counter() - t
  print(linear_eval.format_table(results), flush=True)
  rows = []
  order = list(results['dims'])
  for name in sorted(results['linear'], key=order.index):
    r = results['linear'][name]
    rows.append(row('c', f'linear probe test top-1: {name} ({results["dims"][name]} dims)',
                    100 * r['top1'], '%', baseline=100 * r.get('baseline_top1', math.nan),
                    gain=100 * r.get('gain', math.nan),
                    note=f"val {100 * r['val_top1']:.2f}, wd {r['weight_decay']:g}"))
  for preset, d in results['knn'].items():
    for name, r in d.items():
      rows.append(row('c', f'kNN {preset} test top-1: {name}', 100 * r['top1'], '%',
                      baseline=100 * r.get('baseline_top1', math.nan),
                      gain=100 * r.get('gain', math.nan)))
  timing = results.get('timing', {})
  rows.append(row('c', 'linear evaluation (+ random-init baseline) wall time', seconds, 's',
                  note=(f"extract {timing.get('extract_images_per_s', 0):.0f} img/s, "
                        f"solver {results['solver']}, counts {results['num_examples']}")))
  keep = {k: results[k] for k in ('linear', 'knn', 'dims', 'num_examples', 'solver',
                                  'pool_mode', 'timing', 'baseline') if k in results}
  return rows, keep


# ----------------------------------------------------------------------------- table


def row(part, name, value, unit, *, baseline=None, ratio=None, gain=None, note=''):
  """One table row: value (+ its baseline and ratio value/baseline, or gain in points)."""
  return dict(part=part, name=name, value=float(value), unit=unit,
              baseline=None if baseline is None else float(baseline),
              ratio=None if ratio is None else float(ratio),
              gain=None if gain is None else float(gain), note=note)


def format_table(report):
  """The one table: header (device, jax, data) and a line per row."""
  h = report['header']
  w = max([len(r['name']) for r in report['rows']] + [3])
  lines = [f"device check ({report['profile']}): {h['device']}, jax {h['jax']}, "
           f"flax {h['flax']}, optax {h['optax']}; data: {h['data']}; "
           f"{report['seconds']['total']:.0f}s of {report['deadline_s']:.0f}s deadline",
           f"{'':2s} {'row':{w}s} {'value':>10s} {'unit':5s} {'baseline':>10s} "
           f"{'ratio/gain':>10s}  note"]
  fmt = lambda v: '' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:10.2f}'
  for r in report['rows']:
    rel = (f"{r['ratio']:10.3f}" if r['ratio'] is not None else
           f"{r['gain']:+10.2f}" if r['gain'] is not None and not math.isnan(r['gain'])
           else '')
    lines.append(f"{r['part']:2s} {r['name']:{w}s} {r['value']:10.2f} {r['unit']:5s} "
                 f"{fmt(r['baseline']):>10s} {rel:>10s}  {r['note']}")
  for part, why in report.get('skipped', {}).items():
    lines.append(f'{part:2s} skipped: {why}')
  lines.append('ratio = value / baseline (a: engine / plain jit; b: stage on device / '
               'pre-rotated); gain = top-1 minus the random-init trunk, in points')
  return '\n'.join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--tiny', action='store_true', help='toy sizes on CPU (tests)')
  ap.add_argument('--parts', default='a,b,c', help='subset of a,b,c')
  ap.add_argument('--data', default='', help='a --prepare folder (default: synthetic)')
  ap.add_argument('--out', default='', help='JSON results (written after each part)')
  ap.add_argument('--deadline', type=float, default=0, help='seconds (default: profile)')
  ap.add_argument('--train_seconds', type=float, default=0,
                  help='(c) training budget after compile (default: profile)')
  ap.add_argument('--max_steps', type=int, default=0, help='timed steps per variant')
  ap.add_argument('--c_set', action='append', default=[],
                  help='(c) pretext config override key=value, e.g. model.dtype=bfloat16')
  ap.add_argument('--le_set', action='append', default=[],
                  help='(c) linear-eval config override, e.g. eval.endpoints=pre_logits')
  ap.add_argument('--le_extras', action='store_true',
                  help="(c) keep the preset's MLP and low-shot evaluations")
  ap.add_argument('--workdir', default='', help='(c) checkpoint folder (default: temp)')
  ap.add_argument('--prepare', default='', help='write the device data into this folder')
  ap.add_argument('--prepare_splits', default='',
                  help='train=...,val=...,test=... TFDS split strings (default: preset)')
  return ap.parse_args(argv)


def run_check(args):
  """The device check; returns the report dict (also printed and written)."""
  p = dict(PROFILES['tiny' if args.tiny else 'full'])
  p['deadline'] = args.deadline or p['deadline']
  p['train_seconds'] = args.train_seconds or p['train_seconds']
  p['max_steps'] = args.max_steps or p['max_steps']
  parts = [s.strip() for s in args.parts.split(',') if s.strip()]
  for s in parts:
    if s not in ('a', 'b', 'c'):
      raise ValueError(f'--parts {args.parts!r}: {s!r} is not a part; allowed: a, b, c')
  budget = Budget(p['deadline'])
  log = lambda msg: print(f'[{budget.elapsed():6.1f}s] {msg}', flush=True)
  pylib = add_pylib(args.data)
  if args.data:
    arrays, info = load_prepared(args.data)
    ok = all(info['sha256_ok'].values())
    data = (f"{info.get('what', info['dataset'])} {info['splits']} "
            f"({'decoded arrays match the prepared sha256' if ok else 'SHA256 MISMATCH'})")
  else:
    arrays, ok = synthetic_cifar(p['synthetic']), None
    info = {'sizes': p['synthetic']}
    data = f"synthetic random CIFAR-shaped arrays {p['synthetic']} (accuracies meaningless)"
  dev = jax.devices()[0]
  import flax  # pylint: disable=g-import-not-at-top
  report = {
      'profile': 'tiny' if args.tiny else 'full', 'deadline_s': p['deadline'],
      'header': dict(device=f'{dev.device_kind} x{jax.device_count()} ({dev.platform})',
                     jax=jax.__version__, flax=flax.__version__, optax=optax.__version__,
                     data=data, data_sha256_ok=ok, python=sys.version.split()[0],
                     pylib=pylib),
      'rows': [], 'skipped': {}, 'seconds': {'total': 0.0}, 'parts': parts}

  def save():
    report['seconds']['total'] = budget.elapsed()
    if args.out:
      os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
      with open(args.out, 'w') as f:
        json.dump(report, f, indent=2, sort_keys=True)

  log(f"{report['header']['device']}, jax {jax.__version__}; data: {data}")
  # What (c) needs at least: setup, some training, the evaluations.
  c_min = p['le_reserve'] + p['ev_reserve'] + 2 * p['min_train'] if 'c' in parts else 0.0
  shares = {'a': (p['share_a'], (p['share_b'] if 'b' in parts else 0.0) + c_min),
            'b': (p['share_b'], c_min)}
  for part, fn in (('a', part_a), ('b', part_b)):
    if part not in parts:
      continue
    share, reserve = shares[part]
    if budget.left() - reserve <= 0:
      report['skipped'][part] = 'no time left before the deadline'
      continue
    t = time.perf_counter()
    rows = fn(p, budget, budget.until(share, reserve))
    report['seconds'][part] = time.perf_counter() - t
    report['rows'] += rows
    for r in rows:
      log(f"({part}) {r['name']}: {r['value']:.1f} {r['unit']}"
          + (f" ratio {r['ratio']:.3f}" if r['ratio'] is not None else ''))
    save()
  if 'c' in parts:
    t = time.perf_counter()
    overrides = dict(p['c']['overrides'], **parse_sets(args.c_set))
    rows, info_c, config, state, run = train_rotation(
        p, budget, arrays, overrides, p['train_seconds'], log)
    report['rows'] += rows
    report['train'] = info_c
    save()
    if budget.left() > p['le_reserve']:
      report['rows'].append(pretext_eval(run, state))
      log(f"(c) {report['rows'][-1]['name']}: {report['rows'][-1]['value']:.2f}%")
    else:
      report['skipped']['c: held-out rotation accuracy'] = 'time share used'
    workdir = args.workdir or tempfile.mkdtemp(prefix='device_check_')
    try:
      le_rows, report['linear_eval'] = linear_evaluation(
          p, config, state, arrays, workdir, args.le_extras,
          dict(p['c'].get('le_overrides', {}), **parse_sets(args.le_set)))
    finally:
      if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    report['rows'] += le_rows
    report['seconds']['c'] = time.perf_counter() - t
    save()
  save()
  print(format_table(report), flush=True)
  return report


def main(argv=None):
  args = parse_args(argv)
  if args.prepare:
    splits = dict(kv.split('=', 1) for kv in args.prepare_splits.split(',') if kv)
    prepare(args.prepare, splits or None)
    return
  run_check(args)


if __name__ == '__main__':
  main()
