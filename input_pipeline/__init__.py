"""tf.data + TFDS input pipeline (imports TensorFlow; the core never does).

Public API:
  get_dataset(config, split_name, *, train, batch_size=None,
              shard_by_process=True, pp=None) -> BatchIterator of per-host
      {'image': uint8[b, H, W, 3], 'label': int32[b], 'mask': bool[b]}
  check_dataset(config) -> {'train': n, 'val': n, 'test': n}
  num_examples(config, split_name) -> int
  num_classes(config) -> int or None (the label feature's classes)
  load_arrays(config, split_name) -> (uint8[N, H, W, 3], int32[N])
  get_preprocess_fn(spec, *, train) -> fn(features) -> features
"""
from input_pipeline.datasets import BatchIterator
from input_pipeline.datasets import check_dataset
from input_pipeline.datasets import DatasetError
from input_pipeline.datasets import default_pp
from input_pipeline.datasets import get_dataset
from input_pipeline.datasets import load_arrays
from input_pipeline.datasets import num_classes
from input_pipeline.datasets import num_examples
from input_pipeline.preprocess import get_preprocess_fn
from input_pipeline.preprocess import OPS
