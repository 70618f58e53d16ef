"""
Title: Conditioning augmentation, explained by experiment
Author: keras_cdm developers
Date created: 2026/11/27
Last modified: 2026/11/27
Description: Why a cascade of diffusion models needs noisy conditioning, what truncated and non-truncated augmentation do, and how to pick the augmentation level s, measured on the cdm_mnist32 cascade.
Accelerator: None
"""

"""
## Introduction

A cascaded diffusion model generates a small image with a base model, then enlarges it with
super-resolution models (upsamplers), each conditioned on the previous stage's output. The
upsamplers are trained on *real* images, downsampled: during training they only ever see
perfect low-resolution inputs. At sampling time they are fed the *generated* output of the
stage before, which has its own small mistakes. An upsampler that trusts its input upsamples
those mistakes too, and every stage adds its own: the errors compound. This is a train/test
mismatch, like exposure bias in sequence models.

The paper's answer (Ho et al. 2021, section 3) is **conditioning augmentation**: corrupt the
low-resolution input during training, so that the upsampler learns not to trust its fine
details. Two kinds worked best:

- **Gaussian augmentation** at low resolutions (section 3.2, 3.3): add the noise of the low
  resolution model's own forward diffusion process, up to a level s;
- **blur augmentation** at high resolutions (section 3.1): blur half of the training inputs
  a little.

In this guide we measure both on `cdm_mnist32`, a small 8x8 -> 16x16 -> 32x32 cascade of MNIST
digits trained by this library: its `sr16` stage (8 -> 16) was trained with Gaussian
augmentation amortized over s in [0, 500], its `sr32` stage (16 -> 32) with blur.
"""

"""
## Setup

The backend is chosen before Keras is imported. `FAST` is set by the continuous-integration
tests (`KERAS_CDM_GUIDES_FAST=1`): it uses fewer sampling steps, fewer images and fewer levels
so that the guide runs in about a minute. The numbers it prints then are far too noisy to
read; run without it (a few minutes on a laptop CPU) for the real measurements.
"""

import os

os.environ["KERAS_BACKEND"] = os.environ.get("KERAS_BACKEND", "tensorflow")
FAST = os.environ.get("KERAS_CDM_GUIDES_FAST") == "1"

import keras
import numpy as np

from keras_cdm import CascadedDiffusionPipeline, save_image_grid
from keras_cdm.data import mnist_subset, resize_images
from keras_cdm.evaluation import ClassifierFeatures, compute_statistics
from keras_cdm.images import from_uint8
from keras_cdm.search import sample_quality, search_augmentation_level, stage_diagnostics

NUM_SAMPLES = 20 if FAST else 100  # images per measurement (balanced over the 10 digits)
BATCH = 10  # one batch size throughout, so that each sampling loop is compiled once
# Levels s to try. Truncation stops the base stage at step s - 1, which its respaced
# sampling grid must visit: every 100th step with "ddim10", every 20th with "ddim50".
LEVELS = (0, 101, 301) if FAST else (0, 41, 101, 201, 301, 481)

"""
## The cascade and its augmentations

We load the whole cascade, and build a second pipeline of its first two stages only (it
shares their weights): everything about Gaussian augmentation happens between the base stage
and `sr16`. To keep the guide to a few minutes, `sr16` samples with 25 steps instead of the
preset's 50 (10 in fast mode, where the base stage also takes 10 instead of 50).
"""

pipeline = CascadedDiffusionPipeline.from_preset("cdm_mnist32")
head = CascadedDiffusionPipeline(pipeline.stages[:2], pipeline.sampling[:2])
base, sr16 = head.stages
head.set_sampling("sr16", num_steps=10 if FAST else 25)
if FAST:
    head.set_sampling("base", num_steps="ddim10")

for stage in pipeline.stages[1:]:
    config = stage.augmentation.get_config()
    settings = {key: config[key] for key in ("max_level", "num_timesteps", "schedule", "sigma_range", "probability",
                                             "kernel_size") if key in config}
    print(f"{stage.name}: {type(stage.augmentation).__name__} {settings}")

"""
`sr16` was trained on inputs `z_s ~ q(z_s | z_0)`: the clean 8x8 digit `z_0` pushed `s` steps
through the *base stage's* forward process (1000 steps, cosine schedule), with `s` drawn
uniformly in [0, 500] for each example, and the U-Net is told `s` through a second time
embedding. One trained model thus covers every level, and `s` becomes a sampling setting
that can be picked after training (section 3.2).

The forward process keeps a fraction `sqrt(alpha_bar_s)` of the signal and adds Gaussian noise
of standard deviation `sqrt(1 - alpha_bar_s)`:
"""

augmentation = sr16.augmentation
alphas_cumprod = augmentation.diffusion.alphas_cumprod  # float64 numpy, index s - 1
print("    s   signal  noise")
for s in LEVELS:
    a = 1.0 if s == 0 else alphas_cumprod[s - 1]
    print(f"{s:5d}   {np.sqrt(a):.3f}   {np.sqrt(1 - a):.3f}")

"""
This is what the upsampler sees at each level, for ten real held-out digits (never trained
on) downsampled to 8x8 with the upsampler's own resize (`DiffusionModel.downsample`). One
row per level, from s = 0 (clean) down.
"""

real, real_labels = mnist_subset("heldout")  # uint8 (500, 32, 32, 1)
pick = np.concatenate([np.flatnonzero(real_labels == digit)[: NUM_SAMPLES // 10] for digit in range(10)])
pick = pick.reshape(10, -1).T.reshape(-1)  # digits 0..9, then 0..9 again, ...
real16 = np.asarray(resize_images(from_uint8(real[pick]), 16))  # sr16's training size
labels = real_labels[pick]
low8 = keras.ops.convert_to_numpy(sr16.downsample(real16))  # floats in [-1, 1], (NUM_SAMPLES, 8, 8, 1)

noise = np.random.default_rng(0).standard_normal((10, 8, 8, 1)).astype("float32")
rows = [keras.ops.convert_to_numpy(augmentation.augment(low8[:10], np.full(10, s), noise)) for s in LEVELS]
save_image_grid(np.concatenate(rows), "conditioning_augmentation_levels.png", columns=10)

"""
At s = 101 the digits are still plainly visible, at s = 301 only their rough shape is, and
by s = 481 little is left: the upsampler has to invent almost everything, guided by the label.

**Truncated or not?** At sampling time there are two ways to get such a `z_s` from the base
stage:

- *non-truncated* (section 3.3): run the base stage to the end (`z_0`), then add the forward
  process noise of level s, exactly as in training;
- *truncated* (section 3.2): stop the base stage's reverse process at step s and hand its
  intermediate, still-noisy state `z_s` to the upsampler. This saves the last s steps of the
  base stage; if the base model is good, both give `z_s` with the same distribution.

In a `CascadedDiffusionPipeline` both are sampling settings of the upsampler:
`set_sampling("sr16", augmentation_level=s, truncated=True | False)`.

## A quality measure

To compare settings we need a number. The paper uses FID with Inception-v3 features; for
16x16 digits we use the same Frechet distance on the features of a small digit classifier
trained on the real training digits (a *domain FID*: its scale is arbitrary, only
comparisons between settings mean something). We give the classifier a 64-dimensional
feature layer: with a hundred samples, the Frechet distance between Gaussians in a few dozen
dimensions is much better determined than in thousands. `evaluation.ClassifierFeatures` turns
any Keras classifier into a feature extractor, and `search.sample_quality` turns an extractor
and reference statistics into the `evaluate(images) -> {"fid": ...}` function the searches
take.
"""

train, train_labels = mnist_subset("train")
train16 = np.asarray(resize_images(from_uint8(train), 16))

keras.utils.set_random_seed(0)
layers = keras.layers
inputs = keras.Input((16, 16, 1))
x = layers.MaxPooling2D()(layers.Conv2D(32, 3, padding="same", activation="relu")(inputs))
x = layers.MaxPooling2D()(layers.Conv2D(64, 3, padding="same", activation="relu")(x))
features = layers.Dense(64, activation="relu", name="features")(layers.Flatten()(x))
classifier = keras.Model(inputs, layers.Dense(10)(layers.Dropout(0.3)(features)))
classifier.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
classifier.fit(train16, train_labels, batch_size=64, epochs=1 if FAST else 10, verbose=0)
heldout16 = np.asarray(resize_images(from_uint8(real), 16))
print("classifier accuracy on the held-out digits:",
      round(classifier.evaluate(heldout16, real_labels, verbose=0)[1], 3))

extractor = ClassifierFeatures(classifier, feature_layer="features")
versus_training = sample_quality(extractor, reference=compute_statistics(train16, extractor),
                                 inception_score=False)
versus_sources = sample_quality(extractor, reference=compute_statistics(real16, extractor),
                                inception_score=False)

"""
`versus_training` compares 16x16 outputs with the 4,500 training digits. `versus_sources`
compares them with the very digits whose 8x8 versions we feed in: when the upsampler is given
real digits, this measures how faithful its outputs are to them.

## Experiment 1: how large is the mismatch here?

`stage_diagnostics` runs `sr16` (at its current setting, s = 0) twice: on the base stage's
generated 8x8 samples, and on real 8x8 digits with the same labels. The gap between the two
is the compounding error this cascade has to deal with.
"""

print(stage_diagnostics(head, "sr16", versus_training, labels, low8, batch_size=BATCH))

"""
On 500 samples (`docs/cdm_mnist32.md`) the two FIDs are 62.0 (generated inputs) and 75.6
(real inputs): at 8x8 this base stage is good enough that the upsampler does *not* do worse on
its samples. There is little mismatch to repair, which is not the paper's situation: its
32x32 ImageNet base model is far from perfect. So let us make the previous stage worse.

## Experiment 2: a previous stage that makes mistakes

We add a typical kind of error to the real 8x8 digits: four stray pixels of random
brightness per image, details that no real digit has. Then we let `sr16` upsample them at
several levels s, all with the same seed. First row: the corrupted 8x8 inputs; then one row
per level, s = 0 at the top.
"""


def add_stray_pixels(images, count=4, seed=0):
    """Sets `count` random pixels of each image to a random brightness."""
    rng = np.random.default_rng(seed)
    images = images.copy()
    for image in images:
        where = rng.choice(image.size, count, replace=False)
        image.reshape(-1)[where] = rng.uniform(0.0, 1.0, count)
    return images


corrupted = add_stray_pixels(low8)
rows = [np.repeat(np.repeat(corrupted[:10], 2, axis=1), 2, axis=2)]  # enlarged to 16x16
for s in LEVELS:
    head.set_sampling("sr16", augmentation_level=s)
    rows.append(head.generate(labels=labels[:10], seed=0, batch_size=BATCH, start_stage="sr16",
                              low_res_images=corrupted[:10], output="float", verbose=False))
head.set_sampling("sr16", augmentation_level=0)
save_image_grid(np.concatenate(rows), "conditioning_augmentation_stray_pixels.png", columns=10)

"""
At s = 0 the upsampler believes every pixel it is given: the stray pixels become blobs and
extra strokes, and some digits change shape. With enough augmentation (around s = 200 here)
it treats its input as a noisy hint and draws a clean digit that still follows it. With too
much it stops following the input at all, and at the largest levels some digits change shape
again, a few even their class. This is the mechanism the paper describes: "a sufficient amount of Gaussian conditioning augmentation prevents the
super-resolution model from attempting to upsample erroneous, out-of-distribution details".

`search_augmentation_level` measures this over s. With `low_res_images` it conditions on the
given images (the paper's Table 3b setting); we run it on the clean and on the corrupted
inputs, and measure fidelity to the source digits.
"""

results = {}
for name, inputs in [("clean 8x8", low8), ("with stray pixels", corrupted)]:
    results[name] = search_augmentation_level(head, "sr16", LEVELS, versus_sources, labels, low_res_images=inputs,
                                              batch_size=BATCH, verbose=False)

print("FID vs the source digits")
print("    s  " + "  ".join(f"{name:>17s}" for name in results))
for i, s in enumerate(LEVELS):
    print(f"{s:5d}  " + "  ".join(f"{result.rows[i]['fid']:17.2f}" for result in results.values()))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

figure, axis = plt.subplots(figsize=(5, 3.2), dpi=100)
for name, result in results.items():
    axis.plot(LEVELS, [row["fid"] for row in result.rows], marker="o", label=name)
axis.set_xlabel("augmentation level s")
axis.set_ylabel("FID vs the source digits")
axis.set_title(f"sr16 on real 8x8 inputs ({NUM_SAMPLES} digits)", fontsize=9)
axis.legend()
figure.tight_layout()
figure.savefig("conditioning_augmentation_fidelity.png")
plt.close(figure)

"""
With clean inputs, fidelity only gets worse as s grows: augmentation throws away information
that a correct input carries (the paper's Table 3b). With corrupted inputs it first gets
*better*, then worse again: some augmentation hides the mistakes, too much hides the digit as
well. Our full-mode run (TensorFlow, 100 digits) measured, with stray pixels, FID 8.75 at
s = 0, 7.63 at s = 201 and 12.1 at s = 481; with clean inputs, 1.31 at s = 0 rising steadily
to 12.4 at s = 481. (Fast mode uses 20 digits and 10 steps: its numbers are noise.)

This up-then-down curve on generated inputs is exactly what the paper found for its 32->64
ImageNet upsampler (Table 3a: FID 1.71 at s = 0, 1.48 around s = 501 to 751, then worse again).

## Experiment 3: the real cascade, truncated and non-truncated

Now the actual setting: `sr16` conditioned on the base stage's samples, for each level s,
both ways. In non-truncated mode the base stage runs once and its samples are re-noised for
every s; in truncated mode it is stopped at z_s, once per level. `plot_path` saves the
search's own plot; `apply_best=True` would also write the best setting into the pipeline.
"""

table3a = search_augmentation_level(head, "sr16", LEVELS, versus_training, labels,
                                    modes=("non_truncated", "truncated"), batch_size=BATCH, verbose=False,
                                    plot_path="conditioning_augmentation_search.png")
print(table3a.table())
print("best:", table3a.best)

"""
The same seed across levels, ten digits: non-truncated rows first (s growing downwards),
then truncated rows. Higher levels give the upsampler more freedom, so the digits drift
away from the base stage's 8x8 sample; at the highest levels a few no longer look like their
digit at all. (In truncated mode the 8x8 input itself changes with s, since the base stage
stops at a different step.)
"""

rows = []
for truncated in (False, True):
    for s in LEVELS:
        head.set_sampling("sr16", augmentation_level=s, truncated=truncated)
        rows.append(head.generate(labels=np.arange(10), seed=1, batch_size=BATCH, verbose=False))
head.set_sampling("sr16", augmentation_level=0, truncated=False)
save_image_grid(np.concatenate(rows), "conditioning_augmentation_same_seed.png", columns=10)

"""
Measured on 500 samples (`docs/cdm_mnist32.md`, `scripts/evaluate_cdm_mnist32.py`, FID vs the
training digits):

| s | non-truncated | truncated |
| ---: | ---: | ---: |
| 0 | **60.24** | **60.24** |
| 41 | **60.23** | 60.43 |
| 101 | 60.81 | 60.45 |
| 201 | 61.88 | 61.59 |
| 301 | 64.41 | 65.56 |
| 481 | 70.98 | 72.71 |

There, s = 0 and s = 41 tie, quality degrades slowly up to s = 201 (by 3 %) and fast beyond. With 100
samples, as above, small levels (up to about s = 200) are within the noise of s = 0, sometimes
slightly better, and large levels clearly hurt. Either way there is little for augmentation
to repair: as Experiment 1 showed, this base stage's 8x8 samples are already close to real
ones (Experiment 2 shows what happens when they are not), unlike the paper's 32x32 ImageNet
samples. Fed a base stage that makes mistakes (sampled with 5 steps instead of 50), the same
upsampler does gain from augmentation, as the paper found: 72.97 at s = 0, 67.41 at s = 201
(`docs/cdm_mnist32.md`, "Table 3a with a real mismatch"). Truncated and non-truncated are close to each other, as in the paper, which
therefore recommends non-truncated augmentation: the base stage runs once for the whole
search over s, and its samples can be kept. The shipped preset samples `sr16` at s = 0. On
your own cascade, run the search: the best level depends on how good the earlier stages are.

## Blur augmentation for the last stage

At 128x128 and 256x256 the paper found Gaussian noise augmentation harmful, and used blur
instead (sections 3.1 and 4.4): during training, half of the low-resolution inputs are blurred
with a 3x3 Gaussian filter whose sigma is drawn in U(0.4, 0.6); at sampling time nothing is
blurred. The upsampler learns not to rely on the sharpest details of its input, which are
the ones the previous upsampler is least sure of. `cdm_mnist32`'s `sr32` stage (16 -> 32) is
trained this way. Real 16x16 digits, sharp and blurred with sigma 0.4, 0.5 and 0.6:
"""

blur = pipeline.stages[2].augmentation
rows = [real16[:10]] + [keras.ops.convert_to_numpy(blur.blur(real16[:10], np.full(10, sigma, "float32")))
                        for sigma in (0.4, 0.5, 0.6)]
save_image_grid(np.concatenate(rows), "conditioning_augmentation_blur.png", columns=10)

"""
A mild change for the eye, but it matters: two `sr32` stages trained identically except for
blur augmentation, fed the same 1,000 generated 16x16 digits, give the final 32x32 cascade
a FID of 345.7 with blur and 406.3 without (`docs/cdm_mnist32.md`, measured on the first
cascade), 15 % better. The paper's
64->256 upsampler gained from 7.26 to 6.18 (Table 4a).

## Summary

- Train every upsampler with conditioning augmentation: `GaussianConditioningAugmentation`
  (amortized over s, with `augmentation_level_embedding=True` in the U-Net) at low
  resolutions, `BlurConditioningAugmentation` at high ones.
- After training, pick s with `search_augmentation_level` on *generated* inputs; non-truncated
  mode is as good as truncated and cheaper to search. Save the chosen setting with the preset
  (`apply_best=True`, then `pipeline.save_to_preset(...)`).
- The better the earlier stages, the less augmentation is needed; conditioned on real
  inputs, augmentation only costs fidelity.
"""
