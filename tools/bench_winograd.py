"""The discriminator update with and without Winograd convolutions, side by side in one process.

  python -m tools.bench_winograd --config=configs/cifar10.py [--batch=16] [--repeats=4]
      [--out=bench/results/winograd_cpu_cifar10.json]

For each level l whose discriminator input (side N / s^(l-1)) reaches the Winograd minimum
side, it compiles `train_step.d_update` (G's forward, D on fake, D on real with R1, Adam) twice,
with `discriminator.winograd_min_side` 0 (direct convolution) and `models.WINOGRAD_CPU_MIN_SIDE`,
then times the two programs in alternation (the machine's speed drifts; alternating shares the
drift). In float32 (the auto setting leaves Winograd off in bfloat16). LPIPS plays no part in D's
update and is switched off; the learning rate is the post-warm-up one. Reported per level: the
median seconds of each, their ratio, and the relative differences of D's loss, mean logits and R1
penalty between the two (float32 rounding; the updated weights are not compared: Adam's first
step moves every weight by about ±lr, whatever the size of its gradient).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from udpm_jax import cli, models
from udpm_jax import process as proc
from udpm_jax import train_step as ts

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_BATCH = flags.DEFINE_integer("batch", 16, "Images per update.")
_REPEATS = flags.DEFINE_integer("repeats", 4, "Timed updates per program.")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON report.")


def _d_update_program(config, side: int, level: int, batch):
  config = config.copy_and_resolve_references()
  config.discriminator.winograd_min_side = side
  config.loss.lpips = (0.0,) * config.process.levels
  config.optim.warmup_steps = 0  # a warm-up's first update is zero: nothing would be compared
  config.training.compute_dtype = "float32"  # Winograd's setting; bfloat16 would round both sides
  spec = ts.build_spec(config)
  init = lambda k: ts.init_state(config, k, spec.gen, spec.disc, spec.g_tx, spec.d_tx)
  state = jax.jit(init)(jax.random.PRNGKey(0))
  program = jax.jit(lambda s, b: ts.d_update(spec, s, b, level)).lower(state, batch).compile()
  return lambda: program(state, batch)


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
  result["winograd_min_side"], result["per_level"] = wino, {}
  for level in range(1, sched.levels + 1):
    if sched.side(level - 1) < wino:
      continue
    runs = {side: _d_update_program(config, side, level, batch) for side in (0, wino)}
    outputs = {side: jax.block_until_ready(run()) for side, run in runs.items()}
    seconds = {side: [] for side in runs}
    for _ in range(_REPEATS.value):
      for side, run in runs.items():
        start = time.perf_counter()
        jax.block_until_ready(run())
        seconds[side].append(time.perf_counter() - start)
    direct, winograd = (float(np.median(seconds[side])) for side in (0, wino))
    metrics = {side: out[1] for side, out in outputs.items()}
    relative = {
      name: abs(float(metrics[wino][name]) - float(metrics[0][name])) / abs(float(metrics[0][name]))
      for name in ("d_loss", "d_real_logit", "d_fake_logit", "r1")
    }
    result["per_level"][str(level)] = {
      "direct_seconds": direct,
      "winograd_seconds": winograd,
      "speedup": direct / winograd,
      "metrics_relative_difference": relative,
    }
  cli.print_report(result, _OUT.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
