"""Turning model outputs into image files: uint8 conversion, PNG files and grids."""

from __future__ import annotations

import numpy as np
from etils import epath

from udpm_jax import files


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats → uint8 by rounding (x + 1) · 127.5, clipped (the EDM/FID convention)."""
  x = np.asarray(images, np.float32)
  return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images, nrow: int, pad: int = 1) -> np.ndarray:
  """(B, H, W, C) uint8 → one (rows·(H+pad)+pad, nrow·(W+pad)+pad, C) mosaic, row-major."""
  images = np.asarray(images)
  b, h, w, c = images.shape
  rows = -(-b // nrow)
  grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), images.dtype)
  for i, im in enumerate(images):
    r, k = divmod(i, nrow)
    grid[
      pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w
    ] = im
  return grid


def save_png(path, image_uint8) -> None:
  """Writes one (H, W, 1|3) uint8 image atomically (a crash never leaves a half-written PNG)."""
  from PIL import Image

  arr = np.asarray(image_uint8)
  image = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
  # Atomic, and overwrites a file a resumed run writes again.
  files.atomic_write(path, lambda fh: image.save(fh, format="PNG"))


def save_png_grid(path, images, nrow: int) -> None:
  """Images in [-1, 1] (B, H, W, C) → one PNG grid."""
  save_png(path, make_grid(to_uint8(images), nrow))


def save_pngs(directory, images, start_index: int, labels=None) -> list[str]:
  """One PNG per image named %06d[_label].png from `start_index`; returns the paths."""
  directory = epath.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  paths = []
  for i, im in enumerate(to_uint8(images)):
    name = f"{start_index + i:06d}" + (f"_{int(labels[i])}" if labels is not None else "") + ".png"
    save_png(directory / name, im)
    paths.append(str(directory / name))
  return paths


def level_tiles(levels, size: int) -> np.ndarray:
  """[x_L, …, x_0] → (B, L+1, size, size, C) floats in [-1, 1], each level upsampled (nearest).

  Coarse levels live in wider ranges (H^l x_0 spans ±s^l with the 'norm' kernel), so each level is
  divided by max(1, its largest magnitude over the batch) before display.
  """
  tiles = []
  for x in levels:
    x = np.asarray(x, np.float32)
    rep = size // x.shape[1]
    x = np.repeat(np.repeat(x, rep, axis=1), rep, axis=2)
    tiles.append(x / max(1.0, float(np.abs(x).max())))
  return np.stack(tiles, axis=1)


def levels_grid(levels, size: int) -> np.ndarray:
  """Rows = samples, columns = levels x_L … x_0, each upsampled (nearest) to side `size`.

  Returns float RGB in [0, 1], each level scaled into [-1, 1] as in `level_tiles`.
  """
  tiles = level_tiles(levels, size)  # (B, L+1, N, N, C)
  b, n_levels, n, _, c = tiles.shape
  grid = tiles.transpose(0, 2, 1, 3, 4).reshape(b * n, n_levels * n, c)
  if c == 1:
    grid = np.repeat(grid, 3, axis=-1)
  return np.clip((grid + 1) / 2, 0, 1)
