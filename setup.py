"""Installable package for udpm_jax: UDPM (Abu-Hussein & Giryes, NeurIPS 2024) in JAX/Flax."""
from setuptools import find_packages, setup

# Ranges are the ones the test suite runs against; the upper bounds guard against
# API removals we have not adapted to yet (flax.linen, orbax CheckpointManager).
INSTALL_REQUIRES = [
    "jax>=0.6,<0.12",
    "flax>=0.10,<0.14",
    "optax>=0.2.4,<0.4",
    "orbax-checkpoint>=0.11,<0.14",
    "tensorflow-datasets>=4.9.7,<5",
    "ml-collections>=1.0,<2",
    "clu>=0.0.12,<0.1",
    "numpy>=1.26,<3",
    "absl-py>=2.1",
    "pillow>=10",
    "scipy>=1.11",
    "tensorboard>=2.15",
    # clu's metric writers and TFDS' tfds.load import TensorFlow; the CPU build is enough.
    "tensorflow-cpu>=2.16",
    "etils[epath]>=1.7",
    # python -m udpm_jax.plot: learning curves and sample figures.
    "matplotlib>=3.8",
]

setup(
    name="udpm_jax",
    version="0.1.0",
    description="UDPM: Upsampling Diffusion Probabilistic Models in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["udpm_jax", "udpm_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "filelock>=3.12", "scipy>=1.11", "ruff==0.17.6"],
        # PyTorch only for reading the authors' .pt files through torch itself and for
        # parity checks against reference implementations; our own reader needs no torch.
        "torch": ["torch>=2.2"],
    },
    entry_points={
        "console_scripts": [
            "udpm-train=udpm_jax.main:run",
            "udpm-sample=udpm_jax.sample:run",
            "udpm-plot=udpm_jax.plot:run",
            "udpm-evaluate=udpm_jax.evaluate:run",
            "udpm-superres=udpm_jax.superres:run",
            "udpm-bench=udpm_jax.bench:run",
        ]
    },
    license="Apache-2.0",
)
