"""Reverse-process timing: one compiled `ops.fori_loop` vs Python loops over `sample_step`.

Run from the repository root, on either backend:
    KERAS_BACKEND=tensorflow python benchmarks/sampler_loop.py [--steps 50] [--batch 8]
    KERAS_BACKEND=jax python benchmarks/sampler_loop.py
Prints seconds per run and the speed-up of the compiled loop over each peer,
measured in the same process, and writes docs/performance/sampler_loop_<backend>.json.
"""

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np

from keras_cdm import DiffusionUNet, GaussianDiffusion
from keras_cdm._compile import compile_function


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(fn())
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    unet = DiffusionUNet(image_size=16, base_channels=32, channel_multipliers=(1, 2), num_res_blocks=1,
                         attention_resolutions=(8,), num_heads=2, num_classes=10, num_groups=8)
    diffusion = GaussianDiffusion(args.steps, "cosine")
    labels = keras.ops.convert_to_tensor(np.arange(args.batch) % 10, "int32")
    shape = (args.batch, 16, 16, 3)

    def denoise(x, conditioning):
        return unet({"noisy_images": x, "timesteps": conditioning, "labels": labels}, training=False)

    x_T = diffusion.initial_noise(shape, 0)
    loop = compile_function(lambda x, seed: diffusion.sample_loop(denoise, x, seed))
    step = compile_function(lambda x, t, seed: diffusion.sample_step(denoise, x, t, seed))

    def python_loop(step_fn):
        x = x_T
        for t in range(args.steps - 1, -1, -1):
            x = step_fn(x, t, 0)
        return x

    first = timed(lambda: loop(x_T, 0), 1)[0]
    results = {
        "backend": keras.backend.backend(),
        "steps": args.steps,
        "batch": args.batch,
        "parameters": unet.count_params(),
        "compiled loop, first call (s)": first,
        "compiled loop (s)": float(np.median(timed(lambda: loop(x_T, 0), args.repeats))),
        "python loop, compiled step (s)": float(np.median(timed(lambda: python_loop(step), args.repeats))),
        "python loop, eager step (s)": float(np.median(
            timed(lambda: python_loop(lambda x, t, s: diffusion.sample_step(denoise, x, t, s)), 1))),
    }
    base = results["compiled loop (s)"]
    for key in ("python loop, compiled step (s)", "python loop, eager step (s)"):
        results[f"speed-up vs {key[:-4]}"] = results[key] / base
    for key, value in results.items():
        print(f"{key:45s} {value:.3f}" if isinstance(value, float) else f"{key:45s} {value}")
    out = Path(__file__).resolve().parent.parent / "docs" / "performance"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"sampler_loop_{results['backend']}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
