"""Image conventions shared by every module: value ranges and resize interpolations.

Models see float images in [-1, 1]; files, grids and users see uint8 in [0, 255].
`uint8_to_unit` / `unit_to_uint8` are the one mapping between the two (0 -> -1 and
255 -> 1 exactly); they are plain arithmetic, so they work on numpy arrays and on
the tensors of any backend (tf.data pipelines included). `from_uint8` / `to_uint8`
are the checked numpy entry points.
"""

import numpy as np

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


def from_uint8(images, tolerance=1e-3, clip=False, name="images"):
    """Integer images in [0, 255] (uint8 or any integer dtype), or floats already in
    [-1, 1] -> float32 in [-1, 1].

    Integers outside [0, 255], and floats further than `tolerance` outside [-1, 1],
    are refused with an error naming `name`; floats within it are returned as they
    are, or clipped to [-1, 1] with `clip=True`.
    """
    images = np.asarray(images)
    if np.issubdtype(images.dtype, np.integer) and not np.issubdtype(images.dtype, np.bool_):
        if images.size and (images.min() < 0 or images.max() > 255):
            raise ValueError(f"`{name}` must be integers in [0, 255], or floats in [-1, 1]. "
                             f"Received: integers in [{images.min()}, {images.max()}]")
        return uint8_to_unit(images.astype("float32"))
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"`{name}` must be integers in [0, 255], or floats in [-1, 1]. "
                         f"Received: dtype={images.dtype}")
    images = images.astype("float32")
    if images.size and (images.min() < -1.0 - tolerance or images.max() > 1.0 + tolerance):
        raise ValueError(f"`{name}` must be integers in [0, 255], or floats in [-1, 1]. "
                         f"Received: floats in [{images.min():.3g}, {images.max():.3g}]")
    return np.clip(images, -1.0, 1.0) if clip else images
