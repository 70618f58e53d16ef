"""Training throughput (images/s) of a 32x32 class-conditional stage, float32 vs mixed_bfloat16.

Run from the repository root:
    KERAS_BACKEND=tensorflow python benchmarks/training_throughput.py [--batch 32] [--steps 20]
The U-Net is the matched 32x32 architecture of the performance issue (64 channels,
multipliers 1,2,2,2, 2 blocks, attention at 16, dropout 0.1, ~9.6 M parameters).
Both policies are measured in the same run (median step time over `repeats` epochs after a
warm-up epoch; per-`fit` start/stop costs are excluded),
and the ratio is printed; results go to docs/performance/training_throughput_<backend>.json.
"""

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np

from keras_cdm import DiffusionModel, DiffusionUNet, GaussianDiffusion


def measure(policy, batch, steps, repeats):
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    unet = DiffusionUNet(image_size=32, base_channels=64, channel_multipliers=(1, 2, 2, 2), num_res_blocks=2,
                         attention_resolutions=(16,), num_heads=4, dropout=0.1, num_classes=10)
    model = DiffusionModel(unet, GaussianDiffusion(1000, "cosine"), random_flip=True, seed=0)
    model.compile()
    rng = np.random.default_rng(0)
    data = {"images": rng.uniform(-1, 1, (batch * steps, 32, 32, 3)).astype("float32"),
            "labels": rng.integers(0, 10, batch * steps)}
    start = time.perf_counter()
    model.fit(data, batch_size=batch, epochs=1, verbose=0)
    first = time.perf_counter() - start
    timer = _StepTimer()
    model.fit(data, batch_size=batch, epochs=repeats, verbose=0, callbacks=[timer])
    times = timer.times
    keras.mixed_precision.set_global_policy("float32")
    return {"parameters": unet.count_params(), "first epoch (s, with tracing)": first,
            "images/s": batch / float(np.median(times)), "timed steps": len(times)}


class _StepTimer(keras.callbacks.Callback):
    """Wall time of each training step; the median excludes per-`fit` start/stop costs."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {"backend": keras.backend.backend(), "batch": args.batch}
    for policy in ("float32", "mixed_bfloat16"):
        results[policy] = measure(policy, args.batch, args.steps, args.repeats)
        print(policy, json.dumps(results[policy]))
    ratio = results["mixed_bfloat16"]["images/s"] / results["float32"]["images/s"]
    results["mixed_bfloat16 / float32"] = ratio
    print(f"mixed_bfloat16 / float32 throughput: {ratio:.2f}x")
    out = Path(__file__).resolve().parent.parent / "docs" / "performance"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"training_throughput_{results['backend']}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
