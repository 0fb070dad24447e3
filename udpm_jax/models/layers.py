"""Building blocks shared by the generator and the discriminator (Flax linen, NHWC).

Written from the NCSN++/DDPM++ descriptions (Song et al. 2021, score_sde) and the facts of the EDM
re-implementation the authors trained with: FIR resampling, GroupNorm with at least 4 channels per
group, residual blocks with an additive or FiLM embedding, single-head attention.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def xavier_uniform(gain: float = 1.0):
  """Glorot-uniform on (fan_in, fan_out) scaled by `gain` (EDM's init_weight)."""
  return nn.initializers.variance_scaling(gain**2, "fan_avg", "uniform")


def kaiming_normal(gain: float = 1.0):
  """N(0, gain²/fan_in): EDM's 'kaiming_normal', used by the DDGAN discriminator."""
  return nn.initializers.variance_scaling(gain**2, "fan_in", "normal")


def fir_filter(taps: Sequence[float]) -> np.ndarray:
  """The separable 2-D resampling filter f fᵀ / (Σf)²."""
  f = np.asarray(taps, dtype=np.float32)
  return np.outer(f, f) / f.sum() ** 2


def _strided_fir(x, f2d, pad: int):
  """Σ_{a,b} f[a,b] · x_pad[2i + a, 2j + b]: a per-channel stride-2 filter as K² strided slices.

  Written with slices rather than a grouped convolution because XLA:CPU differentiates grouped
  convolutions (twice, for R1) orders of magnitude more slowly; slices have trivial gradients.
  """
  if pad:
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  k = f2d.shape[0]
  n_h, n_w = (x.shape[1] - k) // 2 + 1, (x.shape[2] - k) // 2 + 1
  out = None
  for a in range(k):
    for b in range(k):
      term = float(f2d[a, b]) * x[:, a : a + 2 * n_h - 1 : 2, b : b + 2 * n_w - 1 : 2]
      out = term if out is None else out + term
  return out


def fir_downsample(x, taps):
  """Blur with the FIR filter and keep every second pixel (N → N/2, any N ≥ 2 even)."""
  f2d = fir_filter(taps)
  return _strided_fir(x, f2d, (f2d.shape[0] - 1) // 2)


def fir_upsample(x, taps):
  """N → 2N: the transposed stride-2 FIR filter ×4 (zero insertion then blur), also from 1×1.

  Exactly 4 × the adjoint of `fir_downsample`, which is how a transposed convolution is defined.
  """
  b, h, w, c = x.shape
  primal = jax.ShapeDtypeStruct((b, 2 * h, 2 * w, c), x.dtype)
  (y,) = jax.linear_transpose(lambda z: fir_downsample(z, taps), primal)(x)
  return 4.0 * y


class Conv(nn.Module):
  """k×k convolution, optionally preceded by FIR up/down-sampling (k = 0: resampling only)."""

  features: int
  kernel: int
  up: bool = False
  down: bool = False
  fused_down: bool = False  # conv first (padded wider), then the strided filter: NCSN++'s aux path
  resample_taps: Sequence[float] = (1, 1)
  init_gain: float = 1.0
  init: str = "xavier"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    init_fn = xavier_uniform if self.init == "xavier" else kaiming_normal
    if self.kernel == 0:
      return (
        fir_upsample(x, self.resample_taps)
        if self.up
        else (fir_downsample(x, self.resample_taps) if self.down else x)
      )
    conv = lambda h, pad: nn.Conv(
      self.features,
      (self.kernel, self.kernel),
      padding=pad,
      dtype=self.dtype,
      kernel_init=init_fn(self.init_gain),
      name="conv",
    )(h)
    w_pad = self.kernel // 2
    if self.fused_down and self.down:
      f_pad = (len(self.resample_taps) - 1) // 2
      h = conv(x, [(w_pad + f_pad,) * 2] * 2)
      f2d = fir_filter(self.resample_taps)
      return _strided_fir(h, f2d, 0)
    if self.up:
      x = fir_upsample(x, self.resample_taps)
    if self.down:
      x = fir_downsample(x, self.resample_taps)
    return conv(x, [(w_pad, w_pad)] * 2)


def group_norm(channels: int, eps: float, dtype, name=None):
  """GroupNorm with 32 groups but at least 4 channels per group (and at least one group)."""
  groups = max(min(32, channels // 4), 1)
  return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, name=name)


class Attention(nn.Module):
  """Single-head self-attention over all pixels, residual, with the logits in float32."""

  channels: int
  eps: float
  skip_scale: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    qkv = Conv(3 * c, 1, init_gain=math.sqrt(0.2), dtype=self.dtype, name="qkv")(
      group_norm(c, self.eps, self.dtype, name="norm")(x)
    )
    # Channel layout (c, 3): q, k, v interleave, as in the checkpoints we convert.
    qkv = qkv.reshape(b, h * w, c, 3)
    q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
    logits = jnp.einsum("bqc,bkc->bqk", q.astype(jnp.float32), k.astype(jnp.float32))
    weights = jax.nn.softmax(logits / math.sqrt(c), axis=-1).astype(v.dtype)
    a = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, h, w, c)
    out = Conv(c, 1, init_gain=1e-5, dtype=self.dtype, name="proj")(a)
    return (out + x) * self.skip_scale


class ResBlock(nn.Module):
  """Residual block: GN → act → conv(↑/↓) → (+emb | FiLM) → GN → act → dropout → conv, skip, scale.

  `film=False` adds the projected embedding before the second norm (NCSN++); `film=True` uses
  scale/shift (the EDM block the DDGAN-style discriminator is built from).
  """

  out_channels: int
  up: bool = False
  down: bool = False
  attention: bool = False
  dropout: float = 0.0
  skip_scale: float = 1.0
  eps: float = 1e-5
  resample_taps: Sequence[float] = (1, 1)
  resample_proj: bool = False
  film: bool = False
  init: str = "xavier"
  zero_gain: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool):
    in_ch, out_ch = x.shape[-1], self.out_channels
    conv = lambda feats, k, gain=1.0, name=None, **kw: Conv(
      feats,
      k,
      resample_taps=self.resample_taps,
      init_gain=gain,
      init=self.init,
      dtype=self.dtype,
      name=name,
      **kw,
    )
    h = conv(out_ch, 3, up=self.up, down=self.down, name="conv0")(
      nn.silu(group_norm(in_ch, self.eps, self.dtype, name="norm0")(x))
    )
    init_fn = xavier_uniform if self.init == "xavier" else kaiming_normal
    params = nn.Dense(
      out_ch * (2 if self.film else 1), dtype=self.dtype, kernel_init=init_fn(), name="affine"
    )(emb)[:, None, None, :].astype(h.dtype)
    norm1 = group_norm(out_ch, self.eps, self.dtype, name="norm1")
    if self.film:
      scale, shift = jnp.split(params, 2, axis=-1)
      h = nn.silu(norm1(h) * (scale + 1) + shift)
    else:
      h = nn.silu(norm1(h + params))
    h = nn.Dropout(self.dropout, deterministic=not train or self.dropout == 0)(h)
    h = conv(out_ch, 3, gain=self.zero_gain, name="conv1")(h)
    if out_ch != in_ch or self.up or self.down:
      k = 1 if (self.resample_proj or out_ch != in_ch) else 0
      skip = conv(out_ch, k, up=self.up, down=self.down, name="skip")(x)
    else:
      skip = x
    h = (h + skip) * self.skip_scale
    if self.attention:
      h = Attention(out_ch, self.eps, self.skip_scale, self.dtype, name="attn")(h)
    return h


def fourier_features(t, freqs):
  """[sin, cos] of 2π f t: NCSN++'s random Fourier noise embedding (freqs frozen)."""
  x = t[:, None].astype(jnp.float32) * (2 * np.pi * freqs[None, :])
  return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


def positional_features(
  t, channels: int, endpoint: bool, max_positions: float = 10_000.0, order: str = "sin_cos"
):
  """Transformer-style sinusoidal embedding of a scalar per example."""
  half = channels // 2
  freqs = np.arange(half, dtype=np.float32) / (half - (1 if endpoint else 0))
  freqs = (1.0 / max_positions) ** freqs
  x = t[:, None].astype(jnp.float32) * freqs[None, :]
  parts = [jnp.sin(x), jnp.cos(x)] if order == "sin_cos" else [jnp.cos(x), jnp.sin(x)]
  return jnp.concatenate(parts, axis=-1)


def pixel_shuffle(x, s: int):
  """Depth-to-space in PyTorch's channel order: out[c, s·h+i, s·w+j] = in[c·s² + i·s + j, h, w]."""
  b, h, w, cs = x.shape
  c = cs // (s * s)
  x = x.reshape(b, h, w, c, s, s)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * s, w * s, c)
