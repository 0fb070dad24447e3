"""Compute report: FLOPs of a full UDPM sampling run vs one full-resolution network call, memory,
and measured sampling/training throughput. Prints JSON.

  python -m udpm_jax.bench --config=configs/cifar10.py [--batch=64] [--train_batch=8] [--repeats=3]

FLOPs come from XLA's cost analysis of the compiled programs (random weights; FLOPs do not depend
on values). The reference call is the same U-Net applied at the data side N, i.e. what one step of
an ordinary diffusion model with this network costs.
"""

from __future__ import annotations

import functools
import json
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_BATCH = flags.DEFINE_integer("batch", 16, "Sampling batch.")
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 0, "Training batch (0 = skip training).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions after warm-up.")
_OUT = flags.DEFINE_string("out", None, "Also write the JSON report to this file.")
flags.mark_flags_as_required(["config"])


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def _timed(fn, repeats):
  import jax

  jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.perf_counter() - start) / repeats


def report(config, batch: int = 16, train_batch: int = 0, repeats: int = 3) -> dict:
  import jax
  import jax.numpy as jnp

  from udpm_jax import models, sampling
  from udpm_jax import process as proc

  sched = proc.Schedule.from_config(config)
  gen = models.build_generator(config)
  key = jax.random.PRNGKey(0)
  variables = jax.jit(lambda k: models.init_generator(config, k))(key)
  n, c = config.data.image_size, config.data.channels
  labels = (jnp.arange(batch) % config.data.num_classes) if config.data.num_classes else None
  t = jnp.full((batch,), 0.5)

  def call_at(side):
    return (
      jax.jit(lambda v, x: gen.apply(v, x, t, labels))
      .lower(variables, jnp.zeros((batch, side, side, c)))
      .compile()
    )

  full = call_at(n)
  calls = {level: call_at(sched.side(level)) for level in range(1, sched.levels + 1)}
  inputs = {level: jnp.zeros((batch, sched.side(level), sched.side(level), c)) for level in calls}
  per_level = {level: _flops(compiled) for level, compiled in calls.items()}
  sample = sampling.make_sample_fn(config, devices=jax.devices()[:1])
  compile_start = time.perf_counter()
  jax.block_until_ready(sample(variables, key, num=batch))
  compile_s = time.perf_counter() - compile_start
  sample_compiled = jax.jit(lambda v, k: sample(v, k, num=batch)).lower(variables, key).compile()
  sampler_flops = _flops(sample_compiled)
  net_only = sum(per_level.values())
  sec = _timed(lambda: sample(variables, key, num=batch), repeats)
  net_sec = sum(
    _timed(functools.partial(calls[level], variables, inputs[level]), repeats) for level in calls
  )
  mem = sample_compiled.memory_analysis()
  out = {
    "device": str(jax.devices()[0].device_kind),
    "config": {
      "image_size": n,
      "levels": sched.levels,
      "scale": sched.scale,
      "generator_params": models.count_params(variables),
    },
    "flops": {
      "one_network_call_at_full_resolution": _flops(full),
      "network_calls_per_level": {str(k): v for k, v in per_level.items()},
      "network_calls_total": net_only,
      "full_sampler": sampler_flops,
      "ratio_network_calls_vs_one_full_call": net_only / _flops(full),
      "ratio_full_sampler_vs_one_full_call": sampler_flops / _flops(full),
      "batch": batch,
    },
    "sampling": {
      "batch": batch,
      "seconds_per_batch": sec,
      "images_per_second": batch / sec,
      "network_seconds_per_batch": net_sec,
      "non_network_share": max(0.0, 1 - net_sec / sec),
      "compile_seconds": compile_s,
    },
    "memory_bytes": {
      "sampler_temp": getattr(mem, "temp_size_in_bytes", None),
      "sampler_arguments": getattr(mem, "argument_size_in_bytes", None),
    },
  }
  if train_batch:
    out["training"] = _train_report(config, train_batch, repeats)
  return out


def _train_report(config, batch, repeats):
  import jax

  from udpm_jax import train_step as ts

  config = config.copy_and_resolve_references()
  config.training.batch_size = batch
  mesh = ts.make_mesh()
  _, _, init_fn, step_fn = ts.build(config, mesh)
  state = init_fn(jax.random.PRNGKey(0))
  n, c = config.data.image_size, config.data.channels
  import numpy as np

  b = {"image": np.zeros((batch, n, n, c), np.float32), "label": np.zeros((batch,), np.int32)}
  lp = ts.load_lpips_params(config)
  start = time.perf_counter()
  state, m = step_fn(state, ts.to_global_batch(b, mesh), lp)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(repeats):
    state, m = step_fn(state, ts.to_global_batch(b, mesh), lp)
  jax.block_until_ready(m)
  sec = (time.perf_counter() - start) / repeats
  return {
    "batch": batch,
    "steps_per_second": 1 / sec,
    "images_per_second": batch / sec,
    "first_step_seconds_incl_compile": compile_s,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  result = report(_CONFIG.value, _BATCH.value, _TRAIN_BATCH.value, _REPEATS.value)
  text = json.dumps(result, indent=2)
  print(text)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(text)


if __name__ == "__main__":
  app.run(main)
