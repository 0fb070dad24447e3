"""Tiny configuration for tests: a few real steps on 2 CPU cores (6 per-level programs, 11–17 s of
compile each at the default XLA optimisation level, then ~19 steps/s at batch 8).

Command: python -m udpm_jax.main --config=configs/test.py --workdir=/tmp/udpm_test
Data are synthetic (no download): the point is to exercise every code path, not to learn.
"""

from udpm_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.update(
    source="synthetic",
    name="synthetic",
    image_size=16,
    channels=3,
    num_classes=10,
    random_flip=True,
  )
  config.model.update(
    model_channels=16, channel_mult=(1, 2), channel_mult_emb=4, num_blocks=1, attn_resolutions=(4,)
  )
  config.discriminator.update(base_channels=16, dropout=0.0)
  config.loss.update(lpips=(0.0, 0.0, 0.0))
  config.optim.update(warmup_steps=2)
  config.training.update(
    batch_size=8,
    num_steps=6,
    compute_dtype="float32",
    log_every=2,
    ckpt_every=3,
    keep_checkpoints=2,
    sample_every=0,
  )
  config.eval.update(num_samples=16, batch_size=8)
  return config
