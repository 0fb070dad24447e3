"""Generator and discriminator: shapes at every level, exact parameter counts, layers, jit+grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import udpm_jax
from udpm_jax import models
from udpm_jax.models import layers

# Counted on the authors' PyTorch modules (tools/parity_official.py) and equal here to the unit.
COUNTS = {
  "cifar10": (57_737_484, 18_947_649),
  "ffhq64": (65_405_964, 23_864_833),
  "afhqv2_64": (65_405_964, 23_864_833),
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_counts_and_shapes_at_every_level(name):
  config = udpm_jax.configs.get_config(name)
  key = jax.random.PRNGKey(0)
  g_vars = jax.eval_shape(lambda k: models.init_generator(config, k), key)
  d_vars = jax.eval_shape(lambda k: models.init_discriminator(config, k), key)
  assert (models.count_params(g_vars), models.count_params(d_vars)) == COUNTS[name]
  assert g_vars["buffers"]["fourier_freqs"].shape == (128,)  # frozen, not in 'params'
  gen, disc = models.build_generator(config), models.build_discriminator(config)
  n, s, L = config.data.image_size, config.process.scale, config.process.levels
  labels = jnp.zeros((2,), jnp.int32) if config.data.num_classes else None
  for level in range(1, L + 1):
    side = n // s**level
    x = jax.ShapeDtypeStruct((2, side, side, 3), jnp.float32)
    out = jax.eval_shape(lambda v, x: gen.apply(v, x, jnp.full((2,), 0.5), labels), g_vars, x)
    assert out.shape == (2, side * s, side * s, 3)
    img = jax.ShapeDtypeStruct((4, side * s, side * s, 3), jnp.float32)
    d_labels = jnp.zeros((4,), jnp.int32) if config.discriminator.conditional else None
    logits = jax.eval_shape(lambda v, x: disc.apply(v, x, 0.5, d_labels), d_vars, img)
    assert logits.shape == (4,)


def test_pixel_shuffle_matches_pytorch_channel_order():
  s, c, h, w = 2, 3, 2, 2
  x = np.arange(1 * h * w * c * s * s, dtype=np.float32).reshape(1, h, w, c * s * s)
  out = np.asarray(layers.pixel_shuffle(jnp.asarray(x), s))
  assert out.shape == (1, h * s, w * s, c)
  for ch in range(c):
    for hh in range(h):
      for ww in range(w):
        for i in range(s):
          for j in range(s):
            assert out[0, s * hh + i, s * ww + j, ch] == x[0, hh, ww, ch * s * s + i * s + j]


@pytest.mark.parametrize("taps", [(1, 1), (1, 3, 3, 1)])
def test_fir_resampling_down_to_one_pixel(taps):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 2, 2, 3)), jnp.float32)
  down = layers.fir_downsample(x, taps)
  assert down.shape == (2, 1, 1, 3)
  up = layers.fir_upsample(down, taps)
  assert up.shape == (2, 2, 2, 3)
  if taps == (1, 1):  # the [1,1] filter is a 2×2 average pool and nearest-neighbour upsampling
    np.testing.assert_allclose(down[:, 0, 0], x.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(up, jnp.broadcast_to(down, x.shape), rtol=1e-6)
  # FIR up-sampling preserves a constant image away from the border (gain 4 cancels the zeros).
  const = layers.fir_upsample(jnp.ones((1, 4, 4, 1)), taps)
  np.testing.assert_allclose(const[0, 2:6, 2:6, 0], 1.0, rtol=1e-6)


def test_stddev_feature_follows_release_grouping():
  config = udpm_jax.configs.get_config("test")
  disc = models.build_discriminator(config)
  h = jnp.asarray(np.random.default_rng(0).standard_normal((8, 2, 2, 6)), jnp.float32)
  feat = disc.bind({})._stddev_feature(h)
  y = np.asarray(h).reshape(4, 2, 2, 2, 1, 6)  # groups pair samples b and b + 2
  expect = np.sqrt(y.var(axis=0) + 1e-8).sum(axis=(1, 2, 4))  # quirk: summed over C·H·W
  np.testing.assert_allclose(feat[:, 0, 0, 0], np.tile(expect[:, 0], 4), rtol=1e-5)


def test_class_stddev_feature_is_the_spread_within_each_class():
  config = udpm_jax.configs.get_config("test")
  config.discriminator.update(stddev_by_class=True, quirk_stddev_sum_chw=False)
  disc = models.build_discriminator(config)
  rng = np.random.default_rng(1)
  h = rng.standard_normal((7, 2, 2, 6)).astype(np.float32)
  labels = np.array([3, 1, 3, 3, 0, 1, 5])
  onehot = jnp.asarray(np.eye(10, dtype=np.float32)[labels])
  feat = np.asarray(disc.bind({})._class_stddev_feature(jnp.asarray(h), onehot))[:, 0, 0, 0]
  for i, k in enumerate(labels):
    same = h[labels == k]  # population std over the class's samples, averaged over H·W·C
    expect = np.sqrt(same.var(axis=0) + 1e-8).mean()
    np.testing.assert_allclose(feat[i], expect, rtol=1e-5)
  assert feat[4] < 1e-3 and feat[6] < 1e-3  # alone in their class: no spread
  # Copies of one image per class give the feature ~0; the release's mixed groups do not see it.
  copies = jnp.asarray(h[[0, 1, 0, 0, 4, 1, 6]])
  assert float(np.max(disc.bind({})._class_stddev_feature(copies, onehot))) < 1e-3


def test_class_stddev_feature_reaches_the_logit_only_within_a_class():
  config = udpm_jax.configs.get_config("test")
  config.discriminator.update(stddev_by_class=True, stddev_gain=10.0)
  disc = models.build_discriminator(config)
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (4, 8, 8, 3))
  labels = jnp.array([2, 2, 7, 7])
  variables = disc.init(key, x, 0.5, labels)
  logits = disc.apply(variables, x, 0.5, labels)
  # Sample 0 unchanged, its class-mate replaced by a copy of it: sample 0's logit moves.
  collapsed = disc.apply(variables, x[jnp.array([0, 0, 2, 3])], 0.5, labels)
  assert abs(float(logits[0] - collapsed[0])) > 1e-3
  # A change in the other class leaves it exactly (the release's mixed group of 4 would not).
  other = disc.apply(variables, x[jnp.array([0, 1, 2, 2])], 0.5, labels)
  np.testing.assert_allclose(other[:2], logits[:2], rtol=1e-6)
  config.discriminator.update(stddev_by_class=False)
  release = models.build_discriminator(config)
  base = release.apply(variables, x, 0.5, labels)
  moved = release.apply(variables, x[jnp.array([0, 1, 2, 2])], 0.5, labels) - base
  assert abs(float(moved[0])) > 1e-3
  config.discriminator.update(stddev_by_class=True, conditional=False)
  with pytest.raises(ValueError, match="discriminator.stddev_by_class=True"):
    udpm_jax.configs.validate(config)


def test_tiny_config_forward_and_backward_under_jit():
  config = udpm_jax.configs.get_config("test")
  key = jax.random.PRNGKey(0)
  g_vars = jax.jit(lambda k: models.init_generator(config, k))(key)
  d_vars = jax.jit(lambda k: models.init_discriminator(config, k))(key)
  gen, disc = models.build_generator(config), models.build_discriminator(config)
  x = jax.random.normal(key, (4, 4, 4, 3))
  labels = jnp.arange(4) % 10

  @jax.jit
  def loss(gp, dp):
    y = gen.apply({**g_vars, "params": gp}, x, 0.5, labels, train=True, rngs={"dropout": key})
    return jnp.mean(y**2) + jnp.mean(
      disc.apply({"params": dp}, y, 0.5, labels, train=True, rngs={"dropout": key}) ** 2
    )

  value, (g_grad, d_grad) = jax.value_and_grad(loss, argnums=(0, 1))(
    g_vars["params"], d_vars["params"]
  )
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves((g_grad, d_grad)))
  assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(d_grad))) > 0
  with pytest.raises(ValueError, match="class-conditional"):
    gen.apply(g_vars, x, 0.5, None)


def test_ddpmpp_variant_builds_with_positional_embedding():
  config = udpm_jax.configs.get_config("test")
  config.model.arch = "ddpmpp"
  variables = jax.eval_shape(lambda k: models.init_generator(config, k), jax.random.PRNGKey(0))
  assert "buffers" not in variables  # positional embedding: nothing frozen to store
  out = jax.eval_shape(
    lambda v: models.build_generator(config).apply(
      v, jnp.zeros((1, 2, 2, 3)), 0.8, jnp.zeros((1,), jnp.int32)
    ),
    variables,
  )
  assert out.shape == (1, 4, 4, 3)
