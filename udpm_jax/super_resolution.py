"""Super-resolution with a trained UDPM, measured against classical upsampling.

The low-resolution input of level l is H^l x_0 in image units (`low_resolution`; for the 'norm'
box kernel, average pooling); UDPM (`sampling.make_upsample_fn`) is compared with nearest-neighbour
and bicubic resizing of the same input (`classical_upsampling`) in PSNR, LPIPS and, given a feature
network and reference statistics, FID (`measure`). The command line is `udpm_jax.superres`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from udpm_jax import data, image_io, metrics, sampling
from udpm_jax import lpips as lpips_lib
from udpm_jax import process as proc


def low_resolution(config, images, level: int):
  """H^level x_0 in image units (divided by (Σw)^level), from images in [-1, 1]."""
  sched = proc.Schedule.from_config(config)
  return proc.H(sched, images, level) / float(sched.kernel_array.sum()) ** level


def classical_upsampling(y, size: int) -> dict:
  """Nearest-neighbour and bicubic (Keys, a = −0.5, as jax.image.resize) resizing to `size`."""
  shape = (y.shape[0], size, size, y.shape[-1])
  return {
    method: jnp.clip(jax.image.resize(y, shape, method), -1.0, 1.0)
    for method in ("nearest", "bicubic")
  }


def psnr(x, y):
  """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
  mse = jnp.mean((x - y) ** 2, axis=(1, 2, 3))
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))


def measure(
  config,
  variables,
  images,
  labels,
  level: int,
  key,
  *,
  lpips_params=None,
  batch: int = 250,
  features=None,
  reference=None,
) -> dict:
  """Mean PSNR (and LPIPS when `lpips_params` is given) of UDPM vs classical upsampling.

  With `features` (uint8 NHWC → (B, D), e.g. `evaluation.fid_features(config)`) and `reference`
  (`metrics.FIDStats` of training images), also the FID of each method's outputs, and of the
  held-out images themselves ('original': the floor FID reaches with this many images). Started
  at level l, UDPM's FID is that of the chain from a true x_l: which level limits sample quality.

  `images` uint8 or float in [-1, 1], (M, N, N, C). Returns {method: {'psnr': dB, 'lpips': d,
  'fid': f}}.
  """

  if (features is None) != (reference is None):
    raise ValueError("FID needs both `features` and `reference` (or neither).")

  images = np.asarray(images)
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 127.5 - 1.0
  upsample = sampling.make_upsample_fn(config, level)
  distance = jax.jit(lpips_lib.lpips_distance)
  sums: dict[str, dict[str, float]] = {}
  stats: dict[str, metrics.FIDStats] = {}
  for b, start in enumerate(range(0, len(images), batch)):
    x0 = images[start : start + batch]
    y = low_resolution(config, x0, level)
    lab = None if labels is None else labels[start : start + batch]
    outputs = classical_upsampling(y, x0.shape[1])
    outputs["udpm"] = upsample(variables, jax.random.fold_in(key, b), y, lab)
    for method, out in outputs.items():
      row = sums.setdefault(method, {"psnr": 0.0, "lpips": 0.0})
      row["psnr"] += float(np.sum(psnr(out, x0)))
      if lpips_params is not None:
        row["lpips"] += float(np.sum(distance(lpips_params, out, x0)))
    if features is not None:
      for method, out in {**outputs, "original": x0}.items():
        f = metrics.FIDStats.from_model_output(np.asarray(features(image_io.to_uint8(out))))
        stats[method] = stats[method].merge(f) if method in stats else f
  n = len(images)
  report = {
    method: {k: v / n for k, v in row.items() if lpips_params is not None or k == "psnr"}
    for method, row in sums.items()
  }
  for method, s in stats.items():
    report.setdefault(method, {})["fid"] = metrics.fid(s, reference)
  return report


def read_low_resolution(path, config, level: int):
  """Images to upsample from an .npz: 'images' uint8 (M, n, n[, C]) at the level's side n, and
  optionally 'labels' (M,) for class-conditional models. Returns (float images in [-1, 1] with the
  model's channels, int32 labels or None)."""

  side = config.data.image_size // config.process.scale**level
  try:
    with np.load(path, allow_pickle=False) as f:
      if "images" not in f.files:
        raise ValueError(f"it has no 'images' array (found {f.files})")
      images = f["images"]
      labels = f["labels"].astype(np.int32).reshape(-1) if "labels" in f.files else None
  except (OSError, ValueError, EOFError) as e:
    raise ValueError(f"Cannot read low-resolution images from {path}: {e}") from e
  images = images[..., None] if images.ndim == 3 else images
  if images.ndim != 4 or images.shape[1:3] != (side, side) or images.dtype != np.uint8:
    raise ValueError(
      f"{path}: 'images' is {images.dtype} {images.shape}; --level={level} of this run needs "
      f"uint8 (M, {side}, {side}, C) (image_size {config.data.image_size} / "
      f"{config.process.scale}^{level})."
    )
  images = data.match_channels(images, config.data.channels, path)
  if labels is not None:
    if len(labels) != len(images):
      raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels.")
    data.check_labels(labels, config, path)
  elif config.data.num_classes:
    logging.warning("%s has no 'labels': using classes i mod %d.", path, config.data.num_classes)
  return images.astype(np.float32) / 127.5 - 1.0, labels
