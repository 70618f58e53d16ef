"""Conditioning augmentation of the low-resolution input of upsamplers (section 3).

- `GaussianConditioningAugmentation` (3.2, 3.3): corrupts the low-resolution
  conditioning with the low-resolution model's forward process,
  z_s ~ q(z_s | z_0), with s drawn uniformly in [0, max_level] during training
  (amortized over s; the U-Net sees s through an extra time embedding).
- `BlurConditioningAugmentation` (3.1): a k x k Gaussian blur with sigma drawn
  per example, applied to a fraction of the examples, in training only.

Both layers answer one interface, so no caller asks which kind it has:
`training_inputs(images, training)` and `sampling_inputs(images, level, seeds,
truncated)` return the U-Net's conditioning inputs (`low_res_images`, and
`augmentation_levels` for the Gaussian kind); `max_sampling_level`,
`supports_truncation`, `forward_process` and `level_input` say which sampling
settings and U-Net inputs apply.

Augmentation level s follows the paper: s = 0 leaves z_0 clean, s >= 1 is the
forward process after s steps (index s - 1 of `GaussianDiffusion`), so
"s = 1001" in Table 3 is `level=1001`.
"""

import keras
from keras import ops

from keras_cdm._validation import (
    check_finite,
    check_generator_seed,
    check_positive_int,
    check_range,
    check_size,
    is_int,
    shown,
)
from keras_cdm.diffusion import GaussianDiffusion
from keras_cdm.seeding import AUGMENTATION_NOISE_COUNTER, stateless_normal

register = keras.saving.register_keras_serializable(package="keras_cdm")


class ConditioningAugmentation(keras.layers.Layer):
    """What a `DiffusionModel` asks of its conditioning augmentation (both kinds).

    Attributes:
        max_sampling_level: the largest augmentation level s a sampler may ask
            for (0: the layer has no level).
        supports_truncation: whether the previous stage may hand over its
            sample stopped at z_s (truncated augmentation, section 3.3).
        forward_process: the `GaussianDiffusion` that makes z_s (None when
            there is none).
        level_input: whether the U-Net sees the level (its
            `augmentation_level_embedding` input).
    """

    max_sampling_level = 0
    supports_truncation = False
    forward_process = None
    level_input = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.built = True  # no weights: its seed generator's state is made with it

    def training_inputs(self, images, training=None):
        """The U-Net's conditioning inputs for clean low-resolution `images` in `fit`."""
        raise NotImplementedError

    def sampling_inputs(self, images, level, seeds, truncated=False):
        """The U-Net's conditioning inputs at sampling time: `images` augmented at
        level `level` with per-example `seeds` (see `keras_cdm.seeding`); with
        `truncated`, `images` already are z_s."""
        raise NotImplementedError


@register
class GaussianConditioningAugmentation(ConditioningAugmentation):
    """Gaussian (forward-process) noise on the low-resolution conditioning.

    Call arguments:
        images: the clean low-resolution images z_0 (NHWC, in [-1, 1]).
        levels: `(batch,)` integer levels s (or one for the batch). When None:
            drawn uniformly in [0, max_level] in training, 0 (no noise, the
            identity) at inference.
        training: draw levels (when not given) and noise from the layer's seed.

    Returns `(z_s, levels)`; `levels` is float32, ready for the U-Net's
    `augmentation_levels` input. `augment(images, levels, noise)` is the pure
    function used for non-truncated sampling; in truncated mode the base
    model's sample stopped at s already is z_s and goes to the U-Net as is.

    Args:
        max_level: largest s drawn in training (at most `num_timesteps`).
        num_timesteps: steps of the low-resolution forward process (4000).
        schedule: its noise schedule ("cosine" in the paper).
        seed: seed of the layer's `SeedGenerator`.

    Example:
    >>> aug = GaussianConditioningAugmentation(max_level=1000, seed=0)
    >>> z_s, s = aug(np.zeros((2, 8, 8, 3)), training=True)
    >>> keras.ops.shape(z_s), keras.ops.shape(s)
    ((2, 8, 8, 3), (2,))
    """

    def __init__(self, max_level, num_timesteps=4000, schedule="cosine", seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_timesteps = check_positive_int("num_timesteps", num_timesteps)
        if not is_int(max_level) or not 0 <= max_level <= self.num_timesteps:
            raise ValueError(f"`max_level` must be an integer in [0, {self.num_timesteps}] (`num_timesteps`). "
                             f"Received: max_level={shown(max_level)}")
        self.max_level = int(max_level)
        self.schedule = schedule
        self.seed = check_generator_seed(seed)
        self.diffusion = GaussianDiffusion(self.num_timesteps, schedule)
        self.seed_generator = keras.random.SeedGenerator(seed)

    supports_truncation = True
    level_input = True

    @property
    def max_sampling_level(self):
        return self.num_timesteps

    @property
    def forward_process(self):
        return self.diffusion

    def augment(self, images, levels, noise):
        """z_s from z_0 for per-example levels s (z_0 itself where s = 0)."""
        images = ops.cast(images, "float32")
        levels = ops.cast(ops.reshape(levels, (-1,)), "int32")
        noisy = self.diffusion.q_sample(images, ops.maximum(levels - 1, 0), noise)
        clean = ops.reshape(ops.equal(levels, 0), (-1, 1, 1, 1))
        return ops.where(clean, images, noisy)

    def call(self, images, levels=None, training=None):
        batch = ops.shape(images)[0]
        if levels is None and training:
            levels = keras.random.randint((batch,), 0, self.max_level + 1, seed=self.seed_generator)
        elif levels is None:
            levels = ops.zeros((batch,), "int32")
        else:
            levels = ops.zeros((batch,), "int32") + ops.cast(levels, "int32")
        noise = keras.random.normal(ops.shape(images), seed=self.seed_generator)
        return self.augment(images, levels, noise), ops.cast(levels, "float32")

    def training_inputs(self, images, training=None):
        z_s, levels = self(images, training=training)
        return {"low_res_images": z_s, "augmentation_levels": levels}

    def sampling_inputs(self, images, level, seeds, truncated=False):
        images = ops.convert_to_tensor(images, "float32")
        levels = ops.full((images.shape[0],), level, "int32")
        if not truncated:
            noise = stateless_normal(images.shape, ops.convert_to_tensor(seeds, "int32"), AUGMENTATION_NOISE_COUNTER)
            images = self.augment(images, levels, noise)
        return {"low_res_images": images, "augmentation_levels": ops.cast(levels, "float32")}

    def compute_output_spec(self, images, levels=None, training=None):
        return (
            keras.KerasTensor(images.shape, "float32"),
            keras.KerasTensor((images.shape[0],), "float32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(max_level=self.max_level, num_timesteps=self.num_timesteps,
                      schedule=self.schedule, seed=self.seed)
        return config


@register
class BlurConditioningAugmentation(ConditioningAugmentation):
    """Random Gaussian blur of the low-resolution conditioning (section 3.1).

    During training each example is blurred with probability `probability`
    by a `kernel_size` x `kernel_size` Gaussian filter whose sigma is drawn
    uniformly in `sigma_range` (paper: k = 3, sigma ~ U(0.4, 0.6), 50%).
    Borders are padded by reflection. At inference the layer is the identity.

    Args:
        sigma_range: `(low, high)` range of sigma.
        probability: fraction of the examples that are blurred.
        kernel_size: odd filter size.
        seed: seed of the layer's `SeedGenerator`.

    Example:
    >>> blur = BlurConditioningAugmentation(seed=0)
    >>> keras.ops.shape(blur(np.zeros((2, 8, 8, 3)), training=True))
    (2, 8, 8, 3)
    """

    def __init__(self, sigma_range=(0.4, 0.6), probability=0.5, kernel_size=3, seed=None, **kwargs):
        super().__init__(**kwargs)
        pair = list(sigma_range) if isinstance(sigma_range, (list, tuple)) and len(sigma_range) == 2 else None
        low, high = (0.0, 0.0) if pair is None else (check_finite("sigma_range", v, 0.0, 1e3) for v in pair)
        if not 0.0 < low <= high:
            raise ValueError(
                f"`sigma_range` must be (low, high) with 0 < low <= high. Received: sigma_range={shown(sigma_range)}"
            )
        self.sigma_range = (low, high)
        self.probability = check_range("probability", probability, 0.0, 1.0)
        self.kernel_size = check_size("kernel_size", kernel_size)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd. Received: kernel_size={kernel_size}")
        self.seed = check_generator_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def blur(self, images, sigmas):
        """Blurs each image with its own sigma (a separable Gaussian, reflected borders)."""
        images = ops.cast(images, "float32")
        r = self.kernel_size // 2
        offsets = ops.arange(-r, r + 1, dtype="float32")
        sigmas = ops.reshape(ops.cast(sigmas, "float32"), (-1, 1))
        weights = ops.exp(-0.5 * ops.square(offsets[None, :] / sigmas))
        weights = weights / ops.sum(weights, axis=-1, keepdims=True)  # (batch, k)
        height, width = images.shape[1], images.shape[2]
        padded = ops.pad(images, [(0, 0), (r, r), (r, r), (0, 0)], mode="reflect")
        rows = sum(
            weights[:, i, None, None, None] * padded[:, i : i + height, :, :] for i in range(self.kernel_size)
        )
        return sum(
            weights[:, j, None, None, None] * rows[:, :, j : j + width, :] for j in range(self.kernel_size)
        )

    def call(self, images, training=None):
        if not training or self.probability == 0.0:
            return images
        batch = ops.shape(images)[0]
        low, high = self.sigma_range
        sigmas = keras.random.uniform((batch,), low, high, seed=self.seed_generator)
        chosen = keras.random.uniform((batch,), seed=self.seed_generator) < self.probability
        blurred = ops.cast(self.blur(images, sigmas), images.dtype)
        return ops.where(ops.reshape(chosen, (-1, 1, 1, 1)), blurred, images)

    def training_inputs(self, images, training=None):
        return {"low_res_images": self(images, training=training)}

    def sampling_inputs(self, images, level, seeds, truncated=False):
        return {"low_res_images": ops.convert_to_tensor(images, "float32")}

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(sigma_range=list(self.sigma_range), probability=self.probability,
                      kernel_size=self.kernel_size, seed=self.seed)
        return config
