"""Adapter presets: a LoRA adapter that names its base preset (see `keras_cdm.lora`).

An adapter preset is a folder with `config.json` (class `LoRAAdapter`: the base preset,
its revision, the stage's name, the LoRA rank, alpha and targets, and the base's
fingerprint), `metadata.json` (sizes, parameter counts, the adapter file and its SHA-256)
and `adapter.lora.h5` (only the A and B matrices: kilobytes where the stage has
megabytes). The base is a built-in name (`"cdm_mnist32/base"` names a stage of a built-in
cascade), a folder, or an `hf://` handle pinned to a revision (the downloaded commit when
none is given). `DiffusionModel.from_preset(adapter)` loads the base, checks it is the one
the adapter was trained on (architecture and weights fingerprint) and attaches the
adapter; a cascade preset may hold an adapter preset as one of its stage subfolders.

Every loader of the package reads stages through `load_stage` here, and every writer
writes them through `write_stage`: a stage with LoRA enabled is saved as an adapter.
"""

import json
from pathlib import Path

from keras_cdm import _hub, lora, presets
from keras_cdm._validation import SHA256, check_text, is_name, shown

ADAPTER_WEIGHTS = "adapter" + lora.SUFFIX
_CONFIG_KEYS = {"base", "revision", "name", "rank", "alpha", "target", "architecture_sha256", "weights_sha256"}


def load_stage(folder, load_weights=True, label=None, revision=None):
    """`presets.load_stage` for stage and adapter presets; the model remembers the preset it
    came from (`preset_source`), the base an adapter saved from it will name."""
    folder, label = Path(folder), label or str(folder)
    if presets.preset_kind(folder) != "adapter":
        model, random = presets.load_stage(folder, load_weights, label)
        model.preset_source = {"preset": label, "revision": revision}
        return model, random
    config = read_adapter_config(folder)
    metadata = presets.read_metadata(folder)
    base_folder = presets.resolve_preset(config["base"], config["revision"])
    if presets.preset_kind(base_folder) != "stage":
        raise ValueError(f"Adapter preset {label!r}: its base {config['base']!r} must be a stage preset (not a "
                         "cascade or another adapter).")
    model, random = presets.load_stage(base_folder, load_weights, config["base"], name=config["name"])
    if load_weights and random:
        raise ValueError(f"Adapter preset {label!r}: its base {config['base']!r} has no trained weights.")
    model.preset_source = {"preset": config["base"], "revision": config["revision"]}
    if not load_weights:
        model.enable_lora(config["rank"], config["target"], config["alpha"])
        return model, False
    path = folder / ADAPTER_WEIGHTS
    if metadata.get("weights") != ADAPTER_WEIGHTS or not path.is_file() or presets.sha256(path) != metadata.get(
            "weights_sha256"):
        raise ValueError(f"Adapter preset {label!r}: {path} is missing, corrupted or truncated (its SHA-256 does not "
                         f"match {presets.METADATA}).")
    model.load_lora_weights(path)  # checks the base's fingerprint
    return model, False


def read_adapter_config(folder):
    """The checked `config` of an adapter preset's `config.json`."""
    path = Path(folder) / presets.CONFIG
    serialized = presets.read_config(folder)
    presets._check_serialized(serialized, (presets.ADAPTER_CLASS,), path)
    config = serialized["config"]
    unknown = sorted(set(config) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"{path}: an adapter config takes the keys {sorted(_CONFIG_KEYS)}. Received: keys "
                         f"{shown(unknown)}")
    try:
        base = check_text("base", config.get("base"), max_length=1000)
        if not base:
            raise ValueError("`base` must name the base preset. Received: an empty string")
        _hub.check_revision(config.get("revision"))
        if not is_name(config.get("name")):
            raise ValueError(f"`name` must be the stage's name. Received: name={shown(config.get('name'))}")
        rank = lora.check_rank(config.get("rank"))
        settings = {"rank": rank, "alpha": lora.check_alpha(config.get("alpha"), rank),
                    "target": list(lora.check_targets(config.get("target")))}
        for key in ("architecture_sha256", "weights_sha256"):
            if not (isinstance(config.get(key), str) and SHA256.fullmatch(config[key])):
                raise ValueError(f"`{key}` must be 64 lowercase hex digits. Received: {shown(config.get(key), 80)}")
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return {**config, **settings}


def write_stage(model, folder, include_weights=True, description=None, base=None, revision=None, destination=None):
    """Writes `model` into the empty `folder`: a stage preset, or an adapter preset when
    LoRA is enabled on it (naming `base`, by default the preset it was loaded from).
    `destination`: the folder the preset will replace (an adapter's base may not be in it)."""
    if model.lora_config is None:
        if base is not None or revision is not None:
            raise ValueError("`base` and `revision` name the base of an adapter preset: this stage has no LoRA "
                             f"adapter (see `enable_lora`). Received: base={shown(base)}, revision={shown(revision)}")
        return presets.write_stage(model, folder, include_weights, description)
    if not include_weights:
        raise ValueError("An adapter preset is its weights: include_weights=False does not apply to a stage with "
                         "LoRA enabled.")
    fingerprint = lora.base_fingerprint(model.unet)  # once: it hashes every base weight
    base, revision = _adapter_base(model, base, revision, destination, fingerprint)
    folder = Path(folder)
    with model.ema_weights():
        lora.save_lora_weights(model.unet, folder / ADAPTER_WEIGHTS, fingerprint)
    config = {"base": base, "revision": revision, "name": model.name, **model.lora_config, **fingerprint}
    serialized = {"module": "keras_cdm.adapters", "class_name": presets.ADAPTER_CLASS,
                  "registered_name": f"keras_cdm>{presets.ADAPTER_CLASS}", "config": config}
    stage = presets.stage_metadata(model, description)
    adapter_count = lora.adapter_parameter_count(model.unet)
    metadata = {
        **stage,
        "description": description or f"LoRA adapter (rank {config['rank']}) of {base}",
        "parameter_count": stage["parameter_count"] - adapter_count,
        "adapter_parameter_count": adapter_count,
        "base": base, "revision": revision, "rank": config["rank"], "target": config["target"],
        "weights": ADAPTER_WEIGHTS, "weights_sha256": presets.sha256(folder / ADAPTER_WEIGHTS),
    }
    (folder / presets.CONFIG).write_text(json.dumps(serialized, indent=2) + "\n")
    (folder / presets.METADATA).write_text(json.dumps(metadata, indent=2) + "\n")


def _adapter_base(model, base, revision, destination, fingerprint):
    """(base, revision) an adapter of `model` names, checked to be the base it was trained
    on: loaded and fingerprinted (so that the preset written can be loaded), and not inside
    the `destination` folder that the new preset replaces."""
    source = getattr(model, "preset_source", None)
    if base is None:
        if source is None:
            raise ValueError(
                f"Stage {model.name!r} has LoRA enabled: its preset is an adapter that names its base preset, and "
                "this stage was not loaded from one. Pass `base=` (a built-in name, a folder or an hf:// handle, "
                "with `revision=`), or save the merged stage: `stage.merge_lora().save_to_preset(folder)`.")
        base, revision = source["preset"], source["revision"] if revision is None else revision
    base = check_text("base", base, max_length=1000)
    folder = presets.resolve_preset(base, revision)
    if base.startswith(_hub.HF_PREFIX) and revision is None and "@" not in base:
        revision = _snapshot_revision(folder)
    if presets.preset_kind(folder) != "stage":
        raise ValueError(f"`base` must be a stage preset (not a cascade or an adapter). Received: base={base!r}")
    if destination is not None and _inside(folder, destination):
        raise ValueError(f"The adapter's base {base!r} is inside {str(destination)!r}, which this save replaces: the "
                         "adapter would lose its base. Save to another folder, or save the merged stage "
                         "(`merge_lora()`).")
    reference, _ = presets.load_stage(folder, load_weights=True, label=base)
    lora.check_base(reference.unet, fingerprint, f"Base {base!r}: this stage's adapter")
    return base, revision


def _snapshot_revision(folder):
    """The commit of a Hub snapshot folder (`.../snapshots/<commit>[/subfolder]`)."""
    parts = Path(folder).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def _inside(path, folder):
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents
