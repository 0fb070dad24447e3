# ---
# jupyter:
#   jupytext:
#     text_representation:
#       format_name: percent
#   kernelspec:
#     name: python3
# ---

# %% [markdown]
# # Sampling a trained UDPM
#
# Restore a run's EMA weights, sample a grid, walk between latents, perturb one level, and
# upsample low-resolution images. Open it as a notebook with `jupytext --to notebook`, or run it
# as a script: `UDPM_WORKDIR=/tmp/udpm_demo python examples/sample.py` (figures go to
# `$UDPM_EXAMPLE_OUT`, default `<workdir>/example`). CI runs it against a tiny trained run.

# %%
import os

import jax
import numpy as np

import udpm_jax
from udpm_jax import image_io, sampling, super_resolution
from udpm_jax import process as proc

workdir = os.environ.get("UDPM_WORKDIR", "/tmp/udpm_demo")
out = os.environ.get("UDPM_EXAMPLE_OUT", os.path.join(workdir, "example"))
os.makedirs(out, exist_ok=True)

# %% The three lines a notebook needs.
config, variables = udpm_jax.checkpoint.restore_params(workdir)  # EMA weights, latest step
sample = sampling.make_sample_fn(config)  # jitted, data-parallel over all devices
images = sample(variables, jax.random.PRNGKey(0), num=16)  # (16, N, N, C) in [-1, 1]
image_io.save_png_grid(os.path.join(out, "grid.png"), np.asarray(images), nrow=4)

# %% [markdown]
# Every level of 8 samples: x_L (noise-sized) on the left, x_0 on the right.

# %%
levels = sample(variables, jax.random.PRNGKey(0), num=8, return_levels=True)
image_io.save_png(
  os.path.join(out, "levels.png"),
  np.rint(image_io.levels_grid(levels, config.data.image_size) * 255).astype(np.uint8),
)

# %% [markdown]
# Latents: the per-level Gaussian maps. The same latents always decode to the same images, so
# interpolating latents walks between images (variance-preserving mix).

# %%
sched = proc.Schedule.from_config(config)
channels = config.data.channels
lat_a = sampling.sample_latents(sched, jax.random.PRNGKey(1), 4, channels)
lat_b = sampling.sample_latents(sched, jax.random.PRNGKey(2), 4, channels)
deltas = np.linspace(1.0, 0.0, 6)
walk = sampling.decode(sample, variables, sampling.interpolate(lat_a, lat_b, deltas=deltas))
# Batch order is (delta, sample): show one row per sample, one column per delta.
walk = np.asarray(walk).reshape(len(deltas), 4, *walk.shape[1:]).transpose(1, 0, 2, 3, 4)
image_io.save_png_grid(
  os.path.join(out, "interpolation.png"), walk.reshape(-1, *walk.shape[2:]), nrow=len(deltas)
)
end_a = sampling.decode(sample, variables, lat_a)
print("interpolation endpoint equals image A:", bool(np.allclose(walk[:, 0], end_a, atol=1e-5)))

# %% [markdown]
# Perturb one level: e_l ← γ e_l + √(1−γ²) e'. Coarse levels change the layout, fine levels the
# details; γ = 1 changes nothing.

# %%
rows = []
for level in range(1, sched.levels + 1):
  for gamma in (1.0, 0.8, 0.5, 0.0):
    lat = sampling.perturb(sched, lat_a, jax.random.PRNGKey(10 + level), level, gamma)
    rows.append(np.asarray(sampling.decode(sample, variables, lat))[:1])
image_io.save_png_grid(os.path.join(out, "perturb.png"), np.concatenate(rows), nrow=4)

# %% [markdown]
# Super-resolution: start the reverse chain at level 1 from a 2× smaller image (here H x_0 of
# generated images, in image units) and compare with nearest-neighbour and bicubic resizing.

# %%
upsample = sampling.make_upsample_fn(config, from_level=1)
low = super_resolution.low_resolution(config, images, 1)
high = upsample(variables, jax.random.PRNGKey(3), low)
classical = super_resolution.classical_upsampling(low, config.data.image_size)
for name, x in {"udpm": high, **classical}.items():
  print(
    f"{name:8s} PSNR vs the source images: {float(np.mean(super_resolution.psnr(x, images))):.2f} dB"
  )
image_io.save_png_grid(
  os.path.join(out, "superres.png"),
  np.concatenate(
    [np.asarray(classical["nearest"][:4]), np.asarray(high[:4]), np.asarray(images[:4])]
  ),
  nrow=4,
)
print("wrote", sorted(os.listdir(out)))
