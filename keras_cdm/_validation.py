"""Argument checks that raise Keras-style errors: argument, allowed values, received.

Every public entry point checks its inputs once, with these checkers; the code
below an entry point trusts what it is handed.
"""

import numbers

import numpy as np


def is_int(value):
    """A Python or numpy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name, value):
    if not is_int(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def check_int(name, value, low, high=None):
    """An integer in [low, high] (no upper bound when `high` is None)."""
    if not is_int(value) or value < low or (high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"`{name}` must be {allowed}. Received: {name}={value!r}")
    return int(value)


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return bool(value)


def check_range(name, value, low, high, high_inclusive=True):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and low <= value and (value <= high if high_inclusive else value < high)
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"`{name}` must be a number in [{low}, {high}{bracket}. Received: {name}={value!r}")
    return float(value)


def check_non_negative(name, value):
    """A real number >= 0 (not a bool)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")
    return float(value)


def check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}. Received: {name}={value!r}")
    return value


def check_int_tuple(name, value, allow_empty=False):
    """A non-empty tuple (or list) of positive integers."""
    try:
        items = tuple(value)
    except TypeError:
        items = None
    if items is None or (not items and not allow_empty) or not all(is_int(v) and v > 0 for v in items):
        raise ValueError(
            f"`{name}` must be a {'' if allow_empty else 'non-empty '}sequence of positive "
            f"integers. Received: {name}={value!r}"
        )
    return tuple(int(v) for v in items)


def check_labels(labels, num_classes, name="labels"):
    """Class labels, shape (N,) or (N, 1), integers in [0, num_classes): an int32 (N,) array."""
    values = np.asarray(labels)
    allowed = f"`{name}` must be a non-empty list of integers in [0, {num_classes})"
    if values.ndim not in (1, 2) or (values.ndim == 2 and values.shape[1] != 1) or not values.size:
        raise ValueError(f"{allowed}, of shape (N,) or (N, 1). Received: {name} of shape {values.shape}")
    values = values.reshape(-1)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{allowed}. Received: {name}={values[:10].tolist()} (dtype {values.dtype})")
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        raise ValueError(f"{allowed}. Received: {name} outside it: {bad[:10].tolist()}")
    return values.astype("int32")


def check_image_shape(name, shape, size, channels, batch=None, where=" for this stage"):
    """`shape` is (batch, size, size, channels) (any batch when `batch` is None)."""
    shape = tuple(shape)
    if len(shape) != 4 or shape[1:] != (size, size, channels) or (batch is not None and shape[0] != batch):
        expected = f"({'batch' if batch is None else batch}, {size}, {size}, {channels})"
        raise ValueError(f"`{name}` must have shape {expected}{where}. Received: {name}.shape={shape}")
    return shape
