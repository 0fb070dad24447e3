"""Loss terms of UDPM training: L1, non-saturating GAN, R1, and the D input noise schedule.

Pure functions of arrays; the networks are passed in as apply-closures by the train step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l1(pred, target):
  """Mean absolute error over every element (torch's l1_loss with mean reduction)."""
  return jnp.mean(jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def d_loss_fake(logits):
  """The discriminator's loss on fakes: softplus(D(fake)) = −log(1 − sigmoid(D(fake)))."""
  return jnp.mean(jax.nn.softplus(logits.astype(jnp.float32)))


def d_loss_real(logits):
  """The discriminator's loss on reals: softplus(−D(real))."""
  return jnp.mean(jax.nn.softplus(-logits.astype(jnp.float32)))


def g_loss_adv(logits):
  """The generator's non-saturating loss softplus(−D(G(x)))."""
  return d_loss_real(logits)


def r1_penalty(disc_fn, real):
  """E_batch ‖∇_x Σ D(x)‖² at the (noisy) real inputs, the R1 regulariser without its γ/2.

  Args:
    disc_fn: maps a batch of images (B, H, W, C) to logits (B,).
    real: the real images the discriminator saw.

  Returns:
    (penalty, logits): the penalty and D(real), so the caller does not evaluate D twice.
  """
  logits, vjp = jax.vjp(disc_fn, real)
  (grad,) = vjp(jnp.ones_like(logits))
  grad = grad.astype(jnp.float32).reshape(grad.shape[0], -1)
  return jnp.mean(jnp.sum(grad**2, axis=1)), logits


def d_noise_std(step, base: float, decay: float, every: int):
  """std_D = base · decay^⌊step / every⌋ — the annealed instance noise added to D's inputs."""
  return base * decay ** jnp.floor_divide(step, every).astype(jnp.float32)
