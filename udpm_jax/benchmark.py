"""Compute report: FLOPs of a full UDPM sampling run vs one full-resolution network call, memory,
and measured sampling/training throughput (`report`, a JSON-ready dict).

FLOPs come from XLA's cost analysis of the compiled programs (random weights; FLOPs do not depend
on values). The reference call is the same U-Net applied at the data side N, i.e. what one step of
an ordinary diffusion model with this network costs. The command line is `udpm_jax.bench`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from udpm_jax import lpips as lpips_lib
from udpm_jax import models, sampling, sharding
from udpm_jax import process as proc
from udpm_jax import train_step as ts


def _flops(fn, *args, enabled: bool = True) -> float:
  """FLOPs of `fn(*args)` from XLA:CPU's cost analysis of the lowered program.

  Always lowered for the CPU: model FLOPs do not depend on the backend, while GPU cost analysis
  counts cuDNN convolution calls as zero (and returns nothing for lowered programs).
  """
  if not enabled:
    return float("nan")
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
  try:
    with jax.default_device(jax.devices("cpu")[0]):
      lowered = jax.jit(fn).lower(*abstract)
      cost = lowered.cost_analysis() or lowered.compile().cost_analysis()
  except Exception as e:  # a report without FLOPs beats no report
    logging.warning("FLOPs unavailable for %s: %s", getattr(fn, "__name__", fn), e)
    return float("nan")
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def _direct(config):
  """`config` with direct convolution everywhere: the FLOPs reported are the method's, whatever
  convolution algorithm (`winograd_min_side`) the timed programs use."""
  config = config.copy_and_resolve_references()
  config.model.winograd_min_side = 0
  config.discriminator.winograd_min_side = 0
  return config


def _timed(fn, repeats):
  jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.perf_counter() - start) / repeats


def report(
  config,
  batch: int = 16,
  train_batch: int = 0,
  repeats: int = 3,
  parallel_compile: bool = False,
  count_flops: bool = True,
  on_progress=None,
) -> dict:
  """The JSON-ready compute report of `config` (see the module docstring).

  `on_progress(partial_report)` is called after the sampling part and after each training program,
  with `"partial": True`, so that a job killed by a time limit still leaves what it measured.
  """

  sched = proc.Schedule.from_config(config)
  gen = models.build_generator(config, forward_only=True)  # as the sampler builds it
  flop_gen = models.build_generator(_direct(config))
  key = jax.random.PRNGKey(0)
  variables = jax.jit(lambda k: models.init_generator(config, k))(key)
  n, c = config.data.image_size, config.data.channels
  labels = (jnp.arange(batch) % config.data.num_classes) if config.data.num_classes else None
  t = jnp.full((batch,), 0.5)

  def apply(v, x, gen=gen):
    return gen.apply(v, x, t, labels)

  flop_apply = functools.partial(apply, gen=flop_gen)

  sides = {level: sched.side(level) for level in range(1, sched.levels + 1)}
  inputs = {level: jnp.zeros((batch, side, side, c)) for level, side in sides.items()}
  calls = {level: jax.jit(apply).lower(variables, x).compile() for level, x in inputs.items()}
  flops = functools.partial(_flops, enabled=count_flops)
  full_flops = flops(flop_apply, variables, jnp.zeros((batch, n, n, c)))
  per_level = {level: flops(flop_apply, variables, x) for level, x in inputs.items()}
  sample = sampling.make_sample_fn(config, devices=jax.devices()[:1])
  compile_start = time.perf_counter()
  jax.block_until_ready(sample(variables, key, num=batch))
  compile_s = time.perf_counter() - compile_start
  sample_compiled = jax.jit(lambda v, k: sample(v, k, num=batch)).lower(variables, key).compile()
  cpu_sample = sampling.make_sample_fn(_direct(config), devices=jax.devices("cpu")[:1])
  sampler_flops = flops(lambda v, k: cpu_sample(v, k, num=batch), variables, key)
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
      "one_network_call_at_full_resolution": full_flops,
      "network_calls_per_level": {str(k): v for k, v in per_level.items()},
      "network_calls_total": net_only,
      "full_sampler": sampler_flops,
      "ratio_network_calls_vs_one_full_call": net_only / full_flops,
      "ratio_full_sampler_vs_one_full_call": sampler_flops / full_flops,
      "batch": batch,
    },
    "sampling": {
      "batch": batch,
      "seconds_per_batch": sec,
      "images_per_second": batch / sec,
      "network_seconds_per_batch": net_sec,
      # Timed separately, the network calls can take longer than the whole sampler (noise,
      # fusion), so the time share is clipped at 0; the FLOPs share is exact.
      "non_network_share": max(0.0, 1 - net_sec / sec),
      "non_network_flops_share": 1 - net_only / sampler_flops,
      "compile_seconds": compile_s,
    },
    "memory_bytes": {
      "sampler_temp": getattr(mem, "temp_size_in_bytes", None),
      "sampler_arguments": getattr(mem, "argument_size_in_bytes", None),
    },
  }
  progress = on_progress or (lambda partial: None)
  if train_batch:
    progress({**out, "partial": True})
    out["training"] = _train_report(
      config,
      train_batch,
      repeats,
      parallel_compile,
      count_flops,
      lambda training: progress({**out, "training": training, "partial": True}),
    )
  return out


# Dense bf16 peak of the accelerators we report MFU on (vendor datasheets, no sparsity).
PEAK_BF16_FLOPS = {
  "NVIDIA H100 80GB HBM3": 989.4e12,
  "NVIDIA H100 PCIe": 756.0e12,
  "NVIDIA H200": 989.4e12,
  "NVIDIA A100-SXM4-80GB": 312e12,
  "NVIDIA A100-SXM4-40GB": 312e12,
  "TPU v4": 275e12,
  # TPUs report either name (JAX's own TPU tables accept both).
  "TPU v5e": 197e12,
  "TPU v5 lite": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,
  "TPU v6e": 918e12,
  "TPU v6 lite": 918e12,
}


def peak_flops(device_kind: str, compute_dtype: str) -> float | None:
  """The dense 16-bit peak MFU is measured against, or None: for an unknown device, or for
  float32 compute, whose peak (TF32, or none) is another number and would make MFU meaningless."""
  if compute_dtype not in ("bfloat16", "float16"):
    return None
  return PEAK_BF16_FLOPS.get(device_kind)


def _random_lpips_params(config):
  """LPIPS-shaped random weights: FLOPs and timings do not depend on the values."""

  if not any(w > 0 for w in config.loss.lpips):
    return None
  x = jnp.zeros((1, 32, 32, 3))
  return lpips_lib.LPIPS().init(jax.random.PRNGKey(0), x, x)["params"]


def _train_report(
  config, batch, repeats, parallel_compile=False, count_flops=True, on_progress=None
):
  """Per-level D and G update programs, compiled and timed one by one.

  The trainer runs one compiled program per level and update (host dispatch) and draws the D and
  G levels uniformly, so the expected step time is mean_l(D_l) + mean_l(G_l).
  """

  config = config.copy_and_resolve_references()
  config.training.batch_size = batch
  config.training.steps_per_dispatch = 1
  mesh = sharding.make_mesh()
  spec, flop_spec = ts.build_spec(config), ts.build_spec(_direct(config))
  lpips_params = _random_lpips_params(config)
  state = ts.jit_init(config, mesh, spec.gen, spec.disc, spec.g_tx, spec.d_tx)(
    jax.random.PRNGKey(0)
  )
  n, c = config.data.image_size, config.data.channels
  rng = np.random.default_rng(0)
  local = {
    "image": rng.uniform(-1, 1, (batch, n, n, c)).astype(np.float32),
    "label": (np.arange(batch) % max(config.data.num_classes, 1)).astype(np.int32),
  }
  gbatch = sharding.to_global_batch(local, mesh)
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  jobs = {}
  for level in range(1, config.process.levels + 1):
    for name, update, args in (
      ("d", ts.d_update, (state, gbatch)),
      ("g", ts.g_update, (state, gbatch, lpips_params)),
    ):
      shardings = (rep, data, rep)[: len(args)]
      fn = functools.partial(update, spec, level=level)
      jitted = jax.jit(fn, in_shardings=shardings, out_shardings=(rep, rep))
      jobs[(level, name)] = (
        jitted.lower(*args),
        args,
        functools.partial(update, flop_spec, level=level),
      )

  def compile_timed(lowered):
    start = time.perf_counter()
    return lowered.compile(), time.perf_counter() - start

  compiled = {}
  if parallel_compile:
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
      done = pool.map(compile_timed, [lowered for lowered, _, _ in jobs.values()])
      compiled = dict(zip(jobs, done))
  per_level = {}
  for (level, name), (lowered, args, flop_fn) in jobs.items():
    # Compiled one at a time, each program is measured (and reported) before the next compiles.
    program, compile_s = compiled.get((level, name)) or compile_timed(lowered)
    row = per_level.setdefault(str(level), {})
    row[f"{name}_compile_seconds"] = compile_s
    row[f"{name}_flops"] = _flops(flop_fn, *args, enabled=count_flops)
    row[f"{name}_seconds"] = _timed(lambda program=program, args=args: program(*args), repeats)
    if on_progress:
      on_progress({"batch": batch, "per_level": {k: dict(v) for k, v in per_level.items()}})
  rows = list(per_level.values())
  sec = np.mean([r["d_seconds"] for r in rows]) + np.mean([r["g_seconds"] for r in rows])
  flops = np.mean([r["d_flops"] for r in rows]) + np.mean([r["g_flops"] for r in rows])
  kind = jax.devices()[0].device_kind
  peak = peak_flops(kind, config.training.compute_dtype)
  achieved = flops / sec / jax.device_count()
  return {
    "batch": batch,
    "programs_compiled_concurrently": bool(parallel_compile),
    "compute_dtype": config.training.compute_dtype,
    "devices": jax.device_count(),
    "per_level": per_level,
    "expected_step_seconds": float(sec),
    "steps_per_second": float(1 / sec),
    "images_per_second": float(batch / sec),
    "flops_per_step": float(flops),
    "achieved_flops_per_second_per_device": float(achieved),
    "mfu_vs_bf16_peak": float(achieved / peak) if peak else None,
    "peak_bf16_flops_assumed": peak,
  }
