"""keras_cdm.memory_plan: memory per device of a training step, and the recommended setup."""

import keras
import numpy as np
import pytest

from keras_cdm import memory_plan
from keras_cdm.unet import DiffusionUNet, parameter_count

TINY = dict(image_size=8, base_channels=16, channel_multipliers=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
            num_classes=3, num_groups=8, dropout=0.1, learned_variance=True)


def _tiny(remat=False):
    with keras.StatelessScope(initialize_variables=False):
        return DiffusionUNet(**TINY, remat=remat)


def _count():
    """The closed-form parameter count (from the config, not from the built variables)."""
    return parameter_count({**DiffusionUNet(**TINY).get_config(), "remat": False,
                            "channel_multipliers": TINY["channel_multipliers"],
                            "attention_resolutions": TINY["attention_resolutions"]})


@pytest.mark.backend_neutral
def test_state_bytes_replicated_and_sharded_by_a_hand_written_layout():
    unet, count = _tiny(), _count()
    assert all(v._value is None for v in unet.weights)  # nothing allocated
    mesh = {"batch": 2, "model": 4}
    replicated = memory_plan.state_bytes_per_device(unet, None, mesh)
    assert replicated == {"weights": 4 * count, "gradients": 4 * count, "optimizer": 8 * count, "ema": 4 * count}
    layout = {"input_conv/kernel": (None, None, None, "model"),  # 3x3x3x16: 432 values, 108 a device
              "time_embedding/dense_in/kernel": ("model", None),  # 16x64: 1024 values, 256 a device
              r"middle_attention/.*/query/kernel": ("batch", None, None)}  # 32x1x32: half a device
    sharded = memory_plan.state_bytes_per_device(unet, layout, mesh, optimizer="sgd", ema=False)
    kept = count - (432 - 108) - (1024 - 256) - 32 * 32 // 2
    assert sharded == {"weights": 4 * kept, "gradients": 4 * kept, "optimizer": 0, "ema": 0}
    assert memory_plan.sharded_size((3, 8), ("model", None), {"model": 2}) == 16  # ceil(3 / 2) * 8
    with pytest.raises(ValueError, match=r"Layout axes must be axes of the mesh \['batch', 'model'\]"):
        memory_plan.state_bytes_per_device(unet, {"input_conv/kernel": (None, None, None, "x")}, mesh)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="counts JAX's saved residuals")
@pytest.mark.parametrize("remat", [False, True])
def test_activation_count_matches_what_jax_keeps_for_the_backward_pass(remat):
    import jax
    from jax._src.ad_checkpoint import saved_residuals

    unet = DiffusionUNet(**TINY, remat=remat)
    trainable = [v.value for v in unet.trainable_variables]
    frozen = [v.value for v in unet.non_trainable_variables]

    def kept(batch):
        inputs = {"noisy_images": np.zeros((batch, 8, 8, 3), "float32"), "timesteps": np.zeros(batch, "int32"),
                  "labels": np.zeros(batch, "int32")}

        def loss(trainable, inputs):
            out, _ = unet.stateless_call(trainable, frozen, inputs, training=True)
            return jax.numpy.sum(out * out)

        residuals = saved_residuals(loss, trainable, inputs)
        return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a, why in residuals if "argument" not in why)

    measured = kept(2) - kept(1)
    counted = memory_plan.activation_bytes_per_example(unet, recomputation=False)
    assert 0.8 * measured <= counted <= 1.25 * measured, (counted, measured)


@pytest.mark.backend_neutral
def test_plan_recommends_remat_when_only_remat_fits_and_nothing_when_nothing_fits():
    unet = _tiny()
    state = sum(memory_plan.state_bytes_per_device(unet, None, {"batch": 2, "model": 1}).values())
    per_example = {r: memory_plan.activation_bytes_per_example(_tiny(r)) for r in (False, True)}
    assert per_example[True] < 0.75 * per_example[False]
    memory = (state + 4 * (per_example[True] + per_example[False]) / 2) / 0.9  # 4 examples a device fit with remat
    result = memory_plan.plan(unet, devices=2, device_memory_bytes=memory, batch_size=8, model_axis=2)
    assert [(r["model_axis"], r["remat"]) for r in result.rows] == [(1, False), (1, True), (2, False), (2, True)]
    best = result.recommended
    assert (best["model_axis"], best["remat"], best["micro_batch"], best["accumulation"]) == (1, True, 4, 1)
    assert "recommended: DiffusionUNet(remat=True) on a ('batch', 'model') mesh of (2, 1)" in result.table()
    assert result.rows[0]["accumulation"] > 1  # without remat: fewer examples a step, accumulated
    nothing = memory_plan.plan(unet, devices=2, device_memory_bytes=state / 2, batch_size=8)
    assert nothing.recommended is None and "nothing fits" in nothing.table()


@pytest.mark.backend_neutral
@pytest.mark.parametrize("kwargs,message", [
    (dict(model_axis=3), r"`model_axis` must be None or a divisor of `devices` \(8\): one of \[1, 2, 4, 8\]"),
    (dict(batch_size=0), "`batch_size` must be a positive integer"),
    (dict(devices=0), "`devices` must be a positive integer"),
])
def test_plan_bad_arguments(kwargs, message):
    arguments = {**dict(stage=_tiny(), devices=8, device_memory_bytes=2**30, batch_size=8), **kwargs}
    with pytest.raises(ValueError, match=message):
        memory_plan.plan(**arguments)
    with pytest.raises(ValueError, match="`batch_size` is needed for stages other than"):
        memory_plan.plan(_tiny(), 8, 2**30)
