"""Why does the 16->32 stage of cdm_mnist32 leave grain on the background? (issue 17)

Measures, on the shipped preset or any sr32 weights given:
  1. the background of whole-cascade samples (100 digits, labels 0..9 x 10, seed 123): the
     fraction of 32x32 pixels below 0.05 on [0, 1] ("near black") and the mean of the pixels
     below 0.3, next to the real held-out digits and to the cascade's own 16x16 outputs
     resized bicubically; for each set of sr32 weights with the shipped sampling settings,
     and for the shipped weights with 4 and 100 steps;
  2. the one-step denoising error of the stage at fixed noise levels on the 500 held-out real
     digits (conditioned on their real 16x16 versions): the RMS error of the predicted x_0 on
     background pixels (real value -1) and on digit pixels, for each set of weights given
     (`--weights name=path.weights.h5`, e.g. a retrain's EMA and training weights).

    python scripts/diagnose_sr32.py [--weights plain_ema=runs/.../sr32/model.weights.h5 ...]
"""

import argparse
import json

import keras
import numpy as np

from keras_cdm.data import mnist_subset, resize_images
from keras_cdm.images import from_uint8, to_uint8
from keras_cdm.pipeline import CascadedDiffusionPipeline

LEVELS = (0.01, 0.03, 0.1, 0.3, 0.6)  # sigma = sqrt(1 - level^2) of the noisy input


def background(images):
    """(near-black fraction, mean of pixels below 0.3) of uint8 images, on [0, 1]."""
    x = np.asarray(images, np.float64) / 255.0
    return float((x < 0.05).mean()), float(x[x < 0.3].mean())


def denoising_errors(stage, images, low_res, labels, seed=0):
    """RMS error of the predicted x_0 on background and digit pixels, per noise sigma."""
    rng = np.random.default_rng(seed)
    rows = {}
    for sigma in LEVELS:
        alpha = np.sqrt(1 - sigma**2)
        noise = rng.normal(size=images.shape).astype("float32")
        noisy = (alpha * images + sigma * noise).astype("float32")
        eps = keras.ops.convert_to_numpy(stage.unet({
            "noisy_images": noisy, "noise_levels": np.full(len(images), alpha, "float32"),
            "labels": labels, "low_res_images": low_res}, training=False))
        x0 = np.clip((noisy - sigma * eps) / alpha, -1, 1)
        dark = images <= -0.99
        rows[f"sigma={sigma}"] = {
            "background_rms": float(np.sqrt(np.mean((x0 - images)[dark] ** 2))),
            "digit_rms": float(np.sqrt(np.mean((x0 - images)[~dark] ** 2))),
            "eps_rms_error": float(np.sqrt(np.mean((eps - noise) ** 2))),
        }
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", nargs="*", default=[], help="name=path of sr32 weights to compare")
    parser.add_argument("--skip-samples", action="store_true")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    pipeline = CascadedDiffusionPipeline.from_preset("cdm_mnist32")
    sr32 = pipeline.stages[2]
    held, held_labels = mnist_subset("heldout")
    real32 = from_uint8(held)  # (500, 32, 32, 1), [-1, 1]
    real16 = np.asarray(sr32.downsample(real32))
    results = {"real_heldout": dict(zip(("near_black", "dark_mean"), background(held)))}
    labels = np.repeat(np.arange(10), 10)
    shipped = pipeline.sampling[2]["noise_schedule"]
    if not args.skip_samples:
        for steps, beta_end in ((4, 0.9), (100, 0.05)):
            pipeline.set_sampling("sr32", noise_schedule={**shipped, "num_timesteps": steps, "beta_end": beta_end}, num_steps=None)
            images = pipeline.generate(labels=labels, seed=123, batch_size=100, verbose=False)
            results[f"cascade_32_steps{steps}"] = dict(zip(("near_black", "dark_mean"), background(images)))
        pipeline.set_sampling("sr32", noise_schedule=shipped, num_steps=None)
    candidates = [("shipped_ema", None)] + [tuple(w.split("=", 1)) for w in args.weights]
    for name, path in candidates:
        if path is not None:
            sr32.load_weights(path)
        results[f"denoising_{name}"] = denoising_errors(sr32, real32, real16, held_labels)
        if not args.skip_samples:  # the whole cascade, the shipped sampling settings
            images, stages = pipeline.generate(labels=labels, seed=123, batch_size=100, return_intermediates=True,
                                               output="float", verbose=False)
            results[f"cascade_32_{name}"] = dict(zip(("near_black", "dark_mean"), background(to_uint8(images))))
    if not args.skip_samples:
        bicubic = to_uint8(np.clip(np.asarray(resize_images(stages["sr16"], 32)), -1, 1))
        results["cascade_16_bicubic"] = dict(zip(("near_black", "dark_mean"), background(bicubic)))
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as file:
            file.write(text + "\n")


if __name__ == "__main__":
    main()
