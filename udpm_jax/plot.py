"""Command line for the pictures of a training run: learning curves and sample grids.

  python -m udpm_jax.plot --workdir=DIR [--out=DIR/plots] [--step=S] [--num_per_class=10]

Writes three PNG files into --out:
  curves.png          per-level generator L1 and discriminator loss (log scale; dashed: ln 2, the
                      loss of a discriminator at chance), the discriminator's accuracy on real and
                      fake images when logged, and FID against the step where it was measured
                      (eval/step_<S>.json, or the `eval/fid` scalar);
  samples_levels.png  every level x_L … x_0 of a few EMA samples, upsampled (nearest) to the image
                      size, one row per class (10 rows for an unconditional run);
  samples.png         the final EMA samples, one row per class, --num_per_class columns.
The curves are the values the run logged to TensorBoard (event files directly in the workdir; a
resumed run's later files replace the values of the steps it logged again).
"""

from __future__ import annotations

from absl import app, flags, logging

from udpm_jax import cli, figures

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.")
_OUT = flags.DEFINE_string("out", None, "Directory for the PNG files (default: <workdir>/plots).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of the samples (default: latest).")
_NUM_PER_CLASS = flags.DEFINE_integer("num_per_class", 10, "Columns of samples.png.")
_LEVEL_SAMPLES = flags.DEFINE_integer("level_samples", 2, "Samples per row in samples_levels.png.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_SCALE = flags.DEFINE_integer(
  "scale", 0, "Nearest-neighbour magnification of the samples (0: to at least 64 pixels)."
)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for path in figures.make_plots(
    _WORKDIR.value,
    _OUT.value,
    step=_STEP.value,
    num_per_class=_NUM_PER_CLASS.value,
    level_samples=_LEVEL_SAMPLES.value,
    seed=_SEED.value,
    scale=_SCALE.value,
  ):
    logging.info("Wrote %s", path)
    print(path)


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
