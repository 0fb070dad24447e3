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
RESIZES = ("none", "pad", "resize", "center_crop")
LEVEL_DISPATCH = ("host", "switch")


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
  depth = len(config.model.channel_mult)
  # The U-Net halves its input depth − 1 times, and its smallest input is the level-L latent.
  base = s**L * 2 ** (depth - 1)
  valid = [k * base for k in range(1, 5)]
  if not isinstance(n, int) or n <= 0 or n % (s**L):
    raise ValueError(
      f"data.image_size={n!r} is not divisible by scale**levels = {s}**{L} = {s**L}; "
      f"valid sizes (with this U-Net) are multiples of {base}, e.g. {valid}."
    )
  if (n // s**L) % 2 ** (depth - 1):
    raise ValueError(
      f"data.image_size={n}: the level-{L} latent is {n // s**L}×{n // s**L}, which the U-Net "
      f"of {depth} resolutions (model.channel_mult={tuple(config.model.channel_mult)}) cannot "
      f"halve {depth - 1} times; valid sizes are multiples of {base}, e.g. {valid}, or use "
      "fewer levels or resolutions."
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
  if config.model.get("input_skip", False) and not config.model.get("sigma_data", 0.5) > 0:
    raise ValueError(
      f"model.sigma_data={config.model.sigma_data!r}; with model.input_skip it must be > 0 "
      "(the data's root mean square, e.g. 0.5 for natural images in [-1, 1])."
    )
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
  groups = config.data.get("class_groups", 0)
  _check(
    "data.class_groups",
    groups,
    _is_int(groups) and groups >= 0 and (groups == 0 or config.data.num_classes > 0),
    "an integer >= 0 (0 = batches in random order), > 0 only with data.num_classes > 0",
  )
  d = config.discriminator
  by_class = d.get("stddev_by_class", False)
  _check(
    "discriminator.stddev_by_class",
    by_class,
    isinstance(by_class, bool) and (not by_class or d.conditional),
    "True or False, True only with discriminator.conditional=True",
  )
  gain = d.get("stddev_gain", 1.0)
  _check("discriminator.stddev_gain", gain, isinstance(gain, (int, float)) and gain > 0, "> 0")
  from udpm_jax import models  # noqa: PLC0415  (models imports this package's users)

  auto = models.WINOGRAD_CPU_MIN_SIDE
  for key, section in (("discriminator", d), ("model", config.model)):
    wino = section.get("winograd_min_side", -1)
    _check(
      f"{key}.winograd_min_side",
      wino,
      _is_int(wino) and wino >= -1,
      f"-1 (auto: {auto} on the CPU in float32, else off), 0 (off) or a side >= 1",
    )
  t = config.training
  if groups and t.batch_size and t.batch_size % groups:
    raise ValueError(
      f"training.batch_size={t.batch_size} is not a multiple of data.class_groups={groups}."
    )
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
  for field in ("num_steps", "log_every", "ckpt_every", "keep_checkpoints", "steps_per_dispatch"):
    _check(f"training.{field}", t[field], _is_int(t[field]) and t[field] >= 1, "an integer >= 1")
  _check(
    "training.async_checkpoints",
    t.get("async_checkpoints", False),
    isinstance(t.get("async_checkpoints", False), bool),
    "True or False",
  )
  for field in ("sample_every", "eval_every"):
    _check(
      f"training.{field}",
      t[field],
      _is_int(t[field]) and t[field] >= 0,
      "an integer >= 0 (0 = off)",
    )
  _check(
    "training.level_dispatch",
    t.get("level_dispatch", "host"),
    t.get("level_dispatch", "host") in LEVEL_DISPATCH,
    f"one of {', '.join(LEVEL_DISPATCH)}",
  )
  weights = tuple(t.get("level_weights", ()) or ())
  if weights:
    _check_per_level("training.level_weights", weights, L)
    _check(
      "training.level_weights",
      weights,
      all(math.isfinite(w) and w >= 0 for w in weights) and sum(weights) > 0,
      "empty (every level equally often) or one finite weight >= 0 per level, not all 0",
    )
  if t.ckpt_every % t.steps_per_dispatch:
    # Orbax saves on steps divisible by ckpt_every, and the step advances by steps_per_dispatch.
    raise ValueError(
      f"training.ckpt_every={t.ckpt_every} must be a multiple of training.steps_per_dispatch="
      f"{t.steps_per_dispatch}, or periodic checkpoints would be skipped."
    )
  _check(
    "data.resize", config.data.resize, config.data.resize in RESIZES, f"one of {', '.join(RESIZES)}"
  )
  for name, rate in (
    ("model.dropout", config.model.dropout),
    ("discriminator.dropout", config.discriminator.dropout),
  ):
    _check(name, rate, 0.0 <= rate < 1.0, "a rate in [0, 1)")
  if "optim" in config:
    o = config.optim
    for field in ("g_lr", "d_lr", "eps"):
      _check(f"optim.{field}", o[field], math.isfinite(o[field]) and o[field] > 0, "finite and > 0")
    for field in ("b1", "b2"):
      _check(f"optim.{field}", o[field], 0.0 <= o[field] < 1.0, "in [0, 1)")
    _check(
      "optim.warmup_steps",
      o.warmup_steps,
      _is_int(o.warmup_steps) and o.warmup_steps >= 0,
      "an integer >= 0",
    )
  if "loss" in config:
    l = config.loss
    _check("loss.d_noise_std", l.d_noise_std, l.d_noise_std >= 0, ">= 0")
    _check("loss.d_noise_decay", l.d_noise_decay, 0.0 < l.d_noise_decay <= 1.0, "in (0, 1]")
    _check(
      "loss.d_noise_decay_every",
      l.d_noise_decay_every,
      _is_int(l.d_noise_decay_every) and l.d_noise_decay_every >= 1,
      "an integer >= 1",
    )
  e = config.eval
  _check(
    "eval.num_samples",
    e.num_samples,
    _is_int(e.num_samples) and e.num_samples >= 2,
    "an integer >= 2 (FID needs a covariance)",
  )
  _check(
    "eval.batch_size", e.batch_size, _is_int(e.batch_size) and e.batch_size >= 1, "an integer >= 1"
  )
  _check(
    "eval.reference_num",
    e.reference_num,
    _is_int(e.reference_num) and e.reference_num >= 0,
    "an integer >= 0 (0 = the whole split)",
  )


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _check(name, value, ok, valid) -> None:
  if not ok:
    raise ValueError(f"{name}={value!r}; it must be {valid}.")


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
