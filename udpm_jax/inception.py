"""The FID Inception-v3 (TF `inception-2015-12-05` graph, pool3 2048-d features) in JAX.

Weights are a flat dict named as in pytorch-fid (`Mixed_5b.branch1x1.conv.weight`, …) and are
passed as an argument, so a jitted `features` never embeds them. Architecture facts of the FID
variant: conv → BatchNorm (no scale, eps 1e-3) → ReLU; the pool branches of blocks A, C and
Mixed_7b average 3×3 windows without counting padding, Mixed_7c's pool branch is a max pool.

Input convention (pytorch-fid): images in [-1, 1] of any size are resized to 299×299 with
bilinear interpolation (half-pixel centres, no antialiasing: torch's align_corners=False), then
fed as is (pytorch-fid's 2x − 1 on [0, 1] inputs). Grayscale is replicated to RGB.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def load_params(path=None) -> dict:
  """FID Inception weights: an .npz in pytorch-fid naming, pytorch-fid's .pth (read without torch
  and without executing pickled code), or None for the verified download into the asset cache."""
  from udpm_jax import assets, torch_pickle

  if path is None:
    path = assets.fetch("inception_fid")
  path = str(path)
  if path.endswith(".npz"):
    flat = assets.read_npz(path)
  else:
    flat = torch_pickle.load_state_dict(path)
  missing = [k for k in _required_keys() if k not in flat]
  if missing:
    raise ValueError(
      f"{path} is not the FID Inception weights: it lacks {missing[:4]} "
      f"(it holds {sorted(flat)[:4]}…); pass pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
      "or an .npz of the same names."
    )
  params = {}
  for k, v in flat.items():
    if k.startswith("fc.") or k.endswith("num_batches_tracked"):
      continue
    v = np.asarray(v, np.float32)
    # The TF graph's BatchNorm has no scale; pytorch-fid stores it as ones, the .npz omits it.
    # Dropping the ones makes both forms the same params (and the same weights_digest).
    if k.endswith(".bn.weight") and np.all(v == 1.0):
      continue
    params[k] = jnp.asarray(v)
  return params


def weights_digest(params: dict) -> str:
  """sha256 over the weights' names, shapes and float32 values: the same for the .pth and the .npz
  form of one network, so reference statistics record which network made them."""
  import hashlib

  h = hashlib.sha256()
  for name in sorted(params):
    value = np.ascontiguousarray(np.asarray(params[name], np.float32))
    h.update(f"{name}:{value.shape};".encode())
    h.update(value.tobytes())
  return h.hexdigest()


def _required_keys():
  return [
    "Conv2d_1a_3x3.conv.weight",
    "Mixed_7c.branch_pool.conv.weight",
    "Mixed_7c.branch_pool.bn.running_var",
  ]


def _conv_bn_relu(p, name, x, stride=1, padding=(0, 0)):
  w = p[f"{name}.conv.weight"]  # OIHW
  y = jax.lax.conv_general_dilated(
    x,
    jnp.transpose(w, (2, 3, 1, 0)),
    (stride, stride),
    [(padding[0], padding[0]), (padding[1], padding[1])],
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=jax.lax.Precision.HIGHEST,
  )
  mean, var, beta = p[f"{name}.bn.running_mean"], p[f"{name}.bn.running_var"], p[f"{name}.bn.bias"]
  gamma = p.get(f"{name}.bn.weight", 1.0)
  return jax.nn.relu((y - mean) * (gamma / jnp.sqrt(var + 1e-3)) + beta)


def _max_pool(x, k=3, s=2, pad=0):
  return jax.lax.reduce_window(
    x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1), [(0, 0), (pad, pad), (pad, pad), (0, 0)]
  )


def _avg_pool_exclude_pad(x):
  """3×3, stride 1, padding 1, averaging only the real pixels (count_include_pad=False)."""
  pads = [(0, 0), (1, 1), (1, 1), (0, 0)]
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  return total / count


def _block_a(p, n, x):
  c = lambda b, h, **kw: _conv_bn_relu(p, f"{n}.{b}", h, **kw)
  b1 = c("branch1x1", x)
  b5 = c("branch5x5_2", c("branch5x5_1", x), padding=(2, 2))
  b3 = c(
    "branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x), padding=(1, 1)), padding=(1, 1)
  )
  bp = c("branch_pool", _avg_pool_exclude_pad(x))
  return jnp.concatenate([b1, b5, b3, bp], -1)


def _block_b(p, n, x):
  c = lambda b, h, **kw: _conv_bn_relu(p, f"{n}.{b}", h, **kw)
  b3 = c("branch3x3", x, stride=2)
  bd = c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x), padding=(1, 1)), stride=2)
  return jnp.concatenate([b3, bd, _max_pool(x)], -1)


def _block_c(p, n, x):
  c = lambda b, h, **kw: _conv_bn_relu(p, f"{n}.{b}", h, **kw)
  b1 = c("branch1x1", x)
  b7 = c("branch7x7_3", c("branch7x7_2", c("branch7x7_1", x), padding=(0, 3)), padding=(3, 0))
  bd = c("branch7x7dbl_1", x)
  for i, pad in ((2, (3, 0)), (3, (0, 3)), (4, (3, 0)), (5, (0, 3))):
    bd = c(f"branch7x7dbl_{i}", bd, padding=pad)
  bp = c("branch_pool", _avg_pool_exclude_pad(x))
  return jnp.concatenate([b1, b7, bd, bp], -1)


def _block_d(p, n, x):
  c = lambda b, h, **kw: _conv_bn_relu(p, f"{n}.{b}", h, **kw)
  b3 = c("branch3x3_2", c("branch3x3_1", x), stride=2)
  b7 = c("branch7x7x3_3", c("branch7x7x3_2", c("branch7x7x3_1", x), padding=(0, 3)), padding=(3, 0))
  b7 = c("branch7x7x3_4", b7, stride=2)
  return jnp.concatenate([b3, b7, _max_pool(x)], -1)


def _block_e(p, n, x, pool):
  c = lambda b, h, **kw: _conv_bn_relu(p, f"{n}.{b}", h, **kw)
  b1 = c("branch1x1", x)
  b3 = c("branch3x3_1", x)
  b3 = jnp.concatenate(
    [c("branch3x3_2a", b3, padding=(0, 1)), c("branch3x3_2b", b3, padding=(1, 0))], -1
  )
  bd = c("branch3x3dbl_2", c("branch3x3dbl_1", x), padding=(1, 1))
  bd = jnp.concatenate(
    [c("branch3x3dbl_3a", bd, padding=(0, 1)), c("branch3x3dbl_3b", bd, padding=(1, 0))], -1
  )
  pooled = _avg_pool_exclude_pad(x) if pool == "avg" else _max_pool(x, 3, 1, 1)
  return jnp.concatenate([b1, b3, bd, c("branch_pool", pooled)], -1)


def resize_299(images):
  """Bilinear resize to 299×299 as torch's F.interpolate(mode='bilinear', align_corners=False)."""
  b, h, w, c = images.shape
  if (h, w) == (299, 299):
    return images
  return jax.image.resize(images, (b, 299, 299, c), "linear", antialias=False)


def network(p, x):
  """The Inception trunk on (B, 299, 299, 3) inputs in [-1, 1] → (B, 2048)."""
  c = lambda name, h, **kw: _conv_bn_relu(p, name, h, **kw)
  x = c("Conv2d_1a_3x3", x, stride=2)
  x = c("Conv2d_2a_3x3", x)
  x = c("Conv2d_2b_3x3", x, padding=(1, 1))
  x = _max_pool(x)
  x = c("Conv2d_3b_1x1", x)
  x = c("Conv2d_4a_3x3", x)
  x = _max_pool(x)
  for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
    x = _block_a(p, name, x)
  x = _block_b(p, "Mixed_6a", x)
  for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
    x = _block_c(p, name, x)
  x = _block_d(p, "Mixed_7a", x)
  x = _block_e(p, "Mixed_7b", x, "avg")
  x = _block_e(p, "Mixed_7c", x, "max")
  return jnp.mean(x, axis=(1, 2))


def features(params, images):
  """Pool3 features (B, 2048) of NHWC images in [-1, 1] of any size (resized to 299×299)."""
  images = jnp.asarray(images, jnp.float32)
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  return network(params, resize_299(images))
