"""Records the authors' networks' key names, shapes and outputs for the tiny test config.

Run once with torch and a clone of github.com/shadyabh/UDPM; writes tests/data/official_test.npz,
which holds only names, shapes and numbers (no code), so CI can check the converter and our
networks against their modules without having their code:

  python tools/make_official_fixture.py --udpm_repo=/path/to/UDPM
"""

import argparse
import json
import pathlib
import types

import numpy as np

from tools.parity_official import _their_modules, their_generator

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "official_test.npz"


def seeded_state_dict(shapes: dict, seed: int) -> dict:
  """Deterministic weights for every key (sorted order); filters keep their fixed values."""
  rng = np.random.default_rng(seed)
  return {
    k: (0.2 * rng.standard_normal(shape)).astype(np.float32) for k, shape in sorted(shapes.items())
  }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--udpm_repo", required=True)
  args = parser.parse_args()
  import torch

  import udpm_jax

  config = udpm_jax.configs.get_config("test")
  p, d = config.process, config.discriminator
  model_mod, disc_mod = _their_modules(args.udpm_repo)
  size, classes = config.data.image_size, config.data.num_classes
  gen = their_generator(model_mod, config)
  disc = disc_mod.get_disc(
    types.SimpleNamespace(
      img_size=size,
      diffusion_scale=p.scale,
      diffusion_steps=p.levels,
      disc_channels=d.base_channels,
      disc_dropout=[0.0],
      classes_num=classes,
      class_disc=True,
    )
  ).eval()
  out = {}
  for name, net, seed in (("generator", gen, 1), ("discriminator", disc, 2)):
    sd = net.state_dict()
    learn = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("resample_filter")}
    weights = seeded_state_dict(learn, seed)
    net.load_state_dict({**sd, **{k: torch.from_numpy(v) for k, v in weights.items()}})
    out[f"{name}_keys"] = np.array(json.dumps({k: list(v.shape) for k, v in sd.items()}))
  rng = np.random.default_rng(3)
  labels = np.array([3, 7])
  for level in range(1, p.levels + 1):
    n = size // p.scale**level
    x = rng.standard_normal((2, n, n, 3)).astype(np.float32)
    t = np.full((2,), (level - 0.5) / p.levels, np.float32)
    img = rng.standard_normal((4, 2 * n, 2 * n, 3)).astype(np.float32)
    with torch.no_grad():
      y = (
        gen(
          torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t), torch.from_numpy(labels)
        )
        .numpy()
        .transpose(0, 2, 3, 1)
      )
      logits = disc(
        torch.from_numpy(img.transpose(0, 3, 1, 2)),
        torch.from_numpy(np.full((4,), t[0])),
        torch.from_numpy(np.array([0, 1, 2, 9])),
      ).numpy()[:, 0]
    out.update({f"x{level}": x, f"y{level}": y, f"img{level}": img, f"logits{level}": logits})
  out["labels"] = labels
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
  main()
