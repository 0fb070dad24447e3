"""Experiment configurations (ml-collections) and their validation.

`get_config(name)` returns the same object as `configs/<name>.py:get_config()`, validated.
"""

import importlib
import math

import ml_collections

NAMES = ("default", "cifar10", "ffhq64", "afhqv2_64", "test", "fashion_mnist_demo")
KERNELS = ("box", "gaussian")
KERNEL_NORMS = ("norm", "sum")
DATA_SOURCES = ("tfds", "folder", "zip", "npz", "idx", "synthetic")
ARCHS = ("ncsnpp", "ddpmpp")
PER_LEVEL_LOSS_FIELDS = ("l1", "lpips", "adv", "r1_gamma")


def get_config(name: str = "default") -> ml_collections.ConfigDict:
  """Returns the named configuration, validated.

  Args:
    name: one of `NAMES`.
  """
  if name not in NAMES:
    raise ValueError(f"Unknown config name {name!r}; valid names: {', '.join(NAMES)}.")
  config = importlib.import_module(f"udpm_jax.configs.{name}").get_config()
  validate(config)
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid value and what would be valid."""
  p = config.process
  s, L = p.scale, p.levels
  if not isinstance(s, int) or s < 2:
    raise ValueError(f"process.scale must be an integer >= 2, got {s!r}.")
  if not isinstance(L, int) or L < 1:
    raise ValueError(f"process.levels must be an integer >= 1, got {L!r}.")
  n = config.data.image_size
  if not isinstance(n, int) or n <= 0 or n % (s**L):
    valid = [k * s**L for k in range(1, 5)]
    raise ValueError(
      f"data.image_size={n!r} is not divisible by scale**levels = {s}**{L} = {s**L}; "
      f"valid sizes are multiples of {s**L}, e.g. {valid}."
    )
  _check_per_level("process.alphas", p.alphas, L)
  _check_per_level("process.sigmas", p.sigmas, L)
  for l, a in enumerate(p.alphas, 1):
    if not (0.0 < a <= 1.0) or math.isnan(a):
      raise ValueError(
        f"process.alphas[{l - 1}] (level {l}) = {a!r}; each alpha must lie in (0, 1]."
      )
  for l, sig in enumerate(p.sigmas, 1):
    if not sig > 0.0:
      raise ValueError(f"process.sigmas[{l - 1}] (level {l}) = {sig!r}; each sigma must be > 0.")
  if p.kernel not in KERNELS:
    raise ValueError(
      f"process.kernel={p.kernel!r} is unknown; valid kernels: {', '.join(KERNELS)}."
    )
  if p.kernel_norm not in KERNEL_NORMS:
    raise ValueError(
      f"process.kernel_norm={p.kernel_norm!r} is unknown; valid: {', '.join(KERNEL_NORMS)}."
    )
  if p.kernel == "gaussian" and not (p.kernel_std > 0 and p.kernel_size >= 1):
    raise ValueError(
      f"gaussian kernel needs kernel_size >= 1 and kernel_std > 0, got "
      f"{p.kernel_size!r}, {p.kernel_std!r}."
    )
  if config.data.source not in DATA_SOURCES:
    raise ValueError(
      f"data.source={config.data.source!r} is unknown; valid: {', '.join(DATA_SOURCES)}."
    )
  if config.data.channels not in (1, 3):
    raise ValueError(f"data.channels={config.data.channels!r}; valid: 1 or 3.")
  if config.data.num_classes < 0:
    raise ValueError(
      f"data.num_classes={config.data.num_classes!r}; must be >= 0 (0 = unconditional)."
    )
  if config.model.arch not in ARCHS:
    raise ValueError(f"model.arch={config.model.arch!r} is unknown; valid: {', '.join(ARCHS)}.")
  if "loss" in config:
    for field in PER_LEVEL_LOSS_FIELDS:
      _check_per_level(f"loss.{field}", config.loss[field], L)
      if any(v < 0 for v in config.loss[field]):
        raise ValueError(f"loss.{field}={tuple(config.loss[field])!r}; weights must be >= 0.")
  if config.discriminator.conditional and config.data.num_classes == 0:
    raise ValueError(
      "discriminator.conditional=True needs data.num_classes > 0; "
      "set discriminator.conditional=False for unconditional data."
    )
  t = config.training
  if t.batch_size < 0 or t.per_device_batch_size <= 0:
    raise ValueError(
      f"training.batch_size={t.batch_size!r} must be >= 0 (0 = per device × devices) "
      f"and training.per_device_batch_size={t.per_device_batch_size!r} > 0."
    )
  if t.compute_dtype not in ("float32", "bfloat16", "float16"):
    raise ValueError(
      f"training.compute_dtype={t.compute_dtype!r}; valid: float32, bfloat16, float16."
    )
  if not 0.0 <= t.ema_decay < 1.0:
    raise ValueError(f"training.ema_decay={t.ema_decay!r}; must lie in [0, 1).")


def _check_per_level(name, values, levels):
  try:
    count = len(values)
  except TypeError:
    raise ValueError(
      f"{name}={values!r} must be a list with one entry per level ({levels})."
    ) from None
  if count != levels:
    raise ValueError(
      f"{name} has {count} entries {tuple(values)!r}; it needs one per level, "
      f"process.levels = {levels}."
    )
