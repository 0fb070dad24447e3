from udpm_jax.configs.afhqv2_64 import get_config  # noqa: F401  (so --config=configs/afhqv2_64.py works)
