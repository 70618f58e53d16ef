"""The first `generate` of a cascade in a fresh process, with its later stages compiled in a
background thread while the earlier ones sample (the default) and without (each stage
compiles its sampler when it runs), alternating, on `make demo`'s job (100 digits of
`cdm_mnist32`, batch 100).

    KERAS_BACKEND=tensorflow python benchmarks/first_call.py [--rounds 3]

Each measurement is a fresh process (a first call is once per process); prints the medians
and the ratio background / serial, and checks the images are identical.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
import keras_cdm.pipeline as pipeline_module
from keras_cdm import CascadedDiffusionPipeline
if sys.argv[1] == "serial":
    pipeline_module.can_prepare_in_background = lambda: False
pipeline = CascadedDiffusionPipeline.from_preset("cdm_mnist32")
labels = np.repeat(np.arange(10), 10)
start = time.perf_counter()
images = pipeline.generate(labels=labels, seed=0, batch_size=100, verbose=False)
first = time.perf_counter() - start
start = time.perf_counter()
pipeline.generate(labels=labels, seed=0, batch_size=100, verbose=False)
steady = time.perf_counter() - start
print(json.dumps({"first": first, "steady": steady, "stages": pipeline.last_timings,
                  "checksum": int(images.astype("int64").sum())}))
"""


def run(mode):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    out = subprocess.run([sys.executable, "-c", CHILD, mode], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = {"serial": [], "background": []}
    for _ in range(args.rounds):
        for mode in rows:
            rows[mode].append(run(mode))
    checksums = {row["checksum"] for mode in rows for row in rows[mode]}
    print(f"backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}, {args.rounds} rounds, images identical: "
          f"{len(checksums) == 1}")
    medians = {}
    for mode, runs in rows.items():
        medians[mode] = {key: statistics.median(r[key] for r in runs) for key in ("first", "steady")}
        print(f"{mode:10s} first call {medians[mode]['first']:6.2f} s (all: "
              + ", ".join(f"{r['first']:.2f}" for r in runs) + f"), steady {medians[mode]['steady']:6.2f} s")
    print(f"first call background / serial: {medians['background']['first'] / medians['serial']['first']:.2f}x")
    if len(checksums) != 1:
        raise SystemExit("the images differ")


if __name__ == "__main__":
    main()
