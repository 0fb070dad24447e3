"""The jitted train step with small stand-in networks: R1, EMA, warm-up, determinism, devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import udpm_jax
from tests.toy_models import toy_pair
from udpm_jax import losses, sharding
from udpm_jax import train_step as ts


def _config(**training):
  config = udpm_jax.configs.get_config("test")
  config.training.update(**training)
  return config


def _batches(config, n, seed=0):
  rng = np.random.default_rng(seed)
  size, c = config.data.image_size, config.data.channels
  b = ts.global_batch_size(config)
  return [
    {
      "image": rng.uniform(-1, 1, (b, size, size, c)).astype(np.float32),
      "label": rng.integers(0, config.data.num_classes, b).astype(np.int32),
    }
    for _ in range(n)
  ]


def _spec(config):
  gen, disc = toy_pair(config)
  return ts.StepSpec.from_config(config, gen, disc, *ts.make_optimizers(config))


def _init(config, mesh, spec):
  return ts.jit_init(config, mesh, spec.gen, spec.disc, spec.g_tx, spec.d_tx)(jax.random.PRNGKey(0))


def _setup(config, devices):
  """(mesh, state at seed 0, jitted step, the step spec) with the toy networks."""
  mesh = sharding.make_mesh(devices)
  spec = _spec(config)
  return mesh, _init(config, mesh, spec), ts.jit_train_step(config, mesh, spec), spec


def _run(config, devices, batches):
  mesh, state, step, _ = _setup(config, devices)
  metrics = []
  for b in batches:
    state, m = step(state, sharding.to_global_batch(b, mesh), None)
    metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


def test_one_device_equals_eight_devices():
  config = _config()
  batches = _batches(config, 3)
  s1, m1 = _run(config, jax.devices()[:1], batches)
  s8, m8 = _run(config, jax.devices()[:8], batches)
  assert len(jax.devices()) == 8
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s8)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(m1, m8):
    assert a["level_d"] == b["level_d"] and a["level_g"] == b["level_g"]
    np.testing.assert_allclose(a["g_loss"], b["g_loss"], rtol=1e-5)
    np.testing.assert_allclose(a["d_loss"], b["d_loss"], rtol=1e-5)
  assert all(np.isfinite(m["g_loss"]) and np.isfinite(m["d_loss"]) for m in m1)


def test_same_seed_same_result_and_scan_equals_single_steps():
  config = _config()
  batches = _batches(config, 4)
  s_a, _ = _run(config, jax.devices()[:2], batches)
  s_b, _ = _run(config, jax.devices()[:2], batches)
  for a, b in zip(jax.tree.leaves(s_a), jax.tree.leaves(s_b)):
    np.testing.assert_array_equal(a, b)
  # Two updates per dispatch through lax.scan give the same state as four single dispatches.
  config2 = _config(steps_per_dispatch=2)
  mesh, state, step, _ = _setup(config2, jax.devices()[:2])
  for i in (0, 2):
    stacked = {k: np.stack([batches[i][k], batches[i + 1][k]]) for k in batches[0]}
    state, metrics = step(state, sharding.to_global_batch(stacked, mesh, scan=True), None)
  assert metrics["g_loss"].shape == (2,)
  # (lax.switch inside the scan draws the same levels from the same keys as host dispatch.)
  for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(s_a)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_host_dispatch_reads_nothing_from_devices_between_log_steps_and_draws_the_same_levels(
  monkeypatch,
):
  config = _config(log_every=4)
  mesh, state, step_fn, spec = _setup(config, jax.devices()[:2])
  draw = jax.jit(lambda state: ts.draw_levels(spec, state.key, state.step))
  # (JAX's transfer guard does not see fetches on the CPU backend, so fetches are counted.)
  fetches = []
  device_get = jax.device_get
  monkeypatch.setattr(jax, "device_get", lambda x: fetches.append(1) or device_get(x))
  seen = set()
  for s, b in enumerate(_batches(config, 8)):
    expected = tuple(int(v) for v in device_get(draw(state)))  # the in-program draw
    fetches.clear()
    state, m = step_fn(state, sharding.to_global_batch(b, mesh), None, step=s)
    # One fetch of the key at the start, one of the level table per block of log_every steps.
    assert len(fetches) == (2 if s == 0 else 1 if s % 4 == 0 else 0), (s, len(fetches))
    assert (int(m["level_d"]), int(m["level_g"])) == expected
    seen |= set(expected)
  assert len(seen) > 1  # the test sees more than one level's programs
  fetches.clear()
  step_fn(state, sharding.to_global_batch(b, mesh), None)  # without the step: read from the state
  assert len(fetches) == 2  # the state's step (8), then the table of the block it starts


def test_host_dispatch_compiles_every_drawable_level_at_the_first_step(caplog):
  """All 2L programs are compiled at the first step, and later steps that draw other levels
  compile nothing; a level of weight 0 is never compiled."""
  config = _config(log_every=4, level_weights=(1.0, 0.0, 1.0))
  mesh, state, step_fn, spec = _setup(config, jax.devices()[:1])
  batches = [sharding.to_global_batch(b, mesh) for b in _batches(config, 8)]

  def compiles():
    return [r for r in caplog.records if r.getMessage().startswith("Compiling ")]

  caplog.set_level("INFO")
  with jax.log_compiles(True):
    state, m = step_fn(state, batches[0], None, step=0)
    first = [r.getMessage().split(" ")[1] for r in compiles()]
    report = [r.getMessage() for r in caplog.records if "training programs" in r.getMessage()]
    caplog.clear()
    seen = {(int(m["level_d"]), int(m["level_g"]))}
    for s, b in enumerate(batches[1:], start=1):
      state, m = step_fn(state, b, None, step=s)
      seen.add((int(m["level_d"]), int(m["level_g"])))
    later = [r.getMessage()[:80] for r in compiles()]
  assert {lvl for pair in seen for lvl in pair} == {1, 3}  # both drawable levels were drawn
  assert not later, later
  assert (first.count("jit(d_update)"), first.count("jit(g_update)")) == (2, 2), first
  # The log gives each program's compile time, by name.
  assert len(report) == 1 and report[0].startswith("Compiled 4 training programs"), report
  assert all(f"{u}/{lvl} " in report[0] for u in ("d_update", "g_update") for lvl in (1, 3))
  assert "/2 " not in report[0], report


def test_ema_is_the_hand_computation():
  config = _config(ema_decay=0.9)
  mesh = sharding.make_mesh(jax.devices()[:1])
  spec = _spec(config)
  state = _init(config, mesh, spec)
  step = jax.jit(functools.partial(ts.train_step, spec))
  params = [jax.device_get(state.g_params)]
  for b in _batches(config, 3):
    state, _ = step(state, b, None)
    params.append(jax.device_get(state.g_params))
  expect = params[0]
  for p in params[1:]:
    expect = jax.tree.map(lambda e, q: 0.9 * e + 0.1 * q, expect, p)
  for a, b in zip(jax.tree.leaves(jax.device_get(state.ema_params)), jax.tree.leaves(expect)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert int(state.step) == 3
  # The frozen buffer never moves.
  np.testing.assert_array_equal(state.g_consts["buffers"]["freqs"], np.arange(1.0, 5.0))


def test_warmup_schedule_and_first_update_size():
  sched = ts.lr_schedule(1e-4, 5000)
  assert [float(sched(s)) for s in (0, 2500, 5000, 600_000)] == pytest.approx(
    [0.0, 5e-5, 1e-4, 1e-4]
  )
  assert float(ts.lr_schedule(3e-4, 0)(0)) == pytest.approx(3e-4)
  # With warm-up, the very first Adam step has learning rate 0: parameters do not move.
  config = _config()
  config.optim.warmup_steps = 10
  mesh = sharding.make_mesh(jax.devices()[:1])
  spec = _spec(config)
  state0 = jax.device_get(_init(config, mesh, spec))
  state1, _ = jax.jit(functools.partial(ts.train_step, spec))(state0, _batches(config, 1)[0], None)
  for a, b in zip(jax.tree.leaves(state0.g_params), jax.tree.leaves(state1.g_params)):
    np.testing.assert_array_equal(a, b)
  # Without warm-up, Adam's first update moves each weight by lr · sign(gradient).
  config.optim.warmup_steps = 0
  spec = _spec(config)
  state0 = jax.device_get(_init(config, mesh, spec))
  state1, _ = jax.jit(functools.partial(ts.train_step, spec))(state0, _batches(config, 1)[0], None)
  moved = np.concatenate(
    [
      np.abs(np.ravel(a - b))
      for a, b in zip(jax.tree.leaves(state1.d_params), jax.tree.leaves(state0.d_params))
    ]
  )
  assert np.median(moved) == pytest.approx(config.optim.d_lr, rel=1e-3)


def test_r1_penalty_equals_finite_differences():
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    w = jnp.asarray(rng.standard_normal((2, 3, 3, 2)))
    x = jnp.asarray(rng.standard_normal((3, 4, 4, 2)))

    def disc_fn(img):  # a non-linear "discriminator": (B,) logits
      return jnp.sum(jnp.tanh(img[:, :3, :3] * w[0] + img[:, 1:, 1:] ** 2 * w[1]), axis=(1, 2, 3))

    penalty, logits = losses.r1_penalty(disc_fn, x)
    np.testing.assert_allclose(logits, disc_fn(x))
    eps = 1e-6
    flat = np.asarray(x).reshape(3, -1)
    fd = np.zeros_like(flat)
    for j in range(flat.shape[1]):
      e = np.zeros_like(flat)
      e[:, j] = eps
      up = disc_fn(jnp.asarray((flat + e).reshape(x.shape)))
      down = disc_fn(jnp.asarray((flat - e).reshape(x.shape)))
      fd[:, j] = (up - down) / (2 * eps)
    assert float(penalty) == pytest.approx(np.mean(np.sum(fd**2, axis=1)), rel=1e-7)


def test_d_noise_schedule_and_gan_losses():
  assert float(losses.d_noise_std(0, 0.4, 0.99, 1000)) == pytest.approx(0.4)
  assert float(losses.d_noise_std(999, 0.4, 0.99, 1000)) == pytest.approx(0.4)
  assert float(losses.d_noise_std(2500, 0.4, 0.99, 1000)) == pytest.approx(0.4 * 0.99**2)
  z = jnp.array([-2.0, 0.0, 3.0])
  assert float(losses.d_loss_fake(z)) == pytest.approx(np.mean(np.log1p(np.exp(z))))
  assert float(losses.g_loss_adv(z)) == pytest.approx(np.mean(np.log1p(np.exp(-z))))
  assert float(losses.l1(z, 0 * z)) == pytest.approx(5 / 3)


def test_lpips_weight_without_function_is_refused():
  config = _config()
  config.loss.lpips = (1.0, 0.0, 0.0)
  with pytest.raises(ValueError, match="loss.lpips has positive weights"):
    _spec(config)


@pytest.mark.slow
def test_discriminator_draws_separate_dropout_masks_for_real_and_fake(monkeypatch):
  """The release calls D twice (fake, real) in training mode: independent dropout masks. With
  dropout on the logit (the release's quirk) a dropped logit is exactly 0, so equal zero patterns
  over a batch would mean one shared mask."""
  config = _config()
  config.discriminator.update(dropout=0.5, quirk_logit_dropout=True)
  config.loss.lpips = (0.0, 0.0, 0.0)
  mesh = sharding.make_mesh(jax.devices()[:1])
  spec, init_fn, _ = ts.build(config, mesh)
  seen = {}

  def recording(name, loss_fn):
    def fn(logits):
      jax.debug.callback(lambda v: seen.setdefault(name, np.asarray(v)), logits)
      return loss_fn(logits)

    return fn

  monkeypatch.setattr(losses, "d_loss_fake", recording("fake", losses.d_loss_fake))
  monkeypatch.setattr(losses, "d_loss_real", recording("real", losses.d_loss_real))
  batch = {k: jnp.asarray(v) for k, v in _batches(config, 1)[0].items()}
  ts.d_update(spec, init_fn(jax.random.PRNGKey(0)), batch, level=2)
  dropped_fake, dropped_real = seen["fake"] == 0, seen["real"] == 0
  n = len(dropped_fake)
  assert 0 < dropped_fake.sum() < n and 0 < dropped_real.sum() < n  # the mask is active
  assert not np.array_equal(dropped_fake, dropped_real)
