"""Image folders that would hang, exhaust memory or crash a naive reader (issue 21, class 5),
and tf.data batches of unknown static shape. Each case must end quickly, with the file
skipped and reported once (or a clear error)."""

import os
import struct
import warnings
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_cdm import DiffusionModel, DiffusionUNet, GaussianDiffusion, data
from keras_cdm.testing import within

pytestmark = pytest.mark.tensorflow_only

LIMIT_S = 60  # generous on 2 busy cores; a regression (a blocking FIFO) never ends


def load(root, **kwargs):
    """from_image_folder with the warnings it emits, within the time limit."""
    def call():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = data.from_image_folder(root, 4, **{"labels": None, "batch_size": 1, "shuffle": False,
                                                         "drop_remainder": False, **kwargs})
        return dataset, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]

    return within(LIMIT_S, call)[0]


def png(path, size=(6, 6), colour=(0, 255, 0)):
    Image.new("RGB", size, colour).save(path)
    return path


def names(paths):
    return sorted(os.path.basename(os.fsdecode(p)) for p in paths)


def assert_skipped_once(dataset, messages, name, reason):
    """`name` is in `skipped_files` once with `reason`, and named once in the one warning."""
    entries = [(p, r) for p, r in dataset.skipped_files if os.path.basename(p) == name]
    assert len(entries) == 1 and reason in entries[0][1], dataset.skipped_files
    assert len(messages) == 1, messages
    assert messages[0].count(f"{name}'") == 1, messages[0]
    assert name not in names(dataset.file_paths)


# -- files that are not regular files -----------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_named_like_an_image_is_skipped_not_opened(tmp_path):
    png(tmp_path / "good.png")
    os.mkfifo(tmp_path / "x.png")  # opening it for reading would block until a writer comes
    dataset, messages = load(tmp_path)
    assert names(dataset.file_paths) == ["good.png"]
    assert_skipped_once(dataset, messages, "x.png", "not a regular file: a FIFO")
    with pytest.raises(ValueError, match=r"Cannot use image file '.*x\.png' \(not a regular file: a FIFO\)"):
        load(tmp_path, on_error="raise")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_symlink_to_dev_zero_is_skipped(tmp_path):
    png(tmp_path / "good.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")  # endless: reading it exhausts memory
    dataset, messages = load(tmp_path)
    assert names(dataset.file_paths) == ["good.png"]
    assert_skipped_once(dataset, messages, "zero.png", "not a regular file: a character device")


def test_symlinks_to_files_are_read_broken_and_looping_ones_skipped(tmp_path):
    target = png(tmp_path.parent / f"{tmp_path.name}_outside.png", colour=(255, 0, 0))
    (tmp_path / "linked.png").symlink_to(target)
    (tmp_path / "broken.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    dataset, messages = load(tmp_path)
    assert names(dataset.file_paths) == ["linked.png"]
    (batch,) = list(dataset)
    np.testing.assert_allclose(batch["images"][0, 0, 0], [1, -1, -1])
    reasons = dict((os.path.basename(p), r) for p, r in dataset.skipped_files)
    assert reasons == {"broken.png": "cannot be read: No such file or directory",
                       "loop.png": "cannot be read: Too many levels of symbolic links"}
    assert len(messages) == 1 and "Skipped 2 of 3 image files" in messages[0]


# -- directory symlinks: no loop, no escape ----------------------------------------------


def test_symlink_loop_does_not_multiply_the_files(tmp_path):
    (tmp_path / "a").mkdir()
    png(tmp_path / "a" / "one.png")
    png(tmp_path / "two.png")
    (tmp_path / "a" / "up").symlink_to("..")  # a/up/a/up/... would list every file again, forever
    dataset, messages = load(tmp_path)
    assert names(dataset.file_paths) == ["one.png", "two.png"]
    assert dataset.skipped_files == [(str(tmp_path / "a" / "up"), "directory symlink, not followed")]
    assert len(messages) == 1 and messages[0].count("up'") == 1 and "Did not enter 1 directory" in messages[0]


def test_directory_symlinks_out_of_the_tree_are_not_followed(tmp_path):
    outside = tmp_path / "outside"
    (outside / "secret").mkdir(parents=True)
    png(outside / "secret" / "s.png")
    root = tmp_path / "root"
    (root / "cat").mkdir(parents=True)
    png(root / "cat" / "c.png")
    (root / "dog").symlink_to(outside / "secret")  # a class folder elsewhere
    (root / "cat" / "more").symlink_to(outside)
    dataset, messages = load(root, labels="inferred")
    assert dataset.class_names == ["cat"] and names(dataset.file_paths) == ["c.png"]
    assert sorted(os.path.basename(p) for p, _ in dataset.skipped_files) == ["dog", "more"]
    assert len(messages) == 1 and "Did not enter 2 directories" in messages[0]
    only_links = tmp_path / "only_links"
    only_links.mkdir()
    (only_links / "dog").symlink_to(outside / "secret")
    with pytest.raises(ValueError, match=r"No image files found.*symlinks to directories are not followed.*dog"):
        load(only_links, labels="inferred")


# -- names that are not UTF-8 --------------------------------------------------------------


def test_file_and_class_names_that_are_not_utf8(tmp_path):
    root = os.fsencode(tmp_path)
    try:
        os.mkdir(os.path.join(root, b"cl\xe4ss"))
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    png(os.path.join(root, b"cl\xe4ss", b"\xff\xfe.png"), colour=(0, 0, 255))
    png(os.path.join(root, b"cl\xe4ss", b"ok.png"))
    dataset, messages = load(tmp_path, labels="inferred")
    assert messages == [] and dataset.class_names == [os.fsdecode(b"cl\xe4ss")]
    assert [os.fsencode(p) for p in dataset.file_paths] == [os.path.join(root, b"cl\xe4ss", b"ok.png"),
                                                             os.path.join(root, b"cl\xe4ss", b"\xff\xfe.png")]
    (batch,) = list(dataset.unbatch().batch(2))
    np.testing.assert_allclose(batch["images"][:, 0, 0], [[-1, 1, -1], [-1, -1, 1]])
    np.testing.assert_array_equal(batch["labels"], [0, 0])


# -- bounded bytes and pixels --------------------------------------------------------------


def test_file_over_max_file_bytes_is_skipped(tmp_path):
    png(tmp_path / "small.png")
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "big.png")  # about 12 kB: incompressible noise
    size = os.path.getsize(tmp_path / "big.png")
    dataset, messages = load(tmp_path, max_file_bytes=4096)
    assert names(dataset.file_paths) == ["small.png"]
    assert_skipped_once(dataset, messages, "big.png", f"{size} bytes, over max_file_bytes=4096")
    assert names(load(tmp_path)[0].file_paths) == ["big.png", "small.png"]  # the default: 64 MiB


def bomb_png(path, width, height):
    """A valid PNG header announcing width x height pixels, with a few bytes of data: decoding
    it would allocate width * height * 3 bytes."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * min(width, 1024)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def test_decompression_bombs_are_skipped_from_their_headers(tmp_path):
    png(tmp_path / "good.png")
    bomb_png(tmp_path / "bomb.png", 100_000, 100_000)  # 30 GB once decoded, 200 bytes on disk
    dataset, messages = load(tmp_path)
    assert names(dataset.file_paths) == ["good.png"]
    assert_skipped_once(dataset, messages, "bomb.png", "decompression-bomb limit")
    assert os.path.getsize(tmp_path / "bomb.png") < 1000


def test_max_pixels_counts_width_height_and_gif_frames(tmp_path):
    png(tmp_path / "small.png", size=(20, 20))
    png(tmp_path / "large.png", size=(40, 40))
    frames = [Image.new("RGB", (20, 20), (i * 80, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    dataset, messages = load(tmp_path, max_pixels=1000)
    assert names(dataset.file_paths) == ["small.png"]
    reasons = {os.path.basename(p): r for p, r in dataset.skipped_files}
    assert reasons == {"large.png": "40 x 40 pixels, over max_pixels=1000",
                       "anim.gif": "20 x 20 pixels x 3 frames, over max_pixels=1000"}
    assert len(messages) == 1 and "Skipped 2 of 3 image files" in messages[0]


@pytest.mark.parametrize("kwargs, match", [
    ({"max_file_bytes": 0}, "`max_file_bytes` must be a positive integer"),
    ({"max_pixels": 1.5}, "`max_pixels` must be a positive integer"),
])
def test_limits_are_checked(tmp_path, kwargs, match):
    png(tmp_path / "good.png")
    with pytest.raises(ValueError, match=match):
        data.from_image_folder(tmp_path, 4, labels=None, **kwargs)


def test_every_skipped_file_is_reported_once_in_one_warning(tmp_path):
    png(tmp_path / "good.png")
    for index in range(12):
        (tmp_path / f"bad{index:02d}.png").write_bytes(b"not an image")
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "again").symlink_to("..")
    dataset, messages = load(tmp_path)
    assert len(messages) == 1
    assert "Skipped 12 of 13 image files" in messages[0] and "(2 more)" in messages[0]
    assert len(dataset.skipped_files) == 13 == len(set(dataset.skipped_files))
    assert all(messages[0].count(f"bad{index:02d}.png") == 1 for index in range(10))


# -- tf.data batches of unknown static shape --------------------------------------------------


def tiny_model():
    unet = DiffusionUNet(image_size=8, base_channels=8, channel_multipliers=(1,), num_res_blocks=1,
                         attention_resolutions=(), num_groups=4, num_classes=2)
    model = DiffusionModel(unet, GaussianDiffusion(10, "cosine"), seed=0)
    model.compile()
    return model


def generated(shapes, signature):
    def batches():
        for shape in shapes:
            yield {"images": np.zeros(shape, np.float32), "labels": np.zeros(shape[0], np.int32)}

    return tf.data.Dataset.from_generator(batches, output_signature={
        "images": tf.TensorSpec(signature, tf.float32), "labels": tf.TensorSpec(None, tf.int32)})


def test_fit_takes_batches_of_unknown_static_shape():
    model = tiny_model()
    unknown_rank = generated([(2, 8, 8, 3), (3, 8, 8, 3)], None)
    history = model.fit(unknown_rank, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and int(model.optimizer.iterations.numpy()) >= 2
    unknown_sizes = generated([(2, 8, 8, 3), (2, 16, 16, 3)], (None, None, None, 3))  # refused before the fix
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`images` must have shape \(batch, 8, 8, 3\)"):
        model.fit(unknown_sizes, epochs=1, verbose=0)  # the second batch is wrong: checked when it arrives
    assert int(model.optimizer.iterations.numpy()) >= 3  # the first batch trained
