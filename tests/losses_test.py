import math

import numpy as np
import pytest

from keras_cdm import losses
from keras_cdm.testing import to_numpy

RNG = np.random.default_rng(3)


def np_cdf(x):
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def test_normal_kl_matches_closed_form_and_is_zero_for_identical_gaussians():
    m1, m2 = RNG.normal(size=(2, 5))
    lv1, lv2 = RNG.normal(size=(2, 5))
    expected = np.log(np.exp(0.5 * lv2) / np.exp(0.5 * lv1)) + (np.exp(lv1) + (m1 - m2) ** 2) / (2 * np.exp(lv2)) - 0.5
    np.testing.assert_allclose(to_numpy(losses.normal_kl(m1, lv1, m2, lv2)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(losses.normal_kl(m1, lv1, m1, lv1)), 0.0, atol=1e-7)


def test_approx_cdf_is_close_to_the_exact_normal_cdf():
    x = np.linspace(-5, 5, 101)
    exact = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    np.testing.assert_allclose(to_numpy(losses.approx_standard_normal_cdf(x)), exact, atol=1e-3)


@pytest.mark.parametrize("mean,log_scale", [(0.0, -2.0), (0.3, -5.0), (-0.95, -1.0), (0.999, -6.0)])
def test_discretized_likelihood_sums_to_one_over_the_256_bins(mean, log_scale):
    bins = (np.arange(256, dtype=np.float64) / 127.5 - 1.0).astype("float32")
    log_probs = to_numpy(
        losses.discretized_gaussian_log_likelihood(bins, np.full(256, mean), np.full(256, log_scale))
    )
    assert np.exp(log_probs.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-4)


def test_discretized_likelihood_matches_bin_probability():
    x = np.array([-1.0, -0.2, 0.5, 1.0], "float32")
    means, log_scales = np.array([-0.9, -0.25, 0.45, 0.98]), np.array([-3.0, -2.0, -4.0, -3.5])
    inv = np.exp(-log_scales)
    upper, lower = np_cdf(inv * (x - means + 1 / 255)), np_cdf(inv * (x - means - 1 / 255))
    expected = np.log([upper[0], upper[1] - lower[1], upper[2] - lower[2], 1 - lower[3]])
    got = to_numpy(losses.discretized_gaussian_log_likelihood(x, means, log_scales))
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_mean_flat_averages_all_but_the_batch_axis():
    x = RNG.normal(size=(3, 4, 5, 2))
    np.testing.assert_allclose(to_numpy(losses.mean_flat(x)), x.reshape(3, -1).mean(-1), rtol=1e-5)
