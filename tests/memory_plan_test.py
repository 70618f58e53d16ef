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
def test_abstract_unets_are_never_allocated_even_after_another_stateless_scope():
    unet = memory_plan.abstract_unet(_tiny(), remat=True)
    assert unet.remat and unet.count_params() == _count()
    with keras.StatelessScope():  # Keras initializes pending variables when such a scope ends
        pass
    assert all(v._value is None for v in unet.weights)


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
    state = 5 * 4 * _count()  # float32 weights, gradients, Adam's m and v, EMA; all replicated (small)
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
    (dict(optimizer="lion"), "`optimizer` must be one of"),
    (dict(ema="yes"), "`ema` must be"),
    (dict(layout="output channels"), "`layout` must be None or a callable"),
])
def test_plan_bad_arguments(kwargs, message):
    arguments = {**dict(stage=_tiny(), devices=8, device_memory_bytes=2**30, batch_size=8), **kwargs}
    with pytest.raises(ValueError, match=message):
        memory_plan.plan(**arguments)
    with pytest.raises(ValueError, match="`batch_size` is needed for stages other than"):
        memory_plan.plan(_tiny(), 8, 2**30)
