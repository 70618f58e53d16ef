"""The `keras-cdm` command. Bad arguments give a one-line error and exit code 2."""

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

from keras_cdm import presets
from keras_cdm.pipeline import CascadedDiffusionPipeline
from keras_cdm.version import __version__
from keras_cdm.visualization import save_image_grid


def _cmd_presets(args):
    for name, description in presets.list_presets().items():
        print(f"{name:28s} {description}")


def _cmd_architecture(args):
    start = time.perf_counter()
    if presets.preset_kind(presets.builtin_preset_path(args.preset)) == "cascade":
        if args.dtype:
            raise ValueError(f"--dtype applies to stage presets; {args.preset!r} is a cascade. Received: {args.dtype!r}")
        stages = CascadedDiffusionPipeline.from_preset(args.preset, load_weights=False).stages
        units = [(stage.name, stage.unet) for stage in stages]
    else:
        units = [(args.preset, presets.unet_from_preset(args.preset, **({"dtype": args.dtype} if args.dtype else {})))]
    seconds = time.perf_counter() - start
    for name, unet in units:
        if not args.no_summary:
            unet.summary(line_length=110)
        print(f"{name}: {unet.count_params():,} parameters")
    if len(units) > 1:
        print(f"{args.preset}: {sum(unet.count_params() for _, unet in units):,} parameters in {len(units)} stages")
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"built in {seconds:.1f} s; peak resident memory {peak_gib:.2f} GiB")


def _cmd_sample(args):
    if args.per_class is not None and (args.per_class < 1 or args.labels or args.num_images):
        raise ValueError("--per-class takes a positive integer and replaces --labels and --num-images. "
                         f"Received: --per-class {args.per_class}, --labels {args.labels}, "
                         f"--num-images {args.num_images}")
    pipeline = _load_pipeline(args.preset, args.revision)
    _apply_sampling(pipeline, args.steps, args.sampler)
    labels, columns = args.labels, args.columns
    if args.per_class is not None:
        classes = pipeline.stages[0].unet.num_classes
        if classes is None:
            raise ValueError(f"--per-class needs a class-conditional cascade; {args.preset!r} is unconditional.")
        labels, columns = np.repeat(np.arange(classes), args.per_class).tolist(), columns or args.per_class
    start = time.perf_counter()
    images = pipeline.generate(labels=labels, num_images=args.num_images, seed=args.seed,
                               batch_size=args.batch_size, verbose=not args.quiet)
    seconds = time.perf_counter() - start
    path = save_image_grid(images, args.out, labels=labels, columns=columns)
    print(f"wrote {len(images)} samples ({images.shape[1]}x{images.shape[2]}) to {path} in {seconds:.1f} s")


def _apply_sampling(pipeline, steps, samplers):
    """--steps and --sampler: one value for every stage, or one per stage."""
    settings = [{} for _ in pipeline.stages]
    for option, key, values in (("--steps", "num_steps", steps), ("--sampler", "sampler", samplers)):
        if not values:
            continue
        if len(values) not in (1, len(pipeline.stages)):
            raise ValueError(f"{option} takes one value, or one per stage ({len(pipeline.stages)}: "
                             f"{pipeline.stage_names}). Received: {len(values)} values")
        for stage_settings, value in zip(settings, values * len(pipeline.stages) if len(values) == 1 else values):
            stage_settings[key] = _num_steps(value) if key == "num_steps" else value
    for k, stage_settings in enumerate(settings):
        if stage_settings:
            pipeline.set_sampling(k, **stage_settings)


def _num_steps(value):
    return None if value in ("all", "full") else (int(value) if value.isdigit() else value)


def _load_pipeline(preset, revision):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline = CascadedDiffusionPipeline.from_preset(preset, revision=revision)
    for warning in caught:
        print(f"keras-cdm: warning: {warning.message}", file=sys.stderr)
    return pipeline


def _extractor(args):
    from keras_cdm import evaluation

    if args.extractor == "inception":
        weights = args.inception_weights or "imagenet"
        return evaluation.InceptionV3Features(weights=weights, allow_download=args.allow_download)
    import keras

    if not args.extractor.endswith(".keras"):
        raise ValueError(f"--extractor is 'inception' or a .keras classifier file. Received: {args.extractor!r}")
    model = keras.saving.load_model(args.extractor, safe_mode=True)
    return evaluation.ClassifierFeatures(model, feature_layer=args.feature_layer)


def _real_data(args, pipeline, count):
    """(images, labels) of up to `count` real images at the cascade's final size."""
    from keras_cdm import data

    last = pipeline.stages[-1].unet
    common = dict(batch_size=min(count, 100), shuffle=True, seed=args.seed, drop_remainder=False)
    if args.data.startswith("tfds:"):
        dataset = data.from_tfds(args.data[5:], split=args.split, image_size=last.image_size,
                                 data_dir=args.data_dir, **common)
    else:
        dataset = data.from_image_folder(args.data, last.image_size, channels=last.image_channels, **common)
    images, labels = [], []
    for batch in dataset:
        images.append(batch["images"].numpy())
        labels.append(batch["labels"].numpy() if "labels" in batch else np.zeros(len(images[-1]), "int32"))
        if sum(len(i) for i in images) >= count:
            break
    return np.concatenate(images)[:count], np.concatenate(labels)[:count]


def _cmd_evaluate(args):
    import json

    from keras_cdm import evaluation

    if args.metric in ("fid", "cas") and args.data is None:
        raise ValueError(f"--metric {args.metric} needs --data: a folder of real images or tfds:NAME")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be a positive integer. Received: {args.num_samples}")
    pipeline = _load_pipeline(args.preset, args.revision)
    _apply_sampling(pipeline, args.steps, args.sampler)
    classes = pipeline.stages[0].unet.num_classes
    labels = None if classes is None else np.arange(args.num_samples) % classes
    samples = pipeline.iter_generate(labels=labels, num_images=args.num_samples, seed=args.seed,
                                     batch_size=args.batch_size, chunk_size=max(args.batch_size, 100), verbose=False)
    start = time.perf_counter()
    if args.metric == "cas":
        if classes is None:
            raise ValueError("--metric cas needs a class-conditional cascade")
        generated = np.concatenate(list(samples))
        real, real_labels = _real_data(args, pipeline, args.num_real or args.num_samples)
        result = evaluation.classification_accuracy_score(generated, labels, real, real_labels, classes,
                                                          epochs=args.cas_epochs, seed=args.seed)
        result = {"top1": result["top1"], "top5": result["top5"]}
    elif args.metric == "is":
        _, score = evaluation.compute_statistics(samples, _extractor(args), num_samples=args.num_samples,
                                                 inception_score=True, splits=min(10, args.num_samples))
        mean, std = score.result()
        result = {"is": mean, "is_std": std}
    else:
        extractor = _extractor(args)
        stats = evaluation.compute_statistics(samples, extractor, num_samples=args.num_samples)
        real, _ = _real_data(args, pipeline, args.num_real or args.num_samples)
        result = {"fid": evaluation.fid(evaluation.compute_statistics(real, extractor), stats)}
    result.update(samples=args.num_samples, seconds=round(time.perf_counter() - start, 1))
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "metric": args.metric, **result}, indent=2))


def _cmd_upload(args):
    url = presets.upload_preset(args.handle, args.folder, private=args.private or None,
                                  commit_message=args.message)
    print(f"uploaded {args.folder} to {args.handle}: {url}")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-cdm",
        description="Cascaded Diffusion Models for Keras 3 (Ho et al. 2021).",
    )
    parser.add_argument("--version", action="version", version=f"keras-cdm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    listing = commands.add_parser("presets", help="list the built-in presets")
    listing.set_defaults(func=_cmd_presets)

    arch = commands.add_parser(
        "architecture",
        help="build a preset's U-Nets (random weights) and print their summaries and parameter counts",
    )
    arch.add_argument("preset", help="a built-in preset name (see `keras-cdm presets`)")
    arch.add_argument("--dtype", help='dtype policy, e.g. "mixed_bfloat16"')
    arch.add_argument("--no-summary", action="store_true", help="print only the parameter count")
    arch.set_defaults(func=_cmd_architecture)

    sample = commands.add_parser("sample", help="sample a cascade (or one stage) and write a labelled PNG grid")
    sample.add_argument("--preset", required=True, help="a built-in name, a preset folder or hf://owner/repo")
    sample.add_argument("--revision", help="a Hub revision (branch, tag or commit) for hf:// presets")
    sample.add_argument("--labels", type=int, nargs="+", help="class labels, one per image")
    sample.add_argument("--num-images", type=int, help="number of images (unconditional cascades)")
    sample.add_argument("--per-class", type=int, metavar="K",
                        help="K images of every class, one row per class (instead of --labels)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.add_argument("--out", required=True, help="the PNG file to write")
    sample.add_argument("--steps", nargs="+", metavar="N",
                        help='sampling steps: one value for every stage or one per stage: "100" (evenly spaced), '
                             '"ddim25", "logsnr20" or "karras20" (spaced by noise level, for DPM-Solver++), "all"')
    sample.add_argument("--sampler", nargs="+", metavar="NAME",
                        help='sampler: one for every stage or one per stage: "ancestral", "ddim", "dpm++2m", '
                             '"dpm++3m" or "dpm++2m-sde" (see docs/sampling.md; default: the preset\'s)')
    sample.add_argument("--batch-size", type=int, default=16, help="images per call of a stage (default 16)")
    sample.add_argument("--columns", type=int, help="images per row of the grid")
    sample.add_argument("--quiet", action="store_true", help="no progress bars")
    sample.set_defaults(func=_cmd_sample)

    evaluate = commands.add_parser("evaluate", help="FID, Inception Score or Classification Accuracy Score of a preset")
    evaluate.add_argument("--preset", required=True, help="a built-in name, a preset folder or hf://owner/repo")
    evaluate.add_argument("--revision", help="a Hub revision for hf:// presets")
    evaluate.add_argument("--metric", required=True, choices=["fid", "is", "cas"])
    evaluate.add_argument("--data", help="real images: a folder (one sub-folder per class) or tfds:NAME")
    evaluate.add_argument("--data-dir", help="tfds data_dir")
    evaluate.add_argument("--split", default="validation", help="tfds split of the real images (default validation)")
    evaluate.add_argument("--num-samples", type=int, default=50000, help="generated samples (default 50000)")
    evaluate.add_argument("--num-real", type=int, help="real images (default: as many as samples)")
    evaluate.add_argument("--extractor", default="inception",
                          help="'inception' (Inception-v3 pool features) or a .keras classifier (domain FID/IS)")
    evaluate.add_argument("--feature-layer", help="layer of a .keras extractor giving the features")
    evaluate.add_argument("--inception-weights", help="local Inception-v3 weights file (default: the Keras cache)")
    evaluate.add_argument("--allow-download", action="store_true", help="download Inception-v3 weights if missing")
    evaluate.add_argument("--cas-epochs", type=int, default=20, help="classifier epochs for CAS (default 20)")
    evaluate.add_argument("--steps", nargs="+", metavar="N", help="sampling steps, as for `sample`")
    evaluate.add_argument("--sampler", nargs="+", metavar="NAME", help="samplers, as for `sample`")
    evaluate.add_argument("--batch-size", type=int, default=16, help="images per call of a stage (default 16)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--json", help="also write the result to this JSON file")
    evaluate.set_defaults(func=_cmd_evaluate)

    upload = commands.add_parser("upload", help="upload a preset folder to the Hugging Face Hub")
    upload.add_argument("folder", help="a preset folder written by save_to_preset")
    upload.add_argument("handle", help="hf://owner/repo[/subfolder]")
    upload.add_argument("--private", action="store_true", help="create the repository as private")
    upload.add_argument("--message", help="commit message")
    upload.set_defaults(func=_cmd_upload)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        args.func(args)
    except (ValueError, OSError) as error:
        parser.exit(2, f"keras-cdm: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
