"""Random-access image sources: in-memory arrays (npz, idx, synthetic), image files (a folder, a
zip archive) decoded on demand, and TFDS ArrayRecord splits, all behind the `Source` protocol."""

from __future__ import annotations

import gzip
import io
import json
import os
import pathlib
import struct
import zipfile
from typing import Protocol

import numpy as np
from absl import logging

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class DataError(ValueError):
  """Unusable data: a missing path, unreadable files, or images of the wrong rank/channels."""


# ---- sources -------------------------------------------------------------------------------------


class Source(Protocol):
  """A random-access image dataset: what the pipeline reads batches from.

  `get(indices)` returns (uint8 images (B, H, W, C) — or a list of (H, W, C) arrays when the files
  differ in size —, int32 labels (B,)). `labels` holds every label when they are in memory (None
  when they are read with the images, e.g. TFDS); `has_labels` is False for a dataset without
  labels (whose labels then read as 0). `origin` names it in messages.
  """

  origin: str
  labels: np.ndarray | None
  has_labels: bool

  def __len__(self) -> int: ...

  def get(self, indices) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]: ...


class ArraySource:
  """In-memory uint8 images (M, H, W, C) and int labels (M,)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray | None, origin: str):
    images = np.asarray(images)
    self.has_labels = labels is not None
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4:
      raise DataError(f"{origin}: images must have shape (M, H, W[, C]), got {images.shape}.")
    if images.dtype != np.uint8:
      images = _to_uint8(images, origin)
    self.images = images
    self.labels = (
      np.zeros(len(images), np.int32)
      if labels is None
      else np.asarray(labels).astype(np.int32).reshape(-1)
    )
    if len(self.labels) != len(images):
      raise DataError(f"{origin}: {len(images)} images but {len(self.labels)} labels.")
    self.origin = origin

  def __len__(self):
    return len(self.images)

  def get(self, indices):
    return self.images[indices], self.labels[indices]


def _to_uint8(images, origin):
  lo, hi = float(images.min()), float(images.max())
  if lo >= 0 and hi <= 1.0:
    return np.round(images * 255).astype(np.uint8)
  if lo >= -1 and hi <= 1.0:
    return np.round((images + 1) * 127.5).astype(np.uint8)
  if lo >= 0 and hi <= 255:
    return np.round(images).astype(np.uint8)
  raise DataError(f"{origin}: float images must lie in [0,1], [-1,1] or [0,255]; got [{lo}, {hi}].")


class FileSource:
  """Image files decoded on demand (a folder, or members of a zip archive)."""

  def __init__(self, names, labels, read_bytes, origin):
    self.names, self._read, self.origin = names, read_bytes, origin
    self.has_labels = labels is not None
    self.labels = np.zeros(len(names), np.int32) if labels is None else labels

  def __len__(self):
    return len(self.names)

  def get(self, indices):
    images = [_decode(self._read(self.names[i]), f"{self.origin}:{self.names[i]}") for i in indices]
    if len({im.shape for im in images}) == 1:
      images = np.stack(images)
    # Else a list: files may differ in size or channels; `preprocess` handles them one by one.
    return images, self.labels[np.asarray(indices)]


def _decode(raw: bytes, name: str) -> np.ndarray:
  from PIL import Image

  try:
    with Image.open(io.BytesIO(raw)) as im:
      im.load()
      if im.mode in ("RGBA", "LA", "P", "CMYK", "YCbCr", "I;16", "I", "F"):
        im = im.convert("RGB" if im.mode != "LA" else "L")
      arr = np.asarray(im)
  except Exception as e:
    raise DataError(f"Cannot decode image {name}: {e}") from e
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
    raise DataError(f"Image {name} has shape {arr.shape}; expected (H, W) or (H, W, 1|3).")
  return arr.astype(np.uint8)


def _validated(names, read_bytes, origin):
  """Keeps the files whose header opens; warns with a count, errors if none is readable."""
  from PIL import Image

  good, bad = [], []
  for n in names:
    try:
      with Image.open(io.BytesIO(read_bytes(n))) as im:
        im.verify()
      good.append(n)
    except Exception:
      bad.append(n)
  if bad:
    logging.warning(
      "%s: skipped %d unreadable image file(s) of %d, e.g. %s",
      origin,
      len(bad),
      len(names),
      bad[:3],
    )
  if not good:
    raise DataError(
      f"{origin}: none of the {len(names)} image files could be read (e.g. {bad[:3]})."
    )
  return good


def folder_source(path: str) -> FileSource:
  root = pathlib.Path(path)
  if not root.is_dir():
    raise DataError(f"data.source='folder' but data.path={path!r} is not a directory.")
  names = sorted(
    str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
  )
  if not names:
    raise DataError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) under {path!r}.")
  read = lambda n: (root / n).read_bytes()
  names = _validated(names, read, path)
  return FileSource(names, _labels_from_json(root / "dataset.json", names, path), read, path)


def zip_source(path: str) -> FileSource:
  if not os.path.isfile(path):
    raise DataError(f"data.source='zip' but data.path={path!r} is not a file.")
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise DataError(f"{path!r} is not a readable zip archive: {e}") from e
  names = sorted(n for n in archive.namelist() if n.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise DataError(f"The zip archive {path!r} holds no image files.")
  read = archive.read
  names = _validated(names, read, path)
  meta = json.loads(archive.read("dataset.json")) if "dataset.json" in archive.namelist() else None
  return FileSource(names, _labels_from_meta(meta, names, path), read, path)


def _labels_from_json(path: pathlib.Path, names, origin):
  meta = json.loads(path.read_text()) if path.exists() else None
  return _labels_from_meta(meta, names, origin)


def _labels_from_meta(meta, names, origin):
  if not meta or not meta.get("labels"):
    return None
  table = {n.replace("\\", "/"): int(lbl) for n, lbl in meta["labels"]}
  missing = [n for n in names if n not in table]
  if missing:
    raise DataError(
      f"{origin}: dataset.json has no label for {missing[:3]} ({len(missing)} files)."
    )
  return np.asarray([table[n] for n in names], np.int32)


def npz_source(path: str, split: str) -> ArraySource:
  if not os.path.isfile(path):
    raise DataError(f"data.source='npz' but data.path={path!r} is not a file.")
  with np.load(path, allow_pickle=False) as f:
    keys = set(f.files)
    for xk, yk in ((f"x_{split}", f"y_{split}"), ("images", "labels"), ("x", "y")):
      if xk in keys:
        return ArraySource(f[xk], f[yk] if yk in keys else None, f"{path}[{xk}]")
  raise DataError(
    f"{path!r} has no image array for split {split!r}: expected x_{split} (with "
    f"y_{split}) or images (with labels); found {sorted(keys)}."
  )


def read_idx(path) -> np.ndarray:
  """Reads an MNIST-style idx file (optionally gzip-compressed)."""
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise DataError(f"{path} is not an idx file (bad magic number).")
  dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[
    raw[2]
  ]
  ndim = raw[3]
  shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
  data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise DataError(f"{path} is truncated: header says {shape}, found {data.size} values.")
  return data.reshape(shape)


def idx_source(path: str, split: str) -> ArraySource:
  prefix = {"train": "train", "test": "t10k"}.get(split)
  if prefix is None:
    raise DataError(f"data.source='idx' supports splits 'train' and 'test', got {split!r}.")
  root = pathlib.Path(path)
  if not root.is_dir():
    raise DataError(
      f"data.source='idx' but data.path={path!r} is not a directory (expected the "
      f"idx files, e.g. from `apt-get install dataset-fashion-mnist`)."
    )
  files = {}
  for kind, pattern in (
    ("images", f"{prefix}-images-idx3-ubyte"),
    ("labels", f"{prefix}-labels-idx1-ubyte"),
  ):
    found = [root / (pattern + ext) for ext in (".gz", "") if (root / (pattern + ext)).exists()]
    if not found:
      raise DataError(f"No {pattern}[.gz] in {path!r}.")
    files[kind] = found[0]
  return ArraySource(read_idx(files["images"]), read_idx(files["labels"]), str(files["images"]))


def tfds_source(name: str, split: str):
  import tensorflow_datasets as tfds

  try:
    ds = tfds.data_source(name, split=split)
  except Exception as e:
    raise DataError(
      f"TFDS dataset {name!r} split {split!r} is not available as a random-access source "
      f"({type(e).__name__}: {e}). Prepare it once in ArrayRecord format "
      f"(`tfds build {name} --file_format=array_record`, TFDS_DATA_DIR honoured), or use "
      "data.source='npz'/'idx'/'folder'/'zip'."
    ) from e
  return TfdsSource(ds, f"tfds:{name}/{split}")


class TfdsSource:
  """A TFDS random-access (ArrayRecord) split; labels are read with the images."""

  labels = None
  has_labels = True

  def __init__(self, ds, origin):
    self.ds, self.origin = ds, origin

  def __len__(self):
    return len(self.ds)

  def get(self, indices):
    items = [self.ds[int(i)] for i in indices]
    images = np.stack([np.asarray(it["image"]) for it in items])
    labels = np.asarray([int(it.get("label", 0)) for it in items], np.int32)
    return images.astype(np.uint8), labels


def synthetic_source(size: int, channels: int, num_classes: int, count: int = 256) -> ArraySource:
  """Smooth class-dependent patterns (deterministic): something a tiny model can learn."""
  rng = np.random.default_rng(1234)
  yy, xx = np.mgrid[0:size, 0:size] / size
  labels = np.arange(count) % max(num_classes, 1)
  freq = 1 + labels[:, None, None] % 4
  phase = rng.uniform(0, 2 * np.pi, (count, 1, 1))
  base = np.sin(2 * np.pi * freq * (xx + yy)[None] + phase)
  imgs = np.stack(
    [base * (0.5 + 0.5 * np.cos(c + labels))[:, None, None] for c in range(channels)], -1
  )
  return ArraySource(np.round((imgs + 1) * 127.5).astype(np.uint8), labels, "synthetic")


def make_source(config, split: str | None = None) -> Source:
  """The source named by config.data (`source`, `path`, `name`), for `split` (default: data.split)."""
  d = config.data
  split = split or d.split
  if d.source == "synthetic":
    return synthetic_source(d.image_size, d.channels, d.num_classes)
  if d.source == "tfds":
    return tfds_source(d.name, split)
  if d.source == "npz":
    return npz_source(d.path, split)
  if d.source == "idx":
    return idx_source(d.path, split)
  if d.source == "folder":
    return folder_source(d.path)
  if d.source == "zip":
    return zip_source(d.path)
  raise DataError(f"Unknown data.source {d.source!r}.")
