"""Small stand-ins with the generator/discriminator interfaces, to test the train step quickly."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def depth_to_space(x, s):
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, c // (s * s), s, s)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * s, w * s, c // (s * s))


class ToyGenerator(nn.Module):
  channels: int
  scale: int
  num_classes: int = 0
  dropout: float = 0.1
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, t, labels=None, train=False):
    # A frozen buffer like the real net's Fourier frequencies, in a non-'params' collection.
    freqs = self.variable("buffers", "freqs", lambda: jnp.arange(1.0, 5.0)).value
    emb = jnp.concatenate([jnp.sin(t[:, None] * freqs), jnp.cos(t[:, None] * freqs)], -1)
    h = nn.Conv(8, (3, 3), dtype=self.dtype)(x) + nn.Dense(8, dtype=self.dtype)(emb)[:, None, None]
    if labels is not None:
      h = h + nn.Embed(self.num_classes, 8)(labels)[:, None, None]
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    return depth_to_space(
      nn.Conv(self.channels * self.scale**2, (3, 3), dtype=self.dtype)(h), self.scale
    )


class ToyDiscriminator(nn.Module):
  num_classes: int = 0
  dropout: float = 0.2
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, t, labels=None, train=False):
    h = nn.leaky_relu(nn.Conv(8, (3, 3), dtype=self.dtype)(x), 0.2)
    h = jnp.mean(h, axis=(1, 2)) + nn.Dense(8)(t[:, None])
    if labels is not None:
      h = h + nn.Embed(self.num_classes, 8)(labels)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return nn.Dense(1, dtype=self.dtype)(h)[:, 0]


def toy_pair(config):
  return (
    ToyGenerator(config.data.channels, config.process.scale, config.data.num_classes),
    ToyDiscriminator(config.data.num_classes if config.discriminator.conditional else 0),
  )


def _pool4x4(x):
  """4×4 average pooling of (B, N, N, C) numpy or JAX images, flattened to (B, 16·C)."""
  b, n, _, c = x.shape
  return x.reshape(b, 4, n // 4, 4, n // 4, c).mean(axis=(2, 4)).reshape(b, -1)


def pooled_pixel_features(images_uint8):
  """A cheap stand-in for Inception features: 4×4 average-pooled pixels, (B, 16·C) float."""
  return _pool4x4(np.asarray(images_uint8, np.float64) / 255.0)


def _pooled_pixels(params, images):
  """`pooled_pixel_features` as a traceable feature network on images in [-1, 1]."""
  del params
  return _pool4x4((images + 1.0) / 2.0)


def pooled_pixel_net():
  """A `FeatureNet` computing `pooled_pixel_features` inside the evaluator's sharded program."""
  from udpm_jax import evaluation

  return evaluation.FeatureNet(_pooled_pixels, params=None, weights_digest="pooled-pixels")
