"""FID reference statistics (and reference features for KID/precision-recall) of a run's dataset.

Computed from the training split of the run's config and cached as .npz files with their
provenance (dataset, image size, image count, feature weights' digest): a cache that no longer
fits is recomputed; a file the user gives is used as given, refused if it describes another
dataset or feature network, and never rewritten.
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import logging
from etils import epath

from udpm_jax import data, metrics


def run_reference(config, features, workdir, batch, reference_stats=None):
  """(FIDStats, path, image count) of a run's FID reference. `reference_stats` (or the config's
  `eval.reference_stats`) is the user's file, used as given; otherwise the statistics of
  `eval.reference_num` training images (0: all) are cached in <workdir>/eval/reference_stats.npz."""
  given = reference_stats or config.eval.reference_stats or None
  path = given or str(epath.Path(workdir) / "eval" / "reference_stats.npz")
  (epath.Path(workdir) / "eval").mkdir(parents=True, exist_ok=True)
  limit = config.eval.get("reference_num", 0) or None
  stats, count = _reference(config, features, batch, path, limit, bool(given))
  return stats, path, count


def reference_statistics(config, features, batch=250, path=None, limit=None, given=False):
  """FIDStats of the config's training set, cached at `path` with provenance when given.

  A cache that no longer fits (other image count, dataset, image size or feature weights) is
  recomputed and rewritten. With `given` the file at `path` is the user's: it is used as given
  whatever its image count, refused if it describes another dataset or feature network, and
  never rewritten; only a missing one is computed (and written there).
  """
  return _reference(config, features, batch, path, limit, given)[0]


def _reference(config, features, batch, path, limit, given):
  """(FIDStats, how many images they hold — None for mu/sigma files made elsewhere, whose count
  is nominal) for `reference_statistics`."""
  digest = getattr(features, "weights_digest", None)
  if path is not None and epath.Path(path).exists():
    cached, provenance = metrics.load_reference_stats(path)
    if not provenance:
      # Made elsewhere (e.g. pytorch-fid's mu/sigma): used as given, never recomputed over.
      return cached, None
    want = None if given else _reference_count(config, limit)
    reason = _stale(provenance, int(cached.count), want, digest, config)
    if reason is None:
      return cached, int(cached.count)
    if given:
      raise ValueError(
        f"The reference statistics {path} {reason}, so they cannot serve this run; pass "
        "statistics made for it, or leave --reference_stats unset to compute them in the workdir."
      )
    logging.info("Reference stats at %s %s: recomputing.", path, reason)
  images, _ = data.load_arrays(config, split="train", limit=limit)
  stats = metrics.FIDStats.empty()
  start = time.time()
  for i in range(0, len(images), batch):
    stats = stats.merge(
      metrics.FIDStats.from_model_output(np.asarray(features(images[i : i + batch])))
    )
    logging.info(
      "reference: %d/%d training images (%.1f images/s)",
      int(stats.count),
      len(images),
      int(stats.count) / (time.time() - start),
    )
  if path is not None and jax.process_index() == 0:  # one writer on a shared filesystem
    metrics.save_reference_stats(
      path,
      stats,
      dataset=config.data.name,
      source=config.data.source,
      split="train",
      image_size=config.data.image_size,
      resize="bilinear to 299 (pytorch-fid)",
      feature_weights_sha256=digest,
    )
  return stats, int(stats.count)


def _reference_count(config, limit):
  """How many training images a reference of `limit` (None = all) holds: the split may be smaller.
  None when the split cannot be opened here (then a cached reference is trusted)."""
  try:
    size = len(data.make_source(config, split="train"))
  except Exception as e:  # any unreadable source means "cannot check"
    logging.warning("Cannot open the training split to check the reference size: %s", e)
    return limit
  return size if limit is None else min(limit, size)


def _stale(provenance, count, want_count, digest, config):
  """Why a cached reference (stats or features) cannot serve, or None when it can.

  A cache made of another dataset or image size, with another image count (unless `want_count` is
  None) or by another feature network cannot serve; a fact the cache (or the features) does not
  record is not held against it.
  """
  made_by = provenance.get("feature_weights_sha256")
  dataset, size = provenance.get("dataset"), provenance.get("image_size")
  if dataset is not None and dataset != config.data.name:
    return f"describe dataset {dataset!r}, not {config.data.name!r}"
  if size is not None and int(size) != int(config.data.image_size):
    return f"describe {size}² images, not {config.data.image_size}²"
  if want_count is not None and count != want_count:
    return f"hold {count} images, not {want_count}"
  if digest and made_by and made_by != digest:
    return f"were made by feature weights {made_by[:12]}, not {digest[:12]}"
  return None


def reference_features(config, features, batch, num, path=None):
  """Features of the first `num` training images, for KID and precision/recall (cached at `path`
  as float32 with provenance, so that evaluating many steps computes them once)."""
  digest = getattr(features, "weights_digest", None)
  cache = _read_features_cache(path) if path is not None else None
  if cache is not None:
    cached, provenance = cache
    reason = _stale(provenance, len(cached), _reference_count(config, num), digest, config)
    if reason is None:
      return cached
    logging.info("Reference features at %s %s: recomputing.", path, reason)
  images, _ = data.load_arrays(config, split="train", limit=num)
  feats = np.concatenate(
    [np.asarray(features(images[i : i + batch]), np.float32) for i in range(0, len(images), batch)]
  )
  if path is not None and jax.process_index() == 0:
    provenance = dict(
      dataset=config.data.name,
      split="train",
      image_size=config.data.image_size,
      feature_weights_sha256=digest,
    )
    metrics.savez_atomic(path, features=feats, provenance=np.array(json.dumps(provenance)))
  return feats


def _read_features_cache(path):
  """(features, provenance) of our own cache, or None when absent or unreadable (then recomputed:
  e.g. a copy cut short)."""
  if not epath.Path(path).exists():
    return None
  try:
    with epath.Path(path).open("rb") as fh, np.load(fh, allow_pickle=False) as f:
      return f["features"], json.loads(str(f["provenance"]))
  except Exception as e:  # any unreadable file: numpy, zipfile and json each raise their own
    logging.warning("Ignoring unreadable reference features %s: %s", path, e)
    return None
