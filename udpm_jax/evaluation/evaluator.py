"""The evaluator: FID (and KID, precision/recall) of a generator's samples, the EDM protocol.

Image i of an evaluation comes from batch b = i // batch, sampled with key
fold_in(PRNGKey(seed), b) and label i mod K (class-balanced), goes through uint8 as if saved to PNG,
and then through the feature network (Inception pool3). The statistics are a `clu.metrics`
Collection (`FIDMetrics`, or `FIDAndFeatures` when KID or precision/recall keep the features),
updated per batch. One `Evaluator` serves the command line (`python -m udpm_jax.evaluate`) and the
training loop's periodic FID alike: the same programs, files and TensorBoard tags.
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import logging
from clu import metrics as clu_metrics
from etils import epath

from udpm_jax import checkpoint, image_io, metrics, sampling
from udpm_jax.evaluation import features as features_lib
from udpm_jax.evaluation import reference

FIDMetrics = clu_metrics.Collection.create(fid=metrics.FIDStats)
FIDAndFeatures = clu_metrics.Collection.create(fid=metrics.FIDStats, features=metrics.FeatureSet)
SCALARS = ("fid", "kid", "precision", "recall")  # written to TensorBoard as eval/<name>


class Evaluator:
  """Built once per run; `evaluate(variables, step, num)` any number of times.

  Args:
    config: the run's config (dataset, classes, eval.* defaults).
    workdir: where results (eval/step_<S>.json), the reference cache and partial progress go.
    batch: images per program call (samples and features alike).
    features: a `features.FeatureNet` (default: FID Inception from `inception_weights`, the
      config's `eval.inception_weights`, or the cached download), sampled and featurised in one
      sharded program; or any host function uint8 NHWC → (B, D), applied to fetched samples.
    reference_stats: a reference statistics file of the user's (default: the config's, else
      computed once from the training set and cached in the workdir).
    sample_fn: for a host `features` function, the `sampling.make_sample_fn` to sample with.
  """

  def __init__(
    self,
    config,
    workdir,
    *,
    batch: int = 250,
    features=None,
    inception_weights=None,
    reference_stats=None,
    sample_fn=None,
  ):
    self.config, self.workdir, self.batch = config, epath.Path(workdir), int(batch)
    self.features = features or features_lib.fid_features(config, inception_weights)
    self._reference_stats = reference_stats
    self._reference = None
    if isinstance(self.features, features_lib.FeatureNet):
      self._sample_features = features_lib.make_sample_features_fn(config, self.features)
    else:
      sample = sample_fn or sampling.make_sample_fn(config)

      def sample_features(variables, key, num, labels=None):
        images = sample(variables, key, num=num, labels=labels)
        return np.asarray(self.features(image_io.to_uint8(images)))

      self._sample_features = sample_features

  @property
  def reference(self):
    """(FIDStats, path, image count) of the run's reference, computed or read on first use."""
    if self._reference is None:
      self._reference = reference.run_reference(
        self.config, self.features, self.workdir, self.batch, self._reference_stats
      )
    return self._reference

  def evaluate(
    self, variables, step, num, *, seed=0, kid=False, pr=False, resume=True, save_every_s=60.0
  ) -> dict:
    """FID (KID, precision/recall) of `num` samples of `variables`; writes eval/step_<step>.json.

    With `resume`, the statistics so far are saved to eval/step_<step>.partial.npz every
    `save_every_s` seconds, and a later call with the same step, num, batch, seed, kid/pr and
    feature weights picks up from there: an interrupted 50k-sample evaluation loses at most a
    minute of work.
    """
    ref, ref_path, ref_count = self.reference
    keep = bool(kid or pr)
    collection = FIDAndFeatures if keep else FIDMetrics
    k = self.config.data.num_classes
    num_batches = -(-num // self.batch)
    progress = _Progress(
      self.workdir / "eval" / f"step_{int(step)}.partial.npz",
      collection,
      dict(
        step=int(step),
        num=int(num),
        batch=self.batch,
        seed=int(seed),
        keep_features=keep,
        feature_weights_sha256=getattr(self.features, "weights_digest", None),
      ),
    )
    first, stats = progress.load() if resume else (0, None)
    stats = stats or collection.empty()
    start = last_save = time.time()
    for b in range(first, num_batches):
      n = min(self.batch, num - b * self.batch)
      labels = (np.arange(b * self.batch, (b + 1) * self.batch) % k) if k else None
      key = jax.random.fold_in(jax.random.PRNGKey(seed), b)
      f = self._sample_features(variables, key, self.batch, labels)[:n]
      stats = stats.merge(collection.single_from_model_output(features=f))
      done = b * self.batch + n
      rate = (done - first * self.batch) / (time.time() - start)
      logging.info(
        "step %d: %d/%d samples (%.1f images/s, %.0f s left)",
        step,
        done,
        num,
        rate,
        (num - done) / rate,
      )
      if resume and b + 1 < num_batches and time.time() - last_save >= save_every_s:
        progress.save(b + 1, stats)
        last_save = time.time()
    result = {
      "step": int(step),
      "num_samples": int(num),
      "seed": int(seed),
      "fid": metrics.fid(stats.fid, ref),
      "reference_stats": ref_path,
      "reference_count": ref_count,
    }
    if keep:
      ref_feats = reference.reference_features(
        self.config,
        self.features,
        self.batch,
        num,
        self.workdir / "eval" / "reference_features.npz",
      )
      if kid:
        result["kid"] = metrics.kid(stats.features.features, ref_feats)
      if pr:
        result["precision"], result["recall"] = metrics.precision_recall(
          ref_feats, stats.features.features
        )
    if jax.process_index() == 0:
      _write_result(self.workdir / "eval" / f"step_{int(step)}.json", result)
    if resume:
      progress.clear()
    return result


def write_scalars(writer, result: dict) -> None:
  """The result's metrics as TensorBoard scalars eval/fid, eval/kid, … at its step."""
  scalars = {f"eval/{k}": v for k, v in result.items() if k in SCALARS}
  writer.write_scalars(result["step"], scalars)


def evaluate_variables(
  config,
  variables,
  step,
  workdir,
  num,
  *,
  batch=250,
  features=None,
  inception_weights=None,
  reference_stats=None,
  sample_fn=None,
  **kwargs,
):
  """`Evaluator(config, workdir, ...).evaluate(variables, step, num, **kwargs)` in one call."""
  evaluator = Evaluator(
    config,
    workdir,
    batch=batch,
    features=features,
    inception_weights=inception_weights,
    reference_stats=reference_stats,
    sample_fn=sample_fn,
  )
  return evaluator.evaluate(variables, step, num, **kwargs)


def evaluate_step(workdir, step, num, *, reference_num=None, **kwargs):
  """Metrics of checkpoint `step` (None = latest) with its EMA params; writes and returns them.

  Keyword arguments are those of `evaluate_variables`; `reference_num` overrides the run's
  config.eval.reference_num.
  """
  config, variables = checkpoint.restore_params(workdir, step=step, ema=True)
  step = checkpoint.load_config(workdir, step)[0]
  if reference_num is not None:
    config.eval.reference_num = reference_num
  return evaluate_variables(config, variables, step, workdir, num, **kwargs)


def read_result(workdir, step):
  """The result JSON of a step, or None when there is none (or it is unreadable)."""
  path = epath.Path(workdir) / "eval" / f"step_{int(step)}.json"
  try:
    return json.loads(path.read_text()) if path.exists() else None
  except (OSError, ValueError):
    return None


def settings(result):
  """What makes two results of one step comparable: the sample count and the sampling seed."""
  return result.get("num_samples"), result.get("seed")


def _write_result(path, result):
  earlier = read_result(path.parent.parent, result["step"])
  if earlier is not None and settings(earlier) != settings(result):
    # e.g. the in-training FID-2k before a final FID-50k: kept beside, not overwritten.
    num, seed = settings(earlier)
    path.replace(path.parent / f"step_{result['step']}.num{num}.seed{seed}.json")
  path.write_text(json.dumps(result, indent=2))


class _Progress:
  """The running statistics of one evaluation, saved atomically so that it can resume.

  A file made for other settings (num, batch, seed, kid/pr, feature weights) is ignored, never
  merged: its batches would not be the ones this run draws.
  """

  def __init__(self, path, collection, settings):
    self.path, self.collection, self.settings = path, collection, settings

  def load(self):
    if not self.path.exists():
      return 0, None
    try:
      with self.path.open("rb") as fh, np.load(fh, allow_pickle=False) as f:
        settings = json.loads(str(f["settings"]))
        if settings != self.settings:
          logging.warning(
            "Ignoring %s: made for %s, this evaluation is %s.", self.path, settings, self.settings
          )
          return 0, None
        parts = {"fid": metrics.FIDStats(count=f["count"], total=f["total"], outer=f["outer"])}
        if "features" in f.files:
          parts["features"] = metrics.FeatureSet(features=f["features"])
        first = int(f["next_batch"])
    except (OSError, ValueError, KeyError) as e:
      logging.warning("Ignoring unreadable evaluation progress %s: %s", self.path, e)
      return 0, None
    logging.info("Resuming from %s: %d images done.", self.path, int(parts["fid"].count))
    return first, self.collection.empty().replace(**parts)

  def save(self, next_batch, stats):
    if jax.process_index() != 0:
      return
    arrays = dict(count=stats.fid.count, total=stats.fid.total, outer=stats.fid.outer)
    if self.settings["keep_features"]:
      arrays["features"] = stats.features.features
    metrics.savez_atomic(
      self.path, next_batch=next_batch, settings=np.array(json.dumps(self.settings)), **arrays
    )

  def clear(self):
    if jax.process_index() == 0 and self.path.exists():
      self.path.unlink()
