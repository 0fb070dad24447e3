"""Input pipelines: random-access image sources and a deterministic, host-sharded batch iterator.

Every source is random access (`len`, `get(indices)`), so batch k of a run is a pure function of
(seed, k): sample j of global batch k is example perm_e[(k·B + j) mod M] with the permutation of
epoch e drawn from (seed, e) (or, with data.class_groups, runs of same-class examples drawn from
(seed, k)), and flips are drawn from (seed, k). A resumed run therefore sees the
data it would have seen, and each host reads only its rows of the same global batch, so the global
batch does not depend on the number of hosts.

Sources (config.data.source): 'tfds' (`tfds.data_source`, ArrayRecord, no TensorFlow needed),
'folder' (png/jpg/jpeg/webp, recursive), 'zip' (EDM-style archive of PNGs with optional
dataset.json labels), 'npz' (x_<split>/y_<split> or images/labels), 'idx' (MNIST-style .gz files),
'synthetic' (generated, for tests).
"""

from udpm_jax.data.pipeline import (
  Prefetch,
  batch_indices,
  check_labels,
  class_grouped_indices,
  flips,
  load_arrays,
  make_iterator,
  match_channels,
  preprocess,
)
from udpm_jax.data.sources import (
  IMAGE_EXTENSIONS,
  ArraySource,
  DataError,
  FileSource,
  Source,
  TfdsSource,
  folder_source,
  idx_source,
  make_source,
  npz_source,
  read_idx,
  synthetic_source,
  tfds_source,
  zip_source,
)

__all__ = [
  "IMAGE_EXTENSIONS",
  "ArraySource",
  "DataError",
  "FileSource",
  "Prefetch",
  "Source",
  "TfdsSource",
  "batch_indices",
  "check_labels",
  "class_grouped_indices",
  "flips",
  "folder_source",
  "idx_source",
  "load_arrays",
  "make_iterator",
  "make_source",
  "match_channels",
  "npz_source",
  "preprocess",
  "read_idx",
  "synthetic_source",
  "tfds_source",
  "zip_source",
]
