"""The pictures of a training run: learning curves and sample grids, as PNG arrays and files.

`read_scalars` reads what the run logged to TensorBoard (event files directly in the workdir; a
resumed run's later files replace the values of the steps it logged again), `read_fid` the
evaluation results; `make_plots` writes curves.png, samples_levels.png and samples.png (see the
command line, `udpm_jax.plot`).
"""

from __future__ import annotations

import json
import math
import re
import struct

import numpy as np
from absl import logging
from etils import epath

# The labels of known datasets (config.data.name); other runs are labelled by class index.
CLASS_NAMES = {
  "fashion_mnist": (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
  ),
  "cifar10": (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
  ),
}
UNCONDITIONAL_ROWS = 10
DPI = 100


# ---- reading what the run logged -------------------------------------------------------------


def _natural_key(name: str):
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def event_files(workdir) -> list[epath.Path]:
  """The TensorBoard event files directly in `workdir`, oldest first: their names are
  events.out.tfevents.<seconds>.<host>.<pid>.<counter>…, compared number by number."""
  files = epath.Path(workdir).glob("events.out.tfevents.*")
  return sorted(files, key=lambda p: _natural_key(p.name))


def scalar_value(value) -> float | None:
  """A summary value as a float: a `simple_value`, or a numeric one-element tensor (how TF2 and
  clu write scalars); None for anything else (images, text, hparams)."""
  if value.HasField("simple_value"):
    return float(value.simple_value)
  if value.HasField("tensor"):
    from tensorboard.util import tensor_util

    arr = tensor_util.make_ndarray(value.tensor)
    if arr.size == 1 and arr.dtype.kind in "fiu":
      return float(arr.reshape(()))
  return None


def records(path):
  """The records of a TFRecord file (the format of event files): 8-byte length, 4-byte CRC, data,
  4-byte CRC. A truncated last record (a writer killed mid-write) ends the iteration; CRCs are not
  checked (a damaged record fails to parse instead)."""
  with epath.Path(path).open("rb") as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        return
      yield data


def read_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
  """Every scalar logged in the workdir's event files: tag → [(step, value)] by ascending step.

  Files are read oldest first and a later value of a step replaces an earlier one, so the steps a
  resumed run logged again show the resumed run's values. Reads the files with TensorBoard's
  protocol buffers only (no TensorFlow).
  """
  from google.protobuf.message import DecodeError
  from tensorboard.compat.proto import event_pb2

  found: dict[str, dict[int, float]] = {}
  for path in event_files(workdir):
    for data in records(path):
      try:
        event = event_pb2.Event.FromString(data)
      except DecodeError:
        logging.warning("Stopping at a damaged record of %s.", path)
        break
      for value in event.summary.value:
        x = scalar_value(value)
        if x is not None:
          found.setdefault(value.tag, {})[int(event.step)] = x
  return {tag: sorted(points.items()) for tag, points in sorted(found.items())}


def by_level(scalars, name: str) -> dict[int, list[tuple[int, float]]]:
  """The per-level series `<name>/level_<l>` of `read_scalars`' result: level → points."""
  pattern = re.compile(rf"{re.escape(name)}/level_(\d+)")
  out = {}
  for tag, points in scalars.items():
    m = pattern.fullmatch(tag)
    if m:
      out[int(m.group(1))] = points
  return dict(sorted(out.items()))


_EVAL_FILE = re.compile(r"step_(\d+)(?:\.num\d+\.seed\d+)?\.json")


def _count_label(num: int) -> str:
  return f"{num // 1000}k" if num >= 1000 and num % 1000 == 0 else str(num)


def read_fid(workdir, scalars=None) -> dict[str, list[tuple[int, float]]]:
  """FID against step, one series per sample count: label 'FID-<num>' → [(step, fid)].

  Read from the evaluation results eval/step_<S>[.num<N>.seed<s>].json; `eval/fid` scalars of
  `scalars` (the in-training evaluation) fill in steps no result file covers, as 'FID (eval/fid)'.
  """
  series: dict[str, dict[int, float]] = {}
  counts: dict[str, int] = {}
  root = epath.Path(workdir) / "eval"
  files = sorted(root.glob("step_*.json"), key=lambda p: p.name) if root.exists() else []
  for path in files:
    if not _EVAL_FILE.fullmatch(path.name):
      continue
    try:
      result = json.loads(path.read_text())
      step, fid, num = int(result["step"]), float(result["fid"]), int(result["num_samples"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      logging.warning("Skipping unreadable evaluation result %s: %s", path, e)
      continue
    label = f"FID-{_count_label(num)}"
    series.setdefault(label, {})[step] = fid
    counts[label] = num
  covered = {step for points in series.values() for step in points}
  extra = {s: v for s, v in (scalars or {}).get("eval/fid", []) if s not in covered}
  out = {label: sorted(series[label].items()) for label in sorted(series, key=counts.get)}
  if extra:
    out["FID (eval/fid)"] = sorted(extra.items())
  return out


# ---- figures ---------------------------------------------------------------------------------


def _figure(width_px: int, height_px: int):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
  FigureCanvasAgg(fig)
  return fig


def render(fig) -> np.ndarray:
  """The figure's pixels as uint8 (H, W, 1) when it is all gray, else (H, W, 3)."""
  fig.canvas.draw()
  rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
  gray = (rgb[..., :1] == rgb[..., 1:2]).all() and (rgb[..., :1] == rgb[..., 2:]).all()
  return np.ascontiguousarray(rgb[..., :1] if gray else rgb)


def curve_panels(scalars, fid) -> list[tuple[str, list]]:
  """The panels of curves.png that have data: [(title, [(label, points, style)])]."""
  panels = []
  l1 = by_level(scalars, "g_l1")
  if l1:
    panels.append(
      ("generator L1", [(f"level {l}", p, {"color": f"C{l - 1}"}) for l, p in l1.items()])
    )
  d_loss = by_level(scalars, "d_loss")
  if d_loss:
    lines = [(f"level {l}", p, {"color": f"C{l - 1}"}) for l, p in d_loss.items()]
    panels.append(("discriminator loss (log scale; dashed: ln 2)", lines))
  acc = []
  for kind, style in (("real", "-"), ("fake", "--")):
    for l, p in by_level(scalars, f"d_{kind}_acc").items():
      acc.append((f"{kind}, level {l}", p, {"color": f"C{l - 1}", "linestyle": style}))
  if acc:
    panels.append(("discriminator accuracy (solid: real, dashed: fake)", acc))
  if fid:
    panels.append(("FID", [(label, p, {"marker": "o"}) for label, p in fid.items()]))
  return panels


def plot_curves(panels, title: str = "") -> np.ndarray:
  """curves.png's pixels: the panels of `curve_panels` on a grid of at most two columns."""
  from matplotlib import ticker

  cols = min(2, len(panels))
  rows = math.ceil(len(panels) / cols)
  fig = _figure(480 * cols, 300 * rows + 30)
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax, (name, lines) in zip(axes, panels):
    for label, points, style in lines:
      steps, values = zip(*points)
      ax.plot(steps, values, label=label, linewidth=1.2, markersize=4, **style)
    if name.startswith("discriminator loss"):  # log scale: early spikes hide the rest otherwise
      ax.axhline(math.log(2), color="gray", linestyle="--", linewidth=1)
      ax.set_yscale("log")
      ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
      ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
      ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    if name.startswith("discriminator accuracy"):
      ax.set_ylim(-0.02, 1.02)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step", fontsize=9)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(lines) > 3 else 1)
  for ax in axes[len(panels) :]:
    ax.set_visible(False)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return render(fig)


def auto_scale(image_size: int, scale: int = 0) -> int:
  """`scale`, or when 0 the smallest integer magnification that shows at least 64 pixels."""
  return scale if scale > 0 else max(1, math.ceil(64 / image_size))


def to_pixels(images, scale: int) -> np.ndarray:
  """Images in [-1, 1] (..., H, W, C) → uint8, each pixel repeated `scale` times both ways."""
  from udpm_jax import image_io

  x = image_io.to_uint8(images)
  return np.repeat(np.repeat(x, scale, axis=-3), scale, axis=-2)


def offsets(count: int, size: int, pad: int = 2, group: int = 0, group_pad: int = 8) -> np.ndarray:
  """Start pixels of `count` tiles of `size` pixels in a line: `pad` pixels between tiles and
  `group_pad` after every `group` tiles (0: no groups)."""
  gaps = [group_pad if group and (k + 1) % group == 0 else pad for k in range(count - 1)]
  return np.concatenate([[0], np.cumsum([size + g for g in gaps])]).astype(int)


def mosaic(tiles, group: int = 0, fill: int = 255) -> np.ndarray:
  """(rows, cols, h, w, C) uint8 tiles → one image, laid out by `offsets` (columns grouped by
  `group`), gaps filled with `fill`."""
  rows, cols, h, w, c = tiles.shape
  ys, xs = offsets(rows, h), offsets(cols, w, group=group)
  out = np.full((ys[-1] + h, xs[-1] + w, c), fill, np.uint8)
  for r in range(rows):
    for k in range(cols):
      out[ys[r] : ys[r] + h, xs[k] : xs[k] + w] = tiles[r, k]
  return out


def labelled(image, rows=(), cols=(), title: str = "") -> np.ndarray:
  """`image` (uint8 H×W×C) placed pixel for pixel on a white figure, with labels left of it and
  above it: `rows` and `cols` are (center pixel, text) pairs along each axis."""
  h, w = image.shape[:2]
  left = 8 + 7 * max((len(text) for _, text in rows), default=0)
  top = 4 + (16 if cols else 0) + (18 if title else 0)
  fw, fh = w + left + 6, h + top + 6
  fig = _figure(fw, fh)
  fig.figimage(image if image.shape[-1] == 3 else np.repeat(image, 3, -1), xo=left, yo=6)
  for y, text in rows:
    fig.text((left - 5) / fw, (fh - top - y) / fh, text, ha="right", va="center", fontsize=8)
  for x, text in cols:
    fig.text((left + x) / fw, (fh - top + 3) / fh, text, ha="center", va="bottom", fontsize=9)
  if title:
    fig.text(0.5, (fh - 3) / fh, title, ha="center", va="top", fontsize=9)
  return render(fig)


def _row_labels(names, tile: int):
  return [(y + tile / 2, text) for y, text in zip(offsets(len(names), tile), names)]


# ---- samples ---------------------------------------------------------------------------------


def sample_labels(num_classes: int, per_class: int):
  """Labels 0…0, 1…1, … (`per_class` each), or None for an unconditional run."""
  return np.repeat(np.arange(num_classes), per_class) if num_classes else None


def row_names(config) -> tuple[str, ...]:
  """One label per row of the sample figures: class names when known, else class indices."""
  k = config.data.num_classes
  if not k:
    return ()
  names = CLASS_NAMES.get(config.data.name)
  return tuple(names) if names and len(names) == k else tuple(f"class {i}" for i in range(k))


def draw_samples(config, variables, per_class: int, seed: int):
  """EMA samples with all levels: [x_L, …, x_0] as numpy, rows of `per_class` samples (one row
  per class, or UNCONDITIONAL_ROWS rows)."""
  import jax

  from udpm_jax import sampling

  k = config.data.num_classes
  labels = sample_labels(k, per_class)
  num = per_class * (k or UNCONDITIONAL_ROWS)
  sample = sampling.make_sample_fn(config)
  levels = sample(variables, jax.random.PRNGKey(seed), num=num, labels=labels, return_levels=True)
  return [np.asarray(x) for x in levels]


def samples_figure(final, rows: int, scale: int, names=(), title="") -> np.ndarray:
  """samples.png's pixels: `final` (rows·cols, N, N, C) in [-1, 1], one row per class."""
  tiles = to_pixels(final, scale)
  tiles = tiles.reshape(rows, -1, *tiles.shape[1:])
  return labelled(mosaic(tiles), _row_labels(names, tiles.shape[2]), title=title)


def levels_figure(levels, rows: int, per_row: int, scale: int, names=(), title="") -> np.ndarray:
  """samples_levels.png's pixels: the first `per_row` samples of each row, each as its levels
  x_L … x_0 side by side (upsampled to the image size, nearest)."""
  from udpm_jax import image_io

  size = levels[-1].shape[1]
  tiles = image_io.level_tiles(levels, size)  # (B, L+1, N, N, C)
  tiles = tiles.reshape(rows, -1, *tiles.shape[1:])[:, :per_row]
  n = tiles.shape[2]  # L + 1 levels
  tiles = to_pixels(tiles.reshape(rows, per_row * n, size, size, -1), scale)
  w = size * scale
  xs = offsets(per_row * n, w, group=n)
  cols = [(x + w / 2, f"$x_{n - 1 - j % n}$") for j, x in enumerate(xs)]
  return labelled(mosaic(tiles, group=n), _row_labels(names, w), cols, title)


# ---- the command -----------------------------------------------------------------------------


def make_plots(
  workdir, out=None, *, step=None, num_per_class=10, level_samples=2, seed=0, scale=0
) -> list[str]:
  """Writes curves.png, samples_levels.png and samples.png of a run; returns the paths written.
  Curves need event files, samples a checkpoint; a workdir with neither is an error."""
  from udpm_jax import checkpoint, image_io

  if num_per_class < 1 or level_samples < 1:
    raise ValueError(
      f"num_per_class={num_per_class} and level_samples={level_samples} must be >= 1."
    )
  out = epath.Path(out or epath.Path(workdir) / "plots")
  written = []
  scalars = read_scalars(workdir) if event_files(workdir) else {}
  panels = curve_panels(scalars, read_fid(workdir, scalars))
  if panels:
    out.mkdir(parents=True, exist_ok=True)
    image_io.save_png(out / "curves.png", plot_curves(panels, title=str(workdir)))
    written.append(str(out / "curves.png"))
  else:
    logging.warning("No training curves (TensorBoard event files) in %s.", workdir)
  if checkpoint.all_steps(workdir):
    step, config = checkpoint.load_config(workdir, step)
    _, variables = checkpoint.restore_params(workdir, step=step)
    levels = draw_samples(config, variables, num_per_class, seed)
    rows = config.data.num_classes or UNCONDITIONAL_ROWS
    s = auto_scale(config.data.image_size, scale)
    names, title = row_names(config), f"{workdir}, step {step}, EMA"
    out.mkdir(parents=True, exist_ok=True)
    per_row = min(level_samples, num_per_class)
    image_io.save_png(
      out / "samples_levels.png", levels_figure(levels, rows, per_row, s, names, title)
    )
    image_io.save_png(out / "samples.png", samples_figure(levels[-1], rows, s, names, title))
    written += [str(out / "samples_levels.png"), str(out / "samples.png")]
  else:
    logging.warning("No checkpoint in %s: no samples.", workdir)
  if not written:
    raise FileNotFoundError(f"{workdir} has neither TensorBoard event files nor checkpoints.")
  return written
