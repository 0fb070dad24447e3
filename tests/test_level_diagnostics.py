"""Per-level training diagnostics: level draw weights, D accuracy/update metrics, stall warnings."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import udpm_jax
from tests.toy_models import toy_pair
from udpm_jax import train
from udpm_jax import train_step as ts


def _spec_and_state(**training):
  config = udpm_jax.configs.get_config("test")
  config.training.update(**training)
  udpm_jax.configs.validate(config)
  gen, disc = toy_pair(config)
  g_tx, d_tx = ts.make_optimizers(config)
  spec = ts.StepSpec.from_config(config, gen, disc, g_tx, d_tx)
  init = ts.init_state(config, jax.random.PRNGKey(0), gen, disc, g_tx, d_tx)
  return config, spec, init


def _drawn_levels(spec, init, n):
  draw = jax.jit(lambda steps: ts.draw_level_table(spec, init.key, steps))
  level_d, level_g = draw(jnp.arange(n, dtype=jnp.int32))
  return np.asarray(level_d), np.asarray(level_g)


def test_level_weights_set_how_often_each_level_is_drawn():
  n = 6000
  _, spec, init = _spec_and_state(level_weights=(1.0, 0.0, 3.0))
  level_d, level_g = _drawn_levels(spec, init, n)
  for drawn in (level_d, level_g):
    counts = np.bincount(drawn, minlength=4)[1:]
    assert counts[1] == 0  # weight 0: never drawn
    # Binomial(6000, 1/4): std 34, so 4.5 std either side of 1500.
    assert abs(counts[0] - n / 4) < 150 and abs(counts[2] - 3 * n / 4) < 150
  # The D and G levels come from separate keys.
  assert np.mean(level_d == level_g) < 0.75


def test_uniform_levels_by_default():
  _, spec, init = _spec_and_state()
  level_d, _ = _drawn_levels(spec, init, 3000)
  counts = np.bincount(level_d, minlength=4)[1:]
  assert counts.min() > 850 and counts.max() < 1150  # 1000 ± 4.9 std each


@pytest.mark.parametrize(
  "weights, message",
  [((1.0, 2.0), "one per level"), ((1.0, -1.0, 1.0), ">= 0"), ((0.0, 0.0, 0.0), "not all 0")],
)
def test_bad_level_weights_are_refused(weights, message):
  config = udpm_jax.configs.get_config("test")
  config.training.level_weights = weights
  with pytest.raises(ValueError, match=message):
    udpm_jax.configs.validate(config)


def test_d_metrics_report_accuracy_and_update_size():
  config, spec, init = _spec_and_state()
  rng = np.random.default_rng(0)
  b, n, c = ts.global_batch_size(config), config.data.image_size, config.data.channels
  batch = {
    "image": jnp.asarray(rng.uniform(-1, 1, (b, n, n, c)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, config.data.num_classes, b), jnp.int32),
  }
  init, _ = ts.d_update(spec, init, batch, level=2)  # the warm-up's first update has lr 0
  state, m = ts.d_update(spec, init, batch, level=2)
  for name in ("d_real_acc", "d_fake_acc"):
    # A fraction of the batch: a multiple of 1/B in [0, 1].
    assert 0.0 <= m[name] <= 1.0 and float(m[name] * b) == pytest.approx(round(float(m[name] * b)))
  # The update's norm is the change of the parameters.
  delta = jax.tree.map(lambda new, old: new - old, state.d_params, init.d_params)
  leaves = jax.tree.leaves(delta)
  norm = math.sqrt(sum(float(jnp.sum(x**2)) for x in leaves))
  assert float(m["d_update_norm"]) == pytest.approx(norm, rel=1e-4)
  assert norm > 0


def test_stalled_level_warns_once_after_patience(caplog):
  monitor = train.StalledLevelMonitor(patience=3, tol=0.01)
  at_chance = {"d_loss/level_1": 0.40, "d_loss/level_3": math.log(2) + 0.005, "d_loss": 0.5}
  assert monitor.update(100, at_chance) == []
  assert monitor.update(200, at_chance) == []
  # A departure resets the count.
  assert monitor.update(300, {"d_loss/level_3": 0.60}) == []
  assert monitor.update(400, at_chance) == []
  assert monitor.update(500, at_chance) == []
  with caplog.at_level("WARNING"):
    assert monitor.update(600, at_chance) == [3]
  assert "Level 3's discriminator has stayed at chance" in caplog.text
  assert "step 600" in caplog.text
  assert monitor.update(700, at_chance) == []  # warned once
