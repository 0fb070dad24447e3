from udpm_jax.configs.ffhq64 import get_config  # noqa: F401  (so --config=configs/ffhq64.py works)
