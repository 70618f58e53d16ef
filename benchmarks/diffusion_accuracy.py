"""Deviation of keras_cdm's diffusion math from an independent float64 derivation.

Run from the repository root:  python benchmarks/diffusion_accuracy.py
Prints the maximum relative deviation of the float64 schedule / posterior buffers
from their closed forms, and of the float32 tensors (q_sample, p_mean_variance,
hybrid loss terms) from the float64 reference, over random inputs and all steps.
"""

import json

import numpy as np

from keras_cdm import GaussianDiffusion
from keras_cdm.testing import REFERENCE_BETAS, Reference, to_numpy


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


def main():
    rng = np.random.default_rng(0)
    results = {}
    for (schedule, T), betas in sorted(REFERENCE_BETAS.items()):
        d, ref = GaussianDiffusion(T, schedule), Reference(betas)
        results[f"buffers {schedule}-{T}"] = max(
            rel(d.betas, ref.betas), rel(d.alphas_cumprod, ref.ac), rel(d.posterior_variance[1:], ref.post_var[1:]),
            rel(d.posterior_log_variance_clipped, ref.post_logvar), rel(d.posterior_mean_coef1[1:], ref.coef1[1:]),
            rel(d.posterior_mean_coef2[1:], ref.coef2[1:]),
        )
    d = GaussianDiffusion(4000, "cosine", variance="learned_range", loss="hybrid")
    ref = Reference(REFERENCE_BETAS[("cosine", 4000)])
    worst = {"mean": 0.0, "variance": 0.0, "log_variance": 0.0, "pred_xstart": 0.0, "mse": 0.0, "vb": 0.0, "loss": 0.0}
    for start in range(0, 4000, 250):
        t = np.arange(start, start + 250)
        x0 = np.clip(rng.normal(0, 0.6, (250, 8, 8, 3)), -1, 1)
        noise = rng.normal(size=x0.shape)
        out = np.concatenate([noise + rng.normal(0, 0.3, x0.shape), rng.uniform(-1, 1, x0.shape)], -1)
        x = rng.normal(size=x0.shape)
        got = d.p_mean_variance(out.astype("float32"), x.astype("float32"), t, clip_denoised=False)
        for key, expected in zip(("mean", "variance", "log_variance", "pred_xstart"),
                                 ref.p_mean_variance(out, x, t, clip=False)):
            scale = np.abs(expected).max(axis=(1, 2, 3), keepdims=True)  # relative to each example's size
            worst[key] = max(worst[key], float(np.max(np.abs(to_numpy(got[key]) - expected) / scale)))
        got = d.training_losses(out.astype("float32"), x0.astype("float32"), t, noise.astype("float32"))
        for key, expected in ref.losses(out, x0, t, noise).items():
            worst[key] = max(worst[key], rel(to_numpy(got[key]), expected))
    results.update({f"float32 {k} (cosine-4000, all t)": v for k, v in worst.items()})
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:{width}s}  {value:.2e}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
