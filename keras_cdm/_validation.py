"""Argument checks that raise Keras-style errors: argument, allowed values, received."""

import numbers


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def check_range(name, value, low, high, high_inclusive=True):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and low <= value and (value <= high if high_inclusive else value < high)
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"`{name}` must be a number in [{low}, {high}{bracket}. Received: {name}={value!r}")
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
    if items is None or (not items and not allow_empty) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items
    ):
        raise ValueError(
            f"`{name}` must be a {'' if allow_empty else 'non-empty '}sequence of positive "
            f"integers. Received: {name}={value!r}"
        )
    return items
