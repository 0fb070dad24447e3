"""Default UDPM configuration: the shared base every experiment card overrides.

The values are those of the authors' CIFAR10 run; per-dataset cards change
only what differs. Not meant to be trained as is: use one of the dataset cards.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict(
    dict(
      source="tfds",  # 'tfds' | 'folder' | 'zip' | 'npz' | 'idx'
      name="cifar10",  # TFDS name (source='tfds')
      path="",  # file or folder (other sources); TFDS_DATA_DIR for tfds
      split="train",
      image_size=32,  # side N of x_0 after resizing / padding
      channels=3,
      num_classes=10,  # 0 = unconditional
      random_flip=True,  # horizontal flips only (the release's only augmentation)
      # > 0: each batch is made of runs of this many same-class examples (for
      # discriminator.stddev_by_class); 0 = random order, as released.
      class_groups=0,
      resize="none",  # 'none' | 'pad' | 'resize' | 'center_crop'
      grayscale_to_rgb=False,
    )
  )

  config.process = ml_collections.ConfigDict(
    dict(
      scale=2,  # s (γ in the paper)
      levels=3,  # L
      kernel="box",  # 'box' | 'gaussian' (periodic, via FFT)
      kernel_norm="norm",  # 'norm' (unit l2) | 'sum' (unit sum)
      kernel_size=5,  # gaussian only
      kernel_std=1.0,  # gaussian only
      alphas=(0.5, 0.2, 1e-3),
      sigmas=(0.1, 0.2, 0.3),
      exact_posterior=True,  # False = the authors' scalar-Σ posterior (compatibility)
    )
  )

  config.model = ml_collections.ConfigDict(
    dict(
      arch="ncsnpp",  # 'ncsnpp' | 'ddpmpp'
      model_channels=128,
      channel_mult=(2, 2, 2),
      channel_mult_emb=4,
      channel_mult_noise=2,
      num_blocks=4,
      attn_resolutions=(8, 4),  # nominal: the U-Net's own resolutions at its level-1 input N/s
      dropout=0.0,
      label_dropout=0.0,
      fourier_scale=16.0,
      resample_filter=(1, 3, 3, 1),
      # True: the generator adds gain_l · upsample(x_l) to its output, the least-squares estimate
      # of its target from x_l alone (models.input_skip_gains), so the U-Net learns the residual.
      # False (the release): the U-Net predicts the whole image.
      input_skip=False,
      sigma_data=0.5,  # pixel std assumed by input_skip's gains (data in [-1, 1])
      # 3×3 convolutions with outputs of at least this side by Winograd F(2×2, 3×3) in the
      # generator's forward-only calls (sampling, D's fakes); its update keeps direct convolution.
      # -1: auto (8 on the CPU in float32, else 0 = off).
      winograd_min_side=-1,
    )
  )

  config.discriminator = ml_collections.ConfigDict(
    dict(
      base_channels=192,
      dropout=0.4,
      conditional=True,  # class-conditional D (needs data.num_classes > 0)
      stddev_group=4,
      stddev_features=1,
      stddev_by_class=False,  # minibatch stddev over same-label samples (class-conditional D)
      stddev_gain=1.0,  # factor on the stddev feature (larger: D learns to use it sooner)
      quirk_stddev_sum_chw=True,  # the release sums the stddev feature over C·H·W
      quirk_logit_dropout=True,  # the release applies dropout to the logit
      # 3×3 convolutions with outputs of at least this side by Winograd F(2×2, 3×3) (the same
      # function to float32 rounding); -1: auto (8 on the CPU in float32, else 0 = off).
      winograd_min_side=-1,
    )
  )

  config.loss = ml_collections.ConfigDict(
    dict(
      l1=(1.0, 1.0, 0.0),
      lpips=(4.0, 4.0, 0.0),
      adv=(0.2, 0.5, 1.0),
      r1_gamma=(0.025, 0.1, 0.4),
      d_noise_std=0.4,  # std_D = d_noise_std · d_noise_decay^⌊step/d_noise_decay_every⌋
      d_noise_decay=0.99,
      d_noise_decay_every=1000,
      normalize_inputs=True,  # divide GT/fake by (Σw)^{l-1} before D (release: normalize_loss_inp)
      lpips_weights="",  # path to lpips_vgg16.npz; '' = the cached download
    )
  )

  config.optim = ml_collections.ConfigDict(
    dict(
      g_lr=1e-4,
      d_lr=1e-4,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      warmup_steps=5000,
    )
  )

  config.training = ml_collections.ConfigDict(
    dict(
      batch_size=0,  # global; 0 = per_device_batch_size × device count
      per_device_batch_size=64,  # the release: 64 images per GPU
      num_steps=600_000,
      ema_decay=0.9999,
      compute_dtype="bfloat16",  # forward passes; params stay float32
      steps_per_dispatch=1,
      level_dispatch="host",  # 'host': one program per level; 'switch': lax.switch (train_step)
      # How often each level is drawn for the D and the G update, relative weights per level;
      # () = uniformly, as released.
      level_weights=(),
      log_every=100,
      ckpt_every=5000,
      keep_checkpoints=3,
      # False: each save completes before training goes on, so a crash (kill -9) loses at most
      # ckpt_every steps. True: saves overlap the next steps (faster on slow storage, e.g. a
      # bucket), but a crash during a save loses that save too.
      async_checkpoints=False,
      sample_every=10_000,
      eval_every=0,  # 0 = no in-training evaluation
    )
  )

  config.eval = ml_collections.ConfigDict(
    dict(
      num_samples=50_000,
      batch_size=500,
      inception_weights="",  # path to the pytorch-fid .pth / our .npz; '' = cached download
      reference_stats="",  # .npz of reference statistics; '' = computed from config.data
      reference_num=0,  # training images in computed reference stats; 0 = the whole split
    )
  )
  return config
