"""A serialized sampler (`jax.export`) that runs without the model code.

The artifact is StableHLO with the weights baked in as constants and a fixed batch: its only input
is a PRNG key's raw data (uint32[2]), its output the images (num, N, N, C) in [-1, 1]. Load it with
`load_exported(path)` anywhere a compatible jaxlib runs (on one of the platforms it was exported
for: CPU by default, which every host has); udpm_jax itself is not needed there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from etils import epath

from udpm_jax import files, sampling


def export_sampler(config, variables, num: int, path, denoise_fn=None, platforms=("cpu",)):
  """Exports `make_sample_fn(config)(variables, key, num)` to `path`; returns the Exported."""
  sample = sampling.make_sample_fn(config, denoise_fn, devices=jax.devices()[:1])

  def fn(key_data):
    return sample(variables, jax.random.wrap_key_data(key_data, impl="threefry2x32"), num=num)

  exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(
    jax.ShapeDtypeStruct((2,), jnp.uint32)
  )
  files.atomic_write_bytes(path, exported.serialize())
  return exported


def load_exported(path):
  """A callable `sample(key) -> images` from an exported sampler file."""
  exported = jax.export.deserialize(bytearray(epath.Path(path).read_bytes()))

  # An export for CPU called on a GPU/TPU host runs on that host's CPU (jax.export refuses to
  # lower it for the default accelerator); export with platforms=("cuda", …) to run there.
  platform = jax.default_backend()
  device = None if platform in exported.platforms else jax.devices(exported.platforms[0])[0]

  def sample(key):
    key = jnp.asarray(key)
    data = key if key.dtype == jnp.uint32 else jax.random.key_data(key)
    if device is None:
      return exported.call(data)
    with jax.default_device(device):
      return exported.call(jax.device_put(data, device))

  return sample
