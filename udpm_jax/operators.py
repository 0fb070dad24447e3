"""The degradation operator H = S_s W and its exact adjoint, as pure functions on NHWC arrays.

Convention. For a K×K kernel k and stride s,

    (H x)[i, j] = Σ_{a,b} k[a, b] · x[(s·i + a − c) mod N, (s·j + b − c) mod N],  c = max(K − s, 0) // 2.

For K ≤ s (Lemma 1) c = 0 and no index wraps: each output pixel reads one aligned s×s block whose
top-left pixel is the kept phase, so the box kernel gives `H x = w0 · (block sum)`. Wider kernels
(Gaussian, bicubic, …) use periodic boundaries; they break Lemma 1 (H Hᵀ ≠ ‖w‖² I), and the process
module then works with circulant covariances in the Fourier domain, using the spectra defined here.

H is a depthwise strided `lax.conv_general_dilated`; Hᵀ is `jax.linear_transpose` of exactly that
function, i.e. the transposed convolution, so <Hx, y> = <x, Hᵀy> holds to rounding by construction.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

KERNEL_NAMES = ("box", "gaussian")
NORMS = ("norm", "sum")


def make_kernel(
  name: str = "box", scale: int = 2, norm: str = "norm", size: int | None = None, std: float = 1.0
) -> np.ndarray:
  """Builds a normalised 2-D blur kernel.

  Args:
    name: 'box' (s×s, the paper's kernel) or 'gaussian' (size×size, periodic boundaries).
    scale: the stride s.
    norm: 'norm' → unit ℓ2 norm (box taps 1/s); 'sum' → unit sum (box taps 1/s²).
    size: side of the gaussian kernel (default 2s+1); ignored for 'box'.
    std: standard deviation of the gaussian in pixels.

  Returns:
    float64 array of shape (K, K).
  """
  _check_scale(scale)
  if name == "box":
    kernel = np.ones((scale, scale))
  elif name == "gaussian":
    size = 2 * scale + 1 if size is None else size
    if size < 1 or std <= 0:
      raise ValueError(f"gaussian kernel needs size >= 1 and std > 0, got size={size}, std={std}.")
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (r / std) ** 2)
    kernel = np.outer(g, g)
  else:
    raise ValueError(
      f"Unknown kernel {name!r}; valid names: {', '.join(KERNEL_NAMES)}, "
      "or pass your own array to normalize_kernel()."
    )
  return normalize_kernel(kernel, norm)


def normalize_kernel(kernel, norm: str = "norm") -> np.ndarray:
  """Scales a user kernel to unit ℓ2 norm ('norm') or unit sum ('sum')."""
  kernel = np.asarray(kernel, dtype=np.float64)
  if kernel.ndim != 2 or min(kernel.shape) < 1:
    raise ValueError(f"A kernel must be a non-empty 2-D array, got shape {kernel.shape}.")
  if not np.all(np.isfinite(kernel)):
    raise ValueError("The kernel has non-finite entries.")
  if norm == "norm":
    z = np.sqrt(np.sum(kernel**2))
  elif norm == "sum":
    z = np.sum(kernel)
  else:
    raise ValueError(f"Unknown kernel normalisation {norm!r}; valid: {', '.join(NORMS)}.")
  if z == 0:
    raise ValueError(
      f"Cannot normalise a kernel whose {'ℓ2 norm' if norm == 'norm' else 'sum'} is zero."
    )
  return kernel / z


def kernel_norm_sq(kernel) -> float:
  """‖w‖², the factor in H Hᵀ = ‖w‖² I under Lemma 1."""
  return float(np.sum(np.asarray(kernel, dtype=np.float64) ** 2))


def satisfies_lemma1(kernel, scale: int) -> bool:
  """Lemma 1 holds when the kernel's support fits in one stride: K ≤ s along both axes."""
  kernel = np.asarray(kernel)
  return kernel.shape[0] <= scale and kernel.shape[1] <= scale


def _offsets(kernel_shape, scale):
  return tuple(max(k - scale, 0) // 2 for k in kernel_shape)


def H(x: jax.Array, kernel, scale: int) -> jax.Array:
  """Blur with `kernel`, then keep every `scale`-th pixel (phase 0).

  Args:
    x: (B, N, N, C) images; N divisible by `scale`.
    kernel: (K, K) array (see `make_kernel`).
    scale: stride s ≥ 2.

  Returns:
    (B, N/s, N/s, C).
  """
  _check_scale(scale)
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"H expects NHWC images (4 dims), got shape {x.shape}.")
  n_h, n_w = x.shape[1:3]
  if n_h % scale or n_w % scale:
    raise ValueError(f"Image sides {n_h}×{n_w} are not divisible by scale={scale}.")
  kernel = np.asarray(kernel)
  kh, kw = kernel.shape
  ch = x.shape[-1]
  if kh > scale or kw > scale:
    # Periodic boundaries: wrap-pad so a VALID stride-s conv yields exactly N/s outputs.
    ch_, cw_ = _offsets(kernel.shape, scale)
    x = _wrap_pad(x, (ch_, max(kh - scale, 0) - ch_), (cw_, max(kw - scale, 0) - cw_))
  w = jnp.asarray(np.broadcast_to(kernel[:, :, None, None], (kh, kw, 1, ch)), dtype=x.dtype)
  out = jax.lax.conv_general_dilated(
    x,
    w,
    window_strides=(scale, scale),
    padding="VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=ch,
    precision=jax.lax.Precision.HIGHEST,
  )
  # A kernel narrower than s leaves trailing rows per block unread; VALID already yields N/s then.
  return out[:, : n_h // scale, : n_w // scale]


def _wrap_pad(x, pad_h, pad_w):
  """Periodic padding that also works when a pad exceeds the side (tiny coarse latents)."""
  n_h, n_w = x.shape[1:3]
  rows = np.arange(-pad_h[0], n_h + pad_h[1]) % n_h
  cols = np.arange(-pad_w[0], n_w + pad_w[1]) % n_w
  return x[:, rows][:, :, cols]


def HT(y: jax.Array, kernel, scale: int) -> jax.Array:
  """The exact adjoint of `H`: (B, n, n, C) → (B, n·s, n·s, C).

  For the box kernel this is `w0 ·` nearest-neighbour upsampling.
  """
  y = jnp.asarray(y)
  if y.ndim != 4:
    raise ValueError(f"HT expects NHWC images (4 dims), got shape {y.shape}.")
  b, n_h, n_w, ch = y.shape
  primal = jax.ShapeDtypeStruct((b, n_h * scale, n_w * scale, ch), y.dtype)
  (x,) = jax.linear_transpose(functools.partial(H, kernel=kernel, scale=scale), primal)(y)
  return x


def H_pow(x: jax.Array, kernel, scale: int, power: int) -> jax.Array:
  """H applied `power` times (H⁰ = identity): side N → N / s^power."""
  for _ in range(power):
    x = H(x, kernel, scale)
  return x


def HT_pow(y: jax.Array, kernel, scale: int, power: int) -> jax.Array:
  """(Hᵀ)^power: side n → n · s^power."""
  for _ in range(power):
    y = HT(y, kernel, scale)
  return y


# ---- Fourier machinery for periodic kernels -----------------------------------------------


def kernel_power_spectrum(kernel, size: int) -> np.ndarray:
  """|Ŵ(k)|² on the size×size frequency grid: eigenvalues of the circulant W Wᵀ at that side.

  The kernel is wrapped onto the grid (a kernel larger than the grid aliases, as the periodic
  operator does), so this is exact for every level including 1×1 and 2×2 latents.
  """
  kernel = np.asarray(kernel, dtype=np.float64)
  grid = np.zeros((size, size))
  for a in range(kernel.shape[0]):
    for b in range(kernel.shape[1]):
      grid[a % size, b % size] += kernel[a, b]
  return np.abs(np.fft.fft2(grid)) ** 2


def propagate_spectrum(spectrum: np.ndarray, kernel, scale: int) -> np.ndarray:
  """Eigenvalues of H C Hᵀ on the coarse grid, given those of a circulant C on the fine grid.

  d(k) = s⁻² Σ_{m ∈ {0..s-1}²} |Ŵ(k + m n)|² c(k + m n)   (aliasing sum, n = N/s).
  """
  size = spectrum.shape[0]
  n = size // scale
  full = kernel_power_spectrum(kernel, size) * spectrum
  return full.reshape(scale, n, scale, n).sum(axis=(0, 2)) / scale**2


def apply_circulant(x: jax.Array, spectrum) -> jax.Array:
  """Applies the circulant operator with real symmetric eigenvalues `spectrum` (N×N) to NHWC x."""
  spec = jnp.asarray(spectrum, dtype=x.dtype)[None, :, :, None]
  return jnp.fft.ifft2(jnp.fft.fft2(x, axes=(1, 2)) * spec, axes=(1, 2)).real.astype(x.dtype)


def _check_scale(scale):
  if not isinstance(scale, (int, np.integer)) or scale < 2:
    raise ValueError(f"scale must be an integer >= 2, got {scale!r}.")
