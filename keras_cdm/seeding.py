"""Seeding: every random draw of sampling is a pure function of a seed and a counter.

Training draws come from `keras.random.SeedGenerator`s inside `call` (see
`DiffusionModel`); sampling draws come from here, so that the images of a seed are
the same whatever the batch size, the chunking of a long chain, or the backend's
compilation:

- A request `seed` (an integer in [0, 2**31)) gives example i of cascade stage k
  its own seed, `example_seeds(seed, [i], stream=k)` (`DiffusionModel.generate`
  alone uses stream 0).
- Each example's draws are `stateless_normal(shape, seeds, counter)` with one
  counter per use (`INITIAL_NOISE_COUNTER` for x_T, `step_counter(t)` for the noise of
  reverse step t, `AUGMENTATION_NOISE_COUNTER` for the non-truncated conditioning
  augmentation of an upsampler), so no two uses share a stream.

One exception, harmless: Keras' TensorFlow backend reduces seed states modulo
2**31 - 2, so there `AUGMENTATION_NOISE_COUNTER` draws the same numbers as
`step_counter(0)`, the noise of the last reverse step, which every sampler multiplies
by zero (x_0 gets no noise). The counter is kept so that a seed gives the same images
as in earlier versions.
"""

import threading

import keras
import numpy as np
from keras import ops

from keras_cdm._validation import is_int, shown

SEED_LIMIT = 2**31
INITIAL_NOISE_COUNTER = 0
AUGMENTATION_NOISE_COUNTER = 2**31 - 1  # apart from every step counter t + 1


def step_counter(t):
    """The noise counter of reverse step `t` (a scalar tensor or int)."""
    return ops.cast(t, "int32") + 1


def check_seed(seed):
    """A request seed: None draws a fresh one; else an integer in [0, 2**31)."""
    if seed is None:
        return int(np.random.randint(0, SEED_LIMIT - 1))
    if not is_int(seed) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"`seed` must be None or an integer in [0, 2**31). Received: seed={shown(seed)}")
    return int(seed)


def per_example_seeds(seed, batch):
    """`seed` (None, an integer, or one seed per example) as `batch` per-example seeds."""
    if seed is None:
        seed = check_seed(None)
    if is_int(seed) and 0 <= seed < SEED_LIMIT:
        return example_seeds(seed, range(batch))
    try:
        seeds = np.asarray(seed) if isinstance(seed, (list, tuple, np.ndarray)) else None
    except (ValueError, TypeError, OverflowError):  # ragged lists, integers too large
        seeds = None
    if (seeds is None or seeds.shape != (batch,) or not np.issubdtype(seeds.dtype, np.integer)
            or seeds.min() < 0 or seeds.max() >= SEED_LIMIT):
        raise ValueError(
            f"`seed` must be None, an integer in [0, 2**31), or {batch} such integers (one per image). "
            f"Received: seed={shown(seed)}"
        )
    return seeds.astype("int32")


def example_seeds(seed, indices, stream=0):
    """One seed per example: a pure function of (`seed`, `stream`, example index).

    A cascade draws stage k of example i from `example_seeds(seed, [i], k)`,
    so results do not depend on how a request is split into batches.
    """
    return np.asarray(
        [np.random.SeedSequence([int(seed), int(stream), int(i)]).generate_state(1)[0] >> 1 for i in indices],
        dtype=np.int32,
    )


_SEED_SLOT = []


def stateless_normal(shape, seed, counter):
    """N(0, 1) draws that are a pure function of `(seed, counter)`.

    `seed` is a scalar (one stream for the whole tensor) or a vector of one
    seed per example (`shape[0]` of them): example i then gets the draw of
    `(seed[i], counter)` whatever the batch it is in, so a batch of 4 gives the
    same samples as four batches of 1. Works inside compiled loops on every
    backend: a Keras `SeedGenerator` is used only as a slot whose state is
    mapped to `[seed, counter]` in a `keras.StatelessScope`.
    """
    if len(getattr(seed, "shape", ())) == 1:
        example_shape = tuple(shape[1:])
        if keras.backend.backend() == "tensorflow" and _executing_eagerly_in_tensorflow():
            _seed_slot()  # its variable made eagerly, not inside the graph function's trace
            draws = _graph_draws(tuple(int(dim) for dim in example_shape))
            return draws(ops.convert_to_tensor(seed), ops.convert_to_tensor(counter, "int32"))
        return _per_example_normal(example_shape, seed, counter)
    return _stateless_normal(shape, seed, counter)


def _per_example_normal(example_shape, seeds, counter):
    # JAX vectorizes the draws; TensorFlow's vectorizer has no rule for stateless
    # random ops and would warn and loop anyway, so loop explicitly there.
    per_example = ops.vectorized_map if keras.backend.backend() == "jax" else ops.map
    return per_example(lambda s: _stateless_normal(example_shape, s, counter), seeds)


_GRAPH_DRAWS = {}
_LOCK = threading.Lock()  # a pipeline prepares its later stages in a background thread


def _graph_draws(example_shape):
    """The per-example draws of `example_shape`, compiled (a `tf.function`, traced once per
    shape and seed dtype). Eagerly, `tf.map_fn` runs one Python iteration of several ops
    per example: `make demo`'s initial and augmentation noises (100 images per stage) took
    1.3 s of its 5 s steady-state call; in a graph the loop is one while op, and the
    draws are the same numbers."""
    from keras_cdm._compile import compile_function

    with _LOCK:
        if example_shape not in _GRAPH_DRAWS:
            _GRAPH_DRAWS[example_shape] = compile_function(
                lambda seeds, counter: _per_example_normal(example_shape, seeds, counter))
        return _GRAPH_DRAWS[example_shape]


def _executing_eagerly_in_tensorflow():
    import tensorflow as tf

    return tf.executing_eagerly()


def _seed_slot():
    """The `SeedGenerator` whose state `_stateless_normal` maps to each draw's seed."""
    with _LOCK:
        if not _SEED_SLOT:
            _SEED_SLOT.append(keras.random.SeedGenerator(0, name="keras_cdm_seed_slot"))
    return _SEED_SLOT[0]


def _stateless_normal(shape, seed, counter):
    slot = _seed_slot()
    dtype = slot.state.dtype
    state = ops.stack([ops.cast(seed, dtype), ops.cast(counter, dtype)])
    with keras.StatelessScope(state_mapping=[(slot.state, state)]):
        return keras.random.normal(shape, seed=slot)
