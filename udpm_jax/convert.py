"""Loading the authors' PyTorch checkpoints (github.com/shadyabh/UDPM) into our Flax networks.

Their files: `model_ema_state_<suffix>.pt` holds the EMA generator's state_dict (keys `net.…`);
`model_state_<suffix>.pt` holds {'model', 'discriminator', 'optimizer', …}. Both are read with the
restricted reader of `torch_pickle` (no torch needed, no code executed).

Name mapping: our module `enc_16_block0/attn/qkv/conv` is their `net.enc.16x16_block0.qkv`; convs
go OIHW → HWIO, linears (out, in) → (in, out), GroupNorm weight → scale. Their fixed resampling
filters are buffers; we check them against our configuration instead of loading them.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from flax import traverse_util

from udpm_jax import models, torch_pickle
from udpm_jax.models import layers


class ConversionError(ValueError):
  """A state_dict that does not fit the configured network."""


_ATTN = {"norm": "norm2", "qkv": "qkv", "proj": "proj"}


def _module_name(name: str, prefix: str) -> str:
  m = re.fullmatch(r"(enc|dec)_(\d+)_(.+)", name)
  if m:
    return f"{prefix}{m[1]}.{m[2]}x{m[2]}_{m[3]}"
  m = re.fullmatch(r"block(\d+)", name)
  if m:
    return f"{prefix}body.{m[1]}"
  return prefix + {"stem": "conv0", "out": "out_lin"}.get(name, name)


def _torch_key(path: tuple[str, ...], prefix: str) -> str:
  """Our variable path (collection, module, …, leaf) → their state_dict key."""
  collection, *mods, leaf = path
  if collection == "buffers":
    return f"{prefix}map_noise.freqs"
  parts = [_module_name(mods[0], prefix)]
  rest = [m for m in mods[1:] if m != "conv"]  # our Conv wraps Conv2D as 'conv'
  if rest and rest[0] == "attn":
    rest = [_ATTN[rest[1]]]
  parts += rest
  suffix = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
  return ".".join(parts + [suffix])


def _to_ours(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:  # OIHW → HWIO
    value = value.transpose(2, 3, 1, 0)
  elif value.ndim == 2:  # Linear (out, in) → (in, out)
    value = value.T
  return value


def _to_theirs(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if value.ndim == 2:
    return value.T
  return value


def _convert(state_dict, abstract_vars, prefix, what, check_buffers):
  state_dict = {k: np.asarray(v) for k, v in state_dict.items()}
  flat = jax.tree_util.tree_flatten_with_path(abstract_vars)[0]
  used, leaves = set(), {}
  for keypath, spec in flat:
    path = tuple(k.key for k in keypath)
    key = _torch_key(path, prefix)
    if key not in state_dict:
      raise ConversionError(
        f"The {what} state_dict has no key {key!r} (needed for our "
        f"{'/'.join(path)} of shape {tuple(spec.shape)}). Is the config the "
        "one the checkpoint was trained with?"
      )
    value = _to_ours(state_dict[key])
    if value.shape != tuple(spec.shape):
      raise ConversionError(
        f"{what} key {key!r} has shape {state_dict[key].shape}, which maps to {value.shape}; "
        f"our {'/'.join(path)} expects {tuple(spec.shape)}. Check the config (channels, "
        "classes, channel_mult, attention resolutions)."
      )
    leaves[path] = value.astype(np.float32)
    used.add(key)
  buffers = {k for k in state_dict if k.endswith("resample_filter")}
  check_buffers(state_dict, buffers)
  extra = sorted(set(state_dict) - used - buffers)
  if extra:
    raise ConversionError(
      f"The {what} state_dict has keys our network does not use: "
      f"{extra[:8]}{' …' if len(extra) > 8 else ''}. Is the config right?"
    )
  return traverse_util.unflatten_dict(leaves)


def _filter_checker(taps, what):
  def check(state_dict, keys):
    expect = layers.fir_filter(taps)
    for k in keys:
      f = state_dict[k].reshape(state_dict[k].shape[-2:])
      if f.shape != expect.shape or not np.allclose(f, expect):
        raise ConversionError(
          f"{what} buffer {k} is the resampling filter {f.tolist()}, but the "
          f"config uses taps {list(taps)}: wrong model.arch/resample_filter?"
        )

  return check


def _strip(state_dict, prefix="module."):
  return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def convert_generator_state_dict(state_dict, config) -> dict:
  """Their UDPM_Net state_dict (keys `net.…`) → our generator variables {'params', 'buffers'}."""
  abstract = jax.eval_shape(lambda k: models.init_generator(config, k), jax.random.PRNGKey(0))
  taps = models.build_generator(config).resample_taps
  return _convert(
    _strip(state_dict), abstract, "net.", "generator", _filter_checker(taps, "generator")
  )


def convert_discriminator_state_dict(state_dict, config) -> dict:
  """Their DDGAN_Discriminator state_dict → our discriminator variables {'params'}."""
  abstract = jax.eval_shape(lambda k: models.init_discriminator(config, k), jax.random.PRNGKey(0))
  return _convert(
    _strip(state_dict), abstract, "", "discriminator", _filter_checker((1, 1), "discriminator")
  )


def generator_to_state_dict(variables) -> dict[str, np.ndarray]:
  """The inverse mapping (our variables → their key names and layouts), for tests and export."""
  flat = jax.tree_util.tree_flatten_with_path(variables)[0]
  return {_torch_key(tuple(k.key for k in kp), "net."): _to_theirs(np.asarray(v)) for kp, v in flat}


def discriminator_to_state_dict(variables) -> dict[str, np.ndarray]:
  flat = jax.tree_util.tree_flatten_with_path(variables)[0]
  return {_torch_key(tuple(k.key for k in kp), ""): _to_theirs(np.asarray(v)) for kp, v in flat}


def load_official_checkpoint(path, config, which: str = "generator") -> dict:
  """Reads one of the authors' .pt files and returns our variables.

  Args:
    path: `model_ema_state_*.pt` (EMA generator) or `model_state_*.pt` (training state).
    config: our config matching their run (e.g. `get_config('cifar10')`).
    which: 'generator' or 'discriminator' (the latter only in training-state files).

  Returns:
    Variables for `build_generator(config).apply` (or the discriminator's).
  """
  tree = torch_pickle.load_pickle_tree(path)
  if which == "generator":
    sd = tree["model"] if isinstance(tree, dict) and "model" in tree else tree
    return convert_generator_state_dict(torch_pickle.flatten(sd), config)
  if which == "discriminator":
    if not (isinstance(tree, dict) and tree.get("discriminator") is not None):
      raise ConversionError(
        f"{path} holds no discriminator (only training-state files model_state_*.pt do)."
      )
    return convert_discriminator_state_dict(torch_pickle.flatten(tree["discriminator"]), config)
  raise ValueError(f"which={which!r}; valid: 'generator', 'discriminator'.")
