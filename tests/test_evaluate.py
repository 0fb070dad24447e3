"""The evaluation protocol of `evaluate`: samples, uint8 round trip, reference statistics, JSON."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import udpm_jax
from tests.conftest import REPO
from tests.toy_models import pooled_pixel_features, pooled_pixel_net
from udpm_jax import checkpoint, data, evaluation, image_io, metrics, sampling, sharding
from udpm_jax import train_step as ts


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A run directory with an initialised (untrained) checkpoint at step 5: no training needed."""
  config = udpm_jax.configs.get_config("test")
  config.eval.update(reference_num=24)
  path = tmp_path_factory.mktemp("eval_run")
  _, init_fn, _ = ts.build(config, sharding.make_mesh())
  manager = checkpoint.make_manager(path, config)
  checkpoint.save(manager, 5, init_fn(jax.random.PRNGKey(0)), config, force=True)
  manager.wait_until_finished()
  manager.close()
  return path


def _features_by_hand(workdir, seed, num, batch):
  """The protocol by hand: batch b has key fold_in(PRNGKey(seed), b) and labels i mod K; only the
  first `num` images count; images go through uint8 as if saved to PNG."""
  config, variables = checkpoint.restore_params(workdir)
  sample = sampling.make_sample_fn(config)
  feats = []
  for b in range(-(-num // batch)):
    labels = np.arange(batch * b, batch * b + batch) % config.data.num_classes
    key = jax.random.fold_in(jax.random.PRNGKey(seed), b)
    images = sample(variables, key, num=batch, labels=labels)
    feats.append(pooled_pixel_features(image_io.to_uint8(images)))
  return np.concatenate(feats)[:num]


def test_fid_of_a_checkpoint_follows_the_protocol(workdir):
  result = evaluation.evaluate_step(
    workdir, None, 12, batch=8, seed=3, features=pooled_pixel_features
  )
  assert result["step"] == 5 and result["num_samples"] == 12 and result["reference_count"] == 24
  assert result["seed"] == 3
  assert json.loads((workdir / "eval" / "step_5.json").read_text()) == result
  ref, provenance = metrics.load_reference_stats(workdir / "eval" / "reference_stats.npz")
  assert int(ref.count) == 24 and provenance["split"] == "train"

  # The same FID by hand.
  config, _ = checkpoint.restore_params(workdir)
  feats = _features_by_hand(workdir, seed=3, num=12, batch=8)
  train_images, _ = data.load_arrays(config, split="train", limit=24)
  expected = metrics.fid(
    metrics.FIDStats.from_model_output(feats),
    metrics.FIDStats.from_model_output(pooled_pixel_features(train_images)),
  )
  np.testing.assert_allclose(result["fid"], expected, rtol=1e-9)
  assert result["fid"] > 1e-3

  # Deterministic, and a different seed gives different samples.
  again = evaluation.evaluate_step(workdir, 5, 12, batch=8, seed=3, features=pooled_pixel_features)
  assert again["fid"] == result["fid"]
  other = evaluation.evaluate_step(workdir, 5, 12, batch=8, seed=4, features=pooled_pixel_features)
  assert other["fid"] != result["fid"]

  # A different reference size recomputes the cached reference statistics instead of reusing them.
  fewer = evaluation.evaluate_step(
    workdir, 5, 12, batch=8, seed=3, features=pooled_pixel_features, reference_num=16
  )
  assert fewer["reference_count"] == 16 and fewer["fid"] != result["fid"]
  assert int(metrics.load_reference_stats(workdir / "eval" / "reference_stats.npz")[0].count) == 16


def test_reference_stats_made_by_other_feature_weights_are_recomputed(tmp_path):
  config = udpm_jax.configs.get_config("test")
  path = tmp_path / "ref.npz"

  def features_of(digest):
    def features(images):
      return pooled_pixel_features(images) * (2.0 if digest == "b" else 1.0)

    features.weights_digest = digest
    return features

  a = evaluation.reference_statistics(config, features_of("a"), batch=8, path=path, limit=16)
  assert metrics.load_reference_stats(path)[1]["feature_weights_sha256"] == "a"
  b = evaluation.reference_statistics(config, features_of("b"), batch=8, path=path, limit=16)
  assert metrics.load_reference_stats(path)[1]["feature_weights_sha256"] == "b"
  np.testing.assert_allclose(b.total, 2 * a.total, rtol=1e-12)
  # Features that do not say which weights they use trust the cache.
  again = evaluation.reference_statistics(
    config, pooled_pixel_features, batch=8, path=path, limit=16
  )
  np.testing.assert_array_equal(again.total, b.total)


def test_kid_and_precision_recall_use_cached_reference_features(workdir):
  config, _ = checkpoint.restore_params(workdir)
  featurized = []

  def counting(images):
    featurized.append(len(images))
    return pooled_pixel_features(images)

  kwargs = dict(batch=8, seed=5, kid=True, pr=True, features=counting, resume=False)
  first = evaluation.evaluate_step(workdir, 5, 12, **kwargs)
  train_images, _ = data.load_arrays(config, split="train", limit=12)
  ref = pooled_pixel_features(train_images)
  feats = _features_by_hand(workdir, seed=5, num=12, batch=8)
  assert first["kid"] == pytest.approx(metrics.kid(feats, ref), rel=1e-6, abs=1e-9)
  expected_pr = metrics.precision_recall(ref, feats)
  assert (first["precision"], first["recall"]) == pytest.approx(expected_pr)
  cached = np.load(workdir / "eval" / "reference_features.npz")["features"]
  np.testing.assert_allclose(cached, ref, rtol=1e-6)

  # Another step (here: the same one again) featurizes only its samples: 2 batches of 8.
  (workdir / "eval" / "step_5.json").unlink()
  featurized.clear()
  again = evaluation.evaluate_step(workdir, 5, 12, **kwargs)
  assert featurized == [8, 8] and again == first


def test_reference_size_is_checked_against_the_split_and_foreign_stats_are_kept(tmp_path):
  config = udpm_jax.configs.get_config("test")  # synthetic training split of 256 images
  size = len(data.make_source(config, split="train"))
  path = tmp_path / "ref.npz"
  featurized = []

  def counting(images):
    featurized.append(len(images))
    return pooled_pixel_features(images)

  evaluation.reference_statistics(config, counting, batch=64, path=path, limit=16)
  # "All images" is not satisfied by a cache of 16: recomputed over the whole split.
  whole = evaluation.reference_statistics(config, counting, batch=64, path=path, limit=None)
  assert int(whole.count) == size and sum(featurized) == 16 + size
  # A limit beyond the split is the whole split: the cache serves, nothing is featurized again.
  featurized.clear()
  again = evaluation.reference_statistics(config, counting, batch=64, path=path, limit=10 * size)
  assert featurized == [] and int(again.count) == size

  # Statistics made elsewhere (pytorch-fid's mu/sigma, no provenance) are used as given and never
  # overwritten, whatever the limit.
  foreign = tmp_path / "pytorch_fid.npz"
  np.savez(foreign, mu=np.zeros(3), sigma=np.eye(3))
  before = foreign.read_bytes()
  stats = evaluation.reference_statistics(config, counting, batch=64, path=foreign, limit=16)
  np.testing.assert_allclose(stats.cov, np.eye(3), atol=1e-12)
  assert featurized == [] and foreign.read_bytes() == before


def test_missing_checkpoint_step_is_a_clear_error(workdir):
  with pytest.raises(
    checkpoint.CheckpointError, match=r"No checkpoint for step 7 .*available: \[5\]"
  ):
    evaluation.evaluate_step(workdir, 7, 8, batch=8, features=pooled_pixel_features)


class _Interrupted(Exception):
  pass


def test_an_interrupted_evaluation_resumes_where_it_stopped(workdir):
  """Partial statistics saved after each batch: the resumed run draws only the remaining batches
  and ends with exactly the FID of an uninterrupted run; the progress file is removed at the end."""
  config, _ = checkpoint.restore_params(workdir)
  sample = sampling.make_sample_fn(config)
  calls, stop_after = [], [None]

  def counting(variables, key, num, labels):
    calls.append(key)
    if stop_after[0] is not None and len(calls) > stop_after[0]:
      raise _Interrupted
    return sample(variables, key, num=num, labels=labels)

  def run(seed=7, **kwargs):
    calls.clear()
    result = evaluation.evaluate_step(
      workdir,
      5,
      18,
      batch=4,
      seed=seed,
      features=pooled_pixel_features,
      sample_fn=counting,
      **kwargs,
    )
    (workdir / "eval" / "step_5.json").unlink()
    return result

  def interrupt():
    calls.clear()
    stop_after[0] = 3
    with pytest.raises(_Interrupted):
      evaluation.evaluate_step(
        workdir,
        5,
        18,
        batch=4,
        seed=7,
        features=pooled_pixel_features,
        sample_fn=counting,
        save_every_s=0.0,
      )
    stop_after[0] = None
    assert partial.exists() and not (workdir / "eval" / "step_5.json").exists()

  partial = workdir / "eval" / "step_5.partial.npz"
  full = run(resume=False)
  assert len(calls) == 5 and not partial.exists()

  interrupt()
  resumed = run(save_every_s=0.0)
  assert len(calls) == 2  # batches 3 and 4 of 0..4
  assert resumed["fid"] == full["fid"]
  assert not partial.exists()

  # Other settings (another seed) ignore the file instead of merging batches that are not theirs.
  interrupt()
  other = run(seed=8)
  assert len(calls) == 5 and other["fid"] != full["fid"]


def _features_with_digest(digest):
  def features(images):
    return pooled_pixel_features(images)

  features.weights_digest = digest
  return features


def test_a_reference_file_of_yours_is_checked_used_as_given_and_never_rewritten(tmp_path):
  config = udpm_jax.configs.get_config("test")
  mine = tmp_path / "shared_reference.npz"
  full = evaluation.reference_statistics(config, _features_with_digest("a"), 64, mine, limit=None)
  before = mine.read_bytes()
  # Another image count than the run asks for: used as given (it is the user's choice) ...
  used = evaluation.reference_statistics(
    config, _features_with_digest("a"), 64, mine, limit=16, given=True
  )
  assert int(used.count) == int(full.count) == 256 and mine.read_bytes() == before
  # ... but another feature network or dataset would give wrong numbers: refused, file kept.
  with pytest.raises(ValueError, match=r"feature weights a.*not b.*--reference_stats"):
    evaluation.reference_statistics(config, _features_with_digest("b"), 64, mine, 16, given=True)
  other = udpm_jax.configs.get_config("test")
  other.data.name = "another_dataset"
  with pytest.raises(ValueError, match="dataset 'synthetic', not 'another_dataset'"):
    evaluation.reference_statistics(other, _features_with_digest("a"), 64, mine, 16, given=True)
  other.data.name, other.data.image_size = config.data.name, 2 * config.data.image_size
  with pytest.raises(ValueError, match=r"describe \d+² images"):
    evaluation.reference_statistics(other, _features_with_digest("a"), 64, mine, 16, given=True)
  assert mine.read_bytes() == before
  # The workdir's own cache of another dataset is recomputed instead.
  other = udpm_jax.configs.get_config("test")
  other.data.name = "another_dataset"
  other.data.source = config.data.source
  cache = tmp_path / "cache.npz"
  shutil.copy(mine, cache)
  evaluation.reference_statistics(other, _features_with_digest("a"), 64, cache, limit=None)
  assert metrics.load_reference_stats(cache)[1]["dataset"] == "another_dataset"


def test_pytorch_fid_statistics_report_no_image_count(workdir, tmp_path):
  """mu/sigma files carry no count (the statistics hold a nominal one): the JSON says null."""
  feats = pooled_pixel_features(
    data.load_arrays(checkpoint.restore_params(workdir)[0], split="train", limit=32)[0]
  )
  ref = metrics.FIDStats.from_model_output(feats)
  path = tmp_path / "pytorch_fid_stats.npz"
  np.savez(path, mu=ref.mean, sigma=ref.cov)
  result = evaluation.evaluate_step(
    workdir, 5, 8, batch=8, features=pooled_pixel_features, reference_stats=str(path), resume=False
  )
  assert result["reference_count"] is None and result["reference_stats"] == str(path)
  (workdir / "eval" / "step_5.json").unlink()


def test_a_new_evaluation_of_a_step_keeps_the_earlier_one_of_other_settings(workdir):
  """E.g. in-training FID of a few samples, then the final FID of many: both results stay."""
  out = workdir / "eval" / "step_5.json"
  kwargs = dict(batch=8, features=pooled_pixel_features, resume=False)
  small = evaluation.evaluate_step(workdir, 5, 8, seed=1, **kwargs)
  again = evaluation.evaluate_step(workdir, 5, 8, seed=1, **kwargs)
  assert again == small and not (workdir / "eval" / "step_5.num8.seed1.json").exists()
  larger = evaluation.evaluate_step(workdir, 5, 16, seed=1, **kwargs)
  assert json.loads(out.read_text()) == larger
  assert json.loads((workdir / "eval" / "step_5.num8.seed1.json").read_text()) == small
  out.unlink()
  (workdir / "eval" / "step_5.num8.seed1.json").unlink()


def _evaluate_cli(workdir, *args):
  env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
  return subprocess.run(
    [sys.executable, "-m", "udpm_jax.evaluate", f"--workdir={workdir}", *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_cli_skips_only_the_same_evaluation_uses_the_runs_weights_and_refuses_a_wrong_workdir(
  workdir, tmp_path
):
  run = tmp_path / "run"
  shutil.copytree(workdir, run, ignore=shutil.ignore_patterns("eval"))
  (run / "eval").mkdir()
  done = {"step": 5, "num_samples": 12, "seed": 0, "fid": 1.0}
  (run / "eval" / "step_5.json").write_text(json.dumps(done))
  same = _evaluate_cli(run, "--num=12")  # the latest step, already evaluated so
  assert same.returncode == 0, same.stderr[-2000:]
  assert "step 5 already evaluated" in same.stderr

  # Another --num is evaluated anew; with the run's config naming local Inception weights
  # (offline clusters), those are what it loads — here a missing file, named in the error.
  metadata = run / "checkpoints" / "5" / "config" / "metadata"
  saved = json.loads(metadata.read_text())
  saved["eval"]["inception_weights"] = str(tmp_path / "local_inception.npz")
  metadata.write_text(json.dumps(saved))
  other = _evaluate_cli(run, "--num=50")
  assert other.returncode != 0 and "local_inception.npz" in other.stderr
  assert "already evaluated" not in other.stderr

  typo = tmp_path / "typo"
  bad = _evaluate_cli(typo, "--all")
  assert bad.returncode != 0 and "No checkpoint found" in bad.stderr
  assert not typo.exists()  # nothing written under a mistyped path


def test_an_unreadable_reference_features_cache_is_recomputed(tmp_path):
  config = udpm_jax.configs.get_config("test")
  path = tmp_path / "reference_features.npz"
  path.write_bytes(b"PK\x03\x04 a copy cut short")
  feats = evaluation.reference_features(config, pooled_pixel_features, 64, 16, path)
  expected = pooled_pixel_features(data.load_arrays(config, split="train", limit=16)[0])
  np.testing.assert_allclose(feats, expected, rtol=1e-6)
  np.testing.assert_array_equal(np.load(path)["features"], feats)


def test_one_sharded_program_samples_and_featurises_any_num_on_eight_devices(workdir):
  """The evaluator's fused program (sample → uint8 → features, `evaluation.FeatureNet`) gives the
  features of the host path (sampler, fetch, uint8, features) for a batch 8 does not divide, each
  device holding 1/8 of the padded batch, and only the features coming back."""
  assert len(jax.devices()) == 8
  config, variables = checkpoint.restore_params(workdir)
  net = pooled_pixel_net()
  fused = evaluation.make_sample_features_fn(config, net)
  key = jax.random.PRNGKey(4)
  labels = np.arange(12) % config.data.num_classes
  got = fused(variables, key, 12, labels)
  images = sampling.make_sample_fn(config)(variables, key, num=12, labels=labels)
  np.testing.assert_allclose(got, pooled_pixel_features(image_io.to_uint8(images)), atol=1e-6)
  assert got.shape == (12, 16 * config.data.channels)
  rep = sharding.replicated(sharding.make_mesh())
  args = jax.device_put((variables, None, key, jax.numpy.asarray(labels)), rep)
  out = fused.program(*args[:3], 12, args[3])
  assert {s.data.shape[0] for s in out.addressable_shards} == {2}  # 16 padded rows / 8 devices
  # The evaluator gives the same FID through either path.
  host = evaluation.evaluate_step(
    workdir, 5, 12, batch=12, features=pooled_pixel_features, resume=False
  )
  device = evaluation.evaluate_step(workdir, 5, 12, batch=12, features=net, resume=False)
  assert device["fid"] == pytest.approx(host["fid"], rel=1e-5)
