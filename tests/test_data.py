"""Input pipelines: every source against independently decoded data; determinism; host splits."""

import gzip
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

import udpm_jax
from udpm_jax import data


def _config(**kw):
  config = udpm_jax.configs.get_config("test")
  config.data.update(**kw)
  return config


def _png(arr):
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="PNG")
  return buf.getvalue()


def test_fashion_mnist_idx_matches_raw_bytes_and_pads(assets):
  path = assets / "data" / "fashion-mnist"
  config = _config(
    source="idx", path=str(path), image_size=32, channels=1, resize="pad", random_flip=False
  )
  with gzip.open(path / "train-images-idx3-ubyte.gz") as f:
    raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
  with gzip.open(path / "train-labels-idx1-ubyte.gz") as f:
    raw_labels = np.frombuffer(f.read(), np.uint8, offset=8)
  assert raw.shape == (60000, 28, 28)
  batch = next(
    data.make_iterator(config, global_batch_size=8, seed=0, process_index=0, process_count=1)
  )
  idx = data.batch_indices(60000, 8, 0, 0)
  np.testing.assert_allclose(batch["image"][:, 2:30, 2:30, 0], raw[idx] / 127.5 - 1.0, atol=1e-6)
  assert np.all(batch["image"][:, :2] == -1.0) and batch["image"].shape == (8, 32, 32, 1)
  np.testing.assert_array_equal(batch["label"], raw_labels[idx])
  rgb = _config(source="idx", path=str(path), image_size=32, channels=3, resize="pad")
  x, y = data.load_arrays(rgb, split="test", limit=5)
  assert x.shape == (5, 32, 32, 3) and np.all(x[..., 0] == x[..., 2]) and y.dtype == np.int32


def test_cifar_npz_values_and_labels(assets):
  path = assets / "data" / "cifar10_partial.npz"
  config = _config(source="npz", path=str(path), image_size=32, random_flip=False)
  with np.load(path) as f:
    ref_x, ref_y = f["x_train"], f["y_train"]
  x, y = data.load_arrays(config, limit=10)
  np.testing.assert_array_equal(x, ref_x[:10])
  np.testing.assert_array_equal(y, ref_y[:10])
  it = data.make_iterator(
    config, global_batch_size=4, seed=3, start_step=2, process_index=0, process_count=1
  )
  idx = data.batch_indices(len(ref_x), 4, 3, 2)
  np.testing.assert_allclose(next(it)["image"], ref_x[idx] / 127.5 - 1.0, atol=1e-6)


def test_determinism_resume_and_host_split():
  config = _config(random_flip=True)
  it = data.make_iterator(config, global_batch_size=8, seed=5, process_index=0, process_count=1)
  run = [next(it) for _ in range(40)]  # 320 samples: crosses the 256-example epoch boundary
  again = data.make_iterator(config, global_batch_size=8, seed=5, process_index=0, process_count=1)
  np.testing.assert_array_equal(next(again)["image"], run[0]["image"])
  resumed = data.make_iterator(
    config, global_batch_size=8, seed=5, start_step=33, process_index=0, process_count=1
  )
  for k in range(33, 40):
    b = next(resumed)
    np.testing.assert_array_equal(b["image"], run[k]["image"])
    np.testing.assert_array_equal(b["label"], run[k]["label"])
  halves = [
    next(
      data.make_iterator(
        config, global_batch_size=8, seed=5, start_step=7, process_index=h, process_count=2
      )
    )
    for h in (0, 1)
  ]
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), run[7]["image"])
  # Each epoch visits every example exactly once.
  idx = np.concatenate([data.batch_indices(256, 8, 5, k) for k in range(32)])
  np.testing.assert_array_equal(np.sort(idx), np.arange(256))
  other = data.make_iterator(config, global_batch_size=8, seed=6, process_index=0, process_count=1)
  assert not np.array_equal(next(other)["image"], run[0]["image"])


def test_class_grouped_batches_are_runs_of_one_class_and_resume_exactly():
  config = _config(class_groups=4, random_flip=False)
  source = data.make_source(config)
  it = data.make_iterator(config, global_batch_size=12, seed=3, process_index=0, process_count=1)
  run = [next(it) for _ in range(6)]
  for b in run:
    runs = b["label"].reshape(3, 4)
    assert (runs == runs[:, :1]).all()  # each run of 4 is one class
    assert len(set(runs[:, 0])) == 3  # distinct classes while there are enough
  # The images are those of the drawn indices (labels and pixels stay paired).
  idx = data.class_grouped_indices(
    [np.flatnonzero(source.labels == k) for k in range(10)], 12, 4, 3, 2
  )
  np.testing.assert_array_equal(run[2]["label"], source.labels[idx])
  np.testing.assert_array_equal(run[2]["image"], data.preprocess(source.images[idx], config))
  resumed = data.make_iterator(
    config, global_batch_size=12, seed=3, start_step=4, process_index=0, process_count=1
  )
  np.testing.assert_array_equal(next(resumed)["image"], run[4]["image"])
  half = data.make_iterator(
    config, global_batch_size=12, seed=3, start_step=5, process_index=1, process_count=2
  )
  np.testing.assert_array_equal(next(half)["label"], run[5]["label"][6:])
  assert not np.array_equal(run[0]["label"], run[1]["label"])
  # More runs than classes: classes repeat; a class smaller than a run: examples repeat.
  tiny = [np.array([0]), np.array([1, 2])]
  idx = data.class_grouped_indices(tiny, 8, 2, 0, 0)
  assert set(idx.tolist()) <= {0, 1, 2} and (idx.reshape(4, 2)[:, 0] < 3).all()
  with pytest.raises(data.DataError, match="not a multiple of data.class_groups=4"):
    data.make_iterator(config, global_batch_size=10, seed=3, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="data.class_groups"):
    udpm_jax.configs.validate(_config(class_groups=-2))
  unconditional = _config(class_groups=4, num_classes=0)
  unconditional.discriminator.conditional = False
  with pytest.raises(ValueError, match="data.class_groups"):
    udpm_jax.configs.validate(unconditional)


def test_flips_are_exact_mirrors():
  on = data.make_iterator(
    _config(random_flip=True), global_batch_size=16, seed=1, process_index=0, process_count=1
  )
  off = data.make_iterator(
    _config(random_flip=False), global_batch_size=16, seed=1, process_index=0, process_count=1
  )
  a, b = next(on)["image"], next(off)["image"]
  mask = data.flips(16, 1, 0)
  assert 0 < mask.sum() < 16
  np.testing.assert_array_equal(a[mask], b[mask][:, :, ::-1])
  np.testing.assert_array_equal(a[~mask], b[~mask])
  assert a.min() >= -1.0 and a.max() <= 1.0


def test_folder_with_corrupt_rgba_and_gray_files(tmp_path, caplog):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "rgb.png").write_bytes(_png(rgb))
  rgba = np.concatenate([rgb, np.full((16, 16, 1), 255, np.uint8)], -1)
  (tmp_path / "a" / "rgba.png").write_bytes(_png(rgba))
  gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
  (tmp_path / "gray.png").write_bytes(_png(gray))
  (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
  config = _config(source="folder", path=str(tmp_path), image_size=16, random_flip=False)
  x, _ = data.load_arrays(config)
  assert x.shape == (3, 16, 16, 3)  # the corrupt file is skipped …
  assert "skipped 1 unreadable" in caplog.text  # … and counted
  by_name = dict(zip(sorted(["a/rgb.png", "a/rgba.png", "gray.png"]), x))
  np.testing.assert_array_equal(by_name["a/rgb.png"], rgb)
  np.testing.assert_array_equal(by_name["a/rgba.png"], rgb)
  np.testing.assert_array_equal(by_name["gray.png"], np.repeat(gray[..., None], 3, -1))
  bad = tmp_path / "all_bad"
  bad.mkdir()
  (bad / "x.png").write_bytes(b"nope")
  with pytest.raises(data.DataError, match="none of the 1 image files could be read"):
    data.load_arrays(_config(source="folder", path=str(bad), image_size=16))
  with pytest.raises(data.DataError, match="is not a directory"):
    data.load_arrays(_config(source="folder", path=str(tmp_path / "missing"), image_size=16))


def test_zip_archive_with_labels_and_resize(tmp_path):
  rng = np.random.default_rng(1)
  imgs = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(3)]
  path = tmp_path / "ds.zip"
  with zipfile.ZipFile(path, "w") as z:
    for i, im in enumerate(imgs):
      z.writestr(f"00000/img{i:08d}.png", _png(im))
    z.writestr(
      "dataset.json", json.dumps({"labels": [[f"00000/img{i:08d}.png", 7 - i] for i in range(3)]})
    )
  x, y = data.load_arrays(
    _config(source="zip", path=str(path), image_size=16, resize="center_crop")
  )
  assert x.shape == (3, 16, 16, 3)
  np.testing.assert_array_equal(y, [7, 6, 5])
  with pytest.raises(data.DataError, match="images are 20×24 but data.image_size=16"):
    data.load_arrays(_config(source="zip", path=str(path), image_size=16, resize="none"))


def test_npz_errors_name_the_problem(tmp_path):
  np.savez(tmp_path / "a.npz", foo=np.zeros(3))
  with pytest.raises(data.DataError, match="no image array for split 'train'.*found \\['foo'\\]"):
    data.load_arrays(_config(source="npz", path=str(tmp_path / "a.npz")))
  np.savez(tmp_path / "b.npz", images=np.zeros((2, 16, 16, 4), np.uint8))
  with pytest.raises(data.DataError, match="4 channels"):
    data.load_arrays(_config(source="npz", path=str(tmp_path / "b.npz")))


def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  config = _config(source="tfds", name="cifar10", image_size=32, random_flip=False)
  with tfds.testing.mock_data(num_examples=12):
    it = data.make_iterator(config, global_batch_size=4, seed=0, process_index=0, process_count=1)
    batch = next(it)
    assert batch["image"].shape == (4, 32, 32, 3) and batch["label"].dtype == np.int32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    src = data.make_source(config)
    idx = data.batch_indices(len(src), 4, 0, 0)
    np.testing.assert_allclose(batch["image"], src.get(idx)[0] / 127.5 - 1, atol=1e-6)


def test_labels_outside_num_classes_or_missing_are_refused(tmp_path):
  """Out-of-range labels one-hot to zeros, which would silently switch conditioning off."""
  images = np.zeros((20, 16, 16, 3), np.uint8)
  np.savez(tmp_path / "shifted.npz", x_train=images, y_train=np.arange(20) % 10 + 1)
  np.savez(tmp_path / "unlabelled.npz", x_train=images)

  def iterator(path, **kw):
    config = _config(source="npz", path=str(tmp_path / path), image_size=16, **kw)
    config.discriminator.conditional = config.data.num_classes > 0
    return data.make_iterator(config, global_batch_size=4, seed=0, process_index=0, process_count=1)

  with pytest.raises(
    data.DataError, match=r"labels must lie in \[0, data.num_classes=10\); found \[10\]"
  ):
    iterator("shifted.npz", num_classes=10)
  assert next(iterator("shifted.npz", num_classes=11))["label"].max() <= 10
  with pytest.raises(data.DataError, match="has no labels, but the config is class-conditional"):
    iterator("unlabelled.npz", num_classes=10)
  assert next(iterator("unlabelled.npz", num_classes=0))["label"].tolist() == [0, 0, 0, 0]


def test_streamed_labels_are_checked_batch_by_batch():
  tfds = pytest.importorskip("tensorflow_datasets")
  config = _config(source="tfds", name="cifar10", image_size=32, num_classes=1)
  with (
    tfds.testing.mock_data(num_examples=64),
    pytest.raises(data.DataError, match="labels must lie"),
  ):
    it = data.make_iterator(config, global_batch_size=16, seed=0, process_index=0, process_count=1)
    next(it)


def test_prefetch_keeps_the_order_counts_the_wait_and_passes_errors_on():
  import time

  def slow(n, fail_at=None):
    for i in range(n):
      if i == fail_at:
        raise data.DataError("record 3 is corrupt")
      time.sleep(0.02)
      yield {"i": i}

  batches = data.Prefetch(slow(6), size=2)
  assert [b["i"] for b in batches] == list(range(6))
  assert 0.02 * 6 * 0.5 < batches.wait_s < 5  # the consumer did nothing, so it waited
  with pytest.raises(StopIteration):
    next(batches)
  batches = data.Prefetch(slow(6, fail_at=3))
  assert [next(batches)["i"] for _ in range(3)] == [0, 1, 2]
  with pytest.raises(data.DataError, match="record 3 is corrupt"):
    next(batches)
  batches = data.Prefetch(slow(1000), size=2)
  next(batches)
  batches.close()
  assert not batches._thread.is_alive()
