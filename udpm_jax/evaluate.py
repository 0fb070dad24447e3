"""Evaluation: FID (and optionally KID, precision/recall) of EMA samples against reference statistics.

  python -m udpm_jax.evaluate --workdir=DIR --num=50000 [--step=S | --all] [--kid] [--pr]

Samples follow the FID protocol of EDM: class-balanced labels, a uint8 round trip (as if saved to
PNG), Inception pool3 features. Reference statistics come from --reference_stats (a file
of yours: checked against the run's dataset and feature network, used as given, never rewritten),
or are computed once from the training set of the run's config and cached in the workdir with
their provenance. Results go to <workdir>/eval/step_<S>.json and TensorBoard; steps already
evaluated with the same --num and --seed are skipped, and an interrupted step resumes from its
saved partial statistics (eval/step_<S>.partial.npz).
"""

from __future__ import annotations

import json
import time

from absl import app, flags, logging

from udpm_jax import cli


def _define_flags():
  """CLI flags, defined only when this module runs as a program (so that importing the
  library functions of several CLI modules into one process does not clash)."""
  global \
    _WORKDIR, \
    _NUM, \
    _STEP, \
    _ALL, \
    _BATCH, \
    _INCEPTION, \
    _REFERENCE, \
    _REFERENCE_NUM, \
    _KID, \
    _PR, \
    _SEED, \
    _RESUME
  _WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.")
  _NUM = flags.DEFINE_integer("num", 50_000, "Number of samples.")
  _STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
  _ALL = flags.DEFINE_bool("all", False, "Evaluate every checkpoint in the workdir.")
  _BATCH = flags.DEFINE_integer("batch", 250, "Images per sampler/Inception call.")
  _INCEPTION = flags.DEFINE_string("inception_weights", None, "FID Inception weights (.pth/.npz).")
  _REFERENCE = flags.DEFINE_string("reference_stats", None, "Reference statistics .npz.")
  _REFERENCE_NUM = flags.DEFINE_integer(
    "reference_num", None, "Training images for computed reference stats (default: config)."
  )
  _KID = flags.DEFINE_bool("kid", False, "Also compute KID.")
  _PR = flags.DEFINE_bool("pr", False, "Also compute precision/recall.")
  _SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
  _RESUME = flags.DEFINE_bool(
    "resume", True, "Save partial statistics every minute and resume an interrupted step."
  )
  flags.mark_flags_as_required(["workdir"])


def inception_feature_fn(inception_params):
  import jax
  import jax.numpy as jnp

  from udpm_jax import inception

  fn = jax.jit(inception.features)

  def features(images_uint8):
    return fn(inception_params, jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0)

  # Recorded in reference statistics, so that statistics of another network are not reused.
  features.weights_digest = inception.weights_digest(inception_params)
  return features


def fid_features(config, inception_weights=None):
  """The Inception feature function of FID: weights from `inception_weights`, else the config's
  `eval.inception_weights` (offline clusters name local files there), else the cached download."""
  from udpm_jax import inception

  weights = inception_weights or config.eval.get("inception_weights") or None
  return inception_feature_fn(inception.load_params(weights))


def run_reference(config, features, workdir, batch, reference_stats=None):
  """(FIDStats, path, image count) of a run's FID reference. `reference_stats` (or the config's
  `eval.reference_stats`) is the user's file, used as given; otherwise the statistics of
  `eval.reference_num` training images (0: all) are cached in <workdir>/eval/reference_stats.npz."""
  from etils import epath

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
  import jax
  import numpy as np
  from etils import epath

  from udpm_jax import data, metrics

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
  from udpm_jax import data

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


def evaluate_step(workdir, step, num, *, reference_num=None, **kwargs):
  """Metrics of checkpoint `step` (None = latest) with its EMA params; writes and returns them.

  Keyword arguments are those of `evaluate_variables`; `reference_num` overrides the run's
  config.eval.reference_num.
  """
  from udpm_jax import checkpoint

  config, variables = checkpoint.restore_params(workdir, step=step, ema=True)
  step = checkpoint.load_config(workdir, step)[0]
  if reference_num is not None:
    config.eval.reference_num = reference_num
  return evaluate_variables(config, variables, step, workdir, num, **kwargs)


def evaluate_variables(
  config,
  variables,
  step,
  workdir,
  num,
  *,
  batch=250,
  seed=0,
  inception_weights=None,
  reference_stats=None,
  kid=False,
  pr=False,
  features=None,
  sample_fn=None,
  resume=True,
  save_every_s=60.0,
):
  """FID (KID, precision/recall) of `num` samples of `variables`; writes eval/step_<step>.json.

  Image i comes from batch i // batch with key fold_in(PRNGKey(seed), b) and label i mod K, so
  the samples do not depend on the device count. `features(uint8 NHWC) -> (B, D)` defaults to
  Inception pool3; reference statistics are cached in <workdir>/eval unless given. Pass the same
  `sample_fn` (from `sampling.make_sample_fn(config)`) to repeated calls to compile it once.

  With `resume`, the merged statistics so far are saved to eval/step_<step>.partial.npz every
  `save_every_s` seconds, and a later call with the same step, num, batch, seed, kid/pr and
  feature weights picks up from there: an interrupted 50k-sample evaluation loses at most a minute of work.
  """
  import jax
  import numpy as np
  from etils import epath

  from udpm_jax import image_io, metrics, sampling

  if features is None:
    features = fid_features(config, inception_weights)
  ref, ref_path, ref_count = run_reference(config, features, workdir, batch, reference_stats)
  sample = sample_fn or sampling.make_sample_fn(config)
  k = config.data.num_classes
  keep = bool(kid or pr)
  num_batches = -(-num // batch)
  progress = _Progress(
    epath.Path(workdir) / "eval" / f"step_{int(step)}.partial.npz",
    dict(
      step=int(step),
      num=int(num),
      batch=int(batch),
      seed=int(seed),
      keep_features=keep,
      feature_weights_sha256=getattr(features, "weights_digest", None),
    ),
  )
  first, stats, feats = progress.load() if resume else (0, None, None)
  stats = stats or metrics.FIDStats.empty()
  feats = feats or metrics.FeatureSet.empty()
  start, last_save = time.time(), time.time()
  for b in range(first, num_batches):
    n = min(batch, num - b * batch)
    labels = (np.arange(b * batch, b * batch + batch) % k) if k else None
    images = sample(
      variables, jax.random.fold_in(jax.random.PRNGKey(seed), b), num=batch, labels=labels
    )
    f = np.asarray(features(image_io.to_uint8(images)))[:n]  # the uint8 (PNG) round trip
    stats = stats.merge(metrics.FIDStats.from_model_output(f))
    if keep:
      feats = feats.merge(metrics.FeatureSet.from_model_output(f))
    done = b * batch + n
    rate = (done - first * batch) / (time.time() - start)
    logging.info(
      "step %d: %d/%d samples (%.1f images/s, %.0f s left)",
      step,
      done,
      num,
      rate,
      (num - done) / rate,
    )
    if resume and b + 1 < num_batches and time.time() - last_save >= save_every_s:
      progress.save(b + 1, stats, feats if keep else None)
      last_save = time.time()
  result = {
    "step": int(step),
    "num_samples": int(num),
    "seed": int(seed),
    "fid": metrics.fid(stats, ref),
    "reference_stats": ref_path,
    "reference_count": ref_count,
  }
  if kid or pr:
    ref_images = reference_features(
      config, features, batch, num, epath.Path(workdir) / "eval" / "reference_features.npz"
    )
    if kid:
      result["kid"] = metrics.kid(feats.features, ref_images)
    if pr:
      result["precision"], result["recall"] = metrics.precision_recall(ref_images, feats.features)
  if jax.process_index() == 0:
    out = epath.Path(workdir) / "eval" / f"step_{int(step)}.json"
    earlier = _read_result(out)
    if earlier is not None and _settings(earlier) != _settings(result):
      # e.g. the in-training FID-2k before a final FID-50k: kept beside, not overwritten.
      num_, seed_ = _settings(earlier)
      out.replace(out.parent / f"step_{int(step)}.num{num_}.seed{seed_}.json")
    out.write_text(json.dumps(result, indent=2))
  if resume:
    progress.clear()
  return result


def _read_result(path):
  """A step's result JSON, or None when there is none (or it is unreadable)."""
  try:
    return json.loads(path.read_text()) if path.exists() else None
  except (OSError, ValueError):
    return None


def _settings(result):
  """What makes two results of one step comparable: the sample count and the sampling seed."""
  return result.get("num_samples"), result.get("seed")


class _Progress:
  """The running statistics of one evaluation, saved atomically so that it can resume.

  A file made for other settings (num, batch, seed, kid/pr, feature weights) is ignored, never merged: its batches
  would not be the ones this run draws.
  """

  def __init__(self, path, settings):
    self.path, self.settings = path, settings

  def load(self):
    import numpy as np

    from udpm_jax import metrics

    if not self.path.exists():
      return 0, None, None
    try:
      with self.path.open("rb") as fh, np.load(fh, allow_pickle=False) as f:
        settings = json.loads(str(f["settings"]))
        if settings != self.settings:
          logging.warning(
            "Ignoring %s: made for %s, this evaluation is %s.", self.path, settings, self.settings
          )
          return 0, None, None
        stats = metrics.FIDStats(count=f["count"], total=f["total"], outer=f["outer"])
        feats = metrics.FeatureSet(features=f["features"]) if "features" in f.files else None
        first = int(f["next_batch"])
    except (OSError, ValueError, KeyError) as e:
      logging.warning("Ignoring unreadable evaluation progress %s: %s", self.path, e)
      return 0, None, None
    logging.info("Resuming from %s: %d images done.", self.path, int(stats.count))
    return first, stats, feats

  def save(self, next_batch, stats, feats):
    import jax
    import numpy as np

    from udpm_jax import metrics

    if jax.process_index() != 0:
      return
    arrays = dict(count=stats.count, total=stats.total, outer=stats.outer)
    if feats is not None:
      arrays["features"] = feats.features
    metrics.savez_atomic(
      self.path, next_batch=next_batch, settings=np.array(json.dumps(self.settings)), **arrays
    )

  def clear(self):
    import jax

    if jax.process_index() == 0 and self.path.exists():
      self.path.unlink()


def reference_features(config, features, batch, num, path=None):
  """Features of the first `num` training images, for KID and precision/recall (cached at `path`
  as float32 with provenance, so that evaluating many steps computes them once)."""
  import jax
  import numpy as np

  from udpm_jax import data, metrics

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
  import numpy as np
  from etils import epath

  if not epath.Path(path).exists():
    return None
  try:
    with epath.Path(path).open("rb") as fh, np.load(fh, allow_pickle=False) as f:
      return f["features"], json.loads(str(f["provenance"]))
  except Exception as e:  # any unreadable file: numpy, zipfile and json each raise their own
    logging.warning("Ignoring unreadable reference features %s: %s", path, e)
    return None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from clu import metric_writers
  from etils import epath

  from udpm_jax import checkpoint

  # Resolves the steps (and fails on a mistyped workdir) before anything is written there.
  chosen, config = checkpoint.load_config(_WORKDIR.value, None if _ALL.value else _STEP.value)
  steps = checkpoint.all_steps(_WORKDIR.value) if _ALL.value else [chosen]
  features = None
  writer = metric_writers.create_default_writer(str(epath.Path(_WORKDIR.value) / "eval"))
  for step in steps:
    done = _read_result(epath.Path(_WORKDIR.value) / "eval" / f"step_{step}.json")
    if done is not None and _settings(done) == (_NUM.value, _SEED.value):
      logging.info("step %d already evaluated: %s", step, json.dumps(done))
      continue
    if features is None:
      features = fid_features(config, _INCEPTION.value)
    result = evaluate_step(
      _WORKDIR.value,
      step,
      _NUM.value,
      batch=_BATCH.value,
      seed=_SEED.value,
      reference_stats=_REFERENCE.value,
      kid=_KID.value,
      pr=_PR.value,
      features=features,
      reference_num=_REFERENCE_NUM.value,
      resume=_RESUME.value,
    )
    writer.write_scalars(
      result["step"],
      {k: v for k, v in result.items() if k in ("fid", "kid", "precision", "recall")},
    )
    logging.info("%s", json.dumps(result))
  writer.flush()


def run():
  _define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
