"""AFHQv2 64², unconditional.

Command: python -m udpm_jax.main --config=configs/afhqv2_64.py --workdir=$WORKDIR \
           --config.data.path=afhqv2-64x64.zip
Expected: FID 7.10 after 600k steps (paper). Generator 65.41 M, discriminator 23.87 M.
"""

from udpm_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.update(source="zip", name="afhqv2_64", image_size=64, channels=3, num_classes=0)
  config.model.update(channel_mult=(1, 2, 2, 2), attn_resolutions=(16, 8, 4), dropout=0.1)
  config.discriminator.update(dropout=0.3, conditional=False)
  config.loss.update(r1_gamma=(0.1, 0.4, 0.8))
  return config
