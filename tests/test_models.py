"""Generator and discriminator: shapes at every level, exact parameter counts, layers, jit+grad."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import udpm_jax
from udpm_jax import models, train_step
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


def test_input_skip_adds_the_least_squares_upsampling_of_x_l():
  """With model.input_skip the output is gain_l · bilinear-upsample(x_l) + the same U-Net output,
  and the gains are the closed-form scalar least-squares estimate of the level's target."""
  config = udpm_jax.configs.get_config("test")
  config.model.update(input_skip=True, sigma_data=0.5)
  sched = udpm_jax.process.Schedule.from_config(config)
  # Box kernel with unit l2 norm at s = 2: Σw = 2; ᾱ = 0.5, 0.1, 1e-4; σ̃² = 0.01, 0.0404, ….
  w_sum, gains = 2.0, []
  for level in (1, 2, 3):
    a = sched.alpha_bars[level]
    signal = (a * w_sum) ** 2 * 0.25 * 4.0 ** (level - 1)
    gains.append(signal / (signal + sched.sigma_tilde_sq[level]) / (a * w_sum))
  np.testing.assert_allclose(models.input_skip_gains(config), gains, rtol=1e-12)
  np.testing.assert_allclose(gains[:2], [0.25 / 0.26, 0.04 / 0.0804 / 0.2], rtol=1e-3)

  with_skip = models.build_generator(config)
  config.model.input_skip = False
  plain = models.build_generator(config)
  variables = models.init_generator(config, jax.random.PRNGKey(0))
  labels = jnp.arange(2)
  for level, side in ((1, 8), (2, 4), (3, 2)):
    x = jax.random.normal(jax.random.PRNGKey(level), (2, side, side, 3))
    up = _bilinear_x2(np.asarray(x))
    diff = with_skip.apply(variables, x, 0.5, labels) - plain.apply(variables, x, 0.5, labels)
    np.testing.assert_allclose(diff, gains[level - 1] * up, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="Input side 3 is not one of the level sides"):
    with_skip.apply(variables, jnp.zeros((1, 3, 3, 3)), 0.5, labels[:1])
  config.model.update(input_skip=True, sigma_data=0.0)
  with pytest.raises(
    ValueError, match="model.sigma_data=0.0; with model.input_skip it must be > 0"
  ):
    udpm_jax.configs.validate(config)


def _bilinear_x2(x):
  """×2 bilinear upsampling, half-pixel centres, edges clamped: output pixel 2i (2i+1) is
  ¾ x[i] + ¼ x[i−1] (x[i+1]) along each axis."""
  for axis in (1, 2):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    p = np.pad(x, pad, mode="edge")
    n = x.shape[axis]
    take = lambda lo: np.take(p, np.arange(lo, lo + n), axis=axis)
    even, odd = 0.75 * take(1) + 0.25 * take(0), 0.75 * take(1) + 0.25 * take(2)
    x = np.stack([even, odd], axis=axis + 1).reshape(
      x.shape[:axis] + (2 * n,) + x.shape[axis + 1 :]
    )
  return x


@pytest.mark.parametrize("side", [1, 2, 3, 8])
@pytest.mark.parametrize("kernel,pad", [(3, 1), (3, 2), (1, 0), (5, 2)])
def test_conv2d_equals_lax_conv(side, kernel, pad):
  """`conv2d` equals XLA's convolution, values and gradients: the gathered-window matmul used for
  small outputs, and at side 8 XLA's convolution itself, with the wider padding of the fused
  down-sampling path."""
  kx, kw = jax.random.split(jax.random.PRNGKey(side * 10 + kernel))
  x = jax.random.normal(kx, (3, side, side, 5))
  w = jax.random.normal(kw, (kernel, kernel, 5, 7))
  padding = ((pad, pad), (pad, pad))
  ref = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  ours = lambda x, w: layers.conv2d(x, w, padding)
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  for g_ours, g_ref in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-5, atol=1e-4)  # sums of ~100 terms ~10


def test_conv2d_with_padding_wider_than_half_the_kernel_on_wide_outputs_equals_lax_conv():
  """From PREPAD_MIN_FEATURES output channels the excess padding goes into x first: same values
  and gradients as XLA's convolution padded directly."""
  kx, kw = jax.random.split(jax.random.PRNGKey(5))
  x = jax.random.normal(kx, (2, 8, 8, 3))
  w = jax.random.normal(kw, (3, 3, 3, layers.PREPAD_MIN_FEATURES)) * 0.3
  padding = ((2, 2), (2, 2))
  ref, ours = _lax_conv(padding), lambda x, w: layers.conv2d(x, w, padding)
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  for g_ours, g_ref in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-5, atol=1e-4)


def _lax_conv(padding):
  return lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


@pytest.mark.parametrize("side,pad", [(8, 1), (8, 2), (6, 0), (4, 1)])
def test_winograd_convolution_equals_lax_conv_with_first_and_second_derivatives(side, pad):
  """Winograd F(2×2, 3×3) is the same function as direct convolution: values, both gradients and
  the R1-style double derivative (the kernel gradient of ‖∂Σf/∂x‖²) agree to float32 rounding."""
  kx, kw = jax.random.split(jax.random.PRNGKey(side + 7 * pad))
  x = jax.random.normal(kx, (2, side, side, 5))
  w = jax.random.normal(kw, (3, 3, 5, 7))
  padding = ((pad, pad), (pad, pad))
  ref, ours = _lax_conv(padding), lambda x, w: layers.winograd_conv3x3(x, w, padding)
  out = ours(x, w)
  assert out.shape == (2, side + 2 * pad - 2, side + 2 * pad - 2, 7)
  np.testing.assert_allclose(out, ref(x, w), rtol=1e-5, atol=2e-5)  # values ~10
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  for g_ours, g_ref in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-5, atol=1e-4)
  r1 = lambda f: lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.tanh(f(x, w))))(x) ** 2)
  np.testing.assert_allclose(jax.grad(r1(ours))(w), jax.grad(r1(ref))(w), rtol=1e-4, atol=1e-3)
  # A wrong transform entry is not within these tolerances.
  broken = layers._WINOGRAD_G.copy()
  broken[1, 2] = 0.25
  original, layers._WINOGRAD_G = layers._WINOGRAD_G, broken
  try:
    assert float(jnp.max(jnp.abs(ours(x, w) - ref(x, w)))) > 1e-2
  finally:
    layers._WINOGRAD_G = original


def test_conv2d_uses_winograd_only_for_3x3_even_outputs_from_the_minimum_side():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 7, 7, 2))
  w3 = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 3))
  same = ((1, 1), (1, 1))
  with pytest.raises(ValueError, match="even output sides"):
    layers.winograd_conv3x3(x, w3, same)
  # Odd sides, 5×5 kernels and sides below the minimum go to the other paths, unchanged.
  np.testing.assert_allclose(layers.conv2d(x, w3, same, 4), _lax_conv(same)(x, w3), atol=2e-5)
  w5 = jax.random.normal(jax.random.PRNGKey(2), (5, 5, 2, 3))
  x8 = jax.random.normal(jax.random.PRNGKey(3), (1, 8, 8, 2))
  wide = ((2, 2), (2, 2))
  np.testing.assert_array_equal(layers.conv2d(x8, w5, wide, 4), layers.conv2d(x8, w5, wide))
  np.testing.assert_array_equal(layers.conv2d(x8, w3, same, 10), layers.conv2d(x8, w3, same))
  np.testing.assert_array_equal(
    layers.conv2d(x8, w3, same, 8), layers.winograd_conv3x3(x8, w3, same)
  )


def test_winograd_discriminator_matches_the_direct_one():
  """With the same weights, the discriminator's logits and its R1 gradient do not depend on the
  convolution algorithm; `winograd_min_side=-1` resolves to 8 on the CPU in float32 only."""
  config = udpm_jax.configs.get_config("test")
  config.data.update(image_size=16)
  variables = models.init_discriminator(config, jax.random.PRNGKey(0))
  x, t, labels = models._dummy(config, 16, batch=4)
  x = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  labels = None if not config.discriminator.conditional else labels

  def run(side):
    config.discriminator.winograd_min_side = side
    disc = models.build_discriminator(config)
    assert disc.winograd_min_side == side
    f = lambda y: jnp.sum(disc.apply(variables, y, t, labels))
    return disc.apply(variables, x, t, labels), jax.grad(f)(x)

  (direct, g_direct), (wino, g_wino) = run(0), run(4)
  np.testing.assert_allclose(wino, direct, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_wino, g_direct, rtol=1e-4, atol=2e-5)  # entries up to ~0.3
  config.discriminator.winograd_min_side = -1
  assert models.WINOGRAD_CPU_MIN_SIDE == 8
  assert models.discriminator_winograd_min_side(config, jnp.float32) == 8
  assert models.discriminator_winograd_min_side(config, jnp.bfloat16) == 0
  config.discriminator.winograd_min_side = -2
  with pytest.raises(ValueError, match="discriminator.winograd_min_side"):
    udpm_jax.configs.validate(config)


def test_forward_only_generator_uses_winograd_and_computes_the_same_function():
  """`build_generator(forward_only=True)` takes `model.winograd_min_side` (auto: 8 on the CPU in
  float32, off in bfloat16); the trained generator keeps direct convolution. Both give the same
  images from the same variables at every level side, and D's fakes in the train step come from
  the forward-only one."""
  config = udpm_jax.configs.get_config("test")
  config.model.winograd_min_side = -1
  assert models.build_generator(config).winograd_min_side == 0
  assert models.build_generator(config, forward_only=True).winograd_min_side == 8
  assert models.build_generator(config, jnp.bfloat16, forward_only=True).winograd_min_side == 0
  config.model.winograd_min_side = 4
  forward = models.build_generator(config, forward_only=True)
  assert forward.winograd_min_side == 4
  variables = models.init_generator(config, jax.random.PRNGKey(0))
  # Weights of a trained net's size: the initial output layer's gain 1e-5 would hide any error.
  variables = jax.tree.map(
    lambda v: (
      jax.random.normal(jax.random.PRNGKey(v.size), v.shape) / np.sqrt(v.shape[-2] * 9)
      if v.ndim == 4
      else v
    ),
    variables,
  )
  for side in (8, 4):  # the test config's level-1 and level-2 inputs: 8² and 4² convolutions
    x, t, labels = models._dummy(config, side, batch=2)
    x = jax.random.normal(jax.random.PRNGKey(side), x.shape)
    direct = models.build_generator(config).apply(variables, x, t, labels)
    wino = forward.apply(variables, x, t, labels)
    assert float(jnp.std(direct)) > 0.1
    np.testing.assert_allclose(wino, direct, rtol=1e-4, atol=1e-5 * float(jnp.abs(direct).max()))
    assert float(jnp.max(jnp.abs(wino - direct))) > 0  # the other algorithm did run
  spec = train_step.build_spec(config)
  assert spec.gen.winograd_min_side == 0 and spec.gen_forward.winograd_min_side == 4
  config.model.winograd_min_side = -3
  with pytest.raises(ValueError, match="model.winograd_min_side=-3"):
    udpm_jax.configs.validate(config)


def test_conv_module_keeps_flax_conv_parameters_and_initialisation():
  x = jnp.ones((1, 2, 2, 4))
  ours = layers.Conv2D(6, 3, ((1, 1), (1, 1)), layers.xavier_uniform())
  flax_conv = flax.linen.Conv(6, (3, 3), padding=1, kernel_init=layers.xavier_uniform())
  a = ours.init(jax.random.PRNGKey(3), x)
  b = flax_conv.init(jax.random.PRNGKey(3), x)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(u, v)
  np.testing.assert_allclose(ours.apply(a, x), flax_conv.apply(b, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("taps", [(1, 1), (1, 3, 3, 1)])
@pytest.mark.parametrize("side", [1, 2, 3, 8])
def test_fir_upsampling_is_four_times_the_adjoint_of_downsampling(taps, side):
  """The polyphase up-sampling equals its definition, 4 Dᵀ with D = fir_downsample, and D equals
  the dense 2-D stride-2 filter f fᵀ / (Σf)² on the zero-padded image."""
  rng = np.random.default_rng(side)
  y = jnp.asarray(rng.standard_normal((2, side, side, 3)), jnp.float32)
  primal = jax.ShapeDtypeStruct((2, 2 * side, 2 * side, 3), jnp.float32)
  (adjoint,) = jax.linear_transpose(lambda z: layers.fir_downsample(z, taps), primal)(y)
  np.testing.assert_allclose(layers.fir_upsample(y, taps), 4.0 * adjoint, rtol=1e-6, atol=1e-6)

  x = rng.standard_normal((2, 2 * side, 2 * side, 3))
  f = np.asarray(taps, np.float64) / sum(taps)
  k, pad = len(f), (len(f) - 1) // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  dense = np.zeros((2, side, side, 3))
  for i in range(side):
    for j in range(side):
      window = xp[:, 2 * i : 2 * i + k, 2 * j : 2 * j + k]
      dense[:, i, j] = np.einsum("a,b,nabc->nc", f, f, window)
  np.testing.assert_allclose(
    layers.fir_downsample(jnp.asarray(x, jnp.float32), taps), dense, rtol=1e-5, atol=1e-6
  )
