"""The plot command: curves read back exactly from the event files, PNGs of the expected sizes."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import udpm_jax
from tests.conftest import REPO
from udpm_jax import checkpoint, figures, models
from udpm_jax import process as proc

# What the "runs" below log: per-level G L1 / D loss / D accuracy at steps 2, 4, 6.
LOGGED = {
  step: {
    f"{name}/level_{level}": 0.1 * level + 0.01 * step + offset
    for level in (1, 2, 3)
    for name, offset in (("g_l1", 0.5), ("d_loss", 0.6), ("d_real_acc", 0.2), ("d_fake_acc", 0.3))
  }
  for step in (2, 4, 6)
}


def _write_events(workdir, rows, images=False):
  from clu import metric_writers

  writer = metric_writers.create_default_writer(str(workdir))
  writer.write_hparams({"seed": 0, "data.name": "synthetic"})
  for step, scalars in rows.items():
    writer.write_scalars(step, scalars)
    if images:  # a grid as the trainer logs it: not a scalar, so not a curve
      writer.write_images(step, {"samples/levels": np.zeros((1, 4, 8, 3), np.float32)})
  writer.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run of configs/test.py at step 6: a checkpoint holding what `restore_params` reads (the
  generator's initial weights as EMA weights), event files of a run that was resumed (steps 4 and
  6 logged again with other values) and evaluation results."""
  config = udpm_jax.configs.get_config("test")
  path = tmp_path_factory.mktemp("plot_run")
  sched = proc.Schedule.from_config(config)
  n = sched.side(1)
  inputs = (
    jnp.zeros((1, n, n, config.data.channels)),
    jnp.full((1,), sched.t(1), jnp.float32),
    jnp.zeros((1,), jnp.int32),
  )
  gen = models.build_generator(config)
  variables = jax.jit(lambda k: gen.init({"params": k, "dropout": k}, *inputs, train=False))(
    jax.random.PRNGKey(0)
  )
  consts = {k: v for k, v in variables.items() if k != "params"}
  state = {"ema_params": variables["params"], "g_params": variables["params"], "g_consts": consts}
  manager = checkpoint.make_manager(path, config)
  checkpoint.save(manager, 6, state, config, force=True)
  manager.wait_until_finished()
  manager.close()
  stale = {s: {k: v + 1.0 for k, v in LOGGED[s].items()} for s in (4, 6)}
  _write_events(path, {2: LOGGED[2], **stale}, images=True)  # the first, killed run
  _write_events(path, {4: LOGGED[4], 6: {**LOGGED[6], "eval/fid": 300.5}})  # its resumption
  (path / "eval").mkdir()
  for name, result in (
    ("step_2.json", {"step": 2, "fid": 400.25, "num_samples": 2000}),
    ("step_4.json", {"step": 4, "fid": 350.0, "num_samples": 10000}),
    ("step_4.num2000.seed0.json", {"step": 4, "fid": 360.0, "num_samples": 2000}),
    ("step_4.partial.npz", None),
  ):
    (path / "eval" / name).write_text(json.dumps(result) if result else "not json")
  return path


def test_curves_are_the_logged_values(run_dir, tmp_path):
  scalars = figures.read_scalars(run_dir)
  for tag in LOGGED[2]:
    # clu writes float32 scalars; the resumed run's values replace the killed run's.
    assert scalars[tag] == [(s, float(np.float32(LOGGED[s][tag]))) for s in (2, 4, 6)]
  # A file cut inside its last record (a writer killed mid-write) still gives the records before.
  cut = tmp_path / "cut"
  cut.mkdir()
  files = figures.event_files(run_dir)
  (cut / files[0].name).write_bytes(files[0].read_bytes())
  (cut / files[1].name).write_bytes(files[1].read_bytes()[:-3])
  partial = figures.read_scalars(cut)
  # The resumed run's last write was its step-6 dict, whose last scalar is eval/fid.
  assert partial == {tag: points for tag, points in scalars.items() if tag != "eval/fid"}
  assert not any(tag.startswith("samples") or tag.startswith("_hparams_") for tag in scalars)
  assert list(figures.by_level(scalars, "d_loss")) == [1, 2, 3]
  assert figures.read_fid(run_dir, scalars) == {
    "FID-2k": [(2, 400.25), (4, 360.0)],
    "FID-10k": [(4, 350.0)],
    "FID (eval/fid)": [(6, float(np.float32(300.5)))],
  }
  titles = [title for title, _ in figures.curve_panels(scalars, figures.read_fid(run_dir, scalars))]
  assert titles[0] == "generator L1" and titles[-1] == "FID" and len(titles) == 4
  # Without the accuracy scalars (runs logged before they existed) that panel is left out.
  no_acc = {k: v for k, v in scalars.items() if "_acc/" not in k}
  assert len(figures.curve_panels(no_acc, {})) == 2


def test_command_writes_the_pictures(run_dir, tmp_path):
  env = {
    **os.environ,
    "PYTHONPATH": str(REPO),
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "XLA_FLAGS": "--xla_backend_optimization_level=0",
  }
  out = tmp_path / "plots"
  done = subprocess.run(
    [sys.executable, "-m", "udpm_jax.plot", f"--workdir={run_dir}", f"--out={out}"]
    + ["--num_per_class=3", "--level_samples=2"],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  names = ("curves.png", "samples_levels.png", "samples.png")
  assert done.stdout.split() == [str(out / n) for n in names]
  sizes = {}
  for name in names:
    assert (out / name).stat().st_size < 300_000
    with Image.open(out / name) as im:
      sizes[name] = im.size  # (width, height)
  assert sizes["curves.png"] == (2 * 480, 2 * 300 + 30)  # four panels, two columns
  # 16² images magnified 4× (64 pixels); ten class rows with 2-pixel gaps, row labels on the left.
  tile, rows = 64, 10
  width, height = sizes["samples.png"]
  assert height == rows * tile + (rows - 1) * 2 + 4 + 18 + 6
  assert width > 3 * tile + 2 * 2 + 6
  # Two samples per row, each as its four levels x_3 … x_0: 8 tiles with a wider gap between.
  width_levels, height_levels = sizes["samples_levels.png"]
  assert height_levels == height + 16
  assert width_levels - width == (8 * tile + 6 * 2 + 8) - (3 * tile + 2 * 2)


def test_sample_figures_show_the_samples_pixel_for_pixel():
  rng = np.random.default_rng(0)
  levels = [rng.uniform(-1, 1, (6, n, n, 1)).astype(np.float32) for n in (2, 4, 8)]
  scale = figures.auto_scale(8)
  assert scale == 8
  image = figures.samples_figure(levels[-1], rows=2, scale=scale)
  assert image.shape[-1] == 1  # grayscale images and black text: stored as one channel
  # With no labels the mosaic sits 8 pixels from the left and 4 from the top.
  first = image[4 : 4 + 64, 8 : 8 + 64, 0]
  expected = np.kron(udpm_jax.image_io.to_uint8(levels[-1][0, ..., 0]), np.ones((8, 8), np.uint8))
  np.testing.assert_array_equal(first, expected)
  second_row = image[4 + 66 : 4 + 130, 8 + 66 : 8 + 130, 0]
  np.testing.assert_array_equal(
    second_row,
    np.kron(udpm_jax.image_io.to_uint8(levels[-1][4, ..., 0]), np.ones((8, 8), np.uint8)),
  )
  # The levels figure (no labels: its column headers take 16 pixels more) ends each sample's
  # strip x_2, x_1, x_0 with the same final image, each level's tile at its `offsets` position.
  strips = figures.levels_figure(levels, rows=2, per_row=2, scale=scale)
  x0_of_second = figures.offsets(6, 64, group=3)[5]
  np.testing.assert_array_equal(
    strips[20 : 20 + 64, 8 + x0_of_second : 8 + x0_of_second + 64], image[4 : 4 + 64, 74:138]
  )
  assert figures.offsets(4, 10, pad=2, group=2, group_pad=8).tolist() == [0, 12, 30, 42]
  assert (
    figures.sample_labels(3, 2).tolist() == [0, 0, 1, 1, 2, 2]
    and figures.sample_labels(0, 2) is None
  )
  assert figures.auto_scale(32) == 2 and figures.auto_scale(64) == 1


def test_an_empty_workdir_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither TensorBoard event files nor checkpoints"):
    figures.make_plots(tmp_path)
  with pytest.raises(ValueError, match="must be >= 1"):
    figures.make_plots(tmp_path, num_per_class=0)
  assert not (tmp_path / "plots").exists()
