import keras
import numpy as np
import pytest

from keras_cdm import BlurConditioningAugmentation, GaussianConditioningAugmentation
from keras_cdm.testing import assert_config_round_trip, cosine_betas, to_numpy

RNG = np.random.default_rng(11)
Z0 = RNG.uniform(-1, 1, (6, 8, 8, 3)).astype("float32")


def test_gaussian_augmentation_is_the_low_res_forward_process():
    aug = GaussianConditioningAugmentation(max_level=4000, num_timesteps=4000, schedule="cosine")
    levels = np.array([0, 1, 101, 1001, 2500, 4000])
    noise = RNG.normal(size=Z0.shape).astype("float32")
    ab = np.concatenate([[1.0], np.cumprod(1 - cosine_betas(4000))])[levels][:, None, None, None]  # s = 0: clean
    expected = np.sqrt(ab) * Z0 + np.sqrt(1 - ab) * noise
    np.testing.assert_allclose(to_numpy(aug.augment(Z0, levels, noise)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(aug.augment(Z0, np.zeros(6), noise)), Z0)


def test_gaussian_augmentation_amortizes_over_levels_in_training_only():
    aug = GaussianConditioningAugmentation(max_level=50, num_timesteps=100, seed=3)
    batch = np.repeat(Z0[:1], 2000, axis=0)
    z, levels = aug(batch, training=True)
    levels = to_numpy(levels)
    assert levels.min() == 0 and levels.max() == 50 and set(np.unique(levels)) == set(range(51))
    assert abs(levels.mean() - 25) < 1.5
    clean = levels == 0
    np.testing.assert_array_equal(to_numpy(z)[clean], batch[clean])
    assert np.abs(to_numpy(z)[~clean] - batch[~clean]).max() > 0.01
    z_inf, s_inf = aug(Z0, training=False)  # inference without levels: identity
    np.testing.assert_array_equal(to_numpy(z_inf), Z0)
    np.testing.assert_array_equal(to_numpy(s_inf), 0.0)
    z_fixed, s_fixed = aug(Z0, levels=30, training=False)  # fixed s at inference: noised
    np.testing.assert_array_equal(to_numpy(s_fixed), 30.0)
    assert np.abs(to_numpy(z_fixed) - Z0).max() > 0.01


def test_gaussian_augmentation_is_reproducible_under_a_seed():
    a, b = (GaussianConditioningAugmentation(100, num_timesteps=100, seed=5) for _ in range(2))
    for (za, sa), (zb, sb) in zip([a(Z0, training=True) for _ in range(2)], [b(Z0, training=True) for _ in range(2)]):
        np.testing.assert_array_equal(to_numpy(za), to_numpy(zb))
        np.testing.assert_array_equal(to_numpy(sa), to_numpy(sb))


def _np_blur(images, sigma, k=3):
    r = k // 2
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    w /= w.sum()
    padded = np.pad(images, [(r, r), (r, r), (0, 0)], mode="reflect")
    h, wd = images.shape[:2]
    out = np.zeros_like(images, dtype=np.float64)
    for i in range(k):
        for j in range(k):
            out += w[i] * w[j] * padded[i:i + h, j:j + wd]
    return out


def test_blur_matches_a_separable_gaussian_filter():
    blur = BlurConditioningAugmentation(kernel_size=3)
    sigmas = np.array([0.4, 0.5, 0.6, 1.0, 2.0, 0.45])
    got = to_numpy(blur.blur(Z0, sigmas))
    for image, sigma, out in zip(Z0, sigmas, got):
        np.testing.assert_allclose(out, _np_blur(image.astype(np.float64), sigma), rtol=1e-5, atol=1e-6)
    wide = BlurConditioningAugmentation(kernel_size=5)
    np.testing.assert_allclose(to_numpy(wide.blur(Z0[:1], [1.3]))[0], _np_blur(Z0[0], 1.3, 5), atol=1e-5)


def test_blur_is_applied_to_the_configured_fraction_in_training_only():
    blur = BlurConditioningAugmentation(sigma_range=(0.4, 0.6), probability=0.5, seed=2)
    batch = np.repeat(Z0[:1], 1000, axis=0)
    out = to_numpy(blur(batch, training=True))
    changed = np.abs(out - batch).reshape(1000, -1).max(-1) > 1e-6
    assert 0.45 < changed.mean() < 0.55
    np.testing.assert_array_equal(to_numpy(blur(batch[:4], training=False)), batch[:4])
    always = BlurConditioningAugmentation(probability=1.0, seed=2)
    assert (np.abs(to_numpy(always(batch[:50], training=True)) - batch[:50]).reshape(50, -1).max(-1) > 1e-6).all()
    never = BlurConditioningAugmentation(probability=0.0)
    np.testing.assert_array_equal(to_numpy(never(batch[:4], training=True)), batch[:4])


@pytest.mark.parametrize(
    "layer",
    [lambda: GaussianConditioningAugmentation(250, num_timesteps=1000, schedule="linear", seed=1),
     lambda: BlurConditioningAugmentation(sigma_range=(0.3, 0.7), probability=0.25, kernel_size=5, seed=4)],
)
def test_augmentation_config_round_trip(layer):
    original = layer()
    clone = assert_config_round_trip(original)
    assert clone.get_config() == original.get_config()


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: GaussianConditioningAugmentation(5000), "`max_level` must be an integer in [0, 4000] (`num_timesteps`). Received: max_level=5000"),
        (lambda: GaussianConditioningAugmentation(2.5), "`max_level` must be an integer in [0, 4000] (`num_timesteps`). Received: max_level=2.5"),
        (lambda: GaussianConditioningAugmentation(10, schedule="sqrt"), "`schedule` must be one of"),
        (lambda: BlurConditioningAugmentation(kernel_size=4), "`kernel_size` must be odd. Received: kernel_size=4"),
        (lambda: BlurConditioningAugmentation(sigma_range=(0.6, 0.4)), "Received: sigma_range=(0.6, 0.4)"),
        (lambda: BlurConditioningAugmentation(probability=1.5), "`probability` must be a number in [0.0, 1.0]"),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


def test_docstring_examples_run():
    import doctest

    for cls in (GaussianConditioningAugmentation, BlurConditioningAugmentation):
        tests = [t for t in doctest.DocTestFinder().find(cls, cls.__name__, globs={"np": np, "keras": keras,
                                                                                    cls.__name__: cls})
                 if t.name == cls.__name__]
        result = doctest.DocTestRunner().run(tests[0], out=lambda s: None)
        assert result.attempted > 0 and result.failed == 0
