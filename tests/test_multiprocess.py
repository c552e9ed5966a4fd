"""Multi-host training through jax.distributed: two local CPU processes, 4 devices each."""
import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r'''
import json, sys
import jax
jax.config.update('jax_num_cpu_devices', 4)
from configs import rotation
from ssl_jax import train
import numpy as np
process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = rotation.get_config('smoke')
c.model.name = 'resnet50_v2'
c.data.source = 'synthetic'
c.data.image_size = 8
c.total_steps, c.checkpoint_every_steps, c.log_every_steps, c.eval_every_steps = 3, 3, 3, -1
c.distributed.initialize = True
c.distributed.coordinator_address = '127.0.0.1:' + port
c.distributed.num_processes = 2
c.distributed.process_id = process_id
out = train.train_and_evaluate(c, workdir)
from ssl_jax import checkpoint
_, params, _ = checkpoint.restore_trunk(workdir)
print('RESULT ' + json.dumps({
    'devices': jax.device_count(), 'local': jax.local_device_count(), 'step': out['step'],
    'checksum': float(sum(np.abs(x).sum() for x in jax.tree.leaves(params))),
    'loss': out['train_history'][-1]['train_loss']}))
'''


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_train_with_identical_parameters(tmp_path):
  port = str(_free_port())
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  procs = [subprocess.Popen([sys.executable, '-c', WORKER, str(i), port, str(tmp_path / 'w')],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for i in range(2)]
  results = []
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err.decode()[-4000:]
    line = [l for l in out.decode().splitlines() if l.startswith('RESULT ')][-1]
    results.append(json.loads(line[len('RESULT '):]))
  for r in results:
    assert r['devices'] == 8 and r['local'] == 4 and r['step'] == 3
  assert results[0]['checksum'] == results[1]['checksum']
  assert results[0]['loss'] == results[1]['loss']
