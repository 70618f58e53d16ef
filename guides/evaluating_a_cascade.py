"""
Title: Evaluating a cascade
Author: keras_cdm developers
Date created: 2026/11/27
Last modified: 2026/11/27
Description: Measure a trained cascade with FID, Inception Score and Classification Accuracy Score, diagnose its stages and search a few-step noise schedule.
Accelerator: None
"""

"""
## Introduction

The paper judges its cascades by three numbers (section 4.1):

- **FID** (Fréchet Inception Distance): the distance between the feature statistics
  (mean and covariance) of real and generated images; lower is better. It measures
  quality and diversity together.
- **Inception Score (IS)**: how confidently a classifier recognises each sample and
  how evenly the samples cover the classes; higher is better.
- **Classification Accuracy Score (CAS)**: train a classifier *only on generated
  images* (with the labels they were generated for) and test it on real held-out images.
  It is high only if the samples of every class look like that class, with its variety.

It also uses two post-training tools that `keras_cdm.search` provides: comparing an
upsampler conditioned on generated versus real low-resolution images (how much error
the earlier stages pass on), and searching the inference noise schedule of an upsampler
trained on continuous noise levels so that it samples well in a few steps (section 4.4,
Figure 8).

This guide runs all of them on `cdm_mnist32`, the 8->16->32 digit cascade that ships
with `keras_cdm`, against real MNIST digits. `scripts/evaluate_cdm_mnist32.py` does the
same at full scale; its results are in `docs/cdm_mnist32.md` and quoted below.
"""

"""
## Setup

`KERAS_CDM_GUIDES_FAST=1` shrinks sample counts, step counts and training epochs so that
the guide runs in about a minute; it exists for continuous integration, and its numbers
are then meaningless.
"""

import os

os.environ["KERAS_BACKEND"] = os.environ.get("KERAS_BACKEND", "tensorflow")
FAST = os.environ.get("KERAS_CDM_GUIDES_FAST") == "1"

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from keras_cdm import CascadedDiffusionPipeline, save_image_grid
from keras_cdm import data, evaluation, search
from keras_cdm.images import from_uint8

keras.utils.set_random_seed(0)
NUM_SAMPLES = 20 if FAST else 500  # the paper uses 50,000; see "How many samples" below

"""
## The cascade and the real digits

`from_preset("cdm_mnist32")` loads the three stages with their EMA weights and the
sampling settings they were shipped with, 40 network evaluations per image: 20 ancestral
steps for the base stage, 10 DPM-Solver++ (SDE) steps for each upsampler (the last one's
over its 25-step inference noise schedule), the split the step-budget search below chose.

`data.mnist_subset` gives the digits the cascade was trained on (`"train"`, 4,500) and
the 500 it never saw (`"heldout"`, 50 per class), as uint8 32x32 greyscale arrays.
"""

pipeline = CascadedDiffusionPipeline.from_preset("cdm_mnist32")
for name, settings in zip(pipeline.stage_names, pipeline.sampling):
    print(name, {k: v for k, v in settings.items() if v not in (None, False, 0, 0.0)})


def balanced(labels, per_class):
    """Indices of `per_class` examples of every class, interleaved: 0, 1, ..., 9, 0, 1, ..."""
    return np.stack([np.flatnonzero(labels == c)[:per_class] for c in range(10)], axis=1).ravel()


train_images, train_labels = data.mnist_subset("train")  # sorted by class
heldout_images, heldout_labels = data.mnist_subset("heldout")
if FAST:
    keep = balanced(train_labels, 100)
    train_images, train_labels = train_images[keep], train_labels[keep]
print("train", train_images.shape, "held out", heldout_images.shape)

"""
## Generating the samples

Sample the cascade with balanced labels. Every image comes from its own seed
(`example_seeds(seed, i)`), so the samples do not depend on `batch_size`, which only
bounds memory. `return_intermediates=True` also returns every stage's output (kept for
the noise-schedule search below). In fast mode the steps of every stage are cut down.
"""

if FAST:
    pipeline.set_sampling("base", num_steps=10)
    pipeline.set_sampling("sr16", num_steps=10)
    pipeline.set_sampling("sr32", noise_schedule={"schedule": "linear", "num_timesteps": 10, "beta_start": 1e-4,
                                                  "beta_end": 0.6, "variance": "fixed_small"})
sample_labels = np.arange(NUM_SAMPLES) % 10
samples, stages = pipeline.generate(labels=sample_labels, seed=0, batch_size=250, return_intermediates=True,
                                    verbose=False)
print(samples.shape, samples.dtype, "| seconds per stage:",
      {name: round(t, 1) for name, t in pipeline.last_timings.items()})
order = np.argsort(sample_labels[:100], kind="stable")
save_image_grid(samples[:100][order], "evaluating_a_cascade_samples.png", labels=sample_labels[:100][order],
                columns=10)

"""
For tens of thousands of samples, do not hold them all: `pipeline.iter_generate(labels,
seed=0, chunk_size=500)` yields the same images chunk by chunk, and
`evaluation.compute_statistics(chunks, extractor, num_samples=..., inception_score=True)`
consumes them batch by batch (float64 running means and covariances).
"""

"""
## A feature extractor

FID and IS need a classifier's features and logits. The paper's is Inception-v3
trained on ImageNet: `evaluation.InceptionV3Features()`. It reads Keras' ImageNet
weights file from the Keras cache, and without network access it fails at once with a
message saying where to put the file (`allow_download=True` fetches it, 92 MB). Use it
to compare with published numbers on natural images:
"""

try:
    inception = evaluation.InceptionV3Features()  # weights="imagenet", or a path to the .h5 file
except FileNotFoundError as error:
    inception = None
    print("Inception-v3 weights not available:", str(error).split(":")[0])

if inception is not None and not FAST:
    # 2048-d pool features and 1000 logits of images resized to 299x299 (greyscale repeated to RGB).
    inception_real = evaluation.compute_statistics(heldout_images, inception)
    inception_stats, inception_is = evaluation.compute_statistics(samples, inception, inception_score=True)
    print(f"Inception FID {evaluation.fid(inception_real, inception_stats):.2f}, IS {inception_is.result()}")

"""
For digits, an ImageNet classifier is a poor judge. A *domain* FID uses the features of a
classifier trained on the real images of the domain. `evaluation.ClassifierFeatures`
turns any functional Keras classifier into an extractor: by default the features are the
input of its last layer and the logits its output. Called on a batch of images (uint8,
or floats in [-1, 1]) it returns `{"features": ..., "logits": ...}`. Here the classifier is
`evaluation.default_cas_classifier` (a small CNN), trained on the real training digits.
"""

classifier = evaluation.default_cas_classifier((32, 32, 1), 10, width=8 if FAST else 16)
classifier.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
classifier.fit(from_uint8(train_images), train_labels, batch_size=64,
               epochs=1 if FAST else 5, verbose=2)
extractor = evaluation.ClassifierFeatures(classifier)
outputs = extractor(heldout_images)
accuracy = np.mean(np.argmax(outputs["logits"], axis=1) == heldout_labels)
print(f"features {outputs['features'].shape}, logits {outputs['logits'].shape}")
print(f"classifier accuracy on the held-out digits: {accuracy:.3f}")

"""
## FID and Inception Score

`compute_statistics` runs the extractor over images (uint8, or floats in [-1, 1]) and
returns their `FeatureStatistics`; with `inception_score=True` also the Inception Score
accumulator. Reference statistics of the real data are computed once and can be saved
(`stats.save("train_stats.npz")`, `FeatureStatistics.load`).

FID values depend on the features (these are not Inception's) and shrink as the number
of samples grows, so read them against a floor measured the same way: the FID between
real held-out digits and the training digits.
"""

train_stats = evaluation.compute_statistics(train_images, extractor)
real_pick = balanced(heldout_labels, NUM_SAMPLES // 10)  # as many real digits as samples
heldout_stats, heldout_is = evaluation.compute_statistics(heldout_images[real_pick], extractor,
                                                          inception_score=True)
sample_stats, sample_is = evaluation.compute_statistics(samples, extractor, inception_score=True)

predicted = np.argmax(extractor(samples)["logits"], axis=1)
print(f"FID, samples vs training digits:     {evaluation.fid(train_stats, sample_stats):8.2f}")
print(f"FID, real held-out vs training (floor): {evaluation.fid(train_stats, heldout_stats):5.2f}")
print("Inception Score of the samples (mean, std over 10 splits): %.2f, %.2f" % sample_is.result())
print("Inception Score of real digits:                            %.2f, %.2f" % heldout_is.result())
print(f"samples recognised as the digit they were generated for: {np.mean(predicted == sample_labels):.1%}")

"""
Only the comparison with the floor means something: `scripts/evaluate_cdm_mnist32.py`,
with 5,000 samples and a classifier trained 15 epochs (other features, so another
scale), measures a domain FID of 278.7 against a floor of 242.4, and 96.4 % of the
samples classified as the digit they were conditioned on (`docs/cdm_mnist32.md`). The
Inception Score of a 10-class problem is at most 10 (every sample recognised with
certainty, all classes equally often); real digits come close to it.
"""

"""
## Classification Accuracy Score

`classification_accuracy_score` trains a fresh classifier (by default the same small
CNN; pass `classifier=` for another, the paper uses a ResNet-50) on generated images and
their labels only, and tests it on real held-out images. The same classifier trained on
as many real images is the reference: a gap means the samples miss something of the
real data. The result also holds the per-class accuracy (the paper's Figure 5).
"""

cas_epochs = 1 if FAST else 20
cas = evaluation.classification_accuracy_score(samples, sample_labels, heldout_images, heldout_labels,
                                               num_classes=10, epochs=cas_epochs, seed=1)
real_train = balanced(train_labels, NUM_SAMPLES // 10)
real = evaluation.classification_accuracy_score(train_images[real_train], train_labels[real_train],
                                                heldout_images, heldout_labels, num_classes=10,
                                                epochs=cas_epochs, seed=1)
print(f"CAS top-1 {cas['top1']:.3f}, top-5 {cas['top5']:.3f} (trained on {NUM_SAMPLES} generated digits)")
print(f"real    top-1 {real['top1']:.3f}, top-5 {real['top5']:.3f} (trained on {NUM_SAMPLES} real digits)")

figure, axis = plt.subplots(figsize=(6, 2.8))
axis.bar(np.arange(10) - 0.2, real["per_class_top1"], width=0.4, label="trained on real digits")
axis.bar(np.arange(10) + 0.2, cas["per_class_top1"], width=0.4, label="trained on generated digits (CAS)")
axis.set_xticks(range(10))
axis.set_xlabel("class")
axis.set_ylabel("top-1 accuracy\n(real held-out digits)", fontsize=9)
axis.set_ylim(0, 1.05)
axis.legend(fontsize=8, loc="lower right")
figure.tight_layout()
figure.savefig("evaluating_a_cascade_cas.png", dpi=100)
plt.close(figure)

"""
Measured on 5,000 samples: CAS top-1 95.4 % against 97.6 % for the classifier trained on
the 4,500 real digits.
"""

"""
## Per-stage diagnostics

A cascade's error compounds: each upsampler is trained on downsampled *real* images but
conditioned, when sampling, on the previous stage's *samples*. `search.stage_diagnostics`
measures a stage's output both ways, with the pipeline's current settings: conditioned on
the earlier stages' samples, and on real low-resolution images (here the held-out digits
downsampled to 16x16 exactly as the upsampler downsampled its training images). A large
gap points at the earlier stages, or at too little conditioning augmentation; two equally
bad numbers point at the stage itself.

`search.sample_quality(extractor, reference)` builds the `evaluate` callable the search
functions take: uint8 images in, a dict of scores (`fid`, and `is` when asked) out.
"""

num_diagnostic = NUM_SAMPLES if FAST else 100  # fast: same batch shape, no new tracing
evaluate32 = search.sample_quality(extractor, reference=train_stats, inception_score=False, batch_size=250)
pick = balanced(heldout_labels, num_diagnostic // 10)
real16 = np.asarray(data.resize_images(from_uint8(heldout_images[pick]), 16))
diagnostics = search.stage_diagnostics(pipeline, "sr32", evaluate32, heldout_labels[pick], real16, seed=0,
                                       batch_size=250)
print(f"sr32 output FID, conditioned on generated 16x16 samples: {diagnostics['generated']['fid']:.2f}")
print(f"sr32 output FID, conditioned on real 16x16 digits:       {diagnostics['real']['fid']:.2f}")

"""
When the two numbers are close, the 16x16 samples of the earlier stages are nearly as good
an input as real digits, and what limits the output is the 16->32 stage itself. A second
check asks whether that stage earns its place at all: `search.baseline_comparison` scores
each upsampler against a bicubic resize of its own inputs, by the FID and by pixel statistics
(the near-black fraction, a histogram distance), which see grain on a black background that a
classifier's features miss. It found the first `cdm_mnist32`'s 16->32 stage worse than the
resize; the cause was an EMA that kept 12 % of the initial weights (`docs/cdm_mnist32.md`).

The paper's Table 3 is the same comparison swept over the Gaussian augmentation level s
of the 32->64 upsampler: `search.search_augmentation_level(pipeline, "sr16", levels,
evaluate, labels, modes=("non_truncated", "truncated"), apply_best=True)`. On
`cdm_mnist32` (`docs/cdm_mnist32.md`, 500 samples), s = 0 was best for the 8->16 stage
(FID 60.24, tied with s = 41, rising to 70.98 at s = 481): its base stage's 8x8 samples are
already close to real ones, so there is little mismatch for augmentation to repair. With the
base stage sampled in 5 steps instead, s = 201 beats s = 0 (67.41 vs 72.97).
"""

"""
## A few-step noise schedule for the last upsampler

The 16->32 stage was trained on continuous noise levels (`conditioning="noise_level"`,
section 4.4), so it can sample with *any* noise schedule, of any length. Fewer steps are
faster, but a short schedule must still start from (nearly) pure noise and spend its steps
well. `search.search_noise_schedule` tries linear schedules over a grid of `beta_start`
and `beta_end`, or the `schedules` you give (here: a few values of `beta_end`),
conditioned on one fixed set of earlier-stage samples, scores each, prints a table, saves
a plot and, with `apply_best=True`, writes the winner into the pipeline's sampling
settings (saved with `save_to_preset`). Without `low_res_images` it first runs the
earlier stages; here it reuses the 16x16 outputs of the samples generated above.
"""

num_search = NUM_SAMPLES if FAST else 200
search_steps = 10
beta_ends = (0.6, 0.9) if FAST else (0.1, 0.3, 0.6, 0.9)
# Linear schedules from beta = 1e-4 to each beta_end, with the posterior ("fixed_small") variances:
# the training schedule's "fixed_large" variances leave visible noise after few steps.
schedules = [{"schedule": "linear", "num_timesteps": search_steps, "beta_start": 1e-4, "beta_end": end,
              "variance": "fixed_small"} for end in beta_ends]
result = search.search_noise_schedule(
    pipeline, "sr32", num_steps=search_steps, evaluate=evaluate32, labels=sample_labels[:num_search], seed=0,
    schedules=schedules, low_res_images=stages["sr16"][:num_search], batch_size=250,
    plot_path="evaluating_a_cascade_schedule.png", apply_best=True)
print("best:", result.best)
print("sr32 now samples with", pipeline.sampling[2]["noise_schedule"])

"""
At full scale (`docs/cdm_mnist32.md`, 500 samples, FID vs training digits), the best
linear schedule for each number of steps was:

| steps | best `beta_end` | FID |
| ---: | ---: | ---: |
| 4 | 0.9 | 649.0 |
| 10 | 0.6 | 464.4 |
| 25 | 0.3 | 403.4 |
| 100 | 0.2 | 371.5 |

The fewer the steps, the larger the best `beta_end`: a short schedule needs big steps to
reach pure noise. Unlike the paper's 64->256 model, which was as good at 100 steps as at
many more, this small stage keeps improving up to 100 steps; the preset ships 25 steps,
8 % worse than 100 for a quarter of the time.

## A sampler and a step budget for the whole cascade

Every step of every stage costs one network evaluation (NFE) per image, and the stages
neither cost the same nor need the same number of steps. `step_budget.search_step_budget`
finds the split of a total budget: it first measures each stage's candidates (samplers,
step spacings, step counts) with the other stages at their current settings, then samples
the best-ranked combinations within the budget end to end. `evaluate` may return several
scores: `metric` picks the winner, and `guards` names scores the winner must not make worse
than the current settings. Here the FID, the share of samples recognised as their digit
(a precision-like score: few-step samplers can raise FID and lose it) and the pixel
histogram distance to real digits (which sees grain that features miss).
"""

from keras_cdm import step_budget

num_budget = NUM_SAMPLES if FAST else 200
budget_labels = sample_labels[:num_budget]
real32 = from_uint8(train_images)


def judge32(images):
    recognised = np.mean(np.argmax(extractor(images)["logits"], axis=1) == budget_labels)
    return {**evaluate32(images), "recognition": float(recognised),
            "histogram_tv": evaluation.histogram_distance(images, real32)}


budget_result = step_budget.search_step_budget(
    pipeline, budget=30 if FAST else 40, evaluate=judge32, labels=budget_labels, seed=0,
    samplers=("ancestral", "dpm++2m-sde") if FAST else ("ancestral", "dpm++2m", "dpm++2m-sde"),
    step_counts=(5,) if FAST else (5, 10, 20), guards={"recognition": "higher"}, max_cascades=2 if FAST else 3,
    batch_size=250, plot_path="evaluating_a_cascade_budget.png", verbose=False)
print(budget_result.cascades.table())
print("reference:", budget_result.reference)
print("best within the guards:", budget_result.best)

"""
Without a dict of per-stage `evaluate` callables (one per image size, as
`scripts/evaluate_cdm_mnist32.py` passes), every candidate is scored at the cascade's
output. `apply_best=True` writes the winner into the pipeline; `save_to_preset` keeps it.
The preset's own settings came from this search at full scale (5,000 samples, 40 NFE,
`docs/sampling.md`): the per-stage curves there show DPM-Solver++ needing about 10 steps,
and the 16->32 stage needing a stochastic sampler.

## How many samples

The paper reports FID on 50,000 samples. FID is biased upwards for small sample sets, so
only compare numbers computed with the same number of samples and the same extractor;
500 samples rank settings reliably here but sit far above the 50,000-sample value. The
command line does the same measurements without code:
`keras-cdm evaluate --preset cdm_mnist32 --metric fid --data my_digits/ --num-samples 5000`.
"""
