"""The authors' checkpoints: key mapping, layouts, stored reference outputs, safe .pt reading."""

import io
import json
import pickle
import zipfile

import jax
import numpy as np
import pytest

import udpm_jax
from tests.conftest import REPO
from udpm_jax import convert, models, torch_pickle

FIXTURE = REPO / "tests" / "data" / "official_test.npz"


def _seeded(shapes, seed):
  """Same weights as tools/make_official_fixture.py: sorted keys, one rng stream."""
  rng = np.random.default_rng(seed)
  return {
    k: (0.2 * rng.standard_normal(shape)).astype(np.float32) for k, shape in sorted(shapes.items())
  }


def _official(name):
  fx = np.load(FIXTURE)
  shapes = {k: tuple(v) for k, v in json.loads(str(fx[f"{name}_keys"])).items()}
  learn = {k: s for k, s in shapes.items() if not k.endswith("resample_filter")}
  sd = _seeded(learn, 1 if name == "generator" else 2)
  for k, s in shapes.items():
    if k.endswith("resample_filter"):
      taps = (1, 3, 3, 1) if s[-1] == 4 else (1, 1)
      sd[k] = udpm_jax.models.layers.fir_filter(taps).reshape(s)
  return fx, sd


def test_converted_networks_reproduce_the_authors_outputs():
  """Outputs of the authors' modules (recorded with torch, seeded weights) at every level."""
  config = udpm_jax.configs.get_config("test")
  fx, g_sd = _official("generator")
  _, d_sd = _official("discriminator")
  g_vars = convert.convert_generator_state_dict(g_sd, config)
  d_vars = convert.convert_discriminator_state_dict(d_sd, config)
  gen, disc = models.build_generator(config), models.build_discriminator(config)
  gen_apply, disc_apply = jax.jit(gen.apply), jax.jit(disc.apply)
  for level in range(1, config.process.levels + 1):
    t = (level - 0.5) / config.process.levels
    y = gen_apply(g_vars, fx[f"x{level}"], t, fx["labels"])
    np.testing.assert_allclose(
      y, fx[f"y{level}"], atol=1e-4 * max(1, np.abs(fx[f"y{level}"]).max())
    )
    logits = disc_apply(d_vars, fx[f"img{level}"], t, np.array([0, 1, 2, 9]))
    np.testing.assert_allclose(logits, fx[f"logits{level}"], rtol=1e-4, atol=1e-4)


def test_every_key_lands_where_it_belongs_round_trip():
  config = udpm_jax.configs.get_config("test")
  for name, to_ours, to_theirs in (
    ("generator", convert.convert_generator_state_dict, convert.generator_to_state_dict),
    (
      "discriminator",
      convert.convert_discriminator_state_dict,
      convert.discriminator_to_state_dict,
    ),
  ):
    _, sd = _official(name)
    back = to_theirs(to_ours(sd, config))
    learn = {k for k in sd if not k.endswith("resample_filter")}
    assert set(back) == learn  # every one of their keys used, none invented
    for k in learn:
      np.testing.assert_array_equal(back[k], sd[k])
  g = jax.jit(lambda k: models.init_generator(config, k))(jax.random.PRNGKey(1))
  again = convert.convert_generator_state_dict(convert.generator_to_state_dict(g), config)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(g)):
    np.testing.assert_array_equal(a, b)


def test_wrong_missing_and_extra_keys_are_named():
  config = udpm_jax.configs.get_config("test")
  _, sd = _official("generator")
  missing = dict(sd)
  del missing["net.map_layer0.weight"]
  with pytest.raises(convert.ConversionError, match="no key 'net.map_layer0.weight'"):
    convert.convert_generator_state_dict(missing, config)
  wrong = dict(sd)
  wrong["net.map_layer1.weight"] = np.zeros((3, 3), np.float32)
  with pytest.raises(convert.ConversionError, match="net.map_layer1.weight' has shape \\(3, 3\\)"):
    convert.convert_generator_state_dict(wrong, config)
  extra = {**sd, "net.surprise.weight": np.zeros(2, np.float32)}
  with pytest.raises(convert.ConversionError, match="net.surprise.weight"):
    convert.convert_generator_state_dict(extra, config)
  other = udpm_jax.configs.get_config("test")
  other.model.arch = "ddpmpp"  # different embedding and filter: must be refused, not loaded
  with pytest.raises(convert.ConversionError):
    convert.convert_generator_state_dict(sd, other)


def _torch_like_zip(obj_pickle: bytes, storages: dict) -> bytes:
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as z:
    z.writestr("archive/data.pkl", obj_pickle)
    for key, raw in storages.items():
      z.writestr(f"archive/data/{key}", raw)
  return buf.getvalue()


LEGACY = REPO / "tests" / "data" / "legacy_state_dict.pt"


def test_legacy_torch_save_files_are_read(tmp_path):
  """torch.save's pre-1.6 stream (pytorch-fid's Inception weights are one): pickles, then each
  storage as an int64 count and raw bytes. The stored file was written by torch 2.13 with
  _use_new_zipfile_serialization=False: w = arange(6)/4 as 2×3, t = w.T (same storage), i, h."""
  flat = torch_pickle.load_state_dict(LEGACY)
  w = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
  np.testing.assert_array_equal(flat["w"], w)
  np.testing.assert_array_equal(flat["t"], w.T)
  np.testing.assert_array_equal(flat["i"], [3, -1, 7])
  assert flat["i"].dtype == np.int64 and flat["h"].dtype == np.float16
  np.testing.assert_array_equal(flat["h"], [0.5, -2.0])

  data = LEGACY.read_bytes()
  (tmp_path / "short.pt").write_bytes(data[:-3])
  with pytest.raises(ValueError, match="truncated"):
    torch_pickle.load_state_dict(tmp_path / "short.pt")

  torch = pytest.importorskip("torch")

  class Evil:
    def __reduce__(self):
      import os

      return (os.system, ("echo pwned",))

  with pytest.raises(torch_pickle.UnsafeCheckpointError, match="posix.system|os.system"):
    torch.save({"x": Evil()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=False)
    torch_pickle.load_pickle_tree(tmp_path / "evil.pt")
  # Both layouts of one state_dict read the same, parameters (BatchNorm scales) included.
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  sd = {
    "w": base,
    "view": base.t()[1:3],
    "b": torch.zeros(2, dtype=torch.bfloat16) + 1.5,
    "scalar": torch.tensor(2.5),
    "bn.weight": torch.nn.Parameter(torch.ones(2)),
  }
  torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
  torch.save(sd, tmp_path / "zip.pt")
  legacy = torch_pickle.load_state_dict(tmp_path / "legacy.pt")
  current = torch_pickle.load_state_dict(tmp_path / "zip.pt")
  for k, v in sd.items():
    expected = v.detach().float().numpy()
    np.testing.assert_array_equal(legacy[k].astype(np.float32), expected)
    np.testing.assert_array_equal(current[k].astype(np.float32), expected)


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
  """A crafted size must give an error, not a read of foreign memory (as_strided trusts it)."""
  torch = pytest.importorskip("torch")
  torch.save({"w": torch.arange(200, dtype=torch.float32)}, tmp_path / "ok.pt")
  with zipfile.ZipFile(tmp_path / "ok.pt") as z:
    entries = {n: z.read(n) for n in z.namelist()}
  name = next(n for n in entries if n.endswith("data.pkl"))
  size_200 = b"K\xc8\x85"  # BININT1 200, TUPLE1: the tensor's size (200,)
  assert entries[name].count(size_200) == 1
  entries[name] = entries[name].replace(
    size_200, b"J" + (50_000_000).to_bytes(4, "little") + b"\x85"
  )
  with zipfile.ZipFile(tmp_path / "evil.pt", "w") as z:
    for n, raw in entries.items():
      z.writestr(n, raw)
  with pytest.raises(ValueError, match=r"size \(50000000,\).*storage holding 200"):
    torch_pickle.load_state_dict(tmp_path / "evil.pt")


def test_pt_reader_refuses_code_and_reads_torch_files(tmp_path):
  class Evil:
    def __reduce__(self):
      import os

      return (os.system, ("echo pwned",))

  bad = tmp_path / "evil.pt"
  bad.write_bytes(_torch_like_zip(pickle.dumps({"x": Evil()}), {}))
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match="posix.system|os.system"):
    torch_pickle.load_pickle_tree(bad)
  not_torch = tmp_path / "plain.pt"
  not_torch.write_bytes(pickle.dumps({"a": 1}))
  with pytest.raises(ValueError, match="not a PyTorch checkpoint.*wrong magic number"):
    torch_pickle.load_state_dict(not_torch)
  torch = pytest.importorskip("torch")
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  sd = {
    "model": {
      "w": base,
      "view": base.t()[1:3],
      "h": torch.ones(3, dtype=torch.float16),
      "i": torch.tensor([5, -7]),
      "b": torch.zeros(2, dtype=torch.bfloat16) + 1.5,
      "scalar": torch.tensor(2.5),
    },
    "step": 7,
  }
  path = tmp_path / "ok.pt"
  torch.save(sd, path)
  flat = torch_pickle.load_state_dict(path, key="model")
  for k, v in sd["model"].items():
    np.testing.assert_array_equal(flat[k].astype(np.float32), v.float().numpy())
  assert flat["h"].dtype == np.float16 and flat["i"].dtype == np.int64
  with pytest.raises(KeyError, match="no entry 'ema'"):
    torch_pickle.load_state_dict(path, key="ema")
  # A real checkpoint file of the authors' layout (EMA file: plain state_dict) loads end to end.
  config = udpm_jax.configs.get_config("test")
  _, g_sd = _official("generator")
  torch.save({k: torch.from_numpy(v) for k, v in g_sd.items()}, tmp_path / "ema.pt")
  torch.save(
    {"model": {k: torch.from_numpy(v) for k, v in g_sd.items()}, "discriminator": None},
    tmp_path / "state.pt",
  )
  a = convert.load_official_checkpoint(tmp_path / "ema.pt", config)
  b = convert.load_official_checkpoint(tmp_path / "state.pt", config)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(convert.ConversionError, match="holds no discriminator"):
    convert.load_official_checkpoint(tmp_path / "state.pt", config, which="discriminator")
