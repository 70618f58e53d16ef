"""Presets: built-in names, local folders and `hf://` handles; reading and writing them.

A *stage preset* is a folder with `config.json` (the serialized `DiffusionModel`),
`metadata.json` (versions, date, parameter count, sizes, classes, stage kind, the
weights file and its SHA-256) and `model.weights.h5` (EMA weights; absent in the
weightless built-ins). A *cascade preset* is one folder (one Hub repo) with its own
`config.json` (stage order and sampling settings), `metadata.json` and `README.md`
(model card), and one complete stage preset per subfolder, so that
`hf://owner/repo/<stage>` loads a single stage.

Safety: configs are plain JSON deserialized by Keras in safe mode, and only the
registered `keras_cdm` classes are accepted; nothing is unpickled or executed.
Names, subfolders and revisions are checked against a strict pattern.
"""

import difflib
import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path

import keras

from keras_cdm.version import __version__

CONFIG, METADATA, WEIGHTS, MODEL_CARD = "config.json", "metadata.json", "model.weights.h5", "README.md"
HF_PREFIX = "hf://"
CARD_PLACEHOLDER = "hf://OWNER/REPO"  # in the model card's example until `upload_preset` fills it in
STAGE_CLASS, CASCADE_CLASS, UNET_CLASS = "DiffusionModel", "CascadedDiffusionPipeline", "DiffusionUNet"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# -- built-in presets ------------------------------------------------------------------


def builtin_presets_dir():
    """The folder holding the built-in presets (packaged copy first)."""
    packaged = Path(__file__).resolve().parent / "_presets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "presets"


def _builtin_names():
    root = builtin_presets_dir()
    return sorted(p.name for p in root.iterdir() if (p / METADATA).is_file())


def list_presets():
    """Maps every built-in preset name (cascades and stages) to its one-line description."""
    return {name: read_metadata(name).get("description", "") for name in _builtin_names()}


def builtin_preset_path(name):
    """The folder of built-in preset `name`; a clear error for unknown names."""
    names = _builtin_names()
    if not isinstance(name, str) or name not in names:
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown preset. Valid names: {names}; or a local preset folder, or 'hf://owner/repo[/subfolder]'."
            f"{hint} Received: preset={name!r}"
        )
    return builtin_presets_dir() / name


def read_metadata(preset):
    """The `metadata.json` of a built-in name or a local preset folder."""
    folder = Path(preset) if isinstance(preset, Path) else builtin_preset_path(preset)
    return _read_json(folder / METADATA)


# -- resolving a handle to a local folder ------------------------------------------------


def resolve_preset(preset, revision=None):
    """The local folder of `preset`: a built-in name, a local folder, or
    `hf://owner/repo[@revision][/subfolder]` (downloaded into the Hugging Face cache).
    """
    if isinstance(preset, os.PathLike):
        preset = os.fspath(preset)
    if not isinstance(preset, str) or not preset:
        raise ValueError(f"`preset` must be a preset name, a folder or an hf:// handle. Received: preset={preset!r}")
    if preset.startswith(HF_PREFIX):
        return download_preset(preset, revision)
    if revision is not None:
        raise ValueError(f"`revision` applies to hf:// presets only. Received: preset={preset!r}, revision={revision!r}")
    if Path(preset).is_dir():
        return Path(preset)
    if "/" in preset or os.sep in preset:
        raise ValueError(f"Preset folder not found. Received: preset={preset!r}")
    return builtin_preset_path(preset)


def parse_hf_handle(handle, revision=None):
    """`hf://owner/repo[@revision][/subfolder...]` -> (repo_id, subfolder or None, revision)."""
    body = handle[len(HF_PREFIX):]
    parts = body.split("/")
    if len(parts) < 2:
        raise ValueError(f"A Hub preset is 'hf://owner/repo[@revision][/subfolder]'. Received: {handle!r}")
    owner, repo, sub = parts[0], parts[1], parts[2:]
    pinned = None
    if "@" in repo:
        repo, pinned = repo.split("@", 1)
    for part in [owner, repo, *sub] + ([pinned] if pinned is not None else []):
        if not _NAME.match(part) or ".." in part:
            raise ValueError(
                "Hub handles take letters, digits, '_', '-' and '.' in each part, with no '..', no empty "
                f"part and no absolute path. Received: {handle!r}"
            )
    if pinned is not None and revision is not None and pinned != revision:
        raise ValueError(f"Two different revisions given. Received: handle pins {pinned!r}, revision={revision!r}")
    return f"{owner}/{repo}", "/".join(sub) or None, pinned or revision


def _hub_settings():
    """Hub settings read at call time (huggingface_hub reads its env vars at import)."""
    from huggingface_hub import constants

    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    cache = os.environ.get("HF_HUB_CACHE") or (
        os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    return {
        "endpoint": (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/"),
        "local_files_only": offline or constants.is_offline_mode(),
        "cache_dir": cache,
    }


def download_preset(handle, revision=None):
    """Downloads (or finds in the cache) an `hf://` preset; returns its local folder."""
    import huggingface_hub
    from huggingface_hub import errors

    repo_id, sub, revision = parse_hf_handle(handle, revision)
    settings = _hub_settings()
    patterns = None if sub is None else [f"{sub}/*"]
    try:
        root = huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns, **settings)
    except errors.RepositoryNotFoundError as error:
        raise ValueError(f"Hub repository {repo_id!r} not found (or private without a token). Received: {handle!r}") \
            from error
    except errors.RevisionNotFoundError as error:
        raise ValueError(f"Revision {revision!r} not found in Hub repository {repo_id!r}.") from error
    except errors.LocalEntryNotFoundError as error:
        where = "offline mode (HF_HUB_OFFLINE) is on" if settings["local_files_only"] else "the Hub cannot be reached"
        raise ValueError(
            f"Preset {handle!r}{'' if revision is None else f' at revision {revision!r}'} is not in the local "
            f"Hugging Face cache and {where}. Download it once online, or point `preset` at a local folder."
        ) from error
    folder = Path(root) if sub is None else Path(root) / sub
    if not (folder / CONFIG).is_file():
        where = "the repository" if sub is None else f"its subfolder {sub!r}"
        raise ValueError(f"{handle!r} holds no preset: no {CONFIG} in {where}.")
    return folder


# -- reading ------------------------------------------------------------------------------


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"Not a preset folder: {Path(path).name} is missing in {Path(path).parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def preset_kind(folder):
    """"stage" or "cascade", from the folder's `config.json`."""
    config = _read_json(Path(folder) / CONFIG)
    kinds = {STAGE_CLASS: "stage", CASCADE_CLASS: "cascade"}
    return kinds[_check_class(config, tuple(kinds), Path(folder) / CONFIG)]


def _check_class(config, allowed, where):
    """The registered keras_cdm class a serialized `config` names, checked against
    `allowed` before anything is deserialized (preset I/O imports no model class)."""
    name = config.get("class_name") if isinstance(config, dict) else None
    registered = config.get("registered_name") if isinstance(config, dict) else None
    if name not in allowed or registered != f"keras_cdm>{name}":
        raise ValueError(
            f"{where} must describe a keras_cdm {' or '.join(allowed)}. "
            f"Received: class_name={name!r}, registered_name={registered!r}"
        )
    return name


def read_config(folder):
    return _read_json(Path(folder) / CONFIG)


def check_subfolder_name(name):
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(f"A stage subfolder name takes letters, digits, '_', '-' and '.'. Received: {name!r}")
    return name


def load_stage(folder, load_weights=True, label=None):
    """Builds the `DiffusionModel` of a stage preset folder and loads its weights.

    Returns `(model, random)`: `random` is True when weights were asked for but the
    preset has none (the caller warns once for a whole cascade).
    """
    folder, label = Path(folder), label or str(folder)
    if preset_kind(folder) != "stage":
        raise ValueError(f"Preset {label!r} is a cascade: load it with CascadedDiffusionPipeline.from_preset, "
                         "or name one of its stage subfolders.")
    metadata = _read_json(folder / METADATA)
    config = _read_json(folder / CONFIG)
    # Presets load uncompiled (an optimizer compiled here would start with an empty EMA,
    # which `generate` would then sample with); call `compile()` to fine-tune.
    config.pop("compile_config", None)
    model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    expected = metadata.get("parameter_count")
    if model.unet.count_params() != expected:
        raise ValueError(
            f"Preset {label!r} built {model.unet.count_params():,} parameters but its {METADATA} says {expected}: "
            "the preset files are inconsistent."
        )
    if load_weights and metadata.get("weights"):
        _load_weights(model, folder, metadata, label)
    return model, load_weights and not metadata.get("weights")


def _load_weights(model, folder, metadata, label):
    path = folder / metadata["weights"]
    if Path(metadata["weights"]).name != metadata["weights"] or not path.is_file():
        raise ValueError(f"Preset {label!r}: weights file {metadata['weights']!r} is missing from {folder}.")
    with open(path, "rb") as file:
        signature = file.read(len(_HDF5_SIGNATURE))
    expected = metadata.get("weights_sha256")
    if signature != _HDF5_SIGNATURE or (expected and sha256(path) != expected):
        raise ValueError(
            f"Preset {label!r}: {path} is corrupted or truncated (its SHA-256 does not match {METADATA}). "
            "Download or save the preset again."
        )
    try:
        model.load_weights(path)
    except Exception as error:  # h5py / Keras errors on a file that is not this model's
        raise ValueError(f"Preset {label!r}: could not load {path}: {error}") from error


def warn_random_weights(label):
    warnings.warn(
        f"Preset {label!r} has no trained weights: the model is randomly initialised and samples will be noise. "
        "Pass load_weights=False to build the architecture without this warning.",
        stacklevel=3,
    )


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# -- writing ------------------------------------------------------------------------------


def _versions():
    return {"keras_cdm_version": __version__, "keras_version": keras.__version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def stage_metadata(model, description=None):
    unet = model.unet
    return {
        "description": description or f"{'Base' if unet.low_res_size is None else 'Super-resolution'} stage "
                                      f"{model.name}",
        "stage": "base" if unet.low_res_size is None else "super_resolution",
        "image_size": unet.image_size,
        "low_res_size": unet.low_res_size,
        "image_channels": unet.image_channels,
        "num_classes": unet.num_classes,
        "parameter_count": unet.count_params(),
        **_versions(),
    }


def write_stage(model, folder, include_weights=True, description=None):
    """Writes a stage preset into the existing, empty `folder` (EMA weights when the
    optimizer has them)."""
    folder = Path(folder)
    metadata = {**stage_metadata(model, description), "weights": None}
    # A preset is the model and its EMA weights, without the training state: Keras would
    # write a compiled model's optimizer into both the config (compile_config) and the
    # weights file (3x the weights with Adam and EMA).
    optimizer = getattr(model, "optimizer", None)
    with model.ema_weights():
        try:
            model.optimizer = None
            config = keras.saving.serialize_keras_object(model)
            if include_weights:
                model.save_weights(folder / WEIGHTS)
                metadata.update(weights=WEIGHTS, weights_sha256=sha256(folder / WEIGHTS))
        finally:
            model.optimizer = optimizer
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (folder / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")


def write_cascade(folder, config, stages):
    """Writes a cascade's own `config.json`, `metadata.json` and model card into
    `folder`, which already holds one stage preset per subfolder."""
    folder = Path(folder)
    serialized = {"module": "keras_cdm.pipeline", "class_name": CASCADE_CLASS,
                  "registered_name": f"keras_cdm>{CASCADE_CLASS}", "config": config}
    (folder / CONFIG).write_text(json.dumps(serialized, indent=2) + "\n")
    stage_info = [_read_json(folder / stage.name / METADATA) for stage in stages]
    last = stages[-1].unet
    metadata = {
        "description": config.get("description") or f"{len(stages)}-stage cascade to "
                                                     f"{last.image_size}x{last.image_size}",
        "stages": [{"name": s.name, **{k: info[k] for k in ("stage", "image_size", "low_res_size",
                                                              "parameter_count", "weights")}}
                   for s, info in zip(stages, stage_info)],
        "image_size": last.image_size,
        "image_channels": last.image_channels,
        "num_classes": last.num_classes,
        "parameter_count": sum(info["parameter_count"] for info in stage_info),
        **_versions(),
    }
    (folder / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    (folder / MODEL_CARD).write_text(model_card(folder))


def write_atomically(folder, write, overwrite=False):
    """Runs `write(tmp)` on a fresh sibling folder, then renames it to `folder`.

    An existing `folder` is replaced only with `overwrite=True`, and only once the
    new one is complete: a failure leaves the old preset as it was.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise ValueError(f"{folder} already exists; pass overwrite=True to replace it. Received: overwrite=False")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def model_card(folder):
    """A minimal Hub model card for a preset folder, from its metadata."""
    metadata = _read_json(Path(folder) / METADATA)
    kind = preset_kind(folder)
    lines = [
        "---", "library_name: keras-cdm", "tags:", "- keras", "- diffusion", "- cascaded-diffusion-models",
        "- image-generation", "---", "", f"# {_final_name(folder)}", "", metadata.get("description", ""), "",
        f"A keras_cdm {kind} preset ({metadata.get('parameter_count', 0):,} parameters, "
        f"{metadata.get('image_size')}x{metadata.get('image_size')} images).", "", "```python",
    ]
    if kind == "cascade":
        lines += ["from keras_cdm import CascadedDiffusionPipeline", "",
                  'pipeline = CascadedDiffusionPipeline.from_preset("hf://OWNER/REPO")',
                  "images = pipeline.generate(labels=[0, 1, 2], seed=0)  # uint8 NHWC"]
    else:
        lines += ["from keras_cdm import DiffusionModel", "", 'stage = DiffusionModel.from_preset("hf://OWNER/REPO")']
    return "\n".join(lines + ["```", ""])


def _final_name(folder):
    """The name a folder being written by `write_atomically` will have."""
    return re.sub(r"^\.(.+)\.tmp-[0-9a-f]{8}$", r"\1", Path(folder).name)


def validate_folder(folder):
    """Checks a preset folder before upload: configs, metadata, stage subfolders, weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"Preset folder not found. Received: folder={str(folder)!r}")
    stages = [folder]
    if preset_kind(folder) == "cascade":
        config = _read_json(folder / CONFIG)["config"]
        stages = [folder / check_subfolder_name(name) for name in config.get("stages", [])]
    for stage in stages:
        if preset_kind(stage) != "stage":
            raise ValueError(f"{stage} must be a stage preset.")
        metadata = _read_json(stage / METADATA)
        if metadata.get("weights"):
            _check_weights_file(stage, metadata)


def _check_weights_file(stage, metadata):
    path = stage / metadata["weights"]
    if not path.is_file() or (metadata.get("weights_sha256") and sha256(path) != metadata["weights_sha256"]):
        raise ValueError(f"{path} is missing, corrupted or truncated (SHA-256 mismatch with {METADATA}).")


def upload_preset(handle, folder, private=None, commit_message=None, token=None):
    """Uploads a preset folder to `hf://owner/repo[/subfolder]` (creating the repo).

    The folder is validated first, and gets a model card (`README.md`) if it has
    none; in an existing card, the `hf://OWNER/REPO` placeholder of the card written
    by `save_to_preset` is replaced by this repository. Returns the URL of the commit.

    Example:
    >>> pipeline.save_to_preset("my_cascade")
    >>> upload_preset("hf://me/my-cascade", "my_cascade")
    """
    from huggingface_hub import HfApi

    if not isinstance(handle, str) or not handle.startswith(HF_PREFIX):
        raise ValueError(f"Upload to an 'hf://owner/repo[/subfolder]' handle. Received: handle={handle!r}")
    repo_id, sub, revision = parse_hf_handle(handle)
    validate_folder(folder)
    card, target = Path(folder) / MODEL_CARD, repo_id + (f"/{sub}" if sub else "")
    if not card.exists():
        card.write_text(model_card(folder).replace("OWNER/REPO", target))
    elif CARD_PLACEHOLDER in card.read_text():
        card.write_text(card.read_text().replace(CARD_PLACEHOLDER, HF_PREFIX + target))
    api = HfApi(endpoint=_hub_settings()["endpoint"], token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), path_in_repo=sub, revision=revision,
                             commit_message=commit_message or f"Upload keras_cdm preset {Path(folder).name}")
    return getattr(info, "commit_url", str(info))


# -- the U-Net of a built-in stage ------------------------------------------------------------


def unet_from_preset(name, **overrides):
    """Builds the U-Net of built-in stage preset `name` (random weights).

    `overrides` replace constructor arguments, e.g. `dtype="mixed_bfloat16"` or
    `dropout=0.0`. Without overrides that change the architecture, the parameter
    count is checked against the U-Net's `parameter_count` in `metadata.json`.

    Example:
    >>> unet = unet_from_preset("cdm_imagenet64_to_256")
    >>> unet.count_params()
    589032067
    """
    path = builtin_preset_path(name)
    if preset_kind(path) != "stage":
        raise ValueError(f"Preset {name!r} is a cascade; name one of its stages. Received: {name!r}")
    config = _read_json(path / CONFIG)["config"]["unet"]
    unknown = set(overrides) - set(config.get("config", {}))
    if unknown:
        raise ValueError(
            f"Unknown U-Net arguments {sorted(unknown)}; allowed: {sorted(config['config'])}. "
            f"Received: overrides={overrides}"
        )
    _check_class(config, (UNET_CLASS,), f"The U-Net of preset {name!r}")
    config = {**config, "config": {**config["config"], **overrides}}
    unet = keras.saving.deserialize_keras_object(config, safe_mode=True)
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
