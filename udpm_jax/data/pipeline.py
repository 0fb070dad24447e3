"""The input pipeline: preprocessing to the model's size and range, the deterministic
host-sharded batch order, the batch iterator, whole-split loading, and background prefetch."""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

import numpy as np
from absl import logging

from udpm_jax.data.sources import DataError, make_source

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
  if config.data.num_classes and not source.has_labels:
    raise DataError(
      f"{source.origin} has no labels, but the config is class-conditional "
      f"(data.num_classes={config.data.num_classes}): add labels (dataset.json, y_<split>), or "
      "set data.num_classes=0 and discriminator.conditional=False."
    )
  if source.labels is not None:  # in memory: every label is checked before training starts
    check_labels(source.labels, config, source.origin)
  group = config.data.get("class_groups", 0)
  if group:
    if not (config.data.num_classes and source.labels is not None):
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
