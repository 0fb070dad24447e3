"""FFHQ 64², unconditional.

Command: python -m udpm_jax.main --config=configs/ffhq64.py --workdir=$WORKDIR \
           --config.data.source=zip --config.data.path=ffhq-64x64.zip
(the EDM-style zip of 64×64 PNGs). Expected: FID 7.41 after 600k steps (paper).
Generator 65.41 M parameters, discriminator 23.87 M.
"""

from udpm_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.update(source="zip", name="ffhq64", image_size=64, channels=3, num_classes=0)
  config.model.update(channel_mult=(1, 2, 2, 2), attn_resolutions=(16, 8, 4), dropout=0.0)
  config.discriminator.update(dropout=0.2, conditional=False)
  config.loss.update(r1_gamma=(0.1, 0.4, 0.8))
  return config
