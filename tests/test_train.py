"""Training end to end with the real tiny networks: learning, kill/resume, bad input, NaN stop."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import udpm_jax
from tests.conftest import REPO
from tests.runs import assert_same_weights, signal_when, subprocess_env, train_cli, tree_digests
from tests.toy_models import pooled_pixel_net
from udpm_jax import checkpoint, data, evaluation, sharding, train
from udpm_jax import process as proc
from udpm_jax import train_step as ts

pytestmark = pytest.mark.slow  # subprocess training runs (see tests/run.sh)


def test_killed_runs_resume_bit_exactly(reference_run, tmp_path):
  ckpt = tmp_path / "checkpoints"
  # 1) Kill while step 4's checkpoint is being written (its temporary directory exists).
  p = subprocess.Popen(
    train_cli(tmp_path), env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  killed = signal_when(
    p, lambda: ckpt.exists() and any(n.startswith("4.") and "tmp" in n for n in os.listdir(ckpt))
  )
  assert killed, "the run finished before it could be killed"
  assert checkpoint.all_steps(tmp_path) in ([2], [2, 4])
  # 2) Resume, and kill again as soon as step 6 is complete.
  p = subprocess.Popen(
    train_cli(tmp_path), env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  signal_when(p, lambda: 6 in checkpoint.all_steps(tmp_path))
  # 3) Resume to the end.
  subprocess.run(
    train_cli(tmp_path), env=subprocess_env(), check=True, capture_output=True, timeout=900
  )
  assert checkpoint.all_steps(tmp_path)[-1] == 8
  assert_same_weights(reference_run, tmp_path)  # bit-exact continuation


def test_restore_params_samples_and_errors(reference_run, tmp_path):
  config, variables = checkpoint.restore_params(reference_run)
  assert config.training.num_steps == 8 and tuple(config.process.alphas) == (0.5, 0.2, 1e-3)
  sample = udpm_jax.sampling.make_sample_fn(config)
  images = sample(variables, jax.random.PRNGKey(0), num=8)
  assert images.shape == (8, 16, 16, 3) and np.all(np.abs(images) <= 1)
  assert (reference_run / "samples.png").exists()
  # The sample CLI's library form: class-balanced PNGs, resumable (a second call writes nothing).
  from udpm_jax import sample_files

  out = tmp_path / "pngs"
  assert sample_files.sample_to_dir(reference_run, out, 10, batch=4, grid=True, npz=True) == 10
  names = sorted(p.name for p in out.glob("0*.png"))
  assert names[:3] == ["000000_0.png", "000001_1.png", "000002_2.png"] and len(names) == 10
  assert (out / "grid_levels.png").exists()
  assert np.load(out / "samples.npz")["images"].shape == (10, 16, 16, 3)
  first = (out / "000005_5.png").read_bytes()
  (out / "000005_5.png").unlink()
  assert (
    sample_files.sample_to_dir(reference_run, out, 10, batch=4) == 4
  )  # batch 1 (4 images) redone
  assert (out / "000005_5.png").read_bytes() == first
  # Continuing the folder with another seed or the raw weights would mix two sets: refused.
  with pytest.raises(ValueError, match="seed: 0 there, 1 now"):
    sample_files.sample_to_dir(reference_run, out, 12, batch=4, seed=1)
  with pytest.raises(ValueError, match="ema: True there, False now"):
    sample_files.sample_to_dir(reference_run, out, 12, batch=4, ema=False)
  assert (out / "000005_5.png").read_bytes() == first
  with pytest.raises(checkpoint.CheckpointError, match="No checkpoint found"):
    checkpoint.restore_params(tmp_path)
  with pytest.raises(checkpoint.CheckpointError, match="No checkpoint for step 5.*available: "):
    checkpoint.restore_params(reference_run, step=5)


def test_notebook_example_runs_against_the_trained_run(reference_run, tmp_path):
  """examples/sample.py (a jupytext notebook) executed as CI would a notebook."""
  env = {**subprocess_env(), "UDPM_WORKDIR": str(reference_run), "UDPM_EXAMPLE_OUT": str(tmp_path)}
  done = subprocess.run(
    [sys.executable, str(REPO / "examples" / "sample.py")],
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "interpolation endpoint equals image A: True" in done.stdout
  names = ("grid.png", "levels.png", "interpolation.png", "perturb.png", "superres.png")
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
  from PIL import Image

  n = 16  # configs/test.py image side; grids have a 1-pixel border between images
  assert Image.open(tmp_path / "grid.png").size == (4 * (n + 1) + 1,) * 2


def test_bad_inputs_leave_the_workdir_intact(reference_run, tmp_path):
  import shutil

  workdir = tmp_path / "copy"
  shutil.copytree(reference_run, workdir)
  before = tree_digests(workdir)

  def train(*overrides, at=workdir):
    return subprocess.run(
      train_cli(at, *overrides), env=subprocess_env(), capture_output=True, text=True, timeout=900
    )

  # Another network, process or seed in the same workdir: refused naming each change.
  out = train(
    "--config.model.model_channels=8",
    "--config.process.alphas=(0.9, 0.9, 0.9)",
    "--config.seed=7",
    "--config.training.num_steps=10",
  )
  assert out.returncode != 0 and "was started with another config" in out.stderr
  assert "model.model_channels: checkpoint 16, now 8" in out.stderr
  assert "process.alphas: checkpoint (0.5, 0.2, 0.001), now (0.9, 0.9, 0.9)" in out.stderr
  assert (
    "seed: checkpoint 0, now 7" in out.stderr
    and "num_steps" not in out.stderr.split("Only these")[0]
  )
  assert tree_digests(workdir) == before
  # A global batch of another size (and so another data order): refused.
  out = train("--config.training.batch_size=16", "--config.training.num_steps=10")
  assert out.returncode != 0 and "global batch size: checkpoint 8, now 16" in out.stderr
  # Resuming below the checkpoint's step is an error; at it, nothing to do and nothing written.
  out = train("--config.training.num_steps=4")
  assert out.returncode != 0 and "step 8, beyond training.num_steps=4" in out.stderr
  out = train()
  assert out.returncode == 0 and "complete at step 8: nothing to do" in out.stderr
  assert tree_digests(workdir) == before
  # A missing data path: refused before anything is written.
  fresh = tmp_path / "fresh"
  out = train("--config.data.source=folder", "--config.data.path=/nonexistent/images", at=fresh)
  assert out.returncode != 0 and "/nonexistent/images" in out.stderr and not fresh.exists()
  # Each refusal is one paragraph: no traceback, no noise from library threads.
  out = train("--config.seed=7")
  assert out.returncode == 1 and "main.py: error: CheckpointError: The run in" in out.stderr
  assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr
  out = train("--config.seed=7", "--traceback")  # the traceback on request
  assert out.returncode == 1 and "Traceback" in out.stderr
  assert tree_digests(workdir) == before


def test_l1_falls_on_a_fixed_batch_and_nan_stops_the_run(tmp_path, monkeypatch):
  config = udpm_jax.configs.get_config("test")
  # Regression terms only, so that the measured L1 is what the generator is trained on.
  config.loss.update(adv=(0.0, 0.0, 0.0))
  config.optim.update(g_lr=1e-3, d_lr=1e-3)
  mesh = sharding.make_mesh(jax.devices()[:2])
  spec, init_fn, step_fn = ts.build(config, mesh)
  gen = spec.gen
  state = init_fn(jax.random.PRNGKey(0))
  batch = next(
    data.make_iterator(config, global_batch_size=8, seed=0, process_index=0, process_count=1)
  )
  sched = proc.Schedule.from_config(config)
  x0 = jnp.asarray(batch["image"])
  inputs = {l: proc.q_sample(sched, x0, l, jax.random.PRNGKey(9)) for l in (1, 2)}

  def l1(s):  # the mean over levels 1 and 2 of |f(x_l) − H^{l−1}x0| / (Σw)^{l−1}
    return float(
      np.mean(
        [
          jnp.mean(
            jnp.abs(
              gen.apply({"params": s.g_params, **s.g_consts}, inputs[l], sched.t(l), batch["label"])
              - proc.H(sched, x0, l - 1)
            )
          )
          / 2.0 ** (l - 1)
          for l in (1, 2)
        ]
      )
    )

  before = l1(state)
  history = []
  for _ in range(20):
    state, m = step_fn(state, sharding.to_global_batch(batch, mesh), None)
    history.append(jax.device_get(m))
  assert all(np.isfinite(m["g_loss"]) and np.isfinite(m["d_loss"]) for m in history)
  after = l1(state)
  assert after < 0.8 * before, (before, after)

  # Non-finite data at step 3 stops the run with a clear error; step 2's checkpoint survives.
  real = data.make_iterator

  def poisoned(*args, **kwargs):
    for i, b in enumerate(real(*args, **kwargs)):
      if i == 2:
        b = {**b, "image": np.full_like(b["image"], np.nan)}
      yield b

  monkeypatch.setattr(data, "make_iterator", poisoned)
  # In-training evaluation at step 2, with cheap features standing in for Inception.
  monkeypatch.setattr(evaluation.features, "fid_features", lambda *a, **k: pooled_pixel_net())
  config.training.update(ckpt_every=2, log_every=1, eval_every=2)  # same step programs as above
  config.eval.update(num_samples=8, batch_size=8, reference_num=16)
  with pytest.raises(train.NonFiniteLossError, match="Non-finite loss"):
    train.train_and_evaluate(config, str(tmp_path))
  assert checkpoint.all_steps(tmp_path) == [2]
  result = json.loads((tmp_path / "eval" / "step_2.json").read_text())
  assert result["step"] == 2 and result["num_samples"] == 8 and result["reference_count"] == 16
  assert np.isfinite(result["fid"]) and result["fid"] > 0
  assert not (tmp_path / "eval" / "step_3.json").exists()
