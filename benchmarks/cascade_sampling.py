"""Sampling a tiny 8 -> 16 -> 32 cascade: seconds per stage, first call (compilation
included) and steady state, batched vs one image per call.

Run from the repository root, on either backend:
    KERAS_BACKEND=tensorflow python benchmarks/cascade_sampling.py [--images 16] [--batch 16]
    KERAS_BACKEND=jax python benchmarks/cascade_sampling.py
Prints a table and the speed-up of batching over one-image calls (the same images, by the
per-example seeds), and writes docs/performance/cascade_sampling_<backend>.json.
"""

import argparse
import json
import time
from pathlib import Path

import keras

from keras_cdm.testing import tiny_cascade

ROOT = Path(__file__).resolve().parent.parent


def run(pipeline, labels, batch):
    start = time.perf_counter()
    pipeline.generate(labels=labels, seed=0, batch_size=batch, verbose=False)
    return time.perf_counter() - start, dict(pipeline.last_timings)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    pipeline = tiny_cascade()
    labels = [i % 3 for i in range(args.images)]
    steps = [plan.num_network_evaluations for plan in pipeline.plans]
    first = run(pipeline, labels, args.batch)
    steady = run(pipeline, labels, args.batch)
    run(pipeline, labels, 1)  # compile the batch-1 functions
    single = run(pipeline, labels, 1)
    print(f"backend {keras.backend.backend()}, {args.images} images, batch {args.batch}")
    print(f"{'stage':8s} {'steps':>5s} {'first call':>11s} {'steady':>8s} {'batch 1':>8s} {'speed-up':>9s}")
    rows = {}
    for name, n in zip(pipeline.stage_names, steps):
        rows[name] = {"steps": n, "first_s": first[1][name], "steady_s": steady[1][name], "batch1_s": single[1][name]}
        print(f"{name:8s} {n:5d} {first[1][name]:10.2f}s {steady[1][name]:7.2f}s {single[1][name]:7.2f}s "
              f"{single[1][name] / steady[1][name]:8.1f}x")
    print(f"{'total':8s} {'':5s} {first[0]:10.2f}s {steady[0]:7.2f}s {single[0]:7.2f}s {single[0] / steady[0]:8.1f}x")
    out = ROOT / "docs" / "performance" / f"cascade_sampling_{keras.backend.backend()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": args.images, "batch": args.batch, "stages": rows,
                               "total": {"first_s": first[0], "steady_s": steady[0], "batch1_s": single[0]}}, indent=2))


if __name__ == "__main__":
    main()
