import json

import pytest

from keras_cdm import presets
from keras_cdm.unet import DiffusionUNet

PAPER_COUNTS = {
    "cdm_imagenet32_base": 792_251_910,
    "cdm_imagenet32_to_64": 718_437_126,
    "cdm_imagenet64_to_128": 536_043_139,
    "cdm_imagenet64_to_256": 589_032_067,
}


@pytest.fixture
def tiny_presets(tmp_path, monkeypatch):
    """A presets folder holding one tiny built-in stage, in place of the real one."""
    unet = DiffusionUNet(image_size=8, base_channels=8, channel_multipliers=(1, 2), num_res_blocks=1,
                         attention_resolutions=(4,), num_groups=4, num_classes=3, name="tiny")
    folder = tmp_path / "presets" / "tiny_stage"
    folder.mkdir(parents=True)
    config = {"module": "keras_cdm.unet", "class_name": "DiffusionUNet",
              "registered_name": "keras_cdm>DiffusionUNet", "config": unet.get_config()}
    (folder / "config.json").write_text(json.dumps(config))
    metadata = {"description": "a tiny stage", "parameter_count": unet.count_params()}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    monkeypatch.setattr(presets, "builtin_presets_dir", lambda: tmp_path / "presets")
    return folder


def test_builtin_presets_are_the_paper_stages_with_descriptions():
    listed = presets.list_presets()
    assert sorted(listed) == sorted(PAPER_COUNTS)
    assert all("Appendix B" in description for description in listed.values())
    for name, count in PAPER_COUNTS.items():
        assert presets.read_metadata(name)["parameter_count"] == count


def test_unet_from_preset_builds_the_described_unet(tiny_presets):
    unet = presets.unet_from_preset("tiny_stage")
    assert isinstance(unet, DiffusionUNet) and unet.num_classes == 3 and unet.name == "tiny"
    assert presets.unet_from_preset("tiny_stage", dtype="mixed_bfloat16").get_layer(
        "input_conv").dtype_policy.name == "mixed_bfloat16"
    assert presets.unet_from_preset("tiny_stage", num_classes=5).num_classes == 5


def test_inconsistent_parameter_count_is_reported(tiny_presets):
    metadata = json.loads((tiny_presets / "metadata.json").read_text())
    metadata["parameter_count"] += 1
    (tiny_presets / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="metadata.json says .*: the preset files are inconsistent"):
        presets.unet_from_preset("tiny_stage")


@pytest.mark.parametrize("name", ["cdm_imagenet32", "../presets/cdm_imagenet32_base", "/etc", 7])
def test_unknown_or_unsafe_names_list_the_valid_ones(name):
    with pytest.raises(ValueError) as info:
        presets.unet_from_preset(name)
    message = str(info.value)
    assert "Unknown preset. Valid names: ['cdm_imagenet32_base'," in message
    assert f"Received: preset={name!r}" in message
    if name == "cdm_imagenet32":
        assert "Did you mean 'cdm_imagenet32_base'?" in message


def test_unknown_override_is_rejected(tiny_presets):
    with pytest.raises(ValueError, match=r"Unknown U-Net arguments \['heads'\]"):
        presets.unet_from_preset("tiny_stage", heads=2)


def test_checked_in_configs_are_deserializable_without_building():
    for name in PAPER_COUNTS:
        config = json.loads((presets.builtin_preset_path(name) / "config.json").read_text())
        assert config["registered_name"] == "keras_cdm>DiffusionUNet"
        assert config["config"]["name"] == name


@pytest.mark.large
@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_paper_architectures_have_the_canonical_parameter_counts(name):
    assert presets.unet_from_preset(name).count_params() == PAPER_COUNTS[name]


@pytest.mark.large
def test_sr64_without_augmentation_embedding_matches_canonical_count():
    unet = presets.unet_from_preset("cdm_imagenet32_to_64", augmentation_level_embedding=False)
    assert unet.count_params() == 717_124_358


def test_presets_dir_is_the_top_level_folder_in_a_checkout():
    assert presets.builtin_presets_dir().name == "presets"
    assert (presets.builtin_presets_dir() / "cdm_imagenet64_to_256" / "config.json").is_file()
