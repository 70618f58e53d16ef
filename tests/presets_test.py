import json
import shutil
import warnings

import keras
import numpy as np
import pytest

from keras_cdm import CascadedDiffusionPipeline, DiffusionModel, presets
from keras_cdm.unet import DiffusionUNet
from keras_cdm.testing import tiny_cascade

PAPER_COUNTS = {
    "cdm_imagenet32_base": 792_251_910,
    "cdm_imagenet32_to_64": 718_437_126,
    "cdm_imagenet64_to_128": 536_043_139,
    "cdm_imagenet64_to_256": 589_032_067,
}
CASCADES = {
    "cdm_imagenet64": ["cdm_imagenet32_base", "cdm_imagenet32_to_64"],
    "cdm_imagenet128": ["cdm_imagenet32_base", "cdm_imagenet32_to_64", "cdm_imagenet64_to_128"],
    "cdm_imagenet256": ["cdm_imagenet32_base", "cdm_imagenet32_to_64", "cdm_imagenet64_to_256"],
}
LABELS = [0, 1, 2]


@pytest.fixture(scope="module")
def cascade():
    return tiny_cascade()


@pytest.fixture(scope="module")
def reference_images(cascade):
    return cascade.generate(labels=LABELS, seed=1)


@pytest.fixture
def tiny_presets(tmp_path, monkeypatch):
    """A presets folder holding a tiny weightless cascade and its base stage, in place of the real ones."""
    root = tmp_path / "presets"
    cascade = tiny_cascade()
    cascade.save_to_preset(root / "tiny_cascade", include_weights=False)
    cascade.stages[0].save_to_preset(root / "tiny_stage", include_weights=False, description="a tiny stage")
    monkeypatch.setattr(presets, "builtin_presets_dir", lambda: root)
    return root / "tiny_stage"


# The built-in presets ------------------------------------------------------------------------


def test_builtin_presets_are_the_paper_cascades_and_stages():
    listed = presets.list_presets()
    assert sorted(listed) == sorted([*PAPER_COUNTS, *CASCADES, "cdm_mnist32"])  # the trained one: mnist_preset_test
    assert all("Appendix B" in listed[name] for name in PAPER_COUNTS)
    assert all("cascade" in listed[name] and "Table 1a" in listed[name] for name in CASCADES)
    for name, count in PAPER_COUNTS.items():
        assert presets.read_metadata(name)["parameter_count"] == count
        assert presets.read_metadata(name)["weights"] is None
    for name, stages in CASCADES.items():
        assert presets.read_metadata(name)["parameter_count"] == sum(PAPER_COUNTS[s] for s in stages)


def test_cascade_subfolders_are_the_stage_presets():
    for name, stages in CASCADES.items():
        folder = presets.builtin_preset_path(name)
        assert presets.read_config(folder)["config"]["stages"] == stages
        for stage in stages:
            assert presets.read_config(folder / stage) == presets.read_config(presets.builtin_preset_path(stage))
            own, standalone = (presets.read_metadata(p) for p in (folder / stage, presets.builtin_preset_path(stage)))
            assert {**own, "date": None} == {**standalone, "date": None}


def test_builtin_sampling_settings_follow_tables_3_and_4():
    sampling = presets.read_config(presets.builtin_preset_path("cdm_imagenet256"))["config"]["sampling"]
    assert sampling[1]["truncated"] is True and sampling[1]["augmentation_level"] == 501
    assert sampling[2]["noise_schedule"] == {"schedule": "linear", "num_timesteps": 100}
    config = presets.read_config(presets.builtin_preset_path("cdm_imagenet64_to_256"))["config"]
    assert config["augmentation"]["config"]["sigma_range"] == [0.4, 0.6]
    assert config["diffusion"]["config"]["num_timesteps"] == 2000
    assert config["diffusion"]["config"]["conditioning"] == "noise_level"


def test_presets_dir_is_the_top_level_folder_in_a_checkout():
    assert presets.builtin_presets_dir().name == "presets"
    assert (presets.builtin_presets_dir() / "cdm_imagenet256" / "cdm_imagenet64_to_256" / "config.json").is_file()


@pytest.mark.large
@pytest.mark.parametrize("name", sorted(CASCADES))
def test_paper_cascades_build_with_the_canonical_parameter_counts(name):
    pipeline = CascadedDiffusionPipeline.from_preset(name, load_weights=False)
    assert [stage.unet.count_params() for stage in pipeline.stages] == [PAPER_COUNTS[s] for s in CASCADES[name]]
    assert pipeline.stage_names == CASCADES[name]


@pytest.mark.large
@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_paper_architectures_have_the_canonical_parameter_counts(name):
    assert presets.unet_from_preset(name).count_params() == PAPER_COUNTS[name]


@pytest.mark.large
def test_sr64_without_augmentation_embedding_matches_canonical_count():
    unet = presets.unet_from_preset("cdm_imagenet32_to_64", augmentation_level_embedding=False)
    assert unet.count_params() == 717_124_358


# unet_from_preset ----------------------------------------------------------------------------


def test_unet_from_preset_builds_the_described_unet(tiny_presets):
    unet = presets.unet_from_preset("tiny_stage")
    assert isinstance(unet, DiffusionUNet) and unet.num_classes == 3 and unet.image_size == 8
    assert presets.unet_from_preset("tiny_stage", dtype="mixed_bfloat16").get_layer(
        "input_conv").dtype_policy.name == "mixed_bfloat16"
    assert presets.unet_from_preset("tiny_stage", num_classes=5).num_classes == 5
    with pytest.raises(ValueError, match=r"Unknown U-Net arguments \['heads'\]"):
        presets.unet_from_preset("tiny_stage", heads=2)
    with pytest.raises(ValueError, match="is a cascade; name one of its stages"):
        presets.unet_from_preset("tiny_cascade")


def test_inconsistent_parameter_count_is_reported(tiny_presets):
    metadata = json.loads((tiny_presets / "metadata.json").read_text())
    metadata["parameter_count"] += 1
    (tiny_presets / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="metadata.json says .*: the preset files are inconsistent"):
        presets.unet_from_preset("tiny_stage")
    with pytest.raises(ValueError, match="metadata.json says .*: the preset files are inconsistent"):
        DiffusionModel.from_preset("tiny_stage", load_weights=False)


@pytest.mark.parametrize("name", ["cdm_imagenet_64", "cdm_imagenet", 7, "../presets/cdm_imagenet32_base"])
def test_unknown_or_unsafe_names_list_the_valid_ones(name):
    with pytest.raises(ValueError) as info:
        CascadedDiffusionPipeline.from_preset(name)
    message = str(info.value)
    if isinstance(name, str) and "/" in name:
        assert "Preset folder not found" in message
        return
    assert "Valid names: ['cdm_imagenet128', 'cdm_imagenet256'," in message or "`preset` must be" in message
    if name == "cdm_imagenet_64":
        assert "Did you mean 'cdm_imagenet64'?" in message


# Saving and loading --------------------------------------------------------------------------


def test_cascade_round_trip_reproduces_the_images(cascade, reference_images, tmp_path):
    folder = cascade.save_to_preset(tmp_path / "my_cascade")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "base", "config.json", "metadata.json",
                                                        "sr16", "sr32"]
    metadata = presets.read_metadata(folder / "sr16")
    assert metadata["weights"] == "model.weights.h5" and len(metadata["weights_sha256"]) == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # weights present: no random-weights warning
        loaded = CascadedDiffusionPipeline.from_preset(str(folder))
    assert loaded.sampling == cascade.sampling and loaded.description == "tiny test cascade"
    np.testing.assert_array_equal(loaded.generate(labels=LABELS, seed=1), reference_images)
    # One stage of a cascade preset loads on its own.
    stage = DiffusionModel.from_preset(folder / "base")
    np.testing.assert_array_equal(stage.get_weights()[0], cascade.stages[0].get_weights()[0])
    assert CascadedDiffusionPipeline.from_preset(folder / "base").stage_names == ["base"]
    with pytest.raises(ValueError, match="is a cascade: load it with CascadedDiffusionPipeline.from_preset"):
        DiffusionModel.from_preset(folder)


def test_stage_preset_holds_the_ema_weights_and_no_optimizer_state(tmp_path):
    import h5py

    stage = tiny_cascade().stages[0]
    stage.compile(ema_momentum=0.5)
    optimizer = stage.optimizer
    optimizer.build(stage.trainable_variables)
    for ema, var in zip(optimizer._model_variables_moving_average, stage.trainable_variables):
        ema.assign(np.full(var.shape, 0.25, var.dtype))
    folder = stage.save_to_preset(tmp_path / "stage")
    with h5py.File(folder / "model.weights.h5") as f:
        assert "optimizer" not in f
    assert stage.optimizer is optimizer  # the training state stays with the model
    assert "compile_config" not in json.loads((folder / "config.json").read_text())
    loaded = DiffusionModel.from_preset(folder)
    assert getattr(loaded, "optimizer", None) is None
    assert all(np.all(keras.ops.convert_to_numpy(w) == 0.25) for w in loaded.unet.trainable_weights)
    np.testing.assert_array_equal(loaded.generate(labels=[1], seed=0, verbose=False),
                                  stage.generate(labels=[1], seed=0, verbose=False))  # EMA on both sides
    # A preset written with the optimizer in its config (earlier versions) still loads its EMA weights.
    config = json.loads((folder / "config.json").read_text())
    config["compile_config"] = {"optimizer": keras.saving.serialize_keras_object(keras.optimizers.Adam(use_ema=True))}
    (folder / "config.json").write_text(json.dumps(config))
    old = DiffusionModel.from_preset(folder)
    np.testing.assert_array_equal(old.generate(labels=[1], seed=0, verbose=False),
                                  loaded.generate(labels=[1], seed=0, verbose=False))


def test_saving_refuses_to_overwrite_and_replaces_atomically(cascade, tmp_path, monkeypatch):
    folder = cascade.save_to_preset(tmp_path / "c")
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="already exists; pass overwrite=True to replace it"):
        cascade.save_to_preset(folder)

    def broken(stage, path, include_weights=True, description=None):
        raise OSError("disk full")

    monkeypatch.setattr(presets, "write_stage", broken)
    with pytest.raises(OSError, match="disk full"):
        cascade.save_to_preset(folder, overwrite=True)
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before  # the old preset is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # and no temporary folder is left
    monkeypatch.undo()
    cascade.save_to_preset(folder, overwrite=True, include_weights=False)
    assert presets.read_metadata(folder / "base")["weights"] is None


def test_weightless_builtin_warns_once_unless_asked(tiny_presets):
    with pytest.warns(UserWarning, match="'tiny_cascade' has no trained weights") as record:
        pipeline = CascadedDiffusionPipeline.from_preset("tiny_cascade")
    assert len(record) == 1 and pipeline.stage_names == ["base", "sr16", "sr32"]
    assert pipeline.sampling[1]["truncated"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CascadedDiffusionPipeline.from_preset("tiny_cascade", load_weights=False)
        DiffusionModel.from_preset("tiny_stage", load_weights=False)


def _stage_folder(cascade, tmp_path):
    return cascade.stages[0].save_to_preset(tmp_path / "stage")


def test_truncated_or_corrupted_weights_give_a_clear_error(cascade, tmp_path):
    folder = _stage_folder(cascade, tmp_path)
    weights = folder / "model.weights.h5"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.weights.h5 is corrupted or truncated \(its SHA-256"):
        DiffusionModel.from_preset(folder)
    weights.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ValueError, match="is corrupted or truncated"):
        DiffusionModel.from_preset(folder)
    weights.unlink()
    with pytest.raises(ValueError, match="weights file 'model.weights.h5' is missing"):
        DiffusionModel.from_preset(folder)


def test_weights_of_another_model_give_a_clear_error(cascade, tmp_path):
    folder = _stage_folder(cascade, tmp_path)
    other = cascade.stages[1].save_to_preset(tmp_path / "other")
    shutil.copy(other / "model.weights.h5", folder / "model.weights.h5")
    metadata = presets.read_metadata(folder)
    metadata["weights_sha256"] = presets.sha256(folder / "model.weights.h5")
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=r"Preset '.*stage': could not load .*model.weights.h5"):
        DiffusionModel.from_preset(folder)


def test_configs_name_only_keras_cdm_classes_and_safe_subfolders(cascade, tmp_path):
    folder = cascade.save_to_preset(tmp_path / "c", include_weights=False)
    config = presets.read_config(folder)
    config["config"]["stages"] = ["base", "../../escape"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="A stage subfolder name takes letters, digits"):
        CascadedDiffusionPipeline.from_preset(folder, load_weights=False)
    stage = folder / "base" / "config.json"
    stage_config = json.loads(stage.read_text())
    (folder / "base" / "config.json").write_text(json.dumps({**stage_config, "class_name": "Lambda",
                                                             "registered_name": None}))
    with pytest.raises(ValueError, match="must describe a keras_cdm DiffusionModel or CascadedDiffusionPipeline"):
        DiffusionModel.from_preset(folder / "base", load_weights=False)
    (folder / "base" / "config.json").write_text(json.dumps({**stage_config, "module": "os", "registered_name": None}))
    with pytest.raises(ValueError, match="Received: class_name='DiffusionModel', registered_name=None"):
        DiffusionModel.from_preset(folder / "base", load_weights=False)
    lambda_unet = {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
                   "config": {"function": {"class_name": "__lambda__", "config": {"code": "print('pwned')"}}}}
    stage_config["config"]["unet"] = lambda_unet
    stage.write_text(json.dumps(stage_config))
    with pytest.raises(ValueError):  # Keras safe mode refuses the lambda; nothing runs
        DiffusionModel.from_preset(folder / "base", load_weights=False)
    (folder / "base" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        DiffusionModel.from_preset(folder / "base", load_weights=False)


def test_resolve_rejects_missing_folders_and_misplaced_revisions(tmp_path):
    with pytest.raises(ValueError, match="Preset folder not found"):
        CascadedDiffusionPipeline.from_preset(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="`revision` applies to hf:// presets only"):
        CascadedDiffusionPipeline.from_preset(str(tmp_path), revision="main")
    with pytest.raises(ValueError, match="Not a preset folder: config.json is missing"):
        CascadedDiffusionPipeline.from_preset(str(tmp_path))
