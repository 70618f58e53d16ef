"""Activation rematerialization of the residual blocks: DiffusionUNet(remat=True)."""

import json
import random

import keras
import numpy as np
import pytest

from keras_cdm import DiffusionModel, DiffusionUNet, GaussianDiffusion
from keras_cdm.layers import ResidualBlock
from keras_cdm.presets import unet_from_preset
from keras_cdm.testing import assert_config_round_trip, gradient, randomize_weights
from tests.presets_test import tiny_presets  # noqa: F401  (fixture)

TINY = dict(image_size=8, base_channels=16, channel_multipliers=(1, 2), num_res_blocks=1, attention_resolutions=(),
            num_classes=3, num_groups=8, learned_variance=True, resblock_updown=True)
ONE_LEVEL = {**TINY, "channel_multipliers": (1,), "resblock_updown": False}  # 5 blocks: a cheaper compilation


def _stage(remat):
    random.seed(0)  # ResidualBlock draws its dropout seeds from Python's generator: the same in both stages
    unet = DiffusionUNet(**ONE_LEVEL, dropout=0.3, remat=remat)
    model = DiffusionModel(unet, GaussianDiffusion(10, "cosine", variance="learned_range", loss="hybrid"), seed=3)
    model.compile(optimizer=keras.optimizers.SGD(1.0))  # updated weights = weights - gradients
    return model


def test_training_step_with_remat_gives_the_same_loss_and_weights():
    # With dropout: the recomputation of the backward pass must use the forward pass's dropout mask
    # (rematerializing the draw too gives gradients off by ~1e-2 on TensorFlow and PyTorch).
    plain, remat = _stage(False), _stage(True)
    randomize_weights(plain.unet)  # the zero-initialised output convolutions would hide the blocks' gradients
    remat.set_weights(plain.get_weights())
    for a, b in zip(plain.unet.non_trainable_variables, remat.unet.non_trainable_variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))  # seeds
    before = plain.get_weights()
    rng = np.random.default_rng(0)
    batch = {"images": rng.uniform(-1, 1, (4, 8, 8, 3)).astype("float32"), "labels": np.array([0, 1, 2, 1])}
    logs_plain = plain.train_on_batch(batch, return_dict=True)
    logs_remat = remat.train_on_batch(batch, return_dict=True)
    np.testing.assert_allclose(logs_remat["loss"], logs_plain["loss"], rtol=1e-6)
    moved = 0.0
    for start, a, b in zip(before, plain.get_weights(), remat.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        moved = max(moved, float(np.abs(a - start).max()))
    assert moved > 1e-3  # the step did train
    assert all(layer.remat for layer in remat.unet.layers if isinstance(layer, ResidualBlock))


def test_remat_recomputes_the_block_in_the_backward_pass(monkeypatch):
    block = ResidualBlock(16, num_groups=8, remat=True)
    plain = ResidualBlock(16, num_groups=8)
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype("float32")
    embedding = np.ones((2, 32), "float32")
    block(x, embedding), plain(x, embedding)
    plain.set_weights(block.get_weights())
    randomize_weights(block), randomize_weights(plain)
    calls = []
    apply = ResidualBlock._apply

    def counted(self, *args, **kwargs):
        calls.append(self.name)
        return apply(self, *args, **kwargs)

    monkeypatch.setattr(ResidualBlock, "_apply", counted)
    grad = gradient(lambda v: block(v, embedding) ** 2, x)
    remat_calls = calls.count(block.name)
    np.testing.assert_allclose(grad, gradient(lambda v: plain(v, embedding) ** 2, x), rtol=1e-5, atol=1e-6)
    assert calls.count(plain.name) == 1
    if keras.backend.backend() == "jax":  # jax.checkpoint traces once; the recomputation is in the program
        import jax

        program = str(jax.make_jaxpr(jax.grad(lambda v: keras.ops.sum(block(v, embedding) ** 2)))(x))
        assert "checkpoint" in program or "remat" in program
    else:  # the backward pass calls the block again
        assert remat_calls == 2


@pytest.mark.backend_neutral
def test_remat_config_round_trip_and_old_configs(tiny_presets):  # noqa: F811
    unet = DiffusionUNet(**TINY, remat=True)
    assert unet.get_config()["remat"] is True
    clone = assert_config_round_trip(unet)
    assert clone.remat and all(layer.remat for layer in clone.layers if isinstance(layer, ResidualBlock))
    config = json.loads(json.dumps(DiffusionUNet(**TINY).get_config()))
    assert "remat" not in config  # configs (presets, LoRA fingerprints) are as before unless remat is set
    assert DiffusionUNet.from_config(config).remat is False
    assert assert_config_round_trip(ResidualBlock(8, num_groups=4, remat=True)).remat is True
    assert unet_from_preset("tiny_stage", remat=True).remat  # presets have no remat key


@pytest.mark.backend_neutral
@pytest.mark.parametrize("value", ["yes", 1, None, "full"])
def test_bad_remat_values_raise_clear_errors(value):
    message = f"`remat` must be True or False. Received: remat={value!r}"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DiffusionUNet(**TINY, remat=value)
    with pytest.raises(ValueError, match="`remat` must be True or False"):
        ResidualBlock(8, remat=value)
