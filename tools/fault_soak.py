"""Fault soak: interrupt a short training run at random points, resume it each time, and check
that it ends bit-identical to an uninterrupted run.

  python -m tools.fault_soak --workdir=/tmp/soak [--points=20] [--seed=0] [--num_steps=100]
      [--ckpt_every=4] [--out=bench/results/fault_soak.json]

Each point starts the training command (which resumes from the latest checkpoint), waits for a
random moment and interrupts it, drawing one of:
- `sigterm`: SIGTERM once a random step is logged: the run must exit with EXIT_PREEMPTED (75)
  after saving exactly the step it reached (nothing lost);
- `kill`: SIGKILL once a random step is logged: the latest complete checkpoint may be behind the
  step reached by at most one checkpoint interval (saves complete before training goes on);
- `kill_in_save`: SIGKILL as soon as a checkpoint's temporary directory appears (mid-save).
Every restart must resume from the newest complete checkpoint. At the end the run is completed
and its generator (raw and EMA) compared bit for bit with the uninterrupted run's.
The config is configs/test.py (16² images, tiny networks), logging every step so that the step
reached is known.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
MODES = ("sigterm", "kill", "kill_in_save")


def train_command(workdir, num_steps: int, ckpt_every: int, *extra) -> list[str]:
  return [
    sys.executable,
    "-m",
    "udpm_jax.main",
    f"--config={REPO}/configs/test.py",
    f"--workdir={workdir}",
    f"--config.training.num_steps={num_steps}",
    f"--config.training.ckpt_every={ckpt_every}",
    *extra,
  ]


def subprocess_env() -> dict:
  """One device, compile-light XLA: the same programs, and so the same numbers, in every run."""
  return {
    **os.environ,
    "PYTHONPATH": str(REPO),
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "XLA_FLAGS": "--xla_backend_optimization_level=0",
  }


def _steps(workdir) -> list[int]:
  from udpm_jax import checkpoint

  return checkpoint.all_steps(workdir)


def _saving(workdir) -> bool:
  root = pathlib.Path(workdir) / "checkpoints"
  return root.exists() and any("tmp" in p.name for p in root.iterdir())


@dataclasses.dataclass
class Point:
  mode: str
  resumed_from: int
  reached: int
  latest_after: int
  lost: int
  saving_at_kill: bool
  returncode: int


def interrupt_once(workdir, cmd, mode: str, rng: random.Random, log_path) -> Point | None:
  """Starts `cmd`, interrupts it as `mode` says; None when the run finished first."""
  before = _steps(workdir)
  resumed_from = before[-1] if before else 0
  with open(log_path, "w") as log:
    p = subprocess.Popen(cmd, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    num_steps = int(re.search(r"num_steps=(\d+)", " ".join(cmd)).group(1))
    ckpt_every = int(re.search(r"ckpt_every=(\d+)", " ".join(cmd)).group(1))
    trigger = min(resumed_from + rng.randint(1, 2 * ckpt_every), num_steps - 1)
    delay = rng.uniform(0.0, 0.3)
    sig = signal.SIGTERM if mode == "sigterm" else signal.SIGKILL
    saving = False
    while p.poll() is None:
      if mode == "kill_in_save":
        saving = _saving(workdir)
        if saving and _logged_steps(log_path) and max(_logged_steps(log_path)) > resumed_from:
          break
      elif re.search(rf"\] \[{trigger}\] d_", pathlib.Path(log_path).read_text()):
        time.sleep(delay)
        saving = _saving(workdir)
        break
      time.sleep(0.002)
    if p.poll() is not None:
      return None
    p.send_signal(sig)
    returncode = p.wait(timeout=900)
  if returncode == 0:  # the signal came after the last step's save: nothing to check
    return None
  text = pathlib.Path(log_path).read_text()
  if resumed_from and f"Resumed from step {resumed_from}" not in text:
    raise AssertionError(f"the run did not resume from step {resumed_from}:\n{text[-3000:]}")
  reached = max(_logged_steps(log_path), default=resumed_from)
  after = _steps(workdir)
  latest = after[-1] if after else 0
  point = Point(mode, resumed_from, reached, latest, reached - latest, saving, returncode)
  if mode == "sigterm":
    if returncode != 75 or f"SIGTERM: saved step {reached} " not in text or latest != reached:
      raise AssertionError(f"SIGTERM did not save the step reached: {point}\n{text[-3000:]}")
  elif returncode != -signal.SIGKILL:
    raise AssertionError(f"the killed run ended with {returncode}: {point}\n{text[-3000:]}")
  return point


def _logged_steps(log_path) -> list[int]:
  return [int(s) for s in re.findall(r"\] \[(\d+)\] d_", pathlib.Path(log_path).read_text())]


def soak(
  workdir,
  reference,
  points: int,
  seed: int = 0,
  num_steps: int = 100,
  ckpt_every: int = 4,
  modes=MODES,
) -> dict:
  """Interrupts a run in `workdir` at `points` random points, then completes it and compares it
  with `reference` (an uninterrupted run of the same command, trained here when missing)."""
  from udpm_jax import checkpoint

  workdir, reference = pathlib.Path(workdir), pathlib.Path(reference)
  cmd = train_command(workdir, num_steps, ckpt_every, "--config.training.log_every=1")
  start = time.time()
  if not _steps(reference) or _steps(reference)[-1] != num_steps:
    subprocess.run(
      train_command(reference, num_steps, ckpt_every),
      env=subprocess_env(),
      check=True,
      capture_output=True,
    )
  rng = random.Random(seed)
  done: list[Point] = []
  attempts = 0
  while len(done) < points:
    attempts += 1
    if attempts > 3 * points:
      raise AssertionError(f"only {len(done)} of {points} interruptions landed; use more steps")
    mode = modes[len(done) % len(modes)] if len(done) < len(modes) else rng.choice(modes)
    point = interrupt_once(workdir, cmd, mode, rng, workdir.parent / f"{workdir.name}.log")
    if point is None:  # finished before the interruption: train it again from scratch
      subprocess.run(["rm", "-rf", str(workdir)], check=True)
      continue
    bound = ckpt_every  # saves are synchronous (training.async_checkpoints=False)
    if point.mode != "sigterm" and point.lost > bound:
      raise AssertionError(f"lost {point.lost} steps (> {bound}): {point}")
    done.append(point)
  subprocess.run(cmd, env=subprocess_env(), check=True, capture_output=True)
  identical = True
  for ema in (False, True):
    _, a = checkpoint.restore_params(reference, ema=ema)
    _, b = checkpoint.restore_params(workdir, ema=ema)
    identical &= all(
      np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
  kills = [p for p in done if p.mode != "sigterm"]
  return {
    "points": len(done),
    "modes": {m: sum(p.mode == m for p in done) for m in MODES},
    "num_steps": num_steps,
    "ckpt_every": ckpt_every,
    "max_steps_lost_after_kill": max((p.lost for p in kills), default=0),
    "max_steps_lost_after_sigterm": max((p.lost for p in done if p.mode == "sigterm"), default=0),
    "kills_during_a_save": sum(p.saving_at_kill for p in kills),
    "bit_identical_to_uninterrupted": bool(identical),
    "wall_s": round(time.time() - start, 1),
    "interruptions": [dataclasses.asdict(p) for p in done],
  }


def main(argv):
  from absl import flags

  from udpm_jax import cli

  del argv
  f = flags.FLAGS
  workdir = pathlib.Path(f.workdir)
  result = soak(
    workdir / "soak",
    workdir / "reference",
    f.points,
    f.seed,
    f.num_steps,
    f.ckpt_every,
  )
  cli.print_report(result, f.out)
  if not result["bit_identical_to_uninterrupted"]:
    raise SystemExit("the soaked run differs from the uninterrupted one")


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("workdir", None, "Directory for the two runs (soak/ and reference/).")
  flags.DEFINE_integer("points", 20, "Interruptions.")
  flags.DEFINE_integer("seed", 0, "Seed of the interruption schedule.")
  flags.DEFINE_integer("num_steps", 100, "Steps of the run.")
  flags.DEFINE_integer("ckpt_every", 4, "Checkpoint interval.")
  flags.DEFINE_string("out", None, "Where to write the JSON report.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
