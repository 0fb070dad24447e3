from udpm_jax.configs.test import get_config  # noqa: F401  (so --config=configs/test.py works)
