"""
Title: Distributed training
Author: keras_cdm developers
Date created: 2026/11/27
Last modified: 2026/11/27
Description: Train a cascade stage on one GPU, several GPUs, several machines, TPUs, or with the JAX backend's data parallelism, and scale batch size and learning rate.
Accelerator: None
"""

"""
## Introduction

The paper trained each stage of its cascades for 400,000 to 700,000 steps with global
batches of 1,024 or 2,048 images (Appendix B): that is many accelerators working
together. `keras_cdm` stages are ordinary `keras.Model`s trained with `model.fit`, so
they use Keras' and TensorFlow's distribution machinery as it is.

All the strategies here are **data parallel**: every device (a *replica*) holds a full
copy of the model, each training step splits the global batch between the replicas,
each replica computes gradients on its share, the gradients are summed across replicas
(all-reduce), and every copy applies the same update, so the copies stay identical. The
model code does not change; what changes is *where the model is built*: inside
`strategy.scope()`.

| hardware | backend | what to write |
| --- | --- | --- |
| one GPU (or CPU) | any | nothing |
| several GPUs, one machine | TensorFlow | `tf.distribute.MirroredStrategy()` |
| several machines | TensorFlow | `tf.distribute.MultiWorkerMirroredStrategy()` + `TF_CONFIG` |
| TPU | TensorFlow | `tf.distribute.TPUStrategy(resolver)` |
| several devices | JAX | `keras.distribution.set_distribution(keras.distribution.DataParallel())` |

This guide actually runs data-parallel training on a CPU-only machine by splitting the
CPU into two logical devices (TensorFlow) or two host devices (JAX); the code for other
hardware runs only where that hardware exists. `KERAS_CDM_GUIDES_FAST=1` shrinks the
data and epochs so that the guide runs in about a minute, for continuous integration.
"""

"""
## Setup

Device configuration must happen before anything else touches the devices, so the first
cell does it: with TensorFlow (the default here), a machine without two GPUs gets its CPU
split into two *logical* devices; with `KERAS_BACKEND=jax`, XLA is asked for two host
devices. Neither changes a machine with real accelerators.
"""

import os

os.environ["KERAS_BACKEND"] = os.environ.get("KERAS_BACKEND", "tensorflow")
FAST = os.environ.get("KERAS_CDM_GUIDES_FAST") == "1"
BACKEND = os.environ["KERAS_BACKEND"]

if BACKEND == "jax":
    # Two XLA host (CPU) devices; read when JAX starts, ignored for GPUs and TPUs.
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
elif BACKEND == "tensorflow":
    import tensorflow as tf

    GPUS = tf.config.list_physical_devices("GPU")
    if len(GPUS) < 2:  # demonstrate on two logical CPU devices instead
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import glob
import json
import time

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from keras_cdm import DiffusionModel, DiffusionUNet, GaussianDiffusion, data, save_image_grid

print("backend", keras.backend.backend(), "| fast mode:", FAST)

"""
## The data and the stage

A small class-conditional 8x8 base stage on MNIST digits (`data.mnist_subset`, resized
to 8x8) stands in for a real stage: the distribution code is the same for the paper's
792-million-parameter models.

`build_stage` is the plain single-device code, with nothing distribution-specific in it.
"""

GLOBAL_BATCH = 64  # images per optimizer step, over all replicas together
EPOCHS = 2 if FAST else 8
digits, digit_labels = data.mnist_subset("train")
if FAST:
    digits, digit_labels = digits[::9], digit_labels[::9]  # 500 digits of every class
print(len(digits), "digits,", len(digits) // GLOBAL_BATCH, "steps per epoch")


def build_stage():
    unet = DiffusionUNet(image_size=8, base_channels=16 if FAST else 32, channel_multipliers=(1,),
                         num_res_blocks=1, attention_resolutions=(), num_groups=8, num_classes=10,
                         image_channels=1)
    model = DiffusionModel(unet, GaussianDiffusion(1000, "cosine"), seed=0, name="base")
    model.compile(learning_rate=1e-3, ema_momentum=0.99)
    return model


def dataset():
    # Batches of the GLOBAL batch size: under a strategy, each replica gets an equal share.
    return data.from_arrays(digits, digit_labels, image_size=8, batch_size=GLOBAL_BATCH, seed=0, cache=True)


"""
## One device

On one GPU (or a CPU) there is nothing to do: Keras places the model on the GPU when
TensorFlow or JAX sees one. Two things speed up a single accelerator:

- **mixed precision**, `keras.mixed_precision.set_global_policy("mixed_bfloat16")`
  before building (TPUs, and GPUs from the A100 on): the U-Net computes in bfloat16 while
  its weights and the diffusion math stay in float32;
- **`steps_per_execution`**, `stage.compile(steps_per_execution=16)`: several steps per
  call from Python, which helps when steps are short.

This is the baseline: one device, global batch 64.
"""

keras.utils.set_random_seed(0)
single = build_stage()
start = time.perf_counter()
single_history = single.fit(dataset(), epochs=EPOCHS, verbose=2).history
print(f"one device: {time.perf_counter() - start:.0f} s")

"""
## Several GPUs on one machine: `MirroredStrategy`

`tf.distribute.MirroredStrategy()` uses every GPU of the machine (or the devices you
list). Build and compile the model inside `strategy.scope()`, so that its variables,
optimizer slots and EMA are created as *mirrored* variables, one copy per replica; `fit`
is called as usual, outside the scope, with a dataset batched with the **global** batch
size. Keras distributes the dataset: each replica receives 64 / replicas images per
step, and the loss is the mean over the whole global batch, as on one device
(`DiffusionModel` takes care of the replica scaling).

Here the two replicas are two logical devices of one CPU, which share its cores: the
run shows that the code works, not a speed-up. On a machine with several GPUs, the same
cell uses all of them.
"""

if keras.backend.backend() == "tensorflow":
    if len(GPUS) >= 2:
        strategy = tf.distribute.MirroredStrategy()  # all GPUs of this machine
    else:
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])  # the two logical CPUs
    print("replicas:", strategy.num_replicas_in_sync)

    keras.utils.set_random_seed(0)
    with strategy.scope():
        stage = build_stage()  # the unchanged single-device code
    start = time.perf_counter()
    distributed_history = stage.fit(dataset(), epochs=EPOCHS, verbose=2).history
    print(f"{strategy.num_replicas_in_sync} replicas: {time.perf_counter() - start:.0f} s")

"""
Both runs optimise the same objective with the same global batch, so their loss curves
match up to the randomness of the training draws (timesteps and noise):
"""

if keras.backend.backend() == "tensorflow":
    figure, axis = plt.subplots(figsize=(5, 3))
    epochs = np.arange(1, EPOCHS + 1)
    axis.plot(epochs, single_history["loss"], marker="o", label="one device")
    axis.plot(epochs, distributed_history["loss"], marker="s", linestyle="--",
              label=f"MirroredStrategy, {strategy.num_replicas_in_sync} replicas")
    axis.set_xticks(epochs)
    axis.set_xlabel("epoch")
    axis.set_ylabel("training loss")
    axis.legend()
    figure.tight_layout()
    figure.savefig("distributed_training_loss.png", dpi=100)
    plt.close(figure)

    # The trained stage samples like any other, outside the scope. (A few epochs of a tiny stage
    # on 500 digits: the samples are still noise; this shows the mechanics, the training guide
    # trains a stage that draws digits.)
    samples = stage.generate(labels=np.repeat(np.arange(10), 2), seed=0, num_steps=25 if FAST else 100,
                             verbose=False)
    save_image_grid(samples, "distributed_training_samples.png", labels=np.repeat(np.arange(10), 2), columns=10)

"""
Saving works as on one device: `stage.save_to_preset(folder)` writes the EMA weights, and
`keras_cdm.callbacks.BackupAndRestore` (Keras' callback made safe against kills) and
`keras.callbacks.ModelCheckpoint` work under the strategy (see the guide *Training a
cascade on your own images*).

## Several machines: `MultiWorkerMirroredStrategy`

Across machines ("workers"), replace the strategy by
`tf.distribute.MultiWorkerMirroredStrategy()`. Every worker runs **the same script**;
each learns its place in the cluster from the `TF_CONFIG` environment variable, which
lists all workers and names this one. For two machines:

```python
# on machine A (and on machine B the same, with "index": 1)
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": ["machine-a:12345", "machine-b:12345"]},
    "task": {"type": "worker", "index": 0},
})
```

Set it before the strategy is created (on a cluster, the job launcher usually sets it).
The workers wait for each other at start-up, then all-reduce gradients over the network
(NCCL between GPUs, gRPC otherwise). Worker 0 is the *chief*: let only it write presets
and grids, while every worker must run the callbacks that synchronise, such as
`BackupAndRestore` (give each worker a folder of its own: workers sharing one would delete
each other's backup files). The
dataset is batched with the global batch and sharded between the workers automatically.

Keras 3.15 cannot run `fit` under `MultiWorkerMirroredStrategy` for models whose batches
are dicts or whose logs are scalars; `DiffusionModel` works around both, and
`tests/distribution_test.py` trains a stage with two worker processes on one machine and
checks that both end with identical weights. The cell below runs only when `TF_CONFIG`
is set:
"""

if keras.backend.backend() == "tensorflow" and "TF_CONFIG" in os.environ:
    cluster = json.loads(os.environ["TF_CONFIG"])
    worker = tf.distribute.MultiWorkerMirroredStrategy()
    with worker.scope():
        multi = build_stage()
    multi.fit(dataset(), epochs=EPOCHS, verbose=2 if cluster["task"]["index"] == 0 else 0)
    if worker.cluster_resolver.task_id == 0:  # the chief saves
        multi.save_to_preset("multi_worker_stage", overwrite=True)
else:
    print("TF_CONFIG is not set: no multi-worker cluster to join.")

"""
## TPUs: `TPUStrategy`

On a Cloud TPU, connect to the TPU system and use `TPUStrategy`; the rest is unchanged.
TPUs want static shapes (the `keras_cdm.data` pipelines drop the last, smaller batch by
default, `drop_remainder=True`), like bfloat16 (`mixed_bfloat16`) and large
`steps_per_execution`, and on TPU Nodes (not TPU VMs) they read data from Cloud Storage
(`gs://...` folders work with `data.from_image_folder` and `data.from_tfds`). The cell
runs only on a TPU host:
"""

ON_TPU = bool(glob.glob("/dev/accel*")) or "TPU_NAME" in os.environ
if keras.backend.backend() == "tensorflow" and ON_TPU:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()  # TPU_NAME, or the local TPU VM
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    tpu = tf.distribute.TPUStrategy(resolver)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    with tpu.scope():
        tpu_stage = build_stage()
        tpu_stage.compile(learning_rate=1e-3, ema_momentum=0.99, steps_per_execution=32)
    tpu_stage.fit(dataset(), epochs=EPOCHS, verbose=2)
    keras.mixed_precision.set_global_policy("float32")
else:
    print("No TPU here.")

"""
## The JAX backend: `keras.distribution.DataParallel`

With `KERAS_BACKEND=jax` there are no strategies and no scope: one call before building
the model sets a global *distribution*. `DataParallel()` replicates the model on all
local devices (GPUs, TPU cores) and splits each global batch between them; inputs can be
NumPy arrays, a `keras.utils.PyDataset` or a `tf.data` pipeline, batched with the global
batch size. Run this guide with `KERAS_BACKEND=jax` to execute the cell (on two XLA host
devices here): its loss log then matches the one-device run's, since with the same seeds
it computes the same global-batch mean, split in two. `keras.distribution.initialize()`
extends it to several hosts.
"""

if keras.backend.backend() == "jax":
    devices = keras.distribution.list_devices()
    print("devices:", devices)
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    keras.utils.set_random_seed(0)
    jax_stage = build_stage()  # built after set_distribution: replicated on every device
    jax_history = jax_stage.fit(dataset(), epochs=EPOCHS, verbose=2).history
    samples = jax_stage.generate(labels=np.repeat(np.arange(10), 2), seed=0, num_steps=25 if FAST else 100,
                                 verbose=False)
    save_image_grid(samples, "distributed_training_jax_samples.png", labels=np.repeat(np.arange(10), 2), columns=10)
    keras.distribution.set_distribution(None)

"""
## JAX: several processes, and stages too large for one device

**Several processes** (the hosts of a TPU pod, several GPU machines): every process runs
the same script, and calls `keras.distribution.initialize(coordinator_address,
num_processes, process_id)` before anything touches JAX; `DataParallel(devices=
keras.distribution.list_devices())` then spans every process's devices. Give `fit` a
`tf.data` pipeline of *global* batches (Keras hands each process its slice), and give
`keras_cdm.callbacks.BackupAndRestore` the *same* folder in every process, on a file
system they all see: process 0 writes the backups and every process restores the same
one, so a killed set of processes resumes from one state. Tested with two processes on
loopback, killed and restarted ([docs/distribution.md](../../docs/distribution.md)).

**Sharded (model-parallel) training.** A paper-size stage holds about 16 bytes of float32
state per parameter (weights, Adam's two moments, the EMA): 12.7 GB for the 792 M base
model. `keras_cdm.distribution.model_parallel(unet_config, model_axis_size=M)` is a
`keras.distribution.ModelParallel` over a (batch, model) mesh whose `LayoutMap` splits
the large convolution, attention and embedding kernels along their output channels over
M devices; Keras shards the optimizer moments and the EMA like their variable. Build the
stage inside its scope. With `KERAS_BACKEND=jax` the cell below trains the small stage
sharded over this guide's two host devices (the layout's `min_size` lowered so that its
kernels are large enough to split) and reads back how much of each variable a device holds.
"""

if keras.backend.backend() == "jax":
    from keras_cdm import distribution as cdm_distribution

    unet_config = build_stage().unet.get_config()
    sharded = cdm_distribution.model_parallel(unet_config, model_axis_size=2, min_size=1000)
    with sharded.scope():
        keras.utils.set_random_seed(0)
        sharded_stage = build_stage()
    sharded_stage.fit(dataset(), epochs=1, verbose=2)
    for variable in sharded_stage.unet.weights[:6]:
        shard = variable.value.addressable_shards[0].data
        print(f"{variable.path:45s} {str(tuple(variable.shape)):18s} one device holds {tuple(shard.shape)}")
    layouts = cdm_distribution.layout_map(unet_config, sharded.device_mesh, min_size=1000)  # the same map
    print("bytes per device:", cdm_distribution.state_bytes_per_device(unet_config, layouts))
    keras.distribution.set_distribution(None)
else:
    print("Sharded training runs on the JAX backend: KERAS_BACKEND=jax python guides/distributed_training.py")

"""
## Memory for the paper's stages: `keras-cdm plan`

How many devices a paper stage needs, with and without sharding and activation
rematerialization (`DiffusionUNet(remat=True)`: the residual blocks are recomputed in
the backward pass), is arithmetic on shapes; `keras_cdm.memory_plan.plan` does it
without allocating the model (from the command line: `keras-cdm plan
cdm_imagenet64_to_256 --devices 64 --device-memory 16`). For the paper's 64-to-256
upsampler on a 64-chip TPU v3 (16 GiB a chip) at its batch of 1,024:
"""

from keras_cdm import memory_plan

print(memory_plan.plan("cdm_imagenet64_to_256", devices=64, device_memory_bytes=16 * 2**30).table())

"""
The four paper stages (float32, Adam and EMA, the paper's batch sizes; every row in
[docs/distribution_plan.md](../../docs/distribution_plan.md)):

| stage | state per device, replicated / model axis 8 | 64x TPU v3 (16 GiB) | 8x H100 (80 GiB) |
|---|---|---|---|
| cdm_imagenet32_base (792 M) | 14.76 / 1.85 GiB | remat, (32, 2) mesh, 64 a chip | remat, data parallel, 256 a GPU |
| cdm_imagenet32_to_64 (718 M) | 13.38 / 1.68 GiB | remat, data parallel, 2 a chip, 16 accumulation steps | remat, data parallel, 147 a GPU, 2 steps |
| cdm_imagenet64_to_128 (536 M) | 9.98 / 1.26 GiB | remat, data parallel, 8 a chip, 2 steps | remat, data parallel, 123 a GPU, 2 steps |
| cdm_imagenet64_to_256 (589 M) | 10.97 / 1.38 GiB | remat, data parallel, 1 a chip, 16 steps | remat, data parallel, 34 a GPU, 4 steps |

Without remat none fits its paper per-device batch; with it, all train data parallel
except the base model on 16 GiB chips, whose replicated state alone fills a chip.
"""

"""
## Batch size and learning rate

With data parallelism the quantity that matters for optimisation is the **global
batch**, `global batch = per-replica batch x number of replicas`: it is what one
optimizer step averages over.

- **Keep the global batch when you change the hardware.** The paper's global batches
  (Appendix B) are 2,048 for the 32x32 base and the 32->64 upsampler and 1,024 for the
  64->128 and 64->256 upsamplers, all with Adam at learning rate 1e-4 and an EMA of
  0.9999. On 64 accelerators that is 32 or 16 images per replica; on 8 GPUs, 256 or 128
  (`mixed_bfloat16` halves the activation memory). The
  learning rate then stays 1e-4 and results carry over from one setup to another.
- **If the global batch must change**, a rule of thumb is to scale the learning rate
  linearly with it (`lr = 1e-4 x global_batch / 2048`) and, for large increases, to
  ramp it up over the first few thousand steps (warm-up), as below. For a *smaller*
  global batch, keeping 1e-4 with Adam and training for more steps is the safer choice.
- **Count steps, not epochs.** A larger global batch means fewer steps per epoch; the
  paper's schedules are in steps, and the EMA momentum is per step (its window is about
  `1 / (1 - momentum)` steps: 0.9999 suits hundreds of thousands of steps, a short run
  needs e.g. 0.999).
- Batch statistics are not an issue: the U-Net normalises with GroupNorm, per example,
  so the per-replica batch size does not change what the model computes.

A learning rate with linear warm-up, then constant, for a global batch of 4,096 (twice
the paper's):
"""

global_batch = 4096
peak = 1e-4 * global_batch / 2048
warmup = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=1, alpha=1.0, warmup_target=peak,
                                                warmup_steps=5000)
print({step: f"{float(warmup(step)):.2e}" for step in (0, 1000, 2500, 5000, 100_000)})
# stage.compile(learning_rate=warmup)   # DiffusionModel.compile passes it to Adam (EMA kept)

"""
## Summary

- Build and compile the stage inside `strategy.scope()` (TensorFlow), or after
  `keras.distribution.set_distribution(DataParallel())` (JAX); nothing else changes.
- Batch the dataset with the global batch size; keep the paper's global batch and
  learning rate when you can.
- Save and sample the trained stage as on one device.
"""
