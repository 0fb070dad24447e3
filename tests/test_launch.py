"""Launch scripts in dry-run mode print exactly the commands they would run."""

import os
import subprocess

import pytest

from tests.conftest import REPO


def _dry(script, env, *args):
  # The tests' own compilation cache (conftest) must not leak into the scripts' defaults.
  base = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  out = subprocess.run(
    ["bash", str(REPO / "launch" / script), "--dry-run", *args],
    env={**base, **env},
    capture_output=True,
    text=True,
    check=False,
  )
  return out.returncode, out.stdout.strip().splitlines(), out.stderr


def test_gpu_single_host_dry_run():
  rc, lines, _ = _dry(
    "gpu_single_host.sh",
    {"WORKDIR": "/runs/a", "CONFIG": "configs/ffhq64.py"},
    "--config.training.batch_size=256",
  )
  assert rc == 0
  assert lines == [
    "+ env JAX_COMPILATION_CACHE_DIR=/runs/a/jax_cache python3 -m udpm_jax.main "
    "--config=configs/ffhq64.py --workdir=/runs/a --config.training.batch_size=256"
  ]


def test_slurm_dry_run_uses_distributed_init():
  rc, lines, _ = _dry("slurm.sbatch", {"WORKDIR": "/shared/w"})
  assert rc == 0
  assert lines == [
    "+ srun --kill-on-bad-exit=1 env JAX_COMPILATION_CACHE_DIR=/shared/w/jax_cache python3 -m "
    "udpm_jax.main --jax_distributed --config=configs/cifar10.py --workdir=/shared/w"
  ]
  # An explicit cache directory is used as given; an empty one turns the cache off.
  _, lines, _ = _dry("slurm.sbatch", {"WORKDIR": "/shared/w", "JAX_COMPILATION_CACHE_DIR": "/c"})
  assert " env JAX_COMPILATION_CACHE_DIR=/c python3 " in lines[0]
  _, lines, _ = _dry("slurm.sbatch", {"WORKDIR": "/shared/w", "JAX_COMPILATION_CACHE_DIR": ""})
  assert " env python3 " in lines[0] and "JAX_COMPILATION_CACHE_DIR" not in lines[0]


def test_tpu_pod_dry_run_copies_installs_and_trains_on_all_workers():
  rc, lines, _ = _dry(
    "tpu_pod.sh",
    {
      "TPU_NAME": "v4-32",
      "ZONE": "us-central2-b",
      "WORKDIR": "gs://b/run",
      "TFDS_DATA_DIR": "gs://b/tfds",
    },
  )
  assert rc == 0 and len(lines) == 3
  assert lines[0].startswith("+ gcloud compute tpus tpu-vm scp --recurse ")
  assert all("--worker=all" in line and "--zone=us-central2-b" in line for line in lines)
  assert "pip\\ install" in lines[1] and "jax\\[tpu\\]" in lines[1]
  assert "TFDS_DATA_DIR=gs://b/tfds" in lines[2] and "--jax_distributed" in lines[2]
  assert "--workdir=gs://b/run" in lines[2]
  assert "JAX_COMPILATION_CACHE_DIR=gs://b/run/jax_cache\\ python3" in lines[2]


@pytest.mark.parametrize("script", ["gpu_single_host.sh", "slurm.sbatch", "tpu_pod.sh"])
def test_missing_settings_are_refused(script):
  env = {k: v for k, v in os.environ.items() if k not in ("WORKDIR", "TPU_NAME", "ZONE")}
  out = subprocess.run(
    ["bash", str(REPO / "launch" / script), "--dry-run"],
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  assert out.returncode == 2 and "is not set" in out.stderr
