"""Argument checks that raise Keras-style errors: argument, allowed values, received.

Every public entry point checks its inputs once, with these checkers; the code
below an entry point trusts what it is handed.
"""

import difflib
import inspect
import math
import numbers
import re

import numpy as np

# Upper bounds, checked before anything is built or read: they keep a config or a
# preset from an untrusted source from exhausting memory or time. The defaults are
# documented in docs/reliability.md; raise one (e.g. `LIMITS["image_size"] = 8192`,
# also reachable as `keras_cdm.presets.LIMITS`) to build something larger.
LIMITS = {
    # model sizes (DiffusionUNet, GaussianDiffusion, conditioning augmentation)
    "image_size": 4096,  # pixels, also low_res_size
    "image_channels": 64,
    "channels": 8192,  # of any U-Net level (base_channels * multiplier)
    "levels": 16,  # len(channel_multipliers), len(attention_resolutions)
    "num_res_blocks": 16,
    "num_heads": 1024,
    "num_groups": 1024,
    "num_classes": 100_000,
    "parameters": 2_000_000_000,  # of a U-Net, counted from its config before it is built
    "num_timesteps": 100_000,
    "kernel_size": 63,  # of the blur augmentation
    "noise_level_scale": 1e6,
    # preset files and names
    "json_bytes": 1 << 20,  # config.json / metadata.json
    "json_depth": 32,  # nesting of objects and lists in them
    "name_length": 96,  # Hub owner / repo names, stage subfolders (as the Hub's repo names)
    "revision_length": 255,
    "stages": 32,  # of a cascade
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A name that becomes part of a path or a URL: one part of a Hub handle, a stage
# subfolder, one '/'-separated part of a revision (used with fullmatch).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


SHA256 = re.compile(r"[0-9a-f]{64}")  # a SHA-256 as written in presets and adapter files: 64 lowercase hex digits


def shown(value, limit=200):
    """`repr(value)`, shortened to `limit` characters (errors quote what they received)."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return f"<{type(value).__name__} of {value.bit_length()} bits>" if is_int(value) else "<unprintable>"
    return text if len(text) <= limit else f"{text[:limit - 20]}...<{len(text)} characters>"


def check_config(cls, config, extra=("name", "trainable")):
    """`config` (for `cls.from_config`) is a dict holding every required argument of
    `cls.__init__` and nothing else but its other arguments and `extra` (Keras' own)."""
    if not isinstance(config, dict):
        raise ValueError(f"The config of a {cls.__name__} must be a dict. Received: config={shown(config)}")
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    arguments = [p for p in list(inspect.signature(cls.__init__).parameters.values())[1:] if p.kind in kinds]
    allowed = {p.name for p in arguments} | set(extra)
    unknown = sorted(set(config) - allowed, key=str)
    missing = sorted(p.name for p in arguments if p.default is p.empty and p.name not in config)
    if unknown or missing:
        problem = f"unknown keys {unknown}" if unknown else f"missing keys {missing}"
        raise ValueError(f"The config of a {cls.__name__} takes the keys {sorted(allowed)}: {problem}. "
                         f"Received: config keys {shown(sorted(config, key=str))}")
    return config


def has_control_characters(text):
    """Whether `text` holds a control character (a NUL, a newline, an escape, ...)."""
    return bool(_CONTROL.search(text))


def is_name(value, limit=None):
    """A safe name (see `name_rule`): a string that is no path and no URL trick."""
    limit = LIMITS["name_length"] if limit is None else limit
    return isinstance(value, str) and len(value) <= limit and bool(_NAME.fullmatch(value)) and ".." not in value


def name_rule(limit=None):
    """The rule of `is_name`, in words."""
    return (f"1 to {LIMITS['name_length'] if limit is None else limit} ASCII letters, digits, '_', '-' and '.', "
            "starting with a letter or a digit, with no '..'")


def is_int(value):
    """A Python or numpy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name, value):
    if not is_int(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={shown(value)}")
    return int(value)


def check_int(name, value, low, high=None):
    """An integer in [low, high] (no upper bound when `high` is None)."""
    if not is_int(value) or value < low or (high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"`{name}` must be {allowed}. Received: {name}={shown(value)}")
    return int(value)


def check_size(name, value, limit=None):
    """A positive integer at most LIMITS[limit] (`limit` defaults to `name`): a size with a bound."""
    key = limit or name
    value = check_positive_int(name, value)
    if value > LIMITS[key]:
        raise ValueError(f"`{name}` must be a positive integer <= {LIMITS[key]} (the bound of "
                         f"keras_cdm.presets.LIMITS[{key!r}]). Received: {name}={shown(value)}")
    return value


def check_finite(name, value, low, high):
    """A finite real number in [low, high] (not a bool)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise ValueError(f"`{name}` must be a finite number in [{low}, {high}]. Received: {name}={shown(value)}")
    return float(value)


def check_text(name, value, max_length=None, allow_none=False):
    """A string without control characters (and at most `max_length` characters)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or _CONTROL.search(value) or (max_length is not None and len(value) > max_length):
        limit = "" if max_length is None else f" of at most {max_length} characters"
        none = " or None" if allow_none else ""
        raise ValueError(f"`{name}` must be a string{limit} without control characters{none}. "
                         f"Received: {name}={shown(value)}")
    return value


def check_generator_seed(seed, name="seed"):
    """None or a seed a `keras.random.SeedGenerator` takes: an integer in [0, 2**32)."""
    if seed is not None and (not is_int(seed) or not 0 <= seed < 2**32):
        raise ValueError(f"`{name}` must be None or an integer in [0, 2**32). Received: {name}={shown(seed)}")
    return None if seed is None else int(seed)


def check_bool(name, value):
    """True or False (a numpy bool too): never a truthy string, number or None."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False. Received: {name}={shown(value)}")
    return bool(value)


def check_verbose(value, name="verbose"):
    """A progress-bar setting: True, False or "auto"."""
    if isinstance(value, str) and value == "auto":
        return value
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f'`{name}` must be True, False or "auto". Received: {name}={shown(value)}')
    return bool(value)


def check_keyword_arguments(cls, kwargs, allowed=("name", "trainable")):
    """The `**kwargs` a constructor forwards to Keras hold only `allowed` (Keras' own
    arguments that the class keeps): a misspelt argument (`num_clases=10`) is an error,
    not silently dropped, as Keras' functional models do."""
    unknown = sorted(set(kwargs) - set(allowed), key=str)
    if not unknown:
        return kwargs
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    own = [p.name for p in list(inspect.signature(cls.__init__).parameters.values())[1:] if p.kind in kinds]
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), own + list(allowed), n=1)
        if close:
            hints.append(f"{key!r}: did you mean {close[0]!r}?")
    hint = f" ({'; '.join(hints)})" if hints else ""
    received = ", ".join(f"{key}={shown(kwargs[key], 60)}" for key in unknown)
    raise ValueError(f"Unrecognized keyword arguments passed to {cls.__name__}: {unknown}{hint}. It takes "
                     f"{own} and Keras' {list(allowed)}. Received: {received}")


def check_eta(eta, name="eta"):
    """The DDIM noise scale: a finite number in [0, 1]. eta = 0 is deterministic DDIM, eta = 1
    the ancestral (DDPM) variance (Song et al. 2021, eq. 16); beyond 1 the step's
    sqrt(1 - alpha_bar_prev - sigma^2) is the square root of a negative number (NaN)."""
    return check_finite(name, eta, 0.0, 1.0)


def check_num_steps(value, name="num_steps"):
    """A respacing request (`GaussianDiffusion.respace`): None (all steps), a positive
    integer, a non-empty string ("100", "ddim50", "10,15,20", "logsnr20", "karras20",
    whose form and size the process checks) or a non-empty list of positive integers."""
    allowed = (f'`{name}` must be None, a positive integer, a string such as "100", "ddim50", "logsnr20" or '
               '"karras20", or a non-empty list of positive integers')
    if value is None:
        return None
    if is_int(value):
        if value < 1:
            raise ValueError(f"{allowed}. Received: {name}={shown(value)}")
        return int(value)
    if isinstance(value, str):
        if not value.strip() or _CONTROL.search(value) or len(value) > 10_000:
            raise ValueError(f"{allowed}. Received: {name}={shown(value)}")
        return value
    if isinstance(value, (list, tuple)) and value and all(is_int(v) and v >= 1 for v in value):
        return [int(v) for v in value]
    raise ValueError(f"{allowed}. Received: {name}={shown(value)}")


def check_range(name, value, low, high, high_inclusive=True):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and low <= value and (value <= high if high_inclusive else value < high)
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"`{name}` must be a number in [{low}, {high}{bracket}. Received: {name}={shown(value)}")
    return float(value)


def check_non_negative(name, value):
    """A real number >= 0 (not a bool)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={shown(value)}")
    return float(value)


def check_choice(name, value, allowed):
    """One of `allowed`, returned as written there: a string matches only a string, an
    integer only an integer (not a bool or a float), None only None; an array never."""
    for option in allowed:
        if _same_choice(value, option):
            return option
    raise ValueError(f"`{name}` must be one of {list(allowed)}. Received: {name}={shown(value)}")


def _same_choice(value, option):
    if option is None:
        return value is None
    if isinstance(option, str):
        return isinstance(value, str) and value == option
    if is_int(option):
        return is_int(value) and value == option
    return type(value) is type(option) and value == option


def check_int_tuple(name, value, allow_empty=False):
    """A non-empty tuple (or list, range, 1-D numpy array) of positive integers: not a
    string, a set, a dict or an iterator (`""` is no empty tuple)."""
    if isinstance(value, np.ndarray) and value.ndim == 1:
        items = tuple(value.tolist())
    elif isinstance(value, (list, tuple, range)):
        items = tuple(value)
    else:
        items = None
    if items is None or (not items and not allow_empty) or not all(is_int(v) and v > 0 for v in items):
        raise ValueError(
            f"`{name}` must be a {'' if allow_empty else 'non-empty '}sequence of positive "
            f"integers. Received: {name}={shown(value)}"
        )
    return tuple(int(v) for v in items)


def check_labels(labels, num_classes, name="labels"):
    """Class labels, shape (N,) or (N, 1), integers in [0, num_classes): an int32 (N,) array."""
    allowed = f"`{name}` must be a non-empty list of integers in [0, {num_classes})"
    try:
        values = np.asarray(labels)
    except (TypeError, ValueError, OverflowError, RuntimeError):  # ragged lists, GPU tensors, ...
        raise ValueError(f"{allowed}. Received: {name}={shown(labels)}") from None
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
    """`shape` is (batch, size, size, channels) (any batch when `batch` is None). A symbolic
    shape's unknown dimensions (None) and unknown rank pass: they are checked when known."""
    if getattr(shape, "rank", 0) is None:
        return shape
    shape = tuple(shape)
    if len(shape) != 4 or not all(got is None or want is None or got == want
                                  for got, want in zip(shape, (batch, size, size, channels))):
        expected = f"({'batch' if batch is None else batch}, {size}, {size}, {channels})"
        raise ValueError(f"`{name}` must have shape {expected}{where}. Received: {name}.shape={shape}")
    return shape


def as_array(name, value, allowed, ndim=None):
    """`value` (a list, a numpy array or a tensor numpy can read) as a numpy array of
    numbers (bool, integer or float) with `ndim` dimensions (any when None); otherwise a
    ValueError: `name` must be `allowed`, and what was received."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, OverflowError, RuntimeError):  # ragged lists, GPU tensors, ...
        raise ValueError(f"`{name}` must be {allowed}. Received: {name}={shown(value)}") from None
    if array.dtype.kind not in "biuf" or (ndim is not None and array.ndim != ndim):
        got = f"{name}.shape={array.shape} (dtype {array.dtype})" if array.ndim else f"{name}={shown(value)}"
        raise ValueError(f"`{name}` must be {allowed}. Received: {got}")
    return array


def check_finite_array(name, array, allowed):
    """A numpy `array` without NaN or infinite values."""
    bad = array.size - np.count_nonzero(np.isfinite(array))
    if bad:
        raise ValueError(f"`{name}` must be {allowed}. Received: {bad} NaN or infinite values "
                         f"(of {array.size}) in {name}")
    return array


def with_static_shape(name, tensor, shape, expected, where=""):
    """A TensorFlow graph tensor (a tf.data batch) whose static shape is partly unknown (a
    `filter`, a generator with None shapes) gets `shape` (None: any size), checked at run
    time when the batch arrives, with a message naming `name` and `expected` (e.g.
    "(batch, 8, 8, 3)"). A tensor whose shape is known where `shape` is comes back as it is
    (its static shape is checked where it is built)."""
    import tensorflow as tf

    static = tf.TensorShape(tensor.shape)
    if static.rank == len(shape) and all(want is None or got is not None
                                         for got, want in zip(static.as_list(), shape)):
        return tensor
    actual = tf.shape(tensor)
    padded = tf.concat([actual, tf.zeros([len(shape)], actual.dtype)], 0)[:len(shape)]  # any rank compares
    ok = tf.equal(tf.size(actual), len(shape))
    for i, want in enumerate(shape):
        if want is not None:
            ok = tf.logical_and(ok, tf.equal(padded[i], want))
    check = tf.debugging.Assert(ok, [f"`{name}` must have shape {expected}{where}. Received: {name}.shape=",
                                     actual], summarize=8)
    with tf.control_dependencies([check]):
        return tf.ensure_shape(tensor, shape)


def check_positive_number(name, value):
    """A finite real number > 0 (not a bool)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"`{name}` must be a finite number > 0. Received: {name}={shown(value)}")
    return float(value)
