"""keras_cdm.distribution from shapes only: layouts and bytes per device (no devices used)."""

import keras
import pytest

from keras_cdm import distribution as cdm_distribution

UNET = dict(image_size=8, base_channels=24, channel_multipliers=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
            num_heads=6, num_classes=10, num_groups=4, image_channels=3, learned_variance=True)


def _mesh(batch, model):
    devices = [f"cpu:{i}" for i in range(batch * model)]  # names only: nothing is placed
    return keras.distribution.DeviceMesh((batch, model), ("batch", "model"), devices)


@pytest.mark.parametrize("model_size", [1, 2, 4, 5])
def test_every_layout_is_valid_and_shards_only_large_output_axes(model_size):
    unet = cdm_distribution.shapes_only(UNET)
    layouts = cdm_distribution.layout_map(unet, _mesh(1, model_size), min_size=500)
    assert sorted(layouts) == sorted(v.path for v in unet.weights)
    for v in unet.weights:
        axes = layouts[v.path].axes
        assert len(axes) == len(v.shape) and set(axes) <= {None, "model"}
        for axis, name in enumerate(axes):
            if name:
                assert v.shape[axis] % model_size == 0 and len(v.shape) >= 2
                assert axis == len(v.shape) - 1 or v.path.endswith(("query/kernel", "key/kernel", "value/kernel"))
        if len(v.shape) < 2 or model_size == 1:
            assert set(axes) == {None}


def test_state_bytes_per_device_closed_forms():
    unet = cdm_distribution.shapes_only(UNET)
    params = unet.count_params()
    replicated = cdm_distribution.layout_map(UNET, _mesh(8, 1))
    # float32: 4 bytes a parameter; Adam's m and v and the EMA: three more copies
    assert cdm_distribution.state_bytes_per_device(UNET, replicated) == {
        "parameters": 4 * params, "optimizer": 8 * params, "ema": 4 * params, "total": 16 * params}
    assert cdm_distribution.state_bytes_per_device(UNET, replicated, optimizer=None, ema=False)["total"] == 4 * params
    layouts = cdm_distribution.layout_map(UNET, _mesh(2, 4), min_size=0)
    counted = sum(4 * _size(v.shape) // (4 if "model" in layouts[v.path].axes else 1)
                  for v in unet.weights)
    assert cdm_distribution.state_bytes_per_device(UNET, layouts)["parameters"] == counted < 4 * params / 2


def _size(shape):
    size = 1
    for d in shape:
        size *= d
    return size


def test_bad_arguments_name_themselves():
    mesh = _mesh(2, 4)
    with pytest.raises(ValueError, match="model_axis"):
        cdm_distribution.layout_map(UNET, mesh, model_axis="tensor")
    with pytest.raises(ValueError, match="min_size"):
        cdm_distribution.layout_map(UNET, mesh, min_size=-1)
    with pytest.raises(ValueError, match="unet"):
        cdm_distribution.layout_map("unet", mesh)
    with pytest.raises(ValueError, match="model_axis_size"):
        cdm_distribution.model_parallel(UNET, devices=[f"cpu:{i}" for i in range(6)], model_axis_size=4)
    with pytest.raises(ValueError, match="optimizer"):
        cdm_distribution.state_bytes_per_device(UNET, cdm_distribution.layout_map(UNET, mesh), optimizer="lion")


def test_state_bytes_of_a_hand_written_layout_gradients_included():
    unet = cdm_distribution.shapes_only(UNET)
    count = unet.count_params()
    layouts = keras.distribution.LayoutMap(_mesh(2, 4))
    layouts["input_conv/kernel"] = (None, None, "batch", None)  # 3x3x3x24: ceil(3 / 2) = 2 of 3 input channels
    layouts["time_embedding/dense_in/kernel"] = ("model", None)  # 24x96: a quarter on each device
    layouts[r"middle_attention/.*/query/kernel"] = (None, "model", None)  # 48x6x8: six heads, 4 devices: 2 each
    kept = count - (3 * 3 * 3 * 24 - 3 * 3 * 2 * 24) - (24 * 96 * 3 // 4) - (48 * 6 * 8 - 48 * 2 * 8)
    assert cdm_distribution.state_bytes_per_device(unet, layouts, optimizer="sgd", ema=False, gradients=True) == {
        "parameters": 4 * kept, "optimizer": 0, "ema": 0, "gradients": 4 * kept, "total": 8 * kept}
