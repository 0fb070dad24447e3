"""Orbax checkpoints of the training state, and restoring parameters for notebooks.

Layout: `<workdir>/checkpoints/<step>/{state,config}`. Orbax writes each step into a temporary
directory and renames it when complete, so a run killed mid-save leaves only complete steps behind
(the temporary leftovers are removed at the next start). Restores are made against an abstract
target carrying the current shardings, so a checkpoint written on 8 devices loads on 1 and back.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_policies = ocp.checkpoint_managers


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used: missing, corrupt, or from a different model."""


def checkpoint_dir(workdir) -> epath.Path:
  return epath.Path(workdir) / "checkpoints"


def make_manager(workdir, config, *, read_only: bool = False) -> ocp.CheckpointManager:
  """A manager saving every `training.ckpt_every` steps (and on preemption), keeping the latest N."""
  t = config.training
  every = max(int(t.ckpt_every), 1)
  options = ocp.CheckpointManagerOptions(
    save_decision_policy=_policies.AnySavePolicy(
      [
        _policies.FixedIntervalPolicy(every),
        _policies.PreemptionCheckpointingPolicy(),
      ]
    ),
    preservation_policy=_policies.LatestN(max(int(t.keep_checkpoints), 1)),
    enable_async_checkpointing=not read_only,
    cleanup_tmp_directories=not read_only,
    read_only=read_only,
    create=not read_only,
  )
  return ocp.CheckpointManager(
    checkpoint_dir(workdir), options=options, item_names=("state", "config")
  )


def save(manager: ocp.CheckpointManager, step: int, state, config, *, force=False) -> bool:
  """Starts an (async) save of the state and the config; returns whether a save was started."""
  return manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
    ),
    force=force,
  )


def restore_state(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores the training state at `step` (default latest) into the structure/shardings of
  `abstract_state` (e.g. from `jax.eval_shape`). Returns (step, state), or (None, None) if the
  workdir has no checkpoint.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None, None
  target = jax.tree.map(_as_restore_target, abstract_state)
  try:
    restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )
  except Exception as e:  # Orbax reports unreadable array data (TensorStore) as plain Exception
    detail = str(e).splitlines()[0] if str(e) else ""
    raise CheckpointError(
      f"Checkpoint step {step} in {manager.directory} does not match this model/config "
      f"(or is corrupt): {type(e).__name__}: {detail[:500]}. Use a fresh --workdir or the "
      "config the run was started with (saved beside each checkpoint as config/); the steps "
      f"there are {list(manager.all_steps())} (move a corrupt one aside to resume from an "
      "earlier one)."
    ) from e
  return step, restored.state


# What may differ between the config a run was started with and the one that resumes it: how long
# it runs, how often it logs, saves, samples and evaluates, how steps are dispatched, and where
# files are read from. Everything else defines the model, the process, the data or the
# optimisation, and a change would silently mix two runs in one workdir.
RESUME_MAY_CHANGE = (
  "training.num_steps",
  "training.log_every",
  "training.ckpt_every",
  "training.keep_checkpoints",
  "training.sample_every",
  "training.eval_every",
  "training.steps_per_dispatch",
  "training.level_dispatch",
  "data.path",
  "loss.lpips_weights",
  "eval.",
)


def check_resumable(workdir, config, global_batch_size: int) -> None:
  """Raises CheckpointError naming every setting that differs from the config the run was started
  with (except `RESUME_MAY_CHANGE`), including the effective global batch size."""
  step, saved = load_config(workdir)
  changes = _config_changes(saved.to_dict(), config.to_dict())
  saved_batch = int(saved.training.get("batch_size", 0))
  if saved_batch and saved_batch != global_batch_size:
    changes.append(
      f"global batch size: checkpoint {saved_batch}, now {global_batch_size} "
      "(training.batch_size, or per_device_batch_size × device count)"
    )
  if changes:
    raise CheckpointError(
      f"The run in {checkpoint_dir(workdir)} (latest step {step}) was started with another "
      f"config: {'; '.join(changes)}. Resume with the config saved beside the checkpoint "
      f"({checkpoint_dir(workdir) / str(step) / 'config'}), or start a fresh --workdir. "
      f"Only these may change when resuming: {', '.join(RESUME_MAY_CHANGE)}."
    )


def _config_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
  changes = []
  for key in sorted(saved.keys() & current.keys()):  # fields added or dropped by upgrades pass
    name = prefix + key
    a, b = saved[key], current[key]
    if isinstance(a, dict) and isinstance(b, dict):
      changes += _config_changes(a, b, name + ".")
    elif name in ("training.batch_size", "training.per_device_batch_size"):
      continue  # compared as the effective global batch size
    elif any(name == k or (k.endswith(".") and name.startswith(k)) for k in RESUME_MAY_CHANGE):
      continue
    elif _comparable(a) != _comparable(b):
      changes.append(f"{name}: checkpoint {a!r}, now {b!r}")
  return changes


def _comparable(value):
  # JSON stores tuples as lists; a config may hold either.
  return tuple(_comparable(v) for v in value) if isinstance(value, (list, tuple)) else value


def _replicated_target(metadata):
  """Restore targets placed here, not where the checkpoint was written: a run saved by a TPU pod
  or several SLURM processes restores in one notebook process (Orbax refuses the saved topology).
  One device in a single process; replicated over all devices when this is itself a multi-process
  job (e.g. evaluation on a pod)."""
  devices = jax.devices() if jax.process_count() > 1 else jax.devices()[:1]
  sharding = NamedSharding(Mesh(np.asarray(devices), ("replica",)), PartitionSpec())
  tree = getattr(metadata, "tree", metadata)
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)


def _as_restore_target(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  return jax.ShapeDtypeStruct(
    np.shape(x), getattr(x, "dtype", np.asarray(x).dtype), sharding=getattr(x, "sharding", None)
  )


def load_config(workdir, step: int | None = None) -> tuple[int, ml_collections.ConfigDict]:
  """The config saved with a checkpoint (default: the latest)."""
  root = checkpoint_dir(workdir)
  steps = all_steps(workdir)
  if not steps:
    raise CheckpointError(
      f"No checkpoint found under {root}; train first with "
      "`python -m udpm_jax.main --workdir=...`, or check the path."
    )
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise CheckpointError(f"No checkpoint for step {step} under {root}; available: {steps}.")
  path = root / str(step) / "config" / "metadata"
  try:
    config_dict = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"Cannot read the config saved at {path}: {e}") from e
  return step, _to_config(config_dict)


def _to_config(d: dict) -> ml_collections.ConfigDict:
  # JSON turns tuples into lists; configs use tuples for per-level values.
  def fix(v):
    if isinstance(v, dict):
      return ml_collections.ConfigDict({k: fix(x) for k, x in v.items()})
    if isinstance(v, list):
      return tuple(fix(x) for x in v)
    return v

  return fix(d)


def all_steps(workdir) -> list[int]:
  """Complete checkpoint steps in the workdir, ascending (temporary/partial saves excluded)."""
  root = checkpoint_dir(workdir)
  if not root.exists():
    return []
  return sorted(
    int(p.name)
    for p in root.iterdir()
    if p.is_dir() and p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists()
  )


def restore_params(
  workdir, step: int | None = None, ema: bool = True
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """Restores the generator's variables for sampling or evaluation.

  Args:
    workdir: the training run's directory.
    step: checkpoint step; None = the latest.
    ema: the EMA parameters (what the paper samples with) instead of the raw ones.

  Returns:
    (config, variables) where `variables` is ready for `build_generator(config).apply`.
  """
  step, config = load_config(workdir, step)
  with ocp.CheckpointManager(
    checkpoint_dir(workdir),
    item_names=("state", "config"),
    options=ocp.CheckpointManagerOptions(read_only=True),
    item_handlers={"state": ocp.StandardCheckpointHandler()},
  ) as manager:
    try:
      target = _replicated_target(manager.item_metadata(step)["state"])
      restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
      )
    except Exception as e:  # orbax raises many types for damaged files
      raise CheckpointError(
        f"Checkpoint step {step} under {checkpoint_dir(workdir)} could not be "
        f"read: {type(e).__name__}: {e}"
      ) from e
  state = restored.state
  params = state["ema_params"] if ema else state["g_params"]
  return config, {"params": params, **state["g_consts"]}
