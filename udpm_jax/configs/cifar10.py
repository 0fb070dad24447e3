"""CIFAR10 32², class-conditional — the paper's main result.

Command (one host, all its GPUs):
  python -m udpm_jax.main --config=configs/cifar10.py --workdir=$WORKDIR
Expected: FID 6.86 (50k class-balanced samples) after 600k steps at 64 images per GPU (paper).
Generator 57.74 M parameters, discriminator 18.95 M.
"""

from udpm_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.update(name="cifar10", image_size=32, channels=3, num_classes=10)
  return config
