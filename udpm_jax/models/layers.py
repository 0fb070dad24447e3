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


def fir_taps(taps: Sequence[float]) -> np.ndarray:
  """The 1-D resampling filter f / Σf; the 2-D filter is its outer product with itself."""
  f = np.asarray(taps, dtype=np.float32)
  return f / f.sum()


def fir_filter(taps: Sequence[float]) -> np.ndarray:
  """The separable 2-D resampling filter f fᵀ / (Σf)²."""
  return np.outer(fir_taps(taps), fir_taps(taps))


def _combination(arrays, coefficients):
  """Σ c·a in order over the nonzero coefficients: the FIR filters' and Winograd's weighted sums."""
  terms = [float(c) * a for c, a in zip(coefficients, arrays) if c != 0]
  return sum(terms[1:], terms[0])


def _shift(x, offset: int, axis: int):
  """y[m] = x[m + offset] along `axis`, zero where m + offset falls outside."""
  n = x.shape[axis]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (max(-offset, 0), max(offset, 0))
  start = max(offset, 0)
  return jax.lax.slice_in_dim(jnp.pad(x, pad), start, start + n, axis=axis)


def _strided_fir_1d(x, f, pad: int, axis: int):
  """Σ_a f[a] · x_pad[2i + a] along one axis, as len(f) strided slices (gradients are slices too;
  XLA:CPU differentiates a grouped convolution, twice for R1, orders of magnitude more slowly)."""
  if pad:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad, pad)
    x = jnp.pad(x, widths)
  n = (x.shape[axis] - len(f)) // 2 + 1
  slices = [jax.lax.slice_in_dim(x, a, a + 2 * n - 1, stride=2, axis=axis) for a in range(len(f))]
  return _combination(slices, f)


def _strided_fir(x, f, pad: int):
  """The separable 2-D stride-2 filter f fᵀ: one 1-D pass per spatial axis."""
  return _strided_fir_1d(_strided_fir_1d(x, f, pad, 1), f, pad, 2)


def fir_downsample(x, taps):
  """Blur with the FIR filter and keep every second pixel (N → N/2, any N ≥ 2 even)."""
  f = fir_taps(taps)
  return _strided_fir(x, f, (len(f) - 1) // 2)


def _fir_upsample_1d(y, f, axis: int):
  """2 × the adjoint of the 1-D stride-2 filter, in polyphase form: output 2m + r is
  2 Σ f[a] y[m + (r + p − a)/2] over the taps a of r's parity, zero outside, then interleaved."""
  pad = (len(f) - 1) // 2
  phases = []
  for r in (0, 1):
    taps = [a for a in range(len(f)) if (r + pad - a) % 2 == 0]
    shifted = [_shift(y, (r + pad - a) // 2, axis) for a in taps]
    phases.append(_combination(shifted, [2.0 * float(f[a]) for a in taps]))
  out = jnp.stack(phases, axis=axis + 1)
  return out.reshape(y.shape[:axis] + (2 * y.shape[axis],) + y.shape[axis + 1 :])


def fir_upsample(x, taps):
  """N → 2N: the transposed stride-2 FIR filter ×4 (zero insertion then blur), also from 1×1.

  Exactly 4 × the adjoint of `fir_downsample`, which is how a transposed convolution is defined;
  computed per axis in polyphase form (each output phase a short filter of the input), which
  costs a few input-sized sums where the transpose of strided slices scatters into zeros.
  """
  f = fir_taps(taps)
  return _fir_upsample_1d(_fir_upsample_1d(x, f, 1), f, 2)


# Output sides up to this use `conv2d`'s gathered-window matmul. XLA:CPU's convolution measured
# 15× slower than that matmul at 2×2 (3×3 kernel, 256 channels, batch 16: 16.3 vs 1.05 ms forward,
# 35 vs 2.3 ms with gradients), 2.6× at 1×1, slightly at 3×3 (6.0 vs 4.6 ms with gradients);
# equal or slower from 4×4 up.
SMALL_SIDE = 3
# Output channels from which `conv2d` moves padding wider than k // 2 into the input (measured:
# faster at 256 channels, CIFAR10's generator; slower at 32–64, the CPU demo's).
PREPAD_MIN_FEATURES = 128


# Winograd F(2×2, 3×3) (Lavin & Gray 2016): a 4×4 input tile d gives the 2×2 output tile
# Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A, 16 multiplications where direct convolution needs 36.
_WINOGRAD_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
_WINOGRAD_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def winograd_conv3x3(x, kernel, padding):
  """The stride-1 3×3 convolution `conv2d(x, kernel, padding)` by Winograd F(2×2, 3×3).

  Needs even output sides. Each of the 16 transformed tile positions is one (B·tiles, C_in) ×
  (C_in, C_out) matmul, so the matmuls do 16/36 of direct convolution's multiplications; the
  transforms add and subtract input-sized arrays. Agrees with direct convolution to float32
  rounding (the transform entries are 0, ±1, ±½). Gradients, of any order, by autodiff: they are
  matmuls and the transposed transforms.
  """
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  h_tiles, w_tiles = (x.shape[1] - 2) // 2, (x.shape[2] - 2) // 2
  if 2 * h_tiles != x.shape[1] - 2 or 2 * w_tiles != x.shape[2] - 2:
    sides = (x.shape[1] - 2, x.shape[2] - 2)
    raise ValueError(f"Winograd F(2x2, 3x3) needs even output sides; these would be {sides}.")
  # Bᵀ d B, separably: tile rows a = 0…3 are every second row from offset a.
  rows = [jax.lax.slice_in_dim(x, a, a + 2 * h_tiles - 1, stride=2, axis=1) for a in range(4)]
  # G g Gᵀ, separably as weighted sums of (C_in, C_out) slices: as one einsum XLA:CPU ran it as a
  # transposing matmul that took as long as five of the 16 products (16², 256 channels, batch 16:
  # the whole forward pass 20 ms with the einsum, 14 ms without; XLA's convolution 25 ms).
  g_rows = [_combination([kernel[a] for a in range(3)], _WINOGRAD_G[u]) for u in range(4)]
  u_kernel = [
    [_combination([g_rows[u][b] for b in range(3)], _WINOGRAD_G[v]) for v in range(4)]
    for u in range(4)
  ]
  products = {}
  for u in range(4):
    row_u = _combination(rows, _WINOGRAD_BT[u])
    cols = [jax.lax.slice_in_dim(row_u, a, a + 2 * w_tiles - 1, stride=2, axis=2) for a in range(4)]
    for v in range(4):
      # One matmul per (u, v), each fed by its own fused transform: stacking the 16 transformed
      # inputs for one batched matmul measured slower (an extra copy of 4× the input).
      tile_uv = _combination(cols, _WINOGRAD_BT[v])
      products[u, v] = jnp.einsum("bhwi,io->bhwo", tile_uv, u_kernel[u][v])
  # Aᵀ M A, separably, then the 2×2 output phases interleaved.
  half = {
    (u, j): _combination([products[u, v] for v in range(4)], _WINOGRAD_AT[j])
    for u in range(4)
    for j in range(2)
  }
  phases = [
    jnp.stack([_combination([half[u, j] for u in range(4)], _WINOGRAD_AT[i]) for j in range(2)], 3)
    for i in range(2)
  ]
  out = jnp.stack(phases, axis=2)  # (B, h_tiles, 2, w_tiles, 2, C_out)
  b, c_out = out.shape[0], out.shape[-1]
  return out.reshape(b, 2 * h_tiles, 2 * w_tiles, c_out)


def conv2d(x, kernel, padding, winograd_min_side: int = 0):
  """Stride-1 2-D convolution (NHWC, HWIO kernel, `padding` ((top, bottom), (left, right))).

  Small outputs are computed as one matmul over the k² shifted windows, leaving out the taps that
  only ever see padding (at 1×1 a 3×3 kernel has one live tap); 3×3 kernels with even output
  sides of at least `winograd_min_side` (> 0) by `winograd_conv3x3`; the rest by `lax.conv`.
  """
  (top, bottom), (left, right) = padding
  k_h, k_w = kernel.shape[:2]
  h_in, w_in = x.shape[1], x.shape[2]
  h_out, w_out = h_in + top + bottom - k_h + 1, w_in + left + right - k_w + 1
  if (
    winograd_min_side > 0
    and (k_h, k_w) == (3, 3)
    and min(h_out, w_out) >= winograd_min_side
    and h_out % 2 == 0
    and w_out % 2 == 0
  ):
    return winograd_conv3x3(x, kernel, padding)
  if max(h_out, w_out) > SMALL_SIDE or k_h * k_w == 1:
    # Padding wider than k // 2 is applied to x first where the output is wide: XLA:CPU hands
    # only convolutions padded by at most k // 2 to its fast library, and computed the others'
    # kernel gradient in a slow fallback (340 ms for CIFAR10's 256-channel one at 10²); at 32–64
    # channels the fallback was the faster way.
    same = (k_h // 2, k_w // 2)
    extra = [(max(lo - s, 0), max(hi - s, 0)) for (lo, hi), s in zip(padding, same)]
    if any(map(any, extra)) and kernel.shape[-1] >= PREPAD_MIN_FEATURES:
      x = jnp.pad(x, ((0, 0), *extra, (0, 0)))
      padding = tuple((lo - e_lo, hi - e_hi) for (lo, hi), (e_lo, e_hi) in zip(padding, extra))
    return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
  x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  # Tap (a, b) reads padded rows a … a + h_out − 1, of which rows top … top + h_in − 1 are data.
  live = lambda a, pad, n_out, n_in: a + n_out > pad and a < pad + n_in
  taps = [
    (a, b)
    for a in range(k_h)
    for b in range(k_w)
    if live(a, top, h_out, h_in) and live(b, left, w_out, w_in)
  ]
  windows = jnp.concatenate([x[:, a : a + h_out, b : b + w_out] for a, b in taps], axis=-1)
  weights = jnp.concatenate([kernel[a, b] for a, b in taps], axis=0)
  return jnp.einsum("bhwi,io->bhwo", windows, weights)


class Conv2D(nn.Module):
  """nn.Conv's parameters ('kernel' (k, k, C_in, C_out), 'bias') and initialisation, stride 1,
  computed by `conv2d`."""

  features: int
  kernel_size: int
  padding: tuple
  kernel_init: Any
  winograd_min_side: int = 0  # see `conv2d`
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    padding = tuple(map(tuple, self.padding))
    return conv2d(x, kernel, padding, self.winograd_min_side) + bias


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
  winograd_min_side: int = 0  # see `conv2d`
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
    conv = lambda h, pad: Conv2D(
      self.features,
      self.kernel,
      padding=tuple(pad),
      dtype=self.dtype,
      kernel_init=init_fn(self.init_gain),
      winograd_min_side=self.winograd_min_side,
      name="conv",
    )(h)
    w_pad = self.kernel // 2
    if self.fused_down and self.down:
      f_pad = (len(self.resample_taps) - 1) // 2
      h = conv(x, [(w_pad + f_pad,) * 2] * 2)
      return _strided_fir(h, fir_taps(self.resample_taps), 0)
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
  winograd_min_side: int = 0  # see `conv2d`
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
      winograd_min_side=self.winograd_min_side,
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
