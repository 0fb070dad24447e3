"""The UDPM forward process, its exact posterior, and exact sampling.

Everything is a pure function of a small immutable, hashable `Schedule` (usable as a static
argument of `jax.jit`) and explicit PRNG keys. Levels are Python ints 1..L (shapes depend on them).

Two regimes, chosen by the kernel:
* Lemma 1 (support ≤ s, the paper's box kernel): H Hᵀ = ‖w‖² I, every marginal covariance is
  σ̃_l² I, and the posterior has a closed (Woodbury) form with an exact square root.
* Wider kernels with periodic boundaries: marginal covariances are circulant; we carry their
  eigenvalues level by level (`Schedule.marginal_spectrum`) and apply Σ_l exactly with Woodbury and
  one low-resolution FFT; samples are exact by Matheron's rule.

`exact=False` reproduces the authors' release, which replaces Σ_l by the scalar 1/(a+b);
it is defined for Lemma-1 kernels only.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from udpm_jax import operators as ops


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Per-level coefficients of the forward process q(x_l | x_{l-1}) = N(α_l H x_{l-1}, σ_l² I).

  Tuples are indexed 0..L with entry 0 the identity level: α_0 = 1, σ_0 = 0.
  """

  alphas: tuple[float, ...]
  sigmas: tuple[float, ...]
  kernel: tuple[tuple[float, ...], ...]
  scale: int
  image_size: int
  exact: bool = True

  def __post_init__(self):
    if len(self.alphas) != len(self.sigmas) or len(self.alphas) < 2:
      raise ValueError(
        f"alphas {self.alphas} and sigmas {self.sigmas} must both have L+1 >= 2 "
        "entries (entry 0 is α_0 = 1, σ_0 = 0)."
      )
    if self.alphas[0] != 1.0 or self.sigmas[0] != 0.0:
      raise ValueError(
        f"Entry 0 must be α_0 = 1, σ_0 = 0; got {self.alphas[0]}, {self.sigmas[0]}. "
        "Use Schedule.create(alphas, sigmas, ...) with per-level lists."
      )
    if self.image_size % self.scale**self.levels:
      raise ValueError(
        f"image_size={self.image_size} is not divisible by scale**levels = "
        f"{self.scale}**{self.levels}."
      )

  @classmethod
  def create(
    cls, alphas, sigmas, kernel=None, scale: int = 2, image_size: int = 32, exact: bool = True
  ) -> "Schedule":
    """Builds a schedule from per-level lists (level 1 first); kernel defaults to the 'norm' box."""
    if kernel is None:
      kernel = ops.make_kernel("box", scale, "norm")
    if len(alphas) != len(sigmas):
      raise ValueError(
        f"alphas has {len(alphas)} entries, sigmas {len(sigmas)}; need one per level."
      )
    for a in alphas:
      if not 0.0 < a <= 1.0:
        raise ValueError(f"alpha={a!r} outside (0, 1].")
    for s in sigmas:
      if not s > 0.0:
        raise ValueError(f"sigma={s!r} must be > 0.")
    kernel = tuple(tuple(float(v) for v in row) for row in np.asarray(kernel, dtype=np.float64))
    return cls(
      alphas=(1.0, *map(float, alphas)),
      sigmas=(0.0, *map(float, sigmas)),
      kernel=kernel,
      scale=int(scale),
      image_size=int(image_size),
      exact=bool(exact),
    )

  @classmethod
  def from_config(cls, config) -> "Schedule":
    """Builds the schedule of `config.process` at `config.data.image_size`."""
    p = config.process
    kernel = ops.make_kernel(
      p.kernel,
      p.scale,
      p.kernel_norm,
      size=p.get("kernel_size", None),
      std=p.get("kernel_std", 1.0),
    )
    return cls.create(
      p.alphas,
      p.sigmas,
      kernel,
      p.scale,
      config.data.image_size,
      exact=p.get("exact_posterior", True),
    )

  # ---- derived quantities ----------------------------------------------------------------------

  @property
  def levels(self) -> int:
    return len(self.alphas) - 1

  @functools.cached_property
  def kernel_array(self) -> np.ndarray:
    return np.asarray(self.kernel, dtype=np.float64)

  @functools.cached_property
  def norm_sq(self) -> float:
    """‖w‖²."""
    return ops.kernel_norm_sq(self.kernel_array)

  @functools.cached_property
  def lemma1(self) -> bool:
    """True when H Hᵀ = ‖w‖² I, so all covariances are scalar."""
    return ops.satisfies_lemma1(self.kernel_array, self.scale)

  @functools.cached_property
  def alpha_bars(self) -> tuple[float, ...]:
    """ᾱ_l = ∏_{k≤l} α_k, ᾱ_0 = 1."""
    return tuple(float(v) for v in np.cumprod(self.alphas))

  @functools.cached_property
  def sigma_tilde_sq(self) -> tuple[float, ...]:
    """σ̃_l² = α_l² ‖w‖² σ̃_{l-1}² + σ_l², σ̃_0² = 0: the marginal variance under Lemma 1.

    For wider kernels the marginal covariance is circulant (see `marginal_spectrum`); this is then
    the per-pixel variance of the Lemma-1 recursion and only indicative.
    """
    out = [0.0]
    for l in range(1, self.levels + 1):
      out.append(self.alphas[l] ** 2 * self.norm_sq * out[-1] + self.sigmas[l] ** 2)
    return tuple(out)

  def side(self, level: int) -> int:
    """N_l = N / s^l."""
    return self.image_size // self.scale**level

  def t(self, level: int) -> float:
    """The network's conditioning t_l = (l − ½) / L."""
    self._check_level(level, allow_zero=False)
    return (level - 0.5) / self.levels

  def marginal_spectrum(self, level: int) -> np.ndarray:
    """Eigenvalues (N_l × N_l) of the circulant covariance of q(x_l | x_0)."""
    return self._chain_spectrum(level, start=0.0)

  def prior_spectrum(self) -> np.ndarray:
    """Eigenvalues of the covariance of x_L when x_0 ~ N(0, I) at full resolution (the prior)."""
    return self._chain_spectrum(self.levels, start=1.0)

  def prior_variance(self) -> float:
    """Per-pixel prior variance under Lemma 1: ᾱ_L² ‖w‖^{2L} + σ̃_L²."""
    L = self.levels
    return self.alpha_bars[L] ** 2 * self.norm_sq**L + self.sigma_tilde_sq[L]

  @functools.lru_cache(maxsize=None)  # noqa: B019  (the schedule is immutable and hashable)
  def _chain_spectrum(self, level: int, start: float) -> np.ndarray:
    spec = np.full((self.image_size, self.image_size), start)
    for l in range(1, level + 1):
      spec = (
        self.alphas[l] ** 2 * ops.propagate_spectrum(spec, self.kernel_array, self.scale)
        + self.sigmas[l] ** 2
      )
    return spec

  def _check_level(self, level, allow_zero=False):
    lo = 0 if allow_zero else 1
    if not isinstance(level, (int, np.integer)) or not lo <= level <= self.levels:
      raise ValueError(f"level={level!r} must be an int in [{lo}, {self.levels}].")

  def _use_exact(self, exact):
    exact = self.exact if exact is None else exact
    if not exact and not self.lemma1:
      raise ValueError(
        "The authors' scalar-Σ posterior (exact=False) is defined only for kernels "
        f"of support ≤ scale={self.scale} (Lemma 1); this kernel is "
        f"{self.kernel_array.shape[0]}×{self.kernel_array.shape[1]}."
      )
    return exact


# ---- operators bound to a schedule ---------------------------------------------------------------


def H(sched: Schedule, x, power: int = 1):
  """H^power x with the schedule's kernel and scale."""
  return ops.H_pow(x, sched.kernel_array, sched.scale, power)


def HT(sched: Schedule, y, power: int = 1):
  """(Hᵀ)^power y with the schedule's kernel and scale."""
  return ops.HT_pow(y, sched.kernel_array, sched.scale, power)


def _cov_sqrt_apply(sched, u, level):
  """Applies the square root of the level's marginal covariance (exact in both regimes)."""
  if sched.lemma1:
    return math.sqrt(sched.sigma_tilde_sq[level]) * u
  return ops.apply_circulant(u, np.sqrt(sched.marginal_spectrum(level)))


def _cov_apply(sched, u, level):
  if sched.lemma1:
    return sched.sigma_tilde_sq[level] * u
  return ops.apply_circulant(u, sched.marginal_spectrum(level))


def _cov_solve(sched, u, level):
  if sched.lemma1:
    return u / sched.sigma_tilde_sq[level]
  return ops.apply_circulant(u, 1.0 / sched.marginal_spectrum(level))


# ---- forward process -----------------------------------------------------------------------------


def q_mean(sched: Schedule, x0, level: int):
  """E[x_l | x_0] = ᾱ_l H^l x_0."""
  sched._check_level(level, allow_zero=True)
  return sched.alpha_bars[level] * H(sched, x0, level)


def q_sample(sched: Schedule, x0, level: int, key, noise=None, exact: bool | None = None):
  """Draws x_l ~ q(x_l | x_0) = N(ᾱ_l H^l x_0, Σ̃_l).

  `exact` is accepted like every process function's: the authors' scalar form is defined only for
  Lemma-1 kernels, whose marginal is exactly σ̃_l² I, so both forms draw the same x_l (and
  exact=False is refused for other kernels, as elsewhere).

  Args:
    sched: the schedule.
    x0: (B, N, N, C) data in [-1, 1].
    level: 1..L.
    key: PRNG key (ignored when `noise` is given).
    noise: optional standard normal (B, N_l, N_l, C) to use instead of drawing.

  Returns:
    (B, N_l, N_l, C).
  """
  sched._check_level(level)
  sched._use_exact(exact)
  return q_perturb(sched, q_mean(sched, x0, level), level, key, noise)


def q_perturb(sched: Schedule, mean, level: int, key, noise=None):
  """mean + a draw of the level-l marginal noise (covariance σ̃_l² I, or circulant).

  Starting a chain from a known H^l x_0 (super-resolution) uses this with mean = ᾱ_l H^l x_0.
  """
  sched._check_level(level)
  if noise is None:
    noise = jax.random.normal(key, mean.shape, mean.dtype)
  return mean + _cov_sqrt_apply(sched, noise, level)


def prior_from_noise(sched: Schedule, noise):
  """Maps standard normal noise at side N_L to a draw of the prior x_L."""
  if sched.lemma1:
    return math.sqrt(sched.prior_variance()) * noise
  return ops.apply_circulant(noise, np.sqrt(sched.prior_spectrum()))


def prior_sample(
  sched: Schedule, key, batch: int, channels: int, dtype=jnp.float32, exact: bool | None = None
):
  """Draws x_L from the prior: the law of x_L when x_0 ~ N(0, I) (std ≈ 0.300 with the defaults).

  `exact` as in `q_sample`: for the kernels where the scalar form exists the prior is scalar too.

  Returns:
    (batch, N_L, N_L, channels).
  """
  sched._use_exact(exact)
  n = sched.side(sched.levels)
  return prior_from_noise(sched, jax.random.normal(key, (batch, n, n, channels), dtype))


# ---- posterior q(x_{l-1} | x_l, x_0) -------------------------------------------------------------


def _scalar_coefficients(sched, level):
  """a = α_l²/σ_l², b = 1/σ̃²_{l-1}, v = σ̃²_{l-1}."""
  v = sched.sigma_tilde_sq[level - 1]
  a = sched.alphas[level] ** 2 / sched.sigmas[level] ** 2
  return a, 1.0 / v, v


def posterior_mean(sched: Schedule, x_l, x_hat, level: int, exact: bool | None = None):
  """μ_l(x_l, x_0) with x_hat the (prediction of) H^{l-1} x_0.

  Args:
    sched: the schedule.
    x_l: (B, N_l, N_l, C).
    x_hat: (B, N_{l-1}, N_{l-1}, C), the target or the network's output.
    level: 1..L. At level 1 the posterior is a point mass at x_hat.
    exact: None → `sched.exact`; False → the authors' scalar-Σ form.

  Returns:
    (B, N_{l-1}, N_{l-1}, C).
  """
  sched._check_level(level)
  exact = sched._use_exact(exact)
  if level == 1:
    return x_hat
  alpha = sched.alphas[level]
  m = sched.alpha_bars[level - 1] * x_hat
  if not exact:
    a, b, _ = _scalar_coefficients(sched, level)
    return (alpha / sched.sigmas[level] ** 2 * HT(sched, x_l) + b * m) / (a + b)
  # Kalman form of Woodbury: μ = m + α C Hᵀ (α² H C Hᵀ + σ² I)⁻¹ (x_l − α H m); the bracket is the
  # level-l marginal covariance, scalar under Lemma 1 and circulant otherwise.
  resid = _cov_solve(sched, x_l - alpha * H(sched, m), level)
  return m + alpha * _cov_apply(sched, HT(sched, resid), level - 1)


def posterior_cov_apply(sched: Schedule, u, level: int, exact: bool | None = None):
  """Σ_l u, exactly: Σ_l = C − α² C Hᵀ (α² H C Hᵀ + σ² I)⁻¹ H C with C the level-(l−1) marginal
  covariance (v I under Lemma 1, giving v I − (α² v² / σ̃_l²) HᵀH)."""
  sched._check_level(level)
  exact = sched._use_exact(exact)
  if level == 1:
    return jnp.zeros_like(u)
  if not exact:
    a, b, _ = _scalar_coefficients(sched, level)
    return u / (a + b)
  alpha = sched.alphas[level]
  cu = _cov_apply(sched, u, level - 1)
  corr = _cov_apply(sched, HT(sched, _cov_solve(sched, H(sched, cu), level)), level - 1)
  return cu - alpha**2 * corr


def posterior_noise(sched: Schedule, key, level: int, batch: int, channels: int, dtype=jnp.float32):
  """The standard normal maps that determine one posterior draw at `level`.

  One map at side N_{l-1} under Lemma 1; for wider kernels a pair (ξ at N_{l-1}, η at N_l) used by
  Matheron's rule. None at level 1 (the last step is deterministic).
  """
  sched._check_level(level)
  if level == 1:
    return None
  fine, coarse = sched.side(level - 1), sched.side(level)
  if sched.lemma1:
    return jax.random.normal(key, (batch, fine, fine, channels), dtype)
  k1, k2 = jax.random.split(key)
  return (
    jax.random.normal(k1, (batch, fine, fine, channels), dtype),
    jax.random.normal(k2, (batch, coarse, coarse, channels), dtype),
  )


def posterior_from_noise(sched: Schedule, x_l, x_hat, level: int, noise, exact: bool | None = None):
  """A posterior draw x_{l-1} ~ N(μ_l, Σ_l) given its standard normal maps (`posterior_noise`)."""
  sched._check_level(level)
  exact = sched._use_exact(exact)
  if level == 1:
    return x_hat
  mu = posterior_mean(sched, x_l, x_hat, level, exact)
  if not exact:
    a, b, _ = _scalar_coefficients(sched, level)
    return mu + noise / math.sqrt(a + b)
  alpha, sigma = sched.alphas[level], sched.sigmas[level]
  if sched.lemma1:
    # Σ^{1/2} = √v (I − c HᵀH), exact because HᵀH/‖w‖² is an orthogonal projection.
    a, b, v = _scalar_coefficients(sched, level)
    c = (1.0 - math.sqrt(b / (b + a * sched.norm_sq))) / sched.norm_sq
    return mu + math.sqrt(v) * (noise - c * HT(sched, H(sched, noise)))
  # Matheron's rule: perturb a prior draw so that it is conditioned on x_l.
  xi, eta = noise
  m = sched.alpha_bars[level - 1] * x_hat
  x_prior = m + _cov_sqrt_apply(sched, xi, level - 1)
  y_prior = alpha * H(sched, x_prior) + sigma * eta
  resid = _cov_solve(sched, x_l - y_prior, level)
  return x_prior + alpha * _cov_apply(sched, HT(sched, resid), level - 1)


def posterior_sample(sched: Schedule, x_l, x_hat, level: int, key, exact: bool | None = None):
  """Draws x_{l-1} ~ q(x_{l-1} | x_l, x_0) with H^{l-1} x_0 replaced by x_hat (exact by default)."""
  b, _, _, ch = x_l.shape
  noise = posterior_noise(sched, key, level, b, ch, x_l.dtype)
  return posterior_from_noise(sched, x_l, x_hat, level, noise, exact)
