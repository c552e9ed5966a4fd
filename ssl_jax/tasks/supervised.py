"""The supervised baseline: softmax cross-entropy on the dataset's labels.

It runs through the same engine as the pretext tasks; the trunk's logits layer
has `config.data.num_classes` outputs. Metrics: loss, top-1 and top-5.
"""
import flax.linen as nn

from ssl_jax.tasks import common


def copies(config, train):
  del config, train
  return 1


def make_pretext_fn(config, train):
  """(rng, u8[B,H,W,3], i32[B]) -> (f32[B,H,W,3] in [-1,1], i32[B])."""
  del config, train

  def pretext(rng, images, labels):
    del rng
    return common.to_minus_one_one(images), labels

  return pretext


class SupervisedModel(nn.Module):
  config: dict

  def setup(self):
    self.trunk = common.make_trunk(self.config['model'], self.config['num_classes'])

  def __call__(self, x, train):
    return self.trunk(x, train=train)


def make_model(config):
  return SupervisedModel(config={'model': dict(config.model),
                                 'num_classes': config.data.num_classes})


def metrics_fn(outputs, targets):
  return common.classification_metrics(outputs, targets)
