"""ssl_jax.viz: figures have the panels, bars, points and lines of their inputs; the maths
helpers match references (brute force, scikit-learn, skimage, hand-made event files)."""
import importlib
import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip('matplotlib')

from matplotlib import colors as mcolors  # pylint: disable=g-import-not-at-top
from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

from ssl_jax import tasks  # pylint: disable=g-import-not-at-top
from ssl_jax import viz  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke(name, **data):
  c = importlib.import_module(f'configs.{name}').get_config('smoke')
  for k, v in data.items():
    c.data[k] = v
  return c, tasks.get_task(c.task, c)


def pictures(n, size, seed=0):
  """Structured u8[n, size, size, 3] images (gradients, a block, noise): no flat patches."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  out = []
  for i in range(n):
    img = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * (xx + yy) + i)], -1)
    img[size // 4:size // 2, size // 5:size // 2] = [1.0, 0.2 * i, 0.0]
    out.append(img + rng.uniform(-0.05, 0.05, img.shape))
  return (np.clip(np.stack(out), 0, 1) * 255).astype(np.uint8)


def shown(fig):
  """The arrays drawn, one per image axes, in panel order (row-major)."""
  return [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]


def minmax(x):
  x = np.asarray(x, np.float64)
  return (x - x.min()) / (x.max() - x.min())


# ----------------------------------------------------------------------------- helpers


def test_display_range_against_hand_worked_values():
  u8 = np.array([[[[0, 128, 255]]]], np.uint8)
  np.testing.assert_allclose(viz.display_range(u8, 'uint8'), [[[[0, 128 / 255, 1]]]])
  np.testing.assert_allclose(viz.display_range(np.array([-1.0, 0.0, 1.0, 3.0]),
                                               'minus_one_one'), [0, 0.5, 1, 1])
  x = np.stack([np.arange(12.0).reshape(2, 2, 3) - 5, np.full((2, 2, 3), 7.0)])
  out = viz.display_range(x, 'minmax')
  np.testing.assert_allclose(out[0], np.arange(12.0).reshape(2, 2, 3) / 11)
  np.testing.assert_allclose(out[1], 0.5)      # a constant image
  with pytest.raises(ValueError, match='allowed'):
    viz.display_range(x, 'zscore')


def test_tile_mosaic_puts_tile_t_at_its_row_and_column():
  tiles = [np.full((2, 3, 1), t / 10) for t in range(5)]
  m = viz.tile_mosaic(tiles, 2, 3, gap=1, fill=0.9, background=1.0)
  assert m.shape == (2 * 3 - 1, 3 * 4 - 1, 1)
  for t in range(6):
    r, c = divmod(t, 3)
    np.testing.assert_allclose(m[r * 3:r * 3 + 2, c * 4:c * 4 + 3], 0.9 if t == 5 else t / 10)
  assert np.all(m[2] == 1.0) and np.all(m[:, 3] == 1.0)          # the gaps
  with pytest.raises(ValueError, match='do not fit'):
    viz.tile_mosaic(tiles, 2, 2)


def test_image_grid_and_missing_matplotlib(monkeypatch):
  fig = viz.image_grid(pictures(5, 8), [str(i) for i in range(5)], ncols=3)
  assert isinstance(fig, Figure) and len(shown(fig)) == 5 and len(fig.axes) == 5
  np.testing.assert_allclose(shown(fig)[4], pictures(5, 8)[4] / 255, atol=1e-6)
  monkeypatch.setitem(sys.modules, 'matplotlib', None)
  with pytest.raises(ImportError, match=r"pip install 'ssl_jax\[viz\]'"):
    viz.image_grid(pictures(1, 8))


# ----------------------------------------------------------------------------- pretext


def test_rotation_figure_shows_the_four_rot90_copies_with_their_labels():
  c, task = smoke('rotation')
  images = pictures(2, 16)      # = max_images below: one compile serves both calls
  out = viz.run_pretext(task, c, images, train=False)
  pp = out['images']
  for k in range(4):   # the trunk input of copy k is np.rot90(image, k) in [-1, 1]
    np.testing.assert_allclose(out['inputs']['image'][:, k],
                               np.rot90(pp, k, axes=(1, 2)) / 127.5 - 1, atol=1e-6)
  fig = viz.pretext_figure(task, c, images, train=False, max_images=2)
  arrays = shown(fig)
  assert isinstance(fig, Figure) and len(arrays) == 2 * 5
  titles = [ax.get_title() for ax in fig.axes]
  for b in range(2):
    np.testing.assert_allclose(arrays[5 * b], pp[b] / 255, atol=1e-6)
    for k in range(4):
      np.testing.assert_allclose(arrays[5 * b + 1 + k], np.rot90(pp[b], k) / 255, atol=1e-6)
      assert titles[5 * b + 1 + k].startswith(f'label {k}: {90 * k}')


def _crop(pp, g, cell, offset, p):
  r, c = divmod(g, 3)
  return pp[r * cell + offset:r * cell + offset + p, c * cell + offset:c * cell + offset + p]


def _slot(mosaic, j, p, gap=1):
  r, c = divmod(j, 3)
  return mosaic[r * (p + gap):r * (p + gap) + p, c * (p + gap):c * (p + gap) + p]


def test_jigsaw_figure_tiles_are_the_grid_cells_in_permuted_order():
  from ssl_jax.tasks import jigsaw  # pylint: disable=g-import-not-at-top
  c, task = smoke('jigsaw')
  s = c.tasks.jigsaw
  images = pictures(2, 48)
  fig = viz.jigsaw_figure(task, c, images, train=False, max_perms=3)
  pp = viz.run_pretext(task, c, images, train=False)['images']
  table, evals = task.head.perms.array, jigsaw.eval_indices(s)
  arrays = shown(fig)
  assert len(arrays) == 2 * (2 + 3)
  cell, p, off = 48 // 3, s.patch_size, s.jitter // 2      # central patches at evaluation
  for b in range(2):
    for j in range(9):   # grid order, then permutation evals[c]: slot j = tile P[k][j]
      np.testing.assert_allclose(_slot(arrays[5 * b + 1], j, p),
                                 minmax(_crop(pp[b], j, cell, off, p)), atol=1e-5)
      for col in range(3):
        k = evals[col]
        np.testing.assert_allclose(_slot(arrays[5 * b + 2 + col], j, p),
                                   minmax(_crop(pp[b], table[k][j], cell, off, p)), atol=1e-5)
    assert fig.axes[5 * b + 2].get_title().startswith(f'label {evals[0]}')


def test_relative_patch_location_figure_pairs_centre_and_neighbour():
  from ssl_jax.tasks import relative_patch_location as rpl  # pylint: disable=g-import-not-at-top
  c, task = smoke('relative_patch_location')
  s = c.tasks.relative_patch_location
  images = pictures(2, 48, seed=1)
  fig = viz.pretext_figure(task, c, images, train=False)
  pp = viz.run_pretext(task, c, images, train=False)['images']
  arrays, p = shown(fig), s.patch_size
  assert len(arrays) == 2 * (2 + 8)
  for b in range(2):
    for k in range(8):
      mosaic = arrays[10 * b + 2 + k]
      for j in range(9):
        if j in (rpl.NEIGHBOURS[k], rpl.CENTRE):
          np.testing.assert_allclose(_slot(mosaic, j, p),
                                     minmax(_crop(pp[b], j, 16, s.jitter // 2, p)), atol=1e-5)
        else:
          np.testing.assert_allclose(_slot(mosaic, j, p), 0.85)
      assert fig.axes[10 * b + 2 + k].get_title() == (
          f'label {k}: {viz.POSITIONS[rpl.NEIGHBOURS[k]]}')


def test_exemplar_figure_shows_the_copies_of_the_preprocessing():
  c, task = smoke('exemplar')
  images = pictures(2, 16)
  out = viz.run_pretext(task, c, images, seed=3)
  views = out['images']                              # u8[B, 4, 16, 16, 3] from views(4)
  assert views.shape == (2, c.tasks.exemplar.num_copies, 16, 16, 3)
  fig = viz.exemplar_figure(task, c, np.concatenate([images, images]), seed=3, max_images=2)
  arrays = shown(fig)
  assert len(arrays) == 2 * 5
  for b in range(2):
    np.testing.assert_allclose(arrays[5 * b], images[b] / 255, atol=1e-6)
    for v in range(4):   # standardisation is affine per copy: min-max undoes it
      np.testing.assert_allclose(arrays[5 * b + 1 + v], minmax(views[b, v]), atol=1e-5)
      assert fig.axes[5 * b + 1 + v].get_title() == f'copy {v}, label {b}'


def test_simclr_figure_shows_the_two_views():
  c, task = smoke('simclr')
  images = pictures(3, 16)
  out = viz.run_pretext(task, c, images, seed=4)
  fig = viz.pretext_figure(task, c, images, seed=4)
  arrays = shown(fig)
  assert len(arrays) == 3 * 3
  for b in range(3):
    for v in range(2):
      np.testing.assert_allclose(arrays[3 * b + 1 + v], out['images'][b, v] / 255, atol=1e-6)
  assert not np.array_equal(out['images'][:, 0], out['images'][:, 1])   # two different views


@pytest.mark.filterwarnings('ignore:Conversion from CIE-LAB')   # skimage's, on the reference
def test_colorization_figure_against_skimage():
  skcolor = pytest.importorskip('skimage.color')
  from ssl_jax.tasks import colorization  # pylint: disable=g-import-not-at-top
  c, _ = smoke('colorization', source='synthetic', synthetic_examples=64)
  c.tasks.colorization.k = 1                 # hard targets: decoded ab = a bin centre
  task = tasks.get_task(c.task, c)
  images = pictures(2, 16, seed=2)
  out = viz.run_pretext(task, c, images, train=False)
  pp = out['images']
  _, stride = colorization.endpoint_and_stride(c)
  centers = colorization.bins_of(task).centers
  h = out['targets']['soft'].shape[1]
  q = len(centers)
  logits = np.zeros((2, h, h, q), np.float32)
  logits[..., 3] = 40.0                      # every pixel predicts bin 3
  fig = viz.pretext_figure(task, c, images, train=False, logits=logits)
  arrays = shown(fig)
  assert len(arrays) == 2 * 5
  lab = skcolor.rgb2lab(pp / 255.0)
  for b in range(2):
    np.testing.assert_allclose(arrays[5 * b], pp[b] / 255, atol=1e-6)
    np.testing.assert_allclose(arrays[5 * b + 1], lab[b, ..., 0] / 100, atol=1e-3)
    for i in range(h):     # head pixel (i, j) sits on input pixel (s*i, s*j)
      for j in range(h):
        y, x = stride * i, stride * j
        nearest = np.argmin(((centers - lab[b, y, x, 1:]) ** 2).sum(-1))
        ref = skcolor.lab2rgb(np.r_[lab[b, y, x, 0], centers[nearest]][None, None])[0, 0]
        np.testing.assert_allclose(arrays[5 * b + 2][y, x], ref, atol=3e-3)
        ref50 = skcolor.lab2rgb(np.r_[50.0, centers[nearest]][None, None])[0, 0]
        np.testing.assert_allclose(arrays[5 * b + 3][y, x], ref50, atol=3e-3)
    pred = skcolor.lab2rgb(np.concatenate(
        [lab[b, ..., :1], np.broadcast_to(centers[3], (16, 16, 2))], -1))
    np.testing.assert_allclose(arrays[5 * b + 4], pred, atol=3e-3)
  with pytest.raises(ValueError, match='logits'):
    viz.colorization_figure(task, c, images, train=False, logits=logits[:, :1])


def test_dispatcher_falls_back_to_inputs_and_unwraps_task_sets():
  c, task = smoke('supervised')
  images = pictures(2, 16)
  fig = viz.pretext_figure(tasks.as_task_set(task, c), c, images, labels=[7, 3], train=False)
  assert len(shown(fig)) == 2 * 2
  assert [fig.axes[i].get_title() for i in (1, 3)] == ['label 7', 'label 3']
  pp = viz.run_pretext(task, c, images, train=False)['images']
  np.testing.assert_allclose(shown(fig)[1], pp[0] / 255, atol=1e-6)
  pair = tasks.TaskSet(name='pair', members=(tasks.Member('a', task, c),
                                             tasks.Member('b', task, c)))
  with pytest.raises(ValueError, match='members'):
    viz.pretext_figure(pair, c, images)
  with pytest.raises(ValueError, match='uint8'):
    viz.run_pretext(task, c, images / 255.0)


# ----------------------------------------------------------------------------- accuracies


def _bars(container):
  return ([b.get_x() + b.get_width() / 2 for b in container],
          [b.get_height() for b in container])


def test_accuracy_bars_heights_are_the_accuracies():
  series = {'rotation': {'a': 0.5, 'b': 0.25, 'c': 0.75},
            'random': {'a': 0.1, 'c': 0.2, 'b': float('nan')}}
  fig = viz.accuracy_bars(series, ['a', 'b', 'c'])
  ax, = fig.axes
  assert len(ax.containers) == 2
  xs, hs = _bars(ax.containers[0])
  np.testing.assert_allclose(hs, [50, 25, 75])
  np.testing.assert_allclose(xs, [-0.2, 0.8, 1.8])
  xs, hs = _bars(ax.containers[1])
  np.testing.assert_allclose(hs, [10, 20])               # NaN draws no bar
  np.testing.assert_allclose(xs, [0.2, 2.2])
  assert [t.get_text() for t in ax.get_xticklabels()] == ['a', 'b', 'c']
  with pytest.raises(ValueError):
    viz.accuracy_bars({})


def _results(task, top1, base=None, model='tiny_cnn'):
  """A results.json-shaped dict (keys as linear_eval writes them, sorted dims)."""
  rows = {}
  for name, v in top1.items():
    rows[name] = {'top1': v, 'top5': 1.0, 'val_top1': v / 2, 'epochs': 2, 'new_key': [1]}
    if base:
      rows[name].update(baseline_top1=base[name], gain=v - base[name])
  dims = {n: 8 for n in sorted(top1)}
  return {'pretext_task': task, 'model': {'name': model, 'width': 1}, 'dataset': 'cifar10',
          'dims': dims, 'linear': rows, 'mlp': {}, 'knn': {}}


def test_linear_accuracies_adapter_is_tolerant_and_orders_by_the_trunk():
  from ssl_jax import models  # pylint: disable=g-import-not-at-top
  order = list(models.trunk_endpoints('tiny_cnn'))
  top1 = {n: 0.1 * (i + 1) for i, n in enumerate(order)}
  base = {n: 0.05 for n in order}
  res = _results('rotation', top1, base)
  res['linear']['broken'] = 'not a row'
  res['linear'][order[0]]['top1'] = None                 # a missing number is skipped
  series, got = viz.linear_accuracies(res)
  assert got == order                                    # trunk order, not sorted dims
  assert list(series) == ['rotation', 'random init']
  assert series['rotation'] == {n: top1[n] for n in order[1:]}
  assert series['random init'] == base
  series, got = viz.linear_accuracies(res, metric='val_top1', baseline=False)
  assert list(series) == ['rotation'] and series['rotation'][order[1]] == top1[order[1]] / 2
  # An unknown model: results['dims'] order; the baseline section wins over row keys.
  res = _results('jigsaw', {'z': 0.3, 'y': 0.2}, model='no_such_model')
  res['baseline'] = {'linear': {'z': {'top1': 0.01}}}
  series, got = viz.linear_accuracies(res)
  assert got == ['y', 'z'] and series['random init'] == {'z': 0.01}


def test_layer_and_comparison_figures_draw_results_json():
  from ssl_jax import models  # pylint: disable=g-import-not-at-top
  order = list(models.trunk_endpoints('tiny_cnn'))
  a = _results('rotation', {n: 0.2 + 0.1 * i for i, n in enumerate(order)},
               {n: 0.1 for n in order})
  b = _results('jigsaw', {n: 0.3 for n in order[:2]})
  fig = viz.layer_accuracy_figure(a)
  ax, = fig.axes
  assert len(ax.containers) == 2
  np.testing.assert_allclose(_bars(ax.containers[0])[1],
                             [100 * a['linear'][n]['top1'] for n in order])
  np.testing.assert_allclose(_bars(ax.containers[1])[1], [10.0] * len(order))
  fig = viz.compare_layer_accuracy_figure({'rot': a, 'jig': b, 'random': a}, baseline=False)
  ax, = fig.axes
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ['rot', 'jig', 'random']
  assert len(_bars(ax.containers[1])[1]) == 2
  fig = viz.compare_layer_accuracy_figure({'rot': a, 'jig': b}, baseline=True)
  assert len(fig.axes[0].containers) == 3                # jig has no baseline


# ----------------------------------------------------------------------------- retrieval


def brute_topk(q, g, k, exclude=None):
  out_i, out_s = [], []
  for a in range(len(q)):
    scores = []
    for j in range(len(g)):
      if exclude is not None and exclude[a] == j:
        continue
      na, nb = np.sqrt(sum(x * x for x in q[a])), np.sqrt(sum(x * x for x in g[j]))
      dot = sum(x * y for x, y in zip(q[a], g[j]))
      scores.append((-(dot / (na * nb) if na > 0 and nb > 0 else 0.0), j))
    scores.sort()
    out_i.append([j for _, j in scores[:k]])
    out_s.append([-s for s, _ in scores[:k]])
  return np.array(out_i), np.array(out_s)


def test_cosine_topk_matches_brute_force():
  rng = np.random.default_rng(0)
  q, g = rng.normal(size=(7, 5)), rng.normal(size=(23, 5))
  g[4] = 0.0                                           # a zero row: similarity 0
  for k, exclude in ((1, None), (6, None), (22, np.array([3, -1, 0, 22, 5, 5, -1]))):
    idx, sims = viz.cosine_topk(q.astype(np.float32), g.astype(np.float32), k,
                                exclude=exclude)
    ref_i, ref_s = brute_topk(q, g, k, exclude)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(sims, ref_s, atol=1e-6)
    if exclude is not None:
      assert all(e not in row for e, row in zip(exclude, idx))
  ties = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
  np.testing.assert_array_equal(viz.cosine_topk(ties[:1], ties, 3)[0], [[0, 1, 3]])
  for bad in (0, 24, 2.0):
    with pytest.raises(ValueError, match='k='):
      viz.cosine_topk(q, g, bad)
  with pytest.raises(ValueError, match='exclude'):
    viz.cosine_topk(q, g, 2, exclude=np.full(7, 23))
  with pytest.raises(ValueError, match=r'\[Q, D\]'):
    viz.cosine_topk(q, g[:, :4], 2)


def test_retrieval_figure_marks_correct_neighbours():
  rng = np.random.default_rng(1)
  gallery = pictures(12, 8)
  gf = rng.normal(size=(12, 6))
  labels = np.arange(12) % 3
  qf = gf[:3] + 0.01 * rng.normal(size=(3, 6))
  fig = viz.retrieval_figure(gallery[:3], gallery, qf, gf, k=4, query_labels=labels[:3],
                             gallery_labels=labels, exclude=np.arange(3),
                             class_names=['cat', 'dog', 'owl'])
  arrays = shown(fig)
  assert len(arrays) == 3 * 5 and len(fig.axes) == 15
  ref_i, ref_s = brute_topk(qf, gf, 4, np.arange(3))
  for a in range(3):
    np.testing.assert_allclose(arrays[5 * a], gallery[a] / 255, atol=1e-6)
    for j in range(4):
      ax, g = fig.axes[5 * a + 1 + j], ref_i[a, j]
      np.testing.assert_allclose(arrays[5 * a + 1 + j], gallery[g] / 255, atol=1e-6)
      want = viz.CORRECT if labels[g] == labels[a] else viz.WRONG
      assert mcolors.to_hex(ax.spines['left'].get_edgecolor()) == want
      assert ax.get_title().startswith(f'{ref_s[a, j]:.3f}')
  with pytest.raises(ValueError, match='both'):
    viz.retrieval_figure(gallery[:3], gallery, qf, gf, query_labels=labels[:3])


# ----------------------------------------------------------------------------- projections


def test_pca_2d_matches_sklearn_up_to_sign():
  decomposition = pytest.importorskip('sklearn.decomposition')
  rng = np.random.default_rng(2)
  x = rng.normal(size=(40, 6)) @ np.diag([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) + 3.0
  ours = viz.pca_2d(x.astype(np.float32), n_components=3)
  ref = decomposition.PCA(n_components=3).fit_transform(x)
  for c in range(3):
    sign = np.sign(ours[:, c] @ ref[:, c])
    np.testing.assert_allclose(ours[:, c], sign * ref[:, c], atol=1e-4)
  with pytest.raises(ValueError, match='n_components'):
    viz.pca_2d(x, n_components=7)


def test_projection_figure_colours_each_class():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(30, 4))
  labels = np.array([2, 0, 1] * 10)
  fig = viz.projection_figure(x, labels, class_names=['a', 'b', 'c'])
  ax, = fig.axes
  assert len(ax.collections) == 3
  xy = viz.pca_2d(x)
  for coll, c in zip(ax.collections, (0, 1, 2)):
    np.testing.assert_allclose(coll.get_offsets(), xy[labels == c])
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ['a', 'b', 'c']
  threadpoolctl = pytest.importorskip('threadpoolctl')   # scikit-learn's dependency
  with threadpoolctl.threadpool_limits(1):   # OpenMP threads on a shared CPU: 100x slower
    fig = viz.projection_figure(x, labels, method='tsne', perplexity=5.0)
  assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 30
  with pytest.raises(ValueError, match='allowed'):
    viz.projection_figure(x, method='umap')


# ----------------------------------------------------------------------------- event files


def _write_events(path, events):
  """Writes Event protos as TFRecords by hand (the reader's independent reference)."""
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  with open(path, 'wb') as f:
    for event in [event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2')] + events:
      data = event.SerializeToString()
      head = struct.pack('<Q', len(data))
      crc = viz._masked_crc32c(head)  # pylint: disable=protected-access
      f.write(head + struct.pack('<I', crc) + data + b'\0\0\0\0')   # data CRC: unchecked


def _event(step, **values):
  from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  vals = []
  for tag, v in values.items():
    if isinstance(v, float):
      vals.append(summary_pb2.Summary.Value(tag=tag, simple_value=v))
    else:   # a TF2 tensor summary (clu's scalars are 0-d float tensors)
      vals.append(summary_pb2.Summary.Value(tag=tag, tensor=tensor_util.make_tensor_proto(v)))
  return event_pb2.Event(step=step, wall_time=time.time(), summary=summary_pb2.Summary(value=vals))


def test_masked_crc32c_known_values():
  # CRC-32C check value (RFC 3720 B.4: 32 bytes of zeros -> 0x8A9136AA), masked as TFRecord.
  crc = 0x8A9136AA
  masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  assert viz._masked_crc32c(bytes(32)) == masked  # pylint: disable=protected-access


def test_read_scalars_merges_restarts_and_skips_non_scalars(tmp_path):
  run = tmp_path / 'run'
  (run / 'eval').mkdir(parents=True)
  _write_events(run / 'events.out.tfevents.1000.host.1.v2',
                [_event(s, train_loss=float(10 - s)) for s in range(5)] +
                [_event(2, val_accuracy=np.float32(0.25), hist=np.ones((3, 3), np.float32),
                        text=np.array(b'hello', object)),
                 _event(4, val_accuracy=np.float64(0.5))])
  # A resumed run re-logs steps 3 and 4: the later file wins.
  _write_events(run / 'events.out.tfevents.2000.host.1.v2',
                [_event(s, train_loss=float(100 + s)) for s in (3, 4, 5)])
  with open(run / 'events.out.tfevents.2000.host.1.v2', 'ab') as f:
    f.write(b'\x10\x00\x00')                            # a record still being written
  _write_events(run / 'eval' / 'events.out.tfevents.3000.host.1.v2',
                [_event(0, top1=np.float32(0.75))])
  got = viz.read_scalars(str(run))
  assert sorted(got) == ['train_loss', 'val_accuracy']
  np.testing.assert_array_equal(got['train_loss'][0], [0, 1, 2, 3, 4, 5])
  np.testing.assert_allclose(got['train_loss'][1], [10, 9, 8, 103, 104, 105])
  np.testing.assert_array_equal(got['val_accuracy'][0], [2, 4])
  np.testing.assert_allclose(got['val_accuracy'][1], [0.25, 0.5])
  assert sorted(viz.read_scalars(str(run), 'val_*')) == ['val_accuracy']
  deep = viz.read_scalars(str(run), recursive=True)
  assert sorted(deep) == ['eval/top1', 'train_loss', 'val_accuracy']
  np.testing.assert_allclose(deep['eval/top1'][1], [0.75])
  with open(run / 'events.out.tfevents.2000.host.1.v2', 'ab') as f:
    f.write(b'\xff' * 12 + b'junk')                     # a corrupt header mid-file
  with pytest.raises(ValueError, match='corrupt'):
    viz.read_scalars(str(run))
  with pytest.raises(FileNotFoundError):
    viz.read_scalars(str(tmp_path / 'empty'))


def test_read_scalars_of_clu_writer_without_tensorflow(tmp_path):
  metric_writers = pytest.importorskip('clu.metric_writers')
  writer = metric_writers.SummaryWriter(str(tmp_path))
  for step in (1, 2, 3):
    writer.write_scalars(step, {'train_loss': 1.0 / step, 'val_accuracy': 0.1 * step})
  writer.flush()
  writer.close()
  # Read in a fresh interpreter: neither TensorFlow nor matplotlib nor JAX is imported.
  code = ('import sys, json; from ssl_jax import viz; '
          f's = viz.read_scalars({str(tmp_path)!r}); '
          'print(json.dumps({k: [v[0].tolist(), v[1].tolist()] for k, v in s.items()})); '
          "assert not {'tensorflow', 'matplotlib', 'jax'} & set(sys.modules), "
          "sorted({'tensorflow', 'matplotlib', 'jax'} & set(sys.modules))")
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                        cwd=ROOT, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  import json  # pylint: disable=g-import-not-at-top
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got['train_loss'][0] == [1, 2, 3]
  np.testing.assert_allclose(got['train_loss'][1], [1.0, 0.5, 1 / 3], rtol=1e-6)
  np.testing.assert_allclose(got['val_accuracy'][1], [0.1, 0.2, 0.3], rtol=1e-6)


def test_training_curves_figure_plots_each_tag(tmp_path):
  _write_events(tmp_path / 'events.out.tfevents.1.host.1.v2',
                [_event(s, train_loss=float(5 - s), val_accuracy=0.1 * s, val_loss=1.0)
                 for s in range(4)])
  fig = viz.training_curves_figure(str(tmp_path), ('train_loss', 'val_*'))
  assert [ax.get_title() for ax in fig.axes] == ['train_loss', 'val_accuracy', 'val_loss']
  x, y = fig.axes[1].lines[0].get_data()
  np.testing.assert_array_equal(x, [0, 1, 2, 3])
  np.testing.assert_allclose(y, [0.0, 0.1, 0.2, 0.3], rtol=1e-6)
  scalars = {'a': (np.array([0, 5]), np.array([1.0, 2.0]))}
  assert len(viz.training_curves_figure(scalars, ['a']).axes) == 1
  with pytest.raises(ValueError, match="no scalar tag 'b'"):
    viz.training_curves_figure(scalars, ['a', 'b'])
