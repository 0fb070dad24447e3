"""The UDPM discriminator: a DDGAN-style, level-conditioned residual network.

It scores the level-(l−1) image at its own resolution (side N down to N/s^{L−1}), conditioned on
the level's t_l through a sinusoidal embedding (plus a class embedding when class-conditional).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from udpm_jax.models import layers

Dtype = Any


class Discriminator(nn.Module):
  """1×1 stem → residual FiLM blocks (2× down after the first) → minibatch-stddev → 3×3 conv →
  spatial sum → linear logit."""

  num_blocks: int
  base_channels: int = 192
  num_classes: int = 0  # > 0: class-conditional
  dropout: float = 0.0
  stddev_group: int = 4
  stddev_features: int = 1
  stddev_by_class: bool = False  # the statistic over same-label samples of the batch (see below)
  stddev_gain: float = 1.0
  quirk_stddev_sum_chw: bool = True  # the release sums the stddev feature over C·H·W (not mean)
  quirk_logit_dropout: bool = True  # the release applies dropout to the final logit
  # 3×3 convolutions with outputs of at least this side (even) by Winograd F(2×2, 3×3); 0: never.
  winograd_min_side: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t, labels=None, train: bool = False):
    """Args: x (B, n, n, C); t scalar or (B,); labels int (B,) or one-hot when conditional.
    Returns logits (B,)."""
    b = x.shape[0]
    ch = self.base_channels
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), (b,))
    emb = layers.positional_features(t, ch, endpoint=False, order="cos_sin")
    if self.num_classes:
      if labels is None:
        raise ValueError(
          f"This discriminator is class-conditional ({self.num_classes} classes): pass labels."
        )
      onehot = (
        labels.astype(jnp.float32)
        if labels.ndim == 2
        else nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
      )
      emb = emb + nn.Dense(ch, kernel_init=layers.kaiming_normal(), name="map_label")(onehot)
    elif self.stddev_by_class:
      raise ValueError(
        "stddev_by_class=True needs a class-conditional discriminator (num_classes > 0)."
      )
    emb = emb.astype(self.dtype)
    lrelu = lambda v: nn.leaky_relu(v, 0.2)
    h = lrelu(
      layers.Conv(min(ch, 512), 1, init="kaiming", dtype=self.dtype, name="stem")(
        x.astype(self.dtype)
      )
    )
    for i in range(self.num_blocks):
      block = layers.ResBlock(
        min(ch * 2 ** (i + 1), 512),
        down=i > 0,
        dropout=self.dropout,
        eps=1e-5,
        resample_taps=(1, 1),
        film=True,
        init="kaiming",
        zero_gain=1.0,
        winograd_min_side=self.winograd_min_side,
        dtype=self.dtype,
        name=f"block{i}",
      )
      h = lrelu(block(h, emb, train))
    std = self._class_stddev_feature(h, onehot) if self.stddev_by_class else self._stddev_feature(h)
    # One channel beside hundreds: at gain 1 a trained D left it unused (README, CPU demo), and
    # the gain makes D rely on it early enough to stop a generator that ignores its input.
    std = std * self.stddev_gain
    h = jnp.concatenate([h, std], axis=-1)
    h = lrelu(
      layers.Conv(
        min(ch * 8, 512),
        3,
        init="kaiming",
        winograd_min_side=self.winograd_min_side,
        dtype=self.dtype,
        name="final_conv",
      )(h)
    )
    logit = nn.Dense(1, dtype=self.dtype, name="out")(jnp.sum(h, axis=(1, 2)))[:, 0]
    if self.quirk_logit_dropout:
      logit = nn.Dropout(self.dropout, deterministic=not train or self.dropout == 0)(logit)
    return logit.astype(jnp.float32)

  def _stddev_feature(self, h):
    """Minibatch standard deviation (StyleGAN2), grouping samples b and b + B/G as the release."""
    b, hh, ww, c = h.shape
    g = min(b, self.stddev_group)
    if b % g:
      raise ValueError(f"Batch {b} is not divisible by the stddev group {g}.")
    f = self.stddev_features
    y = h.astype(jnp.float32).reshape(g, b // g, hh, ww, f, c // f)
    std = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)  # (B/G, H, W, F, C/F)
    std = jnp.tile(self._reduce(std), (g, 1))  # sample b gets the statistic of b mod B/G
    return jnp.broadcast_to(std[:, None, None, :], (b, hh, ww, f)).astype(h.dtype)

  def _reduce(self, std):
    """(N, H, W, F, C/F) per-element stds → (N, F): summed (release quirk) or averaged."""
    return std.sum(axis=(1, 2, 4)) if self.quirk_stddev_sum_chw else std.mean(axis=(1, 2, 4))

  def _class_stddev_feature(self, h, onehot):
    """Minibatch standard deviation over the samples of each sample's own class in the batch.

    With a class-conditional D, the release's groups mix classes, so their spread is mostly the
    spread between classes, which a generator that draws one image per class reproduces; this
    statistic sees only the spread within a class (0 for a class with one sample in the batch).
    """
    b, hh, ww, c = h.shape
    f = self.stddev_features
    y = h.astype(jnp.float32).reshape(b, -1)
    count = jnp.maximum(onehot.sum(axis=0), 1.0)[:, None]  # (K, 1)
    mean = (onehot.T @ y) / count  # (K, HWC)
    var = (onehot.T @ jnp.square(y - onehot @ mean)) / count
    std = self._reduce(jnp.sqrt(onehot @ var + 1e-8).reshape(b, hh, ww, f, c // f))
    return jnp.broadcast_to(std[:, None, None, :], (b, hh, ww, f)).astype(h.dtype)
