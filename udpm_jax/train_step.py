"""The UDPM train step: one jitted, data-parallel update of the discriminator, then the generator.

Determinism: the state holds a base key; step k uses `fold_in(key, k)` for everything it draws
(levels, forward noise, D instance noise, dropout), and the data order is a function of
(seed, k). A resumed run therefore continues bit-exactly, and the global computation does not
depend on how many devices share the batch.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from udpm_jax import configs as configs_lib
from udpm_jax import losses, models, sharding
from udpm_jax import lpips as lpips_lib
from udpm_jax import process as proc


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  g_params: Any
  g_consts: Any  # non-trainable generator variables (frozen Fourier frequencies)
  g_opt: Any
  ema_params: Any
  d_params: Any
  d_consts: Any
  d_opt: Any
  key: jax.Array  # raw uint32 key data; step keys are fold_in(key, step)


def compute_dtype(config):
  return jnp.dtype(config.training.compute_dtype)


def global_batch_size(config, num_devices: int | None = None) -> int:
  t = config.training
  if t.batch_size:
    return int(t.batch_size)
  return int(t.per_device_batch_size) * (num_devices or jax.device_count())


def lr_schedule(lr: float, warmup_steps: int):
  """Linear warm-up from 0 to `lr` over `warmup_steps`, then constant (no decay), as released."""
  if warmup_steps <= 0:
    return optax.constant_schedule(lr)
  return optax.linear_schedule(0.0, lr, warmup_steps)


def make_optimizers(config):
  o = config.optim
  adam = functools.partial(optax.adam, b1=o.b1, b2=o.b2, eps=o.eps)
  return (adam(lr_schedule(o.g_lr, o.warmup_steps)), adam(lr_schedule(o.d_lr, o.warmup_steps)))


def _split_vars(variables):
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def _dummy_inputs(config, sched, level):
  n, c = sched.side(level), config.data.channels
  labels = jnp.zeros((1,), jnp.int32) if config.data.num_classes else None
  return jnp.zeros((1, n, n, c), jnp.float32), jnp.full((1,), sched.t(1), jnp.float32), labels


def init_state(config, key, gen, disc, g_tx, d_tx) -> TrainState:
  """Initialises both networks, their optimisers and the EMA from one key."""
  sched = proc.Schedule.from_config(config)
  k_g, k_d, k_run = jax.random.split(key, 3)
  x1, t, labels = _dummy_inputs(config, sched, 1)
  g_vars = gen.init({"params": k_g, "dropout": k_g}, x1, t, labels, train=False)
  x0, _, _ = _dummy_inputs(config, sched, 0)
  d_labels = labels if config.discriminator.conditional else None
  d_vars = disc.init({"params": k_d, "dropout": k_d}, x0, t, d_labels, train=False)
  return state_from_variables(g_vars, d_vars, g_tx, d_tx, k_run)


def state_from_variables(g_vars, d_vars, g_tx, d_tx, key) -> TrainState:
  """A step-0 state for given generator/discriminator variables: fresh optimisers, EMA = params."""
  g_params, g_consts = _split_vars(g_vars)
  d_params, d_consts = _split_vars(d_vars)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    g_params=g_params,
    g_consts=g_consts,
    g_opt=g_tx.init(g_params),
    ema_params=g_params,
    d_params=d_params,
    d_consts=d_consts,
    d_opt=d_tx.init(d_params),
    key=jax.random.key_data(key),
  )


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """What a step needs besides its arrays: the process, the networks, the optimisers and the loss
  settings, per level where the config gives one value per level.

  The step functions below take it as their first argument. The jitted programs bind it with
  `functools.partial` rather than passing it as a static argument: hashing two Flax modules on
  every dispatch would be host time spent for nothing.
  """

  sched: proc.Schedule
  gen: Any
  gen_forward: Any  # `gen` for the never-differentiated calls (see `models.build_generator`)
  disc: Any
  g_tx: Any
  d_tx: Any
  lpips_fn: Any  # (params, x, y) -> (B,) distances; None when no level uses LPIPS
  l1: tuple[float, ...]
  lpips: tuple[float, ...]
  adv: tuple[float, ...]
  r1_gamma: tuple[float, ...]
  normalize_inputs: bool
  conditional_g: bool
  conditional_d: bool
  ema_decay: float
  level_weights: tuple[float, ...]  # () = uniform
  d_noise_std: float
  d_noise_decay: float
  d_noise_decay_every: int

  @classmethod
  def from_config(cls, config, gen, disc, g_tx, d_tx, lpips_fn=None, gen_forward=None) -> StepSpec:
    """`gen_forward`: the generator for D's fakes, the same function as `gen` (default: `gen`)."""
    lc = config.loss
    if any(w > 0 for w in lc.lpips) and lpips_fn is None:
      raise ValueError("loss.lpips has positive weights but no LPIPS function was given.")
    return cls(
      sched=proc.Schedule.from_config(config),
      gen=gen,
      gen_forward=gen if gen_forward is None else gen_forward,
      disc=disc,
      g_tx=g_tx,
      d_tx=d_tx,
      lpips_fn=lpips_fn,
      l1=tuple(float(w) for w in lc.l1),
      lpips=tuple(float(w) for w in lc.lpips),
      adv=tuple(float(w) for w in lc.adv),
      r1_gamma=tuple(float(g) for g in lc.r1_gamma),
      normalize_inputs=bool(lc.normalize_inputs),
      conditional_g=config.data.num_classes > 0,
      conditional_d=bool(config.discriminator.conditional),
      ema_decay=float(config.training.ema_decay),
      level_weights=tuple(float(w) for w in (config.training.get("level_weights", ()) or ())),
      d_noise_std=float(lc.d_noise_std),
      d_noise_decay=float(lc.d_noise_decay),
      d_noise_decay_every=int(lc.d_noise_decay_every),
    )

  @property
  def levels(self) -> int:
    return self.sched.levels


# ---- the losses of one level, every random draw given ------------------------------------------


def level_inputs(spec: StepSpec, level: int, x0, noise):
  """(x_l, target, norm): x_l from the marginal given its standard normal draw `noise`, and the
  target H^{l-1} x0 / norm with norm = (Σw)^{l-1} when loss.normalize_inputs (else 1)."""
  sched = spec.sched
  x_l = proc.q_sample(sched, x0, level, None, noise=noise)
  norm = float(sched.kernel_array.sum()) ** (level - 1) if spec.normalize_inputs else 1.0
  return x_l, proc.H(sched, x0, level - 1) / norm, norm


def _labels(spec: StepSpec, batch):
  labels = batch["label"]
  return (labels if spec.conditional_g else None), (labels if spec.conditional_d else None)


def _t(spec: StepSpec, level: int, batch):
  return jnp.full((batch["image"].shape[0],), spec.sched.t(level), jnp.float32)


def d_loss(spec: StepSpec, level: int, d_params, state, batch, noise, noise_std, dropout_key):
  """D's loss at `level` and its metrics, given its draws: `noise` = {'x_l': the forward
  process's standard normal (B, N_l, N_l, C); 'real', 'fake': D's instance noise before scaling by
  noise_std, (B, N_{l-1}, N_{l-1}, C)}; `dropout_key` for D's masks."""
  t = _t(spec, level, batch)
  g_labels, d_labels = _labels(spec, batch)
  x_l, gt, norm = level_inputs(spec, level, batch["image"], noise["x_l"])
  # The release runs G in eval mode for the D step (no dropout) and without gradient.
  fake = spec.gen_forward.apply(
    {"params": state.g_params, **state.g_consts}, x_l, t, g_labels, train=False
  )
  fake = jax.lax.stop_gradient(fake.astype(jnp.float32)) / norm
  real_in = gt + noise_std * noise["real"]
  fake_in = fake + noise_std * noise["fake"]

  # Two D calls, two dropout masks (the release calls D on fake and on real separately); the R1
  # penalty differentiates the real call itself, so it shares that call's mask.
  k_drop_fake, k_drop_real = jax.random.split(dropout_key)

  def d_apply(img, dropout_key):
    variables = {"params": d_params, **state.d_consts}
    logits = spec.disc.apply(variables, img, t, d_labels, train=True, rngs={"dropout": dropout_key})
    return logits.astype(jnp.float32)

  logits_fake = d_apply(fake_in, k_drop_fake)
  d_real = functools.partial(d_apply, dropout_key=k_drop_real)
  gamma = spec.r1_gamma[level - 1]
  if gamma > 0:
    r1, logits_real = losses.r1_penalty(d_real, real_in)
  else:
    r1, logits_real = jnp.zeros(()), d_real(real_in)
  loss = 0.5 * losses.d_loss_fake(logits_fake) + 0.5 * losses.d_loss_real(logits_real)
  loss = loss + 0.5 * gamma * r1
  return loss, {
    "d_loss": loss,
    "d_real_logit": logits_real.mean(),
    "d_fake_logit": logits_fake.mean(),
    # How often D is right: a level whose D sits at 0.5 on both gives its generator no signal.
    "d_real_acc": jnp.mean((logits_real > 0).astype(jnp.float32)),
    "d_fake_acc": jnp.mean((logits_fake < 0).astype(jnp.float32)),
    "r1": r1,
  }


def g_loss(
  spec: StepSpec, level: int, g_params, state, batch, noise, noise_std, lpips_params, dropout_key
):
  """G's loss at `level` and its metrics, given its draws: `noise` = {'x_l' as in d_loss; 'adv':
  D's instance noise on the prediction before scaling, (B, N_{l-1}, N_{l-1}, C), or None where the
  level's adversarial weight is 0}; `dropout_key` for G's dropout."""
  t = _t(spec, level, batch)
  g_labels, d_labels = _labels(spec, batch)
  x_l, gt, norm = level_inputs(spec, level, batch["image"], noise["x_l"])
  variables = {"params": g_params, **state.g_consts}
  pred = spec.gen.apply(variables, x_l, t, g_labels, train=True, rngs={"dropout": dropout_key})
  pred = pred.astype(jnp.float32) / norm
  w1, wp, wa = spec.l1[level - 1], spec.lpips[level - 1], spec.adv[level - 1]
  l1 = losses.l1(pred, gt)
  lp = jnp.mean(spec.lpips_fn(lpips_params, pred, gt)) if wp > 0 else jnp.zeros(())
  if wa > 0:
    d_variables = {"params": jax.lax.stop_gradient(state.d_params), **state.d_consts}
    fake_in = pred + noise_std * noise["adv"]
    adv = losses.g_loss_adv(spec.disc.apply(d_variables, fake_in, t, d_labels, train=False))
  else:
    adv = jnp.zeros(())
  loss = w1 * l1 + wp * lp + wa * adv
  return loss, {"g_loss": loss, "g_l1": l1, "g_lpips": lp, "g_adv": adv}


# ---- the draws, from the step's keys ------------------------------------------------------------


def step_keys(key_data, step):
  """Step `step`'s four keys from the run's key: level of D, level of G, D update, G update."""
  return jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(key_data), step), 4)


def d_noise_std_at(spec: StepSpec, step):
  return losses.d_noise_std(step, spec.d_noise_std, spec.d_noise_decay, spec.d_noise_decay_every)


def _forward_noise(spec: StepSpec, level: int, key, x0):
  """The standard normal draw behind x_l, as `proc.q_sample` makes it from `key`."""
  mean = jax.eval_shape(lambda x: proc.q_mean(spec.sched, x, level), x0)
  return jax.random.normal(key, mean.shape, mean.dtype)


def _side_shape(spec: StepSpec, level: int, x0):
  side = spec.sched.side(level - 1)
  return (x0.shape[0], side, side, x0.shape[-1])


def _d_loss_drawn(spec: StepSpec, level: int, d_params, state, batch, key, noise_std):
  k_q, _, k_nr, k_nf, k_drop = jax.random.split(key, 5)  # (the second key is unused)
  x0 = batch["image"]
  noise = {
    "x_l": _forward_noise(spec, level, k_q, x0),
    "real": jax.random.normal(k_nr, _side_shape(spec, level, x0)),
    "fake": jax.random.normal(k_nf, _side_shape(spec, level, x0)),
  }
  return d_loss(spec, level, d_params, state, batch, noise, noise_std, k_drop)


def _g_loss_drawn(spec: StepSpec, level: int, g_params, state, batch, key, noise_std, lpips_params):
  k_q, k_drop, k_n = jax.random.split(key, 3)
  x0 = batch["image"]
  noise = {
    "x_l": _forward_noise(spec, level, k_q, x0),
    "adv": jax.random.normal(k_n, _side_shape(spec, level, x0))
    if spec.adv[level - 1] > 0
    else None,
  }
  return g_loss(spec, level, g_params, state, batch, noise, noise_std, lpips_params, k_drop)


# ---- the updates ----------------------------------------------------------------------------------


def d_grads(spec: StepSpec, state, batch, level: int):
  """(metrics, gradient of D's loss at `level`), drawn from the step's D key."""
  _, _, k_d, _ = step_keys(state.key, state.step)
  grad_fn = jax.value_and_grad(functools.partial(_d_loss_drawn, spec, level), has_aux=True)
  (_, metrics), grads = grad_fn(state.d_params, state, batch, k_d, d_noise_std_at(spec, state.step))
  return metrics, grads


def g_grads(spec: StepSpec, state, batch, lpips_params, level: int):
  """(metrics, gradient of G's loss at `level`), drawn from the step's G key."""
  _, _, _, k_g = step_keys(state.key, state.step)
  grad_fn = jax.value_and_grad(functools.partial(_g_loss_drawn, spec, level), has_aux=True)
  noise_std = d_noise_std_at(spec, state.step)
  (_, metrics), grads = grad_fn(state.g_params, state, batch, k_g, noise_std, lpips_params)
  return metrics, grads


def _apply_d(spec: StepSpec, state, metrics, grads):
  updates, d_opt = spec.d_tx.update(grads, state.d_opt, state.d_params)
  # The update's norm, beside the gradient's: with one Adam state for all levels, a level whose
  # gradients are much smaller than another's gets updates scaled down by that ratio.
  metrics = {
    **metrics,
    "d_grad_norm": optax.tree.norm(grads),
    "d_update_norm": optax.tree.norm(updates),
  }
  d_params = optax.apply_updates(state.d_params, updates)
  return state.replace(d_params=d_params, d_opt=d_opt), metrics


def _apply_g(spec: StepSpec, state, metrics, grads):
  """The generator's Adam update, its EMA, and step + 1."""
  updates, g_opt = spec.g_tx.update(grads, state.g_opt, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  ema = optax.incremental_update(g_params, state.ema_params, step_size=1.0 - spec.ema_decay)
  metrics = {
    **metrics,
    "g_grad_norm": optax.tree.norm(grads),
    "g_update_norm": optax.tree.norm(updates),
    "d_noise_std": d_noise_std_at(spec, state.step),
  }
  return state.replace(step=state.step + 1, g_params=g_params, g_opt=g_opt, ema_params=ema), metrics


def d_update(spec: StepSpec, state: TrainState, batch, level: int):
  """The discriminator update at `level` (a Python int: one program per level)."""
  return _apply_d(spec, state, *d_grads(spec, state, batch, level))


def g_update(spec: StepSpec, state: TrainState, batch, lpips_params, level: int):
  """The generator update at `level`, seeing the freshly updated D as released; EMA; step + 1."""
  return _apply_g(spec, state, *g_grads(spec, state, batch, lpips_params, level))


def draw_levels(spec: StepSpec, key_data, step):
  """(level_d, level_g) of `step`: they depend only on the run's key and the step, with
  probabilities ∝ training.level_weights (uniform when empty)."""
  k_ld, k_lg, _, _ = step_keys(key_data, step)

  def draw(key):
    if not spec.level_weights:
      return jax.random.randint(key, (), 1, spec.levels + 1)
    p = jnp.asarray(spec.level_weights, jnp.float32) / sum(spec.level_weights)
    return jax.random.choice(key, spec.levels, p=p).astype(jnp.int32) + 1

  return draw(k_ld), draw(k_lg)


def draw_level_table(spec: StepSpec, key_data, steps):
  """(level_d, level_g) for each of `steps`, as two arrays."""
  return jax.vmap(functools.partial(draw_levels, spec, key_data))(steps)


def with_levels(metrics, level_d, level_g):
  """The step's metrics with its levels and whether both losses are finite."""
  metrics = {**metrics, "level_d": level_d, "level_g": level_g}
  metrics["finite"] = jnp.isfinite(metrics["g_loss"]) & jnp.isfinite(metrics["d_loss"])
  return metrics


def train_step(spec: StepSpec, state: TrainState, batch, lpips_params):
  """One D and one G update in one program, the levels drawn inside it and chosen by lax.switch.

  `batch` = {'image': (B, N, N, C) in [-1, 1], 'label': (B,) int32}. `lpips_params` are the frozen
  LPIPS weights (None without LPIPS): an argument, so they are never baked into the program.
  """
  level_d, level_g = draw_levels(spec, state.key, state.step)
  d_branches = [functools.partial(d_grads, spec, level=l) for l in range(1, spec.levels + 1)]
  g_branches = [
    functools.partial(g_grads, spec, lpips_params=lpips_params, level=l)
    for l in range(1, spec.levels + 1)
  ]
  state, d_metrics = _apply_d(spec, state, *jax.lax.switch(level_d - 1, d_branches, state, batch))
  state, g_metrics = _apply_g(spec, state, *jax.lax.switch(level_g - 1, g_branches, state, batch))
  return state, with_levels({**d_metrics, **g_metrics}, level_d, level_g)


def train_steps(spec: StepSpec, state: TrainState, batches, lpips_params):
  """`train_step` over batches stacked on a leading axis, in a lax.scan; metrics stacked alike."""
  return jax.lax.scan(lambda s, b: train_step(spec, s, b, lpips_params), state, batches)


# ---- the distributed programs ---------------------------------------------------------------------


class _LevelTable:
  """The levels of each step, from host-side tables of `block` steps: one small device program
  and one fetch per block, made at block starts (log steps) — never a fetch between them."""

  def __init__(self, spec: StepSpec, mesh, block: int):
    rep = sharding.replicated(mesh)
    self._draw = jax.jit(
      functools.partial(draw_level_table, spec), in_shardings=(rep, rep), out_shardings=rep
    )
    self._block = block
    self._key = None
    self._first = None
    self._levels = None

  def __call__(self, state, step=None) -> tuple[int, int]:
    if step is None:  # a caller that does not track the step: read it (a sync)
      step = int(jax.device_get(state.step))
    first = step - step % self._block
    if self._key is None:
      self._key = np.asarray(jax.device_get(state.key))  # constant: fetched once
    if self._first != first:
      steps = np.arange(first, first + self._block, dtype=np.int32)
      self._levels = np.asarray(jax.device_get(self._draw(self._key, steps)))
      self._first = first
    level_d, level_g = self._levels[:, step - first]
    return int(level_d), int(level_g)


def jit_train_step(config, mesh, spec: StepSpec):
  """The training step over `mesh`: batch sharded on 'data', state replicated and donated.

  Returns `step(state, batch, lpips_params, step=None) -> (state, metrics)`.

  training.level_dispatch = 'host' (default): the step's two levels are looked up on the host
  (drawn from the same keys as in 'switch' mode) and the D and G updates run as programs compiled
  per level, the level a static argument — 2L programs. 'switch': one program choosing the level
  with lax.switch, which XLA:CPU executes ~20× slower (measured: 94 s vs 4.4 s for a level-1 R1
  gradient) but which `lax.scan` over `steps_per_dispatch` > 1 needs (the batch then has a
  leading axis of that length and the metrics are stacked).
  """
  scan = int(config.training.steps_per_dispatch) > 1
  rep, data_sharding = sharding.replicated(mesh), sharding.batch_sharding(mesh, scan)
  mode = config.training.get("level_dispatch", "host")
  if mode == "switch" or scan:
    jitted = jax.jit(
      functools.partial(train_steps if scan else train_step, spec),
      in_shardings=(rep, data_sharding, rep),
      out_shardings=(rep, rep),
      donate_argnums=(0,),
    )

    def device_step(state, batch, lpips_params, step=None):
      del step  # the levels are drawn inside the program, from the state's step
      return jitted(state, batch, lpips_params)

    return device_step
  if mode != "host":
    raise ValueError(f"training.level_dispatch={mode!r}; valid: 'host', 'switch'.")
  levels_at = _LevelTable(spec, mesh, block=max(1, min(int(config.training.log_every), 4096)))
  d_jit = jax.jit(
    functools.partial(d_update, spec),
    static_argnames=("level",),
    in_shardings=(rep, data_sharding),
    out_shardings=(rep, rep),
    donate_argnums=(0,),
  )
  g_jit = jax.jit(
    functools.partial(g_update, spec),
    static_argnames=("level",),
    in_shardings=(rep, data_sharding, rep),
    out_shardings=(rep, rep),
    donate_argnums=(0,),
  )

  # One process only: with jax.distributed the processes first meet in the first program's
  # collectives, and compiling all 2L programs before it made a CPU process time out waiting
  # for Gloo's connection (test_distributed, two test workers on 2 cores). There each program
  # compiles when first drawn.
  precompile = jax.process_count() == 1

  def host_step(state, batch, lpips_params, step=None):
    """One update of a state at `step` (give it: the host tracks it, so no fetch is made)."""
    nonlocal precompile
    if precompile:
      compile_level_programs(spec, d_jit, g_jit, state, batch, lpips_params)
      precompile = False
    level_d, level_g = levels_at(state, step)
    state, d_metrics = d_jit(state, batch, level_d)
    state, g_metrics = g_jit(state, batch, lpips_params, level_g)
    metrics = with_levels({**d_metrics, **g_metrics}, jnp.int32(level_d), jnp.int32(level_g))
    return state, metrics

  return host_step


def compile_level_programs(spec: StepSpec, d_jit, g_jit, state, batch, lpips_params) -> dict:
  """Compiles the D and G programs of every level that can be drawn, one after another, logs
  each one's compile time, and returns them ({'d_update/1': seconds, ...}). Compiling them all at
  the first step keeps compilation out of the logged step rates; the jitted functions reuse these
  compilations. One at a time, because XLA already compiles a program on several threads:
  compiling the demo's six concurrently on 2 cores was no faster (101 s against 86 and 96 s) and
  took 3x the memory (6.9 against 2.2 GB)."""
  drawn = [
    level
    for level in range(1, spec.levels + 1)
    if not spec.level_weights or spec.level_weights[level - 1] > 0
  ]
  programs = {f"d_update/{level}": d_jit.lower(state, batch, level) for level in drawn}
  programs |= {
    f"g_update/{level}": g_jit.lower(state, batch, lpips_params, level) for level in drawn
  }
  seconds = {}
  for name, lowered in programs.items():
    start = time.perf_counter()
    lowered.compile()
    seconds[name] = time.perf_counter() - start
  logging.info(
    "Compiled %d training programs in %.1f s (%s).",
    len(seconds),
    sum(seconds.values()),
    ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items()),
  )
  return seconds


def jit_init(config, mesh, gen, disc, g_tx, d_tx):
  rep = sharding.replicated(mesh)
  return jax.jit(lambda key: init_state(config, key, gen, disc, g_tx, d_tx), out_shardings=rep)


def build_spec(config) -> StepSpec:
  """The networks, optimisers and loss settings of a validated config."""
  dtype = compute_dtype(config)
  gen = models.build_generator(config, dtype=dtype)
  gen_forward = models.build_generator(config, dtype=dtype, forward_only=True)
  disc = models.build_discriminator(config, dtype=dtype)
  g_tx, d_tx = make_optimizers(config)
  lpips_fn = lpips_lib.training_distance(config)
  return StepSpec.from_config(config, gen, disc, g_tx, d_tx, lpips_fn, gen_forward)


def build(config, mesh):
  """(spec, jitted init, jitted step) for a config."""
  configs_lib.validate(config)
  spec = build_spec(config)
  init = jit_init(config, mesh, spec.gen, spec.disc, spec.g_tx, spec.d_tx)
  return spec, init, jit_train_step(config, mesh, spec)
