"""The UDPM train step: one jitted, data-parallel update of the discriminator, then the generator.

Determinism: the state holds a base key; step k uses `fold_in(key, k)` for everything it draws
(levels, forward noise, D instance noise, dropout), and the data order is a function of
(seed, k). A resumed run therefore continues bit-exactly, and the global computation does not
depend on how many devices share the batch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from udpm_jax import configs as configs_lib
from udpm_jax import losses, models
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
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[
    config.training.compute_dtype
  ]


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


def make_train_step(config, gen, disc, g_tx, d_tx, lpips_fn=None):
  """Builds the un-jitted step `(state, batch, lpips_params) -> (state, metrics)` and its parts.

  Returns (step, StepParts); `step` draws both levels from the step key and uses lax.switch.

  `batch` = {'image': (B, N, N, C) in [-1, 1], 'label': (B,) int32}. With
  `training.steps_per_dispatch = k > 1` the batch has a leading axis k and the step runs k updates
  in a `lax.scan`, returning stacked metrics.
  `lpips_fn(params, x, y) -> (B,)` is required when any loss.lpips weight is positive; its frozen
  weights travel as the `lpips_params` argument so they are never baked into the program.
  """
  sched = proc.Schedule.from_config(config)
  L = sched.levels
  lc = config.loss
  conditional_g = config.data.num_classes > 0
  conditional_d = bool(config.discriminator.conditional)
  kernel_sum = float(sched.kernel_array.sum())
  ema_decay = float(config.training.ema_decay)
  if any(w > 0 for w in lc.lpips) and lpips_fn is None:
    raise ValueError("loss.lpips has positive weights but no LPIPS function was given.")

  def level_inputs(noise, x0, level):
    """x_l from the marginal (given its standard normal draw) and the normalised target
    H^{l-1} x0 / (Σw)^{l-1}."""
    x_l = proc.q_sample(sched, x0, level, None, noise=noise)
    norm = kernel_sum ** (level - 1) if lc.normalize_inputs else 1.0
    return x_l, proc.H(sched, x0, level - 1) / norm, norm

  def forward_noise(key, x0, level):
    """The standard normal draw behind x_l, as `proc.q_sample` makes it from `key`."""
    mean = jax.eval_shape(lambda x: proc.q_mean(sched, x, level), x0)
    return jax.random.normal(key, mean.shape, mean.dtype)

  def d_loss(level, d_params, state, batch, noise, noise_std, dropout_key):
    """D's loss at `level` given its draws: `noise` = {'x_l': the forward process's standard normal
    (B, N_l, N_l, C); 'real', 'fake': D's instance noise before scaling by noise_std,
    (B, N_{l-1}, N_{l-1}, C)}; `dropout_key` for D's masks."""
    x0, labels = batch["image"], batch["label"]
    t = jnp.full((x0.shape[0],), sched.t(level), jnp.float32)
    g_labels = labels if conditional_g else None
    d_labels = labels if conditional_d else None
    x_l, gt, norm = level_inputs(noise["x_l"], x0, level)
    # The release runs G in eval mode for the D step (no dropout) and without gradient.
    fake = gen.apply({"params": state.g_params, **state.g_consts}, x_l, t, g_labels, train=False)
    fake = jax.lax.stop_gradient(fake.astype(jnp.float32)) / norm
    real_in = gt + noise_std * noise["real"]
    fake_in = fake + noise_std * noise["fake"]

    # Two D calls, two dropout masks (the release calls D on fake and on real separately); the R1
    # penalty differentiates the real call itself, so it shares that call's mask.
    k_drop_fake, k_drop_real = jax.random.split(dropout_key)

    def d_apply(img, dropout_key):
      return disc.apply(
        {"params": d_params, **state.d_consts},
        img,
        t,
        d_labels,
        train=True,
        rngs={"dropout": dropout_key},
      ).astype(jnp.float32)

    logits_fake = d_apply(fake_in, k_drop_fake)
    d_real = functools.partial(d_apply, dropout_key=k_drop_real)
    gamma = lc.r1_gamma[level - 1]
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

  def d_branch(level, d_params, state, batch, key, noise_std):
    k_q, _, k_nr, k_nf, k_drop = jax.random.split(key, 5)  # (the second key is unused)
    x0 = batch["image"]
    side = (x0.shape[0], sched.side(level - 1), sched.side(level - 1), x0.shape[-1])
    noise = {
      "x_l": forward_noise(k_q, x0, level),
      "real": jax.random.normal(k_nr, side),
      "fake": jax.random.normal(k_nf, side),
    }
    return d_loss(level, d_params, state, batch, noise, noise_std, k_drop)

  def g_loss(level, g_params, state, batch, noise, noise_std, lpips_params, dropout_key):
    """G's loss at `level` given its draws: `noise` = {'x_l' as in d_loss; 'adv': D's instance
    noise on the prediction before scaling, (B, N_{l-1}, N_{l-1}, C), or None where the level's
    adversarial weight is 0}; `dropout_key` for G's dropout."""
    x0, labels = batch["image"], batch["label"]
    t = jnp.full((x0.shape[0],), sched.t(level), jnp.float32)
    g_labels = labels if conditional_g else None
    d_labels = labels if conditional_d else None
    x_l, gt, norm = level_inputs(noise["x_l"], x0, level)
    pred = (
      gen.apply(
        {"params": g_params, **state.g_consts},
        x_l,
        t,
        g_labels,
        train=True,
        rngs={"dropout": dropout_key},
      ).astype(jnp.float32)
      / norm
    )
    w1, wp, wa = lc.l1[level - 1], lc.lpips[level - 1], lc.adv[level - 1]
    l1 = losses.l1(pred, gt)
    lp = jnp.mean(lpips_fn(lpips_params, pred, gt)) if wp > 0 else jnp.zeros(())
    if wa > 0:
      fake_in = pred + noise_std * noise["adv"]
      logits = disc.apply(
        {"params": jax.lax.stop_gradient(state.d_params), **state.d_consts},
        fake_in,
        t,
        d_labels,
        train=False,
      ).astype(jnp.float32)
      adv = losses.g_loss_adv(logits)
    else:
      adv = jnp.zeros(())
    loss = w1 * l1 + wp * lp + wa * adv
    return loss, {"g_loss": loss, "g_l1": l1, "g_lpips": lp, "g_adv": adv}

  def g_branch(level, g_params, state, batch, key, noise_std, lpips_params):
    k_q, k_drop, k_n = jax.random.split(key, 3)
    x0 = batch["image"]
    side = (x0.shape[0], sched.side(level - 1), sched.side(level - 1), x0.shape[-1])
    noise = {
      "x_l": forward_noise(k_q, x0, level),
      "adv": jax.random.normal(k_n, side) if lc.adv[level - 1] > 0 else None,
    }
    return g_loss(level, g_params, state, batch, noise, noise_std, lpips_params, k_drop)

  d_grad_fns = [
    jax.value_and_grad(functools.partial(d_branch, l), has_aux=True) for l in range(1, L + 1)
  ]
  g_grad_fns = [
    jax.value_and_grad(functools.partial(g_branch, l), has_aux=True) for l in range(1, L + 1)
  ]

  def step_keys(state):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    return jax.random.split(key, 4)  # level D, level G, D step, G step

  def noise_std_of(state):
    return losses.d_noise_std(state.step, lc.d_noise_std, lc.d_noise_decay, lc.d_noise_decay_every)

  def d_update(state: TrainState, batch, level_d):
    """The discriminator update at `level_d` (a Python int, or traced with lax.switch)."""
    _, _, k_d, _ = step_keys(state)
    args = (state.d_params, state, batch, k_d, noise_std_of(state))
    if isinstance(level_d, int):
      (_, metrics), grads = d_grad_fns[level_d - 1](*args)
    else:
      (_, metrics), grads = jax.lax.switch(level_d - 1, d_grad_fns, *args)
    updates, d_opt = d_tx.update(grads, state.d_opt, state.d_params)
    # The update's norm, beside the gradient's: with one Adam state for all levels, a level whose
    # gradients are much smaller than another's gets updates scaled down by that ratio.
    metrics = {
      **metrics,
      "d_grad_norm": optax.tree.norm(grads),
      "d_update_norm": optax.tree.norm(updates),
    }
    return state.replace(
      d_params=optax.apply_updates(state.d_params, updates), d_opt=d_opt
    ), metrics

  def g_update(state: TrainState, batch, lpips_params, level_g):
    """The generator update (seeing the freshly updated D, as released), EMA, step + 1."""
    _, _, _, k_g = step_keys(state)
    noise_std = noise_std_of(state)
    args = (state.g_params, state, batch, k_g, noise_std, lpips_params)
    if isinstance(level_g, int):
      (_, metrics), grads = g_grad_fns[level_g - 1](*args)
    else:
      (_, metrics), grads = jax.lax.switch(level_g - 1, g_grad_fns, *args)
    updates, g_opt = g_tx.update(grads, state.g_opt, state.g_params)
    g_params = optax.apply_updates(state.g_params, updates)
    ema = optax.incremental_update(g_params, state.ema_params, step_size=1.0 - ema_decay)
    metrics = {
      **metrics,
      "g_grad_norm": optax.tree.norm(grads),
      "g_update_norm": optax.tree.norm(updates),
      "d_noise_std": noise_std,
    }
    return state.replace(
      step=state.step + 1, g_params=g_params, g_opt=g_opt, ema_params=ema
    ), metrics

  weights = tuple(config.training.get("level_weights", ()) or ())

  def draw_level(key):
    if not weights:
      return jax.random.randint(key, (), 1, L + 1)
    p = jnp.asarray(weights, jnp.float32) / sum(weights)
    return jax.random.choice(key, L, p=p).astype(jnp.int32) + 1

  def draw_levels(state):
    k_ld, k_lg, _, _ = step_keys(state)
    return draw_level(k_ld), draw_level(k_lg)

  def draw_levels_for_steps(key_data, steps):
    """(level_d, level_g) of each of `steps`, as `draw_levels` draws them from a state at that
    step: both depend only on the run's key (constant through training) and the step."""

    def one(step):
      return draw_levels(TrainState(step, *([None] * 7), key=key_data))

    return jax.vmap(one)(steps)

  def finish(metrics, level_d, level_g):
    metrics = {**metrics, "level_d": level_d, "level_g": level_g}
    metrics["finite"] = jnp.isfinite(metrics["g_loss"]) & jnp.isfinite(metrics["d_loss"])
    return metrics

  def one_step(state: TrainState, batch, lpips_params):
    level_d, level_g = draw_levels(state)
    state, d_metrics = d_update(state, batch, level_d)
    state, g_metrics = g_update(state, batch, lpips_params, level_g)
    return state, finish({**d_metrics, **g_metrics}, level_d, level_g)

  parts = StepParts(
    d_update=d_update,
    g_update=g_update,
    draw_levels=draw_levels,
    draw_levels_for_steps=draw_levels_for_steps,
    finish=finish,
    d_loss=d_loss,
    g_loss=g_loss,
  )
  k = int(config.training.steps_per_dispatch)
  if k <= 1:
    return one_step, parts

  def multi_step(state, batches, lpips_params):
    return jax.lax.scan(lambda s, b: one_step(s, b, lpips_params), state, batches)

  return multi_step, parts


@dataclasses.dataclass(frozen=True)
class StepParts:
  """The pieces of a step, for dispatching one compiled program per level from the host.

  `d_loss(level, d_params, state, batch, noise, noise_std, dropout_key)` and
  `g_loss(level, g_params, state, batch, noise, noise_std, lpips_params, dropout_key)` are the
  per-level losses with every random draw given (the updates draw them from the step key): for
  checks against other implementations with injected noise.
  """

  d_update: Any
  g_update: Any
  draw_levels: Any
  draw_levels_for_steps: Any
  finish: Any
  d_loss: Any
  g_loss: Any


# ---- the distributed setup -----------------------------------------------------------------------


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all devices with the batch axis 'data'."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), ("data",))


def batch_sharding(mesh, leading_scan_axis=False):
  return NamedSharding(mesh, P(None, "data") if leading_scan_axis else P("data"))


def replicated(mesh):
  return NamedSharding(mesh, P())


def jit_train_step(config, mesh, gen, disc, g_tx, d_tx, lpips_fn=None):
  """The training step over `mesh`: batch sharded on 'data', state replicated and donated.

  training.level_dispatch = 'host' (default): the step's two levels are drawn (from the same keys
  as in 'switch' mode) and the D and G updates run as programs compiled per level — 2L programs.
  'switch': one program choosing the level with lax.switch, which XLA:CPU executes ~20× slower
  (measured: 94 s vs 4.4 s for a level-1 R1 gradient) but which `lax.scan` over
  `steps_per_dispatch` > 1 needs.
  """
  step, parts = make_train_step(config, gen, disc, g_tx, d_tx, lpips_fn)
  scan = int(config.training.steps_per_dispatch) > 1
  rep, data_sharding = replicated(mesh), batch_sharding(mesh, scan)
  mode = config.training.get("level_dispatch", "host")
  if mode == "switch" or scan:
    jitted = jax.jit(
      step, in_shardings=(rep, data_sharding, rep), out_shardings=(rep, rep), donate_argnums=(0,)
    )

    def device_step(state, batch, lpips_params, step=None):
      del step  # the levels are drawn inside the program, from the state's step
      return jitted(state, batch, lpips_params)

    return device_step
  if mode != "host":
    raise ValueError(f"training.level_dispatch={mode!r}; valid: 'host', 'switch'.")
  draws = jax.jit(parts.draw_levels_for_steps, in_shardings=(rep, rep), out_shardings=rep)
  block = max(1, min(int(config.training.log_every), 4096))
  cache = {"key": None, "first": None, "levels": None}

  def levels_at(state, step):
    """The step's two levels, from host-side tables of `block` steps: one small device program
    and one fetch per block, made at block starts (log steps) — never a fetch between them."""
    if step is None:  # a caller that does not track the step: read it (a sync)
      step = int(jax.device_get(state.step))
    first = step - step % block
    if cache["key"] is None:
      cache["key"] = np.asarray(jax.device_get(state.key))  # constant: fetched once
    if cache["first"] != first:
      steps = np.arange(first, first + block, dtype=np.int32)
      cache["levels"] = np.asarray(jax.device_get(draws(cache["key"], steps)))
      cache["first"] = first
    level_d, level_g = cache["levels"][:, step - first]
    return int(level_d), int(level_g)

  d_jit = {
    l: jax.jit(
      functools.partial(parts.d_update, level_d=l),
      in_shardings=(rep, data_sharding),
      out_shardings=(rep, rep),
      donate_argnums=(0,),
    )
    for l in range(1, config.process.levels + 1)
  }
  g_jit = {
    l: jax.jit(
      functools.partial(parts.g_update, level_g=l),
      in_shardings=(rep, data_sharding, rep),
      out_shardings=(rep, rep),
      donate_argnums=(0,),
    )
    for l in range(1, config.process.levels + 1)
  }

  def host_step(state, batch, lpips_params, step=None):
    """One update of a state at `step` (give it: the host tracks it, so no fetch is made)."""
    level_d, level_g = levels_at(state, step)
    state, d_metrics = d_jit[level_d](state, batch)
    state, g_metrics = g_jit[level_g](state, batch, lpips_params)
    return state, parts.finish({**d_metrics, **g_metrics}, jnp.int32(level_d), jnp.int32(level_g))

  return host_step


def jit_init(config, mesh, gen, disc, g_tx, d_tx):
  rep = replicated(mesh)
  return jax.jit(lambda key: init_state(config, key, gen, disc, g_tx, d_tx), out_shardings=rep)


def build(config, mesh):
  """Networks, optimisers, lpips function and jitted init/step for a config."""
  configs_lib.validate(config)
  dtype = compute_dtype(config)
  gen = models.build_generator(config, dtype=dtype)
  disc = models.build_discriminator(config, dtype=dtype)
  g_tx, d_tx = make_optimizers(config)
  lpips_fn = None
  if any(w > 0 for w in config.loss.lpips):
    from udpm_jax import lpips as lpips_lib

    lpips_fn = lpips_lib.lpips_distance
  init = jit_init(config, mesh, gen, disc, g_tx, d_tx)
  step = jit_train_step(config, mesh, gen, disc, g_tx, d_tx, lpips_fn)
  return gen, disc, init, step


def load_lpips_params(config):
  if not any(w > 0 for w in config.loss.lpips):
    return None
  from udpm_jax import lpips as lpips_lib

  return lpips_lib.load_params(config.loss.lpips_weights or None)


def to_global_batch(local_batch: dict, mesh, scan: bool = False) -> dict:
  """Assembles each host's slice into global arrays sharded over 'data'."""
  sharding = batch_sharding(mesh, scan)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }
