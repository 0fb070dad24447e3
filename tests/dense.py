"""Dense-matrix references for H and the UDPM process, built from the definitions with numpy loops.

Independent of udpm_jax.operators: the matrix is assembled tap by tap from the index formula in
the operators docstring, so a wrong convolution, offset, stride or wrap in the JAX code shows up.
Single channel, images flattened row-major.
"""

import numpy as np


def h_matrix(kernel, scale, size):
  """The (n², N²) matrix of H on N×N single-channel images, n = N/s."""
  kernel = np.asarray(kernel, dtype=np.float64)
  kh, kw = kernel.shape
  ch, cw = max(kh - scale, 0) // 2, max(kw - scale, 0) // 2
  n = size // scale
  mat = np.zeros((n * n, size * size))
  for i in range(n):
    for j in range(n):
      for a in range(kh):
        for b in range(kw):
          r, c = (scale * i + a - ch) % size, (scale * j + b - cw) % size
          mat[i * n + j, r * size + c] += kernel[a, b]
  return mat


def process_matrices(alphas, sigmas, kernel, scale, size):
  """Per level l ≥ 1: (H_l matrix from level l−1 to l, marginal covariance C_l); C_0 = 0."""
  hs, covs = [None], [np.zeros((size * size, size * size))]
  side = size
  for alpha, sigma in zip(alphas, sigmas):
    h = h_matrix(kernel, scale, side)
    side //= scale
    hs.append(h)
    covs.append(alpha**2 * h @ covs[-1] @ h.T + sigma**2 * np.eye(side * side))
  return hs, covs


def posterior(hs, covs, alphas, sigmas, level, x_l, m):
  """Exact posterior (mean, covariance) of x_{l-1} given x_l and prior mean m, by matrix inverses."""
  alpha, sigma = alphas[level - 1], sigmas[level - 1]
  h, prior_cov = hs[level], covs[level - 1]
  precision = np.linalg.inv(prior_cov) + alpha**2 / sigma**2 * h.T @ h
  cov = np.linalg.inv(precision)
  mean = cov @ (np.linalg.solve(prior_cov, m) + alpha / sigma**2 * h.T @ x_l)
  return mean, cov
