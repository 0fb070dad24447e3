"""Winograd convolutions on and off, side by side in one process: D's update and the sampler.

  python -m tools.bench_winograd --config=configs/cifar10.py [--batch=16] [--repeats=4]
      [--out=bench/results/winograd_cpu_cifar10.json]

Each comparison compiles one program with `discriminator.winograd_min_side` and
`model.winograd_min_side` 0 (direct convolution) and one with both at
`models.WINOGRAD_CPU_MIN_SIDE`, then times the two in alternation (the machine's speed drifts;
alternating shares the drift). In float32 (the auto setting leaves Winograd off in bfloat16).

- D's update (`train_step.d_update`: G's forward for the fakes, D on fake, D on real with R1, Adam),
  for each level l whose discriminator input (side N / s^(l-1)) reaches the minimum side. LPIPS
  plays no part in it and is switched off; the learning rate is the post-warm-up one. Compared:
  D's loss, mean logits and R1 penalty (the updated weights are not: Adam's first step moves every
  weight by about ±lr, whatever the size of its gradient).
- The sampler (`sampling.make_sample_fn`, one device, `--batch` images from the same key), with a
  freshly initialised generator. Compared: the images.

Reported: the median seconds of each, their ratio (direct / Winograd) and the relative differences
(float32 rounding; a wrong transform is off by O(1)).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from udpm_jax import cli, models, sampling
from udpm_jax import process as proc
from udpm_jax import train_step as ts

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_BATCH = flags.DEFINE_integer("batch", 16, "Images per update and per sampler call.")
_REPEATS = flags.DEFINE_integer("repeats", 4, "Timed calls per program.")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON report.")


def _with_winograd(config, side: int):
  config = config.copy_and_resolve_references()
  config.discriminator.winograd_min_side = side
  config.model.winograd_min_side = side
  config.loss.lpips = (0.0,) * config.process.levels
  config.optim.warmup_steps = 0  # a warm-up's first update is zero: nothing would be compared
  config.training.compute_dtype = "float32"  # Winograd's setting; bfloat16 would round both sides
  return config


def _d_update_program(config, side: int, level: int, batch):
  """() -> (state, metrics) of D's update at `level` with Winograd from `side` (0: off)."""
  config = _with_winograd(config, side)
  spec = ts.build_spec(config)
  init = lambda k: ts.init_state(config, k, spec.gen, spec.disc, spec.g_tx, spec.d_tx)
  state = jax.jit(init)(jax.random.PRNGKey(0))
  program = jax.jit(lambda s, b: ts.d_update(spec, s, b, level)).lower(state, batch).compile()
  return lambda: program(state, batch)


def _sampler_program(config, side: int, num: int):
  """() -> `num` images from the sampler with Winograd from `side` (0: off)."""
  config = _with_winograd(config, side)
  variables = jax.jit(lambda k: models.init_generator(config, k))(jax.random.PRNGKey(0))
  sample = sampling.make_sample_fn(config, devices=jax.devices()[:1])
  key = jax.random.PRNGKey(2)
  return lambda: sample(variables, key, num=num)


def _side_by_side(runs: dict, repeats: int) -> tuple[dict, dict]:
  """Outputs of each run and its median seconds over `repeats` alternating calls."""
  outputs = {side: jax.block_until_ready(run()) for side, run in runs.items()}
  seconds = {side: [] for side in runs}
  for _ in range(repeats):
    for side, run in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(run())
      seconds[side].append(time.perf_counter() - start)
  return outputs, {side: float(np.median(s)) for side, s in seconds.items()}


def _row(seconds: dict, wino: int, relative: dict) -> dict:
  return {
    "direct_seconds": seconds[0],
    "winograd_seconds": seconds[wino],
    "speedup": seconds[0] / seconds[wino],
    "relative_difference": relative,
  }


def main(argv):
  del argv
  config = _CONFIG.value
  n, b = config.data.image_size, _BATCH.value
  batch = {
    "image": jax.random.uniform(
      jax.random.PRNGKey(1), (b, n, n, config.data.channels), minval=-1.0, maxval=1.0
    ),
    "label": jnp.arange(b) % max(config.data.num_classes, 1),
  }
  sched = proc.Schedule.from_config(config)
  wino = models.WINOGRAD_CPU_MIN_SIDE
  result = {"config": config.data.name, "batch": b, "device": jax.devices()[0].device_kind}
  result["winograd_min_side"], result["d_update_per_level"] = wino, {}
  for level in range(1, sched.levels + 1):
    if sched.side(level - 1) < wino:
      continue
    runs = {side: _d_update_program(config, side, level, batch) for side in (0, wino)}
    outputs, seconds = _side_by_side(runs, _REPEATS.value)
    metrics = {side: out[1] for side, out in outputs.items()}
    relative = {
      name: abs(float(metrics[wino][name]) - float(metrics[0][name])) / abs(float(metrics[0][name]))
      for name in ("d_loss", "d_real_logit", "d_fake_logit", "r1")
    }
    result["d_update_per_level"][str(level)] = _row(seconds, wino, relative)
  runs = {side: _sampler_program(config, side, b) for side in (0, wino)}
  images, seconds = _side_by_side(runs, _REPEATS.value)
  scale = float(jnp.max(jnp.abs(images[0])))
  relative = {"images": float(jnp.max(jnp.abs(images[wino] - images[0]))) / scale}
  result["sampler"] = _row(seconds, wino, relative)
  cli.print_report(result, _OUT.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
