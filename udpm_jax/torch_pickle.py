"""A restricted reader of PyTorch checkpoint files (`torch.save`'s zip format) that needs no torch.

`torch.load` unpickles arbitrary objects, so a downloaded checkpoint can run code. This reader
allows only the handful of globals a tensor checkpoint needs (containers, tensor/storage rebuild
functions, storage dtypes) and refuses everything else, naming the offending global.
"""

from __future__ import annotations

import collections
import pickle
import zipfile

import numpy as np

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


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The checkpoint refers to a Python object this reader does not allow."""


class _Storage:
  def __init__(self, array):
    self.array = array


class _StorageType:
  def __init__(self, name):
    self.name = name


def _rebuild_tensor(storage, offset, size, stride, *_):
  flat = storage.array
  if not size:
    return np.array(flat[offset])
  itemsize = flat.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
    flat[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
  )
  return np.array(view)  # own the memory; the views may share one storage


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


def _bfloat16():
  import ml_dtypes

  return ml_dtypes.bfloat16


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, archive, prefix):
    super().__init__(file)
    self._archive, self._prefix, self._cache = archive, prefix, {}

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

  def persistent_load(self, pid):
    kind, storage_type, key, _location, _numel = pid
    if kind != "storage":
      raise UnsafeCheckpointError(f"Unknown persistent id kind {kind!r}.")
    if key not in self._cache:
      dtype = _STORAGE_DTYPES[storage_type.name]
      dtype = _bfloat16() if dtype == "bfloat16" else dtype
      raw = self._archive.read(f"{self._prefix}/data/{key}")
      self._cache[key] = _Storage(np.frombuffer(raw, dtype=dtype))
    return self._cache[key]


def load_pickle_tree(path):
  """The unpickled object of a torch zip checkpoint, tensors as numpy arrays."""
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise ValueError(
      f"{path} is not a PyTorch zip checkpoint (torch.save since 1.6); legacy "
      "pickle files are not read for safety. Re-save it with a current torch."
    ) from e
  with archive:
    pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pkl) != 1:
      raise ValueError(f"{path} has no single data.pkl entry (found {pkl}).")
    prefix = pkl[0][: -len("/data.pkl")]
    with archive.open(pkl[0]) as f:
      return _Unpickler(f, archive, prefix).load()


def flatten(tree, prefix="") -> dict[str, np.ndarray]:
  """Nested dicts of arrays → {'a.b.c': array}; non-array leaves are dropped."""
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.update(flatten(v, f"{prefix}{k}."))
  elif isinstance(tree, np.ndarray):
    out[prefix[:-1]] = tree
  return out


def load_state_dict(path, key: str | None = None) -> dict[str, np.ndarray]:
  """Reads a state_dict (optionally the entry `key` of a checkpoint dict) as flat numpy arrays."""
  tree = load_pickle_tree(path)
  if key is not None:
    if not isinstance(tree, dict) or key not in tree:
      found = list(tree) if isinstance(tree, dict) else type(tree).__name__
      raise KeyError(f"{path} has no entry {key!r}; it holds {found}.")
    tree = tree[key]
  return flatten(tree)
