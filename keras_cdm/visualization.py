"""Image grids of samples, optionally labelled, saved as PNG with pillow."""

import math
from pathlib import Path

import numpy as np

from keras_cdm._validation import LIMITS, check_int, shown
from keras_cdm.images import to_uint8

_PAD = 2
_MIN_TILE = 64  # small samples are enlarged (nearest neighbour) so captions fit


def image_grid(images, labels=None, columns=None, class_names=None, scale=None):
    """Tiles NHWC images (uint8, or floats in [-1, 1]) into one RGB uint8 image.

    Args:
        images: the images, (N, H, W, C) with C in {1, 3}.
        labels: optional class labels, one per image, written above each tile.
        columns: images per row, at most the number of images (default: about
            a square grid).
        class_names: optional names for the labels (a list or a dict).
        scale: integer enlargement of every tile (default: enough for 64 px; at
            most to tiles of `LIMITS["image_size"]` pixels).
    """
    from PIL import Image, ImageDraw

    images = _as_uint8_rgb(images)
    count, height, width = images.shape[:3]
    columns = _check_columns(columns, count)
    if scale is None:
        scale = max(1, math.ceil(_MIN_TILE / max(height, width)))
    else:  # tiles of at most LIMITS["image_size"] pixels
        scale = check_int("scale", scale, 1, max(1, LIMITS["image_size"] // max(height, width)))
    height, width = height * scale, width * scale
    caption = 12 if labels is not None else 0
    rows = math.ceil(count / columns)
    canvas = Image.new("RGB", (columns * (width + _PAD) + _PAD, rows * (height + caption + _PAD) + _PAD), "white")
    draw = ImageDraw.Draw(canvas)
    names = _names(labels, class_names, count)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        x, y = _PAD + column * (width + _PAD), _PAD + row * (height + caption + _PAD)
        tile = Image.fromarray(image).resize((width, height), Image.NEAREST)
        canvas.paste(tile, (x, y + caption))
        if names is not None:
            draw.text((x + 1, y), names[i][: max(1, width // 6)], fill="black")
    return np.asarray(canvas)


def save_image_grid(images, path, labels=None, columns=None, class_names=None, scale=None):
    """Writes `image_grid(...)` to `path` as PNG (folders created); returns the path."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"Grids are written as PNG: the path must end in .png. Received: path={str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, labels, columns, class_names, scale)).save(path)
    return path


def _as_uint8_rgb(images):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"`images` must be a non-empty (N, H, W, 1 or 3) array. Received: shape={images.shape}")
    if images.dtype != np.uint8:
        images = to_uint8(images)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _check_columns(columns, count):
    """Images per row: at most the number of images (more would only widen the canvas,
    without bound: `columns=10**9` asked for a grid billions of pixels wide)."""
    if columns is None:
        return max(1, math.ceil(math.sqrt(count)))
    return check_int("columns", columns, 1, count)


def _names(labels, class_names, count):
    if labels is None:
        return None
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != count:
        raise ValueError(f"`labels` must hold one label per image ({count}). Received: {len(labels)}")
    if class_names is None:
        return [str(label) for label in labels.tolist()]
    try:
        return [str(class_names[label]) for label in labels.tolist()]
    except (KeyError, IndexError, TypeError) as error:
        raise ValueError(f"`class_names` must name every label ({error!r} is missing). "
                         f"Received: class_names={shown(class_names)}") from None
