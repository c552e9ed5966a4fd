"""Multi-host through jax.distributed: two local CPU processes, 4 devices each, against
one process with 8 devices: the same training, exact held-out counts, the same linear
evaluation on every process, files written once."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run by each process (and, with process_count 1, by the test itself): train 3 steps on
# in-memory arrays (33 held-out images, eval batch 16: shares of 17 and 16 images need
# 3 and 2 local batches), then a linear evaluation of the result (test split of 101).
JOB = r'''
import json
import jax
import numpy as np
from configs import linear_eval as le_configs
from configs import rotation
from ssl_jax import train
from ssl_jax.evaluation import linear_eval


def arrays(n_train, n_val, n_test, seed):
  rng = np.random.RandomState(seed)
  make = lambda n: (rng.randint(0, 256, (n, 8, 8, 3)).astype(np.uint8),
                    rng.randint(0, 10, n).astype(np.int32))
  return {'train': make(n_train), 'val': make(n_val), 'test': make(n_test)}


def job(workdir, distributed=None):
  c = rotation.get_config('smoke')
  c.model.name = 'tiny_cnn'
  c.data.source = 'in_memory'
  c.data.image_size = 8
  c.input.pp_train, c.input.pp_eval = 'decode|flip_lr', 'decode'
  c.total_steps, c.checkpoint_every_steps, c.log_every_steps, c.eval_every_steps = 3, 3, 3, 3
  c.eval_batch_size = 16
  if distributed:
    c.distributed.update(distributed)
  data = arrays(64, 33, 101, 0)
  out = train.train_and_evaluate(c, workdir + '/pretext', arrays=data)
  # Live parameters: this process's copy of the replicated state.
  live = [np.asarray(x.addressable_data(0)).ravel() for x in
          jax.tree.leaves(out['state']['params'])]
  le = le_configs.get_config('smoke')
  le.pretrained = workdir + '/pretext'
  le.eval_batch_size = 16
  le.train.update(epochs=2, eval_every=1, decay_epochs=())
  le.mlp.enabled = le.lowshot.enabled = False
  res = linear_eval.run(le, workdir + '/eval', arrays=data)
  return {'devices': jax.device_count(), 'local': jax.local_device_count(),
          'step': out['step'], 'params': np.concatenate(live).tolist(), 'val': out['val'],
          'linear': {k: [v['top1'], v['count']] for k, v in res['linear'].items()},
          'knn': res['knn']['k20_t0.07']['pre_logits']['top1']}
'''

WORKER = JOB + r'''
import sys
jax.config.update('jax_num_cpu_devices', 4)
process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
result = job(workdir, dict(initialize=True, coordinator_address='127.0.0.1:' + port,
                           num_processes=2, process_id=process_id))
print('RESULT ' + json.dumps(result))
'''


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_train_and_evaluate_as_one(tmp_path):
  port = str(_free_port())
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  # conftest's compile flags, without its 8 devices (each process has 4).
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if 'device_count' not in f)
  workdir = str(tmp_path / 'multi')
  procs = [subprocess.Popen([sys.executable, '-c', WORKER, str(i), port, workdir],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for i in range(2)]
  results = []
  for p in procs:
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err.decode()[-4000:]
    line = [l for l in out.decode().splitlines() if l.startswith('RESULT ')][-1]
    results.append(json.loads(line[len('RESULT '):]))
  # The same job in this process, on its 8 devices.
  namespace = {}
  exec(JOB, namespace)  # pylint: disable=exec-used
  single = namespace['job'](str(tmp_path / 'single'))
  assert single['devices'] == 8

  a, b = results
  for r in results:
    assert r['devices'] == 8 and r['local'] == 4 and r['step'] == 3
    # Every held-out image counted once (the shares need 3 and 2 local batches).
    assert r['val']['num_examples'] == 33
    for name, (top1, count) in r['linear'].items():
      assert count == 101
  # The processes hold bitwise the same live parameters (identical all-reduces) ...
  assert a['params'] == b['params']
  # ... and the single-process run's, up to reduction-order noise.
  pa, ps = np.asarray(a['params']), np.asarray(single['params'])
  assert pa.shape == ps.shape and np.abs(pa - ps).max() < 1e-3 * max(np.abs(ps).max(), 1.0)
  for k in ('loss', 'accuracy', 'num_examples'):
    assert a['val'][k] == pytest.approx(single['val'][k], rel=1e-4)
  # Every process reports the whole split's linear evaluation, equal to one process's.
  assert a['linear'] == b['linear'] and a['knn'] == b['knn']
  for name, (top1, count) in single['linear'].items():
    assert a['linear'][name][1] == count == 101
    assert a['linear'][name][0] == pytest.approx(top1, abs=1.5 / 101)
  # Files are written once, by the first process.
  assert os.path.exists(os.path.join(workdir, 'eval', 'results.json'))
  saved = json.load(open(os.path.join(workdir, 'eval', 'results.json')))
  assert saved['linear']['pre_logits']['count'] == 101
