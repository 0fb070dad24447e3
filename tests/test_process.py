"""The schedule, marginals and exact posterior against dense linear algebra and Monte Carlo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import udpm_jax
from tests import dense
from udpm_jax import operators as ops
from udpm_jax import process as P

ALPHAS, SIGMAS = (0.5, 0.2, 1e-3), (0.1, 0.2, 0.3)


def test_default_schedule_matches_spec_table():
  sched = P.Schedule.from_config(udpm_jax.configs.get_config("cifar10"))
  np.testing.assert_allclose(sched.alpha_bars, (1.0, 0.5, 0.1, 1e-4), rtol=1e-12)
  np.testing.assert_allclose(sched.sigma_tilde_sq, (0.0, 0.01, 0.0404, 0.0900000404), rtol=1e-12)
  assert [sched.t(l) for l in (1, 2, 3)] == pytest.approx([1 / 6, 1 / 2, 5 / 6])
  assert np.sqrt(sched.prior_variance()) == pytest.approx(0.300000084, rel=1e-8)
  assert [sched.side(l) for l in range(4)] == [32, 16, 8, 4]
  assert sched.lemma1 and sched.alphas[0] == 1.0 and sched.sigmas[0] == 0.0
  jax.jit(lambda x: P.q_mean(sched, x, 2), static_argnums=())(jnp.ones((1, 32, 32, 3)))
  assert hash(sched) == hash(P.Schedule.from_config(udpm_jax.configs.get_config("cifar10")))


def test_sum_kernel_carries_norm_in_marginal_variance():
  """'sum' box: ‖w‖² = 1/s², so σ̃_l² = α_l² σ̃²_{l-1}/s² + σ_l² (the release gets this wrong)."""
  k = ops.make_kernel("box", 2, "sum")
  sched = P.Schedule.create(ALPHAS, SIGMAS, k, 2, 8)
  _, covs = dense.process_matrices(ALPHAS, SIGMAS, k, 2, 8)
  for level in (1, 2, 3):
    np.testing.assert_allclose(
      covs[level], sched.sigma_tilde_sq[level] * np.eye(len(covs[level])), atol=1e-15
    )
  assert sched.sigma_tilde_sq[2] == pytest.approx(0.2**2 * 0.01 / 4 + 0.04)


CASES = [
  ("box s=2 N=8", ops.make_kernel("box", 2, "norm"), 2, 8, ALPHAS, SIGMAS),
  ("box-sum s=2 N=8", ops.make_kernel("box", 2, "sum"), 2, 8, (0.9, 0.7, 0.5), (0.3, 0.2, 0.3)),
  ("box s=4 N=16", ops.make_kernel("box", 4, "norm"), 4, 16, (0.8, 0.5), (0.2, 0.3)),
  ("box s=2 N=16 alpha~1", ops.make_kernel("box", 2, "norm"), 2, 16, (0.95, 0.9), (0.05, 0.1)),
  ("gauss5 s=2 N=8", ops.make_kernel("gaussian", 2, "norm", 5, 1.0), 2, 8, ALPHAS, SIGMAS),
  ("gauss5 s=2 N=16", ops.make_kernel("gaussian", 2, "sum", 5, 0.8), 2, 16, (0.9, 0.6), (0.2, 0.3)),
]


def _basis_apply(fn, side):
  """The dense matrix of a linear map on single-channel side×side images."""
  eye = jnp.eye(side * side, dtype=jnp.float64).reshape(side * side, side, side, 1)
  return np.asarray(fn(eye)).reshape(side * side, -1).T


@pytest.mark.parametrize("name,kernel,scale,size,alphas,sigmas", CASES, ids=[c[0] for c in CASES])
def test_posterior_and_marginals_match_dense_inverse(name, kernel, scale, size, alphas, sigmas):
  sched = P.Schedule.create(alphas, sigmas, kernel, scale, size)
  hs, covs = dense.process_matrices(alphas, sigmas, kernel, scale, size)
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, (1, size, size, 1))
  worst = 0.0
  with jax.enable_x64(True):
    for level in range(1, sched.levels + 1):
      side = sched.side(level)
      # Marginal mean ᾱ_l H^l x0 and covariance (via the exact noise map: cov = A Aᵀ).
      mean_ref = x0.ravel()
      for l in range(1, level + 1):
        mean_ref = hs[l] @ mean_ref
      mean_ref = sched.alpha_bars[level] * mean_ref
      np.testing.assert_allclose(
        np.ravel(P.q_mean(sched, x0, level)), mean_ref, rtol=1e-10, atol=1e-14
      )
      a_mat = _basis_apply(
        lambda e: P.q_sample(
          sched, 0 * e[:, :1, :1].repeat(size, 1).repeat(size, 2), level, None, noise=e
        ),
        side,
      )
      np.testing.assert_allclose(a_mat @ a_mat.T, covs[level], rtol=1e-9, atol=1e-14)
      if level == 1:
        continue
      # Posterior mean/covariance against inverses of the precision.
      x_hat = x0.ravel()
      for l in range(1, level):
        x_hat = hs[l] @ x_hat
      m = sched.alpha_bars[level - 1] * x_hat
      x_l = rng.standard_normal(side * side)
      mean_ref, cov_ref = dense.posterior(hs, covs, alphas, sigmas, level, x_l, m)
      fine = sched.side(level - 1)
      mu = np.ravel(
        P.posterior_mean(
          sched, x_l.reshape(1, side, side, 1), x_hat.reshape(1, fine, fine, 1), level
        )
      )
      cov = _basis_apply(lambda u: P.posterior_cov_apply(sched, u, level), fine)
      err_mu = np.abs(mu - mean_ref).max() / np.abs(mean_ref).max()
      err_cov = np.abs(cov - cov_ref).max() / np.abs(cov_ref).max()
      worst = max(worst, err_mu, err_cov)
      assert err_mu <= 1e-9 and err_cov <= 1e-9, (level, err_mu, err_cov)
      # The sample map x = μ + A·noise is exact: A Aᵀ = Σ and zero noise gives μ.
      x_l4 = x_l.reshape(1, side, side, 1)
      xh4 = x_hat.reshape(1, fine, fine, 1)
      mats = _noise_maps(sched, x_l4, xh4, level, fine, side)
      sample_cov = sum(a @ a.T for a in mats)
      np.testing.assert_allclose(sample_cov, cov_ref, rtol=1e-8, atol=1e-12 * np.abs(cov_ref).max())
  print(f"{name}: max relative error vs dense inverse {worst:.2e}")


def _noise_maps(sched, x_l, x_hat, level, fine, coarse):
  """Linear maps from each standard normal noise input to the posterior sample (mean removed)."""
  zero_fine = jnp.zeros((1, fine, fine, 1))
  mu = P.posterior_from_noise(
    sched, x_l, x_hat, level, zero_fine if sched.lemma1 else (zero_fine, jnp.zeros_like(x_l))
  )
  np.testing.assert_allclose(mu, P.posterior_mean(sched, x_l, x_hat, level), rtol=1e-10, atol=1e-12)
  n_f, n_c = fine * fine, coarse * coarse

  def batched(noise):
    b = jax.tree_util.tree_leaves(noise)[0].shape[0]
    return (
      P.posterior_from_noise(sched, jnp.repeat(x_l, b, 0), jnp.repeat(x_hat, b, 0), level, noise)
      - mu
    )

  eye_f = jnp.eye(n_f).reshape(n_f, fine, fine, 1)
  if sched.lemma1:
    return [_basis_apply(batched, fine)]
  eye_c = jnp.eye(n_c).reshape(n_c, coarse, coarse, 1)
  a = np.asarray(batched((eye_f, jnp.zeros((n_f, coarse, coarse, 1))))).reshape(n_f, -1).T
  b = np.asarray(batched((jnp.zeros((n_c, fine, fine, 1)), eye_c))).reshape(n_c, -1).T
  return [a, b]


def test_monte_carlo_marginal_and_posterior_statistics():
  """Empirical moments of q(x_l|x0) and of posterior samples match the formulas."""
  sched = P.Schedule.create(ALPHAS, SIGMAS, ops.make_kernel("box", 2), 2, 8)
  rng = np.random.default_rng(1)
  x0 = jnp.asarray(rng.uniform(-1, 1, (1, 8, 8, 1)), jnp.float32)
  n = 20000
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  x2 = P.q_sample(sched, jnp.repeat(x0, n, 0), 2, keys[0])
  np.testing.assert_allclose(x2.mean(0), P.q_mean(sched, x0, 2)[0], atol=4 * 0.201 / np.sqrt(n))
  assert float(x2.var(0).mean()) == pytest.approx(sched.sigma_tilde_sq[2], rel=0.03)
  # Posterior at level 2 given one x_2: empirical covariance vs Σ_2 applied to the basis.
  x_l, x_hat = x2[:1], P.H(sched, x0)
  samples = P.posterior_sample(sched, jnp.repeat(x_l, n, 0), jnp.repeat(x_hat, n, 0), 2, keys[1])
  flat = np.asarray(samples, np.float64).reshape(n, -1)
  emp_cov = np.cov(flat, rowvar=False)
  eye = jnp.eye(16).reshape(16, 4, 4, 1)
  cov = np.asarray(P.posterior_cov_apply(sched, eye, 2)).reshape(16, 16)
  assert np.abs(emp_cov - cov).max() < 6 * cov.max() * np.sqrt(2 / n)
  mu = np.ravel(P.posterior_mean(sched, x_l, x_hat, 2))
  assert np.abs(flat.mean(0) - mu).max() < 5 * np.sqrt(cov.max() / n)
  # The prior has the marginal law of x_L under x_0 ~ N(0, I): std ≈ 0.300.
  prior = P.prior_sample(sched, jax.random.PRNGKey(3), 4096, 1)
  assert prior.shape == (4096, 1, 1, 1)
  assert float(prior.std()) == pytest.approx(np.sqrt(sched.prior_variance()), rel=0.03)


def test_scalar_posterior_differs_exactly_as_spec_says():
  """The authors' scalar Σ: exact on block-constant images; detail of mean shrunk by b/(a+b),
  detail noise std scaled by σ_l/σ̃_l."""
  sched = P.Schedule.create((0.9, 0.8), (0.2, 0.3), ops.make_kernel("box", 2), 2, 8)
  level = 2
  a = sched.alphas[level] ** 2 / sched.sigmas[level] ** 2
  b = 1.0 / sched.sigma_tilde_sq[level - 1]
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    x_hat = jnp.asarray(rng.standard_normal((1, 4, 4, 1)))
    x_l = jnp.asarray(rng.standard_normal((1, 2, 2, 1)))
    proj = lambda u: P.HT(sched, P.H(sched, u)) / sched.norm_sq
    exact = P.posterior_mean(sched, x_l, x_hat, level)
    approx = P.posterior_mean(sched, x_l, x_hat, level, exact=False)
    np.testing.assert_allclose(proj(approx), proj(exact), rtol=1e-12, atol=1e-12)
    detail_exact = exact - proj(exact)
    np.testing.assert_allclose(
      approx - proj(approx), b / (a + b) * detail_exact, rtol=1e-12, atol=1e-12
    )
    u = jnp.asarray(rng.standard_normal((1, 4, 4, 1)))
    du = u - proj(u)
    ratio_cov = P.posterior_cov_apply(sched, du, level, exact=False) / P.posterior_cov_apply(
      sched, du, level
    )
    sig_t = np.sqrt(sched.sigma_tilde_sq[level])
    np.testing.assert_allclose(np.sqrt(ratio_cov), sched.sigmas[level] / sig_t, rtol=1e-10)
    np.testing.assert_allclose(
      P.posterior_cov_apply(sched, proj(u), level, exact=False),
      P.posterior_cov_apply(sched, proj(u), level),
      rtol=1e-12,
    )
  assert abs(b / (a + b) - 1) > 0.1  # with α near 1 the release's error is large
  wide = P.Schedule.create((0.5,), (0.1,), ops.make_kernel("gaussian", 2, size=5), 2, 8)
  with pytest.raises(ValueError, match="Lemma 1"):
    P.posterior_mean(wide, jnp.ones((1, 4, 4, 1)), jnp.ones((1, 8, 8, 1)), 1, exact=False)
  # The marginal and the prior take exact=False too (docs/api.md): for Lemma-1 kernels they are scalar
  # in both forms, so the draws are equal; other kernels refuse the scalar form.
  key, x0 = jax.random.PRNGKey(3), jnp.asarray(rng.standard_normal((1, 8, 8, 1)), jnp.float32)
  np.testing.assert_array_equal(
    P.q_sample(sched, x0, 2, key, exact=False), P.q_sample(sched, x0, 2, key)
  )
  np.testing.assert_array_equal(
    P.prior_sample(sched, key, 2, 1, exact=False), P.prior_sample(sched, key, 2, 1)
  )
  with pytest.raises(ValueError, match="Lemma 1"):
    P.q_sample(wide, x0, 1, key, exact=False)
  with pytest.raises(ValueError, match="Lemma 1"):
    P.prior_sample(wide, key, 1, 1, exact=False)


def test_level_one_is_a_point_mass_and_bad_levels_raise():
  sched = P.Schedule.create(ALPHAS, SIGMAS, None, 2, 8)
  x_hat = jnp.ones((2, 8, 8, 3))
  out = P.posterior_sample(sched, jnp.zeros((2, 4, 4, 3)), x_hat, 1, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(out, x_hat)
  assert P.posterior_noise(sched, jax.random.PRNGKey(0), 1, 2, 3) is None
  with pytest.raises(ValueError, match=r"level=4 must be an int in \[1, 3\]"):
    P.q_sample(sched, x_hat, 4, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="level=0"):
    sched.t(0)


def test_same_key_same_draw_different_key_different_draw():
  sched = P.Schedule.create(ALPHAS, SIGMAS, None, 2, 8)
  x0 = jnp.zeros((2, 8, 8, 3))
  a = P.q_sample(sched, x0, 2, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(a, P.q_sample(sched, x0, 2, jax.random.PRNGKey(0)))
  assert not np.allclose(a, P.q_sample(sched, x0, 2, jax.random.PRNGKey(1)))


BAD = [
  ("data.image_size", 30, "not divisible by scale\\*\\*levels = 2\\*\\*3 = 8"),
  ("process.alphas", (0.5, 0.2), "process.alphas has 2 entries"),
  ("process.sigmas", (0.1, 0.0, 0.3), "sigmas\\[1\\] \\(level 2\\) = 0.0"),
  ("process.sigmas", (0.1, -0.2, 0.3), "each sigma must be > 0"),
  ("process.alphas", (0.5, 1.2, 0.1), "alphas\\[1\\] \\(level 2\\) = 1.2; each alpha must lie in"),
  ("process.alphas", (0.0, 0.2, 0.1), "alphas\\[0\\] \\(level 1\\) = 0.0"),
  (
    "process.kernel",
    "bicubic",
    "process.kernel='bicubic' is unknown; valid kernels: box, gaussian",
  ),
  ("process.kernel_norm", "l1", "kernel_norm='l1' is unknown"),
  ("loss.adv", (0.2, 0.5), "loss.adv has 2 entries"),
  ("data.source", "ftp", "data.source='ftp' is unknown"),
  ("process.scale", 1, "process.scale must be an integer >= 2"),
  ("training.ema_decay", 1.0, "ema_decay=1.0"),
  ("optim.g_lr", -1e-4, "optim.g_lr=-0.0001; it must be finite and > 0"),
  ("optim.d_lr", float("nan"), "optim.d_lr=nan; it must be finite"),
  ("optim.b1", 1.5, "optim.b1=1.5; it must be in \\[0, 1\\)"),
  ("optim.warmup_steps", -5, "optim.warmup_steps=-5"),
  ("training.log_every", 0, "training.log_every=0; it must be an integer >= 1"),
  ("training.num_steps", -3, "training.num_steps=-3"),
  ("training.keep_checkpoints", 0, "training.keep_checkpoints=0"),
  ("training.eval_every", -1, "training.eval_every=-1; it must be an integer >= 0"),
  (
    "training.steps_per_dispatch",
    3,
    "ckpt_every=5000 must be a multiple of .*steps_per_dispatch=3",
  ),
  ("training.level_dispatch", "device", "level_dispatch='device'; it must be one of host, switch"),
  ("loss.d_noise_decay_every", 0, "loss.d_noise_decay_every=0"),
  ("data.resize", "bogus", "data.resize='bogus'; it must be one of none, pad"),
  ("model.dropout", 1.0, "model.dropout=1.0; it must be a rate in"),
  ("eval.batch_size", 0, "eval.batch_size=0"),
  ("eval.num_samples", 1, "eval.num_samples=1"),
  (
    "data.image_size",
    16,
    "level-3 latent is 2×2, which the U-Net of 3 resolutions .* e.g. \\[32, 64",
  ),
]


@pytest.mark.parametrize("field,value,message", BAD)
def test_config_validation_names_the_bad_value(field, value, message):
  config = udpm_jax.configs.get_config("cifar10")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    udpm_jax.configs.validate(config)


def test_all_named_configs_validate_and_have_paper_values():
  for name in udpm_jax.configs.NAMES:
    udpm_jax.configs.get_config(name)
  with pytest.raises(ValueError, match="Unknown config name 'imagenet'"):
    udpm_jax.configs.get_config("imagenet")
  c = udpm_jax.configs.get_config("ffhq64")
  assert tuple(c.loss.r1_gamma) == (0.1, 0.4, 0.8) and c.discriminator.dropout == 0.2
  a = udpm_jax.configs.get_config("afhqv2_64")
  assert a.model.dropout == 0.1 and a.discriminator.dropout == 0.3
  cif = udpm_jax.configs.get_config("cifar10")
  assert tuple(cif.loss.r1_gamma) == (0.025, 0.1, 0.4) and cif.discriminator.dropout == 0.4
  assert tuple(cif.loss.adv) == (0.2, 0.5, 1.0) and tuple(cif.loss.lpips) == (4.0, 4.0, 0.0)
  assert cif.training.ema_decay == 0.9999 and cif.optim.warmup_steps == 5000
