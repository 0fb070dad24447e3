from udpm_jax.configs.fashion_mnist_demo import get_config  # noqa: F401  (so --config=configs/fashion_mnist_demo.py works)
