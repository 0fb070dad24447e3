"""tools/bench_vs_release.py on the small config: both sides timed, ratios from the timings."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_side_by_side_times_both_sides_at_every_level(tmp_path):
  repo = os.environ.get("UDPM_OFFICIAL_REPO")
  if not repo:
    pytest.skip("UDPM_OFFICIAL_REPO (a clone of github.com/shadyabh/UDPM) is not set")
  pytest.importorskip("torch", reason="torch is not installed")
  pytest.importorskip("lpips", reason="the lpips package (imported by their UDPM.py) is missing")
  out = tmp_path / "vs.json"
  cmd = [sys.executable, "-m", "tools.bench_vs_release", f"--udpm_repo={repo}", "--config=small"]
  cmd += ["--batch=4", "--repeats=1", f"--out={out}"]
  env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
  assert run.returncode == 0, run.stderr[-4000:]
  import json

  r = json.loads(out.read_text())
  theirs, ours = r["release"], r["udpm_jax"]
  for side in (theirs, ours):
    assert sorted(side["train"]["per_level"]) == ["1", "2", "3"]
    assert all(row["d_plus_g_seconds"] > 0 for row in side["train"]["per_level"].values())
    assert side["sampling"]["images_per_second"] > 0
  mean = sum(row["d_plus_g_seconds"] for row in theirs["train"]["per_level"].values()) / 3
  assert theirs["train"]["expected_step_seconds"] == pytest.approx(mean)
  assert r["ratios"]["train_speedup"] == pytest.approx(
    mean / ours["train"]["expected_step_seconds"]
  )
  assert r["ratios"]["sampling_speedup"] == pytest.approx(
    ours["sampling"]["images_per_second"] / theirs["sampling"]["images_per_second"]
  )
