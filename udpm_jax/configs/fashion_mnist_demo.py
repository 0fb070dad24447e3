"""CPU demo: Fashion-MNIST padded to 32², small nets, class-conditional, 5600 steps on 2 cores.

Command: python -m udpm_jax.main --config=configs/fashion_mnist_demo.py --workdir=/tmp/udpm_demo
(`bash launch/demo.sh` runs it after setting up .venv and the data, then `python -m udpm_jax.plot`).
Data: the idx files of Debian's `dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist;
launch/demo.sh installs it, or DATA_DIR=DIR takes them from DIR); with internet access
`--config.data.source=tfds` uses TFDS.
Ends with samples.png (EMA samples, one row per class) in the workdir; the plot command adds
plots/ (learning curves, samples by class, and every level of a few samples).

The forward process, the reverse chain and the losses are those of the paper configs; what differs
is sized for under 20 minutes on 2 CPU cores (`launch/demo.sh` measured 18 min 59 s on idle
cores), where the release's recipe leaves the coarse levels unlearnt (README, "CPU demo"):
- the generator's input skip (`model.input_skip`): its output is the least-squares upsampling
  of x_l plus the U-Net's residual, so level 1 starts from a sharp-enough upsampling instead of
  from zero (with the U-Net predicting the whole image, its level-1 L1 after 3200 steps, 0.19,
  was still above that of the upsampling alone, 0.14, and its output darker than its input);
- discriminator quirks off: the release's stddev feature summed over C·H·W and its dropout on
  the logit make the level-1 logits ~1,600× the level-3 ones at initialisation (126 vs 0.08),
  and the discriminator's one Adam state, shared by all levels, then scales level 3's updates
  to almost nothing;
- instance noise 0.1 annealed 0.99 every 10 steps (0.4 every 1000 in the release): the detail each
  level adds has a std of 0.22–0.31, which D noise of 0.4 hides for the whole of a short run;
- Adam b1 = 0.5 and R1 γ 0.05 at level 3: with b1 = 0.9 the adversarial-only level 3 ignored
  its class label (one blob for every class);
- learning rates 3e-4 (1e-4 in the release): in a run this short the faster start is worth more
  than the release's caution (FID-1k 66.9 against 75.9 at 2e-4, same 5600 steps);
- the adversarial weights of levels 1–2 raised (0.5, 1.0 instead of 0.2, 0.5) for sharper images
  without LPIPS (which costs ~3× the step time on CPU), and level 3 (cheapest, adversarial only)
  drawn twice as often as each other level;
- batches of four runs of four same-class examples (`data.class_groups=4`) and a minibatch-stddev
  feature taken within each class, ×10 (`discriminator.stddev_by_class`, `stddev_gain`): with the
  release's groups, which mix classes, the discriminator gave a batch of copies the same logits
  as the originals, and level 3's generator drew one image per class whatever its input (spread
  within a class 0.01–0.04 against 0.25 for the data, at 8×8); with both, 0.20 after 600 steps of
  level 3 alone.
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
    class_groups=4,
  )
  config.model.update(
    model_channels=32,
    channel_mult=(1, 2),
    channel_mult_emb=2,
    num_blocks=1,
    attn_resolutions=(8,),
    input_skip=True,
    sigma_data=0.85,  # root mean square of the padded images in [-1, 1]
    # Direct convolution, as in the discriminator below: the README's curves and FID were
    # measured with it (Winograd's forward pass would be 1.3× faster here, D's fakes would differ
    # by float32 rounding).
    winograd_min_side=0,
  )
  config.discriminator.update(
    base_channels=16,
    dropout=0.2,
    quirk_stddev_sum_chw=False,
    quirk_logit_dropout=False,
    stddev_by_class=True,
    stddev_gain=10.0,
    # Direct convolution: the README's curves and FID were measured with it.
    winograd_min_side=0,
  )
  config.loss.update(
    lpips=(0.0, 0.0, 0.0),
    adv=(0.5, 1.0, 1.0),
    r1_gamma=(0.025, 0.1, 0.05),
    d_noise_std=0.1,
    d_noise_decay_every=10,
  )
  config.optim.update(g_lr=3e-4, d_lr=3e-4, b1=0.5, warmup_steps=50)
  config.training.update(
    batch_size=16,
    num_steps=5600,
    ema_decay=0.995,
    compute_dtype="float32",
    level_weights=(1.0, 1.0, 2.0),
    log_every=25,
    # A save or a sample grid costs ~1 s (the first grid also compiles the sampler) of a
    # 20-minute budget; neither changes the run (the weights are bit-identical to 400/400).
    ckpt_every=800,
    sample_every=1400,
  )
  config.eval.update(num_samples=2000, batch_size=250, reference_num=2000)
  return config
