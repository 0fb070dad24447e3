"""Samples of a trained run written to a folder of PNG files (resumable), an .npz, or a level grid.

Image i belongs to batch b = i // batch, whose randomness is fold_in(PRNGKey(seed), b); class
labels are balanced (label i mod K). A call on a folder that a stopped call began skips the batches
whose PNGs all exist and writes exactly the images it would have written. The folder records what
made its images (sampling.json: workdir, step, EMA or not, seed, batch); continuing it with other
settings is refused, since kept and new images would then come from different models or draws.
The command line is `udpm_jax.sample`.
"""

import json
import os
import time

import jax
import numpy as np
from absl import logging
from etils import epath

from udpm_jax import checkpoint, image_io, metrics, sampling


def sample_to_dir(
  workdir, out, num, *, step=None, batch=64, seed=0, ema=True, grid=False, npz=False
):
  """Writes `num` samples of the run at `step` (default: latest) into `out` as PNG files, resuming
  a folder this function began; returns the number of images written by this call."""

  step = checkpoint.load_config(workdir, step)[0]
  made_by = dict(
    workdir=str(workdir) if "://" in str(workdir) else os.path.abspath(workdir),
    step=int(step),
    ema=bool(ema),
    seed=int(seed),
    batch=int(batch),
  )
  out = epath.Path(out)
  _check_same_settings(out / "sampling.json", made_by)
  config, variables = checkpoint.restore_params(workdir, step=step, ema=ema)
  sample = sampling.make_sample_fn(config)
  out.mkdir(parents=True, exist_ok=True)
  (out / "sampling.json").write_text(json.dumps(made_by, indent=2))
  k = config.data.num_classes
  written, start = 0, time.time()
  num_batches = -(-num // batch)
  for b in range(num_batches):
    idx = np.arange(b * batch, min((b + 1) * batch, num))
    labels = idx % k if k else None
    names = [
      out / (f"{i:06d}" + (f"_{labels[j]}" if k else "") + ".png") for j, i in enumerate(idx)
    ]
    if all(p.exists() for p in names):
      continue
    key = jax.random.fold_in(jax.random.PRNGKey(seed), b)
    full_labels = (np.arange(b * batch, (b + 1) * batch) % k) if k else None
    images = np.asarray(sample(variables, key, num=batch, labels=full_labels))[: len(idx)]
    image_io.save_pngs(out, images, int(idx[0]), labels)
    written += len(idx)
    rate = written / max(time.time() - start, 1e-9)
    logging.info(
      "batch %d/%d: %d images written (%.1f images/s)", b + 1, num_batches, int(idx[-1]) + 1, rate
    )
  if grid:
    levels = sample(variables, jax.random.PRNGKey(seed), num=8, return_levels=True)
    grid_img = image_io.levels_grid(levels, config.data.image_size)
    image_io.save_png(out / "grid_levels.png", np.rint(grid_img * 255).astype(np.uint8))
  if npz:
    from PIL import Image

    files = sorted(p for p in out.iterdir() if p.name.endswith(".png") and p.name[0].isdigit())
    arr = []
    for p in files[:num]:
      with p.open("rb") as fh, Image.open(fh) as im:
        arr.append(np.asarray(im))
    arr = np.stack(arr)
    arr = arr[..., None] if arr.ndim == 3 else arr  # grayscale PNGs read back as (H, W): NHWC
    labels = np.array([int(p.stem.split("_")[1]) if "_" in p.stem else 0 for p in files[:num]])
    metrics.savez_atomic(out / "samples.npz", images=arr, labels=labels)
  return written


def _check_same_settings(path, made_by):
  """Refuses to add images to a folder whose existing images were made otherwise."""
  if not path.exists():
    return
  earlier = json.loads(path.read_text())
  changed = [
    f"{k}: {earlier.get(k)!r} there, {v!r} now" for k, v in made_by.items() if earlier.get(k) != v
  ]
  if changed:
    raise ValueError(
      f"{path.parent} holds images made with other settings ({'; '.join(changed)}); resuming would "
      "mix them with new ones. Use another --out, or the settings of sampling.json."
    )
