"""The first `fit` of a stage under TensorFlow: the optimizer's variables built before the
train function is traced (keras_cdm's `DiffusionModel.fit`) vs inside the trace (Keras'
TensorFlow trainer without a strategy, which makes TensorFlow trace the function twice).

    KERAS_BACKEND=tensorflow python benchmarks/first_fit.py [--rounds 3]

Each measurement is a fresh process that builds the three stages of README's training
example (an 8x8 base stage with learned variances and the hybrid loss, an 8->16 upsampler
with Gaussian augmentation, a 16->16 one with blur and continuous noise levels; 64 images,
batch 16) and times the first `fit` of each (4 batches: almost all of it tracing), the two
orders alternating. Prints the medians and the ratios before / inside, and writes
docs/performance/first_fit_tensorflow.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("base", "sr_gauss", "sr_blur")


def measure(order):
    """Seconds of the first `fit` of each stage, in this process."""
    import numpy as np

    import keras_cdm.diffusion_model as module
    from keras_cdm import (BlurConditioningAugmentation, DiffusionModel, DiffusionUNet,
                           GaussianConditioningAugmentation, GaussianDiffusion)

    if order == "inside":
        module._build_optimizer_before_tracing = lambda model: None
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (64, 16, 16, 3)).astype("float32")
    labels = rng.integers(0, 10, 64)
    common = dict(base_channels=32, channel_multipliers=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                  num_classes=10, num_groups=8)
    stages = {
        "base": DiffusionModel(DiffusionUNet(image_size=8, learned_variance=True, dropout=0.1, **common),
                               GaussianDiffusion(1000, "cosine", variance="learned_range", loss="hybrid"),
                               random_flip=True, seed=0),
        "sr_gauss": DiffusionModel(
            DiffusionUNet(image_size=16, low_res_size=8, augmentation_level_embedding=True, learned_variance=True,
                          **common),
            GaussianDiffusion(1000, "cosine", variance="learned_range", loss="hybrid"),
            augmentation=GaussianConditioningAugmentation(max_level=250, num_timesteps=1000), seed=0),
        "sr_blur": DiffusionModel(
            DiffusionUNet(image_size=16, low_res_size=8, conditioning="noise_level", **common),
            GaussianDiffusion(2000, "linear", conditioning="noise_level"),
            augmentation=BlurConditioningAugmentation(sigma_range=(0.4, 0.6), probability=0.5), seed=0),
    }
    small = stages["sr_gauss"].downsample(images)  # the 8x8 images of the base stage
    seconds = {}
    for name, stage in stages.items():
        stage.compile()
        data = {"images": small if name == "base" else images, "labels": labels}
        start = time.perf_counter()
        stage.fit(data, epochs=1, batch_size=16, verbose=0)
        seconds[name] = time.perf_counter() - start
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", choices=("before", "inside"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker)))
        return
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    runs = {"before": [], "inside": []}
    for round_index in range(args.rounds):
        for order in ("inside", "before"):
            done = subprocess.run([sys.executable, __file__, "--worker", order], cwd=ROOT, env=env,
                                  capture_output=True, text=True, check=True)
            runs[order].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_index + 1} {order}: " + ", ".join(f"{k} {v:.2f} s" for k, v in runs[order][-1].items()),
                  flush=True)
    medians = {order: {name: statistics.median(r[name] for r in rs) for name in STAGES} for order, rs in runs.items()}
    for order in medians:
        medians[order]["total"] = statistics.median(sum(r.values()) for r in runs[order])
    ratios = {name: medians["before"][name] / medians["inside"][name] for name in (*STAGES, "total")}
    print("first fit (median of fresh processes), optimizer built inside the trace -> before it:")
    for name in (*STAGES, "total"):
        print(f"  {name:9s} {medians['inside'][name]:6.2f} s -> {medians['before'][name]:6.2f} s   "
              f"ratio {ratios[name]:.2f}x")
    out = ROOT / "docs" / "performance" / "first_fit_tensorflow.json"
    out.write_text(json.dumps({"rounds": args.rounds, "runs": runs, "medians": medians, "ratios": ratios},
                              indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
