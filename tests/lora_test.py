"""LoRA fine-tuning (keras_cdm.lora) and adapter presets (keras_cdm.adapters)."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_cdm import CascadedDiffusionPipeline, DiffusionModel, DiffusionUNet, GaussianDiffusion, lora
from keras_cdm.callbacks import BackupAndRestore
from keras_cdm.testing import randomize_weights, tiny_cascade, to_numpy

TINY = dict(image_size=8, base_channels=8, channel_multipliers=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
            num_heads=2, num_groups=4, image_channels=1, num_classes=3, learned_variance=True)


def tiny_stage(seed=0, name="base"):
    stage = DiffusionModel(DiffusionUNet(**TINY), GaussianDiffusion(10, "cosine", variance="learned_range",
                                                                    loss="hybrid"), seed=seed, name=name)
    randomize_weights(stage.unet, seed=seed, scale=0.1)
    return stage


@pytest.fixture(scope="module")
def base_preset(tmp_path_factory):
    return tiny_stage().save_to_preset(tmp_path_factory.mktemp("lora") / "base")


@pytest.fixture(scope="module")
def tuned(base_preset):
    """A stage fine-tuned with LoRA on every target (shared: tests only read it)."""
    return finetuned(base_preset, target=("attention", "convolutions", "embeddings"))


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"images": rng.uniform(-1, 1, (n, 8, 8, 1)).astype("float32"), "labels": rng.integers(0, 3, n)}


def base_weights(unet):
    return [to_numpy(v) for v in unet.weights if not v.name.startswith("lora_") and v.name != "seed_generator_state"]


def unet_output(unet, seed=0):
    rng = np.random.default_rng(seed)
    inputs = {"noisy_images": rng.normal(size=(4, 8, 8, 1)).astype("float32"),
              "timesteps": np.array([0, 3, 6, 9], "int32"), "labels": np.array([0, 1, 2, 0], "int32")}
    return to_numpy(unet(inputs))


def finetuned(base_preset, rank=2, target=None, epochs=2):
    stage = DiffusionModel.from_preset(base_preset)
    stage.enable_lora(rank, target)
    stage.compile(learning_rate=1e-2)
    stage.fit(data(), batch_size=8, epochs=epochs, verbose=0)
    return stage


# -- which weights train ----------------------------------------------------------------------


@pytest.mark.parametrize("target", [None, "attention", "convolutions", "embeddings",
                                    ("attention", "convolutions", "embeddings")])
def test_lora_adds_exactly_the_low_rank_factors_of_the_targeted_layers_and_changes_nothing_at_first(target):
    unet = tiny_stage().unet
    before = unet_output(unet)
    rank = 3
    targets = lora.check_targets(target)
    classes = {"attention": keras.layers.EinsumDense, "convolutions": keras.layers.Conv2D,
               "embeddings": (keras.layers.Dense, keras.layers.Embedding)}
    expected = 0  # independent count: rank x (inputs + outputs) of every targeted layer, as Keras factors it
    for layer in unet._flatten_layers(include_self=False):
        for name in targets:
            if isinstance(layer, classes[name]) and not (name == "embeddings" and isinstance(
                    layer, keras.layers.EinsumDense)):
                shape = (layer.embeddings if isinstance(layer, keras.layers.Embedding) else layer.kernel).shape
                expected += rank * (int(np.prod(shape[:-1])) + shape[-1])
    unet.enable_lora(rank, target)
    assert unet.lora_config == {"rank": rank, "alpha": float(rank), "target": list(targets)}
    assert all(v.name.startswith("lora_") for v in unet.trainable_weights)
    assert sum(int(np.prod(v.shape)) for v in unet.trainable_weights) == expected > 0
    np.testing.assert_array_equal(unet_output(unet), before)  # B starts at zero


def test_fit_moves_only_the_adapter_and_the_base_weights_stay_bit_identical(base_preset):
    stage = DiffusionModel.from_preset(base_preset)
    before = base_weights(stage.unet)
    stage.enable_lora(2)
    stage.compile(learning_rate=1e-2)
    stage.fit(data(), batch_size=8, epochs=2, verbose=0)
    for old, new in zip(before, base_weights(stage.unet)):
        np.testing.assert_array_equal(old, new)
    moved = [float(np.abs(to_numpy(b)).max()) for _, b in lora.lora_weights(stage.unet).values()]
    assert min(moved) > 0  # every B left zero
    # The EMA warms up: after 4 steps it is near the trained adapter, not near its zero start.
    with stage.ema_weights():
        ema = [to_numpy(b) for _, b in lora.lora_weights(stage.unet).values()]
    trained = [to_numpy(b) for _, b in lora.lora_weights(stage.unet).values()]
    assert sum(np.abs(e).sum() for e in ema) > 0.5 * sum(np.abs(t).sum() for t in trained)


@pytest.mark.backend_neutral
def test_enable_lora_refusals(base_preset):
    stage = DiffusionModel.from_preset(base_preset)
    for kwargs, message in [(dict(rank=0), "rank"), (dict(rank=2.5), "rank"), (dict(rank=True), "rank"),
                            (dict(rank=2, target="mlp"), "target"), (dict(rank=2, target=[]), "target"),
                            (dict(rank=2, alpha=float("nan")), "alpha")]:
        with pytest.raises(ValueError, match=message):
            stage.enable_lora(**kwargs)
    assert stage.lora_config is None and len(stage.trainable_variables) > 0  # nothing changed
    with pytest.raises(ValueError, match="not enabled"):
        stage.save_lora_weights(Path(base_preset).parent / "a.lora.h5")
    with pytest.raises(ValueError, match="not enabled"):
        stage.merge_lora()
    stage.enable_lora(2)
    with pytest.raises(ValueError, match="already enabled"):
        stage.enable_lora(2)
    with pytest.raises(ValueError, match=r"\.lora\.h5"):
        stage.save_lora_weights(Path(base_preset).parent / "a.weights.h5")
    trained = DiffusionModel.from_preset(base_preset)
    trained.compile()
    trained.optimizer.build(trained.trainable_variables)  # as the first training step does
    with pytest.raises(ValueError, match="trained in this session"):
        trained.enable_lora(2)


# -- adapters: files, merging, checkpoints ---------------------------------------------------------------------


def test_adapter_file_round_trip_gives_identical_samples(base_preset, tuned, tmp_path):
    stage = tuned
    path = stage.save_lora_weights(tmp_path / "digits.lora.h5")
    assert path.stat().st_size < 200_000
    fresh = DiffusionModel.from_preset(base_preset)
    config = fresh.load_lora_weights(path)  # enables LoRA with the file's settings
    assert config["rank"] == 2 and fresh.lora_config == stage.lora_config
    expected = stage.generate(labels=[0, 1, 2, 1], seed=3)  # EMA weights, as saved
    np.testing.assert_array_equal(fresh.generate(labels=[0, 1, 2, 1], seed=3, use_ema=False), expected)
    other = DiffusionModel.from_preset(base_preset)
    other.enable_lora(4)
    with pytest.raises(ValueError, match="rank"):
        other.load_lora_weights(path)


def test_merge_gives_the_unmerged_outputs_without_lora(tuned):
    stage = tuned
    merged = stage.merge_lora(use_ema=False)
    assert merged.lora_config is None and merged.unet.count_params() == stage.unet.count_params() - sum(
        int(np.prod(v.shape)) for pair in lora.lora_weights(stage.unet).values() for v in pair)
    assert not any(v.name.startswith("lora_") for v in merged.weights)
    np.testing.assert_allclose(unet_output(merged.unet), unet_output(stage.unet), rtol=1e-4, atol=1e-5)
    a = stage.generate(labels=[0, 1, 2], seed=1, use_ema=False, num_steps=5)
    np.testing.assert_allclose(merged.generate(labels=[0, 1, 2], seed=1, num_steps=5), a, atol=1e-4)
    # merge_lora() uses the EMA, as generate() does.
    np.testing.assert_allclose(stage.merge_lora().generate(labels=[0, 1, 2], seed=1, num_steps=5),
                               stage.generate(labels=[0, 1, 2], seed=1, num_steps=5), atol=1e-4)


def test_a_checkpoint_of_a_lora_stage_resumes_exactly(base_preset, tmp_path):
    """Keras writes LoRA layers merged and loads them with the adapter zeroed; the stage
    keeps the unmerged weights and the adapter, so a resumed run equals an uninterrupted one."""
    def run(epochs, backup):
        keras.utils.set_random_seed(0)
        stage = DiffusionModel.from_preset(base_preset)
        stage.enable_lora(2)
        stage.compile(learning_rate=1e-2)
        stage.fit(data(), batch_size=8, epochs=epochs, verbose=0, callbacks=[BackupAndRestore(str(backup))])
        return stage

    straight = run(2, tmp_path / "straight")
    run(1, tmp_path / "resumed")
    resumed = run(2, tmp_path / "resumed")  # restores epoch 1 and trains epoch 2
    for a, b in zip(straight.weights, resumed.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)
    path = tmp_path / "w.weights.h5"
    straight.save_weights(path)
    plain = DiffusionModel.from_preset(base_preset)  # without LoRA: the merged weights
    plain.load_weights(path)
    np.testing.assert_allclose(unet_output(plain.unet), unet_output(straight.unet), rtol=1e-4, atol=1e-5)


def test_an_adapter_refuses_another_base(base_preset, tuned, tmp_path):
    path = tuned.save_lora_weights(tmp_path / "a.lora.h5")
    changed = DiffusionModel.from_preset(base_preset)
    changed.unet.get_layer("input_conv").bias.assign(np.full((8,), 0.5, "float32"))
    with pytest.raises(ValueError, match="weights differ"):
        changed.load_lora_weights(path)
    assert changed.lora_config is None  # nothing was enabled
    wider = DiffusionModel(DiffusionUNet(**{**TINY, "base_channels": 16, "num_groups": 8}),
                           GaussianDiffusion(10, "cosine", variance="learned_range", loss="hybrid"))
    with pytest.raises(ValueError, match="architecture"):
        wider.load_lora_weights(path)
    import shutil

    import h5py

    unsigned = shutil.copy(path, tmp_path / "unsigned.lora.h5")  # without the base's weights hash
    with h5py.File(unsigned, "r+") as file:
        config = json.loads(file.attrs["config"])
        del config["weights_sha256"]
        file.attrs["config"] = json.dumps(config)
    with pytest.raises(ValueError, match="weights_sha256"):
        DiffusionModel.from_preset(base_preset).load_lora_weights(unsigned)
    (tmp_path / "junk.lora.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not a readable adapter file"):
        DiffusionModel.from_preset(base_preset).load_lora_weights(tmp_path / "junk.lora.h5")


# -- adapter presets ----------------------------------------------------------------------------------------


def test_adapter_preset_names_its_base_and_loads_to_the_same_samples(base_preset, tuned, tmp_path):
    stage = tuned
    folder = stage.save_to_preset(tmp_path / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.lora.h5", "config.json", "metadata.json"]
    config = json.loads((folder / "config.json").read_text())["config"]
    assert config["base"] == str(base_preset) and config["rank"] == 2 and len(config["weights_sha256"]) == 64
    assert config["target"] == ["attention", "convolutions", "embeddings"]
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["adapter_parameter_count"] == sum(int(np.prod(v.shape)) for v in stage.trainable_variables)
    size = (folder / "adapter.lora.h5").stat().st_size  # the factors in float32, and HDF5's few kB per layer
    assert 4 * metadata["adapter_parameter_count"] < size < 4 * metadata["adapter_parameter_count"] + 4096 * len(
        lora.lora_weights(stage.unet)) < (Path(base_preset) / "model.weights.h5").stat().st_size
    loaded = DiffusionModel.from_preset(folder)
    assert loaded.name == "base" and loaded.lora_config == stage.lora_config
    # (to float32 rounding: the shared stage's sampler may already be traced for any batch size, TensorFlow's
    # relaxed shape, whose kernels round differently from a trace for this batch: 2e-7 measured)
    np.testing.assert_allclose(loaded.generate(labels=[0, 2], seed=5), stage.generate(labels=[0, 2], seed=5),
                               atol=1e-6)
    # A loaded adapter is saved again naming the same base; fine-tuning can go on.
    again = loaded.save_to_preset(tmp_path / "again")
    assert json.loads((again / "config.json").read_text())["config"]["base"] == str(base_preset)
    # The base changes under the adapter (here: the adapter made to name another one): refused, naming the weights.
    changed = DiffusionModel.from_preset(base_preset)
    changed.unet.get_layer("input_conv").bias.assign(np.full((8,), 0.5, "float32"))
    changed.save_to_preset(tmp_path / "changed_base")
    text = (folder / "config.json").read_text().replace(json.dumps(str(base_preset)),
                                                        json.dumps(str(tmp_path / "changed_base")))
    (folder / "config.json").write_text(text)
    with pytest.raises(ValueError, match="weights differ"):
        DiffusionModel.from_preset(folder)


@pytest.mark.backend_neutral
def test_adapter_preset_refusals(base_preset, tmp_path):
    stage = tiny_stage()
    stage.enable_lora(2)
    with pytest.raises(ValueError, match="was not loaded from one"):  # no base known
        stage.save_to_preset(tmp_path / "a")
    with pytest.raises(ValueError, match="differ"):  # a base it was not trained on
        stage.save_to_preset(tmp_path / "a", base="cdm_mnist32/base")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="base"):  # base without LoRA
        tiny_stage().save_to_preset(tmp_path / "b", base=str(base_preset))
    with pytest.raises(ValueError, match="include_weights"):
        stage.save_to_preset(tmp_path / "c", base=str(base_preset), include_weights=False)
    folder = DiffusionModel.from_preset(base_preset)
    folder.enable_lora(2)
    folder = folder.save_to_preset(tmp_path / "adapter")
    # a local base cannot be shared on the Hub
    from keras_cdm.presets import validate_folder
    with pytest.raises(ValueError, match="others could not load it"):
        validate_folder(folder)
    # a damaged adapter file
    with open(folder / "adapter.lora.h5", "r+b") as file:
        file.seek(200)
        file.write(b"\0" * 16)
    with pytest.raises(ValueError, match="corrupted"):
        DiffusionModel.from_preset(folder)


def test_a_cascade_preset_may_swap_a_stage_for_an_adapted_one(tmp_path):
    cascade = tiny_cascade()
    cascade_folder = cascade.save_to_preset(tmp_path / "cascade")
    base = DiffusionModel.from_preset(cascade_folder / "base")
    base.enable_lora(2, "convolutions")
    base.compile(learning_rate=1e-2)
    base.fit(data(), batch_size=8, epochs=1, verbose=0)
    loaded = CascadedDiffusionPipeline.from_preset(cascade_folder)
    adapted = CascadedDiffusionPipeline([base, *loaded.stages[1:]], loaded.sampling)
    folder = adapted.save_to_preset(tmp_path / "adapted")
    assert json.loads((folder / "base" / "config.json").read_text())["class_name"] == "LoRAAdapter"
    reloaded = CascadedDiffusionPipeline.from_preset(folder)
    assert reloaded.stages[0].lora_config is not None
    np.testing.assert_array_equal(reloaded.generate(labels=[0, 1], seed=2, verbose=False),
                                  adapted.generate(labels=[0, 1], seed=2, verbose=False))
    # Saving over the cascade its adapter's base lives in would leave the adapter without its base.
    with pytest.raises(ValueError, match="lose its base"):
        adapted.save_to_preset(cascade_folder, overwrite=True)
    assert json.loads((cascade_folder / "base" / "config.json").read_text())["class_name"] == "DiffusionModel"
    # An adapter preset alone loads as a one-stage pipeline too.
    assert CascadedDiffusionPipeline.from_preset(folder / "base").stage_names == ["base"]


@pytest.mark.backend_neutral
def test_a_builtin_cascade_stage_is_a_preset_name():
    stage = DiffusionModel.from_preset("cdm_mnist32/base")
    assert stage.unet.image_size == 8 and stage.preset_source == {"preset": "cdm_mnist32/base", "revision": None}
    with pytest.raises(ValueError, match="not found"):
        DiffusionModel.from_preset("cdm_mnist32/sr64")
