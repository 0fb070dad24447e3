"""Input pipelines: random-access image sources and a deterministic, host-sharded batch iterator.

Every source is random access (`len`, `get(indices)`), so batch k of a run is a pure function of
(seed, k): sample j of global batch k is example perm_e[(k·B + j) mod M] with the permutation of
epoch e drawn from (seed, e) (or, with data.class_groups, runs of same-class examples drawn from
(seed, k)), and flips are drawn from (seed, k). A resumed run therefore sees the
data it would have seen, and each host reads only its rows of the same global batch, so the global
batch does not depend on the number of hosts.

Sources (config.data.source): 'tfds' (`tfds.data_source`, ArrayRecord, no TensorFlow needed),
'folder' (png/jpg/jpeg/webp, recursive), 'zip' (EDM-style archive of PNGs with optional
dataset.json labels), 'npz' (x_<split>/y_<split> or images/labels), 'idx' (MNIST-style .gz files),
'synthetic' (generated, for tests).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pathlib
import queue
import struct
import threading
import time
import zipfile
from typing import Iterator

import numpy as np
from absl import logging

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class DataError(ValueError):
  """Unusable data: a missing path, unreadable files, or images of the wrong rank/channels."""


# ---- sources -------------------------------------------------------------------------------------


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
  return good, len(bad)


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
  names, skipped = _validated(names, read, path)
  labels = _labels_from_json(root / "dataset.json", names, path)
  src = FileSource(names, labels, read, path)
  src.skipped = skipped
  return src


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
  names, skipped = _validated(names, read, path)
  meta = json.loads(archive.read("dataset.json")) if "dataset.json" in archive.namelist() else None
  labels = _labels_from_meta(meta, names, path)
  src = FileSource(names, labels, read, path)
  src.skipped = skipped
  return src


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
  return _TfdsSource(ds, f"tfds:{name}/{split}")


class _TfdsSource:
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


def make_source(config, split: str | None = None):
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


# ---- preprocessing -------------------------------------------------------------------------------


def preprocess(images: np.ndarray, config, origin: str = "data") -> np.ndarray:
  """uint8 (B, H, W, C) → float32 (B, N, N, channels) in [-1, 1], per config.data.resize."""
  d = config.data
  if isinstance(images, list):
    return np.concatenate([preprocess(im[None], config, origin) for im in images])
  images = match_channels(images, d.channels, origin)
  n = d.image_size
  h, w = images.shape[1:3]
  if (h, w) != (n, n):
    if d.resize == "pad" and h <= n and w <= n:
      top, left = (n - h) // 2, (n - w) // 2
      x = np.full((len(images), n, n, images.shape[-1]), -1.0, np.float32)
      x[:, top : top + h, left : left + w] = images / 127.5 - 1.0
      return x
    if d.resize in ("resize", "center_crop"):
      images = _resize(images, n, crop=d.resize == "center_crop")
    else:
      raise DataError(
        f"{origin}: images are {h}×{w} but data.image_size={n} and "
        f"data.resize={d.resize!r}; use 'pad' (smaller images), 'resize' or "
        "'center_crop'."
      )
  return images.astype(np.float32) / 127.5 - 1.0


def match_channels(images, channels, origin):
  c = images.shape[-1]
  if c == channels:
    return images
  if c == 1 and channels == 3:
    return np.repeat(images, 3, axis=-1)
  if c == 3 and channels == 1:  # ITU-R 601 luma, as PIL's 'L' conversion
    luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.round(luma)[..., None].astype(np.uint8)
  raise DataError(f"{origin}: images have {c} channels; data.channels={channels} (valid: 1 or 3).")


def _resize(images, n, crop):
  from PIL import Image

  out = []
  for im in images:
    pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)
    if crop:
      s = min(pil.size)
      left, top = (pil.size[0] - s) // 2, (pil.size[1] - s) // 2
      pil = pil.crop((left, top, left + s, top + s))
    arr = np.asarray(pil.resize((n, n), Image.BICUBIC))
    out.append(arr[..., None] if arr.ndim == 2 else arr)
  return np.stack(out)


# ---- the deterministic iterator ------------------------------------------------------------------


def batch_indices(num_examples: int, global_batch: int, seed: int, step: int) -> np.ndarray:
  """Example indices of global batch `step`: epoch-wise permutations drawn from (seed, epoch)."""
  pos = step * global_batch + np.arange(global_batch, dtype=np.int64)
  epochs, offsets = np.divmod(pos, num_examples)
  out = np.empty(global_batch, np.int64)
  for e in np.unique(epochs):
    perm = np.random.default_rng([seed, int(e)]).permutation(num_examples)
    sel = epochs == e
    out[sel] = perm[offsets[sel]]
  return out


def class_grouped_indices(
  by_class: list[np.ndarray], global_batch: int, group: int, seed: int, step: int
) -> np.ndarray:
  """Example indices of global batch `step` made of B/`group` runs of `group` same-class examples.

  The classes of a batch are distinct while there are enough of them; examples are drawn without
  replacement inside each run. Everything is drawn from (seed, step), so a resumed run reads the
  same batches. `by_class[k]` holds the indices of class k's examples.
  """
  rng = np.random.default_rng([seed, step, 0xC1A55])
  nonempty = np.flatnonzero([len(ix) for ix in by_class])
  runs = global_batch // group
  classes = rng.choice(nonempty, runs, replace=runs > len(nonempty))
  return np.concatenate(
    [rng.choice(by_class[k], group, replace=group > len(by_class[k])) for k in classes]
  )


def flips(global_batch: int, seed: int, step: int) -> np.ndarray:
  """Which samples of global batch `step` are mirrored (drawn from (seed, step))."""
  return np.random.default_rng([seed, step, 0xF11B]).random(global_batch) < 0.5


def make_iterator(
  config,
  *,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields this host's rows of global batches start_step, start_step+1, …

  Args:
    config: experiment config (uses config.data).
    global_batch_size: B, split evenly across hosts.
    seed: data seed (order and flips).
    start_step: the first global step to produce (resume).
    process_index, process_count: this host and the host count (default: JAX's).

  Yields:
    {'image': float32 (B/hosts, N, N, C) in [-1, 1], 'label': int32 (B/hosts,)}.
  """
  if process_index is None or process_count is None:
    import jax

    process_index, process_count = jax.process_index(), jax.process_count()
  if global_batch_size % process_count:
    raise DataError(f"global batch {global_batch_size} is not divisible by {process_count} hosts.")
  per_host = global_batch_size // process_count
  rows = slice(process_index * per_host, (process_index + 1) * per_host)
  # Open (and validate) the source now, so bad paths fail before training writes anything.
  source = make_source(config)
  if len(source) == 0:
    raise DataError(f"{source.origin} is empty.")
  if config.data.num_classes and not getattr(source, "has_labels", True):
    raise DataError(
      f"{source.origin} has no labels, but the config is class-conditional "
      f"(data.num_classes={config.data.num_classes}): add labels (dataset.json, y_<split>), or "
      "set data.num_classes=0 and discriminator.conditional=False."
    )
  if hasattr(source, "labels"):  # in memory: every label is checked before training starts
    check_labels(source.labels, config, source.origin)
  group = config.data.get("class_groups", 0)
  if group:
    if not (config.data.num_classes and hasattr(source, "labels")):
      raise DataError(
        f"data.class_groups={group} needs class labels held in memory (idx, npz, folder or zip "
        f"sources with labels and data.num_classes > 0); {source.origin} with "
        f"data.num_classes={config.data.num_classes} has none. Set data.class_groups=0."
      )
    if global_batch_size % group:
      raise DataError(
        f"global batch {global_batch_size} is not a multiple of data.class_groups={group}."
      )
    by_class = [np.flatnonzero(source.labels == k) for k in range(config.data.num_classes)]
    order = lambda step: class_grouped_indices(by_class, global_batch_size, group, seed, step)
  else:
    order = lambda step: batch_indices(len(source), global_batch_size, seed, step)
  logging.info(
    "Data: %s, %d examples, global batch %d (%d per host).",
    source.origin,
    len(source),
    global_batch_size,
    per_host,
  )

  def batches(step):
    while True:
      idx = order(step)[rows]
      images, labels = source.get(idx)
      check_labels(labels, config, source.origin)  # streamed sources (TFDS)
      x = preprocess(images, config, source.origin)
      if config.data.random_flip:
        flip = flips(global_batch_size, seed, step)[rows]
        x[flip] = x[flip, :, ::-1]
      yield {"image": x, "label": labels.astype(np.int32)}
      step += 1

  return batches(start_step)


def check_labels(labels, config, origin) -> None:
  """Out-of-range labels would one-hot to zeros and silently switch class conditioning off."""
  k = config.data.num_classes
  labels = np.asarray(labels)
  if k and labels.size and (labels.min() < 0 or labels.max() >= k):
    bad = np.unique(labels[(labels < 0) | (labels >= k)])
    raise DataError(
      f"{origin}: labels must lie in [0, data.num_classes={k}); found {bad[:5].tolist()} "
      f"(labels span [{labels.min()}, {labels.max()}]). Set data.num_classes to the dataset's "
      "class count."
    )


def load_arrays(config, split: str | None = None, limit: int | None = None):
  """All (or the first `limit`) examples of a split, preprocessed to uint8 at the model's size.

  Returns:
    (images uint8 (M, N, N, C), labels int32 (M,)): e.g. for FID reference statistics.
  """
  source = make_source(config, split)
  n = len(source) if limit is None else min(limit, len(source))
  out_x, out_y = [], []
  for start in range(0, n, 1000):
    idx = np.arange(start, min(start + 1000, n))
    images, labels = source.get(idx)
    x = preprocess(images, config, source.origin)
    out_x.append(np.round((x + 1) * 127.5).astype(np.uint8))
    out_y.append(labels)
  return np.concatenate(out_x), np.concatenate(out_y).astype(np.int32)


class Prefetch:
  """Iterates `batches` in a background thread, up to `size` batches ahead, so that reading and
  decoding overlap the device's work; the order is unchanged (one producer).

  `wait_s` accumulates the time the consumer waited for a batch: near 0 when loading keeps up.
  An error of the source is raised by the `next` that reaches it. `close()` stops the thread.
  """

  _END = object()

  def __init__(self, batches: Iterator, size: int = 2):
    self._batches, self._queue = batches, queue.Queue(maxsize=max(int(size), 1))
    self._stop = threading.Event()
    self.wait_s = 0.0
    self._thread = threading.Thread(target=self._fill, name="udpm-prefetch", daemon=True)
    self._thread.start()

  def _fill(self):
    try:
      for item in self._batches:
        if not self._put(item):
          return
      self._put(self._END)
    except BaseException as e:  # noqa: BLE001  (handed to the consumer)
      self._put(e)

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def __iter__(self):
    return self

  def __next__(self):
    start = time.perf_counter()
    item = self._queue.get()
    self.wait_s += time.perf_counter() - start
    if item is self._END:
      self._queue.put(item)  # every later call ends too
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self):
    self._stop.set()
    self._thread.join(timeout=5)
