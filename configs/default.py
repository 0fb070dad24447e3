from udpm_jax.configs.default import get_config  # noqa: F401  (so --config=configs/default.py works)
