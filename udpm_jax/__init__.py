"""udpm_jax: UDPM (Upsampling Diffusion Probabilistic Models) in JAX/Flax.

Library submodules are imported lazily so `import udpm_jax` stays cheap and a notebook that only
needs the operators does not pay for TFDS or Orbax. The command lines (`main`, `sample`,
`evaluate`, `superres`, `plot`, `bench`) are not among them: each defines its flags when imported,
so they are run (`python -m udpm_jax.<command>`), not imported.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
  "configs",
  "operators",
  "process",
  "models",
  "losses",
  "lpips",
  "inception",
  "data",
  "sharding",
  "train_step",
  "train",
  "checkpoint",
  "preemption",
  "sampling",
  "sample_files",
  "evaluation",
  "metrics",
  "super_resolution",
  "figures",
  "benchmark",
  "export",
  "convert",
  "torch_pickle",
  "assets",
  "image_io",
  "files",
)


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"udpm_jax.{name}")
  raise AttributeError(f"module 'udpm_jax' has no attribute {name!r}")
