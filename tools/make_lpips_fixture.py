"""Records the PyPI `lpips` package's distances on the real image pairs of tests/lpips_reference.py.

Needs torch, torchvision (the release matching torch) and lpips==0.1.4, plus the shared assets
(the folder UDPM_ASSETS names). Writes tests/data/lpips_package_values.json (numbers only), so
CI checks our LPIPS against the package without the package, and prints how far ours is from it:

  python tools/make_lpips_fixture.py [--check]   # --check: compare only, write nothing
"""

import argparse
import json
import platform

import jax
import numpy as np

from tests import lpips_reference as ref
from tests.conftest import assets_dir
from udpm_jax import assets as assets_lib
from udpm_jax import lpips


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--check", action="store_true", help="compare only, write nothing")
  args = parser.parse_args()
  jax.config.update("jax_default_matmul_precision", "highest")
  assets = assets_dir()
  if assets is None:
    raise SystemExit("shared assets not found (set UDPM_ASSETS)")
  lpips_pkg = ref.import_lpips_package()  # before torchvision: see its docstring
  from importlib.metadata import version

  import torch
  import torchvision

  vgg_npz = assets_lib.read_npz(assets / "weights" / "lpips_vgg16.npz")
  model = ref.lpips_package_model(lpips_pkg, vgg_npz)
  params = lpips.load_params(assets / "weights" / "lpips_vgg16.npz")
  dist = jax.jit(lpips.lpips_distance)
  pairs = ref.real_pairs(assets)
  values = {}
  for name, (x, y, names) in pairs.items():
    theirs = ref.lpips_package_distances(model, x, y)
    ours = np.asarray(dist(params, x, y))
    values[name] = dict(zip(names, (float(v) for v in theirs)))
    print(
      f"{name:14s} {len(names):3d} pairs, package LPIPS in [{theirs.min():.4f}, "
      f"{theirs.max():.4f}], max |ours - package| = {np.abs(ours - theirs).max():.2e}"
    )
  record = {
    "source": (
      f"lpips=={version('lpips')}, torchvision=={torchvision.__version__}, "
      f"torch=={torch.__version__}, {platform.machine()} CPU; lpips.LPIPS(net='vgg') with the "
      "trunk from lpips_vgg16.npz"
    ),
    "inputs_sha256": ref.inputs_sha256(pairs),
    "values": values,
  }
  if not args.check:
    ref.FIXTURE.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {ref.FIXTURE}")


if __name__ == "__main__":
  main()
