"""Preemption and damage: stop signals save the step reached, damaged checkpoints are moved aside,
a full or unwritable workdir is refused, and the notebook restore reads only the generator."""

import os
import random
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

import udpm_jax
from tests.runs import assert_same_weights, subprocess_env, train_cli, tree_digests
from udpm_jax import checkpoint, preemption, sharding
from udpm_jax import train_step as ts


def test_stop_requests_turn_signals_into_a_flag_and_restore_the_handlers():
  before = {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS}
  with preemption.StopRequests() as stop:
    assert stop.should_stop(3, at_log_step=False) is None
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGTERM)  # the first signal is the one reported
    assert stop.should_stop(4, at_log_step=False) == "SIGUSR1"
  assert {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS} == before
  with pytest.raises(KeyboardInterrupt), preemption.StopRequests():
    os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C asks for a clean stop,
    os.kill(os.getpid(), signal.SIGINT)  # the second one interrupts


@pytest.mark.slow
def test_sigterm_saves_the_step_reached_and_the_resumed_run_is_bit_exact(reference_run, tmp_path):
  # Signalled as soon as step `trigger` is logged (every step is, here) plus a random delay:
  # the run finishes its step, saves it, and exits with EXIT_PREEMPTED.
  rng = random.Random(0)
  trigger, delay = rng.randint(1, 4), rng.uniform(0.0, 0.2)
  log = tmp_path / "log.txt"
  cmd = train_cli(
    tmp_path / "run", "--config.training.log_every=1", "--config.training.ckpt_every=4"
  )
  with open(log, "w") as f:
    p = subprocess.Popen(cmd, env=subprocess_env(), stdout=f, stderr=subprocess.STDOUT)
    while p.poll() is None and not re.search(rf"\[{trigger}\] d_", log.read_text()):
      time.sleep(0.01)
    assert p.poll() is None, "the run ended before the signal: " + log.read_text()[-2000:]
    time.sleep(delay)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=600) == preemption.EXIT_PREEMPTED, log.read_text()[-3000:]
  text = log.read_text()
  saved = int(re.search(r"SIGTERM: saved step (\d+)", text).group(1))
  reached = max(int(s) for s in re.findall(r"\[(\d+)\] d_", text))
  assert trigger <= saved == reached < 8, text[-2000:]
  assert checkpoint.all_steps(tmp_path / "run")[-1] == saved
  assert "Traceback" not in text
  done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"Resumed from step {saved}" in done.stderr
  assert_same_weights(reference_run, tmp_path / "run")


def _damage(step_dir, kind):
  files = sorted(
    (os.path.join(r, f) for r, _, fs in os.walk(step_dir / "state") for f in fs),
    key=os.path.getsize,
  )
  victim = files[-1]  # the largest array file
  if kind == "flipped byte":
    with open(victim, "r+b") as f:
      f.seek(os.path.getsize(victim) // 3)
      byte = f.read(1)
      f.seek(-1, 1)
      f.write(bytes([byte[0] ^ 0x01]))
  elif kind == "truncated file":
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 2)
  elif kind == "missing file":
    os.remove(victim)
  elif kind == "empty step directory":
    shutil.rmtree(step_dir)
    step_dir.mkdir()


def _resume_target(workdir):
  _, config = checkpoint.load_config(workdir, 6)
  _, init_fn, _ = ts.build(config, sharding.make_mesh())
  return config, jax.eval_shape(init_fn, jax.random.PRNGKey(config.seed))


@pytest.mark.parametrize(
  "kind", ["flipped byte", "truncated file", "missing file", "empty step directory"]
)
@pytest.mark.slow
def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_previous_one_used(
  reference_run, tmp_path, kind
):
  workdir = tmp_path / "run"
  shutil.copytree(reference_run, workdir)
  root = checkpoint.checkpoint_dir(workdir)
  assert checkpoint.all_steps(workdir) == [6, 8]  # (keep_checkpoints=2)
  _damage(root / "8", kind)
  config, target = _resume_target(workdir)
  step, state = checkpoint.restore_for_resume(workdir, config, 8, target)
  assert step == 6 and int(state.step) == 6
  assert (root / "corrupt_8").is_dir() and not (root / "8").exists()
  assert checkpoint.all_steps(workdir)[-1] == 6
  # Step 6 was restored as saved: its generator equals the notebook restore of the original.
  _, original = checkpoint.restore_params(reference_run, step=6, ema=False)
  for a, b in zip(jax.tree.leaves(state.g_params), jax.tree.leaves(original["params"])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_all_damaged_is_one_error_that_moves_nothing(reference_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference_run, workdir)
  root = checkpoint.checkpoint_dir(workdir)
  for step in checkpoint.all_steps(workdir):
    _damage(root / str(step), "missing file")
  before = tree_digests(workdir)
  config, target = _resume_target(workdir)
  with pytest.raises(
    checkpoint.CheckpointError, match=r"Every checkpoint .* is damaged.*step 8: 1"
  ):
    checkpoint.restore_for_resume(workdir, config, 8, target)
  assert tree_digests(workdir) == before
  # Another config is not damage: refused, nothing moved, even when the latest step is damaged.
  shutil.rmtree(root / "6")
  shutil.copytree(checkpoint.checkpoint_dir(reference_run) / "6", root / "6")
  _damage(root / "8", "empty step directory")
  config.seed = 5
  with pytest.raises(checkpoint.CheckpointError, match="seed: checkpoint 0, now 5"):
    checkpoint.restore_for_resume(workdir, config, 8, target)
  assert (root / "8").exists() and not (root / "corrupt_8").exists()


@pytest.mark.slow
def test_training_resumes_past_a_damaged_checkpoint_to_the_same_weights(reference_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference_run, workdir)
  _damage(checkpoint.checkpoint_dir(workdir) / "8", "flipped byte")
  done = subprocess.run(
    train_cli(workdir), env=subprocess_env(), capture_output=True, text=True, timeout=900
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stderr.count("Checkpoint step 8 is damaged") == 1
  assert "differs from the digest recorded when it was saved" in done.stderr
  assert "Resumed from step 6" in done.stderr
  assert_same_weights(reference_run, workdir)


def test_unwritable_or_full_workdir_is_refused_before_training(tmp_path, monkeypatch):
  with pytest.raises(checkpoint.CheckpointError, match="not writable"):
    checkpoint.check_writable("/proc/udpm_jax_run", 10)
  checkpoint.check_writable(tmp_path, 10)
  assert os.listdir(checkpoint.checkpoint_dir(tmp_path)) == []  # the probe file is gone
  monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 2**20))
  with pytest.raises(checkpoint.CheckpointError, match=r"1\.0 MiB free, less than one checkpoint"):
    checkpoint.check_writable(tmp_path, 5 * 2**20)


@pytest.mark.slow
def test_a_save_that_fails_for_space_leaves_the_previous_checkpoints_intact(
  reference_run, tmp_path
):
  """A file-size limit makes every large write fail as a full disk would (EFBIG)."""
  workdir = tmp_path / "run"
  shutil.copytree(reference_run, workdir)
  before = tree_digests(checkpoint.checkpoint_dir(workdir) / "8")

  cmd = train_cli(workdir, "--config.training.num_steps=10")
  # The training module run under a 1 MiB file-size limit, SIGXFSZ ignored so that writes fail
  # with EFBIG instead of killing the process.
  limited = (
    "import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20)); "
    f"sys.argv = {cmd[2:]!r}; runpy.run_module('udpm_jax.main', run_name='__main__')"
  )
  env = {**subprocess_env(), "JAX_COMPILATION_CACHE_DIR": ""}  # the cache writes big files too
  done = subprocess.run(
    [cmd[0], "-c", limited], env=env, capture_output=True, text=True, timeout=900
  )
  assert done.returncode == 1, done.stderr[-3000:]
  assert "error: CheckpointError: Could not write checkpoint step 10" in done.stderr
  assert "(the disk is full)" in done.stderr and "steps [6, 8]" in done.stderr
  assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr
  assert tree_digests(checkpoint.checkpoint_dir(workdir) / "8") == before
  assert checkpoint.verify_digests(checkpoint.checkpoint_dir(workdir) / "8") is None


def _bytes_read() -> int:
  with open("/proc/self/io") as f:
    return int(dict(line.split(": ") for line in f.read().splitlines())["rchar"])


@pytest.mark.slow
def test_notebook_restore_reads_only_the_generator(reference_run):
  _, config = checkpoint.load_config(reference_run)
  _, init_fn, _ = ts.build(config, sharding.make_mesh(jax.devices()[:1]))
  target = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  start = _bytes_read()
  reader = checkpoint.make_manager(reference_run, config, read_only=True)
  _, state = checkpoint.restore_state(reader, target, 8)
  reader.close()
  full = _bytes_read() - start
  start = _bytes_read()
  _, variables = udpm_jax.checkpoint.restore_params(reference_run)
  lean = _bytes_read() - start
  assert lean < 0.5 * full, (lean, full)
  for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(state.ema_params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_fault_soak_three_interruptions_end_bit_identical(reference_run, tmp_path):
  """tools/fault_soak.py at CI size: SIGTERM, kill -9 mid-save and kill -9 at a random step."""
  from tools import fault_soak

  result = fault_soak.soak(tmp_path / "soak", reference_run, points=3, num_steps=8, ckpt_every=2)
  assert result["points"] == 3 and result["modes"] == {"sigterm": 1, "kill": 1, "kill_in_save": 1}
  assert result["max_steps_lost_after_sigterm"] == 0
  assert result["max_steps_lost_after_kill"] <= 2  # one checkpoint interval
  assert result["bit_identical_to_uninterrupted"]
