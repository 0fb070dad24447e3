"""Sample-quality metrics on Inception features, as mergeable clu metrics.

* `FIDStats`: count, Σx and Σxxᵀ in float64 on the host, so batches, devices and hosts merge by
  plain addition (equal to one-shot statistics up to float64 rounding, ~1e-16).
* `FeatureSet`: the features themselves, for KID and precision/recall.
* `frechet_distance`, `kid`, `precision_recall`, and reference statistics as .npz with provenance.

Inception Score is not offered: the FID weights stop at pool3 and carry no classifier logits.
clu 0.0.12 notes: `metrics.Std` calls `jnp.clip(a_min=…)`, removed in current JAX, and is unused
here; `Metric`, `Average` and `Collection` work and these classes follow their protocol.
"""

from __future__ import annotations

import datetime
import json
import zipfile
import zlib

import flax
import numpy as np
from clu import metrics as clu_metrics


@flax.struct.dataclass
class FIDStats(clu_metrics.Metric):
  """Sufficient statistics of a feature distribution (host numpy, float64)."""

  count: np.ndarray
  total: np.ndarray
  outer: np.ndarray

  @classmethod
  def empty(cls, dim: int = 2048) -> "FIDStats":
    return cls(count=np.zeros((), np.int64), total=np.zeros(dim), outer=np.zeros((dim, dim)))

  @classmethod
  def from_model_output(cls, features, **_) -> "FIDStats":
    f = np.asarray(features, np.float64)
    if f.ndim != 2:
      raise ValueError(f"features must be (batch, dim), got shape {f.shape}.")
    return cls(count=np.asarray(len(f), np.int64), total=f.sum(0), outer=f.T @ f)

  def merge(self, other: "FIDStats") -> "FIDStats":
    # The empty statistics are the identity whatever their width, so features of any dimension
    # can start from `empty()`.
    if int(self.count) == 0:
      return other
    if int(other.count) == 0:
      return self
    return type(self)(
      count=self.count + other.count, total=self.total + other.total, outer=self.outer + other.outer
    )

  def reduce(self) -> "FIDStats":
    """Merges statistics stacked along a leading axis (clu's protocol for gathered metrics)."""
    if np.ndim(self.count) == 0:
      return self
    return type(self)(
      count=np.sum(self.count, axis=0),
      total=np.sum(self.total, axis=0),
      outer=np.sum(self.outer, axis=0),
    )

  @property
  def mean(self) -> np.ndarray:
    return self.total / self.count

  @property
  def cov(self) -> np.ndarray:
    """Unbiased covariance (divides by N − 1, as numpy.cov)."""
    n = float(self.count)
    if n < 2:
      raise ValueError(f"Covariance needs at least 2 samples, have {int(n)}.")
    return (self.outer - n * np.outer(self.mean, self.mean)) / (n - 1)

  def compute(self):
    return self.mean, self.cov


@flax.struct.dataclass
class FeatureSet(clu_metrics.Metric):
  """Features kept on the host, merged by concatenation (for KID and precision/recall)."""

  features: np.ndarray

  @classmethod
  def empty(cls, dim: int = 2048) -> "FeatureSet":
    return cls(features=np.zeros((0, dim), np.float32))

  @classmethod
  def from_model_output(cls, features, **_) -> "FeatureSet":
    return cls(features=np.asarray(features, np.float32))

  def merge(self, other):
    if not len(self.features):
      return other
    return type(self)(features=np.concatenate([self.features, other.features]))

  def reduce(self):
    """Concatenates feature sets stacked along a leading axis (clu's gathered-metric protocol)."""
    if np.ndim(self.features) <= 2:
      return self
    return type(self)(features=np.concatenate(list(self.features)))

  def compute(self):
    return self.features


def frechet_distance(mu1, cov1, mu2, cov2, eps: float = 1e-6) -> float:
  """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), with pytorch-fid's safeguards for singular products."""
  from scipy import linalg

  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  cov1, cov2 = np.atleast_2d(cov1), np.atleast_2d(cov2)
  if mu1.shape != mu2.shape or cov1.shape != cov2.shape:
    raise ValueError(f"Statistics of different dimension: {mu1.shape} vs {mu2.shape}.")
  diff = mu1 - mu2
  covmean = linalg.sqrtm(cov1.dot(cov2))  # (disp=False is deprecated in SciPy 1.16+)
  if not np.isfinite(covmean).all():
    offset = np.eye(cov1.shape[0]) * eps
    covmean = linalg.sqrtm((cov1 + offset).dot(cov2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"sqrtm has a large imaginary part {np.max(np.abs(covmean.imag))}.")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def fid(stats_a: FIDStats, stats_b: FIDStats) -> float:
  return frechet_distance(stats_a.mean, stats_a.cov, stats_b.mean, stats_b.cov)


def kid(feats_a, feats_b, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
  """Kernel Inception Distance: unbiased MMD² with k(x, y) = (xᵀy / d + 1)³, averaged over subsets."""
  a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
  m = min(subset_size, len(a), len(b))
  if m < 2:
    raise ValueError(f"KID needs at least 2 samples per set, have {len(a)} and {len(b)}.")
  d = a.shape[1]
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_subsets):
    x = a[rng.choice(len(a), m, replace=False)]
    y = b[rng.choice(len(b), m, replace=False)]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    mmd = (
      (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
      + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
      - 2 * kxy.mean()
    )
    values.append(mmd)
  return float(np.mean(values))


# Distances are taken a block of query rows at a time against all reference points, never as the
# whole N×N matrix: at the paper's 50k samples that matrix alone would be 10 GB (float32).
_ROWS = 1024


def _row_blocks_of_distances(query, ref):
  """Yields (row slice, Euclidean distances of those query rows to every reference point)."""
  ref = np.asarray(ref, np.float64)
  ref_sq = (ref**2).sum(1)
  for i in range(0, len(query), _ROWS):
    x = np.asarray(query[i : i + _ROWS], np.float64)
    d2 = (x**2).sum(1)[:, None] + ref_sq[None] - 2 * x @ ref.T
    yield slice(i, i + len(x)), np.sqrt(np.maximum(d2, 0))


def _radii(feats, k):
  """Distance of every point to its k-th nearest neighbour within the set."""
  radii = np.empty(len(feats))
  for rows, d in _row_blocks_of_distances(feats, feats):
    radii[rows] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
  return radii


def _coverage(query, ref, radii):
  """Fraction of `query` inside at least one of the balls of `radii` around `ref`."""
  inside = np.zeros(len(query), bool)
  for rows, d in _row_blocks_of_distances(query, ref):
    inside[rows] = (d <= radii[None]).any(axis=1)
  return float(inside.mean())


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
  """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls."""
  real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
  if min(len(real), len(fake)) <= k:
    raise ValueError(f"precision/recall with k={k} needs more than k samples per set.")
  precision = _coverage(fake, real, _radii(real, k))
  recall = _coverage(real, fake, _radii(fake, k))
  return precision, recall


def savez_atomic(path, **arrays) -> None:
  """np.savez to `path`, atomically (`files.atomic_write`)."""
  from udpm_jax import files

  files.atomic_write(path, lambda fh: np.savez(fh, **arrays))


def save_reference_stats(path, stats: FIDStats, **provenance) -> None:
  """Writes mu/sigma (pytorch-fid's keys) plus the sufficient statistics and provenance JSON."""
  meta = {
    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    **provenance,
    "count": int(stats.count),
  }
  savez_atomic(
    path,
    mu=stats.mean,
    sigma=stats.cov,
    count=stats.count,
    total=stats.total,
    outer=stats.outer,
    provenance=np.array(json.dumps(meta)),
  )


def load_reference_stats(path) -> tuple[FIDStats, dict]:
  """Reads `save_reference_stats` files (or a pytorch-fid mu/sigma .npz, without merge data)."""
  try:
    with np.load(path, allow_pickle=False) as f:
      keys = set(f.files)
      if {"count", "total", "outer"} <= keys:
        stats = FIDStats(count=f["count"], total=f["total"], outer=f["outer"])
      elif {"mu", "sigma"} <= keys:
        # Rebuild equivalent sufficient statistics for a nominal N (only mean/cov matter for FID).
        n = 2.0
        mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
        stats = FIDStats(
          count=np.asarray(2, np.int64), total=n * mu, outer=sigma * (n - 1) + n * np.outer(mu, mu)
        )
      else:
        raise ValueError(f"has keys {sorted(keys)}; expected count/total/outer or mu/sigma")
      meta = json.loads(str(f["provenance"])) if "provenance" in keys else {}
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
    raise ValueError(
      f"Cannot read reference statistics {path} ({type(e).__name__}: {e}); expected an .npz "
      "written by udpm_jax.evaluate or pytorch-fid's mu/sigma .npz."
    ) from e
  return stats, meta
