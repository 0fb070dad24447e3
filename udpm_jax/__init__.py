"""udpm_jax: UDPM (Upsampling Diffusion Probabilistic Models) in JAX/Flax.

Submodules are imported lazily so `import udpm_jax` stays cheap and a notebook that only needs
the operators does not pay for TFDS or Orbax.
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
  "train",
  "sampling",
  "evaluate",
  "checkpoint",
  "convert",
  "metrics",
  "assets",
  "bench",
  "export",
  "image_io",
  "sample",
  "superres",
  "torch_pickle",
  "train_step",
)


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"udpm_jax.{name}")
  raise AttributeError(f"module 'udpm_jax' has no attribute {name!r}")
