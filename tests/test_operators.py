"""H, Hᵀ and the Fourier machinery against dense matrices and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import dense
from udpm_jax import operators as ops


def _rand(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape)


KERNELS = [
  ("box-norm", lambda s: ops.make_kernel("box", s, "norm")),
  ("box-sum", lambda s: ops.make_kernel("box", s, "sum")),
  ("user-small", lambda s: ops.normalize_kernel(_rand((s - 1, s), 7) ** 2, "norm")),
  ("gaussian", lambda s: ops.make_kernel("gaussian", s, "norm", size=2 * s + 1, std=1.0)),
  ("user-wide-rect", lambda s: ops.normalize_kernel(_rand((s + 2, s), 3), "sum")),
]


@pytest.mark.parametrize("scale,size", [(2, 8), (3, 9), (4, 16)])
@pytest.mark.parametrize("name,make", KERNELS)
@pytest.mark.parametrize("channels", [1, 3])
def test_adjoint_and_dense_matrix(scale, size, name, make, channels):
  kernel = make(scale)
  with jax.enable_x64(True):
    x = _rand((2, size, size, channels), 0)
    y = _rand((2, size // scale, size // scale, channels), 1)
    hx = np.asarray(ops.H(x, kernel, scale))
    hty = np.asarray(ops.HT(y, kernel, scale))
  assert np.vdot(hx, y) == pytest.approx(np.vdot(x, hty), rel=1e-12)
  mat = dense.h_matrix(kernel, scale, size)
  for c in range(channels):
    ref = (mat @ x[0, :, :, c].ravel()).reshape(size // scale, size // scale)
    np.testing.assert_allclose(hx[0, :, :, c], ref, rtol=1e-12, atol=1e-12)
    ref_t = (mat.T @ y[1, :, :, c].ravel()).reshape(size, size)
    np.testing.assert_allclose(hty[1, :, :, c], ref_t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_box_norm_is_scaled_average_pool_and_adjoint_is_replication(scale):
  x = _rand((3, 4 * scale, 4 * scale, 2), 2).astype(np.float32)
  k = ops.make_kernel("box", scale, "norm")
  pooled = x.reshape(3, 4, scale, 4, scale, 2).mean(axis=(2, 4))
  np.testing.assert_allclose(ops.H(x, k, scale), scale * pooled, rtol=1e-5, atol=1e-6)
  y = _rand((3, 4, 4, 2), 3).astype(np.float32)
  nn_up = np.repeat(np.repeat(y, scale, axis=1), scale, axis=2)
  np.testing.assert_allclose(ops.HT(y, k, scale), nn_up / scale, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale,norm", [(2, "norm"), (2, "sum"), (3, "norm"), (4, "sum")])
def test_powers_are_scaled_average_pools(scale, norm):
  """H^k = (w0 s²)^k avgpool_{s^k} for the box kernel."""
  k = ops.make_kernel("box", scale, norm)
  w0 = k[0, 0]
  side = scale**3
  x = _rand((1, side, side, 1), 4)
  with jax.enable_x64(True):
    for power in range(4):
      blk = scale**power
      pooled = x.reshape(1, side // blk, blk, side // blk, blk, 1).mean(axis=(2, 4))
      np.testing.assert_allclose(
        ops.H_pow(x, k, scale, power), (w0 * scale**2) ** power * pooled, rtol=1e-12
      )
      assert ops.HT_pow(ops.H_pow(x, k, scale, power), k, scale, power).shape == x.shape


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("kernel_name", ["box-norm", "box-sum", "user-small"])
def test_lemma1_h_ht_is_scaled_identity(scale, kernel_name):
  kernel = dict(KERNELS)[kernel_name](scale)
  assert ops.satisfies_lemma1(kernel, scale)
  mat = dense.h_matrix(kernel, scale, 3 * scale)
  np.testing.assert_allclose(mat @ mat.T, ops.kernel_norm_sq(kernel) * np.eye(9), atol=1e-12)


def test_wide_kernel_breaks_lemma1_and_spectrum_matches_dense():
  scale, size = 2, 8
  kernel = ops.make_kernel("gaussian", scale, "norm", size=5, std=1.0)
  assert not ops.satisfies_lemma1(kernel, scale)
  mat = dense.h_matrix(kernel, scale, size)
  hht = mat @ mat.T
  assert np.abs(hht - ops.kernel_norm_sq(kernel) * np.eye(16)).max() > 1e-2
  # H C Hᵀ for a circulant C is circulant on the coarse grid with the aliasing-sum eigenvalues.
  c_spec = 0.5 + np.random.default_rng(0).uniform(size=(size, size))
  c_spec = 0.5 * (c_spec + np.roll(c_spec[::-1, ::-1], 1, axis=(0, 1)))  # real symmetric operator
  eye = np.eye(size * size).reshape(size * size, size, size)
  c_mat = np.real(np.fft.ifft2(np.fft.fft2(eye) * c_spec)).reshape(size * size, -1).T
  coarse = mat @ c_mat @ mat.T
  d = ops.propagate_spectrum(c_spec, kernel, scale)
  coarse_eye = np.eye(16).reshape(16, 4, 4)
  ref = np.real(np.fft.ifft2(np.fft.fft2(coarse_eye) * d)).reshape(16, -1).T
  np.testing.assert_allclose(coarse, ref, atol=1e-12)


def test_coarsest_latents_of_side_one_and_two():
  """The release breaks when a latent side is < 2s; every side down to 1 must work here."""
  for kernel in (ops.make_kernel("box", 2), ops.make_kernel("gaussian", 2, size=5)):
    x = jnp.asarray(_rand((2, 2, 2, 3), 5), jnp.float32)
    y = ops.H(x, kernel, 2)
    assert y.shape == (2, 1, 1, 3)
    assert ops.HT(y, kernel, 2).shape == x.shape
    mat = dense.h_matrix(kernel, 2, 2)
    np.testing.assert_allclose(y[0, 0, 0, 0], mat @ np.asarray(x[0, :, :, 0]).ravel(), rtol=1e-5)


def test_jit_and_bad_input_errors():
  k = ops.make_kernel("box", 2)
  x = jnp.ones((1, 8, 8, 3))
  np.testing.assert_allclose(jax.jit(lambda v: ops.H(v, k, 2))(x), ops.H(x, k, 2))
  with pytest.raises(ValueError, match="not divisible by scale=2"):
    ops.H(jnp.ones((1, 7, 7, 1)), k, 2)
  with pytest.raises(ValueError, match="NHWC"):
    ops.H(jnp.ones((7, 7)), k, 2)
  with pytest.raises(ValueError, match="scale must be an integer >= 2"):
    ops.make_kernel("box", 1)
  with pytest.raises(ValueError, match="Unknown kernel 'bicubic'"):
    ops.make_kernel("bicubic", 2)
  with pytest.raises(ValueError, match="Unknown kernel normalisation 'l1'"):
    ops.make_kernel("box", 2, "l1")
  with pytest.raises(ValueError, match="zero"):
    ops.normalize_kernel(np.zeros((2, 2)))
