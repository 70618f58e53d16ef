"""Loading a preset creates each variable once, from the weights file (no random
initialisation first: on JAX that compiled one XLA program per variable shape), and the
loaded stage is a normal model: it samples, trains, takes LoRA, like one built and then
loaded the plain Keras way."""

import json

import h5py
import keras
import numpy as np
import pytest

from keras_cdm import CascadedDiffusionPipeline, DiffusionModel, presets
from keras_cdm.testing import randomize_weights, tiny_cascade, to_numpy

LABELS = [0, 2]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny cascade preset (weights drawn by numpy) and its base stage's folder."""
    folder = tmp_path_factory.mktemp("preset") / "cascade"
    tiny_cascade().save_to_preset(folder)
    return folder


def _plain_load(stage_folder):
    """The stage built from its config, then given its weights by Keras' `load_weights`."""
    config = json.loads((stage_folder / "config.json").read_text())
    model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    model.load_weights(stage_folder / "model.weights.h5")
    return model


def _initializer_calls(monkeypatch):
    calls = []
    original = keras.Variable._initialize_with_initializer

    def counting(self, initializer):
        calls.append(self.path)
        return original(self, initializer)

    monkeypatch.setattr(keras.Variable, "_initialize_with_initializer", counting)
    return calls


def test_loaded_weights_are_not_randomly_initialised_first(saved, monkeypatch):
    calls = _initializer_calls(monkeypatch)
    stage = DiffusionModel.from_preset(saved / "base")
    # Only the variables the file does not hold (the loss trackers) run their initializer.
    assert calls and all(path.startswith(("mse/", "vb/")) for path in calls), calls
    assert len(calls) < len(stage.weights) / 10
    calls.clear()
    DiffusionModel.from_preset(saved / "base", load_weights=False)  # random weights: every initializer runs
    assert len(calls) >= len(stage.weights)


def test_loaded_stage_is_bit_identical_to_a_plain_keras_load(saved):
    stage, plain = DiffusionModel.from_preset(saved / "base"), _plain_load(saved / "base")
    assert [v.path for v in stage.weights] == [v.path for v in plain.weights]
    for a, b in zip(stage.weights, plain.weights):
        assert np.array_equal(to_numpy(a), to_numpy(b)), a.path
    np.testing.assert_array_equal(stage.generate(labels=LABELS, seed=1, verbose=False),
                                  plain.generate(labels=LABELS, seed=1, verbose=False))
    # No variable is left for Keras to initialise later (a StatelessScope's exit would
    # initialise it again and raise).
    with keras.StatelessScope():
        pass
    assert all(v._value is not None for v in stage.variables)


def test_cascade_loads_every_stage_from_its_file(saved):
    pipeline = CascadedDiffusionPipeline.from_preset(saved)
    for stage in pipeline.stages:
        plain = _plain_load(saved / stage.name)
        assert all(np.array_equal(to_numpy(a), to_numpy(b)) for a, b in zip(stage.weights, plain.weights)), stage.name


def test_loaded_stage_trains_with_ema(saved):
    stage = DiffusionModel.from_preset(saved / "base")
    before = [to_numpy(v) for v in stage.trainable_variables]
    stage.compile(learning_rate=1e-2, ema_momentum=0.5, ema_warmup=False)
    images = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)).astype("float32")
    history = stage.fit({"images": images, "labels": np.array([0, 1, 2, 0])}, epochs=1, batch_size=2, verbose=0)  # two steps
    assert np.isfinite(history.history["loss"]).all()
    after = [to_numpy(v) for v in stage.trainable_variables]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    with stage.ema_weights():  # after two steps the EMA is an average, not the last weights
        ema = [to_numpy(v) for v in stage.trainable_variables]
    assert any(not np.array_equal(e, a) for e, a in zip(ema, after))
    assert all(np.isfinite(e).all() for e in ema)


def test_lora_on_a_loaded_stage(saved):
    stage = DiffusionModel.from_preset(saved / "base")
    reference = stage.generate(labels=LABELS, seed=2, verbose=False)
    stage.enable_lora(2)
    # LoRA's B matrices start at zero: the adapted stage samples as the base does.
    np.testing.assert_allclose(stage.generate(labels=LABELS, seed=2, verbose=False), reference, atol=1e-5)
    adapters = [v for v in stage.unet.trainable_weights if "lora" in v.path]
    assert adapters and stage.lora_config["rank"] == 2
    assert all(v._value is not None and np.isfinite(to_numpy(v)).all() for v in adapters)
    assert any(np.abs(to_numpy(v)).max() > 0 for v in adapters)  # the A matrices: random, initialised


def test_load_weights_false_gives_random_initialised_weights(saved):
    stage, plain = DiffusionModel.from_preset(saved / "base", load_weights=False), _plain_load(saved / "base")
    values = [to_numpy(v) for v in stage.unet.weights]
    assert all(np.isfinite(v).all() for v in values)
    kernels = [(v, to_numpy(p)) for v, p, w in zip(values, plain.unet.weights, stage.unet.weights) if v.ndim > 1]
    assert kernels and not any(np.array_equal(v, p) for v, p in kernels)
    assert any(np.abs(v).max() > 0 for v, _ in kernels)


def test_a_weight_missing_from_the_file_is_an_error(saved, tmp_path):
    folder = tmp_path / "stage"
    stage = DiffusionModel.from_preset(saved / "base")
    randomize_weights(stage.unet, seed=5)
    stage.save_to_preset(folder)
    with h5py.File(folder / "model.weights.h5", "r+") as file:
        groups = []
        file.visititems(lambda name, item: groups.append(name) if name.endswith("/vars") and "0" in item
                        and "diffusion_u_net" in name else None)
        del file[groups[0].rsplit("/", 1)[0]]  # a layer of the U-Net, with its weights
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["weights_sha256"] = presets.sha256(folder / "model.weights.h5")
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="Preset .*(holds no value for|could not load)"):
        DiffusionModel.from_preset(folder)
