"""The sampler, latent tools, super-resolution and export, with oracle and cheap denoisers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import udpm_jax
from udpm_jax import export, sampling
from udpm_jax import process as proc


def _config(channels=1, size=8, classes=0):
  config = udpm_jax.configs.get_config("test")
  config.data.update(image_size=size, channels=channels, num_classes=classes)
  config.discriminator.conditional = classes > 0
  return config


def _oracle(sched, x0):
  """A 'network' that returns the true H^{l-1} x0 for the level its input lives at."""

  def fn(variables, x, t, labels):
    level = round(math.log(sched.image_size / x.shape[1], sched.scale))
    return jnp.broadcast_to(
      proc.H(sched, x0, level - 1), (x.shape[0],) + proc.H(sched, x0, level - 1).shape[1:]
    )

  return fn


def _cheap(variables, x, t, labels):
  """A deterministic non-linear stand-in network (nearest upsampling of tanh(x))."""
  up = jnp.repeat(jnp.repeat(jnp.tanh(x * variables["w"]), 2, axis=1), 2, axis=2)
  return up + t[:, None, None, None]


def test_oracle_sampler_reproduces_the_image_and_levels_are_consistent():
  config = _config()
  sched = proc.Schedule.from_config(config)
  x0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 8, 8, 1)), jnp.float32)
  sample = sampling.make_sample_fn(config, _oracle(sched, x0))
  levels = sample({}, jax.random.PRNGKey(0), num=8, return_levels=True)
  assert [x.shape[1] for x in levels] == [1, 2, 4, 8]
  np.testing.assert_allclose(levels[-1], jnp.broadcast_to(x0, (8, 8, 8, 1)), atol=1e-6)


def test_same_key_same_images_on_one_and_eight_devices():
  config = _config(channels=3, size=16, classes=10)
  variables = {"w": jnp.float32(1.3)}
  one = sampling.make_sample_fn(config, _cheap, devices=jax.devices()[:1])
  eight = sampling.make_sample_fn(config, _cheap, devices=jax.devices()[:8])
  key = jax.random.PRNGKey(4)
  a = one(variables, key, num=16)
  b = eight(variables, key, num=16)
  np.testing.assert_allclose(a, b, atol=1e-6)
  c = eight(variables, jax.random.PRNGKey(5), num=16)
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0.1
  # A count the devices do not divide (padded, then cut) gives the same images too.
  np.testing.assert_allclose(one(variables, key, num=6), eight(variables, key, num=6), atol=1e-6)
  # ... and each device's program works on its 1/8 of the padded batch: 20 → 24 → 3 per device.
  labels = jnp.zeros((20,), jnp.int32)
  hlo = eight.program.lower(variables, key, 20, labels, None, False).compile().as_text()
  assert "f32[3,16,16,3]" in hlo  # (without the padding, 20 images would run unsharded)
  # Fixed latents decode deterministically and equal the keyed draw.
  lat = sampling.sample_latents(one.schedule, jax.random.fold_in(key, 0), 16, 3)
  np.testing.assert_allclose(sampling.decode(eight, variables, lat), a, atol=1e-6)


def test_latent_tools():
  config = _config(channels=1, size=8)
  sched = proc.Schedule.from_config(config)
  variables = {"w": jnp.float32(0.7)}
  sample = sampling.make_sample_fn(config, _cheap)
  la = sampling.sample_latents(sched, jax.random.PRNGKey(1), 2, 1)
  lb = sampling.sample_latents(sched, jax.random.PRNGKey(2), 2, 1)
  img = lambda lat: np.asarray(sampling.decode(sample, variables, lat))
  for level in (1, 2, 3):
    same = sampling.perturb(sched, la, jax.random.PRNGKey(3), level, gamma=1.0)
    np.testing.assert_array_equal(img(same), img(la))
    moved = sampling.perturb(sched, la, jax.random.PRNGKey(3), level, gamma=0.5)
    changed = [not np.array_equal(x, y) for x, y in zip(moved, la)]
    assert changed == [i == sampling.latent_index(sched, level) for i in range(3)]
  grid = sampling.interpolate(la, lb, deltas=(1.0, 0.5, 0.0))
  out = img(grid)
  np.testing.assert_allclose(out[:2], img(la), atol=1e-6)
  np.testing.assert_allclose(out[4:], img(lb), atol=1e-6)
  # Variance preserving: the middle latent still has unit variance.
  mid = sampling.interpolate(la, lb, deltas=(math.sqrt(0.5),))
  big_a = sampling.sample_latents(sched, jax.random.PRNGKey(8), 4096, 1)
  big_b = sampling.sample_latents(sched, jax.random.PRNGKey(9), 4096, 1)
  assert float(jnp.var(sampling.interpolate(big_a, big_b, deltas=(0.6,))[0])) == pytest.approx(
    1.0, abs=0.06
  )
  assert mid[0].shape == la[0].shape
  four = sampling.interpolate(la, lb, la, lb, etas=(1.0, 0.0), deltas=(1.0, 0.0))
  np.testing.assert_allclose(img(four)[:2], img(la), atol=1e-6)
  all_swapped = lb
  for level in (1, 2, 3):
    all_swapped = sampling.swap(sched, la, all_swapped, level)
  np.testing.assert_array_equal(img(all_swapped), img(la))
  one_swap = sampling.swap(sched, la, lb, 3)
  assert np.array_equal(one_swap[0], la[0]) and np.array_equal(one_swap[1], lb[1])


def test_sampler_noise_has_the_posterior_covariance():
  """x_1 − μ_2(x_2, x̂) over many oracle samples has covariance Σ_2 (block and detail parts)."""
  config = _config(channels=1, size=8)
  sched = proc.Schedule.from_config(config)
  x0 = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (1, 8, 8, 1)), jnp.float32)
  sample = sampling.make_sample_fn(config, _oracle(sched, x0))
  n = 4096
  levels = sample({}, jax.random.PRNGKey(0), num=n, return_levels=True)
  x2, x1 = levels[1], levels[2]
  mu = proc.posterior_mean(sched, x2, jnp.broadcast_to(proc.H(sched, x0, 1), (n, 4, 4, 1)), 2)
  r = np.asarray(x1 - mu).reshape(n, -1)
  emp = np.cov(r, rowvar=False)
  eye = jnp.eye(16).reshape(16, 4, 4, 1)
  cov = np.asarray(proc.posterior_cov_apply(sched, eye, 2)).reshape(16, 16)
  assert np.abs(emp - cov).max() < 6 * cov.max() * math.sqrt(2 / n)


def test_super_resolution_with_the_oracle_is_consistent_with_its_input():
  config = _config(channels=1, size=8)
  sched = proc.Schedule.from_config(config)
  x0 = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (3, 8, 8, 1)), jnp.float32)
  for level in (1, 2):
    y = proc.H(sched, x0, level)
    up = sampling.make_upsample_fn(config, level, _oracle(sched, x0))
    out = up({}, jax.random.PRNGKey(0), y, plain_image=False)
    np.testing.assert_allclose(proc.H(sched, out, level), y, atol=1e-5)
    plain = y / float(sched.kernel_array.sum()) ** level  # an average-pooled image
    np.testing.assert_allclose(up({}, jax.random.PRNGKey(0), plain), out, atol=1e-5)
  with pytest.raises(ValueError, match="y has side 3; level 1 needs 4"):
    up = sampling.make_upsample_fn(config, 1, _oracle(sched, x0))
    up({}, jax.random.PRNGKey(0), jnp.zeros((1, 3, 3, 1)))


def test_arrays_placed_on_one_device_work_with_the_multi_device_programs():
  """Weights restored onto one device, keys and labels from other programs, images the sampler
  returned replicated over all devices: sampler and upsampler accept them all together."""
  config = _config(channels=3, size=16, classes=10)
  one = jax.devices()[0]
  variables = jax.device_put({"w": jnp.float32(1.3)}, one)
  key = jax.device_put(jax.random.PRNGKey(4), one)
  labels = jax.device_put(jnp.arange(8, dtype=jnp.int32) % 10, one)
  sample = sampling.make_sample_fn(config, _cheap)
  images = sample(variables, key, num=8, labels=labels)
  assert len(images.sharding.device_set) == len(jax.devices()) > 1
  np.testing.assert_allclose(
    images, sample({"w": jnp.float32(1.3)}, jax.random.PRNGKey(4), num=8), atol=1e-6
  )
  up = sampling.make_upsample_fn(config, 1, _cheap)
  low = proc.H(sample.schedule, images, 1) / 2.0  # the 'norm' box: an average-pooled image
  assert up(variables, key, low, labels=labels).shape == (8, 16, 16, 3)


def test_bad_labels_and_channels_are_refused():
  config = _config(channels=3, size=16, classes=10)
  sample = sampling.make_sample_fn(config, _cheap)
  variables, key = {"w": jnp.float32(1.0)}, jax.random.PRNGKey(0)
  with pytest.raises(
    ValueError, match=r"labels must lie in \[0, data.num_classes=10\); found \[30\]"
  ):
    sample(variables, key, num=2, labels=[0, 30])
  with pytest.raises(ValueError, match=r"labels have shape \(2,\); 4 images need shape \(4,\)"):
    sample(variables, key, num=4, labels=[0, 1])
  up = sampling.make_upsample_fn(config, 1, _cheap)
  with pytest.raises(ValueError, match=r"this model needs \(B, 8, 8, 3\)"):
    up(variables, key, jnp.zeros((2, 8, 8, 1)))


def test_export_round_trip(tmp_path):
  config = _config(channels=1, size=8)
  variables = {"w": jnp.float32(0.9)}
  sample = sampling.make_sample_fn(config, _cheap, devices=jax.devices()[:1])
  path = tmp_path / "sampler.jaxexport"
  export.export_sampler(config, variables, 4, path, denoise_fn=_cheap)
  loaded = export.load_exported(path)
  key = jax.random.PRNGKey(11)
  np.testing.assert_allclose(loaded(key), sample(variables, key, num=4), atol=1e-6)
  assert loaded(jax.random.PRNGKey(12)).shape == (4, 8, 8, 1)
