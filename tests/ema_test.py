"""The EMA warm-up (keras_cdm.ema): Keras' optimizer EMA with momentum min(m, (1+k)/(10+k))."""

import json

import keras
import numpy as np
import pytest

from keras_cdm import DiffusionModel, DiffusionUNet, GaussianDiffusion
from keras_cdm.ema import Adam
from keras_cdm.testing import to_numpy


def _run(optimizer, steps, seed=0):
    """Applies `steps` random gradients to two variables; returns the weights after each
    step (float64) and the optimizer's averages at the end."""
    rng = np.random.default_rng(seed)
    variables = [keras.Variable(rng.normal(size=(3, 2)).astype("float32")), keras.Variable(np.zeros(4, "float32"))]
    optimizer.build(variables)
    history = []
    for _ in range(steps):
        optimizer.apply([keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32")) for v in variables],
                        variables)
        history.append([to_numpy(v).astype(np.float64) for v in variables])
    averages = [to_numpy(a) for a in optimizer._model_variables_moving_average]
    return history, averages


def _reference_ema(history, momentum, warmup):
    """float64: average_0 = w_1 (the weights after step 0); step k >= 1 uses momentum
    min(m, (1 + k) / (10 + k)) with the warm-up, m without."""
    averages = [w.copy() for w in history[0]]
    for k, weights in enumerate(history[1:], start=1):
        m = min(momentum, (1 + k) / (10 + k)) if warmup else momentum
        averages = [m * a + (1 - m) * w for a, w in zip(averages, weights)]
    return averages


@pytest.mark.parametrize("warmup", [True, False])
def test_average_follows_the_float64_recursion(warmup):
    history, averages = _run(Adam(0.1, use_ema=True, ema_momentum=0.99, ema_warmup=warmup), steps=40)
    for got, expected in zip(averages, _reference_ema(history, 0.99, warmup)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_without_warmup_it_is_keras_own_ema_exactly():
    _, ours = _run(Adam(0.1, use_ema=True, ema_momentum=0.99, ema_warmup=False), steps=12)
    _, keras_own = _run(keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.99), steps=12)
    for a, b in zip(ours, keras_own):
        np.testing.assert_array_equal(a, b)


def test_warmup_forgets_the_first_weights():
    # The first step's weights hold m**(n-1) of Keras' average, 9 / (n + 8) of the warmed-up one.
    n, m = 200, 0.999
    assert m ** (n - 1) > 0.8 and 9 / (n + 8) < 0.05
    history, averages = _run(Adam(0.05, use_ema=True, ema_momentum=m, ema_warmup=True), steps=n)
    recent = np.mean([h[0] for h in history[n // 2:]], axis=0)
    first = history[0][0]
    # The warmed-up average sits near the recent weights, far from the first ones.
    assert np.abs(averages[0] - recent).mean() < 0.5 * np.abs(averages[0] - first).mean()


def test_config_keeps_the_final_momentum_and_round_trips():
    optimizer = Adam(1e-3, use_ema=True, ema_momentum=0.999, ema_warmup=True)
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(optimizer)))
    assert config["registered_name"] == "keras_cdm>Adam"
    assert config["config"]["ema_momentum"] == 0.999 and config["config"]["ema_warmup"] is True
    clone = keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert isinstance(clone, Adam) and clone.ema_momentum == 0.999 and clone.ema_warmup is True
    with pytest.raises(ValueError, match=r"`ema_warmup` must be True or False. Received: ema_warmup='yes'"):
        Adam(ema_warmup="yes")


def test_stage_compiles_with_the_warmed_up_ema_by_default():
    unet = DiffusionUNet(image_size=8, base_channels=8, channel_multipliers=(1,), attention_resolutions=(),
                         num_groups=4, num_classes=2, image_channels=1)
    model = DiffusionModel(unet, GaussianDiffusion(10, "cosine"))
    model.compile()
    assert isinstance(model.optimizer, Adam) and model.optimizer.ema_warmup and model.optimizer.use_ema
    model.compile(ema_warmup=False)
    assert model.optimizer.ema_warmup is False
    images = np.zeros((4, 8, 8, 1), "float32")
    model.fit({"images": images, "labels": np.array([0, 1, 0, 1])}, epochs=1, verbose=0)
    assert model.generate(labels=[0], seed=0, num_steps=2).shape == (1, 8, 8, 1)
