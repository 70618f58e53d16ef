"""DiffusionUNet: the class-conditional U-Net of every cascade stage (sections 2.3, 3.2, 4.4).

One class builds the paper's base models and super-resolution models. It is a
functional Keras model built in `__init__`, so `summary()` shows stable,
readable layer names (`down_1_res_0`, `middle_attention`, `up_2_upsample`, ...)
and `get_config()` holds only the constructor arguments.
"""

import keras
from keras import ops

from keras_cdm import layers as cdm_layers
from keras_cdm import lora
from keras_cdm._validation import (
    LIMITS,
    check_bool,
    check_choice,
    check_config,
    check_finite,
    check_int_tuple,
    check_keyword_arguments,
    check_range,
    check_size,
    shown,
)
from keras_cdm.images import INTERPOLATIONS
from keras_cdm.schedules import CONDITIONINGS


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
        null_label: also learn a "no class" embedding, label `num_classes`, for
            classifier-free guidance (train with `DiffusionModel(label_dropout=...)`,
            sample with `guidance_scale`; see `keras_cdm.guidance`). Off in the
            paper's models: it adds one embedding row.
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
        remat: rematerialize every residual block in training (gradient
            checkpointing with `keras.remat`, see `ResidualBlock`): the
            backward pass recomputes the blocks' intermediate feature maps
            instead of keeping them, for less activation memory at the cost
            of about one more forward pass. The same loss and gradients; not
            part of the architecture (weights load either way). Off in the
            presets; `benchmarks/remat.py` measures it.
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
        null_label=False,
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
        remat=False,
        **kwargs,
    ):
        # === Arguments ===
        # Keras' functional models drop keyword arguments they do not know: a misspelt
        # argument (num_clases=10) would build another model without a word.
        check_keyword_arguments(DiffusionUNet, kwargs)
        # Sizes are bounded (keras_cdm.presets.LIMITS), and the parameters counted, before
        # anything is built: a config from an untrusted preset cannot exhaust memory.
        image_size = check_size("image_size", image_size)
        base_channels = check_size("base_channels", base_channels, "channels")
        channel_multipliers = _check_sequence("channel_multipliers", channel_multipliers)
        num_res_blocks = check_size("num_res_blocks", num_res_blocks)
        attention_resolutions = _check_sequence("attention_resolutions", attention_resolutions, allow_empty=True)
        num_heads = check_size("num_heads", num_heads)
        dropout = check_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        if num_classes is not None:
            num_classes = check_size("num_classes", num_classes)
        null_label = check_bool("null_label", null_label)
        if null_label and num_classes is None:
            raise ValueError("`null_label=True` (the 'no class' label of classifier-free guidance) needs a "
                             "class-conditional U-Net: set `num_classes`. Received: num_classes=None")
        learned_variance = check_bool("learned_variance", learned_variance)
        image_channels = check_size("image_channels", image_channels)
        if low_res_size is not None:
            low_res_size = check_size("low_res_size", low_res_size, "image_size")
        low_res_interpolation = check_choice("low_res_interpolation", low_res_interpolation, INTERPOLATIONS)
        augmentation_level_embedding = check_bool(
            "augmentation_level_embedding", augmentation_level_embedding
        )
        conditioning = check_choice("conditioning", conditioning, CONDITIONINGS)
        noise_level_scale = check_finite("noise_level_scale", noise_level_scale, 0.0, LIMITS["noise_level_scale"])
        use_scale_shift_norm = check_bool("use_scale_shift_norm", use_scale_shift_norm)
        resblock_updown = check_bool("resblock_updown", resblock_updown)
        conv_resample = check_bool("conv_resample", conv_resample)
        num_groups = check_size("num_groups", num_groups)
        dtype = _check_dtype(dtype)
        remat = check_bool("remat", remat)

        # === Functional model ===
        # The validated arguments, read by the graph builders below the class.
        config = dict(
            image_size=image_size,
            base_channels=base_channels,
            channel_multipliers=channel_multipliers,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            num_heads=num_heads,
            dropout=dropout,
            num_classes=num_classes,
            null_label=null_label,
            learned_variance=learned_variance,
            image_channels=image_channels,
            low_res_size=low_res_size,
            low_res_interpolation=low_res_interpolation,
            augmentation_level_embedding=augmentation_level_embedding,
            conditioning=conditioning,
            noise_level_scale=noise_level_scale,
            use_scale_shift_norm=use_scale_shift_norm,
            resblock_updown=resblock_updown,
            conv_resample=conv_resample,
            num_groups=num_groups,
            dtype=dtype,
            remat=remat,
        )
        _check_architecture(config)
        inputs, outputs = _build_graph(config)
        super().__init__(inputs=inputs, outputs=outputs, name=kwargs.pop("name", "diffusion_unet"), **kwargs)

        # === Config ===
        self.image_size = image_size
        self.base_channels = base_channels
        self.channel_multipliers = channel_multipliers
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.num_heads = num_heads
        self.dropout = dropout
        self.num_classes = num_classes
        self.null_label = null_label
        self.learned_variance = learned_variance
        self.image_channels = image_channels
        self.low_res_size = low_res_size
        self.low_res_interpolation = low_res_interpolation
        self.augmentation_level_embedding = augmentation_level_embedding
        self.conditioning = conditioning
        self.noise_level_scale = noise_level_scale
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resblock_updown = resblock_updown
        self.conv_resample = conv_resample
        self.num_groups = num_groups
        self.remat = remat
        # The dtype policy of every layer, as given. Not `self.dtype`: that is
        # the read-only dtype of the model's own variables in Keras.
        self._layer_dtype = dtype

    @property
    def conditioning_key(self):
        """Name of the input carrying t or the noise level."""
        return _conditioning_key(self.conditioning)

    def call(self, inputs, training=None, mask=None):
        _check_inputs(self, inputs)
        return super().call(inputs, training=training, mask=mask)

    # -- LoRA fine-tuning (keras_cdm.lora: Keras' own enable_lora on the chosen layers) ----

    def enable_lora(self, rank, target=None, alpha=None):
        """Enables LoRA of `rank` on the layers `target` names ("attention",
        "convolutions", "embeddings", or a list; None: attention and convolutions) and
        freezes every other weight, so that training moves only the adapter. `alpha`
        scales the update by alpha / rank (None: the rank, a scale of 1). Returns the
        LoRA settings (also `lora_config`)."""
        return lora.enable_lora(self, rank, target, alpha)

    @property
    def lora_config(self):
        """{"rank", "alpha", "target"} once `enable_lora` was called, else None."""
        return lora.lora_config(self)

    def save_lora_weights(self, path):
        """Writes only the adapter (and its base's fingerprint) to `path`, `*.lora.h5`."""
        return lora.save_lora_weights(self, path)

    def load_lora_weights(self, path):
        """Loads an adapter file onto this U-Net (enabling LoRA if needed); refuses an
        adapter trained on another base (architecture or weights)."""
        return lora.load_lora_weights(self, path)

    def merge_lora(self):
        """A new U-Net without LoRA whose weights are this one's with the adapter merged
        in: the same outputs at full speed."""
        lora.lora_weights(self)  # refuses a U-Net without LoRA
        merged = type(self).from_config(self.get_config())
        lora.copy_merged(self, merged)
        return merged

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_size": self.image_size,
            "base_channels": self.base_channels,
            "channel_multipliers": list(self.channel_multipliers),
            "num_res_blocks": self.num_res_blocks,
            "attention_resolutions": list(self.attention_resolutions),
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "num_classes": self.num_classes,
            "null_label": self.null_label,
            "learned_variance": self.learned_variance,
            "image_channels": self.image_channels,
            "low_res_size": self.low_res_size,
            "low_res_interpolation": self.low_res_interpolation,
            "augmentation_level_embedding": self.augmentation_level_embedding,
            "conditioning": self.conditioning,
            "noise_level_scale": self.noise_level_scale,
            "use_scale_shift_norm": self.use_scale_shift_norm,
            "resblock_updown": self.resblock_updown,
            "conv_resample": self.conv_resample,
            "num_groups": self.num_groups,
            "dtype": _serialize_dtype(self._layer_dtype),
            # Written only when set: configs (presets, LoRA fingerprints) stay as they were.
            **({"remat": True} if self.remat else {}),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**check_config(cls, config))


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


def _serialize_dtype(dtype):
    """`dtype` for `get_config`: None and names as given, policies serialized."""
    if dtype is None or isinstance(dtype, str):
        return dtype
    return keras.dtype_policies.serialize(keras.dtype_policies.get(dtype))


def _conditioning_key(conditioning):
    return "timesteps" if conditioning == "timestep" else "noise_levels"


def _level_resolutions(config):
    """Resolution in pixels of each level, from `image_size` down."""
    return [config["image_size"] // 2**level for level in range(len(config["channel_multipliers"]))]


def _check_sequence(name, value, allow_empty=False):
    """A sequence of positive integers with at most LIMITS["levels"] items."""
    items = check_int_tuple(name, value, allow_empty=allow_empty)
    if len(items) > LIMITS["levels"]:
        raise ValueError(f"`{name}` must have at most {LIMITS['levels']} items (the bound of "
                         f"keras_cdm.presets.LIMITS['levels']). Received: {name}={shown(value)}")
    return items


def parameter_count(config):
    """The number of weights of the U-Net that `config` (its validated arguments) describes,
    counted without building it: the same layers, in the same order, as `_build_graph`."""
    base, embedding = config["base_channels"], 4 * config["base_channels"]
    conv = lambda cin, cout, k=3: k * k * cin * cout + cout  # noqa: E731
    dense = lambda cin, cout: cin * cout + cout  # noqa: E731

    def residual(cin, cout=None):
        cout = cout or cin
        film = 2 * cout if config["use_scale_shift_norm"] else cout
        skip = conv(cin, cout, 1) if cout != cin else 0
        return 2 * cin + conv(cin, cout) + dense(embedding, film) + 2 * cout + conv(cout, cout) + skip

    def attention(c):
        return 2 * c + 4 * (c * c + c)

    def resample(c):
        return residual(c) if config["resblock_updown"] else conv(c, c) * config["conv_resample"]

    time_mlp = dense(base, embedding) + dense(embedding, embedding)
    total = time_mlp * (2 if config["augmentation_level_embedding"] else 1)
    total += ((config["num_classes"] or 0) + config["null_label"]) * embedding
    in_channels = config["image_channels"] * (1 if config["low_res_size"] is None else 2)
    total += conv(in_channels, base)
    resolutions, levels = _level_resolutions(config), len(config["channel_multipliers"])
    skips, c = [base], base
    for level, multiplier in enumerate(config["channel_multipliers"]):
        attend = resolutions[level] in config["attention_resolutions"]
        for _ in range(config["num_res_blocks"]):
            total += residual(c, base * multiplier) + attention(base * multiplier) * attend
            c = base * multiplier
            skips.append(c)
        if level != levels - 1:
            total += resample(c)
            skips.append(c)
    total += 2 * residual(c) + attention(c)
    for level in reversed(range(levels)):
        out = base * config["channel_multipliers"][level]
        attend = resolutions[level] in config["attention_resolutions"]
        for _ in range(config["num_res_blocks"] + 1):
            total += residual(c + skips.pop(), out) + attention(out) * attend
            c = out
        if level:
            total += resample(c)
    out_channels = config["image_channels"] * (2 if config["learned_variance"] else 1)
    return total + 2 * c + conv(c, out_channels)


def _check_architecture(config):
    levels = len(config["channel_multipliers"])
    size = config["image_size"]
    widest = config["base_channels"] * max(config["channel_multipliers"])
    if widest > LIMITS["channels"]:
        raise ValueError(
            f"Every level of the U-Net must have at most {LIMITS['channels']} channels (the bound of "
            f"keras_cdm.presets.LIMITS['channels']). Received: base_channels={config['base_channels']}, "
            f"channel_multipliers={list(config['channel_multipliers'])}"
        )
    if size % 2 ** (levels - 1):
        raise ValueError(
            f"`image_size` must be divisible by 2**(len(channel_multipliers) - 1) = "
            f"{2 ** (levels - 1)}. Received: image_size={size}"
        )
    reached = _level_resolutions(config)
    unreached = [r for r in config["attention_resolutions"] if r not in reached]
    if unreached:
        raise ValueError(
            f"`attention_resolutions` must be resolutions the U-Net reaches, in pixels: "
            f"{reached}. Received: attention_resolutions={config['attention_resolutions']}"
        )
    channels = [config["base_channels"] * m for m in config["channel_multipliers"]]
    attention_channels = [c for c, r in zip(channels, reached) if r in config["attention_resolutions"]]
    for c in attention_channels + [channels[-1]]:
        if c % config["num_heads"]:
            raise ValueError(
                f"`num_heads` must divide the channels of every attention layer "
                f"({sorted(set(attention_channels + [channels[-1]]))}). "
                f"Received: num_heads={config['num_heads']}"
            )
    for c in [config["base_channels"]] + channels:
        if c % config["num_groups"]:
            raise ValueError(
                f"`num_groups` must divide the channels of every level "
                f"({[config['base_channels']] + channels}). Received: num_groups={config['num_groups']}"
            )
    if config["low_res_size"] is not None and config["low_res_size"] > size:
        raise ValueError(
            f"`low_res_size` must not exceed `image_size` ({size}). "
            f"Received: low_res_size={config['low_res_size']}"
        )
    count = parameter_count(config)
    if count > LIMITS["parameters"]:
        raise ValueError(
            f"This U-Net would have {count:,} parameters, more than the {LIMITS['parameters']:,} of "
            "keras_cdm.presets.LIMITS['parameters']. Received: "
            + ", ".join(f"{key}={config[key]!r}" for key in ("base_channels", "channel_multipliers",
                                                              "num_res_blocks", "num_classes"))
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


def _build_graph(config):
    """Creates the Keras inputs and the output tensor of the U-Net described by `config`."""
    inputs = _build_inputs(config)
    embedding = _build_embedding(inputs, config)
    hidden = _build_input_images(inputs, config)
    hidden, skips = _build_downsampling_path(hidden, embedding, config)
    hidden = _build_middle(hidden, embedding, config)
    hidden = _build_upsampling_path(hidden, skips, embedding, config)
    return inputs, _build_output_head(hidden, config)


def _build_inputs(config):
    """The `keras.Input`s, keyed as in the model's input dict."""
    size, channels = config["image_size"], config["image_channels"]
    inputs = {"noisy_images": keras.Input((size, size, channels), name="noisy_images")}
    conditioning_key = _conditioning_key(config["conditioning"])
    inputs[conditioning_key] = keras.Input((), name=conditioning_key)
    if config["num_classes"] is not None:
        inputs["labels"] = keras.Input((), dtype="int32", name="labels")
    if config["augmentation_level_embedding"]:
        inputs["augmentation_levels"] = keras.Input((), name="augmentation_levels")
    if config["low_res_size"] is not None:
        low_res_size = config["low_res_size"]
        inputs["low_res_images"] = keras.Input((low_res_size, low_res_size, channels), name="low_res_images")
    return inputs


def _build_embedding(inputs, config):
    """The embedding fed to every residual block: time (or noise level), plus the
    class-label and augmentation-level embeddings when the model has them."""
    dtype, base_channels = config["dtype"], config["base_channels"]
    conditioning_key = _conditioning_key(config["conditioning"])
    scale = config["noise_level_scale"] if conditioning_key == "noise_levels" else 1.0
    embedding = cdm_layers.TimestepEmbedding(
        base_channels, scale=scale, name="time_embedding", dtype=dtype
    )(inputs[conditioning_key])
    if "labels" in inputs:
        label_embedding = cdm_layers.ClassEmbedding(
            config["num_classes"], 4 * base_channels, null_label=config["null_label"], name="label_embedding",
            dtype=dtype,
        )(inputs["labels"])
        embedding = keras.layers.Add(name="add_label_embedding", dtype=dtype)([embedding, label_embedding])
    if "augmentation_levels" in inputs:
        augmentation_embedding = cdm_layers.TimestepEmbedding(
            base_channels, name="augmentation_level_embedding", dtype=dtype
        )(inputs["augmentation_levels"])
        embedding = keras.layers.Add(name="add_augmentation_embedding", dtype=dtype)(
            [embedding, augmentation_embedding]
        )
    return embedding


def _build_input_images(inputs, config):
    """`noisy_images`, concatenated channel-wise with the low-resolution conditioning
    resized to `image_size` for a super-resolution stage."""
    images = inputs["noisy_images"]
    if "low_res_images" not in inputs:
        return images
    dtype = config["dtype"]
    resized = _Resize(
        config["image_size"], config["low_res_interpolation"], name="low_res_resize", dtype=dtype
    )(inputs["low_res_images"])
    return keras.layers.Concatenate(name="concat_low_res", dtype=dtype)([images, resized])


def _build_downsampling_path(images, embedding, config):
    """The input convolution, then per level `num_res_blocks` residual blocks (each
    followed by attention at `attention_resolutions`) and a downsampling, except
    at the last level. Returns the features and every intermediate output, the
    skip connections of the upsampling path."""
    base_channels, dtype = config["base_channels"], config["dtype"]
    hidden = cdm_layers.Conv2D(base_channels, 3, padding="same", name="input_conv", dtype=dtype)(images)
    skips = [hidden]
    resolutions = _level_resolutions(config)
    last_level = len(config["channel_multipliers"]) - 1
    for level, multiplier in enumerate(config["channel_multipliers"]):
        channels = base_channels * multiplier
        use_attention = resolutions[level] in config["attention_resolutions"]
        for i in range(config["num_res_blocks"]):
            hidden = _residual_block(hidden, embedding, config, f"down_{level}_res_{i}", channels)
            if use_attention:
                hidden = _attention_block(hidden, config, f"down_{level}_attention_{i}")
            skips.append(hidden)
        if level != last_level:
            hidden = _resample(hidden, embedding, config, f"down_{level}_downsample", "down")
            skips.append(hidden)
    return hidden, skips


def _build_middle(hidden, embedding, config):
    """Residual block, attention, residual block at the lowest resolution."""
    hidden = _residual_block(hidden, embedding, config, "middle_res_0")
    hidden = _attention_block(hidden, config, "middle_attention")
    return _residual_block(hidden, embedding, config, "middle_res_1")


def _build_upsampling_path(hidden, skips, embedding, config):
    """Per level, deepest first: `num_res_blocks + 1` residual blocks, each fed the
    features concatenated with the latest unused skip connection (and followed by
    attention at `attention_resolutions`), then an upsampling, except at level 0."""
    base_channels, dtype = config["base_channels"], config["dtype"]
    resolutions = _level_resolutions(config)
    skips = list(skips)
    for level in reversed(range(len(config["channel_multipliers"]))):
        channels = base_channels * config["channel_multipliers"][level]
        use_attention = resolutions[level] in config["attention_resolutions"]
        for i in range(config["num_res_blocks"] + 1):
            hidden = keras.layers.Concatenate(name=f"up_{level}_skip_{i}", dtype=dtype)([hidden, skips.pop()])
            hidden = _residual_block(hidden, embedding, config, f"up_{level}_res_{i}", channels)
            if use_attention:
                hidden = _attention_block(hidden, config, f"up_{level}_attention_{i}")
        if level:
            hidden = _resample(hidden, embedding, config, f"up_{level}_upsample", "up")
    return hidden


def _build_output_head(hidden, config):
    """GroupNorm, SiLU and a zero-initialised convolution to `image_channels`
    (twice as many with `learned_variance`), cast to float32."""
    dtype = config["dtype"]
    hidden = cdm_layers.GroupNormalization(
        config["num_groups"], epsilon=1e-5, name="output_norm", dtype=dtype
    )(hidden)
    hidden = keras.layers.Activation("silu", name="output_silu", dtype=dtype)(hidden)
    out_channels = config["image_channels"] * (2 if config["learned_variance"] else 1)
    hidden = cdm_layers.Conv2D(
        out_channels, 3, padding="same", kernel_initializer="zeros", name="output_conv", dtype=dtype
    )(hidden)
    # Diffusion math runs in float32 whatever the policy.
    return keras.layers.Activation("linear", dtype="float32", name="output")(hidden)


def _residual_block(hidden, embedding, config, name, channels=None, resample=None):
    """Applies a new `ResidualBlock` (`channels=None` keeps the input's channels)."""
    block = cdm_layers.ResidualBlock(
        channels,
        dropout=config["dropout"],
        use_scale_shift_norm=config["use_scale_shift_norm"],
        resample=resample,
        num_groups=config["num_groups"],
        remat=config["remat"],
        name=name,
        dtype=config["dtype"],
    )
    return block(hidden, embedding)


def _attention_block(hidden, config, name):
    """Applies a new `AttentionBlock`."""
    block = cdm_layers.AttentionBlock(
        config["num_heads"], config["num_groups"], name=name, dtype=config["dtype"]
    )
    return block(hidden)


def _resample(hidden, embedding, config, name, direction):
    """Halves ("down") or doubles ("up") the resolution: with a BigGAN-style
    residual block under `resblock_updown`, else with `Downsample` / `Upsample`."""
    if config["resblock_updown"]:
        return _residual_block(hidden, embedding, config, name, resample=direction)
    layer = cdm_layers.Downsample if direction == "down" else cdm_layers.Upsample
    return layer(config["conv_resample"], name=name, dtype=config["dtype"])(hidden)
