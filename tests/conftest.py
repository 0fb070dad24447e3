"""Shared test fixtures. Eight host CPU devices so data-parallel code is exercised on CI."""

import atexit
import os
import pathlib
import shutil
import subprocess
import tempfile

# Must happen before JAX initialises its backends.
# Compile-light: XLA's CPU backend spends seconds optimising every threefry draw at the default
# level, while the tests' tiny programs run in milliseconds either way.
os.environ.setdefault(
  "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache per test session, shared with the training subprocesses that
# the kill/resume tests start: identical programs compile once. Removed when the session ends.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="udpm_jax_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

REPO = pathlib.Path(__file__).resolve().parents[1]


def assets_dir() -> pathlib.Path | None:
  """The shared assets folder (env UDPM_ASSETS, else ../shared/assets), or None when absent."""
  path = pathlib.Path(os.environ.get("UDPM_ASSETS", REPO.parent / "shared" / "assets"))
  return path if path.is_dir() else None


@pytest.fixture(scope="session")
def assets() -> pathlib.Path:
  path = assets_dir()
  if path is None:
    pytest.skip("shared assets not found (set UDPM_ASSETS or place them at ../shared/assets)")
  return path


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> pathlib.Path:
  """An uninterrupted 8-step run of configs/test.py (tests.runs.train_cli), trained once for the
  whole session: the xdist workers share it through a file lock. Read it, never write into it."""
  import filelock

  from tests import runs

  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  workdir, done = root / "reference_run", root / "reference_run.done"
  with filelock.FileLock(str(root / "reference_run.lock")):
    if not done.exists():
      shutil.rmtree(workdir, ignore_errors=True)
      subprocess.run(
        runs.train_cli(workdir),
        env=runs.subprocess_env(),
        check=True,
        capture_output=True,
        timeout=900,
      )
      done.write_text("")
  return workdir
