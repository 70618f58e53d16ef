import doctest

import keras
import numpy as np
import pytest

from keras_cdm import layers
from keras_cdm.testing import (
    assert_config_round_trip,
    conv2d,
    gradient,
    group_norm,
    randomize_weights,
    silu,
    sinusoid,
    to_numpy,
)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 8, 8, 16)).astype("float32")
EMB = RNG.normal(size=(2, 32)).astype("float32")


def _w(layer):
    return {v.path.split("/", 1)[-1]: to_numpy(v).astype(np.float64) for v in layer.weights}


# TimestepEmbedding ----------------------------------------------------------


@pytest.mark.parametrize("dim", [16, 15])
def test_sinusoidal_embedding_matches_closed_form(dim):
    t = np.array([0, 1, 17, 999, 3999])
    got = to_numpy(layers.sinusoidal_embedding(t, dim))
    np.testing.assert_allclose(got, sinusoid(t, dim), atol=2e-4)
    assert got.shape == (5, dim)
    np.testing.assert_array_equal(got[0, : dim // 2], 1.0)  # cos(0) first


def test_timestep_embedding_is_mlp_of_sinusoid():
    layer = layers.TimestepEmbedding(16, output_dim=24)
    t = np.array([3.0, 250.0])
    out = to_numpy(layer(t))
    w = _w(layer)
    h = silu(sinusoid(t, 16) @ w["dense_in/kernel"] + w["dense_in/bias"])
    np.testing.assert_allclose(out, h @ w["dense_out/kernel"] + w["dense_out/bias"], atol=1e-4)
    assert layer.count_params() == (16 * 24 + 24) + (24 * 24 + 24)


def test_timestep_embedding_scales_continuous_noise_levels():
    layer = layers.TimestepEmbedding(16, scale=1000.0)
    levels = np.array([0.25, 0.731])
    out = to_numpy(layer(levels))
    w = _w(layer)
    h = silu(sinusoid(levels * 1000.0, 16) @ w["dense_in/kernel"] + w["dense_in/bias"])
    expected = h @ w["dense_out/kernel"] + w["dense_out/bias"]
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_timestep_embedding_keeps_large_steps_exact_under_mixed_bfloat16():
    # bfloat16 rounds 3999 to 4000: the embedding must not see the rounded step.
    layer = layers.TimestepEmbedding(64, dtype="mixed_bfloat16")
    assert layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32"
    out = to_numpy(keras.ops.cast(layer(np.array([3999.0, 4000.0])), "float32"))
    assert np.abs(out[0] - out[1]).max() > 0


# ClassEmbedding ---------------------------------------------------------------


def test_class_embedding_looks_up_rows_and_is_standard_normal():
    layer = layers.ClassEmbedding(num_classes=1000, output_dim=64)
    out = to_numpy(layer(np.array([3, 7, 3])))
    table = to_numpy(layer.weights[0])
    np.testing.assert_array_equal(out, table[[3, 7, 3]])
    assert abs(table.std() - 1.0) < 0.02 and abs(table.mean()) < 0.02


# ResidualBlock -------------------------------------------------------------------


def _reference_residual_block(block, x, emb, scale_shift=True):
    w, g = _w(block), block.num_groups
    h = silu(group_norm(x, g, w["norm_in/gamma"], w["norm_in/beta"]))
    h = conv2d(h, w["conv_in/kernel"], w["conv_in/bias"])
    e = (silu(emb) @ w["embedding_proj/kernel"] + w["embedding_proj/bias"])[:, None, None, :]
    if scale_shift:
        scale, shift = np.split(e, 2, axis=-1)
        h = group_norm(h, g, w["norm_out/gamma"], w["norm_out/beta"]) * (1 + scale) + shift
    else:
        h = group_norm(h + e, g, w["norm_out/gamma"], w["norm_out/beta"])
    h = conv2d(silu(h), w["conv_out/kernel"], w["conv_out/bias"])
    skip = x if "skip/kernel" not in w else conv2d(x, w["skip/kernel"], w["skip/bias"])
    return skip + h


@pytest.mark.parametrize("out_channels,scale_shift", [(32, True), (16, False)])
def test_residual_block_matches_float64_reference(out_channels, scale_shift):
    block = layers.ResidualBlock(out_channels, use_scale_shift_norm=scale_shift, num_groups=8)
    block(X, EMB)
    randomize_weights(block)
    expected = _reference_residual_block(block, X.astype(np.float64), EMB.astype(np.float64), scale_shift)
    np.testing.assert_allclose(to_numpy(block(X, EMB)), expected, rtol=1e-4, atol=1e-4)


def test_residual_block_is_skip_path_at_initialisation():
    block = layers.ResidualBlock(num_groups=8)
    np.testing.assert_allclose(to_numpy(block(X, EMB)), X, atol=1e-6)
    assert block.skip is None


def test_residual_block_parameter_count_matches_reference_formula():
    block = layers.ResidualBlock(32, num_groups=8)
    block(X, EMB)
    expected = 2 * 16 + (9 * 16 * 32 + 32) + (32 * 64 + 64) + 2 * 32 + (9 * 32 * 32 + 32) + (16 * 32 + 32)
    assert block.count_params() == expected


@pytest.mark.parametrize("resample,size", [("up", 16), ("down", 4)])
def test_residual_block_resamples_biggan_style(resample, size):
    block = layers.ResidualBlock(num_groups=8, resample=resample)
    out = to_numpy(block(X, EMB))
    assert out.shape == (2, size, size, 16)
    if resample == "down":  # zero-initialised residual: output is the pooled input
        expected = X.reshape(2, 4, 2, 4, 2, 16).mean(axis=(2, 4))
    else:
        expected = X.repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_residual_block_embedding_conditions_the_output():
    block = layers.ResidualBlock(num_groups=8)
    block(X, EMB)
    randomize_weights(block)
    assert np.abs(to_numpy(block(X, EMB)) - to_numpy(block(X, EMB + 1.0))).max() > 1e-3


def test_residual_block_dropout_only_in_training():
    block = layers.ResidualBlock(num_groups=8, dropout=0.5)
    block(X, EMB)
    randomize_weights(block)
    np.testing.assert_array_equal(to_numpy(block(X, EMB)), to_numpy(block(X, EMB, training=False)))
    assert np.abs(to_numpy(block(X, EMB, training=True)) - to_numpy(block(X, EMB))).max() > 1e-3


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"resample": "sideways"}, "`resample` must be one of [None, 'up', 'down']. Received: resample='sideways'"),
        ({"dropout": 1.5}, "`dropout` must be a number in [0.0, 1.0). Received: dropout=1.5"),
        ({"out_channels": 0}, "`out_channels` must be a positive integer. Received: out_channels=0"),
    ],
)
def test_residual_block_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        layers.ResidualBlock(**kwargs)
    assert message in str(info.value)


def test_residual_block_rejects_groups_not_dividing_channels():
    with pytest.raises(ValueError, match=r"`num_groups` must divide .*\(16\). Received: num_groups=5"):
        layers.ResidualBlock(num_groups=5)(X, EMB)


# AttentionBlock -------------------------------------------------------------------


def _reference_attention(block, x):
    w, heads = _w(block), block.num_heads
    b, hh, ww, c = x.shape
    d = c // heads
    h = group_norm(x, block.num_groups, w["norm/gamma"], w["norm/beta"]).reshape(b, hh * ww, c)
    q, k, v = (
        np.einsum("btc,chd->bthd", h, w[f"attention/{n}/kernel"]) + w[f"attention/{n}/bias"]
        for n in ("query", "key", "value")
    )
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attended = np.einsum("bhqk,bkhd->bqhd", probs, v)
    out = np.einsum("bqhd,hdc->bqc", attended, w["attention/attention_output/kernel"])
    return x + (out + w["attention/attention_output/bias"]).reshape(b, hh, ww, c)


@pytest.mark.parametrize("heads", [1, 4])
def test_attention_block_matches_float64_reference(heads):
    block = layers.AttentionBlock(num_heads=heads, num_groups=8)
    block(X)
    randomize_weights(block)
    np.testing.assert_allclose(to_numpy(block(X)), _reference_attention(block, X.astype(np.float64)), atol=1e-4)


def test_attention_block_is_identity_at_initialisation_and_has_reference_size():
    block = layers.AttentionBlock(num_heads=2, num_groups=8)
    np.testing.assert_array_equal(to_numpy(block(X)), X)
    c = 16
    assert block.count_params() == 2 * c + (3 * c * c + 3 * c) + (c * c + c)  # norm, qkv, proj_out


def test_attention_block_rejects_heads_not_dividing_channels():
    with pytest.raises(ValueError, match=r"`num_heads` must divide .*\(16\). Received: num_heads=3"):
        layers.AttentionBlock(num_heads=3, num_groups=8)(X)


# Downsample / Upsample --------------------------------------------------------------


def test_downsample_conv_pads_symmetrically_like_the_reference():
    layer = layers.Downsample()
    out = to_numpy(layer(X))
    w = _w(layer)
    expected = conv2d(X.astype(np.float64), w["conv/kernel"], w["conv/bias"], stride=2, pad=1)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert out.shape == (2, 4, 4, 16)


def test_downsample_without_conv_average_pools():
    out = to_numpy(layers.Downsample(use_conv=False)(X))
    np.testing.assert_allclose(out, X.reshape(2, 4, 2, 4, 2, 16).mean(axis=(2, 4)), atol=1e-6)


def test_upsample_is_nearest_then_conv():
    layer = layers.Upsample()
    out = to_numpy(layer(X))
    w = _w(layer)
    nearest = X.astype(np.float64).repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_allclose(out, conv2d(nearest, w["conv/kernel"], w["conv/bias"]), atol=1e-4)
    np.testing.assert_array_equal(to_numpy(layers.Upsample(use_conv=False)(X)), nearest.astype("float32"))


# GroupNormalization ---------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_group_normalization_matches_float64_reference(offset):
    x = (RNG.normal(size=(3, 5, 4, 16)) * 2 + RNG.normal(size=16) * offset).astype("float32")
    norm = layers.GroupNormalization(groups=4, epsilon=1e-5)
    norm.build(x.shape)
    randomize_weights(norm)
    w = _w(norm)
    expected = group_norm(x.astype(np.float64), 4, w["gamma"], w["beta"])
    np.testing.assert_allclose(to_numpy(norm(x)), expected, atol=2e-5 * (1 + offset))


def test_group_normalization_is_keras_layer_with_same_values_and_gradients():
    x = RNG.normal(size=(2, 6, 6, 32)).astype("float32")
    ours, theirs = layers.GroupNormalization(8), keras.layers.GroupNormalization(8)
    ours.build(x.shape)
    theirs.build(x.shape)
    randomize_weights(ours)
    theirs.set_weights(ours.get_weights())
    assert isinstance(ours, keras.layers.GroupNormalization)
    assert [v.path.split("/")[-1] for v in ours.weights] == ["gamma", "beta"]
    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradients compared with tf.GradientTape")
    import tensorflow as tf

    upstream = RNG.normal(size=x.shape).astype("float32")
    grads = []
    for layer in (ours, theirs):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            out = layer(xt)
            loss = tf.reduce_sum(out * upstream)
        grads.append([to_numpy(g) for g in tape.gradient(loss, [xt] + layer.trainable_variables)])
        np.testing.assert_allclose(to_numpy(out), to_numpy(theirs(x)), atol=1e-5)
    for g_ours, g_theirs in zip(*grads):
        np.testing.assert_allclose(g_ours, g_theirs, atol=1e-4)


def test_group_normalization_gradients_are_finite_on_constant_and_zero_slices():
    # A slice that is all zeros (a zero image through a zero-bias conv) has a zero
    # sum of squares: the gradient must stay finite, with the variance clamped at 0.
    x = np.zeros((2, 4, 4, 8), "float32")
    x[1] = RNG.normal(size=(4, 4, 8))
    norm = layers.GroupNormalization(4)
    norm.build(x.shape)
    weights = keras.ops.convert_to_tensor(RNG.normal(size=x.shape).astype("float32"))
    grad = gradient(lambda a: norm(a) * weights, x)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(to_numpy(norm(x))[0], 0.0, atol=1e-6)


@pytest.mark.tensorflow_only
def test_group_normalization_compiles_with_xla_on_tensorflow():
    # The one-pass sum of squares (EuclideanNorm) has no XLA kernel: under jit_compile
    # (fit's default on GPUs, TPUs) the layer must take the portable path.
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's XLA path")
    import tensorflow as tf

    x = tf.constant((RNG.normal(size=(2, 4, 4, 16)) * 2 + 1).astype("float32"))
    norm = layers.GroupNormalization(4)
    norm.build(x.shape)
    randomize_weights(norm)

    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(norm(x) ** 2)
        return norm(x), tape.gradient(loss, x)

    graph = tf.function(value_and_grad)(x)
    xla = tf.function(value_and_grad, jit_compile=True)(x)
    for a, b in zip(graph, xla):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-4)
    w = _w(norm)
    expected = group_norm(to_numpy(x).astype(np.float64), 4, w["gamma"], w["beta"])
    np.testing.assert_allclose(to_numpy(xla[0]), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("axis", [-1, 1])
def test_group_normalization_folds_film_modulation(axis):
    x = RNG.normal(size=(2, 16, 4, 16)).astype("float32")
    scale, shift = RNG.normal(size=(2, 16)).astype("float32"), RNG.normal(size=(2, 16)).astype("float32")
    ours, theirs = layers.GroupNormalization(4, axis=axis), keras.layers.GroupNormalization(4, axis=axis)
    shape = (2, 1, 1, 16) if axis == -1 else (2, 16, 1, 1)
    expected = to_numpy(theirs(x)) * (1 + scale.reshape(shape)) + shift.reshape(shape)
    np.testing.assert_allclose(to_numpy(ours(x, scale=scale, shift=shift)), expected, atol=1e-5)
    np.testing.assert_allclose(to_numpy(ours(x)), to_numpy(theirs(x)), atol=1e-5)


# Every layer: serialization, mixed precision, docs ------------------------------------

LAYER_CASES = {
    "TimestepEmbedding": (lambda **kw: layers.TimestepEmbedding(16, scale=2.0, **kw), (np.array([1.0, 9.0]),)),
    "ClassEmbedding": (lambda **kw: layers.ClassEmbedding(10, 32, **kw), (np.array([1, 9]),)),
    "ResidualBlock": (
        lambda **kw: layers.ResidualBlock(32, dropout=0.1, resample="down", num_groups=8, **kw),
        (X, EMB),
    ),
    "AttentionBlock": (lambda **kw: layers.AttentionBlock(num_heads=2, num_groups=8, **kw), (X,)),
    "Downsample": (lambda **kw: layers.Downsample(**kw), (X,)),
    "GroupNormalization": (lambda **kw: layers.GroupNormalization(groups=4, **kw), (X,)),
    "Upsample": (lambda **kw: layers.Upsample(use_conv=True, **kw), (X,)),
}


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_serialization_round_trip(name):
    make, args = LAYER_CASES[name]
    layer = make()
    layer(*args)  # builds the weights
    randomize_weights(layer)
    out = to_numpy(layer(*args))
    clone = assert_config_round_trip(layer)
    clone(*args)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_numpy(clone(*args)), out, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_runs_in_mixed_bfloat16(name):
    make, args = LAYER_CASES[name]
    full = make()
    reference = to_numpy(full(*args))
    mixed = make(dtype="mixed_bfloat16")
    out = mixed(*args)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert all(w.dtype == "float32" for w in mixed.weights)
    mixed.set_weights(full.get_weights())
    out = to_numpy(keras.ops.cast(mixed(*args), "float32"))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, reference, atol=0.1 * (np.abs(reference).max() + 1))


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_docstring_has_args_and_a_working_example(name):
    cls = getattr(layers, name)
    assert "Args:" in cls.__doc__ and "Example:" in cls.__doc__
    finder = doctest.DocTestFinder()
    tests = finder.find(cls, name, globs={"np": np, "keras": keras, name: cls})
    (test,) = [t for t in tests if t.name == name]
    result = doctest.DocTestRunner().run(test, out=lambda s: None)
    assert result.attempted > 0 and result.failed == 0


# Conv2D ---------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size, strides, padding", [(3, 1, "same"), (1, 1, "same"), (3, 2, "valid"),
                                                           (3, 2, "same"), (2, 1, "same")])
def test_conv2d_matches_a_float64_cross_correlation_and_keras(kernel_size, strides, padding):
    """Every case, also those that fall back to Keras' convolution (asymmetric "same"
    padding), against an independent float64 cross-correlation and Keras' own layer."""
    x = RNG.normal(size=(2, 9, 9, 4)).astype("float32")
    layer = layers.Conv2D(6, kernel_size, strides=strides, padding=padding)
    layer.build(x.shape)
    randomize_weights(layer, seed=1)
    kernel, bias = (to_numpy(w).astype(np.float64) for w in layer.weights)
    padded = x.astype(np.float64)
    if padding == "same":  # Keras' padding: the extra row/column (if any) at the end
        total = max(kernel_size - strides, 0) if 9 % strides == 0 else max(kernel_size - 9 % strides, 0)
        padded = np.pad(padded, [(0, 0), (total // 2, total - total // 2), (total // 2, total - total // 2), (0, 0)])
    expected = conv2d(padded, kernel, bias, stride=strides, pad=0)
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-4, atol=1e-4)
    reference = keras.layers.Conv2D(6, kernel_size, strides=strides, padding=padding)
    reference.build(x.shape)
    reference.set_weights(layer.get_weights())
    np.testing.assert_array_equal(to_numpy(layer(x)), to_numpy(reference(x)))
    assert layer.get_config() == {**reference.get_config(), "name": layer.name}


def test_conv2d_under_pytorch_skips_keras_copies(monkeypatch):
    """On PyTorch the U-Net's convolutions run on views (Keras' copying convolution is never
    called) and train: the gradient through the views equals the float64 one."""
    if keras.backend.backend() != "torch":
        pytest.skip("PyTorch backend only")
    from keras.src.backend.torch import nn as torch_nn

    def copying(*args, **kwargs):
        raise AssertionError("Keras' convolution was called")

    monkeypatch.setattr(torch_nn, "conv", copying)
    layer = layers.Conv2D(3, 3, padding="same")
    x = RNG.normal(size=(1, 5, 5, 2)).astype("float32")
    layer.build(x.shape)
    kernel = to_numpy(layer.kernel).astype(np.float64)
    # d sum(conv(x)) / dx: every output position adds its kernel to the inputs it reads.
    expected = conv2d(np.ones((1, 5, 5, 3)), kernel[::-1, ::-1].transpose(0, 1, 3, 2), np.zeros(2))
    np.testing.assert_allclose(to_numpy(gradient(layer, x)), expected, rtol=1e-5, atol=1e-5)
