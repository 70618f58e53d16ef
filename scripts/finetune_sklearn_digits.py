"""Fine-tunes the 8x8 base stage of `cdm_mnist32` on scikit-learn's digits (issue 19).

scikit-learn ships 1,797 real 8x8 handwritten digits (`sklearn.datasets.load_digits`: 16
grey levels, other writers and another preprocessing than MNIST: counts of ink in 4x4
blocks of 32x32 bitmaps, bolder and blockier than anti-aliased MNIST): a domain the preset
never saw. The last 20 % of each class is held out. Runs: full fine-tuning and LoRA at
several ranks (same steps, seed, data order), each resumable (BackupAndRestore) and saved
as a preset (full stage or adapter preset) under --workdir; then every model, and the
preset before fine-tuning, is judged against the held-out digits:

- domain FID: features (64-d) of a CNN classifier trained on the training split;
- pixel FID: features (64-d) of a pixel-MLP classifier (no convolution to average grain away);
- recognition: how often the CNN recognises the digit each sample was asked for;
- histogram TV: total variation between pixel-value histograms (8 bins).

    python scripts/finetune_sklearn_digits.py                       # every run, then the report
    python scripts/finetune_sklearn_digits.py --runs full lora_r4   # some runs

Writes docs/finetuning/results.json and pictures (samples before/after, the cascade turning
sklearn-style 8x8 digits into 32x32 ones).
"""

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np

from keras_cdm import CascadedDiffusionPipeline, DiffusionModel, save_image_grid
from keras_cdm.callbacks import BackupAndRestore
from keras_cdm.data import from_arrays
from keras_cdm.evaluation import (ClassifierFeatures, compute_statistics, fid, histogram_distance, pixel_classifier,
                                  recognition_accuracy)

BASE = "cdm_mnist32/base"
TARGETS = ("attention", "convolutions")
RUNS = {  # learning rate; LoRA rank (None: every weight trains)
    "full": (1e-4, None),
    "lora_r1": (1e-3, 1),
    "lora_r2": (1e-3, 2),
    "lora_r4": (1e-3, 4),
    "lora_r8": (1e-3, 8),
}
BATCH, EMA_MOMENTUM = 64, 0.999


def sklearn_digits():
    """(train images, train labels, held-out images, held-out labels): [-1, 1], (N, 8, 8, 1);
    the held-out split is the last 20 % of each class, in the data set's order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 2.0 - 1.0).astype("float32")[..., None]
    labels = digits.target.astype("int32")
    held = np.zeros(len(labels), bool)
    for c in range(10):
        index = np.flatnonzero(labels == c)
        held[index[int(round(0.8 * len(index))):]] = True
    return images[~held], labels[~held], images[held], labels[held]


def cnn_classifier():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Dense(64, activation="relu", name="features")(keras.layers.Flatten()(x))
    outputs = keras.layers.Dense(10)(keras.layers.Dropout(0.3)(x))
    return keras.Model(inputs, outputs, name="cnn")


def train_judges(workdir, train, held):
    """The CNN and the pixel MLP, trained on the training split (cached in workdir)."""
    judges = {}
    for name, build in (("cnn", cnn_classifier), ("pixel", lambda: pixel_classifier((8, 8, 1), 10, width=64))):
        keras.utils.set_random_seed(0)
        model = build()
        path = Path(workdir) / f"judge_{name}.weights.h5"
        if path.exists():
            model.load_weights(path)
        else:
            model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"])
            model.fit(train[0], train[1], batch_size=64, epochs=60, verbose=0)
            model.save_weights(path)
        scores = np.asarray(model.predict(held[0], verbose=0))
        accuracy = float((scores.argmax(1) == held[1]).mean())
        judges[name] = {"model": model, "extractor": ClassifierFeatures(model), "held_out_accuracy": accuracy}
        print(f"judge {name}: held-out accuracy {accuracy:.3f}")
    return judges


def judge(images, labels, judges, held):
    """The four measures of `images` (made for `labels`) against the held-out digits."""
    out = {}
    for name in ("cnn", "pixel"):
        extractor = judges[name]["extractor"]
        real = compute_statistics(held[0], extractor)
        out[f"fid_{name}"] = float(fid(real, compute_statistics(images, extractor)))
    recognition = recognition_accuracy(judges["cnn"]["model"], images, labels, 10)
    out["recognition"] = recognition["top1"]
    out["recognition_per_class"] = [round(float(v), 3) for v in recognition["per_class_top1"]]
    out["histogram_tv"] = histogram_distance(images, held[0], bins=8)
    return out


def finetune(name, workdir, train, epochs, seed):
    """Fine-tunes the base stage (run `name` of RUNS); resumable, and a finished run is loaded
    from its preset; returns the stage and its record (time, trainable parameters, preset size)."""
    learning_rate, rank = RUNS[name]
    folder, record = Path(workdir) / "presets" / name, Path(workdir) / "records" / f"{name}.json"
    if record.exists() and (folder / "config.json").exists():
        print(f"{name}: already fine-tuned ({folder})")
        return DiffusionModel.from_preset(folder), json.loads(record.read_text())
    keras.utils.set_random_seed(seed)
    stage = DiffusionModel.from_preset(BASE)
    if rank is not None:
        stage.enable_lora(rank, TARGETS)
    stage.compile(learning_rate=learning_rate, ema_momentum=EMA_MOMENTUM)
    stage.optimizer.build(stage.trainable_variables)
    data = from_arrays(train[0], train[1], batch_size=BATCH, seed=seed, cache=True)
    start = time.time()
    stage.fit(data, epochs=epochs, verbose=2, callbacks=[BackupAndRestore(str(Path(workdir) / "backup" / name))])
    seconds = time.time() - start
    trainable = int(sum(np.prod(v.shape) for v in stage.trainable_variables))
    folder = stage.save_to_preset(Path(workdir) / "presets" / name, overwrite=True,
                                  description=f"cdm_mnist32 base fine-tuned on sklearn digits ({name})")
    size = sum(f.stat().st_size for f in Path(folder).iterdir() if f.name.endswith(".h5"))
    result = {"seconds": round(seconds, 1), "trainable_parameters": trainable, "weights_bytes": size,
              "learning_rate": learning_rate, "rank": rank, "epochs": epochs, "steps": epochs * (len(train[0]) // BATCH)}
    record.parent.mkdir(exist_ok=True)
    record.write_text(json.dumps(result) + "\n")
    return stage, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--samples", type=int, default=1000, help="samples per model (equal per class)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="runs/finetune_sklearn")
    parser.add_argument("--out", default="docs/finetuning")
    parser.add_argument("--cascade-run", default="lora_r4",
                        help="the adapter the cascade picture uses (the best rank within 10 %% of the parameters)")
    args = parser.parse_args(argv)
    workdir, out = Path(args.workdir), Path(args.out)
    workdir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    train_x, train_y, held_x, held_y = sklearn_digits()
    print(f"sklearn digits: {len(train_x)} training, {len(held_x)} held out")
    judges = train_judges(workdir, (train_x, train_y), (held_x, held_y))
    held = (held_x, held_y)
    pipeline = CascadedDiffusionPipeline.from_preset("cdm_mnist32")
    settings = pipeline.sampling[0]
    labels = np.repeat(np.arange(10), args.samples // 10).astype("int32")
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["judges"] = {k: {"held_out_accuracy": v["held_out_accuracy"]} for k, v in judges.items()}
    results["floor"] = {"note": "the training split itself against the held-out split",
                        **judge(train_x, train_y, judges, held)}
    rows = {"held-out sklearn": held_x[[int(np.flatnonzero(held_y == c)[0]) for c in range(10)]]}

    def sample(stage):
        return stage.generate(labels=labels, seed=args.seed + 1, verbose=False, **settings)

    before = pipeline.stages[0]
    images = sample(before)
    results["before"] = {"parameters": before.unet.count_params(), **judge(images, labels, judges, held)}
    rows["before (cdm_mnist32)"] = images[:: args.samples // 10]
    print("before:", results["before"])
    stages = {}
    for name in args.runs:
        stage, record = finetune(name, workdir, (train_x, train_y), args.epochs, args.seed)
        images = sample(stage)
        results[name] = {**record, **judge(images, labels, judges, held)}
        rows[name] = images[:: args.samples // 10]
        stages[name] = stage
        print(name, results[name])
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    full_gain = results["before"]["fid_cnn"] - results.get("full", {}).get("fid_cnn", np.nan)
    for name in args.runs:
        if name.startswith("lora") and "full" in results:
            results[name]["share_of_full_fid_gain"] = (results["before"]["fid_cnn"] - results[name]["fid_cnn"]) / (
                full_gain)
            results[name]["share_of_full_parameters"] = results[name]["trainable_parameters"] / results[
                "full"]["trainable_parameters"]
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    grid = np.concatenate(list(rows.values()))
    save_image_grid(grid, out / "samples.png", columns=10)
    (out / "samples_rows.txt").write_text("\n".join(rows) + "\n")
    # The cascade with the adapted base: sklearn-style 8x8 digits turned into 32x32 ones.
    if args.cascade_run in stages:
        best = args.cascade_run
        adapted = CascadedDiffusionPipeline([stages[best].merge_lora(), *pipeline.stages[1:]], pipeline.sampling)
        per_class = np.tile(np.arange(10), 2).astype("int32")
        rows32 = [pipeline.generate(labels=per_class, seed=args.seed + 2, verbose=False),
                  adapted.generate(labels=per_class, seed=args.seed + 2, verbose=False)]
        save_image_grid(np.concatenate(rows32), out / "cascade.png", columns=10)
        results["cascade_picture"] = {"rows": ["cdm_mnist32 (2 rows)", f"base with adapter {best} (2 rows)"]}
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
