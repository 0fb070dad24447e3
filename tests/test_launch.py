"""Launch scripts in dry-run mode print exactly the commands they would run."""

import os
import shlex
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
    "+ srun --kill-on-bad-exit=1 --gpu-bind=none env JAX_COMPILATION_CACHE_DIR=/shared/w/jax_cache "
    "python3 -m udpm_jax.main --jax_distributed --config=configs/cifar10.py --workdir=/shared/w"
  ]
  # jax.distributed.initialize() on SLURM gives each process the one GPU of its SLURM_LOCALID:
  # one task per GPU, or a node's other GPUs sit idle. No signal the trainer does not handle
  # (SIGUSR1's default action would kill the job before its time limit).
  directives = dict(
    line[len("#SBATCH --") :].split("=", 1)
    for line in (REPO / "launch" / "slurm.sbatch").read_text().splitlines()
    if line.startswith("#SBATCH --") and "=" in line
  )
  assert directives["ntasks-per-node"] == directives["gpus-per-node"] == "8"
  assert "signal" not in directives
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
  assert rc == 0 and len(lines) == 4
  # This checkout as one archive (no virtualenv, no git history), unpacked into a fresh directory.
  assert lines[0].startswith(f"+ tar -C {REPO} --exclude=./.venv --exclude=./.git ")
  assert lines[1].startswith("+ gcloud compute tpus tpu-vm scp ")
  assert all("--worker=all" in line and "--zone=us-central2-b" in line for line in lines[1:])
  setup, train = (shlex.split(line)[-1].split("=", 1)[1] for line in lines[2:])
  assert setup.startswith("set -e; rm -rf udpm_jax && mkdir udpm_jax && tar -xzf")
  assert "pip install -q -U 'jax[tpu]' -e ." in setup
  assert shlex.split(train) == [
    "cd",
    "udpm_jax",
    "&&",
    "env",
    "TFDS_DATA_DIR=gs://b/tfds",
    "JAX_COMPILATION_CACHE_DIR=gs://b/run/jax_cache",
    "python3",
    "-m",
    "udpm_jax.main",
    "--jax_distributed",
    "--config=configs/cifar10.py",
    "--workdir=gs://b/run",
  ]


def test_tpu_pod_remote_command_keeps_tuple_overrides_whole_and_tfds_default():
  """The remote shell parses the command again: an override with spaces and parentheses must
  arrive as one argument; without TFDS_DATA_DIR none is set (TFDS keeps ~/tensorflow_datasets)."""
  env = {"TPU_NAME": "t", "ZONE": "z", "WORKDIR": "gs://b/run", "TFDS_DATA_DIR": ""}
  override = "--config.process.alphas=(0.5, 0.2, 1e-3)"
  rc, lines, _ = _dry("tpu_pod.sh", env, override)
  assert rc == 0
  train = shlex.split(lines[-1])[-1].split("=", 1)[1]
  assert subprocess.run(["bash", "-n", "-c", train]).returncode == 0
  words = shlex.split(train)
  assert words[-1] == override and not any(w.startswith("TFDS_DATA_DIR") for w in words)


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
