"""Super-resolution measurement: units, PSNR, and a trained tiny model against nearest-neighbour."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import udpm_jax
from udpm_jax import data, models, super_resolution
from udpm_jax import process as proc


def test_low_resolution_is_in_image_units_and_psnr_matches_its_closed_form():
  config = udpm_jax.configs.get_config("test")
  x = jnp.full((2, 16, 16, 3), 0.3)
  for level in (1, 2, 3):
    y = super_resolution.low_resolution(config, x, level)
    assert y.shape == (2, 16 // 2**level, 16 // 2**level, 3)
    np.testing.assert_allclose(y, 0.3, atol=1e-6)
  np.testing.assert_allclose(super_resolution.psnr(x + 0.1, x), 10 * np.log10(4 / 0.01), rtol=1e-5)
  ups = super_resolution.classical_upsampling(jnp.full((1, 4, 4, 1), -0.5), 16)
  for out in ups.values():
    np.testing.assert_allclose(out, -0.5, atol=1e-6)


def _tiny_fashion_config(assets):
  config = udpm_jax.configs.get_config("fashion_mnist_demo")
  config.data.path = str(assets / "data" / "fashion-mnist")
  config.data.num_classes = 0
  config.discriminator.conditional = False
  config.model.update(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=())
  return config


@pytest.mark.slow
def test_trained_tiny_model_beats_nearest_neighbour_on_held_out_images(assets):
  """Level-1 L1 training (the generator's job at that level) for 150 steps, then 2× SR."""
  config = _tiny_fashion_config(assets)
  sched = proc.Schedule.from_config(config)
  train_x, _ = data.load_arrays(config, split="train", limit=2048)
  test_x, _ = data.load_arrays(config, split="test", limit=64)
  train_x = train_x.astype(np.float32) / 127.5 - 1.0
  gen = models.build_generator(config)
  variables = dict(models.init_generator(config, jax.random.PRNGKey(0)))
  params = variables.pop("params")
  tx = optax.adam(2e-3)
  t1 = sched.t(1)

  @jax.jit
  def step(params, opt, x0, key):
    def loss_fn(p):
      x1 = proc.q_sample(sched, x0, 1, key)
      pred = gen.apply({"params": p, **variables}, x1, jnp.full((x0.shape[0],), t1), None)
      return jnp.mean(jnp.abs(pred - x0))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  opt = tx.init(params)
  rng = np.random.default_rng(0)
  losses = []
  for i in range(150):
    batch = train_x[rng.integers(0, len(train_x), 32)]
    params, opt, loss = step(params, opt, batch, jax.random.PRNGKey(i))
    losses.append(float(loss))
  assert np.mean(losses[-20:]) < 0.7 * np.mean(losses[:5])
  report = super_resolution.measure(
    config, {"params": params, **variables}, test_x, None, 1, jax.random.PRNGKey(1), batch=32
  )
  assert report["udpm"]["psnr"] > report["nearest"]["psnr"] + 0.5, report


def test_images_to_upsample_are_checked_converted_and_keep_their_labels(tmp_path):
  import pytest

  config = udpm_jax.configs.get_config("test")  # 16², s = 2, RGB, 10 classes
  gray = np.arange(3 * 8 * 8, dtype=np.uint8).reshape(3, 8, 8)
  np.savez(tmp_path / "gray.npz", images=gray, labels=np.array([2, 0, 9]))
  images, labels = super_resolution.read_low_resolution(tmp_path / "gray.npz", config, level=1)
  assert images.shape == (3, 8, 8, 3) and labels.tolist() == [2, 0, 9]
  np.testing.assert_allclose(images[..., 2], gray / 127.5 - 1.0, atol=1e-6)  # gray → RGB
  with pytest.raises(ValueError, match=r"--level=2 of this run needs uint8 \(M, 4, 4, C\)"):
    super_resolution.read_low_resolution(tmp_path / "gray.npz", config, level=2)
  np.savez(tmp_path / "bad_labels.npz", images=gray, labels=np.array([2, 0, 10]))
  with pytest.raises(data.DataError, match=r"labels must lie in \[0, data.num_classes=10\)"):
    super_resolution.read_low_resolution(tmp_path / "bad_labels.npz", config, level=1)
  np.savez(tmp_path / "float.npz", images=gray.astype(np.float32))
  with pytest.raises(ValueError, match="'images' is float32"):
    super_resolution.read_low_resolution(tmp_path / "float.npz", config, level=1)


def test_fid_of_each_method_against_a_reference():
  """With a feature function and reference statistics, each method gets the FID of its outputs;
  the held-out images themselves ('original') against their own statistics give 0."""
  from udpm_jax import image_io, metrics

  config = udpm_jax.configs.get_config("test")
  config.data.num_classes = 0
  config.discriminator.conditional = False
  variables = models.init_generator(config, jax.random.PRNGKey(0))
  x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (96, 16, 16, 3), minval=-1, maxval=1))

  def features(u8):  # 4×4 average pooling: 48 features per image
    f = np.asarray(u8, np.float32).reshape(-1, 4, 4, 4, 4, 3).mean(axis=(2, 4))
    return f.reshape(len(f), -1)

  reference = metrics.FIDStats.from_model_output(features(image_io.to_uint8(x)))
  report = super_resolution.measure(
    config,
    variables,
    x,
    None,
    1,
    jax.random.PRNGKey(2),
    batch=32,
    features=features,
    reference=reference,
  )
  assert report["original"]["fid"] < 1e-3 and set(report["original"]) == {"fid"}
  y = super_resolution.low_resolution(config, x, 1)
  bicubic = super_resolution.classical_upsampling(y, 16)["bicubic"]
  expect = metrics.fid(
    metrics.FIDStats.from_model_output(features(image_io.to_uint8(bicubic))), reference
  )
  np.testing.assert_allclose(report["bicubic"]["fid"], expect, rtol=1e-4)
  assert report["bicubic"]["fid"] > 10 and report["udpm"]["fid"] > 10
  with pytest.raises(ValueError, match="both"):
    super_resolution.measure(
      config, variables, x, None, 1, jax.random.PRNGKey(2), features=features
    )
