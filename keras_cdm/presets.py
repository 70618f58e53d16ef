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
Preset files are read with bounds (size, nesting) and their values checked, with
the sizes bounded by `LIMITS`, before anything is built. Names, subfolders and
revisions are checked against a strict pattern. Hub requests have timeouts. Saving
swaps the new preset in atomically. See docs/reliability.md.
"""

import contextlib
import difflib
import hashlib
import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

import keras
from keras.src.backend.common import global_state
from keras.src.backend.common.stateless_scope import in_stateless_scope

from keras_cdm import _files, _hub
from keras_cdm._hub import HF_PREFIX, check_revision, parse_hf_handle
from keras_cdm._validation import LIMITS, SHA256, check_bool, check_text, is_name, name_rule, shown
from keras_cdm.version import __version__

# `presets.LIMITS` (the dict of keras_cdm._validation) is the public home of the bounds of
# docs/reliability.md; `parse_hf_handle` and `check_revision` come from keras_cdm._hub.
CONFIG, METADATA, WEIGHTS, MODEL_CARD = "config.json", "metadata.json", "model.weights.h5", "README.md"
CARD_PLACEHOLDER = "hf://OWNER/REPO"  # in the model card's example until `upload_preset` fills it in
STAGE_CLASS, CASCADE_CLASS, UNET_CLASS = "DiffusionModel", "CascadedDiffusionPipeline", "DiffusionUNet"
ADAPTER_CLASS = "LoRAAdapter"  # an adapter preset (keras_cdm.adapters): a base preset's name and a LoRA adapter
# The registered classes each part of a stage config may hold (None: the part may be null),
# cheapest to build first: a bad value anywhere is found before the U-Net is built.
STAGE_PARTS = {
    "diffusion": ("GaussianDiffusion",),
    "augmentation": (None, "GaussianConditioningAugmentation", "BlurConditioningAugmentation"),
    "unet": (UNET_CLASS,),
}
CASCADE_KEYS = ("stages", "sampling", "description")
_SERIALIZED_KEYS = {"module", "class_name", "config", "registered_name", "build_config", "compile_config"}
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
        close = difflib.get_close_matches(name[:100], names, n=1) if isinstance(name, str) else []
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown preset. Valid names: {names}; or a local preset folder, or 'hf://owner/repo[/subfolder]'."
            f"{hint} Received: preset={shown(name)}"
        )
    return builtin_presets_dir() / name


def read_metadata(preset):
    """The `metadata.json` of a built-in name or a local preset folder (its fields checked)."""
    folder = Path(preset) if isinstance(preset, Path) else builtin_preset_path(preset)
    return _check_metadata(_read_json(folder / METADATA), folder / METADATA)


def check_subfolder_name(name):
    """A stage subfolder name (a stage's name in a cascade preset): the same rule when
    saving and loading."""
    if not is_name(name):
        raise ValueError(f"A stage subfolder name takes letters, digits, '_', '-' and '.' ({name_rule()}); it is "
                         f"the stage's name in a cascade preset. Received: {shown(name)}")
    return name


# -- resolving a handle to a local folder ------------------------------------------------


def resolve_preset(preset, revision=None):
    """The local folder of `preset`: a built-in name, a local folder, or
    `hf://owner/repo[@revision][/subfolder]` (downloaded into the Hugging Face cache).
    """
    if isinstance(preset, os.PathLike):
        preset = os.fspath(preset)
    if not isinstance(preset, str) or not preset or "\0" in preset:
        raise ValueError("`preset` must be a preset name, a folder or an hf:// handle. "
                         f"Received: preset={shown(preset)}")
    check_revision(revision)
    if preset.startswith(HF_PREFIX):
        return download_preset(preset, revision)
    if revision is not None:
        raise ValueError(f"`revision` applies to hf:// presets only. Received: preset={shown(preset)}, "
                         f"revision={revision!r}")
    if _is_folder(preset):
        return Path(preset)
    if "/" not in preset and os.sep not in preset:
        return builtin_preset_path(preset)
    builtin_stage = _builtin_stage(preset)
    if builtin_stage is not None:
        return builtin_stage
    with contextlib.suppress(OSError):
        _files.recover_folder(preset)  # a save killed half-way through its swap
    if not _is_folder(preset):
        raise ValueError(f"Preset folder not found. Received: preset={shown(preset)}")
    return Path(preset)


def _builtin_stage(preset):
    """The folder of `cascade/stage` when `cascade` is a built-in cascade preset with that
    stage (`"cdm_mnist32/base"`, as `hf://owner/repo/stage` names a Hub cascade's stage)."""
    cascade, _, stage = preset.partition("/")
    if cascade not in _builtin_names() or not is_name(stage) or preset_kind(builtin_preset_path(cascade)) != "cascade":
        return None
    if stage not in read_cascade_config(builtin_preset_path(cascade))["stages"]:
        return None
    return builtin_presets_dir() / cascade / stage


def _is_folder(path):
    try:
        return Path(path).is_dir()
    except OSError:  # a name too long for the file system, a folder we may not enter
        return False


def download_preset(handle, revision=None):
    """Downloads (or finds in the cache) an `hf://` preset; returns its local folder."""
    folder = _hub.download(handle, revision)
    if not (folder / CONFIG).is_file():
        _, sub, _ = parse_hf_handle(handle, revision)
        where = "the repository" if sub is None else f"its subfolder {sub!r}"
        raise ValueError(f"{handle!r} holds no preset: no {CONFIG} in {where}.")
    return folder


# -- reading ------------------------------------------------------------------------------


def _read_json(path):
    return _files.read_json(path)


def preset_kind(folder):
    """"stage" or "cascade", from the folder's `config.json`."""
    config = _read_json(Path(folder) / CONFIG)
    kinds = {STAGE_CLASS: "stage", CASCADE_CLASS: "cascade", ADAPTER_CLASS: "adapter"}
    return kinds[_check_class(config, tuple(kinds), Path(folder) / CONFIG)]


def _check_class(config, allowed, where):
    """The registered keras_cdm class a serialized `config` names, checked against
    `allowed` before anything is deserialized (preset I/O imports no model class)."""
    name = config.get("class_name") if isinstance(config, dict) else None
    registered = config.get("registered_name") if isinstance(config, dict) else None
    if not isinstance(name, str) or name not in allowed or registered != f"keras_cdm>{name}":
        raise ValueError(
            f"{where} must describe a keras_cdm {' or '.join(map(str, allowed))}. "
            f"Received: class_name={shown(name, 80)}, registered_name={shown(registered, 80)}"
        )
    return name


def _check_serialized(value, allowed, where):
    """A serialized keras_cdm object of a class in `allowed` (None: may be null): only the
    keys Keras writes, its `config` an object, no compile state, a plain build shape."""
    if value is None and None in allowed:
        return None
    name = _check_class(value, tuple(a for a in allowed if a is not None), where)
    unknown = sorted(set(value) - _SERIALIZED_KEYS)
    module = value.get("module", "keras_cdm")
    if unknown or not isinstance(module, str) or not module.startswith("keras_cdm"):
        raise ValueError(f"{where} takes the keys {sorted(_SERIALIZED_KEYS)}, with a keras_cdm `module`. "
                         f"Received: keys {shown(sorted(value))}, module={shown(module, 80)}")
    if not isinstance(value.get("config"), dict):
        raise ValueError(f"{where}: `config` must be an object. Received: config={shown(value.get('config'), 80)}")
    if value.get("compile_config"):
        raise ValueError(f"{where}: `compile_config` must be empty (presets load uncompiled). "
                         f"Received: compile_config={shown(value['compile_config'], 80)}")
    build = value.get("build_config")
    shape = build.get("input_shape") if isinstance(build, dict) else None
    if not (build is None or isinstance(build, dict) and set(build) <= {"input_shape"} and (
            shape is None or isinstance(shape, list) and len(shape) <= 8 and all(
                d is None or _is_count(d, 2**31 - 1) for d in shape))):
        raise ValueError(f"{where}: `build_config` must be null or {{\"input_shape\": a list of up to 8 sizes}}. "
                         f"Received: build_config={shown(build, 80)}")
    return name


def _is_count(value, high):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high


def read_config(folder):
    return _read_json(Path(folder) / CONFIG)


def read_cascade_config(folder):
    """The checked `config` of a cascade preset's `config.json`: `stages` (1 to
    LIMITS["stages"] distinct subfolder names), `sampling`, `description`."""
    path = Path(folder) / CONFIG
    serialized = _read_json(path)
    _check_serialized(serialized, (CASCADE_CLASS,), path)
    config = serialized["config"]
    unknown = sorted(set(config) - set(CASCADE_KEYS))
    if unknown:
        raise ValueError(f"{path}: a cascade config takes the keys {list(CASCADE_KEYS)}. "
                         f"Received: keys {shown(unknown)}")
    stages = config.get("stages")
    if not isinstance(stages, list) or not 1 <= len(stages) <= LIMITS["stages"]:
        raise ValueError(f"{path}: `config.stages` must be a list of 1 to {LIMITS['stages']} stage subfolder names. "
                         f"Received: stages={shown(stages)}")
    for name in stages:
        check_subfolder_name(name)
    if len(set(stages)) != len(stages):
        raise ValueError(f"{path}: `config.stages` must name each stage once. Received: stages={shown(stages)}")
    if not isinstance(config.get("sampling"), (list, dict, type(None))):
        raise ValueError(f"{path}: `config.sampling` must be a list (one object per stage), an object or null. "
                         f"Received: sampling={shown(config['sampling'])}")
    try:
        check_text("description", config.get("description"), allow_none=True)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return config


# The fields of a metadata.json that are read: what each must be.
_METADATA_FIELDS = {
    "description": ("a string", lambda v: isinstance(v, str)),
    "parameter_count": ("an integer >= 0", lambda v: _is_count(v, LIMITS["parameters"] * LIMITS["stages"])),
    "weights": ("null or a file name", lambda v: v is None or (is_name(v) and Path(v).name == v)),
    "weights_sha256": ("null or 64 lowercase hex digits", lambda v: v is None or (
        isinstance(v, str) and bool(SHA256.fullmatch(v)))),
    "image_size": ("null or a positive integer", lambda v: v is None or (_is_count(v, LIMITS["image_size"]) and v)),
}


def _check_metadata(metadata, path):
    for key, (allowed, check) in _METADATA_FIELDS.items():
        if key in metadata and not check(metadata[key]):
            raise ValueError(f"{path}: `{key}` must be {allowed}. Received: {key}={shown(metadata[key], 80)}")
    return metadata


def _build(serialized, where):
    """Deserializes a checked part of a config (Keras safe mode); any failure of its
    values is a ValueError naming `where` (the file and the key)."""
    try:
        return keras.saving.deserialize_keras_object(serialized, safe_mode=True)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, RecursionError) as error:
        cause = error.__context__ if "could not be deserialized properly" in str(error) and error.__context__ else error
        raise ValueError(f"{where}: {cause}") from error


def load_stage(folder, load_weights=True, label=None, name=None):
    """Builds the `DiffusionModel` of a stage preset folder and loads its weights.

    Every file is read and checked, and the cheap parts of the model (its diffusion
    and augmentation) are built, before the U-Net is. Returns `(model, random)`:
    `random` is True when weights were asked for but the preset has none (the
    caller warns once for a whole cascade). `name` renames the stage (an adapter
    preset's stage keeps its own name). Adapter presets: `keras_cdm.adapters.load_stage`.
    """
    folder, label = Path(folder), label or str(folder)
    load_weights = check_bool("load_weights", load_weights)
    kind = preset_kind(folder)
    if kind != "stage":
        raise ValueError(f"Preset {label!r} is a cascade: load it with CascadedDiffusionPipeline.from_preset, "
                         "or name one of its stage subfolders." if kind == "cascade" else
                         f"Preset {label!r} is an adapter preset: it cannot serve here as a full stage (the base of "
                         "an adapter must be a stage preset).")
    metadata = _check_metadata(_read_json(folder / METADATA), folder / METADATA)
    path = folder / CONFIG
    config = _read_json(path)
    # Presets load uncompiled (an optimizer compiled here would start with an empty EMA,
    # which `generate` would then sample with); call `compile()` to fine-tune.
    config.pop("compile_config", None)
    _check_serialized(config, (STAGE_CLASS,), path)
    inner = config["config"] if name is None else {**config["config"], "name": name}
    parts = {}
    for key, allowed in STAGE_PARTS.items():
        if key not in inner and None not in allowed:
            raise ValueError(f"{path}: `config.{key}` is missing.")
        if _check_serialized(inner.get(key), allowed, f"{path}: `config.{key}`") is not None:
            parts[key] = inner[key]
    with_weights = load_weights and bool(metadata.get("weights"))

    def build():
        parts_built = {key: _build(value, f"{path}: `config.{key}`") for key, value in parts.items()}
        stage_class = keras.saving.get_registered_object(f"keras_cdm>{STAGE_CLASS}")
        try:
            model = stage_class.from_config({**inner, **parts_built})
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: `config`: {error}") from error
        expected = metadata.get("parameter_count")
        if model.unet.count_params() != expected:
            raise ValueError(
                f"Preset {label!r} built {model.unet.count_params():,} parameters but {folder / METADATA} says "
                f"`parameter_count`={expected}: the preset files are inconsistent."
            )
        if with_weights:
            _load_weights(model, folder, metadata, label)
        return model

    if not with_weights or in_stateless_scope():
        return build(), load_weights and not metadata.get("weights")
    return _build_with_file_values(build, label), False


def _build_with_file_values(build, label):
    """`build()` (which builds a model and loads its weights file) with the initialisation
    of its variables deferred: each variable is created once, from the file's value.

    Keras creates a variable inside a `StatelessScope` without a value (registering it for
    deferred initialisation) and records an assignment there instead of applying it; so the
    model is built and its weights file read inside one, and each variable then starts from
    the value the file assigned it. This skips computing every random initializer only to
    overwrite it (on JAX, one XLA compilation per variable shape: cdm_mnist32 loaded in
    15 s instead of 1 s). A U-Net weight the file does not hold is an error; the other
    variables the file does not hold (metrics, seed generators of an older file) are
    initialised by their own initializers.
    """
    pending = global_state.get_global_attribute("uninitialized_variables", [], set_to_default=True)
    before = {id(v) for v in pending}
    scope = keras.StatelessScope(initialize_variables=False)
    try:
        with scope:
            model = build()
    finally:
        # These variables are initialised here (or dropped with the model on failure), not
        # by the next StatelessScope to exit, which would initialise them again.
        pending = global_state.get_global_attribute("uninitialized_variables", [], set_to_default=True)
        created = [v for v in pending if id(v) not in before]
        pending[:] = [v for v in pending if id(v) in before]
    unset = {id(v) for v in created if scope.get_current_value(v) is None}
    missing = [v.path for v in model.unet.weights if id(v) in unset]
    if missing:
        raise ValueError(f"Preset {label!r}: its weights file holds no value for {len(missing)} weight(s) of the "
                         f"U-Net, e.g. {missing[:3]}: it was saved from a different architecture.")
    for variable in created:
        value = scope.get_current_value(variable)
        if value is None:
            variable._deferred_initialize()  # its own initializer, as Keras would have run it
        else:
            variable._initialize(value)  # as Keras creates a variable from a value
            variable._initializer = None
    return model


def _load_weights(model, folder, metadata, label):
    path = folder / metadata["weights"]
    if not path.is_file():
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


def check_save_arguments(include_weights=True, description=None):
    """The arguments of `save_to_preset` besides the folder, checked before anything is written."""
    check_bool("include_weights", include_weights)
    check_text("description", description, max_length=1000, allow_none=True)


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
    """Runs `write(tmp)` on a fresh sibling folder, then swaps it in as `folder`.

    An existing `folder` is replaced only with `overwrite=True`, only if it is a preset
    folder (or empty; through a symlink, its target), and only once the new one is
    complete: a failure leaves the old preset as it was, and at every instant the path
    holds a complete preset (see `keras_cdm._files.replace_folder`). Returns `folder`.
    """
    _files.replace_folder(_files.check_target(folder, overwrite), write)
    return Path(folder)


def model_card(folder):
    """A minimal Hub model card for a preset folder, from its metadata."""
    metadata = _check_metadata(_read_json(Path(folder) / METADATA), Path(folder) / METADATA)
    kind = preset_kind(folder)
    lines = [
        "---", "library_name: keras-cdm", "tags:", "- keras", "- diffusion", "- cascaded-diffusion-models",
        "- image-generation", "---", "", f"# {_files.final_name(folder)}", "", metadata.get("description", ""), "",
        f"A keras_cdm {kind} preset ({metadata.get('parameter_count', 0):,} parameters, "
        f"{metadata.get('image_size')}x{metadata.get('image_size')} images).", "", "```python",
    ]
    if kind == "adapter":
        lines[-1:-1] = [f"A LoRA adapter (rank {metadata.get('rank')}) of the base preset `{metadata.get('base')}`"
                        f"{'' if not metadata.get('revision') else ' at revision ' + metadata['revision']}: "
                        "`from_preset` loads the base and attaches it.", ""]
    if kind == "cascade":
        lines += ["from keras_cdm import CascadedDiffusionPipeline", "",
                  'pipeline = CascadedDiffusionPipeline.from_preset("hf://OWNER/REPO")',
                  "images = pipeline.generate(labels=[0, 1, 2], seed=0)  # uint8 NHWC"]
    else:
        lines += ["from keras_cdm import DiffusionModel", "", 'stage = DiffusionModel.from_preset("hf://OWNER/REPO")']
    return "\n".join(lines + ["```", ""])


def validate_folder(folder):
    """Checks a preset folder before upload: configs, metadata, stage subfolders, weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"Preset folder not found. Received: folder={str(folder)!r}")
    stages = [folder]
    if preset_kind(folder) == "cascade":
        stages = [folder / name for name in read_cascade_config(folder)["stages"]]
    for stage in stages:
        if preset_kind(stage) not in ("stage", "adapter"):
            raise ValueError(f"{stage} must be a stage preset (or an adapter preset).")
        metadata = _check_metadata(_read_json(stage / METADATA), stage / METADATA)
        if metadata.get("weights"):
            _check_weights_file(stage, metadata)
        if preset_kind(stage) == "adapter":
            _check_shareable_base(stage)


def _check_shareable_base(folder):
    """An adapter to be uploaded names a base others can load: a built-in preset or an
    hf:// handle, not a local folder."""
    base = read_config(folder).get("config", {}).get("base")
    builtin = isinstance(base, str) and (is_name(base) and base in _builtin_names() or "/" in base and (
        _builtin_stage(base) is not None))
    if not (isinstance(base, str) and base.startswith(HF_PREFIX) or builtin):
        raise ValueError(f"{folder}: the adapter's base {shown(base, 200)} is not a built-in preset or an hf:// "
                         "handle: others could not load it. Upload the base too and save the adapter with "
                         "`base='hf://...'`.")


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
    from huggingface_hub import HfApi, errors

    if not isinstance(handle, str) or not handle.startswith(HF_PREFIX):
        raise ValueError(f"Upload to an 'hf://owner/repo[/subfolder]' handle. Received: handle={shown(handle)}")
    repo_id, sub, revision = parse_hf_handle(handle)
    if private is not None:
        check_bool("private", private)
    check_text("commit_message", commit_message, 1000, allow_none=True)
    check_text("token", token, allow_none=True)
    validate_folder(folder)
    card, target = Path(folder) / MODEL_CARD, repo_id + (f"/{sub}" if sub else "")
    if not card.exists():
        card.write_text(model_card(folder).replace("OWNER/REPO", target))
    elif CARD_PLACEHOLDER in card.read_text():
        card.write_text(card.read_text().replace(CARD_PLACEHOLDER, HF_PREFIX + target))
    endpoint = _hub.settings()["endpoint"]
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), path_in_repo=sub, revision=revision,
                                 commit_message=commit_message or f"Upload keras_cdm preset {Path(folder).name}")
    except Exception as error:  # the network, or the Hub's refusal (no token, no right to the repo)
        problem = _hub.network_problem(error, endpoint)
        status = getattr(getattr(error, "response", None), "status_code", None)
        if problem is None and isinstance(error, errors.HfHubHTTPError) and isinstance(status, int):
            summary = " ".join(str(error).split())[:300]
            problem = f"the Hub at {endpoint} refused it ({status}: {summary})"
        if problem is None:
            raise
        raise ValueError(f"Could not upload {str(folder)!r} to {handle}: {problem}.") from error
    return getattr(info, "commit_url", str(info))


# -- the U-Net of a built-in stage ------------------------------------------------------------


def unet_from_preset(name, **overrides):
    """Builds the U-Net of built-in stage preset `name` (random weights).

    `overrides` replace constructor arguments, e.g. `dtype="mixed_bfloat16"`,
    `dropout=0.0` or `remat=True`. Without overrides that change the architecture, the parameter
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
    unknown = set(overrides) - set(config.get("config", {})) - {"remat"}  # remat: written only when set
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
    harmless = {"dtype", "dropout", "name", "trainable", "low_res_interpolation", "noise_level_scale", "remat"}
    return bool(set(overrides) - harmless)
