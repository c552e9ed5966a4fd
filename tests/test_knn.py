"""Weighted kNN on L2-normalised features against a brute-force numpy reference."""
import numpy as np
import pytest

from ssl_jax.evaluation import knn


def _reference_votes(train, labels, queries, k, temperature, num_classes):
  """Brute force in float64: full similarity matrix, sort, exp(sim / T) votes, each
  query's votes divided by exp(best similarity / T) (the documented scaling)."""
  tn = train / np.linalg.norm(train, axis=1, keepdims=True)
  qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  sim = (qn @ tn.T).astype(np.float64)
  votes = np.zeros((len(queries), num_classes))
  for i in range(len(queries)):
    nn = np.argsort(-sim[i], kind='stable')[:k]
    for j in nn:
      votes[i, labels[j]] += np.exp((sim[i, j] - sim[i, nn[0]]) / temperature)
  return votes


@pytest.mark.parametrize('preset', sorted(knn.PRESETS))
def test_votes_match_bruteforce(preset):
  k, temp = knn.PRESETS[preset]
  rng = np.random.RandomState(0)
  num_classes = 7
  train = rng.randn(517, 24).astype(np.float32)   # odd sizes, several bank chunks
  labels = rng.randint(0, num_classes, 517)
  queries = rng.randn(83, 24).astype(np.float32)
  got = knn.knn_votes(train, labels, queries, num_classes=num_classes, k=k,
                      temperature=temp, query_batch=32, bank_chunk=100)
  ref = _reference_votes(train, labels, queries, min(k, 517), temp, num_classes)
  np.testing.assert_allclose(got, ref, rtol=2e-4)


def test_accuracy_every_query_counted_and_chunk_invariant():
  rng = np.random.RandomState(1)
  centers = rng.randn(5, 16) * 4
  y = rng.randint(0, 5, 300)
  x = centers[y] + rng.randn(300, 16)
  yq = rng.randint(0, 5, 101)
  xq = centers[yq] + rng.randn(101, 16)
  a = knn.knn_accuracy(x, y, xq, yq, num_classes=5, k=20, temperature=0.07,
                       query_batch=17, bank_chunk=64)
  b = knn.knn_accuracy(x, y, xq, yq, num_classes=5, k=20, temperature=0.07,
                       query_batch=256, bank_chunk=300)
  assert a == b
  assert a['count'] == 101
  assert a['top1'] > 0.95 and a['top5'] == 1.0
  ref = _reference_votes(x, y, xq, 20, 0.07, 5)
  assert a['top1'] == pytest.approx(np.mean(ref.argmax(1) == yq))


@pytest.mark.parametrize('temperature', [1e-4, 0.01, 0.07, 10.0])
def test_votes_finite_for_every_temperature(temperature):
  # exp(1 / 1e-4) overflows float64, let alone float32: the votes must stay finite and
  # rank the classes as the exact exp(sim / T) votes do (for tiny T: the nearest wins).
  rng = np.random.RandomState(2)
  train = rng.randn(300, 8).astype(np.float32)
  labels = rng.randint(0, 4, 300)
  queries = rng.randn(40, 8).astype(np.float32)
  got = knn.knn_votes(train, labels, queries, num_classes=4, k=20, temperature=temperature)
  assert np.isfinite(got).all() and (got.max(1) >= 1.0 - 1e-6).all()
  ref = _reference_votes(train, labels, queries, 20, temperature, 4)
  assert np.isfinite(ref).all()
  np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-6)  # float32 sims vs float64
  with pytest.raises(ValueError, match='temperature'):
    knn.knn_votes(train, labels, queries, num_classes=4, temperature=0.0)

