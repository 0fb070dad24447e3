"""Orbax checkpoints of the training state, and restoring parameters for notebooks.

Layout: `<workdir>/checkpoints/<step>/{state,config,sha256.json}`. Orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-save leaves only complete
steps behind (the temporary leftovers are removed at the next start). `sha256.json`, written once a
step is complete, holds the digest of every file of the step: damage that Orbax cannot see (a
flipped byte in an array chunk restores silently) is found before a resume uses the step, and the
run falls back to the newest good one (`restore_for_resume`). Restores are made against an
abstract target carrying the current shardings, so a checkpoint written on 8 devices loads on 1
and back.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import weakref
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from udpm_jax import files, sharding

_policies = ocp.checkpoint_managers


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used: missing, corrupt, or from a different model."""


def checkpoint_dir(workdir) -> epath.Path:
  return epath.Path(workdir) / "checkpoints"


def make_manager(workdir, config, *, read_only: bool = False) -> ocp.CheckpointManager:
  """A manager saving every `training.ckpt_every` steps, keeping the latest N; saves are
  synchronous unless `training.async_checkpoints`.

  Saves on a stop signal are the training loop's (`udpm_jax.preemption`): it saves the step it
  reached and exits, where Orbax's preemption policy would save and carry on.
  """
  t = config.training
  every = max(int(t.ckpt_every), 1)
  options = ocp.CheckpointManagerOptions(
    save_decision_policy=_policies.FixedIntervalPolicy(every),
    preservation_policy=_policies.LatestN(max(int(t.keep_checkpoints), 1)),
    enable_async_checkpointing=bool(t.get("async_checkpoints", False)) and not read_only,
    cleanup_tmp_directories=not read_only,
    read_only=read_only,
    create=not read_only,
  )
  return ocp.CheckpointManager(
    checkpoint_dir(workdir), options=options, item_names=("state", "config")
  )


def save(manager: ocp.CheckpointManager, step: int, state, config, *, force=False) -> bool:
  """Starts an (async) save of the state and the config; returns whether a save was started.

  Steps completed since the last call get their digests first (`write_digests`). A failure to
  write (a full or read-only disk) raises CheckpointError; the complete steps already there are
  left as they were.
  """
  finish_pending(manager)
  _SAVING[manager] = step
  try:
    return manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
      ),
      force=force,
    )
  except Exception as e:
    raise _write_error(manager, step, e) from e


def finish_pending(manager: ocp.CheckpointManager) -> None:
  """Waits for the manager's async save; the primary process then writes the digests of its
  complete steps."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    raise _write_error(manager, _SAVING.get(manager), e) from e
  if jax.process_index() != 0:
    return  # the directory is shared by all hosts: one writer, as for Orbax's own metadata
  root = epath.Path(manager.directory)
  for step in manager.all_steps():
    if not (root / str(step) / DIGESTS).exists():
      write_digests(root / str(step))


# The step each manager saves last, for naming it when its async save fails.
_SAVING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _write_error(manager, step, e: Exception) -> "CheckpointError":
  good = [s for s in all_steps(epath.Path(manager.directory).parent) if s != step]
  codes = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
  # TensorStore reports the OS error inside its message, as os_error_code='28'.
  full = (isinstance(e, OSError) and e.errno in codes) or any(
    f"os_error_code='{c}'" in str(e) for c in codes
  )
  return CheckpointError(
    f"Could not write checkpoint step {step} to {manager.directory}: {type(e).__name__}: "
    f"{str(e).splitlines()[0] if str(e) else ''}"[:800]
    + (" (the disk is full)" if full else "")
    + f". The complete checkpoints there are untouched: steps {good}; free space or fix the "
    "directory's permissions, then run the same command to resume from the latest of them."
  )


DIGESTS = "sha256.json"


def _step_files(step_dir: epath.Path) -> list[epath.Path]:
  """Every file of a step's items (state/, config/), walked by hand: epath has no recursive glob
  for object stores. The step's own top-level files are Orbax's bookkeeping, which it may
  rewrite, and which it checks itself."""
  found, todo = [], [p for p in step_dir.iterdir() if p.is_dir()]
  while todo:
    for p in todo.pop().iterdir():
      if p.is_dir():
        todo.append(p)
      elif p.name != DIGESTS:
        found.append(p)
  return sorted(found, key=str)


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def write_digests(step_dir) -> None:
  """Records the sha256 of every file of a complete step in `<step>/sha256.json`."""
  step_dir = epath.Path(step_dir)
  digests = {str(p.relative_to(step_dir)): _sha256(p) for p in _step_files(step_dir)}
  files.atomic_write_text(step_dir / DIGESTS, json.dumps(digests, indent=0, sort_keys=True))


def verify_digests(step_dir) -> str | None:
  """What is wrong with a step's files against its `sha256.json`, or None when they match (or
  when the step has no digests: one saved by a run that stopped before writing them)."""
  step_dir = epath.Path(step_dir)
  path = step_dir / DIGESTS
  if not path.exists():
    return None
  try:
    expected = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    return f"its {DIGESTS} cannot be read ({e})"
  present = {str(p.relative_to(step_dir)) for p in _step_files(step_dir)}
  missing = sorted(set(expected) - present)
  if missing:
    return f"{len(missing)} file(s) missing, e.g. {missing[0]}"
  for name, digest in sorted(expected.items()):
    if _sha256(step_dir / name) != digest:
      return f"{name} differs from the digest recorded when it was saved"
  return None


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
      f"there are {list(manager.all_steps())}."
    ) from e
  return step, restored.state


def restore_for_resume(workdir, config, global_batch_size: int, abstract_state):
  """The newest good checkpoint of `workdir` for resuming training: (step, state), or (0, None)
  when there is none.

  A step that is damaged (files differing from their digests, missing or unreadable, an empty or
  unfinished step directory) is skipped with a warning and, once an older good step is found,
  moved aside to `checkpoints/corrupt_<step>` so that the run continues from there. A step saved
  with another config is not damage: CheckpointError, nothing moved. So is a workdir whose every
  step is damaged: nothing is moved, and the error names what failed for each.
  """
  root = checkpoint_dir(workdir)
  steps = _step_dirs(root)
  complete = set(all_steps(workdir)) if steps else set()
  damaged = []
  for step in reversed(steps):
    step_dir = root / str(step)
    problem = verify_digests(step_dir) if step in complete else _INCOMPLETE
    if problem is None:
      try:
        _, saved = load_config(workdir, step)
      except CheckpointError as e:
        problem = str(e)
    if problem is None:
      check_resumable(workdir, config, global_batch_size, step=step, saved=saved)
      reader = make_manager(workdir, config, read_only=True)
      try:
        _, state = restore_state(reader, abstract_state, step)
      except CheckpointError as e:
        problem = str(e.__cause__ or e).splitlines()[0][:500]
      finally:
        reader.close()
    if problem is None:
      for bad, why in damaged:
        _move_aside(root, bad, why, step)
      return step, state
    damaged.append((step, problem))
  if damaged:
    raise CheckpointError(
      f"Every checkpoint under {root} is damaged, so the run cannot resume: "
      + "; ".join(f"step {s}: {why}" for s, why in damaged)
      + ". Nothing was moved. Restore them from a copy, or start a fresh --workdir."
    )
  return 0, None


def _step_dirs(root: epath.Path) -> list[int]:
  """Every step directory, complete or not (Orbax lists an empty one as a step)."""
  if not root.exists():
    return []
  return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def _reader(workdir) -> ocp.CheckpointManager:
  """A read-only manager over the workdir's checkpoints, with handlers for both items."""
  return ocp.CheckpointManager(
    checkpoint_dir(workdir),
    item_names=("state", "config"),
    options=ocp.CheckpointManagerOptions(read_only=True, create=False),
    item_handlers={"state": ocp.PyTreeCheckpointHandler(), "config": ocp.JsonCheckpointHandler()},
  )


def _is_complete(reader: ocp.CheckpointManager, step: int) -> bool:
  """Whether Orbax finished the step: its metadata records a commit time (an empty or
  unfinished step directory has none)."""
  try:
    return reader.metadata(step).commit_timestamp_nsecs is not None
  except Exception:  # an unreadable metadata file: not a finished step either
    return False


_INCOMPLETE = "the step directory is incomplete (Orbax recorded no commit: empty or unfinished)"


def _move_aside(root: epath.Path, step: int, why: str, good: int) -> None:
  target = root / f"corrupt_{step}"
  n = 1
  while target.exists():
    target, n = root / f"corrupt_{step}.{n}", n + 1
  if jax.process_index() == 0:
    shutil.move(str(root / str(step)), str(target))
  logging.warning(
    "Checkpoint step %d is damaged (%s): moved to %s; resuming from step %d.",
    step,
    why,
    target,
    good,
  )


def tree_nbytes(tree) -> int:
  """Bytes of the arrays of a pytree (arrays or ShapeDtypeStructs): one checkpoint's payload."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def check_writable(workdir, nbytes: int) -> None:
  """Refuses, before training starts, a workdir where a checkpoint of `nbytes` cannot be written:
  not a writable directory, or less free space than one checkpoint."""
  root = checkpoint_dir(workdir)
  probe = root / f".write_test.{jax.process_index()}"
  try:
    root.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise CheckpointError(
      f"The workdir {workdir} is not writable: {type(e).__name__}: {e}. Choose a --workdir "
      "you can write to."
    ) from e
  if "://" in str(workdir):
    return  # object stores report no free space
  free = shutil.disk_usage(str(root)).free
  if free < nbytes:
    raise CheckpointError(
      f"The disk of {workdir} has {free / 2**20:.1f} MiB free, less than one checkpoint of this "
      f"run ({nbytes / 2**20:.1f} MiB); free space or choose another --workdir."
    )


# What may differ between the config a run was started with and the one that resumes it: how long
# it runs, how often it logs, saves, samples and evaluates, how steps are dispatched, and where
# files are read from. Everything else defines the model, the process, the data or the
# optimisation, and a change would silently mix two runs in one workdir.
RESUME_MAY_CHANGE = (
  "training.num_steps",
  "training.log_every",
  "training.ckpt_every",
  "training.keep_checkpoints",
  "training.async_checkpoints",
  "training.sample_every",
  "training.eval_every",
  "training.steps_per_dispatch",
  "training.level_dispatch",
  "data.path",
  "loss.lpips_weights",
  "eval.",
)


def check_resumable(workdir, config, global_batch_size: int, step=None, saved=None) -> None:
  """Raises CheckpointError naming every setting that differs from the config the run was started
  with (except `RESUME_MAY_CHANGE`), including the effective global batch size. `step` (default
  the latest) and its already loaded config `saved` select the checkpoint compared with."""
  if saved is None:
    step, saved = load_config(workdir, step)
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
  rep = sharding.replicated(sharding.make_mesh(devices))
  tree = getattr(metadata, "tree", metadata)
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=rep), tree)


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
  try:
    with _reader(workdir) as reader:
      restored = reader.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  except Exception as e:  # Orbax raises many types for unreadable JSON
    detail = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise CheckpointError(
      f"Cannot read the config saved with step {step} under {root}: {detail[:500]}"
    ) from e
  return step, _to_config(restored.config)


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
  if not checkpoint_dir(workdir).exists():
    return []
  with _reader(workdir) as reader:
    return sorted(s for s in reader.all_steps() if _is_complete(reader, s))


def restore_params(
  workdir, step: int | None = None, ema: bool = True
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """Restores the generator's variables for sampling or evaluation.

  Reads only what it returns: the config and, through Orbax's partial restore, the EMA (or raw)
  generator parameters and the generator's constants — not the optimiser states or the
  discriminator (for the CIFAR10 config, ~1/8 of the checkpoint's bytes).

  Args:
    workdir: the training run's directory.
    step: checkpoint step; None = the latest.
    ema: the EMA parameters (what the paper samples with) instead of the raw ones.

  Returns:
    (config, variables) where `variables` is ready for `build_generator(config).apply`.
  """
  step, config = load_config(workdir, step)
  name = "ema_params" if ema else "g_params"
  with _reader(workdir) as manager:
    try:
      tree = manager.item_metadata(step)["state"]
      tree = getattr(tree, "tree", tree)
      target = _replicated_target({name: tree[name], "g_consts": tree["g_consts"]})
      restore_args = jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding), target)
      restored = manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        ),
      )
    except Exception as e:  # orbax raises many types for damaged files
      raise CheckpointError(
        f"Checkpoint step {step} under {checkpoint_dir(workdir)} could not be "
        f"read: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:800]
        + f". `checkpoint.verify_digests` on {checkpoint_dir(workdir) / str(step)} tells whether "
        "its files are damaged; an earlier step can be given as step=."
      ) from e
  state = restored.state
  return config, {"params": state[name], **state["g_consts"]}
