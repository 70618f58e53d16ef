"""Trains a tiny stage with keras.distribution on JAX, in its own process.

    python -m tests.jax_distribution_worker reference OUT
        one process, one device: the run the distributed ones must equal (OUT: .npz)
    python -m tests.jax_distribution_worker process INDEX PORT OUT BACKUP [SLOW]
        process INDEX of 2 (coordinator 127.0.0.1:PORT), DataParallel over both processes'
        devices, keras_cdm's BackupAndRestore in BACKUP (shared by the processes);
        SLOW: sleep that many seconds per batch (a window for a parent's SIGKILL)
    python -m tests.jax_distribution_worker sharded OUT
        8 virtual CPU devices: a few steps unsharded on one device and on a 2 x 4
        (batch x model) mesh; per-variable shardings and bytes (OUT: .json)
"""

import json
import os
import sys
import time

MODE = sys.argv[1]
os.environ["KERAS_BACKEND"] = "jax"
# Optimization level 0: XLA compiles the train step 2-3x faster on CPU (every run here
# compiles with the same flags, so the runs compared are the same programs).
os.environ["XLA_FLAGS"] = "--xla_backend_optimization_level=0" + (
    " --xla_force_host_platform_device_count=8" if MODE == "sharded" else "")  # else one CPU device a process

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_cdm import DiffusionModel, DiffusionUNet, GaussianDiffusion  # noqa: E402
from keras_cdm.callbacks import BackupAndRestore  # noqa: E402

GLOBAL_BATCH, IMAGES, EPOCHS, SAVE_FREQ = 8, 48, 2, 2  # 6 steps an epoch, a backup every 2
UNET = dict(image_size=8, base_channels=16, channel_multipliers=(1,), num_res_blocks=1, attention_resolutions=(),
            num_heads=4, num_classes=4, num_groups=4, image_channels=1)  # the middle block has attention


def build():
    keras.utils.set_random_seed(0)
    model = DiffusionModel(DiffusionUNet(**UNET), GaussianDiffusion(20, "cosine"), seed=0)
    model.compile(learning_rate=1e-3, ema_momentum=0.9)
    return model


def arrays(count=IMAGES):
    rng = np.random.default_rng(0)
    return {"images": rng.uniform(-1, 1, (count, 8, 8, 1)).astype("float32"),
            "labels": (np.arange(count) % 4).astype("int32")}


def global_batches():
    """The global batches, as a tf.data pipeline: Keras' DataParallel gives each process
    its slice of every batch (rebatch + shard) when there are several processes."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(arrays()).batch(GLOBAL_BATCH, drop_remainder=True)


def state(model):
    optimizer = model.optimizer
    result = {f"w{i}": np.asarray(v.value) for i, v in enumerate(model.unet.trainable_variables)}
    ema = optimizer._model_variables_moving_average
    result.update({f"e{i}": np.asarray(v.value) for i, v in enumerate(ema)})
    result["iterations"] = np.asarray(optimizer.iterations.value)
    return result


class Slow(keras.callbacks.Callback):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.seconds)


def reference(out):
    model = build()
    model.fit(global_batches(), epochs=EPOCHS, verbose=0)
    np.savez(out, **state(model))


def process(index, port, out, backup, slow=0.0):
    keras.utils.set_random_seed(0)  # before: Keras then needs no collective to agree on a seed
    keras.distribution.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=index)
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    model = build()
    callbacks = [BackupAndRestore(backup, save_freq=SAVE_FREQ, delete_checkpoint=False)]
    callbacks += [Slow(slow)] if slow else []
    model.fit(global_batches(), epochs=EPOCHS, verbose=0, callbacks=callbacks)
    np.savez(out, **state(model), devices=len(devices))


def _shards(value):
    """(the sharding's spec as a list, the bytes held by the first device)."""
    spec = getattr(value.sharding, "spec", ())
    first = value.sharding.device_set and min(value.sharding.device_set, key=lambda d: d.id)
    held = sum(s.data.nbytes for s in value.addressable_shards if s.device == first)
    return [None if a is None else str(a) for a in spec], int(held)


def sharded(out):
    from keras_cdm import distribution as cdm_distribution

    data, steps = arrays(3 * GLOBAL_BATCH), {"batch_size": GLOBAL_BATCH, "epochs": 1, "shuffle": False, "verbose": 0}
    single = build()
    initial = [np.asarray(v.value) for v in single.unet.trainable_variables]
    single.fit(data, **steps)
    distribution = cdm_distribution.model_parallel(UNET, model_axis_size=4, min_size=200)
    with distribution.scope():
        model = build()
        model.fit(data, **steps)
    a, b = state(single), state(model)
    variables = {"parameter": model.unet.weights}
    for kind, suffix in (("m", "_momentum"), ("v", "_velocity"), ("ema", "_average")):
        variables[kind] = [v for v in model.optimizer.variables if v.path.endswith(suffix)]
    report = {"devices": len(keras.distribution.list_devices()),
              "max_weight_diff": max(float(np.abs(a[k] - b[k]).max()) for k in a if k.startswith("w")),
              "max_ema_diff": max(float(np.abs(a[k] - b[k]).max()) for k in a if k.startswith("e")),
              "max_change": max(float(np.abs(w - a[f"w{i}"]).max()) for i, w in enumerate(initial)),
              "iterations": [int(a["iterations"]), int(b["iterations"])],
              "predicted": cdm_distribution.state_bytes_per_device(UNET, distribution._layout_map),
              "variables": []}
    for kind, group in variables.items():
        for v in group:
            spec, held = _shards(v.value)
            report["variables"].append({"kind": kind, "path": v.path, "shape": list(v.shape), "spec": spec,
                                        "bytes": int(np.asarray(v.value).nbytes), "device_bytes": held})
    with open(out, "w") as file:
        json.dump(report, file)


if __name__ == "__main__":
    if MODE == "reference":
        reference(sys.argv[2])
    elif MODE == "process":
        process(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], float(sys.argv[6] or 0)
                if len(sys.argv) > 6 else 0.0)
    elif MODE == "sharded":
        sharded(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {MODE!r}")
