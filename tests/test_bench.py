"""The compute report: UDPM's sampling cost claim checked on the tiny config's real network."""

import json
import subprocess
import sys

import numpy as np
import pytest

import udpm_jax
from tools import fault_soak
from udpm_jax import benchmark


@pytest.mark.slow
def test_sampler_costs_under_a_third_of_one_full_resolution_call():
  config = udpm_jax.configs.get_config("test")
  r = benchmark.report(config, batch=4, repeats=1)
  f = r["flops"]
  per_level = [f["network_calls_per_level"][str(level)] for level in (1, 2, 3)]
  # Each level halves the side: the network's cost falls roughly 4× per level.
  assert per_level[0] > 3 * per_level[1] > 9 * per_level[2] > 0
  assert f["network_calls_total"] == sum(per_level)
  # Everything outside the network calls (posterior sampling, H, Hᵀ) is a tiny share.
  assert 0 < r["sampling"]["non_network_flops_share"] < 0.01
  assert f["ratio_full_sampler_vs_one_full_call"] < 0.33
  assert np.isfinite(r["sampling"]["images_per_second"]) and r["sampling"]["images_per_second"] > 0


@pytest.mark.slow
def test_training_report_measures_every_level_and_reports_progress():
  config = udpm_jax.configs.get_config("test")
  snapshots = []
  r = benchmark.report(config, batch=2, train_batch=8, repeats=1, on_progress=snapshots.append)
  t = r["training"]
  rows = [t["per_level"][str(level)] for level in (1, 2, 3)]
  # Expected step = one D and one G update at uniformly drawn levels.
  expected = np.mean([row["d_seconds"] for row in rows]) + np.mean(
    [row["g_seconds"] for row in rows]
  )
  np.testing.assert_allclose(t["expected_step_seconds"], expected, rtol=1e-12)
  np.testing.assert_allclose(t["images_per_second"], 8 / expected, rtol=1e-12)
  # The D update at level 1 sees the largest images: it costs more FLOPs than at level 3.
  assert rows[0]["d_flops"] > 2 * rows[2]["d_flops"] > 0
  assert t["mfu_vs_bf16_peak"] is None  # no peak is known for a CPU
  # Progress: the sampling part, then one snapshot per program (2 per level), all marked partial.
  assert len(snapshots) == 7 and all(s["partial"] for s in snapshots)
  assert "training" not in snapshots[0] and snapshots[0]["sampling"] == r["sampling"]
  counts = [sum(len(row) for row in s["training"]["per_level"].values()) for s in snapshots[1:]]
  assert counts == [3 * i for i in range(1, 7)]
  assert "partial" not in r


def test_mfu_peak_by_device_name_and_compute_dtype():
  assert benchmark.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
  # A TPU v5e reports itself as "TPU v5 lite"; both names have the v5e peak.
  assert benchmark.peak_flops("TPU v5 lite", "bfloat16") == benchmark.peak_flops(
    "TPU v5e", "bfloat16"
  )
  assert benchmark.peak_flops("TPU v5 lite", "bfloat16") == 197e12
  # float32 compute has no 16-bit peak to compare with; an unknown device has none at all.
  assert benchmark.peak_flops("NVIDIA H100 80GB HBM3", "float32") is None
  assert benchmark.peak_flops("cpu", "bfloat16") is None


@pytest.mark.slow
def test_winograd_side_by_side_times_discriminator_updates_and_samplers_and_compares_outputs(
  tmp_path,
):
  """tools.bench_winograd on the tiny config (16², D input sides 16 / 8 / 4): levels 1 and 2 reach
  the Winograd minimum side 8; both programs of each pair run and compute the same D loss, logits,
  R1 penalty and images up to rounding."""
  out = tmp_path / "winograd.json"
  cmd = [sys.executable, "-m", "tools.bench_winograd", "--config=configs/test.py", "--batch=4"]
  cmd += ["--repeats=1", f"--out={out}"]
  subprocess.run(cmd, check=True, env=fault_soak.subprocess_env(), cwd=fault_soak.REPO)
  r = json.loads(out.read_text())
  assert r["winograd_min_side"] == 8 and list(r["d_update_per_level"]) == ["1", "2"]
  rows = [*r["d_update_per_level"].values(), r["sampler"]]
  for row in rows:
    assert row["direct_seconds"] > 0 and row["winograd_seconds"] > 0
    np.testing.assert_allclose(row["speedup"], row["direct_seconds"] / row["winograd_seconds"])
    # The same outputs up to float32 rounding (a wrong transform is off by O(1)).
    assert max(row["relative_difference"].values()) < 1e-4
  names = {"d_loss", "d_real_logit", "d_fake_logit", "r1"}
  assert all(set(row["relative_difference"]) == names for row in rows[:-1])
  assert set(r["sampler"]["relative_difference"]) == {"images"}
