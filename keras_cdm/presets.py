"""Built-in presets: the paper's Appendix B architectures, read from `presets/`.

The top-level `presets/` folder is the source of truth. Each built-in stage is a
folder with `config.json` (the serialized object) and `metadata.json` (parameter
count, image size, classes, stage kind, description). An installed wheel carries
the folder as `keras_cdm/_presets`; a source checkout reads `presets/` directly.
"""

import difflib
import json
import re
from pathlib import Path

import keras

from keras_cdm.unet import DiffusionUNet

_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def builtin_presets_dir():
    """The folder holding the built-in presets (packaged copy first)."""
    packaged = Path(__file__).resolve().parent / "_presets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "presets"


def _builtin_names():
    root = builtin_presets_dir()
    return sorted(p.name for p in root.iterdir() if (p / "metadata.json").is_file())


def list_presets():
    """Maps every built-in preset name to its one-line description."""
    return {name: read_metadata(name).get("description", "") for name in _builtin_names()}


def builtin_preset_path(name):
    """The folder of built-in preset `name`; a clear error for unknown names."""
    names = _builtin_names()
    if not isinstance(name, str) or not _NAME.match(name) or name not in names:
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown preset. Valid names: {names}.{hint} Received: preset={name!r}")
    return builtin_presets_dir() / name


def read_metadata(name):
    return json.loads((builtin_preset_path(name) / "metadata.json").read_text())


def unet_from_preset(name, **overrides):
    """Builds the U-Net of built-in preset `name` (random weights).

    `overrides` replace constructor arguments, e.g. `dtype="mixed_bfloat16"` or
    `dropout=0.0`. Without overrides that change the architecture, the parameter
    count is checked against the preset's `metadata.json`.

    Example:
    >>> unet = unet_from_preset("cdm_imagenet64_to_256")
    >>> unet.count_params()
    589032067
    """
    path = builtin_preset_path(name)
    config = json.loads((path / "config.json").read_text())
    unknown = set(overrides) - set(config.get("config", {}))
    if unknown:
        raise ValueError(
            f"Unknown U-Net arguments {sorted(unknown)}; allowed: {sorted(config['config'])}. "
            f"Received: overrides={overrides}"
        )
    config = {**config, "config": {**config["config"], **overrides}}
    unet = keras.saving.deserialize_keras_object(config, safe_mode=True)
    if not isinstance(unet, DiffusionUNet):
        raise ValueError(f"Preset {name!r} does not describe a DiffusionUNet. Received: {type(unet).__name__}")
    expected = read_metadata(name)["parameter_count"]
    if unet.count_params() != expected and not _changes_size(overrides):
        raise ValueError(
            f"Preset {name!r} built {unet.count_params():,} parameters but its metadata.json "
            f"says {expected:,}: the preset files are inconsistent."
        )
    return unet


def _changes_size(overrides):
    harmless = {"dtype", "dropout", "name", "trainable", "low_res_interpolation", "noise_level_scale"}
    return bool(set(overrides) - harmless)
