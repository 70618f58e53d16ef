"""Paper scale on paper: the memory per device of training a stage, and the setup to train it with.

`plan(stage, devices, device_memory_bytes, batch_size)` counts, without allocating anything,
what one training step holds on each device: the state (weights, gradients, Adam's two
moments, the EMA: float32 copies of the weights, sharded by `keras_cdm.distribution.layout_map`,
the layout `keras_cdm.distribution.model_parallel` trains with) and the activations
kept for the backward pass (per example, with and without `remat`, times the examples on a
device). It lists every split of the devices into a data axis and a model axis, with and
without remat, with the examples per device that fit (the rest of the batch made up by
gradient accumulation), and recommends one: the smallest model axis at which an example
fits (model parallelism communicates inside every layer; data parallelism once a step), then
the fewest accumulation steps, then no remat (remat recomputes the residual blocks: about
one more forward pass of them).

The activations are an analytic count per layer (`activation_bytes_per_example`) whose
coefficients were fitted to what JAX keeps from the forward pass for the backward pass
(`benchmarks/remat.py`); on the paper stages it is within 4% of JAX's count without remat and 4-16% above it with remat
(docs/distribution_plan.md). XLA may keep less (fusion, its own rematerialization) or need
workspace beyond it: the plan keeps `headroom` (10%) of every device free.
"""

import math

import keras
import numpy as np

from keras_cdm import distribution as cdm_distribution
from keras_cdm import presets
from keras_cdm._validation import (
    check_positive_int,
    check_positive_number,
    check_range,
    shown,
)
from keras_cdm.layers import AttentionBlock, Downsample, ResidualBlock, Upsample
from keras_cdm.unet import DiffusionUNet

GIB = 2**30
# Appendix B of the paper: the training batch size of each ImageNet stage.
PAPER_BATCH_SIZES = {"cdm_imagenet32_base": 2048, "cdm_imagenet32_to_64": 2048, "cdm_imagenet64_to_128": 1024,
                     "cdm_imagenet64_to_256": 1024}
# Activations kept for the backward pass, in values per value of a layer's input / output,
# fitted to JAX's saved residuals of single layers (benchmarks/remat.py measures whole stages).
_RESIDUAL = {"input": 4.6, "output": 6.5, "dropout": 1.25, "mask": 0.25}
_ATTENTION = {"features": 9.0, "weights": 1.75}  # per position x channel; per head x position^2


def abstract_unet(stage, remat=False):
    """The U-Net of `stage` (a built-in stage preset name or a DiffusionUNet) with `remat`, its
    variables created without values: nothing is allocated, now or later."""
    if isinstance(stage, DiffusionUNet):
        if stage.remat == remat:
            return stage
        return cdm_distribution.shapes_only({**stage.get_config(), "remat": remat})
    with keras.StatelessScope(initialize_variables=False):
        unet = presets.unet_from_preset(stage, remat=remat)
    cdm_distribution._forget_uninitialized(unet.variables)
    return unet


def abstract_mesh(data_axis, model_axis):
    """A ('batch', 'model') `keras.distribution.DeviceMesh` of that shape over named
    devices that need not exist: layouts and byte counts only read its shape."""
    devices = [f"device:{i}" for i in range(data_axis * model_axis)]
    return keras.distribution.DeviceMesh((data_axis, model_axis), ("batch", "model"), devices)


def activation_bytes_per_example(unet, recomputation=True):
    """Bytes one example's training step keeps for the backward pass (with `unet.remat` as set):
    each layer's output that a later layer needs for its gradient (not one only concatenated or
    added), plus each layer's own intermediates (fitted coefficients: see the module's docstring),
    in the layers' compute dtype (dropout masks: 1 byte). With remat and `recomputation`, plus
    the intermediates of the largest residual block, recomputed one block at a time."""
    itemsize = np.dtype(keras.dtype_policies.get(unet._layer_dtype or "float32").compute_dtype).itemsize
    total, largest_block = 0.0, 0.0
    for layer in unet.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        node = layer._inbound_nodes[0]
        inputs = [math.prod(t.shape[1:]) for t in node.input_tensors]
        output = sum(math.prod(t.shape[1:]) for t in node.output_tensors)
        consumers = [n.operation for n in layer._outbound_nodes]
        if not consumers or any(not isinstance(c, _NOT_KEEPING) for c in consumers):
            total += output
        if isinstance(layer, ResidualBlock):
            dropout = _RESIDUAL["dropout"] * output if layer.dropout else 0.0
            internal = _RESIDUAL["input"] * inputs[0] + _RESIDUAL["output"] * output + dropout
            largest_block = max(largest_block, internal)
            total += (_RESIDUAL["mask"] * output if layer.dropout else 0.0) if layer.remat else internal
        elif isinstance(layer, AttentionBlock):
            positions = math.prod(node.input_tensors[0].shape[1:3])
            total += _ATTENTION["features"] * inputs[0] + _ATTENTION["weights"] * layer.num_heads * positions**2
        elif isinstance(layer, Downsample) and layer.use_conv:
            total += 1.6 * inputs[0]
        elif isinstance(layer, Upsample) and layer.use_conv:
            total += output
    if unet.remat and recomputation:
        total += largest_block
    return int(total * itemsize)


# Layers whose gradient needs none of their inputs: an output consumed only by them is not kept.
_NOT_KEEPING = (keras.layers.Concatenate, keras.layers.Add)


class Plan:
    """The rows of `plan`, one per (model axis, remat), and the recommended one (`recommended`:
    the smallest model axis at which an example fits, then the fewest gradient-accumulation
    steps, then no remat; None when not one example fits). `table()` is their text."""

    def __init__(self, stage, parameters, devices, device_memory_bytes, batch_size, headroom, rows):
        self.stage, self.parameters, self.devices = stage, parameters, devices
        self.device_memory_bytes, self.batch_size, self.headroom = device_memory_bytes, batch_size, headroom
        self.rows = rows
        fitting = [row for row in rows if row["micro_batch"]]
        key = lambda row: (row["model_axis"], row["accumulation"], row["remat"])  # noqa: E731
        self.recommended = min(fitting, key=key) if fitting else None

    def table(self):
        usable = self.device_memory_bytes * (1 - self.headroom)
        lines = [f"{self.stage}: {self.parameters / 1e6:,.0f} M parameters, global batch {self.batch_size}, "
                 f"{self.devices} devices of {self.device_memory_bytes / GIB:g} GiB ({usable / GIB:.1f} GiB usable)",
                 f"{'model':>5} {'data':>4} {'batch/dev':>9} {'remat':>5} {'state GiB':>9} {'act. GiB/ex':>11} "
                 f"{'total GiB':>9} {'micro':>5} {'accum':>5}"]
        for row in self.rows:
            lines.append(f"{row['model_axis']:>5} {row['data_axis']:>4} {row['batch_per_device']:>9} "
                         f"{'yes' if row['remat'] else 'no':>5} {row['state'] / GIB:>9.2f} "
                         f"{row['activations_per_example'] / GIB:>11.3f} {row['total'] / GIB:>9.2f} "
                         f"{row['micro_batch'] or '-':>5} {row['accumulation'] or '-':>5}")
        best = self.recommended
        lines.append("recommended: " + (
            f"DiffusionUNet(remat={best['remat']}) on a ('batch', 'model') mesh of ({best['data_axis']}, "
            f"{best['model_axis']}), {best['micro_batch']} example{'s' if best['micro_batch'] > 1 else ''} per device per step"
            + (f", gradient_accumulation_steps={best['accumulation']}" if best["accumulation"] > 1 else "")
            if best else "nothing fits: more devices, or mixed_bfloat16 (half the activations)"))
        return "\n".join(lines)


def plan(stage, devices, device_memory_bytes, batch_size=None, layout=None, model_axis=None, headroom=0.1,
         optimizer="adam", ema=True):
    """Memory per device of a training step of `stage` (a built-in stage preset name or a
    DiffusionUNet) on `devices` devices of `device_memory_bytes` each, at global `batch_size`
    (default: the paper's, for its ImageNet stages), for every model axis size dividing
    `devices` (1: data parallel only, the state replicated), or for 1 and `model_axis` only,
    with and without remat.

    `layout(unet, mesh)` gives the `keras.distribution.LayoutMap` of the U-Net's variables on a
    ('batch', 'model') `DeviceMesh`: by default `keras_cdm.distribution.layout_map`, the layout
    that `keras_cdm.distribution.model_parallel` trains with. The state per device is
    `keras_cdm.distribution.state_bytes_per_device` of it, gradients included.
    Activations are split over the data axis (the examples) and, assumed, the model axis (the
    channels, as XLA propagates the kernels' sharding). A row's `total` is the memory per
    device at its full per-device batch; `micro_batch` is the most examples per device that fit
    in (1 - headroom) of the device (0: none) and `accumulation` the gradient-accumulation
    steps (Keras optimizers' `gradient_accumulation_steps`) that then make up the batch.
    Returns a `Plan`."""
    devices = check_positive_int("devices", devices)
    device_memory_bytes = check_positive_number("device_memory_bytes", device_memory_bytes)
    unets = {remat: abstract_unet(stage, remat) for remat in (False, True)}
    if batch_size is None:
        if stage not in PAPER_BATCH_SIZES:
            raise ValueError(f"`batch_size` is needed for stages other than {sorted(PAPER_BATCH_SIZES)}. "
                             f"Received: batch_size=None for stage={shown(stage)}")
        batch_size = PAPER_BATCH_SIZES[stage]
    batch_size = check_positive_int("batch_size", batch_size)
    headroom = check_range("headroom", headroom, 0.0, 1.0, high_inclusive=False)
    layout = layout or cdm_distribution.layout_map
    if not callable(layout):
        raise ValueError("`layout` must be None or a callable (unet, mesh) -> keras.distribution.LayoutMap, "
                         f"e.g. keras_cdm.distribution.layout_map. Received: layout={shown(layout)}")
    activations = {remat: activation_bytes_per_example(unet) for remat, unet in unets.items()}
    usable = device_memory_bytes * (1 - headroom)
    sizes = [m for m in range(1, devices + 1) if devices % m == 0]
    if model_axis is not None:
        if not isinstance(model_axis, int) or isinstance(model_axis, bool) or model_axis not in sizes:
            raise ValueError(f"`model_axis` must be None or a divisor of `devices` ({devices}): one of {sizes}. "
                             f"Received: model_axis={shown(model_axis)}")
        sizes = sorted({1, model_axis})
    rows = []
    for model_axis in sizes:
        data_axis = devices // model_axis
        layouts = layout(unets[False], abstract_mesh(data_axis, model_axis))
        state = cdm_distribution.state_bytes_per_device(unets[False], layouts, optimizer=optimizer, ema=ema,
                                                        gradients=True)["total"]
        per_device = math.ceil(batch_size / data_axis)
        for remat in (False, True):
            per_example = activations[remat] / model_axis
            micro = min(per_device, max(0, int((usable - state) // per_example)))
            rows.append({"model_axis": model_axis, "data_axis": data_axis, "batch_per_device": per_device,
                         "remat": remat, "state": state, "activations_per_example": per_example,
                         "total": state + per_device * per_example, "micro_batch": micro,
                         "accumulation": math.ceil(per_device / micro) if micro else 0})
    name = stage if isinstance(stage, str) else stage.name
    return Plan(name, unets[False].count_params(), devices, device_memory_bytes, batch_size, headroom, rows)
