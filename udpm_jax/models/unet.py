"""The UDPM generator: an NCSN++ (or DDPM++) U-Net shared by all levels, followed by depth-to-space.

Applied to x_l at side N/s^l with t_l = (l − ½)/L, it predicts H^{l−1} x_0 at side N/s^{l−1}: the
U-Net keeps the input side and emits C·s² channels, which the pixel shuffle turns into an s-times
larger image. The same weights serve every level, so the U-Net is built for its level-1 input side
("nominal" side N/s) and attention is placed by U-Net depth, not by the actual pixel count.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from udpm_jax.models import layers

Dtype = Any


class SongUNet(nn.Module):
  """NCSN++ (`arch='ncsnpp'`: Fourier embedding, residual aux encoder path, FIR [1,3,3,1]) or
  DDPM++ (`arch='ddpmpp'`: positional embedding, standard encoder, [1,1] filter)."""

  nominal_resolution: int
  out_channels: int
  scale: int
  num_classes: int = 0
  arch: str = "ncsnpp"
  model_channels: int = 128
  channel_mult: Sequence[int] = (2, 2, 2)
  channel_mult_emb: int = 4
  channel_mult_noise: int = 2
  num_blocks: int = 4
  attn_resolutions: Sequence[int] = (8, 4)
  dropout: float = 0.0
  label_dropout: float = 0.0
  fourier_scale: float = 16.0
  resample_taps: Sequence[float] = (1, 3, 3, 1)
  # One gain per level (level 1 first); () = none. The output becomes
  # gain_l · bilinear-upsample(x_l) + U-Net(x_l): see `models.input_skip_gains`.
  skip_gains: Sequence[float] = ()
  winograd_min_side: int = 0  # see `layers.conv2d`
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t, labels=None, train: bool = False):
    """Args: x (B, n, n, C_in) at any side n = N/s^l; t scalar or (B,); labels None, int (B,) or
    one-hot (B, K). Returns (B, n·s, n·s, out_channels)."""
    b = x.shape[0]
    skip_gain = self.skip_gains[self._level(x.shape[1])] if self.skip_gains else None
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), (b,))
    ncsn = self.arch == "ncsnpp"
    noise_ch = self.model_channels * self.channel_mult_noise
    emb_ch = self.model_channels * self.channel_mult_emb
    init = layers.xavier_uniform

    # Mapping network: noise (and label) embedding → MLP.
    if ncsn:
      # Frozen random frequencies: a non-trainable collection, saved with checkpoints.
      freqs = self.variable(
        "buffers",
        "fourier_freqs",
        lambda: (
          self.fourier_scale
          * nn.initializers.normal(1.0)(self.make_rng("params"), (noise_ch // 2,), jnp.float32)
        ),
      ).value
      emb = layers.fourier_features(t, freqs)
    else:
      emb = layers.positional_features(t, noise_ch, endpoint=True)
    if self.num_classes:
      onehot = _one_hot(labels, self.num_classes, b)
      if train and self.label_dropout:
        u = jax.random.uniform(self.make_rng("dropout"), (b, 1))
        keep = (u >= self.label_dropout).astype(onehot.dtype)
        onehot = onehot * keep
      emb = emb + nn.Dense(noise_ch, kernel_init=init(), name="map_label")(
        onehot * math.sqrt(self.num_classes)
      )
    emb = nn.silu(nn.Dense(emb_ch, kernel_init=init(), name="map_layer0")(emb))
    emb = nn.silu(nn.Dense(emb_ch, kernel_init=init(), name="map_layer1")(emb)).astype(self.dtype)

    block = lambda out, name, **kw: layers.ResBlock(
      out,
      dropout=self.dropout,
      skip_scale=math.sqrt(0.5),
      eps=1e-6,
      resample_taps=self.resample_taps,
      resample_proj=True,
      film=False,
      winograd_min_side=self.winograd_min_side,
      dtype=self.dtype,
      name=name,
      **kw,
    )
    taps = self.resample_taps

    # Encoder.
    h = x.astype(self.dtype)
    aux = h
    skips = []
    levels = len(self.channel_mult)
    for level, mult in enumerate(self.channel_mult):
      res = self.nominal_resolution >> level
      if level == 0:
        h = layers.Conv(
          self.model_channels,
          3,
          winograd_min_side=self.winograd_min_side,
          dtype=self.dtype,
          name=f"enc_{res}_conv",
        )(h)
        skips.append(h)
      else:
        h = block(h.shape[-1], f"enc_{res}_down", down=True)(h, emb, train)
        skips.append(h)
        if ncsn:
          # Residual aux path: a strided conv of the previous aux joins the main path.
          aux_out = layers.Conv(
            h.shape[-1],
            3,
            down=True,
            fused_down=True,
            resample_taps=taps,
            winograd_min_side=self.winograd_min_side,
            dtype=self.dtype,
            name=f"enc_{res}_aux_residual",
          )(aux)
          h = aux = skips[-1] = (h + aux_out) / math.sqrt(2)
      for idx in range(self.num_blocks):
        h = block(
          self.model_channels * mult,
          f"enc_{res}_block{idx}",
          attention=res in self.attn_resolutions,
        )(h, emb, train)
        skips.append(h)

    # Decoder.
    out = None
    for level in reversed(range(levels)):
      mult = self.channel_mult[level]
      res = self.nominal_resolution >> level
      if level == levels - 1:
        h = block(h.shape[-1], f"dec_{res}_in0", attention=True)(h, emb, train)
        h = block(h.shape[-1], f"dec_{res}_in1")(h, emb, train)
      else:
        h = block(h.shape[-1], f"dec_{res}_up", up=True)(h, emb, train)
      for idx in range(self.num_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        attn = idx == self.num_blocks and res in self.attn_resolutions
        h = block(self.model_channels * mult, f"dec_{res}_block{idx}", attention=attn)(
          h, emb, train
        )
      if level == 0:
        tmp = layers.group_norm(h.shape[-1], 1e-6, self.dtype, name=f"dec_{res}_aux_norm")(h)
        out = layers.Conv(
          self.out_channels * self.scale**2,
          3,
          init_gain=1e-5,
          winograd_min_side=self.winograd_min_side,
          dtype=self.dtype,
          name=f"dec_{res}_aux_conv",
        )(nn.silu(tmp))
    out = layers.pixel_shuffle(out, self.scale)
    if skip_gain is not None:
      up = jax.image.resize(x.astype(jnp.float32), out.shape, "bilinear")
      out = out + (skip_gain * up).astype(out.dtype)
    return out

  def _level(self, side: int) -> int:
    """Index (level − 1) of the input side N/s^l, from the U-Net's nominal level-1 side N/s."""
    sides = [self.nominal_resolution // self.scale**i for i in range(len(self.skip_gains))]
    if side not in sides:
      raise ValueError(
        f"Input side {side} is not one of the level sides {sides} this generator's skip_gains "
        "are defined for."
      )
    return sides.index(side)


def _one_hot(labels, num_classes, batch):
  if labels is None:
    raise ValueError(f"This generator is class-conditional ({num_classes} classes): pass labels.")
  labels = jnp.asarray(labels)
  if labels.ndim == 2:
    return labels.astype(jnp.float32)
  return nn.one_hot(labels.reshape(batch), num_classes, dtype=jnp.float32)
