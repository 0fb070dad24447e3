"""Launch scripts in dry-run mode print exactly the commands they would run."""

import os
import shlex
import shutil
import subprocess
import sys

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
  # one task per GPU, or a node's other GPUs sit idle. SIGUSR1 before the time limit, which the
  # trainer handles (save, exit 75, requeue).
  directives = dict(
    line[len("#SBATCH --") :].split("=", 1)
    for line in (REPO / "launch" / "slurm.sbatch").read_text().splitlines()
    if line.startswith("#SBATCH --") and "=" in line
  )
  assert directives["ntasks-per-node"] == directives["gpus-per-node"] == "8"
  assert directives["signal"] == "USR1@300"
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


# ---- launch/demo.sh and launch/venv.sh: a fresh Debian/Ubuntu machine ---------------------------

DEB_DATA = "/usr/share/datasets/fashion-mnist"
needs_no_deb_data = pytest.mark.skipif(
  os.path.isdir(DEB_DATA), reason=f"{DEB_DATA} exists here, so the demo installs nothing"
)


def _fresh(tmp_path, script, *args, uid=0, sudo=False, python_venv=True, env=None):
  """Dry run with only stubbed probes on PATH: `id -u` prints `uid`; `python3` can or cannot
  make virtualenvs; `sudo` exists or not; apt-get and sudo fail if the script ever runs them."""
  stubs = tmp_path / "bin"
  stubs.mkdir(exist_ok=True)
  for name, body in (
    ("id", f"echo {uid}"),
    ("python3", "exit 0" if python_venv else "exit 1"),
    ("apt-get", "exit 99"),
    ("sudo", "exit 99" if sudo else None),
  ):
    (stubs / name).unlink(missing_ok=True)
    if body is not None:
      (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
      (stubs / name).chmod(0o755)
  base = {"PATH": str(stubs), "VENV": str(tmp_path / "venv"), "WORKDIR": str(tmp_path / "run")}
  out = subprocess.run(
    [shutil.which("bash"), str(REPO / "launch" / script), "--dry-run", *args],
    env={**base, **(env or {})},
    capture_output=True,
    text=True,
    check=False,
  )
  return out.returncode, out.stdout.strip().splitlines(), out.stderr


def _train_and_plot(tmp_path, *train_args):
  v, w = tmp_path / "venv", tmp_path / "run"
  env = f"+ env JAX_COMPILATION_CACHE_DIR={w}/jax_cache {v}/bin/python -m udpm_jax."
  return [
    f"{env}main --config=configs/fashion_mnist_demo.py --workdir={w}"
    + "".join(f" {a}" for a in train_args),
    f"{env}plot --workdir={w}",
  ]


def _new_venv(tmp_path, spec="."):
  v = tmp_path / "venv"
  return [
    f"+ python3 -m venv {v}",
    f"+ {v}/bin/python -m pip install -e {spec}",
    f"+ cp setup.py {v}/udpm_jax-installed{'-test' if 'test' in spec else ''}.setup.py",
  ]


@needs_no_deb_data
def test_demo_as_root_without_sudo_uses_apt_get_directly(tmp_path):
  rc, lines, err = _fresh(tmp_path, "demo.sh", "--config.training.num_steps=60", uid=0)
  assert rc == 0, err
  assert lines == [
    "+ apt-get update",
    "+ env DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist",
    *_new_venv(tmp_path),
    *_train_and_plot(tmp_path, "--config.training.num_steps=60"),
  ]


@needs_no_deb_data
def test_demo_as_a_user_goes_through_sudo_or_says_what_to_run(tmp_path):
  rc, lines, err = _fresh(tmp_path, "demo.sh", uid=1000, sudo=True, python_venv=False)
  assert rc == 0, err
  assert lines[:2] == [
    "+ sudo apt-get update",
    "+ sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv "
    "dataset-fashion-mnist",
  ]
  assert lines[2:] == _new_venv(tmp_path) + _train_and_plot(tmp_path)
  rc, lines, err = _fresh(tmp_path, "demo.sh", uid=1000, sudo=False)
  assert rc == 1 and lines == []
  assert "As root, run: apt-get update && apt-get install -y dataset-fashion-mnist" in err


def test_demo_with_data_and_installed_venv_sets_nothing_up(tmp_path):
  data = tmp_path / "fashion"
  data.mkdir()
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "python").write_text("#!/bin/sh\nexit 99\n")
  (venv / "bin" / "python").chmod(0o755)
  marker = venv / "udpm_jax-installed.setup.py"
  marker.write_text((REPO / "setup.py").read_text())
  rc, lines, err = _fresh(tmp_path, "demo.sh", uid=1000, env={"DATA_DIR": str(data)})
  assert rc == 0, err
  assert lines == _train_and_plot(tmp_path, f"--config.data.path={data}")
  # TFDS data: no Debian package either; an install from another setup.py is redone.
  marker.write_text("an older setup.py")
  rc, lines, err = _fresh(tmp_path, "demo.sh", "--config.data.source=tfds", uid=1000)
  assert rc == 0, err
  assert lines == [
    f"+ {venv}/bin/python -m pip install -e .",
    f"+ cp setup.py {marker}",
    *_train_and_plot(tmp_path, "--config.data.source=tfds"),
  ]
  # An install with the test extras serves the demo too.
  (venv / "udpm_jax-installed-test.setup.py").write_text((REPO / "setup.py").read_text())
  rc, lines, err = _fresh(tmp_path, "demo.sh", "--config.data.source=tfds", uid=1000)
  assert rc == 0 and lines == _train_and_plot(tmp_path, "--config.data.source=tfds"), err
  rc, lines, err = _fresh(tmp_path, "demo.sh", env={"DATA_DIR": str(tmp_path / "nowhere")})
  assert rc == 2 and lines == [] and "DATA_DIR=" in err and "is not a directory" in err


def test_venv_script_installs_python3_venv_and_extras(tmp_path):
  rc, lines, err = _fresh(tmp_path, "venv.sh", "test", uid=1000, sudo=True, python_venv=False)
  assert rc == 0, err
  assert lines == [
    "+ sudo apt-get update",
    "+ sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv",
    *_new_venv(tmp_path, r".\[test\]"),
  ]


def test_slurm_requeues_a_run_stopped_by_a_signal_and_passes_errors_on(tmp_path):
  """With stub srun/scontrol: exit status 75 (saved and stopped) → `scontrol requeue JOB`, exit 0;
  any other failure is the job's exit status, with no requeue."""
  stubs = tmp_path / "bin"
  stubs.mkdir()
  (stubs / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\n')
  for status in (75, 1):
    (stubs / "srun").write_text(f"#!/bin/sh\nexit {status}\n")
    for f in stubs.iterdir():
      f.chmod(0o755)
    env = {
      "PATH": f"{stubs}:/usr/bin:/bin",
      "WORKDIR": "/shared/w",
      "SLURM_JOB_ID": "4242",
      "SLURM_SUBMIT_DIR": str(REPO),
    }
    done = subprocess.run(
      ["bash", str(REPO / "launch" / "slurm.sbatch")], env=env, capture_output=True, text=True
    )
    log = tmp_path / "scontrol.log"
    if status == 75:
      assert done.returncode == 0, done.stderr
      assert log.read_text() == "requeue 4242\n" and "requeueing job 4242" in done.stderr
    else:
      assert done.returncode == 1 and log.read_text() == "requeue 4242\n"  # no second requeue


def test_every_console_script_names_a_command_module_with_run():
  """Each `udpm-*` entry point resolves to a callable `run`, and every command module of the
  package (one that defines `run()` with no arguments) has an entry point. Command modules define
  their flags when imported, so each is imported in a process of its own."""
  import ast

  tree = ast.parse((REPO / "setup.py").read_text())
  entries = [
    node.value
    for node in ast.walk(tree)
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and "=udpm_jax." in node.value
  ]
  targets = {}
  for entry in entries:
    name, target = entry.split("=")
    module, func = target.split(":")
    assert name.startswith("udpm-"), entry
    check = f"import {module} as m; assert callable(m.{func})"
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, (entry, done.stderr[-2000:])
    targets[module] = name
  commands = {
    f"udpm_jax.{path.stem}"
    for path in (REPO / "udpm_jax").glob("*.py")
    if "\ndef run():" in path.read_text()
  }
  assert len(commands) >= 6 and set(targets) == commands, (sorted(targets), sorted(commands))
