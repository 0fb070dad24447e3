"""Command line for sampling a trained run into PNG files (resumable), an .npz, or a level grid.

  python -m udpm_jax.sample --workdir=DIR --num=50000 --out=DIR [--step=S] [--batch=250] [--grid]

Image i belongs to batch b = i // batch, whose randomness is fold_in(PRNGKey(seed), b); class
labels are balanced (label i mod K). A run that was stopped skips the batches whose PNGs all exist
and writes exactly the images it would have written. The folder records what made its images
(sampling.json: workdir, step, EMA or not, seed, batch); continuing it with other settings is
refused, since kept and new images would then come from different models or draws.
"""

from absl import app, flags, logging

from udpm_jax import cli, sample_files

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory (checkpoints).")
_OUT = flags.DEFINE_string("out", None, "Directory for the PNG files.")
_NUM = flags.DEFINE_integer("num", 64, "Number of images.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_BATCH = flags.DEFINE_integer("batch", 64, "Images per sampler call.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_EMA = flags.DEFINE_bool("ema", True, "Use the EMA parameters.")
_GRID = flags.DEFINE_bool("grid", False, "Also write grid_levels.png: all levels of 8 samples.")
_NPZ = flags.DEFINE_bool("npz", False, "Also write samples.npz (uint8 images and labels).")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  n = sample_files.sample_to_dir(
    _WORKDIR.value,
    _OUT.value,
    _NUM.value,
    step=_STEP.value,
    batch=_BATCH.value,
    seed=_SEED.value,
    ema=_EMA.value,
    grid=_GRID.value,
    npz=_NPZ.value,
  )
  logging.info("Wrote %d new images to %s.", n, _OUT.value)


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
