"""Likelihood terms of the variational bound (Improved DDPM), in `keras.ops`.

All functions compute in float32 whatever the inputs' dtype.
"""

import math

from keras import ops


def _f32(*xs):
    return [ops.cast(x, "float32") for x in xs]


def mean_flat(x):
    """Mean over every axis but the first (batch) axis."""
    x = ops.cast(x, "float32")
    return ops.mean(ops.reshape(x, (ops.shape(x)[0], -1)), axis=-1)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), in nats."""
    mean1, logvar1, mean2, logvar2 = _f32(mean1, logvar1, mean2, logvar2)
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + ops.exp(logvar1 - logvar2)
        + ops.square(mean1 - mean2) * ops.exp(-logvar2)
    )


def approx_standard_normal_cdf(x):
    """Fast tanh approximation of the standard normal CDF (as in the reference)."""
    x = ops.cast(x, "float32")
    return 0.5 * (1.0 + ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * ops.power(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Elementwise log-likelihood (nats) of images in [-1, 1] with 256 levels.

    Each pixel value owns the bin `[x - 1/255, x + 1/255]`; the lowest bin
    extends to -inf and the highest to +inf, so the 256 probabilities sum to 1.
    """
    x, means, log_scales = _f32(x, means, log_scales)
    centered = x - means
    inv_stdv = ops.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = ops.log(ops.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = ops.log(ops.maximum(1.0 - cdf_min, 1e-12))
    log_cdf_delta = ops.log(ops.maximum(cdf_plus - cdf_min, 1e-12))
    return ops.where(
        x < -0.999, log_cdf_plus, ops.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta)
    )
