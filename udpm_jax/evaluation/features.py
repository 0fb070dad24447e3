"""The feature network behind FID: Inception-v3 pool3, as a host function and as a traceable one.

A `FeatureNet` is called on uint8 images (`features(images_uint8) -> (B, D)`, jitted) and also
carries its pure `apply(params, images)` and `params`, so that the evaluator can run sampling, the
uint8 round trip and the features in one sharded program and bring back only the features.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from udpm_jax import process as proc
from udpm_jax import sampling, sharding


def uint8_round_trip(images):
  """[-1, 1] floats → the values they take after a save as uint8 (PNG), back in [-1, 1].

  Rounds (x + 1) · 127.5 and clips to [0, 255], as `image_io.to_uint8`, inside a traced program."""
  u8 = jnp.clip(jnp.rint((images.astype(jnp.float32) + 1.0) * 127.5), 0.0, 255.0)
  return u8 / 127.5 - 1.0


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureNet:
  """A feature network: `apply(params, images in [-1, 1]) -> (B, D)`, its weights, and their
  digest (recorded with reference statistics, so that those of another network are not reused)."""

  apply: Callable[[Any, jax.Array], jax.Array]
  params: Any
  weights_digest: str | None = None

  def __post_init__(self):
    object.__setattr__(self, "_jitted", jax.jit(self.apply))

  def __call__(self, images_uint8):
    """Features of uint8 NHWC images (a host call)."""
    return self._jitted(self.params, jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0)


def inception_features(inception_params) -> FeatureNet:
  """FID's Inception-v3 pool3 features (2048-d) with the given weights."""
  from udpm_jax import inception

  return FeatureNet(
    inception.features, inception_params, inception.weights_digest(inception_params)
  )


def fid_features(config, inception_weights=None) -> FeatureNet:
  """The Inception features of FID: weights from `inception_weights`, else the config's
  `eval.inception_weights` (offline clusters name local files there), else the cached download."""
  from udpm_jax import inception

  weights = inception_weights or config.eval.get("inception_weights") or None
  return inception_features(inception.load_params(weights))


def make_sample_features_fn(config, features: FeatureNet, denoise_fn=None, devices=None):
  """`sample_features(variables, key, num, labels=None) -> (num, D)` numpy features of `num` samples.

  One jitted program over every device: the latents drawn from `key` for the whole batch (so the
  result does not depend on the device count), the reverse chain sharded over the batch (padded to
  a multiple of the device count), the uint8 round trip and the feature network, each device on
  its share. Only the features leave the devices; on a multi-process run every process gets all of
  them (`process_allgather`), so each evaluates the same statistics.
  """
  sched = proc.Schedule.from_config(config)
  denoise_fn = denoise_fn or sampling.default_denoise_fn(config)
  mesh = sharding.make_mesh(devices)

  def run(variables, feature_params, key, num, labels):
    latents = sampling.sample_latents(sched, jax.random.fold_in(key, 0), num, config.data.channels)
    images = sampling.decode_sharded(sched, denoise_fn, mesh, variables, latents, labels)[-1]
    return features.apply(feature_params, uint8_round_trip(images))

  program = jax.jit(run, static_argnames=("num",), out_shardings=sharding.batch_sharding(mesh))

  def sample_features(variables, key, num, labels=None):
    labels = sampling.checked_labels(config, labels, num)
    args = jax.device_put((variables, features.params, key, labels), sharding.replicated(mesh))
    out = program(*args[:3], num, args[3])
    return np.asarray(multihost_utils.process_allgather(out, tiled=True))[:num]

  sample_features.program = program  # (variables, feature_params, key, num, labels)
  return sample_features
