"""The compute report: UDPM's sampling cost claim checked on the tiny config's real network."""

import numpy as np

import udpm_jax
from udpm_jax import bench


def test_sampler_costs_under_a_third_of_one_full_resolution_call():
  config = udpm_jax.configs.get_config("test")
  r = bench.report(config, batch=4, repeats=1)
  f = r["flops"]
  per_level = [f["network_calls_per_level"][str(level)] for level in (1, 2, 3)]
  # Each level halves the side: the network's cost falls roughly 4× per level.
  assert per_level[0] > 3 * per_level[1] > 9 * per_level[2] > 0
  assert f["network_calls_total"] == sum(per_level)
  # Everything outside the network calls (posterior sampling, H, Hᵀ) is a tiny share.
  assert 0 < r["sampling"]["non_network_flops_share"] < 0.01
  assert f["ratio_full_sampler_vs_one_full_call"] < 0.33
  assert np.isfinite(r["sampling"]["images_per_second"]) and r["sampling"]["images_per_second"] > 0
