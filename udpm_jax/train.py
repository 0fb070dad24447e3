"""`train_and_evaluate(config, workdir)`: the host-side training loop.

Phases (big_vision style): mesh → networks and jitted init/step → resume or init → data from the
resumed step → loop (step, log, sample grids, checkpoint) → final checkpoint and sample grid.
The math of one step lives in `train_step`; this module only moves data and writes files.
"""

from __future__ import annotations

import collections
import math

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from etils import epath

from udpm_jax import checkpoint, data, preemption, sharding
from udpm_jax import configs as configs_lib
from udpm_jax import lpips as lpips_lib
from udpm_jax import train_step as ts

D_METRICS = (
  "d_loss",
  "d_real_logit",
  "d_fake_logit",
  "d_real_acc",
  "d_fake_acc",
  "r1",
  "d_grad_norm",
  "d_update_norm",
)
G_METRICS = ("g_loss", "g_l1", "g_lpips", "g_adv", "g_grad_norm", "g_update_norm")


class NonFiniteLossError(FloatingPointError):
  """Training produced NaN/Inf; the workdir keeps the last good checkpoint."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> ts.TrainState:
  """Trains UDPM as configured, resuming from the latest checkpoint in `workdir`.

  Args:
    config: a validated experiment config (see configs/).
    workdir: directory for checkpoints, TensorBoard logs and sample grids (local or gs://).

  Returns:
    The final training state.
  """
  configs_lib.validate(config)
  mesh = sharding.make_mesh()
  batch_size = ts.global_batch_size(config)
  if batch_size % jax.device_count():
    raise ValueError(
      f"The global batch size {batch_size} is not divisible by the device count "
      f"{jax.device_count()}; set --config.training.batch_size to a multiple."
    )
  group = min(batch_size, int(config.discriminator.stddev_group))
  if batch_size % group:
    raise ValueError(
      f"The global batch size {batch_size} is not divisible by the discriminator's minibatch-"
      f"stddev group min(batch, discriminator.stddev_group={config.discriminator.stddev_group}) "
      f"= {group}; use a multiple of {group}."
    )
  t = config.training
  k = max(int(t.steps_per_dispatch), 1)
  num_steps = int(t.num_steps)
  workdir = epath.Path(workdir)
  _, init_fn, step_fn = ts.build(config, mesh)
  key = jax.random.PRNGKey(config.seed)

  # Everything that can fail on bad input runs before the first write, so a bad data path or a
  # mismatched checkpoint leaves an existing workdir exactly as it was. (Damaged steps are moved
  # aside once an older good one is found: that is the one write made here, and the one wanted.)
  abstract_state = jax.eval_shape(init_fn, key)
  start_step, state = checkpoint.restore_for_resume(workdir, config, batch_size, abstract_state)
  start_step = int(start_step)
  if start_step > num_steps:
    raise ValueError(
      f"The workdir's checkpoint is at step {start_step}, beyond training.num_steps={num_steps}; "
      f"set --config.training.num_steps to at least {start_step} to continue, or use another "
      "--workdir."
    )
  if start_step == num_steps:  # e.g. a requeued job that had already finished
    logging.info("%s is complete at step %d: nothing to do.", workdir, num_steps)
    return state
  if (num_steps - start_step) % k:
    raise ValueError(
      f"training.num_steps={num_steps} minus the resumed step {start_step} must be "
      f"a multiple of training.steps_per_dispatch={k}."
    )
  batches = data.make_iterator(
    config,
    global_batch_size=batch_size,
    seed=config.seed,
    start_step=start_step,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  batches = data.Prefetch(batches, size=2 * k)  # loading overlaps the device's work

  lpips_params = lpips_lib.training_params(config)
  # Saved with the global batch size resolved: with batch_size=0 it depends on the device count,
  # and a resume on another count must see that the batch (and so the data order) would change.
  saved_config = ml_collections.ConfigDict(config.to_dict())
  saved_config.training.batch_size = batch_size

  workdir.mkdir(parents=True, exist_ok=True)
  checkpoint.check_writable(workdir, checkpoint.tree_nbytes(abstract_state))
  manager = checkpoint.make_manager(workdir, config)
  if state is None:
    state = init_fn(key)
    logging.info("Initialised a new run in %s.", workdir)
  else:
    logging.info("Resumed from step %d in %s.", start_step, workdir)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config))
  parameter_overview.log_parameter_overview(state.g_params, msg="Generator parameters")
  parameter_overview.log_parameter_overview(state.d_params, msg="Discriminator parameters")
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  sampler = _GridSampler(config)
  evaluator = _Evaluator(config, workdir, writer)
  monitor = StalledLevelMonitor()
  # Device metrics not yet fetched: the loop reads nothing from the devices between log steps
  # (the step count is tracked here, the levels come from host tables), so dispatch runs ahead.
  pending = []
  last_good = start_step
  wait_logged = 0.0  # batches.wait_s at the last log step

  # Stop signals are caught from here to the end: one arriving after the last step's save lets
  # the final grid be written, as there is nothing left to save.
  with preemption.StopRequests() as stop:
    try:
      with metric_writers.ensure_flushes(writer):
        step = start_step
        while step < num_steps:
          local = _next_batch(batches, k)
          state, metrics = step_fn(
            state, sharding.to_global_batch(local, mesh, k > 1), lpips_params, step=step
          )
          pending.append(metrics)
          step += k
          progress(step)
          is_last = step >= num_steps
          save_now = manager.should_save(step) or is_last
          at_log_step = step % t.log_every < k or save_now
          stop_signal = None if is_last else stop.should_stop(step, at_log_step)
          if at_log_step or stop_signal:
            # Raises NonFiniteLossError before any save.
            waited, wait_logged = batches.wait_s - wait_logged, batches.wait_s
            _write_metrics(writer, step, pending, monitor, data_wait_s=waited)
            pending = []
          if save_now or stop_signal:
            checkpoint.save(manager, step, state, saved_config, force=is_last or bool(stop_signal))
            last_good = step
            if stop_signal or not t.get("async_checkpoints", False):
              checkpoint.finish_pending(manager)  # complete, with its digests, before going on
          if stop_signal:
            logging.warning("%s: saved step %d in %s.", stop_signal, step, workdir)
            raise preemption.Preempted(step, stop_signal)
          if t.eval_every and step % t.eval_every < k:
            evaluator(step, state)
          if t.sample_every and step % t.sample_every < k and not is_last:
            sampler.write(writer, workdir, step, state)
        checkpoint.finish_pending(manager)
    finally:
      # Completes pending async saves even when the loop stops on an error (e.g. a NaN); an error
      # of the save itself is raised by finish_pending above, not here over the first error.
      try:
        manager.wait_until_finished()
      except Exception as e:  # noqa: BLE001
        logging.error("Waiting for the last checkpoint save failed: %s", e)
      manager.close()
      batches.close()
    sampler.write(writer, workdir, num_steps, state, final=True)
  logging.info("Finished at step %d (last checkpoint %d).", num_steps, last_good)
  return state


def _next_batch(batches, k):
  if k == 1:
    return next(batches)
  items = [next(batches) for _ in range(k)]
  return {name: np.stack([b[name] for b in items]) for name in items[0]}


class StalledLevelMonitor:
  """Warns when a level's discriminator stays at chance: D loss within `tol` of ln 2 for
  `patience` consecutive log intervals in which that level was drawn.

  Such a level's generator gets no adversarial signal (at the coarsest level, where the adversarial
  loss is the only one, it learns nothing), so the warning names the level and what to try.
  """

  def __init__(self, patience: int = 4, tol: float = 0.01):
    self.patience, self.tol = patience, tol
    self.runs = collections.Counter()
    self.warned = set()

  def update(self, step: int, scalars: dict) -> list[int]:
    """Feeds one log interval's scalars; returns the levels warned about now."""
    warned_now = []
    for name, value in scalars.items():
      if not name.startswith("d_loss/level_"):
        continue
      level = int(name.rsplit("_", 1)[1])
      self.runs[level] = self.runs[level] + 1 if abs(value - math.log(2)) <= self.tol else 0
      if self.runs[level] >= self.patience and level not in self.warned:
        self.warned.add(level)
        warned_now.append(level)
        logging.warning(
          "Level %d's discriminator has stayed at chance (D loss within %.2f of ln 2 = 0.693) "
          "for %d log intervals up to step %d: its generator gets no adversarial signal. Look at "
          "d_grad_norm/level_%d and d_update_norm/level_%d against the other levels; try "
          "discriminator.quirk_stddev_sum_chw=False and quirk_logit_dropout=False, a lower "
          "loss.r1_gamma or discriminator.dropout for this level, or a smaller loss.d_noise_std.",
          level,
          self.tol,
          self.runs[level],
          step,
          level,
          level,
        )
    return warned_now


def _write_metrics(writer, step, pending, monitor=None, data_wait_s=None):
  """Averages buffered metrics, per level, and stops the run on non-finite losses. `data_wait_s`,
  the time the loop waited for input over these steps, is logged per step as data_wait_ms."""
  host = jax.device_get(pending)
  rows = []
  for m in host:  # with steps_per_dispatch > 1 each leaf has a leading axis
    arr = {name: np.atleast_1d(v) for name, v in m.items()}
    rows += [{name: v[i] for name, v in arr.items()} for i in range(len(arr["finite"]))]
  bad = [r for r in rows if not r["finite"]]
  if bad:
    raise NonFiniteLossError(
      f"Non-finite loss before step {step}: g_loss={bad[0]['g_loss']}, "
      f"d_loss={bad[0]['d_loss']} (levels G {bad[0]['level_g']}, D {bad[0]['level_d']}). "
      "Nothing was saved from these steps; the workdir keeps the last good checkpoint. "
      "Try a lower optim.g_lr/d_lr or training.compute_dtype=float32."
    )
  scalars = {}
  for names, level_key in ((D_METRICS, "level_d"), (G_METRICS, "level_g")):
    for name in names:
      scalars[name] = float(np.mean([r[name] for r in rows]))
      by_level = collections.defaultdict(list)
      for r in rows:
        by_level[int(r[level_key])].append(float(r[name]))
      for level, values in by_level.items():
        scalars[f"{name}/level_{level}"] = float(np.mean(values))
  scalars["d_noise_std"] = float(rows[-1]["d_noise_std"])
  if data_wait_s is not None:
    scalars["data_wait_ms"] = 1000.0 * data_wait_s / len(rows)
  writer.write_scalars(step, scalars)
  if monitor is not None:
    monitor.update(step, scalars)


GRID_SIDE = 10  # samples per row of the grids written during training


class _GridSampler:
  """Writes grids of all levels of a few EMA samples (TensorBoard + PNG in the workdir)."""

  def __init__(self, config):
    self.config = config
    self.fn = None

  def write(self, writer, workdir, step, state, final=False):
    from udpm_jax import image_io, sampling

    if self.fn is None:  # compiled once, at the first grid
      self.fn = sampling.make_sample_fn(self.config)
    k = self.config.data.num_classes
    # Class-conditional: one row per class (GRID_SIDE samples of class r in row r).
    num, labels = (GRID_SIDE * k, np.repeat(np.arange(k), GRID_SIDE)) if k else (GRID_SIDE**2, None)
    variables = {"params": state.ema_params, **state.g_consts}
    key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed + 1), 0)
    levels = self.fn(variables, key, num=num, labels=labels, return_levels=True)
    # The TensorBoard image shows every level of ~8 samples spread over the grid (and classes).
    grid = image_io.levels_grid(
      [x[:: max(1, num // 8)] for x in levels], self.config.data.image_size
    )
    if jax.process_index() == 0:
      writer.write_images(step, {"samples/levels": grid[None]})
      name = "samples.png" if final else f"samples_{step:08d}.png"
      image_io.save_png_grid(
        str(epath.Path(workdir) / name), np.asarray(levels[-1]), nrow=GRID_SIDE
      )


class _Evaluator:
  """In-training FID of the EMA params every `training.eval_every` steps (eval/step_<S>.json)."""

  def __init__(self, config, workdir, writer):
    self.config, self.workdir, self.writer = config, workdir, writer
    self.evaluator = None

  def __call__(self, step, state):
    from udpm_jax import evaluation

    e = self.config.eval
    if self.evaluator is None:  # built once: later evaluations reuse the compiled programs
      self.evaluator = evaluation.Evaluator(self.config, self.workdir, batch=e.batch_size)
    variables = {"params": state.ema_params, **state.g_consts}
    result = self.evaluator.evaluate(variables, step, e.num_samples, seed=self.config.seed)
    evaluation.write_scalars(self.writer, result)
    logging.info("step %d: FID-%d %.3f", step, e.num_samples, result["fid"])


def _flat_hparams(config):
  out = {}
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      for k2, v2 in _flat_hparams(v).items():
        out[f"{k}.{k2}"] = v2
    else:
      out[k] = str(v) if isinstance(v, (tuple, list)) else v
  return out
