"""Compares our Flax networks with the authors' PyTorch modules on random weights (outside CI).

Their network file is NVIDIA's (CC BY-NC-SA), so it is not part of this project: point this script
at your own clone of github.com/shadyabh/UDPM. It builds their generator and discriminator with
random weights, converts the state_dicts with `udpm_jax.convert`, and prints the largest output
differences at every level.

  pip install torch==2.13.0   # CPU is enough
  python tools/parity_official.py --udpm_repo=/path/to/UDPM [--config=cifar10]
"""

import argparse
import sys
import types

import jax
import numpy as np


def _their_modules(repo):
  # Their EDM file imports torch_utils.persistence (a pickling helper) that the repo does not ship.
  persistence = types.ModuleType("torch_utils.persistence")
  persistence.persistent_class = lambda cls: cls
  sys.modules.setdefault("torch_utils", types.ModuleType("torch_utils")).persistence = persistence
  sys.modules["torch_utils.persistence"] = persistence
  sys.path.insert(0, repo)
  import discriminator
  import model

  return model, discriminator


def their_generator(model_mod, config):
  """Their UDPM_Net built with the settings of our `config` (eval mode)."""
  p, m = config.process, config.model
  return model_mod.UDPM_Net(
    in_shape=config.data.image_size // p.scale,
    in_channels=3,
    num_blocks_per_res=m.num_blocks,
    channel_mult=list(m.channel_mult),
    model_channels=m.model_channels,
    attn_resolutions=list(m.attn_resolutions),
    out_channels=3,
    classes_num=config.data.num_classes,
    net_type={"ncsnpp": "NCSN", "ddpmpp": "DDPM"}[m.arch],
    class_dropout_prob=0,
    dropout=m.dropout,
    sf=p.scale,
  ).eval()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--udpm_repo", required=True)
  parser.add_argument("--config", default="cifar10")
  parser.add_argument("--batch", type=int, default=4)
  args = parser.parse_args()
  jax.config.update("jax_default_matmul_precision", "highest")
  import torch

  import udpm_jax
  from udpm_jax import convert, models

  torch.manual_seed(0)
  config = udpm_jax.configs.get_config(args.config)
  p, d = config.process, config.discriminator
  model_mod, disc_mod = _their_modules(args.udpm_repo)
  size, classes = config.data.image_size, config.data.num_classes
  theirs = their_generator(model_mod, config)
  with torch.no_grad():  # their zero-ish init would hide errors in the last layers
    for prm in theirs.parameters():
      prm.add_(0.05 * torch.randn_like(prm))
  disc_args = types.SimpleNamespace(
    img_size=size,
    diffusion_scale=p.scale,
    diffusion_steps=p.levels,
    disc_channels=d.base_channels,
    disc_dropout=[d.dropout],
    classes_num=classes,
    class_disc=d.conditional,
  )
  their_d = disc_mod.get_disc(disc_args).eval()
  ours_g = convert.convert_generator_state_dict(
    {k: v.numpy() for k, v in theirs.state_dict().items()}, config
  )
  ours_d = convert.convert_discriminator_state_dict(
    {k: v.numpy() for k, v in their_d.state_dict().items()}, config
  )
  gen, disc = models.build_generator(config), models.build_discriminator(config)
  print(
    f"parameters: generator ours {models.count_params(ours_g):,} theirs "
    f"{sum(q.numel() for q in theirs.parameters()):,}; discriminator ours "
    f"{models.count_params(ours_d):,} theirs {sum(q.numel() for q in their_d.parameters()):,}"
  )
  rng = np.random.default_rng(0)
  b = args.batch
  labels = rng.integers(0, max(classes, 1), b)
  worst = 0.0
  for level in range(1, p.levels + 1):
    n = size // p.scale**level
    x = rng.standard_normal((b, n, n, 3)).astype(np.float32)
    t = np.full((b,), (level - 0.5) / p.levels, np.float32)
    with torch.no_grad():
      ref = (
        theirs(
          torch.from_numpy(x.transpose(0, 3, 1, 2)),
          torch.from_numpy(t),
          torch.from_numpy(labels) if classes else None,
        )
        .numpy()
        .transpose(0, 2, 3, 1)
      )
    out = np.asarray(gen.apply(ours_g, x, t, labels if classes else None))
    diff = float(np.abs(out - ref).max())
    worst = max(worst, diff)
    print(
      f"generator level {level}: input {n}x{n}, output scale {np.abs(ref).max():.3f}, "
      f"max |ours - theirs| = {diff:.2e}"
    )
    img = rng.standard_normal((b, n * p.scale, n * p.scale, 3)).astype(np.float32)
    with torch.no_grad():
      ref_d = their_d(
        torch.from_numpy(img.transpose(0, 3, 1, 2)),
        torch.from_numpy(t),
        torch.from_numpy(labels) if d.conditional else None,
      ).numpy()[:, 0]
    out_d = np.asarray(disc.apply(ours_d, img, t, labels if d.conditional else None))
    diff_d = float(np.abs(out_d - ref_d).max() / max(1.0, np.abs(ref_d).max()))
    worst = max(worst, diff_d)
    print(
      f"discriminator level {level}: input {n * p.scale}x{n * p.scale}, logits scale "
      f"{np.abs(ref_d).max():.3f}, max relative |ours - theirs| = {diff_d:.2e}"
    )
  print(f"worst: {worst:.2e}")


if __name__ == "__main__":
  main()
