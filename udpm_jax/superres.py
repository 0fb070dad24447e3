"""Super-resolution with a trained UDPM, and its measurement against classical upsampling.

  python -m udpm_jax.superres --workdir=DIR --level=1 --num=1000 [--out=report.json]

measures PSNR and LPIPS (and with `--fid`, FID) of ×s^level upsampling on held-out images of the
run's dataset (the config's data with split 'test'): the low-resolution input is H^level x_0 in image units (for the
'norm' box kernel, average pooling), and UDPM (`sampling.make_upsample_fn`) is compared with
nearest-neighbour and bicubic resizing of the same input. `--images=FILE.npz` (array 'images',
uint8 NHWC at the level's side, gray or RGB; optional 'labels') upsamples your own images into
PNGs under `--out` instead.
"""

from __future__ import annotations

from absl import app, flags, logging

from udpm_jax import cli, super_resolution

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory (checkpoints).")
_LEVEL = flags.DEFINE_integer("level", 1, "Start level: the input side is N / scale^level.")
_NUM = flags.DEFINE_integer("num", 1000, "Held-out images to measure on.")
_BATCH = flags.DEFINE_integer("batch", 250, "Images per call.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_IMAGES = flags.DEFINE_string("images", None, "Upsample these low-res images (.npz 'images').")
_OUT = flags.DEFINE_string("out", None, "JSON report file, or PNG directory with --images.")
_LPIPS = flags.DEFINE_string("lpips_weights", None, "LPIPS weights (.npz); default: cached.")
_FID = flags.DEFINE_bool(
  "fid", False, "Also the FID of each method's outputs against the training set's statistics."
)
_INCEPTION = flags.DEFINE_string("inception_weights", None, "FID Inception weights (.pth/.npz).")
_REFERENCE = flags.DEFINE_string(
  "reference_stats",
  None,
  "Reference statistics .npz (default: <workdir>/eval/reference_stats.npz, as evaluate makes).",
)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import jax
  import numpy as np

  from udpm_jax import checkpoint, data, image_io, sampling
  from udpm_jax import lpips as lpips_lib

  config, variables = checkpoint.restore_params(_WORKDIR.value, step=_STEP.value)
  key = jax.random.PRNGKey(_SEED.value)
  if _IMAGES.value:
    if not _OUT.value:
      raise app.UsageError("--images needs --out (a directory for the PNGs).")
    low, low_labels = super_resolution.read_low_resolution(_IMAGES.value, config, _LEVEL.value)
    upsample = sampling.make_upsample_fn(config, _LEVEL.value)
    for b, start in enumerate(range(0, len(low), _BATCH.value)):
      rows = slice(start, start + _BATCH.value)
      labels = None if low_labels is None else low_labels[rows]
      out = upsample(variables, jax.random.fold_in(key, b), low[rows], labels=labels)
      image_io.save_pngs(_OUT.value, np.asarray(out), start)
    logging.info("Upsampled %d images into %s.", len(low), _OUT.value)
    return
  images, labels = data.load_arrays(config, split="test", limit=_NUM.value)
  labels = labels if config.data.num_classes else None
  features = reference = None
  if _FID.value:
    from udpm_jax import evaluation

    features = evaluation.fid_features(config, _INCEPTION.value)
    reference = evaluation.run_reference(
      config, features, _WORKDIR.value, _BATCH.value, _REFERENCE.value
    )[0]
  report = super_resolution.measure(
    config,
    variables,
    images,
    labels,
    _LEVEL.value,
    key,
    lpips_params=lpips_lib.load_params(_LPIPS.value),
    batch=_BATCH.value,
    features=features,
    reference=reference,
  )
  report = {
    "level": _LEVEL.value,
    "num": len(images),
    "factor": config.process.scale**_LEVEL.value,
    "methods": report,
  }
  cli.print_report(report, _OUT.value)


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
