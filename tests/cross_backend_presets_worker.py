"""Saves or loads the presets of tests/cross_backend_presets_test.py under one backend.

python -m tests.cross_backend_presets_worker BACKEND ROOT save|load

save: under ROOT/BACKEND, a stage preset and a cascade preset of the tiny cascade (its
    weights set from numpy draws, the same under every backend), `weights.npz` (every
    weight, read back from the saving model) and `images.npz` (what this backend samples
    from the presets it just saved, loaded back).
load: for every other backend's folder, loads both presets, checks each weight is
    bit-identical to that folder's `weights.npz` and that the images sampled here equal
    this backend's `images.npz` (same weights and seed on one backend: same images).
Prints one JSON line: the seconds each part took.
"""

import os
import sys

BACKEND, ROOT, PHASE = sys.argv[1], sys.argv[2], sys.argv[3]
os.environ["KERAS_BACKEND"] = BACKEND

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_cdm import CascadedDiffusionPipeline, DiffusionModel  # noqa: E402
from keras_cdm.testing import tiny_cascade  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")
LABELS = [0, 2]
LOW_RES = np.random.default_rng(7).integers(0, 256, (2, 8, 8, 1)).astype("uint8")  # the stage's conditioning


def weights(model):
    """{"<index>:<path>": value} of every weight of a stage, seed-generator states included."""
    return {f"{i}:{v.path}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.weights)}


def stage_images(stage):
    return stage.generate(labels=LABELS, seed=3, low_res_images=LOW_RES, verbose=False)


def sample(folder):
    """Loads the two presets of `folder`; their weights and images."""
    stage = DiffusionModel.from_preset(folder / "stage")
    cascade = CascadedDiffusionPipeline.from_preset(folder / "cascade")
    found = {f"stage/{k}": v for k, v in weights(stage).items()}
    for s in cascade.stages:
        found.update({f"cascade/{s.name}/{k}": v for k, v in weights(s).items()})
    images = {"stage": stage_images(stage), "cascade": cascade.generate(labels=LABELS, seed=5, verbose=False)}
    return found, images


def check_identical(found, saved, where):
    assert sorted(found) == sorted(saved), f"{where}: weights {sorted(set(found) ^ set(saved))[:5]} differ"
    for key, value in saved.items():
        assert found[key].dtype == value.dtype and np.array_equal(found[key], value), f"{where}: {key} differs"


def save(folder):
    folder.mkdir(parents=True)
    cascade = tiny_cascade()  # U-Net weights drawn by numpy (keras_cdm.testing.randomize_weights)
    stage = cascade.stages[1]  # the Gaussian-augmented 8 -> 16 upsampler
    stage.save_to_preset(folder / "stage")
    cascade.save_to_preset(folder / "cascade")
    saved = {f"stage/{k}": v for k, v in weights(stage).items()}
    for s in cascade.stages:
        saved.update({f"cascade/{s.name}/{k}": v for k, v in weights(s).items()})
    np.savez(folder / "weights.npz", **saved)
    found, images = sample(folder)
    check_identical(found, saved, f"{BACKEND} -> {BACKEND}")
    np.savez(folder / "images.npz", **images)


def load(root):
    own = dict(np.load(root / BACKEND / "images.npz"))
    for saver in BACKENDS:
        if saver == BACKEND:
            continue
        found, images = sample(root / saver)
        check_identical(found, dict(np.load(root / saver / "weights.npz")), f"{saver} -> {BACKEND}")
        for key, value in images.items():
            assert np.array_equal(value, own[key]), (
                f"{saver} -> {BACKEND}: the {key} images differ from those {BACKEND} samples from its own copy")


start = time.perf_counter()
(save if PHASE == "save" else load)(Path(ROOT) / BACKEND if PHASE == "save" else Path(ROOT))
print(json.dumps({"backend": BACKEND, "phase": PHASE, "seconds": round(time.perf_counter() - start, 2)}))
