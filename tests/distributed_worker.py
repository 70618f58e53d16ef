"""Trains / evaluates a tiny stage under a distribution; prints one JSON line.

python -m tests.distributed_worker MODE [TASK_INDEX PORT0 PORT1]
MODE: single | mirrored (2 logical CPUs) | multiworker (TF_CONFIG on loopback) | jax_data_parallel
"""

import json
import os
import sys

MODE = sys.argv[1]
if MODE == "jax_data_parallel":
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
elif MODE in ("mirrored", "multiworker", "single"):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if MODE == "multiworker":
    index, ports = int(sys.argv[2]), sys.argv[3:5]
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": index},
    })

import contextlib  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_cdm import DiffusionModel, DiffusionUNet, GaussianDiffusion  # noqa: E402

GLOBAL_BATCH = 8


def strategy_scope():
    if MODE == "single":
        return contextlib.nullcontext(), 1
    if MODE == "jax_data_parallel":
        devices = keras.distribution.list_devices("cpu")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext(), len(devices)
    import tensorflow as tf

    if MODE == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return strategy.scope(), strategy.num_replicas_in_sync


def batches(images, labels):
    """Global batches of GLOBAL_BATCH: a tf.data pipeline (what tf.distribute shards) or arrays."""
    if MODE == "jax_data_parallel":
        return _ArrayBatches(images, labels)
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices({"images": images, "labels": labels}).batch(GLOBAL_BATCH)


class _ArrayBatches(keras.utils.PyDataset):
    def __init__(self, images, labels):
        super().__init__()
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images) // GLOBAL_BATCH

    def __getitem__(self, i):
        part = slice(i * GLOBAL_BATCH, (i + 1) * GLOBAL_BATCH)
        return {"images": self.images[part], "labels": self.labels[part]}


def main():
    scope, replicas = strategy_scope()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (256, 8, 8, 1)).astype("float32")
    labels = (np.arange(256) % 4).astype("int32")
    with scope:
        unet = DiffusionUNet(image_size=8, base_channels=8, channel_multipliers=(1,), num_res_blocks=1,
                             attention_resolutions=(), num_classes=4, num_groups=4, image_channels=1)
        model = DiffusionModel(unet, GaussianDiffusion(20, "cosine"), seed=0)
        model.compile(learning_rate=1e-3)
    start = time.perf_counter()
    # The loss is an expectation over t and noise: estimate it on 256 examples with fixed weights.
    loss = model.evaluate(batches(images, labels), verbose=0, return_dict=True)["loss"]
    history = model.fit(batches(images[:64], labels[:64]), epochs=2, verbose=0).history
    weights = np.concatenate([np.ravel(w) for w in model.unet.get_weights()])
    print(json.dumps({"mode": MODE, "replicas": replicas, "loss": float(loss), "fit_loss": history["loss"],
                      "weights_sum": float(np.abs(weights).sum()), "weights_head": weights[:8].tolist(),
                      "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
