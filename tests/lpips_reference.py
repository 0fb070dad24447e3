"""The real image pairs of the LPIPS tests, and the PyPI `lpips` package set up to score them.

Pairs are defined by indices into the shared assets (no image data lives in the repository) and
by deterministic perturbations (box blur, one-pixel shift, hash noise), so the stored package
values in tests/data/lpips_package_values.json stay tied to exact inputs (`inputs_sha256`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import pathlib
import sys

import numpy as np
from PIL import Image

from udpm_jax import data as data_lib

FIXTURE = pathlib.Path(__file__).resolve().parent / "data" / "lpips_package_values.json"
# Conv layers of torchvision's VGG16 `features` (indices into the Sequential) = our Conv_0..12.
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _to_unit(images_uint8):
  return np.asarray(images_uint8, np.float32) / np.float32(127.5) - np.float32(1.0)


def _box_blur(x):
  """3×3 mean with edge padding, as a fixed-order sum (bit-reproducible everywhere)."""
  h, w = x.shape[1:3]
  p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  total = np.zeros_like(x)
  for dy in range(3):
    for dx in range(3):
      total = total + p[:, dy : dy + h, dx : dx + w]
  return total / np.float32(9.0)


def _hash_noise(shape, seed, amplitude=0.2):
  """Uniform noise in [-amplitude, amplitude) from the splitmix64 finaliser: no RNG streams."""
  z = np.arange(int(np.prod(shape)), dtype=np.uint64) + np.uint64(seed) * np.uint64(1 << 32)
  with np.errstate(over="ignore"):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  z = z ^ (z >> np.uint64(31))
  u = (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)  # [0, 1), exact
  return (u * np.float32(2 * amplitude) - np.float32(amplitude)).reshape(shape)


def _perturbed_pairs(images, start, per_kind):
  """`per_kind` pairs (image, perturbed image) for each of noise, blur and shift."""
  xs, ys, names = [], [], []
  for k, kind in enumerate(("noise", "blur", "shift")):
    x = images[start + k * per_kind : start + (k + 1) * per_kind]
    if kind == "noise":
      y = np.clip(x + _hash_noise(x.shape, seed=start + k), -1.0, 1.0).astype(np.float32)
    elif kind == "blur":
      y = _box_blur(x)
    else:
      y = np.roll(x, 1, axis=2)  # one pixel to the right (wrapping)
    xs.append(x)
    ys.append(y)
    names += [f"{kind}{i}" for i in range(start + k * per_kind, start + (k + 1) * per_kind)]
  return xs, ys, names


def real_pairs(assets: pathlib.Path) -> dict:
  """{set name: (x, y, pair names)}: NHWC float32 in [-1, 1], RGB.

  triplet (64×64): the LPIPS project's example images, ref–p0, ref–p1, p0–p1.
  cifar10 (32×32): x_test[i] vs x_test[i+16] for i < 16; then x_test[32..55] vs a noisy (±0.2),
    3×3 box-blurred and one-pixel-shifted copy of itself (8 each).
  fashion_mnist (28 padded to 32, gray replicated to RGB): t10k[i] vs t10k[i+8] for i < 8;
    then t10k[16..27] vs noisy, blurred and shifted copies (4 each).
  """
  ex = [
    _to_unit(Image.open(assets / "weights" / "lpips_examples" / f"{n}.png").convert("RGB"))
    for n in ("ex_ref", "ex_p0", "ex_p1")
  ]
  out = {
    "triplet": (
      np.stack([ex[0], ex[0], ex[1]]),
      np.stack([ex[1], ex[2], ex[2]]),
      ["ref-p0", "ref-p1", "p0-p1"],
    )
  }
  with np.load(assets / "data" / "cifar10_partial.npz", allow_pickle=False) as f:
    cifar = _to_unit(f["x_test"][:56])
  fm = data_lib.read_idx(assets / "data" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")[:28]
  fm = _to_unit(np.repeat(np.pad(fm, ((0, 0), (2, 2), (2, 2)))[..., None], 3, axis=-1))
  for name, images, n_other, per_kind in (("cifar10", cifar, 16, 8), ("fashion_mnist", fm, 8, 4)):
    xs, ys, names = [images[:n_other]], [images[n_other : 2 * n_other]], []
    names += [f"other{i}-{i + n_other}" for i in range(n_other)]
    px, py, pn = _perturbed_pairs(images, 2 * n_other, per_kind)
    out[name] = (np.concatenate(xs + px), np.concatenate(ys + py), names + pn)
  return out


def inputs_sha256(pairs: dict) -> str:
  h = hashlib.sha256()
  for name in sorted(pairs):
    x, y, names = pairs[name]
    h.update(name.encode())
    h.update(np.ascontiguousarray(x, np.float32).tobytes())
    h.update(np.ascontiguousarray(y, np.float32).tobytes())
    h.update("\n".join(names).encode())
  return h.hexdigest()


# --- the PyPI package ------------------------------------------------------------------------

_TORCHVISION_OPS = []  # keeps the op declarations below alive


def import_lpips_package():
  """`import lpips` (PyPI, with torchvision), or ImportError saying why it is unusable here.

  PyPI's Linux torchvision wheels are CUDA builds: next to a CPU-only torch their C++ ops
  (`torchvision/_C.so`) cannot load, and torchvision 0.28 then fails at import while registering
  fake kernels for `torchvision::nms`/`qnms`. Declaring those two op schemas (no kernels) lets the
  pure-Python package import; LPIPS uses none of the C++ ops (only `models.vgg16`).
  """
  if importlib.util.find_spec("lpips") is None:
    raise ImportError("the PyPI package lpips is not installed (CI installs lpips==0.1.4)")
  import torch

  try:
    import torchvision  # noqa: F401
  except ImportError as e:
    raise ImportError(f"torchvision is not installed ({e}); CI installs torchvision==0.28.0") from e
  except RuntimeError as e:
    if "torchvision::" not in str(e):
      raise ImportError(f"torchvision does not import: {e}") from e
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_OPS.append(lib)
    try:
      import torchvision  # noqa: F401
    except (ImportError, RuntimeError) as e2:
      raise ImportError(f"torchvision does not import: {e2}") from e2
  import lpips

  return lpips


def torchvision_vgg16_state_dict(vgg_npz: dict) -> dict:
  """torchvision's VGG16 state dict with the `features` convs from lpips_vgg16.npz (HWIO → OIHW);
  the classifier (unused by LPIPS, absent from the npz) is zeros."""
  import torch

  state = {}
  for i, j in enumerate(VGG16_CONV_INDICES):
    kernel = vgg_npz[f"VGG16_0/Conv_{i}/kernel"]
    state[f"features.{j}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
    state[f"features.{j}.bias"] = torch.from_numpy(vgg_npz[f"VGG16_0/Conv_{i}/bias"].copy())
  for j, (n_out, n_in) in zip((0, 3, 6), ((4096, 512 * 7 * 7), (4096, 4096), (1000, 4096))):
    state[f"classifier.{j}.weight"] = torch.zeros(n_out, n_in)
    state[f"classifier.{j}.bias"] = torch.zeros(n_out)
  return state


def lpips_package_model(lpips_pkg, vgg_npz: dict):
  """`lpips.LPIPS(net='vgg')` exactly as users construct it (v0.1 heads read from the package's
  own weights/v0.1/vgg.pth, ImageNet trunk through torchvision's `vgg16(pretrained=True)`), with
  only torchvision's download of vgg16-397923af.pth replaced by the same tensors from our npz.
  Consumes torch's global RNG exactly as the unpatched constructor does."""
  import torch
  from torchvision.models import _api

  state = torchvision_vgg16_state_dict(vgg_npz)
  original = _api.WeightsEnum.get_state_dict
  _api.WeightsEnum.get_state_dict = lambda self, *args, **kwargs: state
  try:
    model = lpips_pkg.LPIPS(net="vgg", version="0.1", verbose=False)
  finally:
    _api.WeightsEnum.get_state_dict = original
  convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
  assert len(convs) == 13 and all(
    np.array_equal(c.weight.detach().numpy(), state[f"features.{j}.weight"].numpy())
    for c, j in zip(convs, VGG16_CONV_INDICES)
  ), "the package's trunk did not receive the npz weights"
  return model.eval()


def lpips_package_distances(model, x, y) -> np.ndarray:
  import torch

  def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 3, 1, 2)))

  with torch.no_grad():
    return model(nchw(x), nchw(y)).reshape(-1).numpy()
