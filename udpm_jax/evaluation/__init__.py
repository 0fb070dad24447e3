"""Evaluation of generators: FID (KID, precision/recall) with clu metrics.

- `features`: the FID feature network (`FeatureNet`, `fid_features`) and the one sharded program
  sample → uint8 → features (`make_sample_features_fn`);
- `reference`: reference statistics and features of a dataset, cached with their provenance;
- `evaluator`: `Evaluator`, the object the command line and the training loop share, and the
  metric collections it updates per batch.

The metrics themselves are `udpm_jax.metrics`; the feature network's layers `udpm_jax.inception`.
"""

from udpm_jax.evaluation.evaluator import (
  Evaluator,
  FIDAndFeatures,
  FIDMetrics,
  evaluate_step,
  evaluate_variables,
  read_result,
  settings,
  write_scalars,
)
from udpm_jax.evaluation.features import (
  FeatureNet,
  fid_features,
  inception_features,
  make_sample_features_fn,
  uint8_round_trip,
)
from udpm_jax.evaluation.reference import (
  reference_features,
  reference_statistics,
  run_reference,
)

__all__ = [
  "Evaluator",
  "FIDAndFeatures",
  "FIDMetrics",
  "FeatureNet",
  "evaluate_step",
  "evaluate_variables",
  "fid_features",
  "inception_features",
  "make_sample_features_fn",
  "read_result",
  "reference_features",
  "reference_statistics",
  "run_reference",
  "settings",
  "uint8_round_trip",
  "write_scalars",
]
