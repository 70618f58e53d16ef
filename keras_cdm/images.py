"""Image conventions shared by every module: value ranges and resize interpolations.

Models see float images in [-1, 1]; files, grids and users see uint8 in [0, 255].
`uint8_to_unit` / `unit_to_uint8` are the one mapping between the two (0 -> -1 and
255 -> 1 exactly); they are plain arithmetic, so they work on numpy arrays and on
the tensors of any backend (tf.data pipelines included). `from_uint8` / `to_uint8`
are the checked numpy entry points.
"""

import numpy as np

from keras_cdm._validation import as_array, check_finite_array

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
"""Interpolations of the (anti-aliased) resizes: low-resolution conditioning, data."""


def uint8_to_unit(values):
    """[0, 255] values (already cast to float32) -> [-1, 1]."""
    return values / 127.5 - 1.0


def unit_to_uint8(values):
    """[-1, 1] float values -> rounded, clipped uint8 [0, 255] (numpy)."""
    return np.clip(np.round((values + 1.0) * 127.5), 0, 255).astype("uint8")


def to_uint8(images):
    """Images in [-1, 1] -> uint8 in [0, 255] (rounded, clipped)."""
    return unit_to_uint8(np.asarray(images, "float32"))


def check_image_values(images, tolerance=1e-3, name="images"):
    """The one range check of images: a numpy array of integers in [0, 255] (any integer
    dtype, not bool), or of finite floats at most `tolerance` outside [-1, 1]. Returns True
    for integers; raises a ValueError naming `name` otherwise (NaN and inf included)."""
    allowed = "integers in [0, 255], or floats in [-1, 1]"
    if images.dtype.kind in "iu":
        if images.size and (images.min() < 0 or images.max() > 255):
            raise ValueError(f"`{name}` must be {allowed}. Received: integers in [{images.min()}, {images.max()}]")
        return True
    if images.dtype.kind != "f":
        raise ValueError(f"`{name}` must be {allowed}. Received: dtype={images.dtype}")
    check_finite_array(name, images, allowed)
    if images.size and (images.min() < -1.0 - tolerance or images.max() > 1.0 + tolerance):
        raise ValueError(f"`{name}` must be {allowed}. Received: floats in [{images.min():.3g}, "
                         f"{images.max():.3g}] (map [0, 255] floats with x / 127.5 - 1)")
    return False


def from_uint8(images, tolerance=1e-3, clip=False, name="images"):
    """Integer images in [0, 255] (uint8 or any integer dtype), or floats already in
    [-1, 1] -> float32 in [-1, 1].

    Integers outside [0, 255], floats further than `tolerance` outside [-1, 1], NaN and
    infinities are refused with an error naming `name`; floats within it are returned as
    they are, or clipped to [-1, 1] with `clip=True`.
    """
    images = as_array(name, images, "integers in [0, 255], or floats in [-1, 1]")
    if check_image_values(images, tolerance, name):
        return uint8_to_unit(images.astype("float32"))
    images = images.astype("float32")
    return np.clip(images, -1.0, 1.0) if clip else images
