# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,docs,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,accelerator,colab
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Pretext tasks: what each task's trunk sees
#
# Every pretext task of ssl_jax turns an unlabelled image into inputs for the trunk and
# targets for its loss. This notebook loads CIFAR-10 and Imagenette 64 px through TFDS and
# draws, for each task, exactly what its `pretext` function produces (the same jitted
# code the training step runs): rotation, jigsaw, relative patch location, exemplar,
# SimCLR and colorization. Then it shows how the problem changes with the number of
# jigsaw permutations |P| and with colorization's ab grid and soft-encoding K.
#
# **Runtime on CPU**: about 1.5 minutes (84 s measured on a busy 2-core machine; most of it
# compiles each task's preprocessing once). `FAST = True` (what the test suite runs): under
# a minute (43 s).
#
# Source of truth: `colabs/pretext_tasks.py` (jupytext percent format); the `.ipynb` is
# generated from it by `python colabs/build.py` and executed top to bottom by
# `tests/test_notebooks.py`.

# %% [markdown]
# ## Set-up
#
# In Colab (CPU, GPU or TPU runtime) the next cell clones this repository and installs it
# over Colab's own JAX, TensorFlow and TFDS (which match the runtime's accelerator), then
# works from the repository root (the `configs` package lives there). On your own machine,
# `pip install -e '.[viz]'` in the repository and start Jupyter there or in `colabs/`.

# %%
import os
import subprocess
import sys

REPO_URL = 'https://github.com/OWNER/ssl_jax'  # this repository's URL
IN_COLAB = 'google.colab' in sys.modules
if IN_COLAB and not os.path.isdir('/content/ssl_jax'):
  subprocess.run(['git', 'clone', '--depth=1', REPO_URL, '/content/ssl_jax'], check=True)
  # --no-deps: keep Colab's JAX (its CPU/GPU/TPU build), TensorFlow and TFDS; then the
  # few packages Colab lacks.
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '-e',
                  '/content/ssl_jax'], check=True)
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', 'ml-collections>=0.1.1,<1.2',
                  'clu>=0.0.12,<0.1', 'orbax-checkpoint>=0.11,<0.13'], check=True)
ROOT = '/content/ssl_jax' if IN_COLAB else next(
    (p for p in (os.getcwd(), os.path.dirname(os.getcwd()))
     if os.path.isfile(os.path.join(p, 'configs', '__init__.py'))), None)
if ROOT is None:
  raise RuntimeError('run this notebook from the ssl_jax repository or its colabs/ folder')
os.chdir(ROOT)
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# %% tags=["parameters"]
FAST = False   # True: fewer images and settings (the test suite runs every notebook so)

# %%
# %matplotlib inline
import jax
import numpy as np

import configs
import ssl_jax
from ssl_jax import tasks
from ssl_jax import viz
from ssl_jax.tasks import color
from ssl_jax.tasks import colorization as colorization_lib
from ssl_jax.tasks import permutations

print('JAX', jax.__version__, 'on', jax.default_backend(), jax.devices()[0].device_kind)

# %% [markdown]
# ## Data through TFDS
#
# The pipeline reads prepared TFDS datasets and never downloads (runs must not depend on
# the network). **In Colab**, the next cell downloads and prepares CIFAR-10 once into TFDS's
# data directory (`~/tensorflow_datasets`; point `DATA_DIR` at a mounted Drive folder to
# keep it between sessions): that is the original CIFAR-10. **On this project's machines**,
# `python ../shared/data/prepare_tfds.py` prepares `cifar10` (a JPEG q75 re-encoding: say
# "CIFAR-10 (JPEG q75)" next to numbers) and `imagenette64` (Imagenette at 64 px, squashed)
# offline. Imagenette 64 px is this project's own TFDS dataset; in Colab the cell uses
# TFDS's `imagenette/160px-v2` resized to 64 x 64 instead.

# %%
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

DATA_DIR = None   # None: TFDS's default data directory
if IN_COLAB:
  tfds.builder('cifar10', data_dir=DATA_DIR).download_and_prepare()
IMAGENETTE = 'imagenette64'
if not tfds.builder(IMAGENETTE, data_dir=DATA_DIR).is_prepared() and IN_COLAB:
  IMAGENETTE = 'imagenette/160px-v2'
  tfds.builder(IMAGENETTE, data_dir=DATA_DIR).download_and_prepare()

N = 8 if FAST else 16
images, labels, class_names = ssl_jax.load_images('cifar10', f'test[:{N}]', data_dir=DATA_DIR)
print('CIFAR-10 test images', images.shape, images.dtype)
viz.image_grid(images, [class_names[y] for y in labels], ncols=8, title='CIFAR-10')

# %%
nette, nette_labels, nette_names = ssl_jax.load_images(
    IMAGENETTE, f'validation[:{N}]', image_size=64, data_dir=DATA_DIR)
print('Imagenette 64 px', nette.shape)
viz.image_grid(nette, [nette_names[y].split(' ', 1)[-1] for y in nette_labels], ncols=8,
               title='Imagenette, 64 px')

# %% [markdown]
# ## What every task sees
#
# `configs.get(task, preset)` is the config the training command line uses
# (`--config configs/<task>.py:<preset>`); `tasks.get_task` builds the task from it;
# `viz.pretext_figure` runs the task's preprocessing string and `pretext` on the images and
# draws the trunk's inputs with their targets. The `cifar10` presets are the accelerator
# runs' geometry at 32 px.

# %% tags=["figure"] docs="pretext_rotation"
def task_of(name, preset='cifar10', **overrides):
  config = configs.get(name, preset, **overrides)
  return tasks.get_task(config.task, config), config


rotation, rotation_config = task_of('rotation')
viz.pretext_figure(rotation, rotation_config, images, max_images=2 if FAST else 4)

# %% [markdown]
# Rotation (Gidaris et al. 2018; the revisiting study's headline task): the four rotations
# of every image in the batch, label = the rotation. Exact `rot90`, no interpolation.

# %% tags=["figure"] docs="pretext_jigsaw"
jigsaw, jigsaw_config = task_of('jigsaw')
viz.pretext_figure(jigsaw, jigsaw_config, images, max_images=2 if FAST else 3)

# %% [markdown]
# Jigsaw (Noroozi and Favaro 2016): 9 tiles of a 3 x 3 grid, randomly placed inside their
# cells (jitter), each standardised on its own, presented in one of |P| orders; the label
# is the order's index. The study trains with 8 orders per batch out of the 100 of
# Noroozi's table.

# %% tags=["figure"]
rpl, rpl_config = task_of('relative_patch_location')
viz.pretext_figure(rpl, rpl_config, images, max_images=2 if FAST else 3,
                   max_pairs=4 if FAST else 8)

# %% [markdown]
# Relative patch location (Doersch et al. 2015): the centre tile and one of its 8
# neighbours; the label is the neighbour's position.

# %% tags=["figure"]
exemplar, exemplar_config = task_of('exemplar')
viz.pretext_figure(exemplar, exemplar_config, images, max_images=2 if FAST else 3,
                   max_views=4 if FAST else 8)

# %% [markdown]
# Exemplar (Dosovitskiy et al. 2014, as the study trains it): 8 augmented copies of each
# image (grey decided once per image), a triplet loss pulls copies of one image together.

# %% tags=["figure"]
simclr, simclr_config = task_of('simclr')
viz.pretext_figure(simclr, simclr_config, images, max_images=2 if FAST else 4)

# %% [markdown]
# SimCLR (Chen et al. 2020): two strongly augmented views per image; every other view in
# the global batch is a negative of the NT-Xent loss.

# %% tags=["figure"] docs="pretext_colorization"
colorization, colorization_config = task_of('colorization', 'smoke' if FAST else 'cifar10')
viz.pretext_figure(colorization, colorization_config, images, max_images=2 if FAST else 4)

# %% [markdown]
# Colorization (Zhang et al. 2016, at Goyal et al.'s scale): the trunk sees only the
# lightness L; the target is the image's ab colour, soft-encoded over the K nearest of the
# ab bins at the head's resolution (here the bins are derived from the training split and
# cached on disk). Grey images get weight 0.
#
# The same tasks on Imagenette at 64 px (the `imagenette64` presets):

# %% tags=["figure"]
for name in ('rotation',) if FAST else ('rotation', 'jigsaw'):
  task, config = task_of(name, 'imagenette64')
  display(viz.pretext_figure(task, config, nette, max_images=2))

# %% [markdown]
# ## Jigsaw: the number of permutations |P|
#
# |P| is the number of classes (chance = 1 / |P|). What makes the problem hard is how close
# the closest classes are: the Hamming distance (tiles in different places, of 9) between
# two permutations. Noroozi's greedy `max_avg` selection maximises the *mean* distance and
# still leaves pairs one swap apart (distance 2) at every size; `max_min` maximises the
# *minimum*. Sets are generated once and cached (`tasks.jigsaw.method`,
# `tasks.jigsaw.num_permutations`).

# %%
sizes = (10, 100) if FAST else (10, 100, 1000)
print(f"{'|P|':>6} {'method':>8} {'chance':>8} {'mean d':>7} {'min d':>6} {'pairs at min':>12}")
for size in sizes:
  for method in ('max_avg', 'max_min'):
    s = permutations.hamming_stats(permutations.get_permutations(size, method))
    print(f"{size:6d} {method:>8} {100 / size:7.2f}% {s['mean']:7.2f} {s['min']:6d} "
          f"{s['num_min_pairs']:12d}")
s = permutations.hamming_stats(permutations.get_permutations(100, 'file'))
print(f"{100:6d} {'study':>8} {1:7.2f}% {s['mean']:7.2f} {s['min']:6d} {s['num_min_pairs']:12d}"
      '   (Noroozi\'s table, the study\'s)')

# %% tags=["figure"]
for size in sizes[-1:] if FAST else sizes:
  task, config = task_of('jigsaw', tasks={'jigsaw': {'num_permutations': size}})
  display(viz.jigsaw_figure(task, config, images, max_images=1, max_perms=4))

# %% [markdown]
# ## Colorization: the ab grid and K
#
# The ab plane is cut into square cells of side `grid`; the classes are the cells that hold
# training pixels (Goyal et al.'s rule, `bin_rule='data'`), so a finer grid means more
# classes (Goyal et al.'s complexity axis, the counterpart of |P|). Zhang et al.'s 313 bins
# are `bin_rule='in_hull'` at grid 10. The soft encoding spreads each pixel's target over
# its K nearest bins (Gaussian weights, sigma 5): K = 1 is a hard assignment.

# %%
grids = (10, 20) if FAST else (5, 10, 15, 20)
print(f"{'grid':>5} {'data bins':>9} {'in gamut':>9} {'in hull':>8}")
grid_tasks = {}
for grid in grids:
  task, config = task_of('colorization', 'smoke' if FAST else 'cifar10',
                         tasks={'colorization': {'grid': grid}})
  grid_tasks[grid] = (task, config)
  num = colorization_lib.bins_of(task).num_bins    # derived from the training split, cached
  print(f'{grid:5d} {num:9d} {len(color.rule_cells("in_gamut", grid)):9d} '
        f'{len(color.rule_cells("in_hull", grid)):8d}')

# %% tags=["figure"] docs="colorization_grid"
for grid in (grids[-1],) if FAST else (grids[0], grids[-1]):
  task, config = grid_tasks[grid]
  fig = viz.colorization_figure(task, config, images, max_images=2, train=False)
  fig.suptitle(f'ab grid {grid}: {colorization_lib.bins_of(task).num_bins} bins', fontsize=9)
  display(fig)

# %% tags=["figure"]
for k in (1,) if FAST else (1, 5, 10):
  task, config = task_of('colorization', 'smoke' if FAST else 'cifar10',
                         tasks={'colorization': {'k': k}})
  fig = viz.colorization_figure(task, config, images, max_images=2, train=False)
  fig.suptitle(f'K = {k} nearest bins', fontsize=9)
  display(fig)

# %% [markdown]
# With K = 1 the decoded target is the centre of one bin per pixel (visible steps); with
# more neighbours the expectation of the soft target varies smoothly. Goyal et al. (2019)
# scale both tasks along these axes, |P| for jigsaw and the number of bins (and K) for
# colorization, as the problem's complexity; `configs/jigsaw.py` and
# `configs/colorization.py` expose each of them as one setting.
