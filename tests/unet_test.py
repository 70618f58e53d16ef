import json

import keras
import numpy as np
import pytest

from keras_cdm import DiffusionUNet
from keras_cdm.testing import assert_config_round_trip, randomize_weights, to_numpy

TINY_SR = dict(
    image_size=16,
    base_channels=16,
    channel_multipliers=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(8,),
    num_heads=2,
    num_classes=10,
    learned_variance=True,
    low_res_size=8,
    augmentation_level_embedding=True,
    num_groups=8,
    dropout=0.1,
)
RNG = np.random.default_rng(1)
INPUTS = {
    "noisy_images": RNG.normal(size=(2, 16, 16, 3)).astype("float32"),
    "timesteps": np.array([3, 900]),
    "labels": np.array([1, 7]),
    "low_res_images": RNG.normal(size=(2, 8, 8, 3)).astype("float32"),
    "augmentation_levels": np.array([0, 250]),
}


@pytest.fixture(scope="module")
def unet():
    keras.utils.set_random_seed(0)
    model = DiffusionUNet(**TINY_SR)
    randomize_weights(model, scale=0.1)  # away from the zero-initialised outputs
    return model


def reference_parameter_count(image_size, in_channels, mc, out, nrb, attention, mult,
                              num_classes=None, extra_embedding=False, updown=False):
    """Parameter count of the Improved DDPM UNetModel (scale-shift norm), derived by hand."""
    gn = lambda c: 2 * c  # noqa: E731
    conv = lambda ci, co, k=3: ci * co * k * k + co  # noqa: E731
    lin = lambda i, o: i * o + o  # noqa: E731

    def res(ci, co):
        return gn(ci) + conv(ci, co) + lin(E, 2 * co) + gn(co) + conv(co, co) + (conv(ci, co, 1) if ci != co else 0)

    att = lambda c: gn(c) + lin(c, 3 * c) + lin(c, c)  # noqa: E731
    E = 4 * mc
    p = (lin(mc, E) + lin(E, E)) * (2 if extra_embedding else 1) + (num_classes or 0) * E
    ds_att = [image_size // r for r in attention]
    p += conv(in_channels, mc)
    chans, ch, ds = [mc], mc, 1
    for level, m in enumerate(mult):
        for _ in range(nrb):
            p += res(ch, m * mc)
            ch = m * mc
            p += att(ch) if ds in ds_att else 0
            chans.append(ch)
        if level != len(mult) - 1:
            p += res(ch, ch) if updown else conv(ch, ch)
            chans.append(ch)
            ds *= 2
    p += 2 * res(ch, ch) + att(ch)
    for level, m in list(enumerate(mult))[::-1]:
        for i in range(nrb + 1):
            p += res(ch + chans.pop(), mc * m)
            ch = mc * m
            p += att(ch) if ds in ds_att else 0
            if level and i == nrb:
                p += res(ch, ch) if updown else conv(ch, ch)
                ds //= 2
    return p + gn(ch) + conv(mc, out)


@pytest.mark.parametrize(
    "kwargs,reference",
    [
        (TINY_SR, (16, 6, 16, 6, 1, (8,), (1, 2), 10, True)),
        (
            dict(image_size=16, base_channels=8, channel_multipliers=(1, 2, 3), num_res_blocks=2,
                 attention_resolutions=(8, 4), num_heads=4, num_groups=4),
            (16, 3, 8, 3, 2, (8, 4), (1, 2, 3)),
        ),
        (
            dict(image_size=8, base_channels=8, channel_multipliers=(1, 2), num_res_blocks=1,
                 attention_resolutions=(), num_groups=4, resblock_updown=True, num_classes=5),
            (8, 3, 8, 3, 1, (), (1, 2), 5, False, True),
        ),
    ],
)
def test_parameter_count_matches_reference_architecture(kwargs, reference):
    assert DiffusionUNet(**kwargs).count_params() == reference_parameter_count(*reference)


def test_output_shape_and_float32_dtype(unet):
    out = unet(INPUTS)
    assert tuple(out.shape) == (2, 16, 16, 6)  # epsilon + v with learned variances
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_zero_initialised_output():
    model = DiffusionUNet(**TINY_SR)
    np.testing.assert_array_equal(to_numpy(model(INPUTS)), 0.0)


@pytest.mark.parametrize(
    "key,value",
    [
        ("labels", np.array([2, 7])),
        ("low_res_images", INPUTS["low_res_images"] + np.array([0.5, 0.0], "float32")[:, None, None, None]),
        ("augmentation_levels", np.array([40, 250])),
        ("timesteps", np.array([4, 900])),
    ],
)
def test_each_conditioning_input_changes_the_output(unet, key, value):
    base = to_numpy(unet(INPUTS))
    changed = to_numpy(unet({**INPUTS, key: value}))
    assert np.abs(changed[0] - base[0]).max() > 1e-4  # example 0 was changed
    np.testing.assert_allclose(changed[1], base[1], atol=1e-5)  # example 1 was not


def test_noise_level_conditioning_takes_continuous_levels():
    model = DiffusionUNet(image_size=8, base_channels=8, channel_multipliers=(1, 2), num_res_blocks=1,
                          attention_resolutions=(), num_groups=4, conditioning="noise_level",
                          low_res_size=4)
    randomize_weights(model, scale=0.1)
    assert model.conditioning_key == "noise_levels"
    x = {"noisy_images": np.ones((1, 8, 8, 3), "float32"), "low_res_images": np.ones((1, 4, 4, 3), "float32")}
    a = to_numpy(model({**x, "noise_levels": np.array([0.500])}))
    b = to_numpy(model({**x, "noise_levels": np.array([0.501])}))
    assert np.abs(a - b).max() > 1e-5
    assert "timesteps" not in model.input


def test_dropout_is_active_only_in_training(unet):
    inference = to_numpy(unet(INPUTS, training=False))
    np.testing.assert_array_equal(inference, to_numpy(unet(INPUTS)))
    assert np.abs(to_numpy(unet(INPUTS, training=True)) - inference).max() > 1e-4


def test_config_round_trip_rebuilds_the_same_architecture(unet):
    clone = assert_config_round_trip(unet)
    assert clone.count_params() == unet.count_params()
    assert [layer.name for layer in clone.layers] == [layer.name for layer in unet.layers]
    assert clone.channel_multipliers == (1, 2) and clone.low_res_size == 8


def test_keras_file_save_and_load_gives_identical_outputs(unet, tmp_path):
    path = tmp_path / "unet.keras"
    unet.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(restored, DiffusionUNet)
    np.testing.assert_array_equal(to_numpy(restored(INPUTS)), to_numpy(unet(INPUTS)))


def test_summary_has_stable_readable_layer_names(unet):
    lines = []
    unet.summary(print_fn=lambda line, **kwargs: lines.append(line), line_length=120)
    text = "\n".join(lines)
    for name in ("time_embedding", "label_embedding", "augmentation_level_embedding", "low_res_resize",
                 "input_conv", "down_0_res_0", "down_0_downsample", "down_1_attention_0",
                 "middle_res_0", "middle_attention", "up_1_res_1", "up_1_upsample", "output_conv"):
        assert name in text
    assert f"{unet.count_params():,}" in text


def test_mixed_bfloat16_matches_float32_and_outputs_float32(unet):
    mixed = DiffusionUNet(**TINY_SR, dtype="mixed_bfloat16")
    mixed.set_weights(unet.get_weights())
    out = mixed(INPUTS)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert all(w.dtype == "float32" for w in mixed.weights)
    reference = to_numpy(unet(INPUTS))
    np.testing.assert_allclose(to_numpy(out), reference, atol=0.05 * np.abs(reference).max())
    config = json.loads(json.dumps(mixed.get_config()))
    assert DiffusionUNet.from_config(config).dtype_policy.name == "float32"  # the model itself
    assert DiffusionUNet.from_config(config).get_layer("input_conv").dtype_policy.name == "mixed_bfloat16"


def test_unconditional_base_model_has_only_images_and_timesteps():
    model = DiffusionUNet(image_size=8, base_channels=8, channel_multipliers=(1,), attention_resolutions=(),
                          num_groups=4)
    assert sorted(model.input) == ["noisy_images", "timesteps"]
    assert tuple(model({"noisy_images": np.zeros((3, 8, 8, 3)), "timesteps": np.zeros(3)}).shape) == (3, 8, 8, 3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"attention_resolutions": (16, 3)},
         "`attention_resolutions` must be resolutions the U-Net reaches, in pixels: [16, 8]. "
         "Received: attention_resolutions=(16, 3)"),
        ({"num_heads": 3}, "`num_heads` must divide the channels of every attention layer ([32]). "
                           "Received: num_heads=3"),
        ({"num_groups": 32}, "`num_groups` must divide the channels of every level ([16, 16, 32]). "
                             "Received: num_groups=32"),
        ({"image_size": 15, "low_res_size": None},
         "`image_size` must be divisible by 2**(len(channel_multipliers) - 1) = 2. Received: image_size=15"),
        ({"low_res_size": 32}, "`low_res_size` must not exceed `image_size` (16). Received: low_res_size=32"),
        ({"conditioning": "sigma"},
         "`conditioning` must be one of ['timestep', 'noise_level']. Received: conditioning='sigma'"),
        ({"channel_multipliers": ()}, "`channel_multipliers` must be a non-empty sequence of positive integers"),
        ({"num_classes": 0}, "`num_classes` must be a positive integer. Received: num_classes=0"),
        ({"dropout": -0.1}, "`dropout` must be a number in [0.0, 1.0). Received: dropout=-0.1"),
        ({"dtype": "float8"}, "`dtype` must be None or a Keras dtype policy"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        DiffusionUNet(**{**TINY_SR, **kwargs})
    assert message in str(info.value)


@pytest.mark.parametrize(
    "inputs,message",
    [
        ({**INPUTS, "low_res_images": np.zeros((2, 4, 4, 3), "float32")}, "low_res_images"),
        ({**INPUTS, "noisy_images": np.zeros((2, 16, 16, 1), "float32")},
         "`noisy_images` must have shape (batch, 16, 16, 3). Received: noisy_images.shape=(2, 16, 16, 1)"),
        ({k: v for k, v in INPUTS.items() if k != "labels"}, "labels"),
        ({**INPUTS, "class_labels": np.array([1, 2])},
         "expects a dict with keys ['augmentation_levels', 'labels', 'low_res_images', 'noisy_images', "
         "'timesteps']. Received: inputs=['augmentation_levels', 'class_labels', 'labels'"),
    ],
)
def test_bad_inputs_raise_clear_errors(unet, inputs, message):
    with pytest.raises(ValueError) as info:
        unet(inputs)
    assert message in str(info.value)
