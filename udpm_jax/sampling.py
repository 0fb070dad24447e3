"""Sampling: the jitted sampler, latents and latent tools, and super-resolution.

A latent is the tuple of standard normal maps (e_L, e_{L−1}, …, e_1): e_L makes the prior draw x_L,
and e_l (l < L) is the noise of the posterior draw that produces x_l. Decoding a latent is
deterministic, so the same latent always gives the same image, and every latent tool below is a
function of latents only. For wide (non-Lemma-1) kernels each e_l (l < L) is a pair of maps used by
Matheron's rule; the tools treat latents as pytrees so nothing changes for users.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from udpm_jax import process as proc
from udpm_jax import sharding

DenoiseFn = Callable  # (variables, x_l, t (B,), labels) -> prediction of H^{l-1} x_0


def default_denoise_fn(config):
  from udpm_jax import models

  gen = models.build_generator(config, forward_only=True)
  return lambda variables, x, t, labels: gen.apply(variables, x, t, labels)


def sample_latents(sched: proc.Schedule, key, num: int, channels: int, dtype=jnp.float32):
  """The per-level standard normal maps (e_L, …, e_1) of `num` samples, from one key."""
  L = sched.levels
  keys = jax.random.split(key, L)
  n = sched.side(L)
  latents = [jax.random.normal(keys[0], (num, n, n, channels), dtype)]
  for i, level in enumerate(range(L, 1, -1), start=1):
    latents.append(proc.posterior_noise(sched, keys[i], level, num, channels, dtype))
  return tuple(latents)


def latent_index(sched: proc.Schedule, level: int) -> int:
  """Position of e_level in a latent tuple (e_L first)."""
  if not 1 <= level <= sched.levels:
    raise ValueError(f"level={level} must be in [1, {sched.levels}].")
  return sched.levels - level


def decode_levels(
  sched: proc.Schedule, denoise_fn: DenoiseFn, variables, latents, labels, exact=None
):
  """Runs the reverse chain from a latent. Returns [x_L, …, x_1, x_0] (x_0 unclipped)."""
  L = sched.levels
  x = proc.prior_from_noise(sched, latents[0])
  levels = [x]
  b = x.shape[0]
  for level in range(L, 0, -1):
    t = jnp.full((b,), sched.t(level), jnp.float32)
    x_hat = denoise_fn(variables, x, t, labels).astype(x.dtype)
    noise = latents[L - level + 1] if level > 1 else None
    x = proc.posterior_from_noise(sched, x, x_hat, level, noise, exact)
    levels.append(x)
  return levels


def default_labels(config, num: int):
  """Class-balanced labels 0, 1, …, K−1, 0, … (None for unconditional configs)."""
  k = config.data.num_classes
  return jnp.arange(num, dtype=jnp.int32) % k if k else None


def checked_labels(config, labels, num: int):
  """`labels` as int32 (num,), or the class-balanced default when None; errors name the problem
  (an out-of-range label would one-hot to zeros and silently drop its conditioning)."""
  k = config.data.num_classes
  if labels is None:
    return default_labels(config, num)
  if k == 0:
    raise ValueError("This config is unconditional (data.num_classes=0): labels must be None.")
  host = np.asarray(labels)
  if host.shape != (num,):
    raise ValueError(f"labels have shape {host.shape}; {num} images need shape ({num},).")
  from udpm_jax import data

  data.check_labels(host, config, "sampling labels")
  return jnp.asarray(host, jnp.int32)


def decode_sharded(sched, denoise_fn, mesh, variables, latents, labels=None, exact=None):
  """`decode_levels` on every device of `mesh`, inside a jitted program, x_0 clipped to [-1, 1].

  Any batch size runs on every device: the latents are padded to a multiple of the device count
  and constrained to the batch sharding; the returned levels keep the padding (cut with `[:num]`).
  Every random draw is in the latents, drawn for the real batch first, so the images do not depend
  on the device count.
  """
  num = jax.tree.leaves(latents)[0].shape[0]
  pad = -num % mesh.size
  if pad:
    latents = jax.tree.map(lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)), latents)
    labels = None if labels is None else jnp.pad(labels, (0, pad))
  if mesh.size > 1:
    shard = sharding.batch_sharding(mesh)
    latents, labels = jax.tree.map(
      lambda a: jax.lax.with_sharding_constraint(a, shard), (latents, labels)
    )
  levels = decode_levels(sched, denoise_fn, variables, latents, labels, exact)
  levels[-1] = jnp.clip(levels[-1], -1.0, 1.0)
  return levels


def make_sample_fn(
  config, denoise_fn: DenoiseFn | None = None, exact: bool | None = None, devices=None
):
  """A jitted `sample(variables, key, num=None, labels=None, latents=None, return_levels=False)`.

  Returns images (num, N, N, C) clipped to [-1, 1] — or, with `return_levels`, the list
  [x_L, …, x_0] (x_0 clipped). The exact posterior is used unless `exact=False` or
  config.process.exact_posterior is False. The batch is sharded over all devices (padded to a
  multiple of their count, the padding dropped); the latents are drawn from `key` for the whole
  batch first, so the images are the same for any number of devices. The result is replicated.
  """
  sched = proc.Schedule.from_config(config)
  denoise_fn = denoise_fn or default_denoise_fn(config)
  channels = config.data.channels
  mesh = sharding.make_mesh(devices)

  def run(variables, key, num, labels, latents, return_levels):
    if latents is None:
      latents = sample_latents(sched, jax.random.fold_in(key, 0), num, channels)
    levels = decode_sharded(sched, denoise_fn, mesh, variables, latents, labels, exact)
    levels = [x[:num] for x in levels]
    return levels if return_levels else levels[-1]

  jitted = jax.jit(
    run, static_argnames=("num", "return_levels"), out_shardings=sharding.replicated(mesh)
  )

  def sample(variables, key, num=None, labels=None, latents=None, return_levels=False):
    if latents is not None:
      num_latent = jax.tree.leaves(latents)[0].shape[0]
      if num is not None and num != num_latent:
        raise ValueError(f"num={num} but the latents hold {num_latent} samples.")
      num = num_latent
    if num is None:
      raise ValueError("Pass num (the number of images) or latents.")
    labels = checked_labels(config, labels, num)
    # Restored or user-made arrays (weights, keys and labels from other programs) may sit on one
    # device; the program spans the whole mesh.
    rep = sharding.replicated(mesh)
    variables, key, labels, latents = jax.device_put((variables, key, labels, latents), rep)
    return jitted(variables, key, num, labels, latents, return_levels)

  sample.schedule = sched
  sample.program = jitted  # the jitted chain, (variables, key, num, labels, latents, return_levels)
  return sample


def decode(sample_fn, variables, latents, labels=None, return_levels=False):
  """Images of fixed latents (deterministic): `sample_fn` from `make_sample_fn`."""
  return sample_fn(
    variables, jax.random.PRNGKey(0), latents=latents, labels=labels, return_levels=return_levels
  )


# ---- latent tools --------------------------------------------------------------------------------


def _mix(a, b, wa, wb):
  return jax.tree.map(lambda x, y: wa * x + wb * y, a, b)


def interpolate(
  latents_a,
  latents_b,
  latents_c=None,
  latents_d=None,
  etas: Sequence[float] = (1.0,),
  deltas: Sequence[float] = np.linspace(1, 0, 5),
):
  """Variance-preserving interpolation on a grid, batch order (eta, delta, sample).

  Two latents: e(δ) = δ e_a + √(1−δ²) e_b (etas ignored). Four latents:
  e(η, δ) = η(δ e_a + √(1−δ²) e_b) + √(1−η²)(δ e_c + √(1−δ²) e_d). Each input holds the same number
  of samples; the output holds len(etas)·len(deltas) times as many.
  """
  four = latents_c is not None
  if four != (latents_d is not None):
    raise ValueError("Pass two latents (a, b) or four (a, b, c, d).")
  out = []
  for eta in etas if four else (1.0,):
    for delta in deltas:
      wd = math.sqrt(max(0.0, 1.0 - delta**2))
      e = _mix(latents_a, latents_b, delta, wd)
      if four:
        e = _mix(e, _mix(latents_c, latents_d, delta, wd), eta, math.sqrt(max(0.0, 1 - eta**2)))
      out.append(e)
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *out)


def perturb(sched: proc.Schedule, latents, key, level: int, gamma: float):
  """e_level ← γ e_level + √(1−γ²) e' with fresh noise e'; the other levels unchanged."""
  i = latent_index(sched, level)
  leaves, treedef = jax.tree.flatten(latents[i])
  keys = jax.random.split(key, len(leaves))
  fresh = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  new = [gamma * x + math.sqrt(max(0.0, 1.0 - gamma**2)) * f for x, f in zip(leaves, fresh)]
  out = list(latents)
  out[i] = jax.tree.unflatten(treedef, new)
  return tuple(out)


def swap(sched: proc.Schedule, latents_a, latents_b, level: int):
  """B's latents with level `level`'s noise taken from A."""
  i = latent_index(sched, level)
  out = list(latents_b)
  out[i] = latents_a[i]
  return tuple(out)


# ---- super-resolution ----------------------------------------------------------------------------


def make_upsample_fn(
  config, from_level: int, denoise_fn: DenoiseFn | None = None, exact: bool | None = None
):
  """A jitted `upsample(variables, key, y, labels=None, plain_image=True)` → (B, N, N, C).

  Generates x_0 conditioned on a low-resolution y at side N / s^from_level: x_l is drawn from
  q(x_l | x_0) with H^l x_0 = y', then the reverse chain runs from level `from_level` down.
  `plain_image=True` means y is an ordinary image in [-1, 1] (e.g. an average-pooled photo); it is
  mapped to the process's units y' = (Σw)^l · y (for the 'norm' box, s^l · y). With
  `plain_image=False`, y is H^l x_0 itself.
  """
  sched = proc.Schedule.from_config(config)
  sched._check_level(from_level)
  denoise_fn = denoise_fn or default_denoise_fn(config)
  gain = float(sched.kernel_array.sum()) ** from_level
  rep = sharding.replicated(sharding.make_mesh())

  def run(variables, key, y, labels, plain_image):
    y = y * gain if plain_image else y
    b, _, _, c = y.shape
    k_q, k_post = jax.random.split(key)
    x = proc.q_perturb(sched, sched.alpha_bars[from_level] * y, from_level, k_q)
    keys = jax.random.split(k_post, from_level)
    for i, level in enumerate(range(from_level, 0, -1)):
      t = jnp.full((b,), sched.t(level), jnp.float32)
      x_hat = denoise_fn(variables, x, t, labels).astype(x.dtype)
      x = proc.posterior_sample(sched, x, x_hat, level, keys[i], exact)
    return jnp.clip(x, -1.0, 1.0)

  jitted = jax.jit(run, static_argnames=("plain_image",))

  def upsample(variables, key, y, labels=None, plain_image=True):
    y = jnp.asarray(y, jnp.float32)
    if y.shape[1] != sched.side(from_level):
      raise ValueError(
        f"y has side {y.shape[1]}; level {from_level} needs "
        f"{sched.side(from_level)} (image_size {sched.image_size} / "
        f"{sched.scale}^{from_level})."
      )
    if y.ndim != 4 or y.shape[-1] != config.data.channels:
      raise ValueError(
        f"y has shape {y.shape}; this model needs (B, {sched.side(from_level)}, "
        f"{sched.side(from_level)}, {config.data.channels}) (data.channels)."
      )
    labels = checked_labels(config, labels, y.shape[0])
    # Weights restored onto one device and images from the (replicated) sampler: one placement.
    variables, key, y, labels = jax.device_put((variables, key, y, labels), rep)
    return jitted(variables, key, y, labels, plain_image)

  return upsample
