"""LoRA vs full fine-tuning of cdm_mnist32's base stage: training step time, and sampling
with an adapter unmerged vs merged vs the base alone. Ratios against the full fine-tune and
the base, measured in the same run.

Run from the repository root:
    KERAS_BACKEND=tensorflow python benchmarks/lora.py [--batch 64] [--steps 22] [--ranks 1 4 8]
Training: median step time over `--repeats` epochs after a warm-up epoch (tracing excluded).
Sampling: 100 images, the preset's base settings (ancestral, 20 steps), second call (steady state).
Results go to docs/performance/lora_<backend>.json.
"""

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np

from keras_cdm import CascadedDiffusionPipeline, DiffusionModel
from training_throughput import _StepTimer  # benchmarks/ is the script's folder: on sys.path

BASE = "cdm_mnist32/base"


def training_step(rank, batch, steps, repeats):
    keras.utils.set_random_seed(0)
    stage = DiffusionModel.from_preset(BASE)
    if rank is not None:
        stage.enable_lora(rank)
    stage.compile(learning_rate=1e-4)
    rng = np.random.default_rng(0)
    data = {"images": rng.uniform(-1, 1, (batch * steps, 8, 8, 1)).astype("float32"),
            "labels": rng.integers(0, 10, batch * steps)}
    stage.fit(data, batch_size=batch, epochs=1, verbose=0)
    timer = _StepTimer()
    stage.fit(data, batch_size=batch, epochs=repeats, verbose=0, callbacks=[timer])
    return stage, float(np.median(timer.times))


def sampling_time(stage, settings, labels):
    stage.generate(labels=labels, seed=0, verbose=False, **settings)  # traces
    start = time.perf_counter()
    stage.generate(labels=labels, seed=1, verbose=False, **settings)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=22)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    backend = keras.backend.backend()
    results = {"backend": backend, "batch": args.batch, "training": {}, "sampling": {}}
    _, full = training_step(None, args.batch, args.steps, args.repeats)
    results["training"]["full"] = {"step_s": full, "ratio": 1.0}
    print(f"full fine-tuning: {full * 1e3:.0f} ms/step")
    adapted = None
    for rank in args.ranks:
        adapted, step = training_step(rank, args.batch, args.steps, args.repeats)
        results["training"][f"lora_r{rank}"] = {"step_s": step, "ratio": step / full}
        print(f"LoRA rank {rank}: {step * 1e3:.0f} ms/step ({step / full:.2f}x full)")
    settings = CascadedDiffusionPipeline.from_preset("cdm_mnist32").sampling[0]
    labels = np.arange(100) % 10
    base = sampling_time(DiffusionModel.from_preset(BASE), settings, labels)
    unmerged = sampling_time(adapted, settings, labels)
    merged = sampling_time(adapted.merge_lora(), settings, labels)
    results["sampling"] = {"base_s": base, f"lora_r{args.ranks[-1]}_unmerged_s": unmerged, "merged_s": merged,
                           "unmerged_ratio": unmerged / base, "merged_ratio": merged / base}
    print(f"sampling 100 images: base {base:.2f} s, adapter (rank {args.ranks[-1]}) unmerged {unmerged:.2f} s "
          f"({unmerged / base:.2f}x), merged {merged:.2f} s ({merged / base:.2f}x)")
    out = Path("docs/performance") / f"lora_{backend}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("->", out)


if __name__ == "__main__":
    main()
