"""Is the input pipeline a bottleneck? Images/s of `from_image_folder` alone vs a training step.

Run from the repository root:
    KERAS_BACKEND=tensorflow python benchmarks/input_pipeline.py [--images 512] [--batch 32]
Writes `--images` random 64x64 JPEGs to a temporary folder (two classes) and times
`keras_cdm.data.from_image_folder(..., image_size=32)` (shuffle, random flips), without
and with `cache`, over whole epochs after a warm-up epoch. The training side is the
32x32 stage of benchmarks/training_throughput.py (its `measure`: median step time after
a warm-up epoch), fed from memory, float32. Prints both and their ratio; results go to
docs/performance/input_pipeline.json. About 2 minutes on 2 CPU cores.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from keras_cdm import data
from training_throughput import measure as training_throughput  # a sibling: run as a script, benchmarks/ is on sys.path


def write_jpegs(folder, count, size=64):
    """`count` smooth random colour images (JPEG-compressible like photos), two classes."""
    rng = np.random.default_rng(0)
    for index in range(count):
        klass = folder / f"class_{index % 2}"
        klass.mkdir(exist_ok=True)
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((size, size), Image.BICUBIC).save(klass / f"{index:05d}.jpg", quality=90)


def pipeline_throughput(folder, count, batch, cache, epochs):
    start = time.perf_counter()
    dataset = data.from_image_folder(folder, 32, batch_size=batch, seed=0, random_flip=True, cache=cache)
    build = time.perf_counter() - start  # indexing + the parallel decode pre-scan
    start = time.perf_counter()
    for _ in dataset:  # warm-up epoch (fills the cache)
        pass
    first = time.perf_counter() - start
    start = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        for batch_ in dataset:
            seen += int(batch_["images"].shape[0])
    seconds = time.perf_counter() - start
    return {"construction (s, indexing + decode pre-scan)": build, "first epoch (s)": first,
            "images/s": seen / seconds, "timed images": seen, "images in folder": count}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5, help="timed pipeline epochs")
    parser.add_argument("--steps", type=int, default=3, help="training steps per epoch")
    parser.add_argument("--repeats", type=int, default=2, help="timed training epochs")
    args = parser.parse_args()
    results = {"backend": keras.backend.backend(), "batch": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), args.images)
        for cache in (False, True):
            key = f"pipeline (cache={cache})"
            results[key] = pipeline_throughput(tmp, args.images, args.batch, cache, args.epochs)
            print(key, json.dumps(results[key]))
    results["training step (float32)"] = training_throughput("float32", args.batch, args.steps, args.repeats)
    print("training step (float32)", json.dumps(results["training step (float32)"]))
    train = results["training step (float32)"]["images/s"]
    for cache in (False, True):
        ratio = results[f"pipeline (cache={cache})"]["images/s"] / train
        results[f"pipeline (cache={cache}) / training"] = ratio
        print(f"pipeline (cache={cache}) / training step throughput: {ratio:.1f}x")
    out = Path(__file__).resolve().parent.parent / "docs" / "performance"
    out.mkdir(parents=True, exist_ok=True)
    (out / "input_pipeline.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
