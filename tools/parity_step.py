"""One training step of ours against the authors' PyTorch release, with every random draw shared.

Runs the release's own `UDPM.step_disc` and then `UDPM.step_SR` (github.com/shadyabh/UDPM, from a
clone given on the command line; their code is not part of this project) at each level l = 1, 2, 3,
each time from the same initial weights and fresh Adam states, and our `d_loss` / `g_loss`
(`train_step.d_loss`, `train_step.g_loss`) followed by our optimisers, with:

* identical weights: seeded numpy arrays for every key of their state_dicts (their resampling
  filters keep their fixed values; D's output layer scaled so that its logits are not saturated,
  see SCALES), loaded into their modules and converted with `udpm_jax.convert`;
* the same batch, labels and draws: the release's `torch.randint` (the level) and `torch.randn_like`
  (forward-process noise of x_l, D's instance noise on fake and real, and on G's prediction) are
  replaced during its steps by prepared standard normal arrays, which ours receive as `noise`;
* float32 on our side; the CIFAR10 process and loss weights: L1 (1, 1, 0), LPIPS (4, 4, 0),
  adversarial (0.2, 0.5, 1), R1 γ (0.025, 0.1, 0.4), D instance noise 0.4 (its value at step 0),
  inputs normalised by (Σw)^{l-1}; Adam(0.9, 0.999, 1e-8) with lr 1e-4 for G and D.

Deliberate departures from a CIFAR10 training run, the same on both sides:
* D's dropout is 0 (the run uses 0.4): random masks cannot be matched across frameworks.
* The learning rate is the post-warm-up 1e-4 (our `optim.warmup_steps=0`; their optimisers are
  created with lr 1e-4 as in train_DDP.py, whose loop would set lr·k/5000 at update k). Warm-up
  gives lr 0 at the first update on both sides, which would leave the weights unchanged.
* The release's `amp.GradScaler()` is used as released; without CUDA it disables itself (on a GPU
  it scales the loss by 2^16 and divides the gradients back, exact in binary floating point).

LPIPS: the release's `lpips` package (pip install lpips==0.1.4) builds torchvision's ImageNet
VGG16, a download; here the trunk is torchvision's VGG16 layout (built with torch.nn, so neither
torchvision nor a download is needed) and both trunk and heads are loaded with our LPIPS weights,
so both sides use the same numbers.

The reference is the release run in float64 (its networks, LPIPS, batch and draws; its schedule
constants stay float32): its own float32 run differs from that by up to ~1.4e-4 on the gradients
of a few GroupNorm scales, where the sum over pixels cancels. Our G step is checked seeing the
reference's updated D: the D updates differ in the entries whose gradient is float32 noise (see
`compare`), and a G step through our updated D carries that into G's adversarial gradient (on the
full CIFAR10 network up to ~4e-3 relative on a few G tensors); that chained variant is reported
too, as are ours and the release's float32 run against each other.

Reported per level: relative differences max|ours − theirs| / max|theirs| of the losses and of
every gradient and updated-weight tensor (the worst tensor), the weight updates themselves
(ours − initial vs theirs − initial, in units of lr), and our Adam applied to the reference
gradients against the reference's updated weights (the optimisers alone). With --write_fixture
(small network only) the reference is stored in tests/data/official_step.npz, which
tests/test_step_parity.py replays without torch or the clone. Exit status 1 when ours is off the
reference by more than 1e-4 (or, without --write_fixture, the stored values are outdated).

  pip install torch==2.13.0 lpips==0.1.4   # CPU is enough
  python tools/parity_step.py --udpm_repo=/path/to/UDPM [--config=small|cifar10] [--write_fixture]
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "official_step.npz"

# Settings of the comparison on top of configs/cifar10.py (see the module docstring).
COMMON = {
  "discriminator": {"dropout": 0.0},
  "training": {"compute_dtype": "float32"},
  "optim": {"warmup_steps": 0},
}
# The small network of the stored fixture: the CIFAR10 process, loss and D layout (4 D blocks),
# narrow widths; the generator keeps a down/up path and one attention resolution.
SMALL = {
  "model": {"model_channels": 8, "channel_mult": [1, 1], "num_blocks": 1, "attn_resolutions": [8]},
  "discriminator": {"base_channels": 4},
}
BATCH = 4  # the minibatch-stddev group of D
SEEDS = {"generator": 1, "discriminator": 2, "data": 3}
# D's output layer is scaled down so that its logits stay where softplus is not saturated at every
# level (with N(0, 1/fan_in) weights they reach ~300 at level 1, where the release's
# minibatch-stddev feature, summed over C·H·W, is large): a saturated softplus would leave G's
# adversarial term at exactly 0.
SCALES = {"generator": {}, "discriminator": {"out_lin.weight": 0.01}}
TOLERANCE = 1e-4


def parity_config(overrides: dict):
  """configs/cifar10.py with the given {section: {field: value}} overrides."""
  import udpm_jax

  config = udpm_jax.configs.get_config("cifar10")
  for section, values in overrides.items():
    config[section].update(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
  return config


def overrides_for(name: str) -> dict:
  if name not in ("small", "cifar10"):
    raise ValueError(f"--config={name!r}; valid: 'small', 'cifar10'.")
  out = {k: dict(v) for k, v in COMMON.items()}
  if name == "small":
    for section, values in SMALL.items():
      out.setdefault(section, {}).update(values)
  return out


def seeded_state_dict(shapes: dict, seed: int, fourier_scale: float, scales=None) -> dict:
  """Deterministic weights for every learnable key (sorted order, one numpy stream): matrices and
  kernels N(0, 1/fan_in), GroupNorm scales 1 + N(0, 0.1²), biases N(0, 0.1²), the generator's
  Fourier frequencies N(0, fourier_scale²); then keys in `scales` multiplied by their factor."""
  rng = np.random.default_rng(seed)
  out = {}
  for k, shape in sorted(shapes.items()):
    z = rng.standard_normal(shape)
    if k.endswith("freqs"):
      v = fourier_scale * z
    elif len(shape) >= 2:
      v = z / np.sqrt(np.prod(shape[1:]))
    elif "norm" in k.split(".")[-2] and k.endswith(".weight"):
      v = 1.0 + 0.1 * z
    else:
      v = 0.1 * z
    out[k] = (v * (scales or {}).get(k, 1.0)).astype(np.float32)
  return out


def full_state_dict(keys: dict, seed: int, config, scales=None) -> dict:
  """`seeded_state_dict` plus the fixed resampling filters of their modules (from the config)."""
  from udpm_jax.models import layers

  learn = {k: tuple(s) for k, s in keys.items() if not k.endswith("resample_filter")}
  sd = seeded_state_dict(learn, seed, config.model.fourier_scale, scales)
  for k, s in keys.items():
    if k.endswith("resample_filter"):
      taps = tuple(config.model.resample_filter) if s[-1] == 4 else (1, 1)
      sd[k] = layers.fir_filter(taps).reshape(s).astype(np.float32)
  return sd


def make_draws(config, seed: int) -> dict:
  """The batch, labels and every standard normal draw of the D and G steps at each level (NHWC)."""
  rng = np.random.default_rng(seed)
  n, c, s = config.data.image_size, config.data.channels, config.process.scale
  out = {
    "image": rng.uniform(-1, 1, (BATCH, n, n, c)).astype(np.float32),
    "label": rng.integers(0, config.data.num_classes, BATCH).astype(np.int32),
  }
  normal = lambda side: rng.standard_normal((BATCH, side, side, c)).astype(np.float32)
  for level in range(1, config.process.levels + 1):
    fine, coarse = n // s ** (level - 1), n // s**level
    out[f"{level}/d_x_l"] = normal(coarse)
    out[f"{level}/d_fake"] = normal(fine)
    out[f"{level}/d_real"] = normal(fine)
    out[f"{level}/g_x_l"] = normal(coarse)
    out[f"{level}/g_adv"] = normal(fine)
  return out


# ---- ours ----------------------------------------------------------------------------------------


def our_step(
  config, level: int, g_vars, d_vars, draws: dict, lpips_params, generator=True, d_for_g=None
):
  """Our D update then G update at `level`, with the draws. The G step sees our updated D, as in
  training, or the D params `d_for_g` when given (the reference's updated D: then the G step is
  compared on its own, without the D update's differences).

  Returns (metrics, d_grads, new d_params, g_grads, new g_params) as numpy trees (without the
  generator's entries when `generator` is False). Dropout keys are fixed; the compared networks
  have no dropout.
  """
  from udpm_jax import lpips as lpips_lib
  from udpm_jax import models
  from udpm_jax import train_step as ts

  gen, disc = models.build_generator(config), models.build_discriminator(config)
  g_tx, d_tx = ts.make_optimizers(config)
  spec = ts.StepSpec.from_config(config, gen, disc, g_tx, d_tx, lpips_lib.training_distance(config))
  state = ts.state_from_variables(g_vars, d_vars, g_tx, d_tx, jax.random.PRNGKey(0))
  lc = config.loss
  noise_std = ts.d_noise_std_at(spec, state.step)
  batch = {"image": jnp.asarray(draws["image"]), "label": jnp.asarray(draws["label"])}
  k_d, k_g = jax.random.split(jax.random.PRNGKey(0))
  d_noise = {k: draws[f"{level}/d_{k}"] for k in ("x_l", "fake", "real")}
  g_noise = {
    "x_l": draws[f"{level}/g_x_l"],
    "adv": draws[f"{level}/g_adv"] if lc.adv[level - 1] > 0 else None,
  }

  @jax.jit
  def d_step(state, batch, noise):
    grad_fn = jax.value_and_grad(functools.partial(ts.d_loss, spec, level), has_aux=True)
    (_, metrics), grads = grad_fn(state.d_params, state, batch, noise, noise_std, k_d)
    updates, _ = d_tx.update(grads, state.d_opt, state.d_params)
    return metrics, grads, optax.apply_updates(state.d_params, updates)

  @jax.jit
  def g_step(state, batch, noise, lpips_params):
    grad_fn = jax.value_and_grad(functools.partial(ts.g_loss, spec, level), has_aux=True)
    (_, metrics), grads = grad_fn(state.g_params, state, batch, noise, noise_std, lpips_params, k_g)
    updates, _ = g_tx.update(grads, state.g_opt, state.g_params)
    return metrics, grads, optax.apply_updates(state.g_params, updates)

  d_metrics, d_grads, new_d = d_step(state, batch, d_noise)
  if not generator:
    return ({k: float(v) for k, v in d_metrics.items()}, *jax.device_get((d_grads, new_d)))
  state = state.replace(d_params=new_d if d_for_g is None else d_for_g)
  g_metrics, g_grads, new_g = g_step(state, batch, g_noise, lpips_params)
  metrics = {k: float(v) for k, v in {**d_metrics, **g_metrics}.items()}
  # The release returns D's GAN terms without R1: the same quantity, for comparison.
  metrics["d_gan"] = metrics["d_loss"] - 0.5 * lc.r1_gamma[level - 1] * metrics["r1"]
  return (metrics, *jax.device_get((d_grads, new_d, g_grads, new_g)))


# ---- comparison ----------------------------------------------------------------------------------

SCALARS = ("d_loss", "d_gan", "r1", "d_real_logit", "d_fake_logit", "g_loss", "g_l1", "g_lpips")
SCALARS += ("g_adv",)
CHECKED = SCALARS + ("d_grads", "g_grads", "d_weights", "g_weights")  # ≤ TOLERANCE


def relative(a, b) -> float:
  """max|a − b| / max|b| (0 when both are exactly 0)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  err, scale = np.abs(a - b).max(), np.abs(b).max()
  if scale == 0:
    return 0.0 if err == 0 else float("inf")
  return float(err / scale)


def tree_relative(ours, theirs, fn=relative):
  """The worst per-tensor `fn` over two trees of the same structure, and its tensor's name."""
  flat = jax.tree_util.tree_flatten_with_path(ours)[0]
  other = jax.tree.leaves(theirs)
  assert len(flat) == len(other)
  worst, name = -1.0, ""
  for (path, a), b in zip(flat, other):
    r = fn(a, b)
    if r > worst:
      worst, name = r, "/".join(str(getattr(k, "key", k)) for k in path)
  return worst, name


def compare(config, ours, theirs, d_init, g_init) -> dict:
  """Per-quantity differences of one level: {name: (value, worst tensor)}.

  `ours` and `theirs` are (metrics, d_grads, new d, g_grads, new g) trees in our layout; d_init and
  g_init the initial params. Losses, gradients and updated weights: `relative` (the worst tensor).
  Updates ('*_update'): max |(ours − init) − (theirs − init)| / lr.

  Updated weights and updates leave out the entries whose gradient is nonzero but below
  `noise_floor(config)` in both implementations ('*_noise_floor' counts them; their gradients are
  compared with the rest): Adam's first step moves a weight by lr·g/(|g| + ε), which turns float32
  rounding noise in a gradient that is 0 in exact arithmetic into a move of up to ~lr, of either
  sign. The attention key biases are such entries (softmax ignores a common shift of the logits).
  """
  out = {k: (relative(ours[0][k], theirs[0][k]), "") for k in SCALARS}
  out["d_grads"] = tree_relative(ours[1], theirs[1])
  out["g_grads"] = tree_relative(ours[3], theirs[3])
  floor = noise_floor(config)
  for net, gi, init, lr in (
    ("d", 1, d_init, config.optim.d_lr),
    ("g", 3, g_init, config.optim.g_lr),
  ):
    named = jax.tree_util.tree_flatten_with_path(init)[0]
    leaves = [jax.tree.leaves(x) for x in (ours[gi], theirs[gi], ours[gi + 1], theirs[gi + 1])]
    weights, update, masked = (-1.0, ""), (-1.0, ""), 0
    for (path, w0), g_a, g_b, new_a, new_b in zip(named, *leaves):
      name = "/".join(str(getattr(k, "key", k)) for k in path)
      mag = np.maximum(np.abs(g_a), np.abs(g_b))
      noise = (mag > 0) & (mag < floor)
      masked += int(noise.sum())
      new_a, new_b, w0 = (np.asarray(x, np.float64) for x in (new_a, new_b, w0))
      err = np.where(noise, 0.0, np.abs(new_a - new_b))
      err_step = np.where(noise, 0.0, np.abs((new_a - w0) - (new_b - w0))) / lr
      weights = max(weights, (float(err.max() / np.abs(new_b).max()), name))
      update = max(update, (float(err_step.max()), name))
    out[f"{net}_weights"], out[f"{net}_update"] = weights, update
    out[f"{net}_noise_floor"] = (masked, "")
  return out


def noise_floor(config) -> float:
  """Gradient magnitude below which Adam's first update is rounding noise: 10 ε."""
  return 10 * config.optim.eps


def adam_check(config, theirs, d_init, g_init) -> dict:
  """Our optimisers (train_step.make_optimizers) applied to their gradients vs their updated
  weights, every entry: {'d_adam' | 'g_adam': (relative difference, worst tensor)}."""
  from udpm_jax import train_step as ts

  g_tx, d_tx = ts.make_optimizers(config)
  out = {}
  for net, tx, gi, init in (("d", d_tx, 1, d_init), ("g", g_tx, 3, g_init)):
    grads = jax.tree.map(lambda g: np.asarray(g, np.float32), theirs[gi])
    updates, _ = tx.update(grads, tx.init(init), init)
    out[f"{net}_adam"] = tree_relative(optax.apply_updates(init, updates), theirs[gi + 1])
  return out


# ---- theirs --------------------------------------------------------------------------------------

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _vgg16(pretrained=False, **_):
  """torchvision.models.vgg16's `features` layout, untrained (weights are loaded afterwards)."""
  import torch

  layers, c = [], 3
  for v in _VGG16:
    if v == "M":
      layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers += [torch.nn.Conv2d(c, v, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True)]
      c = v
  return types.SimpleNamespace(features=torch.nn.Sequential(*layers))


def _import_release(repo):
  """Their model, discriminator and UDPM modules, with lpips' VGG16 trunk built locally."""
  from tools.parity_official import _their_modules

  try:
    import torchvision  # noqa: F401
  except Exception:  # absent, or a build for another torch: lpips only needs `models.vgg16`
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
    stub = types.ModuleType("torchvision")
    stub.models = types.SimpleNamespace(vgg16=_vgg16)
    sys.modules["torchvision"] = stub
  import lpips.pretrained_networks

  lpips.pretrained_networks.tv = types.SimpleNamespace(vgg16=_vgg16)
  model_mod, disc_mod = _their_modules(repo)
  import UDPM as udpm_mod

  return model_mod, disc_mod, udpm_mod


def _load_lpips_weights(percep, lpips_params):
  """Our LPIPS weights (VGG16_0/Conv_i, NetLinLayer_k) into the lpips package's module."""
  import torch

  feature_index, idx = [], 0  # the index in torchvision's `features` of each conv
  for v in _VGG16:
    feature_index += [] if v == "M" else [idx]
    idx += 1 if v == "M" else 2  # conv, ReLU
  slices = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]
  sd = {}
  for i, f in enumerate(feature_index):
    s = next(j for j, (lo, hi) in enumerate(slices) if lo <= f < hi) + 1
    conv = lpips_params["VGG16_0"][f"Conv_{i}"]
    sd[f"net.slice{s}.{f}.weight"] = np.asarray(conv["kernel"]).transpose(3, 2, 0, 1)
    sd[f"net.slice{s}.{f}.bias"] = np.asarray(conv["bias"])
  bundled = {}
  for k in range(5):
    name = f"lin{k}.model.1.weight"
    bundled[name] = percep.state_dict()[name].numpy().copy()
    sd[name] = np.asarray(lpips_params[f"NetLinLayer_{k}"]["kernel"]).transpose(3, 2, 0, 1)
  current = percep.state_dict()
  assert set(sd) <= set(current), set(sd) - set(current)
  percep.load_state_dict(
    {**current, **{k: torch.from_numpy(np.array(v, np.float32)) for k, v in sd.items()}}
  )
  return max(float(np.abs(bundled[k] - sd[k]).max()) for k in bundled)


class _Draws:
  """Serves the release's torch.randint (the level) and torch.randn_like calls from arrays."""

  def __init__(self, torch, levels, level, normals):
    self.torch, self.levels, self.level, self.normals = torch, levels, level, list(normals)

  def randint(self, *args, **kwargs):
    low, high = kwargs.get("low", args[0] if args else None), kwargs.get("high")
    assert (low, high, tuple(kwargs["size"])) == (1, self.levels + 1, (1,)), (args, kwargs)
    return self.torch.tensor([self.level], device=kwargs.get("device"))

  def randn_like(self, x, **_):
    arr = self.torch.from_numpy(self.normals.pop(0).transpose(0, 3, 1, 2).copy())
    assert arr.shape == x.shape, (arr.shape, x.shape)
    return arr.to(dtype=x.dtype, device=x.device)

  def __enter__(self):
    self.saved = self.torch.randint, self.torch.randn_like
    self.torch.randint, self.torch.randn_like = self.randint, self.randn_like
    return self

  def __exit__(self, *exc):
    self.torch.randint, self.torch.randn_like = self.saved
    if exc[0] is None:
      assert not self.normals, f"{len(self.normals)} prepared draws were not used"


def _release_args(config, torch):
  p, lc, d = config.process, config.loss, config.discriminator
  L = p.levels
  return argparse.Namespace(
    img_size=config.data.image_size,
    diffusion_scale=p.scale,
    diffusion_steps=L,
    w_norm_type=p.kernel_norm,
    alphas=list(p.alphas),
    sigmas=list(p.sigmas),
    l1_weight=list(lc.l1),
    lpips_weight=list(lc.lpips),
    lpips_pow=2.0,
    disc_weight=list(lc.adv),
    disc_grad_pen=list(lc.r1_gamma),
    noisy_disc_std=[lc.d_noise_std] * L,
    disc_loss_type="noisy",
    disc_dropout=[d.dropout],
    disc_channels=d.base_channels,
    normalize_loss_inp=lc.normalize_inputs,
    upsample_disc_inp=False,
    use_amp=False,
    classes_num=config.data.num_classes,
    class_disc=d.conditional,
    save_inter=False,
    device_gpu=torch.device("cpu"),
  )


class Release:
  """The release's networks, UDPM object and optimisers at given weights."""

  def __init__(self, repo, config, lpips_params):
    import torch
    from torch.cuda import amp

    from tools.parity_official import their_generator

    self.torch, self.config = torch, config
    model_mod, disc_mod, udpm_mod = _import_release(repo)
    self.args = _release_args(config, torch)
    self.udpm = udpm_mod.UDPM(config=self.args, device=torch.device("cpu"))
    self.lins_vs_bundled = _load_lpips_weights(self.udpm.percep_loss, lpips_params)
    self.gen = their_generator(model_mod, config)
    self.disc = disc_mod.get_disc(self.args)
    self.scaler = amp.GradScaler()  # as train_DDP.py creates it (disabled without CUDA)

  def state_dicts(self):
    return (
      {k: v.numpy().copy() for k, v in self.gen.state_dict().items()},
      {k: v.numpy().copy() for k, v in self.disc.state_dict().items()},
    )

  def step(self, level, g_sd, d_sd, draws, float64=False):
    """step_disc then step_SR at `level` from the given weights; results in their layout.

    `float64`: networks, LPIPS, batch and draws in float64 (their schedule constants stay float32).
    """
    torch, cfg = self.torch, self.config
    L = cfg.process.levels
    dtype = torch.float64 if float64 else torch.float32
    for net, sd in ((self.gen, g_sd), (self.disc, d_sd)):
      net.to(dtype).load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    self.udpm.percep_loss.to(dtype)
    opt_g = torch.optim.Adam(self.gen.parameters(), lr=cfg.optim.g_lr)
    opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.optim.d_lr)
    assert opt_g.defaults["betas"] == (cfg.optim.b1, cfg.optim.b2)
    assert opt_g.defaults["eps"] == cfg.optim.eps
    grads, logits, r1_grads, lpips_vals = {}, [], [], []

    def record_grads(net, tag):
      names = {id(p): n for n, p in net.named_parameters()}

      def hook(opt, *_):
        grads[tag] = {
          names[id(p)]: p.grad.detach().numpy().copy()
          for group in opt.param_groups
          for p in group["params"]
          if p.grad is not None
        }

      return hook

    hooks = [
      opt_d.register_step_pre_hook(record_grads(self.disc, "d")),
      opt_g.register_step_pre_hook(record_grads(self.gen, "g")),
      self.disc.register_forward_hook(lambda m, i, o: logits.append(o.detach().numpy().copy())),
      self.udpm.percep_loss.register_forward_hook(
        lambda m, i, o: lpips_vals.append(o.detach().numpy().copy())
      ),
    ]
    autograd_grad = torch.autograd.grad

    def recording_grad(*args, **kwargs):
      out = autograd_grad(*args, **kwargs)
      r1_grads.append(out[0].detach().numpy().copy())
      return out

    x0 = torch.from_numpy(draws["image"].transpose(0, 3, 1, 2).copy()).to(dtype)
    cl = torch.from_numpy(draws["label"].astype(np.int64))
    d_normals = [draws[f"{level}/d_x_l"], draws[f"{level}/d_fake"], draws[f"{level}/d_real"]]
    g_normals = [draws[f"{level}/g_x_l"]]
    if cfg.loss.adv[level - 1] > 0:
      g_normals.append(draws[f"{level}/g_adv"])
    try:
      torch.autograd.grad = recording_grad
      with _Draws(torch, L, level, d_normals):
        d_gan = self.udpm.step_disc(self.gen, x0, self.scaler, opt_d, self.disc, cl=cl)
      torch.autograd.grad = autograd_grad
      new_d = {k: v.numpy().copy() for k, v in self.disc.state_dict().items()}
      with _Draws(torch, L, level, g_normals):
        l1, adv = self.udpm.step_SR(self.gen, x0, self.scaler, opt_g, disc=self.disc, cl=cl)
      new_g = {k: v.numpy().copy() for k, v in self.gen.state_dict().items()}
    finally:
      torch.autograd.grad = autograd_grad
      for h in hooks:
        h.remove()
    lc = cfg.loss
    gamma = lc.r1_gamma[level - 1]
    w1, wp, wa = lc.l1[level - 1], lc.lpips[level - 1], lc.adv[level - 1]
    r1 = float(np.mean(np.sum(r1_grads[0].reshape(BATCH, -1).astype(np.float64) ** 2, axis=1)))
    lp = float(np.mean(lpips_vals[0])) if lpips_vals else 0.0
    l1, adv, d_gan = (
      float(v.detach()) if hasattr(v, "detach") else float(v) for v in (l1, adv, d_gan)
    )
    metrics = {
      "d_gan": d_gan,
      "r1": r1,
      "d_loss": d_gan + 0.5 * gamma * r1,
      "d_fake_logit": float(logits[0].mean()),
      "d_real_logit": float(logits[1].mean()),
      "g_l1": l1,
      "g_lpips": lp,
      "g_adv": adv,
      "g_loss": w1 * l1 + wp * lp + wa * adv,
    }
    assert len(logits) == 3 and len(r1_grads) == (1 if gamma > 0 else 0)
    return metrics, grads["d"], new_d, grads["g"], new_g


def to_ours(config, metrics, d_grads, new_d, g_grads, new_g, g_sd, d_sd):
  """Their per-key results as our parameter trees (through udpm_jax.convert)."""
  from udpm_jax import convert

  def conv(fn, arrays, ref):
    # Buffers (resampling filters, Fourier frequencies) have no gradient: take the reference's.
    return fn({**ref, **arrays}, config)["params"]

  return (
    metrics,
    conv(convert.convert_discriminator_state_dict, d_grads, d_sd),
    conv(convert.convert_discriminator_state_dict, new_d, d_sd),
    conv(convert.convert_generator_state_dict, g_grads, g_sd),
    conv(convert.convert_generator_state_dict, new_g, g_sd),
  )


# ---- fixture -------------------------------------------------------------------------------------


def flat_params(tree, dtype=np.float32) -> np.ndarray:
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)]).astype(dtype)


def unflat_params(vec, like):
  leaves, treedef = jax.tree.flatten(like)
  out, i = [], 0
  for leaf in leaves:
    n = int(np.prod(leaf.shape))
    out.append(np.asarray(vec[i : i + n], np.float32).reshape(leaf.shape))
    i += n
  assert i == len(vec)
  return jax.tree.unflatten(treedef, out)


def fixture_arrays(config, level, theirs, d_init, g_init) -> dict:
  """The release's results of one level, flattened in our parameter order. Updated weights are
  stored as (new − initial)/lr in float16: every value lies in [−1, 1] on Adam's first step, so
  the stored weights are exact to 2^-12·lr (2.5e-8 for lr 1e-4), far inside the tolerance."""
  metrics, d_grads, new_d, g_grads, new_g = theirs
  out = {f"{level}/{k}": np.float64(metrics[k]) for k in SCALARS}
  for name, tree, init, lr in (
    ("d_update", new_d, d_init, config.optim.d_lr),
    ("g_update", new_g, g_init, config.optim.g_lr),
  ):
    step = (flat_params(tree, np.float64) - flat_params(init, np.float64)) / lr
    out[f"{level}/{name}"] = step.astype(np.float16)
  out[f"{level}/d_grads"] = flat_params(d_grads)
  out[f"{level}/g_grads"] = flat_params(g_grads)
  return out


def from_fixture(config, fx, level, d_init, g_init):
  """`fixture_arrays` read back: (metrics, d_grads, new d, g_grads, new g) in our layout."""
  metrics = {k: float(fx[f"{level}/{k}"]) for k in SCALARS}

  def updated(name, init, lr):
    step = fx[f"{level}/{name}"].astype(np.float64) * lr
    return unflat_params(flat_params(init, np.float64) + step, init)

  return (
    metrics,
    unflat_params(fx[f"{level}/d_grads"], d_init),
    updated("d_update", d_init, config.optim.d_lr),
    unflat_params(fx[f"{level}/g_grads"], g_init),
    updated("g_update", g_init, config.optim.g_lr),
  )


def report(label, diffs):
  worst_loss = max(SCALARS, key=lambda k: diffs[k][0])
  print(
    f"{label}: losses {diffs[worst_loss][0]:.2e} ({worst_loss}) | "
    f"D grads {diffs['d_grads'][0]:.2e} ({diffs['d_grads'][1]}) | "
    f"G grads {diffs['g_grads'][0]:.2e} ({diffs['g_grads'][1]}) | "
    f"D weights {diffs['d_weights'][0]:.2e} | G weights {diffs['g_weights'][0]:.2e} | "
    f"updates/lr D {diffs['d_update'][0]:.1e}, G {diffs['g_update'][0]:.1e} | "
    f"noise-floor gradients left out of the weights D {diffs['d_noise_floor'][0]}, "
    f"G {diffs['g_noise_floor'][0]}"
  )
  print("    " + ", ".join(f"{k} {diffs[k][0]:.1e}" for k in SCALARS))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--udpm_repo", required=True, help="a clone of github.com/shadyabh/UDPM")
  parser.add_argument("--config", default="small", help="'small' (the fixture's) or 'cifar10'")
  parser.add_argument("--lpips_weights", default="", help="lpips_vgg16.npz; '' = cached download")
  parser.add_argument("--write_fixture", action="store_true")
  args = parser.parse_args()
  jax.config.update("jax_default_matmul_precision", "highest")
  from udpm_jax import convert
  from udpm_jax import lpips as lpips_lib

  overrides = overrides_for(args.config)
  config = parity_config(overrides)
  lpips_params = lpips_lib.load_params(args.lpips_weights or None)
  release = Release(args.udpm_repo, config, lpips_params)
  print(f"LPIPS heads: bundled vgg.pth vs ours, max |diff| = {release.lins_vs_bundled:.1e}")
  g_ref, d_ref = release.state_dicts()
  keys = {
    "generator": {k: list(v.shape) for k, v in g_ref.items()},
    "discriminator": {k: list(v.shape) for k, v in d_ref.items()},
  }
  g_sd = full_state_dict(keys["generator"], SEEDS["generator"], config, SCALES["generator"])
  d_sd = full_state_dict(
    keys["discriminator"], SEEDS["discriminator"], config, SCALES["discriminator"]
  )
  for ref, sd in ((g_ref, g_sd), (d_ref, d_sd)):
    for k, v in ref.items():  # their fixed filters are the ones we construct
      if k.endswith("resample_filter"):
        np.testing.assert_array_equal(v, sd[k], err_msg=k)
  g_vars = convert.convert_generator_state_dict(g_sd, config)
  d_vars = convert.convert_discriminator_state_dict(d_sd, config)
  inits = d_vars["params"], g_vars["params"]
  n_g = sum(v.size for k, v in g_sd.items() if not k.endswith(("resample_filter", "freqs")))
  n_d = sum(v.size for k, v in d_sd.items() if not k.endswith("resample_filter"))
  print(f"config {args.config}: generator {n_g:,} parameters, discriminator {n_d:,}")
  draws = make_draws(config, SEEDS["data"])
  fixture = {
    "overrides": np.array(json.dumps(overrides)),
    "keys": np.array(json.dumps(keys)),
    "seeds": np.array(json.dumps(SEEDS)),
    "scales": np.array(json.dumps(SCALES)),
    **{f"draw/{k}": v for k, v in draws.items()},
  }
  stored = None
  if args.config == "small" and not args.write_fixture and FIXTURE.exists():
    stored = np.load(FIXTURE)
    for k, v in draws.items():
      np.testing.assert_array_equal(stored[f"draw/{k}"], v, err_msg=f"stored draw {k}")
  worst, worst_stored = 0.0, 0.0
  for level in range(1, config.process.levels + 1):
    t0 = time.time()
    single = to_ours(config, *release.step(level, g_sd, d_sd, draws), g_sd, d_sd)
    t1 = time.time()
    ref = to_ours(config, *release.step(level, g_sd, d_sd, draws, float64=True), g_sd, d_sd)
    t2 = time.time()
    ours = our_step(config, level, g_vars, d_vars, draws, lpips_params, d_for_g=ref[2])
    t3 = time.time()
    chained = our_step(config, level, g_vars, d_vars, draws, lpips_params)
    diffs = compare(config, ours, ref, *inits)
    report(f"level {level}, ours vs release float64", diffs)
    report(
      f"level {level}, ours with G seeing our updated D vs release float64",
      compare(config, chained, ref, *inits),
    )
    report(f"level {level}, ours vs release float32", compare(config, chained, single, *inits))
    report(f"level {level}, release float32 vs float64", compare(config, single, ref, *inits))
    adam = adam_check(config, ref, *inits)
    print(
      f"    our Adam on the reference gradients vs its updated weights: D "
      f"{adam['d_adam'][0]:.1e}, G {adam['g_adam'][0]:.1e} (all entries)"
    )
    print(
      f"    (release float32 {t1 - t0:.1f} s, float64 {t2 - t1:.1f} s; "
      f"ours {t3 - t2:.1f} s with compilation)"
    )
    worst = max(worst, *(diffs[k][0] for k in CHECKED))
    fixture.update(fixture_arrays(config, level, ref, *inits))
    if stored is not None:  # the release now vs the values CI replays
      again = from_fixture(config, stored, level, *inits)
      diffs = compare(config, ref, again, *inits)
      worst_stored = max(worst_stored, *(diffs[k][0] for k in CHECKED))
  print(f"worst relative difference to the reference (losses, gradients, weights): {worst:.2e}")
  if stored is not None:
    verdict = "current" if worst_stored <= 1e-5 else "OUTDATED (rerun with --write_fixture)"
    print(f"stored fixture: {verdict} (release vs stored: {worst_stored:.1e})")
    if worst_stored > 1e-5:
      raise SystemExit(1)
  if args.write_fixture:
    if args.config != "small":
      raise SystemExit("--write_fixture is for the small network only (the fixture stays small).")
    np.savez_compressed(FIXTURE, **fixture)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size:,} bytes)")
  if worst > TOLERANCE:
    raise SystemExit(f"parity FAILED: {worst:.2e} > {TOLERANCE}")


if __name__ == "__main__":
  main()
