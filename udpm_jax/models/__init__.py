"""Networks of UDPM: the level-shared generator and the level-conditioned discriminator."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from udpm_jax import process
from udpm_jax.models.discriminator import Discriminator
from udpm_jax.models.unet import SongUNet

__all__ = [
  "SongUNet",
  "Discriminator",
  "build_generator",
  "build_discriminator",
  "discriminator_winograd_min_side",
  "generator_winograd_min_side",
  "discriminator_blocks",
  "input_skip_gains",
  "init_generator",
  "init_discriminator",
]


def build_generator(config, dtype=None, forward_only: bool = False) -> SongUNet:
  """The generator of `config` (compute dtype `dtype`, default float32; params stay float32).

  `gen.apply(variables, x_l, t, labels=None, train=False, rngs=...)` maps x_l (B, N_l, N_l, C) to
  the prediction of H^{l-1} x_0 (B, N_{l-1}, N_{l-1}, C). `forward_only=True` builds it for calls
  that are never differentiated (sampling, the fakes of D's update): the same function and
  parameters, with `model.winograd_min_side`'s convolution algorithm.
  """
  m, p = config.model, config.process
  arch_defaults = {
    "ncsnpp": dict(resample_taps=tuple(m.resample_filter)),
    "ddpmpp": dict(resample_taps=(1, 1)),
  }[m.arch]
  return SongUNet(
    nominal_resolution=config.data.image_size // p.scale,
    out_channels=config.data.channels,
    scale=p.scale,
    num_classes=config.data.num_classes,
    arch=m.arch,
    model_channels=m.model_channels,
    channel_mult=tuple(m.channel_mult),
    channel_mult_emb=m.channel_mult_emb,
    channel_mult_noise=m.channel_mult_noise if m.arch == "ncsnpp" else 1,
    num_blocks=m.num_blocks,
    attn_resolutions=tuple(m.attn_resolutions),
    dropout=m.dropout,
    label_dropout=m.label_dropout,
    fourier_scale=m.fourier_scale,
    skip_gains=input_skip_gains(config) if m.get("input_skip", False) else (),
    winograd_min_side=generator_winograd_min_side(config, dtype or jnp.float32)
    if forward_only
    else 0,
    dtype=dtype or jnp.float32,
    **arch_defaults,
  )


def input_skip_gains(config) -> tuple[float, ...]:
  """Per-level gains of the generator's input skip: the linear least-squares estimate of
  y = H^{l−1} x_0 from x_l = ᾱ_l H y + noise, written as gain_l · up(x_l), up = bilinear ×s.

  For an image y that is smooth at the kernel's scale, H y ≈ (Σw) · y at the coarse pixels, so
  up(x_l) ≈ ᾱ_l Σw · y + noise of variance σ̃_l². With pixel variance v_l = σ_data² (Σw)^{2(l−1)}
  for y, the estimate is k_l · up(x_l) / (ᾱ_l Σw), k_l = ᾱ_l² (Σw)² v_l / (ᾱ_l² (Σw)² v_l + σ̃_l²):
  close to the inverse at level 1, zero at a pure-noise top level. The U-Net adds what this misses
  (detail, and the noise to remove), so training starts from an upsampling instead of from zero,
  as EDM's c_skip does for ordinary diffusion. Bilinear rather than nearest upsampling: on
  Fashion-MNIST its estimate is closer (level-1 L1 0.140 vs 0.151, level 2 0.70 vs 0.80) and
  leaves no 2×2 blocks for the U-Net to undo.
  """
  sched = process.Schedule.from_config(config)
  w_sum = float(sched.kernel_array.sum())
  sigma_data = float(config.model.get("sigma_data", 0.5))
  gains = []
  for level in range(1, sched.levels + 1):
    a = sched.alpha_bars[level]
    signal = (a * w_sum) ** 2 * sigma_data**2 * w_sum ** (2 * (level - 1))
    k = signal / (signal + sched.sigma_tilde_sq[level])
    gains.append(k / (a * w_sum))
  return tuple(gains)


def discriminator_blocks(config) -> int:
  """log2(N / s^{L-1}) + 1 residual blocks: enough to bring the largest input down to ~s^{L-1}."""
  p = config.process
  return int(round(math.log2(config.data.image_size / p.scale ** (p.levels - 1)))) + 1


def build_discriminator(config, dtype=None) -> Discriminator:
  """The discriminator of `config`: `disc.apply(variables, img, t, labels=None, train=False)`
  returns logits (B,) for the level-(l−1) image `img` at its own side."""
  d = config.discriminator
  return Discriminator(
    num_blocks=discriminator_blocks(config),
    base_channels=d.base_channels,
    num_classes=config.data.num_classes if d.conditional else 0,
    dropout=d.dropout,
    stddev_group=d.stddev_group,
    stddev_features=d.stddev_features,
    stddev_by_class=d.get("stddev_by_class", False),
    stddev_gain=d.get("stddev_gain", 1.0),
    quirk_stddev_sum_chw=d.quirk_stddev_sum_chw,
    quirk_logit_dropout=d.quirk_logit_dropout,
    winograd_min_side=discriminator_winograd_min_side(config, dtype or jnp.float32),
    dtype=dtype or jnp.float32,
  )


# Measured on a 2-core CPU (CIFAR10 config, batch 16, float32), Winograd from output side 8 up
# against XLA's convolution (tools/bench_winograd): D's update, with G's forward for the fakes,
# 1.20× / 1.28× / 1.06× at levels 1 / 2 / 3; the sampler 1.46×. The generator's gradients through
# the transforms took twice as long as direct convolution's, so its update keeps direct convolution.
WINOGRAD_CPU_MIN_SIDE = 8


def _winograd_min_side(config_value: int, cpu_side: int, dtype) -> int:
  """A `winograd_min_side` setting with −1 (auto) resolved: `cpu_side` on the CPU in float32, else
  0 (off: accelerators have their own convolution algorithms, and in bfloat16 the transforms would
  round)."""
  if config_value != -1:
    return config_value
  on_cpu = jax.default_backend() == "cpu"
  return cpu_side if on_cpu and jnp.dtype(dtype) == jnp.float32 else 0


def discriminator_winograd_min_side(config, dtype) -> int:
  """`discriminator.winograd_min_side` resolved (auto: WINOGRAD_CPU_MIN_SIDE on the CPU in
  float32)."""
  side = config.discriminator.get("winograd_min_side", -1)
  return _winograd_min_side(side, WINOGRAD_CPU_MIN_SIDE, dtype)


def generator_winograd_min_side(config, dtype) -> int:
  """`model.winograd_min_side` resolved (auto: WINOGRAD_CPU_MIN_SIDE on the CPU in float32): the
  generator's algorithm in its forward-only calls."""
  side = config.model.get("winograd_min_side", -1)
  return _winograd_min_side(side, WINOGRAD_CPU_MIN_SIDE, dtype)


def _dummy(config, side, batch=1):
  labels = jnp.zeros((batch,), jnp.int32) if config.data.num_classes else None
  return jnp.zeros((batch, side, side, config.data.channels)), jnp.full((batch,), 0.5), labels


def init_generator(config, key, dtype=None):
  """Variables {'params', 'buffers'} of a freshly initialised generator."""
  x, t, labels = _dummy(config, config.data.image_size // config.process.scale)
  return build_generator(config, dtype).init({"params": key, "dropout": key}, x, t, labels)


def init_discriminator(config, key, dtype=None):
  """Variables {'params'} of a freshly initialised discriminator."""
  x, t, labels = _dummy(config, config.data.image_size, batch=4)
  if not config.discriminator.conditional:
    labels = None
  return build_discriminator(config, dtype).init({"params": key, "dropout": key}, x, t, labels)


def count_params(variables) -> int:
  """Number of trainable parameters (the 'params' collection)."""
  params = variables.get("params", variables)
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))
