"""The public research API: a trunk in three lines, a run in one.

    import ssl_jax
    trunk = ssl_jax.load_trunk('workdirs/rotation_cifar10_cpu')   # newest checkpoint
    feats = trunk.features(images_u8)['pre_logits']                 # f32[N, D] numpy

    images, labels, class_names = ssl_jax.load_images('cifar10', 'test[:500]')  # TFDS
    twin = trunk.random_twin(bn_images=images)   # same architecture and input, random
                                                 # weights, BN statistics of the images
    out = ssl_jax.run(configs.get('rotation', 'smoke'), 'workdirs/rot_smoke')   # a job

`load_trunk(workdir, step=None)` restores a pretext run's trunk (any task: the trunk's
input kind comes from the task, `tasks.EvalInput`: RGB in [-1, 1], the 9 standardised
patches of the patch tasks with features averaged over them, or colorization's L
channel) and returns a `Trunk`. `Trunk.features(images)` runs it frozen, BatchNorm in
inference mode (the checkpoint's moving averages; nothing in the trunk changes), with
the linear evaluation's own feature function (`ssl_jax.evaluation.features`), so its
numbers are the features the linear evaluation trains its probes on, for the same
preprocessed images and pooling.

`run(config, workdir)` is `python -m ssl_jax.main --config ... --workdir ...` from
Python: the pretext training loop (`train.build` + `train.train_loop`: checkpoints,
TensorBoard scalars, held-out pretext evaluations, resume), then the linear evaluation
when the config asks for it (`config.run_linear_eval`). To drive the steps yourself
(a notebook's loop, fine-tuning), use `ssl_jax.train.build(config)` (see its module doc).

Configs come from `configs.get(name, preset, **overrides)` (configs/__init__.py);
pictures from `ssl_jax.viz`.

This module imports JAX and Flax; TensorFlow only where the data are read from TFDS.
"""
import contextlib
import dataclasses
import functools
import importlib
import logging
import os
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

# The linear evaluation's defaults (configs/linear_eval.py): the study's VALID max
# pooling of every 4-D endpoint to at most 9,000 dims; patches averaged.
POOL = 'max'
TARGET_DIMS = 9000
PATCH_COMBINE = 'avg'
DEFAULT_ENDPOINTS = ('pre_logits',)


@dataclasses.dataclass(eq=False)
class Trunk:
  """A frozen trunk and what it takes as input; made by `load_trunk` / `random_twin`.

  Attributes:
    model: the flax.linen trunk (no logits layer), `model.apply(variables, x,
      train=False) -> (pre_logits, endpoints)`.
    variables: {'params', 'batch_stats'} host numpy pytrees.
    config: the pretext run's config (config.json of the workdir).
    task: the pretext task's name, or 'random_init' for a random twin.
    input_kind: 'rgb', 'standardized_rgb', 'patches' or 'lab_l' (EvalInput.kind).
    eval_input: the task's `tasks.EvalInput` (u8 images -> trunk input).
    endpoints: the trunk's endpoint names, input to output.
    pp: the preprocessing `features` applies by default (ssl_jax.data.ops string, run
      in JAX with the evaluation's deterministic ops): the patch tasks' evaluation
      geometry, else `decode|resize_small(S)|crop(S)` (shorter side to S, central S x S
      crop; the identity on S x S images) with S = the run's config.data.image_size.
    image_shape: (H, W, 3) of the images after `pp`: what the trunk was built for.
    workdir, step: where it came from (step None for a random twin built without one).
    seed: a random twin's initialisation seed (None for a trained trunk).
    bn_images: images whose population statistics the BN layers hold
      (`with_bn_statistics`); None: the checkpoint's moving averages (a random twin:
      the initial mean 0, variance 1).
  """
  model: Any
  variables: Any
  config: Any
  task: str
  input_kind: str
  eval_input: Any
  endpoints: tuple
  pp: str
  image_shape: tuple
  workdir: Optional[str] = None
  step: Optional[int] = None
  seed: Optional[int] = None
  bn_images: Optional[int] = None
  _device_variables: Any = dataclasses.field(default=None, repr=False)
  _fns: dict = dataclasses.field(default_factory=dict, repr=False)

  def __repr__(self):
    m = self.config.model
    what = (f'random init (seed {self.seed})' if self.task == 'random_init'
            else f'{self.task}, step {self.step}')
    bn = '' if self.bn_images is None else f', BN statistics of {self.bn_images} images'
    return (f'Trunk({what}, {m.name} k={m.width}, input {self.input_kind} '
            f'{self.image_shape[0]}x{self.image_shape[1]}{bn}, endpoints '
            f'{", ".join(self.endpoints)})')

  def features(self, images, endpoints: Union[str, Sequence[str]] = DEFAULT_ENDPOINTS, *,
               pp: Optional[str] = None, pool: str = POOL, target_dims: int = TARGET_DIMS,
               patch_combine: str = PATCH_COMBINE, batch_size: int = 256):
    """Pooled features of `images` at `endpoints`, as the linear evaluation computes them.

    Args:
      images: u8[N, H, W, 3] RGB images (u8[N, H, W, 1] grey ones are repeated to 3
        channels), any size the preprocessing accepts.
      endpoints: an endpoint name or a sequence of them (`self.endpoints`).
      pp: the preprocessing (None: `self.pp`; '': the images as they are, which must
        then be `self.image_shape` for trunks whose parameters depend on it, e.g.
        VGG's fc6, and the patch geometry for patch trunks).
      pool: ssl_jax.evaluation.pooling mode of the 4-D endpoints ('max': the study's
        VALID max pooling to <= target_dims; 'none': flattened as they are;
        'global_avg': the channel means); 2-D endpoints (pre_logits) are unchanged.
      target_dims: the pooling's dimension target.
      patch_combine: patch trunks: 'avg' (the study), 'max' or 'concat' over the 9
        patches of an image.
      batch_size: images per compiled call (the last batch is padded to it).
    Returns:
      float32 numpy [N, D] for a single endpoint name, else {endpoint: f32[N, D]}.
    Raises:
      ValueError: images not uint8 [N, H, W, 3|1], unknown endpoints, pool mode or
        patch combination, or images the preprocessing cannot take.
    """
    from ssl_jax.evaluation import features as features_lib  # pylint: disable=g-import-not-at-top
    from ssl_jax.evaluation import pooling  # pylint: disable=g-import-not-at-top
    single = isinstance(endpoints, str)
    names = (endpoints,) if single else tuple(endpoints)
    unknown = [n for n in names if n not in self.endpoints]
    if not names or unknown:
      raise ValueError(f'Trunk.features: endpoints {list(unknown) or names} not of this '
                       f'trunk; allowed: {list(self.endpoints)}')
    if pool not in pooling.MODES:
      raise ValueError(f'Trunk.features: pool={pool!r}; allowed: {list(pooling.MODES)}')
    if patch_combine not in ('avg', 'max', 'concat'):
      raise ValueError(f"Trunk.features: patch_combine={patch_combine!r}; allowed: "
                       "['avg', 'max', 'concat']")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f'Trunk.features: batch_size={batch_size!r} must be an int >= 1')
    images = _as_rgb_u8(images)
    pp = self.pp if pp is None else pp
    key = (names, pp, pool, int(target_dims), patch_combine)
    if key not in self._fns:
      extract = features_lib.make_extract_fn(
          self.model, names, eval_input=self.eval_input, pool_mode=pool,
          target_dims=int(target_dims), patch_combine=patch_combine)
      prep = _preprocess_fn(pp)

      def fn(variables, batch):
        return extract(variables, prep(batch))
      self._fns[key] = jax.jit(fn)
    fn = self._fns[key]
    if self._device_variables is None:
      self._device_variables = jax.device_put(self.variables)
    n = images.shape[0]
    if n == 0:
      raise ValueError('Trunk.features: no images (N = 0)')
    b = min(batch_size, n)
    chunks = []
    for start in range(0, n, b):
      part = images[start:start + b]
      rows = part.shape[0]
      if rows < b:  # padded, so one compiled shape serves every batch
        part = np.concatenate([part, np.zeros((b - rows,) + part.shape[1:], np.uint8)])
      out = fn(self._device_variables, jnp.asarray(part))
      chunks.append({k: np.asarray(v)[:rows] for k, v in out.items()})
    result = {k: np.concatenate([c[k] for c in chunks]) for k in names}
    return result[names[0]] if single else result

  def random_twin(self, seed: int = 0, *, bn_images=None, pp: Optional[str] = None,
                  batch_size: int = 256):
    """A randomly initialised trunk of the same architecture, input and preprocessing.

    Its parameters are those of the linear evaluation's random-init baseline
    (`eval.random_init_baseline`) with the same seed (that config's seed, default 0):
    the model's initialisers under jax.random.key(seed, impl='unsafe_rbg'), built for
    `image_shape`. BatchNorm statistics: their initial values (mean 0, variance 1), or,
    with `bn_images`, population statistics of those images (`with_bn_statistics`), as
    the baseline's `eval.baseline_bn='reestimate'` does with train-split images (its
    default 'best' takes, per result group, the better on val of the two; `pp`,
    `batch_size`: as `with_bn_statistics`).
    """
    twin = _random_trunk(self, seed)
    if bn_images is not None:
      twin = twin.with_bn_statistics(bn_images, pp=pp, batch_size=batch_size)
    return twin

  def with_bn_statistics(self, images, *, pp: Optional[str] = None, batch_size: int = 256):
    """This trunk with "precise BN" statistics: every BatchNorm layer's mean and
    (biased) variance become those of its input over `images` (weights unchanged).

    The linear evaluation's re-estimation (`features.reestimate_batch_stats`, one
    train-mode pass per batch through `ssl_jax.bn_stats`): equal-size batches of
    min(batch_size, N) images after `pp` (None: `self.pp`) and the trunk's input
    transform; the N % batch rows left over are not used. Patch trunks: statistics over
    the 9 patches of every image, as in training.

    Returns:
      a new `Trunk` (`bn_images` in its repr: the number of images used).
    Raises:
      ValueError: bad images (see `features`).
    """
    from ssl_jax.evaluation import features as features_lib  # pylint: disable=g-import-not-at-top
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f'with_bn_statistics: batch_size={batch_size!r} must be an int >= 1')
    images = _as_rgb_u8(images)
    if images.shape[0] == 0:
      raise ValueError('with_bn_statistics: no images (N = 0)')
    prep = jax.jit(_preprocess_fn(self.pp if pp is None else pp))
    b = min(batch_size, images.shape[0])
    count = images.shape[0] // b

    def batches():
      for i in range(count):
        image = np.asarray(prep(jnp.asarray(images[i * b:(i + 1) * b])))
        yield {'image': image, 'label': np.zeros(b, np.int32), 'mask': np.ones(b, bool)}

    variables, used = features_lib.reestimate_batch_stats(
        self.model, self.variables, batches(), num_batches=count, eval_input=self.eval_input)
    return dataclasses.replace(self, variables=jax.tree.map(np.asarray, variables),
                               bn_images=int(used), _device_variables=None, _fns={})


def _as_rgb_u8(images):
  x = np.asarray(images)
  if x.dtype != np.uint8:
    raise ValueError(f'images must be uint8 [N, H, W, 3] (0..255), got dtype {x.dtype}')
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f'images must be uint8 [N, H, W, 3] (or [N, H, W, 1]), got shape '
                     f'{x.shape}')
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  return x


@functools.lru_cache(maxsize=16)
def _batch_ops(pp):
  from ssl_jax.data import ops  # pylint: disable=g-import-not-at-top
  return ops.make_batch_fn(pp, train=False)


def _preprocess_fn(pp):
  """u8 [B, H, W, 3] -> u8 [B, h, w, 3] of the deterministic evaluation ops `pp`."""
  if not pp:
    return lambda images: images
  fn = _batch_ops(pp)
  # Deterministic ops (train=False) ignore the key; a fixed one keeps the call pure.
  return lambda images: fn(jax.random.key(0), images)


def _default_pp(config, eval_input):
  if eval_input.pp:
    return eval_input.pp
  s = int(config.data.image_size)
  return f'decode|resize_small({s})|crop({s})'


def _image_shape(pp, config):
  from ssl_jax.data import ops  # pylint: disable=g-import-not-at-top
  s = int(config.data.image_size)
  return tuple(int(d) for d in ops.output_shape(pp, (s, s, 3), train=False))


def _model(model_config, dtype=None):
  from ssl_jax import models  # pylint: disable=g-import-not-at-top
  return models.create_trunk(model_config, dtype=dtype or model_config.dtype)


def load_trunk(workdir: str, step: Optional[int] = None, *, random_init: bool = False,
               seed: int = 0, dtype: Optional[str] = None) -> Trunk:
  """The trunk of a pretext workdir, frozen, ready for `Trunk.features`.

  Args:
    workdir: a pretext run's directory (config.json + checkpoints/), of any task
      (and of checkpoint layout 1: the classifier inside the trunk is dropped).
    step: a saved step (None: the newest).
    random_init: return the random-init twin instead (`Trunk.random_twin(seed)`: the
      workdir's architecture and input; no checkpoint is read).
    seed: the twin's initialisation seed.
    dtype: compute dtype (None: the run's config.model.dtype; parameters stay float32).
  Returns:
    a `Trunk`.
  Raises:
    FileNotFoundError: no config.json, no checkpoint, or no checkpoint of `step`
      (naming the path and the available steps).
  """
  from ssl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
  if random_init:
    config = checkpoint.read_config(workdir)
    params, stats, step = None, None, None
  else:
    with _quiet_restore():
      config, params, stats = checkpoint.restore_trunk(workdir, step=step)
    if step is None:
      step = checkpoint.saved_steps(workdir)[-1]
  eval_input = linear_eval.eval_input_of(config)
  pp = _default_pp(config, eval_input)
  variables = {'params': params}
  if stats:
    variables['batch_stats'] = stats
  trunk = Trunk(model=_model(config.model, dtype), variables=variables, config=config,
                task=str(config.task), input_kind=eval_input.kind, eval_input=eval_input,
                endpoints=_trunk_endpoints(config), pp=pp,
                image_shape=_image_shape(pp, config), workdir=os.fspath(workdir),
                step=None if step is None else int(step))
  if random_init:
    return _random_trunk(trunk, seed)
  return trunk


class _ExpectedOrbaxWarnings(logging.Filter):
  """orbax warns "Metadata file does not exist" when a step's `state` item is read
  directly (its metadata sits one level up), as restore_trunk does: expected, dropped
  (ssl_jax.main drops it too)."""

  def filter(self, record):
    return 'Metadata file does not exist' not in str(record.msg)


@contextlib.contextmanager
def _quiet_restore():
  target = logging.getLogger('absl')
  quiet = _ExpectedOrbaxWarnings()
  target.addFilter(quiet)
  try:
    yield
  finally:
    target.removeFilter(quiet)


def _trunk_endpoints(config):
  from ssl_jax import models  # pylint: disable=g-import-not-at-top
  return tuple(models.trunk_endpoints(config.model.name))


def _random_trunk(trunk, seed):
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'random_twin: seed={seed!r} must be an int >= 0')
  from ssl_jax.evaluation import linear_eval  # pylint: disable=g-import-not-at-top
  # The linear evaluation's random trunk, exactly.
  variables = linear_eval.random_variables(trunk.model, trunk.eval_input,
                                           trunk.image_shape, seed)
  if trunk.variables.get('params') is not None:
    want = jax.tree.map(np.shape, trunk.variables['params'])
    got = jax.tree.map(np.shape, variables['params'])
    if want != got:
      raise ValueError(f'random_twin: the random trunk built for images {trunk.image_shape} '
                       'has other parameter shapes than the trained one')
  return dataclasses.replace(trunk, variables=variables, task='random_init', seed=int(seed),
                             step=None, bn_images=None, _device_variables=None, _fns={})


def _configs():
  """The repository's `configs` package (it is not installed with ssl_jax: it sits at the
  repository root). Imported as it is when importable (cwd or sys.path at the root), else
  from the root above this package (an editable install used from another directory).

  Raises:
    ModuleNotFoundError: neither, naming the directory to run from or add to sys.path.
  """
  import sys  # pylint: disable=g-import-not-at-top
  try:
    return importlib.import_module('configs')
  except ModuleNotFoundError as e:
    if e.name != 'configs':
      raise
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if not os.path.isfile(os.path.join(root, 'configs', '__init__.py')):
    raise ModuleNotFoundError(
        "the repository's configs package is not importable: run from the ssl_jax "
        'repository root or add it to sys.path', name='configs')
  sys.path.append(root)   # appended: a `configs` found earlier on the path still wins
  return importlib.import_module('configs')


# The standard CIFAR-10 class names (Krizhevsky 2009), for TFDS copies that store digits.
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                   'ship', 'truck')


def load_images(dataset: str = 'cifar10', split: str = 'test[:64]', *,
                image_size: Optional[int] = None, data_dir: Optional[str] = None):
  """Decoded images of a prepared TFDS split, as the training and evaluation read them.

  Args:
    dataset: a TFDS name (e.g. 'cifar10', 'imagenette64'), prepared in data_dir (TFDS
      downloads are off in this project's pipeline: prepare first, e.g.
      `tfds.builder('cifar10').download_and_prepare()` where there is internet).
    split: a TFDS split string ('test[:500]', 'train[45000:]').
    image_size: S: images resized to S x S (`decode|resize(S)`); None: the dataset's
      size in configs/common.py's DATASETS (required for other datasets).
    data_dir: the TFDS data directory (None: TFDS's default, $TFDS_DATA_DIR or
      ~/tensorflow_datasets).
  Returns:
    (images u8[N, S, S, 3], labels i32[N], class names: a list indexed by label).
  Raises:
    input_pipeline.datasets.DatasetError: the dataset or split is missing (naming the
      data dir); ValueError: an unknown dataset without image_size.
  """
  common = importlib.import_module(f'{_configs().__name__}.common')
  import input_pipeline  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  c = common.get_config()
  if dataset in common.DATASETS:
    c.data = common.data_config(dataset)
  elif image_size is None:
    raise ValueError(f'load_images: dataset {dataset!r} is not in configs/common.py DATASETS '
                     f'({sorted(common.DATASETS)}); give image_size')
  else:
    c.data.name = dataset
  c.data.test_split = split
  if data_dir is not None:
    c.data.data_dir = data_dir
  size = int(image_size or c.data.image_size)
  c.data.image_size = size
  images, labels = input_pipeline.load_arrays(c, 'test', pp=f'decode|resize({size})')
  names = list(tfds.builder(dataset, data_dir=data_dir).info.features['label'].names)
  if dataset == 'cifar10' and names == [str(i) for i in range(10)]:
    names = list(CIFAR10_CLASSES)
  return images, labels.astype(np.int32), names


def run(config, workdir: str, *, linear_eval: Optional[dict] = None):
  """A job in one call: what `python -m ssl_jax.main --config ... --workdir ...` does.

  Pretext configs: `train.build(config, workdir)` then `train.train_loop` (checkpoints,
  TensorBoard scalars read back by `viz.read_scalars`, held-out evaluations; an
  existing workdir resumes), then, with config.run_linear_eval, the linear
  evaluation of configs/linear_eval.py preset config.linear_eval_preset into
  workdir/linear_eval (its config built and checked before training starts).
  Linear-evaluation configs (config.job == 'linear_eval'): that evaluation alone.

  Args:
    config: a job ConfigDict (configs.get(...)).
    workdir: the output directory.
    linear_eval: overrides of the linear evaluation's config (as configs.get takes:
      {'eval.max_train_examples': 2000, ...}; the command line's
      --config.linear_eval.*).
  Returns:
    dict: the training loop's result (step, val, train_history, preempted, state) and
    `linear_eval`: the results dict (results.json) or None.
  Raises:
    config_lib.ConfigError (one line) for a bad value before anything compiles;
    train.NonFiniteLossError when training diverges.
  """
  from ssl_jax import config_lib  # pylint: disable=g-import-not-at-top
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  from ssl_jax.evaluation import linear_eval as le  # pylint: disable=g-import-not-at-top
  if config.get('job', 'pretext') == 'linear_eval':
    if linear_eval:
      raise ValueError('run: linear_eval overrides are for pretext configs; apply them to '
                       'the linear-evaluation config itself (configs.get(..., **overrides))')
    return {'linear_eval': le.run(config, workdir)}
  le_config = None
  if config.run_linear_eval:
    configs = _configs()
    with config_lib.startup_errors():
      le_config = configs.get('linear_eval', config.linear_eval_preset, pretrained=workdir,
                              **(linear_eval or {}))
      le.validate(le_config)
  elif linear_eval:
    raise ValueError('run: linear_eval overrides given but config.run_linear_eval is False')
  out = train.train_loop(train.build(config, workdir))
  out['linear_eval'] = None
  if le_config is not None and not out.get('preempted'):
    out['linear_eval'] = le.run(le_config, os.path.join(workdir, 'linear_eval'))
  return out
