"""The supervised baseline: softmax cross-entropy on the dataset's labels.

It runs through the same engine as the pretext tasks: a Dense classifier with
`config.data.num_classes` outputs on pre-logits (Glorot-uniform, zero bias, as the
study's logits layer). Metrics: loss, top-1 and top-5. No settings of its own
(config.tasks.supervised is empty).
"""
from ssl_jax import tasks
from ssl_jax.tasks import common


def pretext(rng, batch, *, train):
  """(rng, batch) -> ({'image': f32[B, 1, H, W, 3] in [-1, 1]}, labels i32[B])."""
  del rng, train
  return {'image': common.to_minus_one_one(batch['image'])[:, None]}, batch['label']


@tasks.register('supervised')
def build(config):
  return tasks.Task(
      name='supervised', settings=tasks.settings(config, 'supervised'), num_views=1,
      pretext=pretext,
      head=common.LinearHead(config.data.num_classes, dtype=common.compute_dtype(config)),
      loss=common.classification_loss,
      eval_input=tasks.EvalInput('rgb', common.rgb_eval_fn))
