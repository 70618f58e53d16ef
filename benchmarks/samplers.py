"""Which sampler, spacing and step count: the measurements behind docs/sampling.md.

Run from the repository root (CPU minutes; `--part gaussian` takes seconds):
    KERAS_BACKEND=jax python benchmarks/samplers.py [--part gaussian|mnist|all]

1. gaussian: data x_0 ~ N(mu, std^2) per pixel (64 pixels, std in [0.05, 0.5]) and the
   exact denoiser, so every sampler's output is Gaussian and its law is computed exactly by
   propagating means and covariances through the sampler's own coefficients
   (`keras_cdm.solvers.coefficient_table`; the posterior buffers for the ancestral step).
   Prints the 2-Wasserstein distance between the output law and the data law, on the linear
   1000-step process, per sampler and number of steps, with an exact denoiser and with one
   that is wrong at high noise (bias 0.1 where log-SNR < 0): there stochastic samplers
   forget early errors and deterministic ones keep them.
2. mnist: the trained cdm_mnist32 cascade, 100 digits per setting: the fraction of
   near-black pixels (real held-out digits: 0.856) and the total-variation distance between
   pixel histograms and those of real digits (`keras_cdm.evaluation`).
Writes docs/performance/samplers.json.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from keras_cdm import GaussianDiffusion, solvers

SAMPLERS = ("ancestral", "ddim", "dpm++2m", "dpm++3m", "dpm++2m-sde")


def output_law(process, sampler, mean, std, bias=0.0):
    """Mean and variance of the sample `sampler` draws from x_T ~ N(0, I) with the exact
    denoiser of N(mean, std^2) (plus `bias` where log-SNR < 0), per pixel, in float64."""
    ac, n = process.alphas_cumprod, process.num_timesteps
    order = solvers.SOLVERS[sampler][0] if solvers.is_multistep(sampler) else 1
    table = solvers.coefficient_table(ac, sampler) if solvers.is_multistep(sampler) else None
    # Each quantity is a linear form over [x_T, 1, z_{n-1}, ..., z_0] (one row per pixel).
    x = np.zeros((len(mean), n + 2))
    x[:, 0] = 1.0
    history = [np.zeros_like(x)] * (order - 1)
    for taken, t in enumerate(range(n - 1, -1, -1)):
        alpha = np.sqrt(ac[t])
        gain = alpha * std**2 / (ac[t] * std**2 + 1 - ac[t])
        d = gain[:, None] * x
        d[:, 1] += mean - gain * alpha * mean + bias * (ac[t] < 0.5)
        noise = np.zeros_like(x)
        noise[:, 2 + t] = 1.0
        if table is not None:
            row = table[(min(taken + 1, order) - 1) * n + t]
            new = row[0] * x + sum(c * p for c, p in zip(row[1:-1], [d] + history)) + row[-1] * noise
            history = ([d] + history)[:order - 1]
        elif sampler == "ancestral":
            new = process.posterior_mean_coef1[t] * d + process.posterior_mean_coef2[t] * x
            new += np.sqrt(process.posterior_variance[t]) * noise * (t > 0)
        else:  # DDIM, eta = 0
            ac_prev = process.alphas_cumprod_prev[t]
            new = np.sqrt(ac_prev) * d + np.sqrt((1 - ac_prev) / (1 - ac[t])) * (x - alpha * d)
        x = new
    return x[:, 1], x[:, 0] ** 2 + (x[:, 2:] ** 2).sum(axis=1)


def gaussian_part():
    rng = np.random.default_rng(0)
    mean, std = rng.uniform(-0.5, 0.5, 64), rng.uniform(0.05, 0.5, 64)
    base = GaussianDiffusion(1000, "linear")
    rows = []
    for bias in (0.0, 0.1):
        for steps in (10, 20, 50, 100):
            for sampler in SAMPLERS:
                spacing = "" if sampler in ("ancestral", "ddim") else "logsnr"
                law_mean, law_var = output_law(base.respace(f"{spacing}{steps}"), sampler, mean, std, bias)
                w2 = float(np.sqrt(np.mean((law_mean - mean) ** 2 + (np.sqrt(law_var) - std) ** 2)))
                rows.append({"bias": bias, "steps": steps, "sampler": sampler, "spacing": spacing or "time",
                             "w2": w2})
    for bias in (0.0, 0.1):
        print(f"W2(output law, data law), linear-1000 process, denoiser bias {bias} at high noise")
        print("steps " + " ".join(f"{s:>12s}" for s in SAMPLERS))
        for steps in (10, 20, 50, 100):
            cells = [r["w2"] for r in rows if r["bias"] == bias and r["steps"] == steps]
            print(f"{steps:5d} " + " ".join(f"{c:12.1e}" for c in cells))
    return rows


MNIST_SETTINGS = {  # name -> (samplers per stage, steps per stage); network evaluations in the name
    "ancestral ddim50/50/25 (preset, 125)": (["ancestral"], ["ddim50", "50", "all"]),
    "ancestral 10/10/10 (30)": (["ancestral"], ["10"]),
    "ddim logsnr10 (30)": (["ddim"], ["logsnr10"]),
    "dpm++2m logsnr10 (30)": (["dpm++2m"], ["logsnr10"]),
    "dpm++2m logsnr20 (60)": (["dpm++2m"], ["logsnr20"]),
    "dpm++3m logsnr10 (30)": (["dpm++3m"], ["logsnr10"]),
    "dpm++2m-sde logsnr10 (30)": (["dpm++2m-sde"], ["logsnr10"]),
    "dpm++2m-sde logsnr20 (60)": (["dpm++2m-sde"], ["logsnr20"]),
    "dpm++2m, dpm++2m, dpm++2m-sde logsnr10 (30)": (["dpm++2m", "dpm++2m", "dpm++2m-sde"], ["logsnr10"]),
}


def mnist_part():
    from keras_cdm import CascadedDiffusionPipeline
    from keras_cdm.cli import _apply_sampling
    from keras_cdm.data import mnist_subset
    from keras_cdm.evaluation import histogram_distance, pixel_statistics

    real = mnist_subset("heldout")[0]
    rows = []
    for name, (samplers, steps) in MNIST_SETTINGS.items():
        pipeline = CascadedDiffusionPipeline.from_preset("cdm_mnist32")
        _apply_sampling(pipeline, steps, samplers)
        start = time.perf_counter()
        images = pipeline.generate(labels=np.arange(100) % 10, seed=0, batch_size=100, verbose=False)
        rows.append({"setting": name, "near_black": pixel_statistics(images)["near_black"],
                     "histogram_tv": histogram_distance(images, real), "seconds": time.perf_counter() - start})
        print(f"{name:45s} near-black {rows[-1]['near_black']:.3f}  histogram TV {rows[-1]['histogram_tv']:.3f}  "
              f"{rows[-1]['seconds']:.0f} s")
    print(f"{'real held-out digits':45s} near-black {pixel_statistics(real)['near_black']:.3f}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["gaussian", "mnist", "all"], default="all")
    args = parser.parse_args()
    results = {}
    if args.part in ("gaussian", "all"):
        results["gaussian"] = gaussian_part()
    if args.part in ("mnist", "all"):
        results["mnist"] = mnist_part()
    out = Path(__file__).resolve().parent.parent / "docs" / "performance" / "samplers.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
