"""Sharded training of a stage with Keras' own `keras.distribution` (JAX backend).

The paper-size stages (536-792 M parameters) hold ~16 GB of float32 state with Adam
(m, v) and the EMA: more than one accelerator. `keras.distribution.ModelParallel` shards
every variable by a `LayoutMap` (variable path -> `TensorLayout`) over a
`DeviceMesh`; the optimizer's moments and EMA are created by Keras with the layout of
their variable, so they are sharded alike. This module writes that `LayoutMap` for a
`DiffusionUNet`:

    distribution = keras_cdm.distribution.model_parallel(unet_config, model_axis_size=4)
    with distribution.scope():        # the stage's variables are created sharded
        stage = DiffusionModel(DiffusionUNet(**unet_config), GaussianDiffusion(4000, "cosine"))
        stage.compile()
    stage.fit(dataset)                # global batches, split over the mesh's batch axis

and counts, from shapes only, the bytes each device holds (`state_bytes_per_device`).
See docs/distribution.md for multi-process data parallelism and what was measured.
"""

import math

import keras
import numpy as np

from keras_cdm._validation import check_bool, check_choice, check_positive_int, is_int, shown
from keras_cdm.unet import DiffusionUNet

__all__ = ["layout_map", "model_parallel", "shapes_only", "sharded_axis", "state_bytes_per_device"]

MIN_SIZE = 2**16  # elements: smaller variables (biases, norms, small kernels) are replicated
_HEAD_PROJECTIONS = ("/query/kernel", "/key/kernel", "/value/kernel")  # (in, heads, head_dim)
OPTIMIZER_SLOTS = {"adam": 2, "sgd": 0, None: 0}  # per trainable variable: Adam's m and v


def shapes_only(unet):
    """A `DiffusionUNet` from its config (a dict), its variables shaped but never
    allocated (created in a `keras.StatelessScope` that does not initialize them);
    a `DiffusionUNet` or a `DiffusionModel` (its U-Net) is returned as it is."""
    if isinstance(unet, DiffusionUNet):
        return unet
    if isinstance(getattr(unet, "unet", None), DiffusionUNet):
        return unet.unet
    if not isinstance(unet, dict):
        raise ValueError("`unet` must be a DiffusionUNet, a DiffusionModel or a DiffusionUNet config (dict). "
                         f"Received: unet={shown(unet)}")
    config = unet.get("config", unet) if "class_name" in unet else unet
    with keras.StatelessScope(initialize_variables=False):
        template = DiffusionUNet.from_config(dict(config))
    _forget_uninitialized(template.variables)
    return template


def _forget_uninitialized(variables):
    """Keras initializes the variables made in a stateless scope at the exit of the next
    one; the template's must never be: take them off Keras' list."""
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # another Keras layout: the template is then only initialized later
        return
    pending = global_state.get_global_attribute("uninitialized_variables") or []
    ids = {id(v) for v in variables}
    global_state.set_global_attribute("uninitialized_variables", [v for v in pending if id(v) not in ids])


def sharded_axis(path, shape, model_size, min_size=MIN_SIZE):
    """The axis of a variable sharded over a model axis of `model_size` devices, or None
    (replicated). Kernels and embedding tables (rank >= 2) of at least `min_size`
    elements are split along their output channels: the last axis of convolution and
    dense kernels and of embedding tables, the heads (else the head width) of attention
    query/key/value kernels. An axis is used only when `model_size` divides it."""
    if len(shape) < 2 or math.prod(shape) < max(min_size, 1) or model_size == 1:
        return None
    candidates = [1, 2] if path.endswith(_HEAD_PROJECTIONS) and len(shape) == 3 else [len(shape) - 1]
    for axis in candidates:
        if shape[axis] % model_size == 0:
            return axis
    return None


def layout_map(unet, mesh, model_axis="model", batch_axis="batch", min_size=MIN_SIZE):
    """A `keras.distribution.LayoutMap` sharding the large kernels of a `DiffusionUNet`.

    Every variable of the U-Net gets an exact-path entry: its output channels split
    over `model_axis` (see `sharded_axis`) or replicated (small, 1-D or indivisible);
    never an invalid layout. Variables not in the map (the stage's seed states, the
    optimizer's counters) are replicated by `ModelParallel`; the optimizer's moments
    and EMA take their variable's layout.

    Args:
        unet: a `DiffusionUNet`, a `DiffusionModel` or a U-Net config (see `shapes_only`).
        mesh: a `keras.distribution.DeviceMesh` with axes `batch_axis` and `model_axis`.
        model_axis, batch_axis: the mesh's axis names for model and data parallelism.
        min_size: variables with fewer elements are replicated.
    """
    model_size = _check_mesh(mesh, model_axis, batch_axis)
    min_size = _check_min_size(min_size)
    result = keras.distribution.LayoutMap(mesh)
    for variable in shapes_only(unet).weights:
        shape = tuple(variable.shape)
        axes = [None] * len(shape)
        axis = sharded_axis(variable.path, shape, model_size, min_size)
        if axis is not None:
            axes[axis] = model_axis
        result[variable.path] = tuple(axes)
    return result


def model_parallel(unet, devices=None, model_axis_size=None, model_axis="model", batch_axis="batch",
                   min_size=MIN_SIZE):
    """`keras.distribution.ModelParallel` over a (batch, model) mesh of `devices` (all
    devices, of every process, by default): `model_axis_size` devices share each
    sharded variable, `len(devices) // model_axis_size` replicas split the batch.
    Returns the distribution (its `_layout_map` is `layout_map(unet, mesh, ...)`)."""
    devices = keras.distribution.list_devices() if devices is None else list(devices)
    if not devices:
        raise ValueError(f"`devices` must list at least one device. Received: devices={shown(devices)}")
    model_axis_size = len(devices) if model_axis_size is None else check_positive_int(
        "model_axis_size", model_axis_size)
    if len(devices) % model_axis_size:
        raise ValueError(f"`model_axis_size` must divide the number of devices ({len(devices)}). "
                         f"Received: model_axis_size={model_axis_size}")
    mesh = keras.distribution.DeviceMesh((len(devices) // model_axis_size, model_axis_size),
                                         (batch_axis, model_axis), devices)
    layouts = layout_map(unet, mesh, model_axis=model_axis, batch_axis=batch_axis, min_size=min_size)
    return keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name=batch_axis)


def state_bytes_per_device(model, layout_map, mesh=None, optimizer="adam", ema=True, gradients=False):
    """Bytes of training state one device holds, from shapes and dtypes only.

    Each variable of the U-Net takes its layout from `layout_map` (exact path, else
    Keras' regex match; none: replicated); a device holds one shard, each sharded
    dimension divided (rounded up) by its mesh axis. Adam's m and v and the EMA are
    shaped, typed and sharded like their trainable variable (as Keras makes them).
    Scalars (the optimizer's step count and learning rate) and the stage's seed states
    (a few bytes) are left out.

    Args:
        model: a `DiffusionUNet`, a `DiffusionModel` or a U-Net config (nothing is allocated).
        layout_map: a `keras.distribution.LayoutMap` (e.g. from `layout_map`).
        mesh: the `DeviceMesh` (default: the layout map's).
        optimizer: "adam" (2 moments per trainable variable), "sgd" or None (none).
        ema: whether the optimizer keeps an EMA of the weights (one more copy).
        gradients: also count the gradients a training step holds at once with the
            state (one more copy of the trainable variables, sharded alike).

    Returns:
        A dict of ints: "parameters", "optimizer", "ema" (and "gradients" when asked)
        and their "total".
    """
    if not isinstance(layout_map, keras.distribution.LayoutMap):
        raise ValueError(f"`layout_map` must be a keras.distribution.LayoutMap. Received: {shown(layout_map)}")
    mesh = layout_map.device_mesh if mesh is None else mesh
    if not isinstance(mesh, keras.distribution.DeviceMesh):
        raise ValueError(f"`mesh` must be a keras.distribution.DeviceMesh. Received: mesh={shown(mesh)}")
    slots = OPTIMIZER_SLOTS[check_choice("optimizer", optimizer, list(OPTIMIZER_SLOTS))]
    unet = shapes_only(model)
    sizes = dict(zip(mesh.axis_names, mesh.shape))
    parameters = sum(_shard_bytes(v, layout_map, sizes) for v in unet.weights)
    trainable = sum(_shard_bytes(v, layout_map, sizes) for v in unet.trainable_weights)
    result = {"parameters": parameters, "optimizer": slots * trainable,
              "ema": trainable if check_bool("ema", ema) else 0}
    if check_bool("gradients", gradients):
        result["gradients"] = trainable
    result["total"] = sum(result.values())
    return result


def _shard_bytes(variable, layouts, sizes):
    layout = layouts[variable.path]
    axes = (None,) * len(variable.shape) if layout is None else tuple(layout.axes)
    shape = [math.ceil(d / _axis_size(a, sizes)) for d, a in zip(variable.shape, axes)]
    return math.prod(shape) * np.dtype(keras.backend.standardize_dtype(variable.dtype)).itemsize


def _axis_size(axis, sizes):
    if axis is None:
        return 1
    names = axis if isinstance(axis, tuple) else (axis,)
    return math.prod(sizes[name] for name in names)


def _check_mesh(mesh, model_axis, batch_axis):
    if not isinstance(mesh, keras.distribution.DeviceMesh):
        raise ValueError(f"`mesh` must be a keras.distribution.DeviceMesh. Received: mesh={shown(mesh)}")
    names = list(mesh.axis_names)
    for name, value in (("model_axis", model_axis), ("batch_axis", batch_axis)):
        if value not in names:
            raise ValueError(f"`{name}` must be one of the mesh's axes {names}. Received: {name}={value!r}")
    if model_axis == batch_axis:
        raise ValueError(f"`model_axis` and `batch_axis` must differ. Received: both {model_axis!r}")
    return mesh.shape[names.index(model_axis)]


def _check_min_size(min_size):
    if not is_int(min_size) or min_size < 0:
        raise ValueError(f"`min_size` must be a non-negative integer (elements). Received: min_size={shown(min_size)}")
    return int(min_size)
