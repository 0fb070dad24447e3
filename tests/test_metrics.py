"""FID/KID/precision-recall: closed forms, exact merging, unbiasedness, file round trips."""

import numpy as np
import pytest
from scipy import linalg

from udpm_jax import metrics


def _gauss(n, d, seed, shift=0.0, scale=1.0, dist_seed=None):
  """n samples of N(shift, AᵀA); A drawn from `dist_seed` (default: seed), samples from `seed`."""
  rng = np.random.default_rng(seed if dist_seed is None else dist_seed)
  a = rng.standard_normal((d, d)) * 0.3
  rng = np.random.default_rng(seed) if dist_seed is None else np.random.default_rng([seed, 1])
  if dist_seed is None:
    rng.standard_normal((d, d))
  return (rng.standard_normal((n, d)) @ (np.eye(d) * scale + a)) + shift


def test_fid_closed_form_self_and_gaussians():
  x, y = _gauss(20000, 8, 0), _gauss(20000, 8, 1, shift=0.5, scale=1.3)
  sx, sy = metrics.FIDStats.from_model_output(x), metrics.FIDStats.from_model_output(y)
  assert metrics.fid(sx, sx) == pytest.approx(0.0, abs=1e-8)
  np.testing.assert_allclose(sx.cov, np.cov(x, rowvar=False), rtol=1e-10)
  # Independent closed form on the same empirical moments (symmetric square-root form).
  m1, c1, m2, c2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
  r1 = linalg.sqrtm(c1).real
  closed = (
    np.sum((m1 - m2) ** 2)
    + np.trace(c1)
    + np.trace(c2)
    - 2 * np.trace(linalg.sqrtm(r1 @ c2 @ r1).real)
  )
  assert metrics.fid(sx, sy) == pytest.approx(closed, rel=1e-6)
  # Population value: known means and covariances of the generating maps.
  d = 8
  rng = np.random.default_rng(0)
  a = np.eye(d) + rng.standard_normal((d, d)) * 0.3
  rng = np.random.default_rng(1)
  b = np.eye(d) * 1.3 + rng.standard_normal((d, d)) * 0.3
  pop = metrics.frechet_distance(np.zeros(d), a.T @ a, np.full(d, 0.5), b.T @ b)
  assert metrics.fid(sx, sy) == pytest.approx(pop, rel=0.05)


def test_merged_statistics_over_uneven_batches_equal_one_shot():
  x = _gauss(121, 16, 2).astype(np.float32)
  merged = metrics.FIDStats.empty(16)
  start = 0
  for size in (7, 1, 13, 100):
    merged = merged.merge(metrics.FIDStats.from_model_output(x[start : start + size]))
    start += size
  one = metrics.FIDStats.from_model_output(x)
  assert int(merged.count) == 121
  np.testing.assert_allclose(merged.total, one.total, rtol=1e-12)
  np.testing.assert_allclose(merged.outer, one.outer, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(merged.cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9)
  feats = metrics.FeatureSet.empty(16).merge(metrics.FeatureSet.from_model_output(x[:5]))
  assert feats.compute().shape == (5, 16)


def test_kid_unbiased_on_identical_distributions_and_positive_otherwise():
  vals = [
    metrics.kid(
      _gauss(200, 6, s, dist_seed=9),
      _gauss(200, 6, 100 + s, dist_seed=9),
      num_subsets=5,
      subset_size=100,
      seed=s,
    )
    for s in range(30)
  ]
  mean, stderr = np.mean(vals), np.std(vals) / np.sqrt(len(vals))
  assert abs(mean) < 3 * stderr
  far = metrics.kid(_gauss(200, 6, 0), _gauss(200, 6, 1, shift=1.0), num_subsets=5, subset_size=100)
  assert far > 10 * stderr
  # Against a direct O(n²) implementation on one subset covering all samples.
  x, y = _gauss(30, 6, 3), _gauss(30, 6, 4, shift=0.3)
  k = lambda a, b: (a @ b.T / 6 + 1) ** 3
  n = 30
  direct = (
    (k(x, x).sum() - np.trace(k(x, x))) / (n * (n - 1))
    + (k(y, y).sum() - np.trace(k(y, y))) / (n * (n - 1))
    - 2 * k(x, y).mean()
  )
  assert metrics.kid(x, y, num_subsets=1, subset_size=30) == pytest.approx(direct, rel=1e-10)


def test_precision_recall_identical_and_disjoint():
  x = _gauss(300, 5, 0).astype(np.float32)
  assert metrics.precision_recall(x, x) == (1.0, 1.0)
  p, r = metrics.precision_recall(x, x + 100.0)
  assert p == 0.0 and r == 0.0
  half = np.concatenate([x[:150], x[:150] + 100.0])
  p, r = metrics.precision_recall(x, half)
  assert p == pytest.approx(0.5, abs=0.05) and r > 0.5


def test_precision_recall_in_row_blocks_equals_the_dense_definition(monkeypatch):
  """k-NN radii and ball membership from the full distance matrix (scipy), vs the blockwise
  computation that never holds that matrix (blocks of 7 rows here, so sets span many blocks)."""
  from scipy.spatial.distance import cdist

  real = _gauss(60, 5, 1).astype(np.float32)
  fake = _gauss(45, 5, 2, shift=0.4).astype(np.float32)
  k = 3

  def dense_coverage(query, ref):
    radii = np.sort(cdist(ref, ref), axis=1)[:, k]
    return float((cdist(query, ref) <= radii[None] + 1e-9).any(axis=1).mean())

  expected = (dense_coverage(fake, real), dense_coverage(real, fake))
  assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # informative, not the trivial 0 or 1
  monkeypatch.setattr(metrics, "_ROWS", 7)
  assert metrics.precision_recall(real, fake, k=k) == pytest.approx(expected)


def test_stacked_statistics_reduce_to_their_merge():
  """clu's protocol for metrics gathered across devices: a leading axis, merged by `reduce`."""
  import jax

  a, b = _gauss(9, 4, 1), _gauss(9, 4, 2)
  parts = [metrics.FIDStats.from_model_output(x) for x in (a, b)]
  stacked = jax.tree.map(lambda *v: np.stack(v), *parts)
  reduced = stacked.reduce()
  merged = parts[0].merge(parts[1])
  assert int(reduced.count) == 18
  np.testing.assert_allclose(reduced.outer, merged.outer, rtol=1e-12)
  np.testing.assert_allclose(reduced.compute()[1], np.cov(np.concatenate([a, b]), rowvar=False))
  feats = [metrics.FeatureSet.from_model_output(x) for x in (a, b)]
  stacked = jax.tree.map(lambda *v: np.stack(v), *feats)
  np.testing.assert_allclose(stacked.reduce().compute(), np.concatenate([a, b]), rtol=1e-6)


def test_reference_stats_round_trip_and_errors(tmp_path):
  stats = metrics.FIDStats.from_model_output(_gauss(50, 4, 5))
  metrics.save_reference_stats(tmp_path / "ref.npz", stats, dataset="toy", split="train")
  back, meta = metrics.load_reference_stats(tmp_path / "ref.npz")
  assert meta["dataset"] == "toy" and meta["count"] == 50
  assert metrics.fid(stats, back) == pytest.approx(0.0, abs=1e-9)
  np.savez(tmp_path / "pf.npz", mu=stats.mean, sigma=stats.cov)  # pytorch-fid's format
  pf, _ = metrics.load_reference_stats(tmp_path / "pf.npz")
  assert metrics.fid(stats, pf) == pytest.approx(0.0, abs=1e-8)
  np.savez(tmp_path / "bad.npz", foo=np.zeros(2))
  with pytest.raises(ValueError, match="Cannot read reference statistics.*foo"):
    metrics.load_reference_stats(tmp_path / "bad.npz")
  # Truncated and empty files (an interrupted copy) are named, not an EOFError/BadZipFile.
  whole = (tmp_path / "ref.npz").read_bytes()
  for name, content in (("cut.npz", whole[: len(whole) // 2]), ("empty.npz", b"")):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=f"Cannot read reference statistics .*{name}"):
      metrics.load_reference_stats(tmp_path / name)
