"""A restricted reader of PyTorch checkpoint files that needs no torch and runs no pickled code.

`torch.load` unpickles arbitrary objects, so a downloaded checkpoint can run code. This reader
allows only the handful of globals a tensor checkpoint needs (containers, tensor/storage rebuild
functions, storage dtypes) and refuses everything else, naming the offending global. It reads both
of `torch.save`'s layouts: the zip archive (torch ≥ 1.6) and the older "legacy" stream — pickles
followed by the raw storages — in which pytorch-fid's 2019 Inception weights were published.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile

import numpy as np
from flax import traverse_util

_STORAGE_DTYPES = {
  "FloatStorage": np.float32,
  "DoubleStorage": np.float64,
  "HalfStorage": np.float16,
  "BFloat16Storage": "bfloat16",
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}
# The first pickle of a legacy torch.save stream, then its protocol version (torch/serialization.py).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The checkpoint refers to a Python object this reader does not allow."""


class _StorageType:
  def __init__(self, name):
    if name not in _STORAGE_DTYPES:
      raise UnsafeCheckpointError(
        f"Unknown storage type torch.{name}; known: {sorted(_STORAGE_DTYPES)}."
      )
    self.name = name
    dtype = _STORAGE_DTYPES[name]
    if dtype == "bfloat16":
      import ml_dtypes

      dtype = ml_dtypes.bfloat16
    self.dtype = np.dtype(dtype)


class _Storage:
  """A flat typed buffer; in a legacy file its bytes arrive only after the object pickle."""

  def __init__(self, dtype, numel, array=None):
    self.dtype, self.numel, self._array = dtype, int(numel), array

  @property
  def array(self):
    if self._array is None:
      raise ValueError("the checkpoint refers to a storage whose data it never wrote")
    return self._array

  def fill(self, array):
    self._array = array


class _LazyTensor:
  """Unpickling builds tensors before a legacy file's storages are read: materialize them after."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(int(n) for n in size), tuple(int(n) for n in stride)

  def materialize(self):
    flat = self.storage.array
    if len(self.size) != len(self.stride) or self.offset < 0 or min(self.stride, default=0) < 0:
      raise ValueError(f"invalid tensor layout: offset {self.offset}, stride {self.stride}")
    if min(self.size, default=1) < 0:
      raise ValueError(f"invalid tensor size {self.size}")
    if 0 in self.size:
      return np.zeros(self.size, flat.dtype)
    # as_strided trusts its arguments: a crafted file must not read past the storage.
    last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
    if last >= flat.size:
      raise ValueError(
        f"tensor of size {self.size}, stride {self.stride} at offset {self.offset} reaches "
        f"element {last} of a storage holding {flat.size}"
      )
    view = np.lib.stride_tricks.as_strided(
      flat[self.offset :],
      shape=self.size,
      strides=tuple(s * flat.dtype.itemsize for s in self.stride),
    )
    return np.array(view)  # own the memory; the views may share one storage


def _rebuild_tensor(storage, offset, size, stride, *_):
  return _LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(tensor, *_):
  return tensor


def _ordered_dict(*args):
  return collections.OrderedDict(*args)


_ALLOWED = {
  ("collections", "OrderedDict"): _ordered_dict,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("builtins", "set"): set,
  ("builtins", "frozenset"): frozenset,
  ("builtins", "slice"): slice,
}


def _text(value):
  return value.decode("ascii") if isinstance(value, bytes) else value


class _Unpickler(pickle.Unpickler):
  """Allows only tensor-checkpoint globals; storages are resolved by `self.storage(...)`."""

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise UnsafeCheckpointError(
      f"Refusing to load global {module}.{name} from the checkpoint: only tensors, numbers, "
      "strings and containers are allowed. If you trust this file, load it with "
      "torch.load(path, weights_only=True) and pass the state_dict instead."
    )


class _ZipUnpickler(_Unpickler):
  def __init__(self, file, archive, prefix):
    super().__init__(file)
    self._archive, self._prefix, self._cache = archive, prefix, {}

  def persistent_load(self, pid):
    if _text(pid[0]) != "storage" or len(pid) != 5:
      raise UnsafeCheckpointError(f"Unknown persistent id {pid[:1]!r} in a zip checkpoint.")
    _, storage_type, key, _location, numel = pid
    key = _text(key)
    if key not in self._cache:
      raw = self._archive.read(f"{self._prefix}/data/{key}")
      array = np.frombuffer(raw, dtype=storage_type.dtype)
      self._cache[key] = _Storage(storage_type.dtype, array.size, array)
    return self._cache[key]


class _LegacyUnpickler(_Unpickler):
  def __init__(self, file):
    super().__init__(file)
    self.storages = {}

  def persistent_load(self, pid):
    if _text(pid[0]) != "storage" or len(pid) != 6:
      # 'module' ids carry source code of pickled nn.Modules: never read.
      raise UnsafeCheckpointError(f"Unknown persistent id {pid[:1]!r} in a legacy checkpoint.")
    _, storage_type, root_key, _location, numel, view = pid
    root_key = _text(root_key)
    if root_key not in self.storages:
      self.storages[root_key] = _Storage(storage_type.dtype, numel)
    if view is not None:
      # Storage views were written only by torch < 0.4 (2018); no released weights need them.
      raise ValueError(
        "storage views (files of torch < 0.4) are not supported; re-save with a current torch"
      )
    return self.storages[root_key]


def _materialize(tree):
  if isinstance(tree, _LazyTensor):
    return tree.materialize()
  if isinstance(tree, dict):
    out = type(tree)() if isinstance(tree, collections.OrderedDict) else {}
    for k, v in tree.items():
      out[k] = _materialize(v)
    return out
  if isinstance(tree, (list, tuple)):
    return type(tree)(_materialize(v) for v in tree)
  return tree


def _load_zip(path, archive):
  with archive:
    pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pkl) != 1:
      raise ValueError(f"{path} has no single data.pkl entry (found {pkl}).")
    prefix = pkl[0][: -len("/data.pkl")]
    with archive.open(pkl[0]) as f:
      return _ZipUnpickler(f, archive, prefix).load()


def _load_legacy(path, f):
  def header(what):
    try:
      return _Unpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
      raise ValueError(
        f"{path} is not a PyTorch checkpoint: neither a zip archive (torch.save since 1.6) nor "
        f"a legacy torch.save stream (unreadable {what}: {e})."
      ) from e

  if header("magic number") != _LEGACY_MAGIC:
    raise ValueError(
      f"{path} is not a PyTorch checkpoint: neither a zip archive (torch.save since 1.6) nor a "
      "legacy torch.save stream (wrong magic number)."
    )
  protocol = header("protocol version")
  if protocol != _LEGACY_PROTOCOL:
    raise ValueError(f"{path}: legacy torch.save protocol {protocol}; this reader knows 1001.")
  header("system info")
  unpickler = _LegacyUnpickler(f)
  tree = unpickler.load()
  keys = _Unpickler(f).load()
  # The storages follow in the listed order, each an int64 element count and the raw bytes.
  for key in keys:
    key = _text(key)
    if key not in unpickler.storages:
      raise ValueError(f"{path}: storage {key!r} is listed but no tensor refers to it.")
    storage = unpickler.storages[key]
    count = np.frombuffer(f.read(8), "<i8")
    if count.size != 1 or int(count[0]) != storage.numel:
      raise ValueError(
        f"{path}: storage {key!r} should hold {storage.numel} elements; the file says "
        f"{count.tolist()} (truncated or corrupt)."
      )
    raw = f.read(storage.numel * storage.dtype.itemsize)
    if len(raw) != storage.numel * storage.dtype.itemsize:
      raise ValueError(f"{path} is truncated inside storage {key!r}.")
    storage.fill(np.frombuffer(raw, dtype=storage.dtype))
  return tree


def load_pickle_tree(path):
  """The unpickled object of a torch checkpoint (zip or legacy), tensors as numpy arrays."""
  if zipfile.is_zipfile(path):
    tree = _load_zip(path, zipfile.ZipFile(path))
  else:
    with open(path, "rb") as f:
      tree = _load_legacy(path, io.BufferedReader(f))
  try:
    return _materialize(tree)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e


def flatten(tree) -> dict[str, np.ndarray]:
  """Nested dicts of arrays → {'a.b.c': array}; non-array leaves are dropped."""
  if not isinstance(tree, dict):
    return {}
  flat = traverse_util.flatten_dict(tree, sep=".")
  return {k: v for k, v in flat.items() if isinstance(v, np.ndarray)}


def load_state_dict(path, key: str | None = None) -> dict[str, np.ndarray]:
  """Reads a state_dict (optionally the entry `key` of a checkpoint dict) as flat numpy arrays."""
  tree = load_pickle_tree(path)
  if key is not None:
    if not isinstance(tree, dict) or key not in tree:
      found = list(tree) if isinstance(tree, dict) else type(tree).__name__
      raise KeyError(f"{path} has no entry {key!r}; it holds {found}.")
    tree = tree[key]
  return flatten(tree)
