"""Building blocks of the diffusion U-Net (paper section 2.3, Appendix B).

Every layer is written with `keras.ops` only, is serializable, and runs under a
`mixed_bfloat16` policy. Shapes are channels-last (NHWC). The blocks follow the
Improved DDPM U-Net so that the paper's Appendix B models come out with the same
parameter counts as the canonical implementation.
"""

import math
import random

import keras
from keras import ops

from keras_cdm._validation import check_bool, check_choice, check_positive_int, check_range

register = keras.saving.register_keras_serializable(package="keras_cdm")


@register
class GroupNormalization(keras.layers.GroupNormalization):
    """Keras' `GroupNormalization` (same weights and config), faster channels-last.

    Keras normalises a `(batch, ..., groups, channels // groups)` view with
    reductions over non-adjacent axes and 5-D broadcasts, which TensorFlow runs
    much more slowly on CPUs. With the channels last, this reduces over the
    spatial axes only (per-channel means of x and x**2, in float32), pools them
    by group, and applies one scale and shift per (example, channel):
    `y = x * s + (beta - mean * s)`, `s = gamma / sqrt(var + epsilon)`. The
    variance is `E[x**2] - E[x]**2` in float32 (as in fused GPU group-norm
    kernels): relative error about `1e-7 * (1 + mean**2 / var)`, ample for
    network activations. Other axes use Keras' implementation.

    Args:
        groups: number of groups; must divide the channels.
        epsilon: added to the variance.
        **kwargs: the other arguments of `keras.layers.GroupNormalization`.

    Example:
    >>> norm = GroupNormalization(groups=4)
    >>> y = keras.ops.convert_to_numpy(norm(np.arange(64.0).reshape(1, 2, 2, 16)))
    >>> float(abs(y[..., :4].mean())) < 1e-5, y.shape
    (True, (1, 2, 2, 16))
    """

    def call(self, inputs, scale=None, shift=None):
        """Normalises `inputs`; `scale` and `shift`, `(batch, channels)`, then modulate
        the result FiLM-style, `y * (1 + scale) + shift`, folded into the same pass."""
        rank = len(inputs.shape)
        channels = inputs.shape[self.axis]
        broadcast = [1] * rank
        broadcast[0], broadcast[self.axis] = -1, channels
        if self.axis not in (-1, rank - 1) or rank < 3:
            outputs = super().call(inputs)
            if scale is not None:
                outputs = outputs * (1.0 + ops.reshape(scale, broadcast))
            if shift is not None:
                outputs = outputs + ops.reshape(shift, broadcast)
            return ops.cast(outputs, self.compute_dtype)
        groups = self.groups
        x = ops.cast(inputs, "float32")
        spatial = tuple(range(1, rank - 1))

        size = channels // groups
        spread = ops.ones((1, 1, size), "float32")

        def group_mean(values):  # (batch, channels) -> (batch, channels), averaged per group
            grouped = ops.mean(ops.reshape(values, (-1, groups, size)), axis=-1, keepdims=True)
            # Broadcast back by a product with ones: exact, and a few graph nodes where
            # `ops.repeat` makes ~28 (tracing the U-Nets' ~60 norms is a good part of the
            # first sampling call's time).
            return ops.reshape(grouped * spread, (-1, channels))

        known = all(isinstance(dim, int) for dim in x.shape[1:-1])
        count = float(math.prod(x.shape[1:-1])) if known else ops.cast(ops.prod(ops.shape(x)[1:-1]), "float32")
        mean = group_mean(ops.mean(x, axis=spatial))
        variance = ops.maximum(group_mean(_sum_of_squares(x) / count) - ops.square(mean), 0.0)
        multiplier = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            multiplier = multiplier * ops.cast(self.gamma, "float32")
        offset = -mean * multiplier
        if self.center:
            offset = offset + ops.cast(self.beta, "float32")
        if scale is not None:
            factor = 1.0 + ops.cast(scale, "float32")
            multiplier, offset = multiplier * factor, offset * factor
        if shift is not None:
            offset = offset + ops.cast(shift, "float32")
        outputs = x * ops.reshape(multiplier, broadcast) + ops.reshape(offset, broadcast)
        return ops.cast(outputs, self.compute_dtype)


@register
class Conv2D(keras.layers.Conv2D):
    """Keras' `Conv2D` (same weights, config and LoRA support), without the copies that
    Keras' PyTorch backend makes around each convolution.

    Keras 3.15 on PyTorch copies a channels-last input to channels-first, copies it back
    to PyTorch's channels-last memory format and copies the kernel, every call. An NHWC
    tensor viewed as NCHW already is in that format, so here PyTorch's `conv2d` gets the
    views: the same oneDNN convolution and the same numbers (bitwise, on the development
    machine); one forward pass of `cdm_mnist32`'s 32x32 U-Net at batch 100 took 1.48 s
    instead of 2.35 s there (0.63x, alternating, on a busy machine). Padding "same" is PyTorch's symmetric
    padding where it equals Keras' (stride 1, odd kernel); other cases, and the other
    backends, use Keras' convolution.
    """

    def convolution_op(self, inputs, kernel):
        if not self._views_suffice(kernel):
            return super().convolution_op(inputs, kernel)
        import torch

        kernel = ops.convert_to_tensor(kernel)
        padding = 0 if self.padding == "valid" else (kernel.shape[0] // 2, kernel.shape[1] // 2)
        outputs = torch.nn.functional.conv2d(ops.convert_to_tensor(inputs).permute(0, 3, 1, 2),
                                             kernel.permute(3, 2, 0, 1), stride=self.strides, padding=padding)
        return outputs.permute(0, 2, 3, 1)

    def _views_suffice(self, kernel):
        odd = all(size % 2 == 1 for size in kernel.shape[:2])
        return (keras.backend.backend() == "torch" and self.data_format == "channels_last" and self.groups == 1
                and tuple(self.dilation_rate) == (1, 1)
                and (self.padding == "valid" or (self.padding == "same" and tuple(self.strides) == (1, 1) and odd)))


def _sum_of_squares(x):
    """`sum(x**2)` over the spatial axes of a channels-last `x`, without writing
    `x**2` out: TensorFlow's `reduce_euclidean_norm` makes one pass, faster on
    CPUs than squaring and then summing. Its own gradient divides by the norm
    (NaN where a slice is all zeros), so the gradient, `2 * x * upstream`, is
    given here. XLA (JAX) fuses the square into the reduction by itself."""
    spatial = tuple(range(1, len(x.shape) - 1))
    if keras.backend.backend() != "tensorflow" or _in_xla_context():
        return ops.sum(ops.square(x), axis=spatial)
    import tensorflow as tf

    @tf.custom_gradient
    def sum_of_squares(x):
        def grad(upstream):  # (batch, channels)
            return x * tf.reshape(2.0 * upstream, [-1] + [1] * len(spatial) + [x.shape[-1]])

        return tf.square(tf.math.reduce_euclidean_norm(x, axis=spatial)), grad

    return sum_of_squares(x)


def _in_xla_context():
    """Whether TensorFlow is tracing for XLA (`jit_compile=True`, which `fit` uses on GPUs
    by default, or a TPU), which has no kernel for `EuclideanNorm`. TensorFlow's own
    test, a private function: should it move, the portable path is taken everywhere."""
    try:
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util

        return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))
    except Exception:  # noqa: BLE001 - any failure of the private API: be portable
        return True


def _group_norm(num_groups, epsilon, name, dtype):
    return GroupNormalization(groups=num_groups, epsilon=epsilon, name=name, dtype=dtype)


def _check_groups(channels, num_groups, layer_name):
    if channels % num_groups:
        raise ValueError(
            f"`num_groups` must divide the number of channels of {layer_name!r} "
            f"({channels}). Received: num_groups={num_groups}"
        )


def sinusoidal_embedding(values, dim, max_period=10000.0):
    """Transformer-style sinusoidal features of a batch of scalars.

    `values` has shape `(batch,)`; the result, `(batch, dim)`, is float32 with the
    cosines first and the sines last (Improved DDPM's `timestep_embedding`).
    """
    half = dim // 2
    exponents = -math.log(max_period) * ops.arange(half, dtype="float32") / half
    args = ops.reshape(ops.cast(values, "float32"), (-1, 1)) * ops.exp(exponents)
    embedding = ops.concatenate([ops.cos(args), ops.sin(args)], axis=-1)
    if dim % 2:
        embedding = ops.pad(embedding, [(0, 0), (0, 1)])
    return embedding


@register
class TimestepEmbedding(keras.layers.Layer):
    """Sinusoidal embedding of diffusion steps or noise levels, then a 2-layer MLP.

    Integer steps `t` (0..T-1) are embedded as they are; continuous noise levels
    (section 4.4, e.g. `sqrt(alpha_bar)` in [0, 1]) are first multiplied by
    `scale` so that they cover a range of frequencies similar to the steps. The
    sinusoid is always computed in float32, whatever the dtype policy.

    Args:
        embedding_dim: width of the sinusoidal features (the U-Net's base
            channels).
        output_dim: width of the MLP (the U-Net uses `4 * embedding_dim`).
            Defaults to `4 * embedding_dim`.
        scale: factor applied to the inputs before the sinusoid.
        max_period: longest period of the sinusoid.

    Example:
    >>> layer = TimestepEmbedding(32)
    >>> keras.ops.shape(layer(np.array([0, 10, 999])))
    (3, 128)
    """

    def __init__(self, embedding_dim, output_dim=None, scale=1.0, max_period=10000.0, **kwargs):
        # Steps up to 4000 do not survive a cast to bfloat16: keep inputs as given.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        self.output_dim = check_positive_int("output_dim", output_dim or 4 * embedding_dim)
        self.scale = float(scale)
        self.max_period = float(max_period)
        self.dense_in = keras.layers.Dense(
            self.output_dim, activation="silu", name="dense_in", dtype=self.dtype_policy
        )
        self.dense_out = keras.layers.Dense(self.output_dim, name="dense_out", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.dense_in.build((None, self.embedding_dim))
        self.dense_out.build((None, self.output_dim))

    def call(self, inputs):
        values = ops.cast(inputs, "float32") * self.scale
        features = sinusoidal_embedding(values, self.embedding_dim, self.max_period)
        return self.dense_out(self.dense_in(features))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            embedding_dim=self.embedding_dim,
            output_dim=self.output_dim,
            scale=self.scale,
            max_period=self.max_period,
        )
        return config


@register
class ClassEmbedding(keras.layers.Layer):
    """Learned embedding of integer class labels, added to the time embedding.

    Initialised from N(0, 1) like the reference's `nn.Embedding`.

    Args:
        num_classes: number of classes; labels are integers in [0, num_classes).
        output_dim: embedding width (the U-Net's time-embedding width).
        null_label: one more row, for label `num_classes`: "no class", the
            unconditional model of classifier-free guidance (`keras_cdm.guidance`).

    Example:
    >>> layer = ClassEmbedding(num_classes=10, output_dim=64)
    >>> keras.ops.shape(layer(np.array([3, 7])))
    (2, 64)
    """

    def __init__(self, num_classes, output_dim, null_label=False, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.output_dim = check_positive_int("output_dim", output_dim)
        self.null_label = check_bool("null_label", null_label)
        self.embedding = keras.layers.Embedding(
            self.num_classes + self.null_label,
            self.output_dim,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="embedding",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        self.embedding.build((None,))

    def call(self, inputs):
        return self.embedding(ops.reshape(ops.cast(inputs, "int32"), (-1,)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, output_dim=self.output_dim, null_label=self.null_label)
        return config


class _Resample(keras.layers.Layer):
    """Shared base of Downsample and Upsample: factor-2 resampling, optional conv."""

    def __init__(self, use_conv=True, **kwargs):
        super().__init__(**kwargs)
        self.use_conv = bool(use_conv)
        self.conv = None

    def build(self, input_shape):
        if self.use_conv:
            self.conv = self._make_conv(input_shape[-1])
            self.conv.build(self._conv_input_shape(input_shape))

    def get_config(self):
        config = super().get_config()
        config.update(use_conv=self.use_conv)
        return config


@register
class Downsample(_Resample):
    """Halves the spatial size: a stride-2 3x3 conv, or 2x2 average pooling.

    The conv pads one pixel on every side before a stride-2 "valid" convolution,
    exactly like the reference's `Conv2d(padding=1, stride=2)`, rather than Keras'
    asymmetric "same" padding. Channels are preserved.

    Args:
        use_conv: stride-2 convolution (True) or average pooling (False).

    Example:
    >>> keras.ops.shape(Downsample()(np.zeros((1, 8, 8, 16))))
    (1, 4, 4, 16)
    """

    def _make_conv(self, channels):
        return Conv2D(channels, 3, strides=2, name="conv", dtype=self.dtype_policy)

    def _conv_input_shape(self, input_shape):
        return (input_shape[0], input_shape[1] + 2, input_shape[2] + 2, input_shape[3])

    def call(self, inputs):
        if self.use_conv:
            return self.conv(ops.pad(inputs, [(0, 0), (1, 1), (1, 1), (0, 0)]))
        return ops.average_pool(inputs, 2, strides=2, padding="valid")

    def compute_output_shape(self, input_shape):
        half = lambda n: None if n is None else n // 2  # noqa: E731
        return (input_shape[0], half(input_shape[1]), half(input_shape[2]), input_shape[3])


@register
class Upsample(_Resample):
    """Doubles the spatial size: nearest-neighbour upsampling, optional 3x3 conv.

    Args:
        use_conv: follow the upsampling with a 3x3 convolution.

    Example:
    >>> keras.ops.shape(Upsample()(np.zeros((1, 4, 4, 16))))
    (1, 8, 8, 16)
    """

    def _make_conv(self, channels):
        return Conv2D(channels, 3, padding="same", name="conv", dtype=self.dtype_policy)

    def _conv_input_shape(self, input_shape):
        return self.compute_output_shape(input_shape)

    def call(self, inputs):
        outputs = ops.repeat(ops.repeat(inputs, 2, axis=1), 2, axis=2)
        return self.conv(outputs) if self.use_conv else outputs

    def compute_output_shape(self, input_shape):
        double = lambda n: None if n is None else 2 * n  # noqa: E731
        return (input_shape[0], double(input_shape[1]), double(input_shape[2]), input_shape[3])


@register
class ResidualBlock(keras.layers.Layer):
    """Residual block conditioned on an embedding (DDPM / Improved DDPM / BigGAN).

    `GroupNorm -> SiLU -> [resample] -> conv3x3 -> GroupNorm -> FiLM(embedding) ->
    SiLU -> dropout -> conv3x3 (zero-initialised)`, plus a skip connection (a 1x1
    conv when the channel count changes). With `use_scale_shift_norm` the
    embedding gives a scale and a shift, `h = norm(h) * (1 + scale) + shift`;
    otherwise it is added before the second norm. `resample="up"|"down"` resamples
    inside the block (BigGAN style, nearest / average pooling, no parameters).

    With `remat=True` the block is rematerialized (`keras.remat`: gradient
    checkpointing): training keeps only its inputs (and a one-byte dropout mask)
    for the backward pass, which recomputes the rest, instead of its ~8
    intermediate feature maps: less activation memory for about one more forward
    pass of the block. The loss and gradients are the same. The dropout mask is
    drawn outside the rematerialized function, once: the recomputation would
    otherwise draw another one (the seed generator moves on), and the gradient
    would not be that of the loss. (This is why the block does not use
    `keras.RematScope`, which rematerializes a layer's whole `call`, draws
    included.)

    Call arguments:
        inputs: `(batch, height, width, channels)` feature map.
        embedding: `(batch, embedding_dim)` conditioning (time, class, ...).
        training: enables dropout.

    Args:
        out_channels: output channels; defaults to the input channels.
        dropout: dropout rate before the last convolution.
        use_scale_shift_norm: scale-shift (FiLM) conditioning, as in the paper.
        resample: None, "up" or "down".
        num_groups: groups of both GroupNorms (32 in the paper's models).
        epsilon: GroupNorm epsilon.
        remat: rematerialize the block in training (see above).

    Example:
    >>> block = ResidualBlock(32, num_groups=8)
    >>> keras.ops.shape(block(np.zeros((2, 8, 8, 16)), np.zeros((2, 64))))
    (2, 8, 8, 32)
    """

    def __init__(
        self,
        out_channels=None,
        dropout=0.0,
        use_scale_shift_norm=True,
        resample=None,
        num_groups=32,
        epsilon=1e-5,
        remat=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if out_channels is not None:
            check_positive_int("out_channels", out_channels)
        self.out_channels = out_channels
        self.dropout = check_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        self.use_scale_shift_norm = bool(use_scale_shift_norm)
        self.resample = check_choice("resample", resample, (None, "up", "down"))
        self.num_groups = check_positive_int("num_groups", num_groups)
        self.epsilon = float(epsilon)
        self.remat = check_bool("remat", remat)
        resample_layer = {None: None, "up": Upsample, "down": Downsample}[self.resample]
        self.resample_layer = resample_layer and resample_layer(
            use_conv=False, name="resample", dtype=self.dtype_policy
        )

    def build(self, inputs_shape, embedding_shape):
        channels = inputs_shape[-1]
        out = self.out_channels or channels
        _check_groups(channels, self.num_groups, self.name)
        _check_groups(out, self.num_groups, self.name)
        dtype = self.dtype_policy
        conv = lambda n, k, name, **kw: Conv2D(  # noqa: E731
            n, k, padding="same", name=name, dtype=dtype, **kw
        )
        self.norm_in = _group_norm(self.num_groups, self.epsilon, "norm_in", dtype)
        self.conv_in = conv(out, 3, "conv_in")
        self.embedding_proj = keras.layers.Dense(
            2 * out if self.use_scale_shift_norm else out, name="embedding_proj", dtype=dtype
        )
        self.norm_out = _group_norm(self.num_groups, self.epsilon, "norm_out", dtype)
        # The seed Keras would draw for seed=None (same draw, same masks on TensorFlow and JAX),
        # given explicitly: with seed=None PyTorch's Keras drops out with torch's global
        # generator, which no checkpoint holds, so a resumed run would train differently.
        self.dropout_layer = keras.layers.Dropout(self.dropout, seed=random.randint(1, 10**9), name="dropout",
                                                  dtype=dtype)
        self.conv_out = conv(out, 3, "conv_out", kernel_initializer="zeros")
        self.skip = conv(out, 1, "skip") if out != channels else None

        spatial = self._resampled_shape(inputs_shape)
        self.norm_in.build(inputs_shape)
        self.conv_in.build(spatial)
        self.embedding_proj.build(embedding_shape)
        self.norm_out.build(spatial[:-1] + (out,))
        self.conv_out.build(spatial[:-1] + (out,))
        if self.skip is not None:
            self.skip.build(spatial)

    def _resampled_shape(self, input_shape):
        if self.resample_layer is None:
            return tuple(input_shape)
        return tuple(self.resample_layer.compute_output_shape(input_shape))

    def call(self, inputs, embedding, training=None):
        if not self.remat:
            return self._apply(inputs, embedding, training=training)
        if not (training and self.dropout):
            return keras.remat(lambda x, e: self._apply(x, e))(inputs, embedding)
        keep = self._dropout_keep_mask(inputs)
        return keras.remat(lambda x, e, k: self._apply(x, e, keep=k))(inputs, embedding, keep)

    def _dropout_keep_mask(self, inputs):
        """Where the dropout layer would keep its input on this call, 1 (else 0), a uint8 map the
        size of the output: the same draw of its seed generator as `self.dropout_layer(h,
        training=True)`. Not bool: TensorFlow's `recompute_grad` differentiates its inputs."""
        shape = (ops.shape(inputs)[0],) + tuple(self.compute_output_shape(inputs.shape, None)[1:])
        ones = ops.ones(shape, self.compute_dtype)
        kept = keras.random.dropout(ones, self.dropout, seed=self.dropout_layer.seed_generator)
        return ops.cast(ops.not_equal(kept, 0), "uint8")

    def _apply(self, inputs, embedding, training=None, keep=None):
        """The block; dropout by `self.dropout_layer`, or by the mask `keep` when given."""
        h = ops.silu(self.norm_in(inputs))
        x = inputs
        if self.resample_layer is not None:
            h, x = self.resample_layer(h), self.resample_layer(x)
        h = self.conv_in(h)
        e = self.embedding_proj(ops.silu(embedding))
        if self.use_scale_shift_norm:
            scale, shift = ops.split(e, 2, axis=-1)
            h = self.norm_out(h, scale=scale, shift=shift)
        else:
            h = self.norm_out(h + e[:, None, None, :])
        h = ops.silu(h)
        if keep is None:
            h = self.dropout_layer(h, training=training)
        else:
            h = ops.where(ops.cast(keep, "bool"), h / ops.cast(1.0 - self.dropout, h.dtype), ops.zeros_like(h))
        h = self.conv_out(h)
        return (x if self.skip is None else self.skip(x)) + h

    def compute_output_shape(self, inputs_shape, embedding_shape):
        spatial = self._resampled_shape(inputs_shape)
        return spatial[:-1] + (self.out_channels or inputs_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            out_channels=self.out_channels,
            dropout=self.dropout,
            use_scale_shift_norm=self.use_scale_shift_norm,
            resample=self.resample,
            num_groups=self.num_groups,
            epsilon=self.epsilon,
            remat=self.remat,
        )
        return config


@register
class AttentionBlock(keras.layers.Layer):
    """Self-attention over all spatial positions, with a residual connection.

    `x + proj(MHA(GroupNorm(x)))`: the weights are those of a Keras
    `MultiHeadAttention` with `key_dim = channels // num_heads` (its
    query/key/value projections are the reference's 1x1 `qkv` conv, its output
    projection the reference's `proj_out`), whose output projection starts at
    zero so the block is the identity at initialisation. The block applies them
    with plain matrix products on `(batch * positions, channels)` and
    `(batch, heads, positions, head_dim)` tensors instead of calling the layer
    (whose `einsum`s TensorFlow runs slowly on CPUs: the matrix products are
    faster, forward and backward, in float32 and bfloat16); the result is the
    same attention, to rounding.

    Args:
        num_heads: attention heads; must divide the channels.
        num_groups: GroupNorm groups.
        epsilon: GroupNorm epsilon.

    Example:
    >>> block = AttentionBlock(num_heads=2, num_groups=8)
    >>> keras.ops.shape(block(np.zeros((2, 4, 4, 16))))
    (2, 4, 4, 16)
    """

    def __init__(self, num_heads=1, num_groups=32, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.num_groups = check_positive_int("num_groups", num_groups)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.num_heads:
            raise ValueError(
                f"`num_heads` must divide the number of channels of {self.name!r} "
                f"({channels}). Received: num_heads={self.num_heads}"
            )
        _check_groups(channels, self.num_groups, self.name)
        self.norm = _group_norm(self.num_groups, self.epsilon, "norm", self.dtype_policy)
        self.attention = keras.layers.MultiHeadAttention(
            self.num_heads, channels // self.num_heads, name="attention", dtype=self.dtype_policy
        )
        self.norm.build(input_shape)
        sequence = (input_shape[0], None, channels)
        self.attention.build(sequence, sequence)
        output = self.attention.output_dense
        output.kernel.assign(ops.zeros(output.kernel.shape, output.kernel.dtype))

    def call(self, inputs):
        _, height, width, channels = inputs.shape
        positions, heads = height * width, self.num_heads
        head_dim = channels // heads
        dtype = self.compute_dtype
        h = ops.reshape(self.norm(inputs), (-1, channels))

        def dense(layer, values):  # an EinsumDense of the attention layer as a 2-D matmul
            kernel = ops.reshape(ops.cast(layer.kernel, dtype), (channels, channels))
            return ops.matmul(values, kernel) + ops.reshape(ops.cast(layer.bias, dtype), (channels,))

        def split_heads(layer, order):  # (batch * positions, C) -> (batch, heads, ., .)
            return ops.transpose(ops.reshape(dense(layer, h), (-1, positions, heads, head_dim)), order)

        attention = self.attention
        query = split_heads(attention.query_dense, (0, 2, 1, 3)) * ops.cast(head_dim**-0.5, dtype)
        key = split_heads(attention.key_dense, (0, 2, 3, 1))  # already transposed for q @ k
        value = split_heads(attention.value_dense, (0, 2, 1, 3))
        weights = ops.softmax(ops.matmul(query, key), axis=-1)
        attended = ops.reshape(ops.transpose(ops.matmul(weights, value), (0, 2, 1, 3)), (-1, channels))
        out = dense(attention.output_dense, attended)
        return inputs + ops.reshape(out, (-1, height, width, channels))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, num_groups=self.num_groups, epsilon=self.epsilon)
        return config
