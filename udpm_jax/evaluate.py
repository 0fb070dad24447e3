"""Command line: FID (and optionally KID, precision/recall) of a run's EMA samples.

  python -m udpm_jax.evaluate --workdir=DIR --num=50000 [--step=S | --all] [--kid] [--pr]

The protocol and the files are those of `udpm_jax.evaluation` (the library behind this command):
class-balanced samples through uint8 and Inception pool3, reference statistics from
--reference_stats (a file of yours, used as given) or computed once from the run's training set and
cached in the workdir. Results go to <workdir>/eval/step_<S>.json and to TensorBoard (eval/fid, …,
beside the training run's own); steps already evaluated with the same --num and --seed are
skipped, and an interrupted step resumes from eval/step_<S>.partial.npz.
"""

import json

from absl import app, flags, logging

from udpm_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_NUM = flags.DEFINE_integer("num", 50_000, "Number of samples.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_ALL = flags.DEFINE_bool("all", False, "Evaluate every checkpoint in the workdir.")
_BATCH = flags.DEFINE_integer("batch", 250, "Images per sampling/Inception program call.")
_INCEPTION = flags.DEFINE_string("inception_weights", None, "FID Inception weights (.pth/.npz).")
_REFERENCE = flags.DEFINE_string("reference_stats", None, "Reference statistics .npz.")
_REFERENCE_NUM = flags.DEFINE_integer(
  "reference_num", None, "Training images for computed reference stats (default: config)."
)
_KID = flags.DEFINE_bool("kid", False, "Also compute KID.")
_PR = flags.DEFINE_bool("pr", False, "Also compute precision/recall.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_RESUME = flags.DEFINE_bool(
  "resume", True, "Save partial statistics every minute and resume an interrupted step."
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from clu import metric_writers

  from udpm_jax import checkpoint, evaluation

  workdir = _WORKDIR.value
  # Resolves the steps (and fails on a mistyped workdir) before anything is written there.
  chosen, config = checkpoint.load_config(workdir, None if _ALL.value else _STEP.value)
  steps = checkpoint.all_steps(workdir) if _ALL.value else [chosen]
  if _REFERENCE_NUM.value is not None:
    config.eval.reference_num = _REFERENCE_NUM.value
  evaluator = None
  writer = metric_writers.create_default_writer(workdir)
  for step in steps:
    done = evaluation.read_result(workdir, step)
    if done is not None and evaluation.settings(done) == (_NUM.value, _SEED.value):
      logging.info("step %d already evaluated: %s", step, json.dumps(done))
      continue
    if evaluator is None:  # built once: every step reuses its compiled programs and reference
      evaluator = evaluation.Evaluator(
        config,
        workdir,
        batch=_BATCH.value,
        inception_weights=_INCEPTION.value,
        reference_stats=_REFERENCE.value,
      )
    _, variables = checkpoint.restore_params(workdir, step=step, ema=True)
    result = evaluator.evaluate(
      variables,
      step,
      _NUM.value,
      seed=_SEED.value,
      kid=_KID.value,
      pr=_PR.value,
      resume=_RESUME.value,
    )
    evaluation.write_scalars(writer, result)
    logging.info("%s", json.dumps(result))
  writer.flush()


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
