"""Per-example draws: the same numbers eagerly, inside a compiled function, and one example at a time."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_cdm import seeding
from keras_cdm._compile import compile_function
from keras_cdm.seeding import example_seeds, stateless_normal


def draws(shape, seeds, counter):
    return np.asarray(ops.convert_to_numpy(stateless_normal(shape, ops.convert_to_tensor(seeds, "int32"), counter)))


@pytest.mark.parametrize("counter", [0, 7, seeding.AUGMENTATION_NOISE_COUNTER])
def test_per_example_draws_are_the_draws_of_each_example_alone(counter):
    seeds = example_seeds(3, range(5))
    batch = draws((5, 4, 4, 2), seeds, counter)
    singles = np.concatenate([draws((1, 4, 4, 2), [s], counter) for s in seeds])
    np.testing.assert_array_equal(batch, singles)
    assert batch.shape == (5, 4, 4, 2)
    assert np.abs(batch[0] - batch[1]).max() > 0.1  # different seeds, different draws
    assert abs(batch.std() - 1.0) < 0.25


def test_eager_draws_equal_the_draws_inside_a_compiled_function():
    seeds = ops.convert_to_tensor(example_seeds(0, range(6)), "int32")
    compiled = compile_function(lambda s, c: stateless_normal((6, 3, 3, 1), s, c))
    inside = np.asarray(ops.convert_to_numpy(compiled(seeds, ops.convert_to_tensor(5, "int32"))))
    np.testing.assert_array_equal(draws((6, 3, 3, 1), seeds, 5), inside)
    np.testing.assert_array_equal(draws((6, 3, 3, 1), seeds, 5), draws((6, 3, 3, 1), seeds, 5))
    assert np.abs(inside - draws((6, 3, 3, 1), seeds, 6)).max() > 0.1  # another counter, other draws


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's eager draws run as a graph")
def test_tensorflow_eager_draws_run_one_graph_per_example_shape():
    # Eagerly, `tf.map_fn` would run a Python iteration per example (1.3 s of `make demo`'s
    # steady call); the draws run as a `tf.function`, traced once per example shape whatever
    # the seeds, the batch or the counter.
    draws((4, 5, 5, 1), example_seeds(1, range(4)), 0)
    function = seeding._GRAPH_DRAWS[(5, 5, 1)].function
    traced = function.experimental_get_tracing_count()
    for batch, counter in [(4, 1), (4, 2**31 - 1), (9, 3)]:
        draws((batch, 5, 5, 1), example_seeds(batch, range(batch)), counter)
    assert function.experimental_get_tracing_count() - traced <= 1  # at most a retrace to a polymorphic batch
