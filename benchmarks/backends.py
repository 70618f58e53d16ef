"""The main job (`make demo`: 100 digits of `cdm_mnist32`, batch 100, the preset's sampling
settings) on each Keras backend, each in a fresh process run one after the other: seconds to
import keras_cdm, to load the preset, of the first `generate` (tracing/compilation included)
and of later calls (median of `--rounds`), with ratios against TensorFlow measured in the same
run; and how far the backends' images for the same seed are from TensorFlow's (they need not
agree bit for bit: float32 kernels differ; the statistics must).

    python benchmarks/backends.py [--rounds 3] [--backends tensorflow jax torch]

Writes docs/performance/backends.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

WORKER = """
import json, statistics, sys, time
start = time.perf_counter()
import keras_cdm
from keras_cdm import CascadedDiffusionPipeline
imported = time.perf_counter()
import numpy as np
pipeline = CascadedDiffusionPipeline.from_preset("cdm_mnist32")
loaded = time.perf_counter()
labels = np.repeat(np.arange(10), 10)
times = []
for _ in range(1 + int(sys.argv[2])):
    begin = time.perf_counter()
    images = pipeline.generate(labels=labels, seed=0, batch_size=100, verbose=False)
    times.append(time.perf_counter() - begin)
np.save(sys.argv[1], np.asarray(images))
print(json.dumps({"import_s": imported - start, "load_s": loaded - imported, "first_s": times[0],
                  "steady_s": statistics.median(times[1:])}))
"""


def run(backend, rounds, out):
    env = dict(os.environ, KERAS_BACKEND=backend)
    done = subprocess.run([sys.executable, "-c", WORKER, out, str(rounds)], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{backend} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    args = parser.parse_args()
    if args.backends[0] != "tensorflow":
        parser.error("the first backend is the baseline of the ratios: put tensorflow first")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for backend in args.backends:
            out = str(Path(folder) / f"{backend}.npy")
            results[backend] = run(backend, args.rounds, out)
            results[backend]["images"] = np.load(out).astype("float64")
    images_of = {backend: result.pop("images") for backend, result in results.items()}
    base = results["tensorflow"]
    print(f"100 digits of cdm_mnist32 (make demo), batch 100, seed 0; {args.rounds} steady rounds; "
          f"ratios against TensorFlow in this run")
    print(f"{'backend':<11}{'import s':>9}{'load s':>8}{'first s':>9}{'steady s':>10}{'first x':>9}"
          f"{'steady x':>10}{'|diff| mean':>13}{'pixel mean':>12}")
    table = {}
    for backend, result in results.items():
        images = images_of[backend]
        diff = float(np.mean(np.abs(images - images_of["tensorflow"])))
        result.update(first_ratio=result["first_s"] / base["first_s"],
                      steady_ratio=result["steady_s"] / base["steady_s"], mean_abs_diff_vs_tensorflow=diff,
                      pixel_mean=float(images.mean()), pixel_std=float(images.std()))
        table[backend] = result
        print(f"{backend:<11}{result['import_s']:>9.2f}{result['load_s']:>8.2f}{result['first_s']:>9.2f}"
              f"{result['steady_s']:>10.2f}{result['first_ratio']:>9.2f}{result['steady_ratio']:>10.2f}"
              f"{diff:>13.4f}{result['pixel_mean']:>12.4f}")
    out = ROOT / "docs" / "performance" / "backends.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "results": table},
                              indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
