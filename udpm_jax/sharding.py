"""The one place meshes and shardings are made: a 1-D device mesh with the batch axis 'data'.

Training, sampling, evaluation and checkpoint restores all use it, so "sharded over the batch" and
"replicated" mean the same thing everywhere.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every host) with the axis 'data'."""
  devices = np.asarray(jax.devices() if devices is None else list(devices))
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def batch_sharding(mesh: Mesh, leading_scan_axis: bool = False) -> NamedSharding:
  """Arrays split over 'data' along the batch axis (the second one under a leading scan axis)."""
  return NamedSharding(mesh, P(None, DATA_AXIS) if leading_scan_axis else P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of `mesh`."""
  return NamedSharding(mesh, P())


def to_global_batch(local_batch: dict, mesh: Mesh, scan: bool = False) -> dict:
  """Assembles each host's slice of a batch into global arrays sharded over 'data'."""
  sharding = batch_sharding(mesh, scan)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }
