"""Side by side with the authors' PyTorch release, in one process on the same device: the train
step (D then G at each level, with the losses their UDPM.py uses) and the sampler, theirs and ours,
same config and batch. Writes one JSON with both sides and the ratios.

  pip install torch==2.13.0 lpips==0.1.4      # their code needs torch and lpips
  python -m tools.bench_vs_release --udpm_repo=/path/to/UDPM [--config=cifar10|small] [--batch=16]
      [--repeats=2] [--out=bench/results/vs_release_cpu.json]

Their side: `UDPM.step_disc` then `UDPM.step_SR` with Adam (as train_DDP.py runs them), the level
fixed per measurement (their `torch.randint` draw is replaced by the level, every other draw is
theirs), and `UDPM.sample`; float32 on the CPU, bf16 autocast on a GPU as their `--use_amp`. Our
side: `udpm_jax.benchmark.report` (the per-level D and G update programs, and the jitted sampler) with
`training.compute_dtype` float32 on the CPU and bfloat16 on a GPU. LPIPS is off on both sides (its
VGG trunk would dominate both and it needs torchvision's download on theirs); everything else is
the config's (`configs/cifar10.py`, or `small`: narrow networks for a quick check).

Both sides draw the D and the G level uniformly, so the expected step time is the mean over
levels of (D_l + G_l) on both. Ratios > 1 mean ours is faster: train = theirs/ours seconds per
step, sampling = ours/theirs images per second.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np


def bench_config(name: str, on_gpu: bool):
  from tools import parity_step

  overrides = parity_step.overrides_for(name)
  overrides["loss"] = {"lpips": [0.0, 0.0, 0.0]}
  overrides["training"] = {"compute_dtype": "bfloat16" if on_gpu else "float32"}
  overrides["optim"] = {"warmup_steps": 0}
  return parity_step.parity_config(overrides)


def _timed(fn, repeats: int, sync) -> float:
  fn()  # warm-up (their cuDNN autotuning, our nothing: programs are compiled before)
  sync()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  sync()
  return (time.perf_counter() - start) / repeats


def theirs(repo: str, config, batch: int, repeats: int) -> dict:
  """Seconds per D+G step at each level and images per second of their sampler."""
  import torch

  from tools import parity_step
  from tools.parity_official import their_generator

  on_gpu = torch.cuda.is_available()
  device = torch.device("cuda" if on_gpu else "cpu")
  model_mod, disc_mod, udpm_mod = parity_step._import_release(repo)
  args = parity_step._release_args(config, torch)
  args.use_amp, args.device_gpu = on_gpu, device
  udpm = udpm_mod.UDPM(config=args, device=device)
  gen = their_generator(model_mod, config).to(device)
  disc = disc_mod.get_disc(args).to(device)
  scaler = torch.amp.GradScaler(enabled=on_gpu)
  opt_g = torch.optim.Adam(gen.parameters(), lr=config.optim.g_lr)
  opt_d = torch.optim.Adam(disc.parameters(), lr=config.optim.d_lr)
  n, levels = config.data.image_size, config.process.levels
  generator = torch.Generator().manual_seed(0)
  x0 = (torch.rand(batch, 3, n, n, generator=generator) * 2 - 1).to(device)
  cl = (torch.arange(batch) % config.data.num_classes).to(device)
  sync = torch.cuda.synchronize if on_gpu else (lambda: None)
  randint = torch.randint
  per_level = {}
  try:
    for level in range(1, levels + 1):
      torch.randint = lambda *a, level=level, **k: torch.tensor([level], device=k.get("device"))

      def step():
        udpm.step_disc(gen, x0, scaler, opt_d, disc, cl=cl)
        udpm.step_SR(gen, x0, scaler, opt_g, disc=disc, cl=cl)

      per_level[str(level)] = {"d_plus_g_seconds": _timed(step, repeats, sync)}
  finally:
    torch.randint = randint
  gen.eval()
  sample_s = _timed(lambda: udpm.sample(gen, batch_size=batch, cl=cl), repeats, sync)
  mean = float(np.mean([r["d_plus_g_seconds"] for r in per_level.values()]))
  return {
    "framework": f"torch {torch.__version__}",
    "device": torch.cuda.get_device_name() if on_gpu else "cpu",
    "autocast_bf16": on_gpu,
    "threads": torch.get_num_threads(),
    "train": {"per_level": per_level, "expected_step_seconds": mean},
    "sampling": {"seconds_per_batch": sample_s, "images_per_second": batch / sample_s},
  }


def ours(config, batch: int, repeats: int) -> dict:
  import jax

  from udpm_jax import benchmark

  rep = benchmark.report(config, batch=batch, train_batch=batch, repeats=repeats, count_flops=False)
  training = rep["training"]
  per_level = {
    level: {
      "d_plus_g_seconds": row["d_seconds"] + row["g_seconds"],
      "d_seconds": row["d_seconds"],
      "g_seconds": row["g_seconds"],
      "compile_seconds": row["d_compile_seconds"] + row["g_compile_seconds"],
    }
    for level, row in training["per_level"].items()
  }
  return {
    "framework": f"jax {jax.__version__}",
    "device": rep["device"],
    "compute_dtype": config.training.compute_dtype,
    "train": {"per_level": per_level, "expected_step_seconds": training["expected_step_seconds"]},
    "sampling": {
      "seconds_per_batch": rep["sampling"]["seconds_per_batch"],
      "images_per_second": rep["sampling"]["images_per_second"],
      "non_network_share": rep["sampling"]["non_network_share"],
      "compile_seconds": rep["sampling"]["compile_seconds"],
    },
  }


def side_by_side(repo: str, name: str = "cifar10", batch: int = 16, repeats: int = 2) -> dict:
  import jax

  on_gpu = jax.default_backend() == "gpu"
  config = bench_config(name, on_gpu)
  a = theirs(repo, config, batch, repeats)
  b = ours(config, batch, repeats)
  return {
    "config": name,
    "batch": batch,
    "repeats": repeats,
    "release": a,
    "udpm_jax": b,
    "ratios": {
      "train_speedup": a["train"]["expected_step_seconds"] / b["train"]["expected_step_seconds"],
      "train_speedup_per_level": {
        level: a["train"]["per_level"][level]["d_plus_g_seconds"] / row["d_plus_g_seconds"]
        for level, row in b["train"]["per_level"].items()
      },
      "sampling_speedup": b["sampling"]["images_per_second"] / a["sampling"]["images_per_second"],
    },
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--udpm_repo", required=True, help="a clone of github.com/shadyabh/UDPM")
  parser.add_argument("--config", default="cifar10", choices=("cifar10", "small"))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--out", default=None)
  a = parser.parse_args()
  result = side_by_side(a.udpm_repo, a.config, a.batch, a.repeats)
  text = json.dumps(result, indent=2)
  print(text)
  if a.out:
    pathlib.Path(a.out).write_text(text)


if __name__ == "__main__":
  main()
