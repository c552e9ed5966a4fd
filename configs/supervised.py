r"""The supervised baseline through the same engine (softmax CE; top-1/top-5).

  python -m ssl_jax.main --config configs/supervised.py:cifar10_cpu --workdir /tmp/sup

Presets:
  imagenet      the study: ResNet50 v2 (the release's default mode) k=4, batch 256,
                lr 0.1, 5 warm-up epochs, 90 epochs, x0.1 at 30, 60 and 80. The study
                trained on all 1,281,167 images; we train on `train` and keep the
                held-out split for model choice (set data.train_split to change).
  cifar10       ResNet50 v2 k=4, small-input stem, batch 128, 100 epochs.
  cifar10_cpu   k=1, 300 steps on 2 CPU cores.
  imagenette64  ResNet50 v2 k=4, small-input stem, 60 epochs.
  smoke         tiny, for tests.
"""
from configs import rotation

PRESETS = rotation.PRESETS


def get_config(preset='cifar10_cpu'):
  c = rotation.get_config(preset)
  c.task = 'supervised'
  c.model.name = 'resnet50_v2'
  c.run_linear_eval = False
  if preset == 'imagenet':
    c.model.width = 4
    c.batch_size = 256
    c.eval_batch_size = 256
    c.num_epochs = 90.0
    c.optimizer.decay_epochs = (30.0, 60.0, 80.0)
  return c
