"""DiffusionUNet: the class-conditional U-Net of every cascade stage (sections 2.3, 3.2, 4.4).

One class builds the paper's base models and super-resolution models. It is a
functional Keras model built in `__init__`, so `summary()` shows stable,
readable layer names (`down_1_res_0`, `middle_attention`, `up_2_upsample`, ...)
and `get_config()` holds only the constructor arguments.
"""

import keras
from keras import ops

from keras_cdm import layers as cdm_layers
from keras_cdm._validation import (
    check_choice,
    check_int_tuple,
    check_positive_int,
    check_range,
)

CONDITIONINGS = ("timestep", "noise_level")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@keras.saving.register_keras_serializable(package="keras_cdm")
class DiffusionUNet(keras.Model):
    """U-Net predicting the noise (and variance) of a diffusion step.

    Inputs are a dict:
    - `noisy_images`: `(batch, image_size, image_size, image_channels)`, x_t.
    - `timesteps` (conditioning="timestep"): `(batch,)` step indices t, or
      `noise_levels` (conditioning="noise_level"): `(batch,)` continuous levels
      (e.g. `sqrt(alpha_bar)`, section 4.4), multiplied by `noise_level_scale`
      before the sinusoidal embedding.
    - `labels` (when `num_classes` is set): `(batch,)` integer class labels.
    - `low_res_images` (when `low_res_size` is set): the low-resolution
      conditioning, resized to `image_size` and concatenated channel-wise with
      `noisy_images` (section 2.3).
    - `augmentation_levels` (when `augmentation_level_embedding`): the Gaussian
      conditioning-augmentation level s, embedded by a second time-embedding MLP
      and added to the time embedding (section 3.2).

    The output has `image_channels` channels (epsilon), or twice as many with
    `learned_variance` (epsilon first, the variance interpolation v last), and
    is float32 whatever the dtype policy.

    Args:
        image_size: height and width of `noisy_images`.
        base_channels: channels of the first level (also the width of the
            sinusoidal time features; the embedding MLP is 4x wider).
        channel_multipliers: channels of level l are `base_channels * m[l]`;
            one level per multiplier, halving the resolution between levels.
        num_res_blocks: residual blocks per level on the way down (one more
            on the way up, as in the reference).
        attention_resolutions: resolutions in pixels (e.g. `(16, 8)`) with
            self-attention after each residual block; the middle block always
            has attention.
        num_heads: attention heads.
        dropout: dropout rate inside residual blocks.
        num_classes: number of classes, or None for an unconditional model.
        learned_variance: double the output channels (Improved DDPM).
        image_channels: channels of the images.
        low_res_size: size of the low-resolution conditioning image for a
            super-resolution stage; None for a base model.
        low_res_interpolation: how the low-resolution image is resized.
        augmentation_level_embedding: add the `augmentation_levels` input.
        conditioning: "timestep" (discrete steps) or "noise_level" (continuous
            noise-level conditioning).
        noise_level_scale: multiplier of noise levels before the embedding.
        use_scale_shift_norm: FiLM conditioning in residual blocks.
        resblock_updown: resample with BigGAN-style residual blocks instead of
            `Downsample` / `Upsample`.
        conv_resample: whether `Downsample` / `Upsample` use a convolution.
        num_groups: GroupNorm groups (32 in the paper); must divide every
            level's channels.
        dtype: dtype policy of every layer (e.g. "mixed_bfloat16").

    Example:
    >>> unet = DiffusionUNet(image_size=16, base_channels=16,
    ...                      channel_multipliers=(1, 2), attention_resolutions=(8,),
    ...                      num_classes=10, num_groups=8)
    >>> out = unet({"noisy_images": np.zeros((2, 16, 16, 3)),
    ...             "timesteps": np.array([1, 5]), "labels": np.array([0, 9])})
    >>> keras.ops.shape(out)
    (2, 16, 16, 3)
    """

    def __init__(
        self,
        image_size,
        base_channels=128,
        channel_multipliers=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16,),
        num_heads=1,
        dropout=0.0,
        num_classes=None,
        learned_variance=False,
        image_channels=3,
        low_res_size=None,
        low_res_interpolation="bicubic",
        augmentation_level_embedding=False,
        conditioning="timestep",
        noise_level_scale=1000.0,
        use_scale_shift_norm=True,
        resblock_updown=False,
        conv_resample=True,
        num_groups=32,
        dtype=None,
        **kwargs,
    ):
        args = dict(
            image_size=check_positive_int("image_size", image_size),
            base_channels=check_positive_int("base_channels", base_channels),
            channel_multipliers=check_int_tuple("channel_multipliers", channel_multipliers),
            num_res_blocks=check_positive_int("num_res_blocks", num_res_blocks),
            attention_resolutions=check_int_tuple(
                "attention_resolutions", attention_resolutions, allow_empty=True
            ),
            num_heads=check_positive_int("num_heads", num_heads),
            dropout=check_range("dropout", dropout, 0.0, 1.0, high_inclusive=False),
            num_classes=None if num_classes is None else check_positive_int("num_classes", num_classes),
            learned_variance=bool(learned_variance),
            image_channels=check_positive_int("image_channels", image_channels),
            low_res_size=None if low_res_size is None else check_positive_int("low_res_size", low_res_size),
            low_res_interpolation=check_choice(
                "low_res_interpolation", low_res_interpolation, INTERPOLATIONS
            ),
            augmentation_level_embedding=bool(augmentation_level_embedding),
            conditioning=check_choice("conditioning", conditioning, CONDITIONINGS),
            noise_level_scale=float(noise_level_scale),
            use_scale_shift_norm=bool(use_scale_shift_norm),
            resblock_updown=bool(resblock_updown),
            conv_resample=bool(conv_resample),
            num_groups=check_positive_int("num_groups", num_groups),
            dtype=_check_dtype(dtype),
        )
        _check_architecture(args)
        inputs, outputs = _build_graph(args)
        super().__init__(inputs=inputs, outputs=outputs, name=kwargs.pop("name", "diffusion_unet"), **kwargs)
        self._unet_args = args
        # Constructor arguments read as attributes: `unet.image_size`, ...
        for key, value in args.items():
            if key != "dtype":
                setattr(self, key, value)

    @property
    def conditioning_key(self):
        """Name of the input carrying t or the noise level."""
        return "timesteps" if self.conditioning == "timestep" else "noise_levels"

    def call(self, inputs, training=None, mask=None):
        _check_inputs(self, inputs)
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        config.update(self._unet_args)
        for key in ("channel_multipliers", "attention_resolutions"):
            config[key] = list(config[key])
        if config["dtype"] is not None and not isinstance(config["dtype"], str):
            config["dtype"] = keras.dtype_policies.serialize(keras.dtype_policies.get(config["dtype"]))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_cdm")
class _Resize(keras.layers.Layer):
    """Resizes images to `size` x `size`.

    Not `keras.layers.Resizing`: as a preprocessing layer its `call` defaults to
    `training=True`, which leaks into the call context and switches on the
    dropout of every later layer at inference.
    """

    def __init__(self, size, interpolation, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        self.interpolation = interpolation

    def call(self, images):
        return ops.image.resize(images, (self.size, self.size), interpolation=self.interpolation)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size, "interpolation": self.interpolation}


def _check_dtype(dtype):
    if dtype is not None:
        try:
            keras.dtype_policies.get(dtype)
        except (ValueError, TypeError):
            raise ValueError(
                "`dtype` must be None or a Keras dtype policy, e.g. 'float32', 'mixed_bfloat16', "
                f"'mixed_float16', 'bfloat16'. Received: dtype={dtype!r}"
            ) from None
    return dtype


def _level_resolutions(args):
    return [args["image_size"] // 2**level for level in range(len(args["channel_multipliers"]))]


def _check_architecture(args):
    levels = len(args["channel_multipliers"])
    size = args["image_size"]
    if size % 2 ** (levels - 1):
        raise ValueError(
            f"`image_size` must be divisible by 2**(len(channel_multipliers) - 1) = "
            f"{2 ** (levels - 1)}. Received: image_size={size}"
        )
    reached = _level_resolutions(args)
    unreached = [r for r in args["attention_resolutions"] if r not in reached]
    if unreached:
        raise ValueError(
            f"`attention_resolutions` must be resolutions the U-Net reaches, in pixels: "
            f"{reached}. Received: attention_resolutions={args['attention_resolutions']}"
        )
    channels = [args["base_channels"] * m for m in args["channel_multipliers"]]
    attention_channels = [c for c, r in zip(channels, reached) if r in args["attention_resolutions"]]
    for c in attention_channels + [channels[-1]]:
        if c % args["num_heads"]:
            raise ValueError(
                f"`num_heads` must divide the channels of every attention layer "
                f"({sorted(set(attention_channels + [channels[-1]]))}). "
                f"Received: num_heads={args['num_heads']}"
            )
    for c in [args["base_channels"]] + channels:
        if c % args["num_groups"]:
            raise ValueError(
                f"`num_groups` must divide the channels of every level "
                f"({[args['base_channels']] + channels}). Received: num_groups={args['num_groups']}"
            )
    if args["low_res_size"] is not None and args["low_res_size"] > size:
        raise ValueError(
            f"`low_res_size` must not exceed `image_size` ({size}). "
            f"Received: low_res_size={args['low_res_size']}"
        )


def _check_inputs(unet, inputs):
    expected = set(unet.input.keys()) if isinstance(unet.input, dict) else None
    if not isinstance(inputs, dict) or set(inputs) != expected:
        got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
        raise ValueError(
            f"{unet.name} expects a dict with keys {sorted(expected)}. Received: inputs={got}"
        )
    for key, spec in unet.input.items():
        shape = tuple(getattr(inputs[key], "shape", ()))
        if len(spec.shape) == 4 and (len(shape) != 4 or tuple(shape[1:]) != tuple(spec.shape[1:])):
            raise ValueError(
                f"`{key}` must have shape (batch, {', '.join(map(str, spec.shape[1:]))}). "
                f"Received: {key}.shape={shape}"
            )


def _build_graph(a):
    """Creates the Keras inputs and the output tensor of the U-Net described by `a`."""
    dtype, bc, groups = a["dtype"], a["base_channels"], a["num_groups"]
    size, ch_in = a["image_size"], a["image_channels"]
    inputs = {"noisy_images": keras.Input((size, size, ch_in), name="noisy_images")}
    key = "timesteps" if a["conditioning"] == "timestep" else "noise_levels"
    inputs[key] = keras.Input((), name=key)
    scale = a["noise_level_scale"] if key == "noise_levels" else 1.0
    emb = cdm_layers.TimestepEmbedding(bc, scale=scale, name="time_embedding", dtype=dtype)(inputs[key])
    if a["num_classes"] is not None:
        inputs["labels"] = keras.Input((), dtype="int32", name="labels")
        label_emb = cdm_layers.ClassEmbedding(a["num_classes"], 4 * bc, name="label_embedding", dtype=dtype)
        emb = keras.layers.Add(name="add_label_embedding", dtype=dtype)([emb, label_emb(inputs["labels"])])
    if a["augmentation_level_embedding"]:
        inputs["augmentation_levels"] = keras.Input((), name="augmentation_levels")
        aug = cdm_layers.TimestepEmbedding(bc, name="augmentation_level_embedding", dtype=dtype)
        emb = keras.layers.Add(name="add_augmentation_embedding", dtype=dtype)(
            [emb, aug(inputs["augmentation_levels"])]
        )
    x = inputs["noisy_images"]
    if a["low_res_size"] is not None:
        low = a["low_res_size"]
        inputs["low_res_images"] = keras.Input((low, low, ch_in), name="low_res_images")
        resized = _Resize(size, a["low_res_interpolation"], name="low_res_resize", dtype=dtype)(
            inputs["low_res_images"]
        )
        x = keras.layers.Concatenate(name="concat_low_res", dtype=dtype)([x, resized])

    res = lambda ch, name, resample=None: cdm_layers.ResidualBlock(  # noqa: E731
        ch, dropout=a["dropout"], use_scale_shift_norm=a["use_scale_shift_norm"],
        resample=resample, num_groups=groups, name=name, dtype=dtype,
    )
    attn = lambda name: cdm_layers.AttentionBlock(a["num_heads"], groups, name=name, dtype=dtype)  # noqa: E731

    h = keras.layers.Conv2D(bc, 3, padding="same", name="input_conv", dtype=dtype)(x)
    skips = [h]
    resolutions = _level_resolutions(a)
    last = len(a["channel_multipliers"]) - 1
    for level, mult in enumerate(a["channel_multipliers"]):
        use_attention = resolutions[level] in a["attention_resolutions"]
        for i in range(a["num_res_blocks"]):
            h = res(bc * mult, f"down_{level}_res_{i}")(h, emb)
            if use_attention:
                h = attn(f"down_{level}_attention_{i}")(h)
            skips.append(h)
        if level != last:
            if a["resblock_updown"]:
                h = res(None, f"down_{level}_downsample", resample="down")(h, emb)
            else:
                h = cdm_layers.Downsample(a["conv_resample"], name=f"down_{level}_downsample", dtype=dtype)(h)
            skips.append(h)

    h = res(None, "middle_res_0")(h, emb)
    h = attn("middle_attention")(h)
    h = res(None, "middle_res_1")(h, emb)

    for level in reversed(range(len(a["channel_multipliers"]))):
        use_attention = resolutions[level] in a["attention_resolutions"]
        for i in range(a["num_res_blocks"] + 1):
            h = keras.layers.Concatenate(name=f"up_{level}_skip_{i}", dtype=dtype)([h, skips.pop()])
            h = res(bc * a["channel_multipliers"][level], f"up_{level}_res_{i}")(h, emb)
            if use_attention:
                h = attn(f"up_{level}_attention_{i}")(h)
        if level:
            if a["resblock_updown"]:
                h = res(None, f"up_{level}_upsample", resample="up")(h, emb)
            else:
                h = cdm_layers.Upsample(a["conv_resample"], name=f"up_{level}_upsample", dtype=dtype)(h)

    h = cdm_layers.GroupNormalization(groups, epsilon=1e-5, name="output_norm", dtype=dtype)(h)
    h = keras.layers.Activation("silu", name="output_silu", dtype=dtype)(h)
    out_channels = ch_in * (2 if a["learned_variance"] else 1)
    h = keras.layers.Conv2D(
        out_channels, 3, padding="same", kernel_initializer="zeros", name="output_conv", dtype=dtype
    )(h)
    # Diffusion math runs in float32 whatever the policy.
    outputs = keras.layers.Activation("linear", dtype="float32", name="output")(h)
    return inputs, outputs
