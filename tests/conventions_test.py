"""The shared conventions: image value ranges (images), seeding, input checkers (_validation)."""

import numpy as np
import pytest

from keras_cdm import _validation as v
from keras_cdm import images, seeding
from keras_cdm.testing import to_numpy
from keras_cdm.version import __version__

pytestmark = pytest.mark.backend_neutral


def test_uint8_mapping_endpoints_and_round_trip():
    values = np.arange(256, dtype=np.uint8)
    unit = images.from_uint8(values)
    assert unit.dtype == np.float32 and unit[0] == -1.0 and unit[255] == 1.0 and abs(unit[128] - 1 / 255) < 1e-6
    np.testing.assert_array_equal(images.to_uint8(unit), values)
    np.testing.assert_array_equal(images.to_uint8([-2.0, -1.0, 1.0, 3.0]), [0, 0, 255, 255])


def test_from_uint8_takes_integer_dtypes_as_0_to_255_and_refuses_the_rest():
    np.testing.assert_array_equal(images.from_uint8(np.array([0, 255], np.int64)), [-1.0, 1.0])
    with pytest.raises(ValueError, match=r"`low` must be integers in \[0, 255\], or floats in \[-1, 1\]. "
                                         r"Received: integers in \[0, 256\]"):
        images.from_uint8(np.array([0, 256]), name="low")
    with pytest.raises(ValueError, match=r"Received: floats in \[0, 3\]"):
        images.from_uint8(np.array([0.0, 3.0]))
    np.testing.assert_array_equal(images.from_uint8(np.array([-1.2, 0.5]), tolerance=0.5, clip=True), [-1.0, 0.5])
    with pytest.raises(ValueError, match="dtype=bool"):
        images.from_uint8(np.array([True]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_from_uint8_refuses_nan_and_infinities(bad):
    # min()/max() of an array holding NaN are NaN, and NaN compares False: the range check let it through.
    with pytest.raises(ValueError, match=r"`x` must be integers in \[0, 255\], or floats in \[-1, 1\]. "
                                         r"Received: 1 NaN or infinite values \(of 3\) in x"):
        images.from_uint8(np.array([0.0, bad, 0.5], np.float32), name="x")
    with pytest.raises(ValueError, match="1 NaN or infinite values"):
        images.from_uint8(np.array([0.0, bad]), tolerance=0.5, clip=True)  # clipping does not hide it
    with pytest.raises(ValueError, match=r"`images` must be integers.*Received: images=\[\[1, 2\], \[3\]\]"):
        images.from_uint8([[1, 2], [3]])  # ragged


def test_check_choice_matches_type_and_value():
    assert v.check_choice("channels", np.int64(3), (1, 3)) == 3 and v.check_choice("labels", None, ("a", None)) is None
    for bad in (True, 3.0, "3", np.array([3]), np.array([1, 3]), [3], float("nan")):
        with pytest.raises(ValueError, match=r"`channels` must be one of \[1, 3\]. Received: channels="):
            v.check_choice("channels", bad, (1, 3))


def test_example_seeds_depend_on_seed_stream_and_index_only():
    a = seeding.example_seeds(5, [0, 1, 2], stream=1)
    np.testing.assert_array_equal(a[1:], seeding.example_seeds(5, [1, 2], stream=1))
    assert a.dtype == np.int32 and (a >= 0).all() and len(set(a.tolist())) == 3
    assert not np.array_equal(a, seeding.example_seeds(5, [0, 1, 2], stream=2))
    assert not np.array_equal(a, seeding.example_seeds(6, [0, 1, 2], stream=1))


def test_stateless_normal_is_per_example_and_counters_are_separate_streams():
    seeds = np.array([3, 4], "int32")
    both = to_numpy(seeding.stateless_normal((2, 4, 4, 1), seeds, seeding.INITIAL_NOISE_COUNTER))
    alone = to_numpy(seeding.stateless_normal((1, 4, 4, 1), seeds[1:], seeding.INITIAL_NOISE_COUNTER))
    np.testing.assert_array_equal(both[1:], alone)  # example 1 does not depend on its batch
    # The noise of every step that is used (t >= 1; step 0 adds none) and the augmentation noise.
    step = to_numpy(seeding.stateless_normal((2, 4, 4, 1), seeds, seeding.step_counter(1)))
    augmentation = to_numpy(seeding.stateless_normal((2, 4, 4, 1), seeds, seeding.AUGMENTATION_NOISE_COUNTER))
    assert not np.allclose(both, step) and not np.allclose(both, augmentation) and not np.allclose(step, augmentation)
    assert int(to_numpy(seeding.step_counter(0))) == 1 != seeding.INITIAL_NOISE_COUNTER


@pytest.mark.parametrize("seed", [-1, 2**31, 1.5, True, "0"])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(ValueError, match=r"`seed` must be None or an integer in \[0, 2\*\*31\)"):
        seeding.check_seed(seed)
    with pytest.raises(ValueError, match=r"or 2 such integers \(one per image\)"):
        seeding.per_example_seeds(seed, 2)


def test_per_example_seeds():
    np.testing.assert_array_equal(seeding.per_example_seeds(5, 3), seeding.example_seeds(5, range(3)))
    np.testing.assert_array_equal(seeding.per_example_seeds([9, 8], 2), [9, 8])
    assert len(seeding.per_example_seeds(None, 4)) == 4
    with pytest.raises(ValueError, match=r"Received: seed=\[1\]"):
        seeding.per_example_seeds([1], 2)


def test_checkers_name_the_argument_the_allowed_values_and_what_was_received():
    assert v.check_int("n", np.int64(3), 0, 5) == 3 and v.check_bool("f", np.True_) is True
    assert v.check_non_negative("eta", 0) == 0.0
    cases = [
        (lambda: v.check_int("n", 6, 0, 5), "`n` must be an integer in [0, 5]. Received: n=6"),
        (lambda: v.check_int("n", -1, 0), "`n` must be an integer >= 0. Received: n=-1"),
        (lambda: v.check_int("n", True, 0), "Received: n=True"),
        (lambda: v.check_bool("flag", 1), "`flag` must be True or False. Received: flag=1"),
        (lambda: v.check_non_negative("eta", float("nan")), "`eta` must be a number >= 0. Received: eta=nan"),
        (lambda: v.check_image_shape("x", (2, 8, 8, 1), 8, 3), "`x` must have shape (batch, 8, 8, 3) for this stage"),
        (lambda: v.check_image_shape("x", (2, 8, 8, 1), 8, 1, batch=3), "`x` must have shape (3, 8, 8, 1)"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert message in str(info.value)


@pytest.mark.parametrize("labels,message", [
    ([], "of shape (N,) or (N, 1). Received: labels of shape (0,)"),
    ([[0, 1], [1, 0]], "of shape (N,) or (N, 1). Received: labels of shape (2, 2)"),
    ([0.0, 1.0], "Received: labels=[0.0, 1.0] (dtype float64)"),
    ([0, 3, -1], "Received: labels outside it: [3, -1]"),
])
def test_check_labels(labels, message):
    np.testing.assert_array_equal(v.check_labels([[1], [2]], 3), [1, 2])
    with pytest.raises(ValueError) as info:
        v.check_labels(labels, 3)
    assert "`labels` must be a non-empty list of integers in [0, 3)" in str(info.value) and message in str(info.value)


def test_version_is_the_package_version():
    import keras_cdm

    assert keras_cdm.__version__ == __version__ and __version__.count(".") == 2
