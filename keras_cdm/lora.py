"""LoRA fine-tuning of a U-Net (Hu et al. 2021), on top of Keras' own `enable_lora`.

Keras 3's `Conv2D`, `Dense`, `EinsumDense` and `Embedding` implement LoRA: after
`layer.enable_lora(rank)` the layer computes with `W + (alpha / rank) A B`, where A is
random and B starts at zero (the model is unchanged at first), and `W` stops training.
This module chooses the layers of a `DiffusionUNet` by role (`TARGETS`), freezes every
other weight (biases, normalizations and untargeted layers included: the adapter is only
the A and B matrices), and saves, loads, fingerprints and merges adapters:

- `enable_lora(unet, rank, target, alpha)`; `lora_config(unet)` (None without LoRA).
- `save_lora_weights(unet, path)` / `load_lora_weights(unet, path)`: an `.lora.h5` file
  with only the A and B matrices, the rank, alpha and targets, and the fingerprint of the
  base they were trained on; loading refuses another base (architecture or weights).
- `base_fingerprint(unet)`: SHA-256 of the U-Net's architecture (its config) and of its
  base weights (every weight but the adapter's, by value), the identity of an adapter's base.
- `copy_merged(source, target)`: a LoRA U-Net's weights, adapter merged (Keras' own
  `save_own_variables` merges it), into a U-Net of the same config without LoRA: sampling
  at full speed.

`DiffusionUNet` and `DiffusionModel` expose these as methods; adapter presets (a folder
naming its base preset and holding only the adapter) are in `keras_cdm.presets`.
"""

import hashlib
import json
from pathlib import Path

import keras
import numpy as np
from keras import ops

from keras_cdm._validation import SHA256, check_finite, check_int, shown

# The layers each target names, by the Keras class and the role they have in the U-Net.
TARGETS = {
    "attention": "the query, key, value and output projections of every attention block (EinsumDense)",
    "convolutions": "every Conv2D: input and output convolutions, residual blocks (3x3 and 1x1 skips), resampling",
    "embeddings": "the time (and augmentation-level) embedding MLPs, the class embedding, and the projection of the "
                  "embedding into each residual block (Dense, Embedding)",
}
DEFAULT_TARGETS = ("attention", "convolutions")
MAX_RANK = 1024
FORMAT = "keras_cdm.lora/1"
SUFFIX = ".lora.h5"
_LORA_VARIABLES = {"lora_kernel_a", "lora_kernel_b", "lora_embeddings_a", "lora_embeddings_b"}
_CONFIG_KEYS_IGNORED = ("name", "trainable", "dtype", "remat")  # they do not change the weights


def check_targets(target):
    """`target` (None for `DEFAULT_TARGETS`, one name of `TARGETS` or a list of them) as a
    sorted tuple of distinct names."""
    if target is None:
        return DEFAULT_TARGETS
    names = [target] if isinstance(target, str) else target
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names) or (
            set(names) - set(TARGETS)):
        raise ValueError(f"`target` must be one of {sorted(TARGETS)}, a list of them, or None for "
                         f"{list(DEFAULT_TARGETS)}. Received: target={shown(target)}")
    return tuple(sorted(set(names)))


def check_rank(rank):
    return check_int("rank", rank, 1, MAX_RANK)


def check_alpha(alpha, rank):
    """`alpha` (None: the rank, so the update scale alpha / rank is 1) as a float."""
    return float(rank) if alpha is None else check_finite("alpha", alpha, 0.0, 1e6)


def _role(layer):
    if isinstance(layer, keras.layers.EinsumDense):
        return "attention"
    if isinstance(layer, keras.layers.Conv2D):
        return "convolutions"
    if isinstance(layer, (keras.layers.Dense, keras.layers.Embedding)):
        return "embeddings"
    return None


def _walk(layer, prefix=""):
    """(path, layer) of every layer under `layer`, paths made of layer names relative to it
    (stable across processes, unlike Keras' variable paths)."""
    for child in layer._flatten_layers(include_self=False, recursive=False):
        path = f"{prefix}{child.name}"
        yield path, child
        yield from _walk(child, path + "/")


def target_layers(unet, targets):
    """{path: layer} of the layers of `unet` that the `targets` name, in the U-Net's order."""
    return {path: layer for path, layer in _walk(unet) if _role(layer) in targets}


def lora_config(unet):
    """{"rank", "alpha", "target"} of a U-Net with LoRA enabled, else None."""
    return getattr(unet, "_lora_config", None)


def enable_lora(unet, rank, target=None, alpha=None):
    """Enables LoRA of `rank` on the layers `target` names (see `TARGETS`) and freezes every
    other weight of `unet`. Once per U-Net."""
    rank, targets = check_rank(rank), check_targets(target)
    alpha = check_alpha(alpha, rank)
    if lora_config(unet) is not None:
        raise ValueError(f"LoRA is already enabled on this U-Net ({lora_config(unet)}); it can be enabled once. "
                         "Build the U-Net again (e.g. from its preset) to use another rank or target.")
    layers = target_layers(unet, targets)
    if not layers:
        raise ValueError(f"This U-Net has no layer that `target` names. Received: target={list(targets)}")
    for variable in unet.weights:
        variable.trainable = False
    for layer in layers.values():
        layer.enable_lora(rank, lora_alpha=alpha)
    unet._lora_config = {"rank": rank, "alpha": alpha, "target": list(targets)}
    return unet._lora_config


def _check_enabled(unet, action):
    if lora_config(unet) is None:
        raise ValueError(f"LoRA is not enabled on this model: call `enable_lora(rank, target=...)` before {action}.")


def lora_weights(unet):
    """{path: (A, B)}: the adapter's variables, layer by layer."""
    _check_enabled(unet, "reading its adapter")
    layers = target_layers(unet, lora_config(unet)["target"])
    return {path: _pair(layer) for path, layer in layers.items()}


def _pair(layer):
    if isinstance(layer, keras.layers.Embedding):
        return layer.lora_embeddings_a, layer.lora_embeddings_b
    return layer.lora_kernel_a, layer.lora_kernel_b


def _base_variable(layer):
    """The weight LoRA adapts, unmerged."""
    return layer._embeddings if isinstance(layer, keras.layers.Embedding) else layer._kernel


def adapter_parameter_count(unet):
    return int(sum(np.prod(v.shape) for pair in lora_weights(unet).values() for v in pair))


# -- fingerprints ------------------------------------------------------------------------------------


def architecture_sha256(unet):
    """SHA-256 of the U-Net's config (but its name and dtype policy): equal configs build
    equal weight shapes."""
    config = {k: v for k, v in unet.get_config().items() if k not in _CONFIG_KEYS_IGNORED}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _base_variables(unet):
    return [v for v in unet.weights if v.name not in _LORA_VARIABLES and v.name != "seed_generator_state"]


def weights_sha256(unet):
    """SHA-256 of the values of every weight of the U-Net but an adapter's (random-number
    states excluded), in the U-Net's order, as float32: the same weights give the same hash
    whatever the file they were read from."""
    digest = hashlib.sha256()
    for variable in _base_variables(unet):
        value = np.ascontiguousarray(ops.convert_to_numpy(variable), dtype=np.float32)
        digest.update(repr(value.shape).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def base_fingerprint(unet):
    return {"architecture_sha256": architecture_sha256(unet), "weights_sha256": weights_sha256(unet)}


def check_base(unet, expected, where):
    """Refuses an adapter (`expected`: its base fingerprint) for a U-Net that is not its base."""
    got = base_fingerprint(unet)
    for key, what in (("architecture_sha256", "architecture (U-Net config)"), ("weights_sha256", "weights")):
        if got[key] != expected[key]:
            raise ValueError(f"{where} was trained on another base model: its {what} differ. The adapter's base has "
                             f"{key}={expected[key]}; this model has {got[key]}. Load the adapter onto the base it "
                             "was trained on.")


# -- adapter files ----------------------------------------------------------------------------------------


def check_lora_path(path, name="path"):
    if not isinstance(path, (str, Path)) or not str(path).endswith(SUFFIX):
        raise ValueError(f"`{name}` must be a file name ending in {SUFFIX!r}. Received: {name}={shown(path)}")
    return Path(path)


def save_lora_weights(unet, path, fingerprint=None):
    """Writes the adapter (A and B of every adapted layer), its rank, alpha and targets, and
    the base's fingerprint (`base_fingerprint`, computed unless given) to `path`
    (`*.lora.h5`, written atomically). Returns the path."""
    import h5py

    path = check_lora_path(path)
    weights = lora_weights(unet)
    config, fingerprint = lora_config(unet), fingerprint or base_fingerprint(unet)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as file:
        file.attrs["format"] = FORMAT
        file.attrs["config"] = json.dumps({**config, **fingerprint})
        for layer_path, (a, b) in weights.items():
            group = file.create_group(layer_path.replace("/", "."))
            group["a"], group["b"] = ops.convert_to_numpy(a), ops.convert_to_numpy(b)
    tmp.replace(path)
    return path


def read_lora_file(path):
    """(config, {layer path: (A, B)} lazily read datasets, open file) of an adapter file;
    the caller closes the file."""
    import h5py

    path = check_lora_path(path)
    if not path.is_file():
        raise ValueError(f"Adapter file not found. Received: path={str(path)!r}")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not a readable adapter file (HDF5): {error}") from None
    try:
        if file.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a keras_cdm adapter file: its format is "
                             f"{shown(file.attrs.get('format'), 80)}, expected {FORMAT!r}.")
        config = json.loads(file.attrs["config"])
        if not isinstance(config, dict):
            raise ValueError(f"{path}: the adapter's config must be a JSON object.")
        config.update(rank=check_rank(config.get("rank")), target=list(check_targets(config.get("target"))),
                      alpha=check_alpha(config.get("alpha"), config.get("rank")))
        for key in ("architecture_sha256", "weights_sha256"):  # the base's identity: required
            if not (isinstance(config.get(key), str) and SHA256.fullmatch(config[key])):
                raise ValueError(f"`{key}` must be 64 lowercase hex digits. Received: {shown(config.get(key), 80)}")
        pairs = {}
        for name, group in file.items():
            if not isinstance(group, h5py.Group) or set(group) != {"a", "b"}:
                raise ValueError(f"{path}: entry {shown(name, 80)} must hold the datasets 'a' and 'b'.")
            pairs[name.replace(".", "/")] = (group["a"], group["b"])
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as error:
        file.close()
        raise ValueError(f"{path}: {error}") from None
    return config, pairs, file


def load_lora_weights(unet, path):
    """Loads an adapter file written by `save_lora_weights`: enables LoRA with the file's
    rank, alpha and targets if it is not enabled (else they must agree), checks that the
    U-Net is the adapter's base and that every adapted layer is there with the right
    shapes, then assigns A and B. Returns the adapter's config."""
    config, pairs, file = read_lora_file(path)
    with file:
        check_base(unet, config, f"The adapter {path}")
        current = lora_config(unet)
        settings = {k: config[k] for k in ("rank", "alpha", "target")}
        if current is not None and current != settings:
            raise ValueError(f"LoRA is enabled on this model with {current}, but the adapter {path} has {settings}.")
        layers = target_layers(unet, config["target"])
        if set(pairs) != set(layers):
            missing, extra = sorted(set(layers) - set(pairs)), sorted(set(pairs) - set(layers))
            raise ValueError(f"{path} does not fit this U-Net: layers missing from the file {shown(missing, 300)}, "
                             f"layers the U-Net lacks {shown(extra, 300)}.")
        if current is None:
            enable_lora(unet, **settings)
        for layer_path, (a, b) in lora_weights(unet).items():
            stored = pairs[layer_path]
            for variable, dataset in zip((a, b), stored):
                if tuple(dataset.shape) != tuple(variable.shape):
                    raise ValueError(f"{path}: {layer_path} holds shape {tuple(dataset.shape)}, the U-Net's is "
                                     f"{tuple(variable.shape)}.")
            a.assign(np.asarray(stored[0][()], "float32"))
            b.assign(np.asarray(stored[1][()], "float32"))
    return config


# -- merging and exact checkpoints -------------------------------------------------------------------


def copy_merged(source, target):
    """Copies the weights of `source` (a U-Net with LoRA) into `target` (one of the same
    config without LoRA), each adapter merged into its weight by Keras' own
    `save_own_variables`."""
    pairs = list(zip(_walk(source), _walk(target)))
    for (path, layer), (other_path, other) in pairs:
        if type(layer) is not type(other):  # (Keras numbers unnamed layers per session: paths may differ)
            raise ValueError(f"The U-Nets differ: {path!r} is a {type(layer).__name__}, {other_path!r} a "
                             f"{type(other).__name__}.")
        store = {}
        layer.save_own_variables(store)
        other.load_own_variables(store)


def checkpoint_state(unet):
    """{key: value}: the unmerged weight, A and B of every adapted layer (Keras writes a
    LoRA layer's weight merged and loads it with the adapter zeroed: a checkpoint of a LoRA
    model would not resume exactly without these)."""
    if lora_config(unet) is None:
        return {}
    layers = target_layers(unet, lora_config(unet)["target"])
    state = {}
    for i, layer in enumerate(layers.values()):
        a, b = _pair(layer)
        for name, variable in (("w", _base_variable(layer)), ("a", a), ("b", b)):
            state[f"lora_{i}_{name}"] = ops.convert_to_numpy(variable)
    return state


def restore_checkpoint_state(unet, state):
    """Assigns a `checkpoint_state` back (after Keras has loaded the merged weights)."""
    if not state:
        return
    _check_enabled(unet, "loading a checkpoint of a LoRA model")
    layers = list(target_layers(unet, lora_config(unet)["target"]).values())
    if len(state) != 3 * len(layers):
        raise ValueError(f"The checkpoint holds the adapter of {len(state) // 3} layers; this model adapts "
                         f"{len(layers)}: it was saved with another LoRA target.")
    for i, layer in enumerate(layers):
        a, b = _pair(layer)
        for name, variable in (("w", _base_variable(layer)), ("a", a), ("b", b)):
            value = np.asarray(state[f"lora_{i}_{name}"])
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(f"The checkpoint's adapter does not fit this model (rank or layers differ): "
                                 f"{value.shape} vs {tuple(variable.shape)}.")
            variable.assign(value)
