"""CPU demo: Fashion-MNIST padded to 32², small nets, class-conditional, 1200 steps on 2 cores.

Command: python -m udpm_jax.main --config=configs/fashion_mnist_demo.py --workdir=/tmp/udpm_demo
(`bash launch/demo.sh` runs it after setting up .venv and the data, then `python -m udpm_jax.plot`).
Data: the idx files of Debian's `dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist;
launch/demo.sh installs it, or DATA_DIR=DIR takes them from DIR); with internet access
`--config.data.source=tfds` uses TFDS.
Ends with samples.png (20 EMA samples) in the workdir; the plot command adds plots/ (learning
curves, samples by class, and every level of a few samples).
Hardware and expected result: 2 CPU cores, ~15 min (1200 steps, ~2.5 min of it compilation);
FID-10k 239.8 at step 1200 (vs the first 10,000 training images; README "CPU demo" has the
command, 57 min on the same cores). Inception runs at ~6 images/s there: evaluate with --batch=50.
"""

from udpm_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.update(
    source="idx",
    name="fashion_mnist",
    path="/usr/share/datasets/fashion-mnist",
    image_size=32,
    channels=1,
    num_classes=10,
    resize="pad",
    random_flip=True,
  )
  config.model.update(
    model_channels=32, channel_mult=(1, 2), channel_mult_emb=2, num_blocks=1, attn_resolutions=(8,)
  )
  config.discriminator.update(base_channels=16, t_emb_dim=16, dropout=0.2)
  config.loss.update(lpips=(0.0, 0.0, 0.0))
  config.optim.update(g_lr=2e-4, d_lr=2e-4, warmup_steps=50)
  config.training.update(
    batch_size=16,
    num_steps=1200,
    ema_decay=0.99,
    compute_dtype="float32",
    log_every=25,
    ckpt_every=200,
    sample_every=200,
  )
  config.eval.update(num_samples=2000, batch_size=250, reference_num=2000)
  return config
