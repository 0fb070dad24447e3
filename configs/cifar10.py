from udpm_jax.configs.cifar10 import get_config  # noqa: F401  (so --config=configs/cifar10.py works)
