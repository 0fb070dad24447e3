"""One training step equals the authors' PyTorch release (UDPM.step_disc, then UDPM.step_SR).

tests/data/official_step.npz was written by `tools/parity_step.py --write_fixture` from the
release's own step functions on a small network with the CIFAR10 process and loss weights (LPIPS
on), seeded weights, and injected draws (the level, the forward-process noise of x_l, D's instance
noise on fake, real and G's prediction), run in float64 (the release's own float32 run is up to
~1.4e-4 off that on a few cancelling GroupNorm-scale gradients). Here our D and G losses
(train_step.d_loss, train_step.g_loss) take the same draws in float32, Adam updates both (our G step seeing the
release's updated D, so that it is compared on its own), and at every level the losses, the
gradients and the updated weights agree to 1e-4 relative (max |ours − theirs| / max |theirs| per
tensor). Updated weights leave out the entries whose gradient is nonzero but
below 10 ε = 1e-7 on both sides (float32 noise, e.g. the attention key biases, whose exact gradient
is 0): Adam's first step lr·g/(|g| + ε) turns such noise into moves of up to ~lr of either sign
(see tools/parity_step.compare); our Adam on the stored gradients reproduces every entry.

Settings on both sides that differ from a CIFAR10 run: D's dropout is 0 (random masks cannot be
matched across frameworks) and the learning rate is the post-warm-up 1e-4 (warm-up gives lr 0 at
the first update, which would leave the weights trivially equal).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, assets_dir
from tools import parity_step as ps

FIXTURE = REPO / "tests" / "data" / "official_step.npz"


@pytest.fixture(scope="module")
def stored():
  from udpm_jax import convert

  fx = np.load(FIXTURE)
  config = ps.parity_config(json.loads(str(fx["overrides"])))
  keys, seeds, scales = (json.loads(str(fx[k])) for k in ("keys", "seeds", "scales"))
  g_sd, d_sd = (
    ps.full_state_dict(keys[net], seeds[net], config, scales[net])
    for net in ("generator", "discriminator")
  )
  g_vars = convert.convert_generator_state_dict(g_sd, config)
  d_vars = convert.convert_discriminator_state_dict(d_sd, config)
  draws = {k[len("draw/") :]: fx[k] for k in fx.files if k.startswith("draw/")}
  return fx, config, g_vars, d_vars, draws


def _lpips_params(config, level, request):
  if config.loss.lpips[level - 1] == 0:
    return None
  from udpm_jax import lpips

  assets = request.getfixturevalue("assets")
  return lpips.load_params(assets / "weights" / "lpips_vgg16.npz")


@pytest.mark.slow
@pytest.mark.parametrize("level", [1, 2, 3])
def test_one_step_equals_the_release(stored, level, request):
  fx, config, g_vars, d_vars, draws = stored
  assert config.loss.lpips[:2] == (4.0, 4.0) and config.loss.r1_gamma == (0.025, 0.1, 0.4)
  inits = d_vars["params"], g_vars["params"]
  theirs = ps.from_fixture(config, fx, level, *inits)
  lpips_params = _lpips_params(config, level, request)
  ours = ps.our_step(config, level, g_vars, d_vars, draws, lpips_params, d_for_g=theirs[2])
  diffs = ps.compare(config, ours, theirs, *inits)
  worse = {k: diffs[k] for k in ps.CHECKED if not diffs[k][0] <= ps.TOLERANCE}
  assert not worse, f"level {level}: beyond {ps.TOLERANCE} relative: {worse}"
  # The updates themselves (new − initial, in units of lr) agree too.
  assert diffs["d_update"][0] < 0.1 and diffs["g_update"][0] < 0.1, diffs
  # Left out of the weight comparison: a small share of noise-level gradients.
  for net, init in zip(("d", "g"), inits):
    assert diffs[f"{net}_noise_floor"][0] <= 0.02 * ps.flat_params(init).size, diffs
  # The optimisers alone: our Adam on the stored gradients gives the stored weights, every entry
  # (to the float16 storage of the updates: 2^-12 lr, ~6e-6 of D's small output weights).
  adam = ps.adam_check(config, theirs, *inits)
  assert adam["d_adam"][0] < 1e-5 and adam["g_adam"][0] < 1e-5, adam


def test_a_wrong_r1_weight_would_fail(stored):
  """10 % more R1 at level 3 moves D's gradients beyond the tolerance: the check has teeth."""
  fx, config, g_vars, d_vars, draws = stored
  wrong = ps.parity_config(json.loads(str(fx["overrides"])))
  wrong.loss.r1_gamma = (0.025, 0.1, 0.44)
  ours = ps.our_step(wrong, 3, g_vars, d_vars, draws, None, generator=False)
  theirs = ps.from_fixture(config, fx, 3, d_vars["params"], g_vars["params"])
  worst, _ = ps.tree_relative(ours[1], theirs[1])
  assert worst > 10 * ps.TOLERANCE, worst


def test_live_against_the_release():
  """The comparison with the release itself (needs torch, the lpips package and a clone of
  github.com/shadyabh/UDPM in UDPM_OFFICIAL_REPO); also checks that the stored values are
  current."""
  repo = os.environ.get("UDPM_OFFICIAL_REPO")
  if not repo:
    pytest.skip("UDPM_OFFICIAL_REPO (a clone of github.com/shadyabh/UDPM) is not set")
  pytest.importorskip("torch", reason="torch is not installed")
  pytest.importorskip("lpips", reason="the lpips package is not installed")
  if assets_dir() is None:
    pytest.skip("shared assets (LPIPS weights) not found")
  weights = assets_dir() / "weights" / "lpips_vgg16.npz"
  tool = "tools/parity_step.py"
  cmd = [sys.executable, tool, f"--udpm_repo={repo}", f"--lpips_weights={weights}"]
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
  assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
  assert "stored fixture: current" in run.stdout, run.stdout[-4000:]
