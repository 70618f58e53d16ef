"""The `keras-cdm` command.

Anything the user can fix (a bad argument, a missing or unreadable file, an unreachable
Hub, a request too large for memory) ends the command with exactly one line,
`keras-cdm: error: ...`, on stderr and exit status 2; an unexpected failure (a bug) with
one `keras-cdm: error: internal error ...` line and status 1. `--debug` (before or after
the command) shows the traceback instead. Options are checked, with their bounds, before
any model is loaded. The installed command enters through `keras_cdm_cli`, which sets the
libraries' logging defaults before Keras is imported (see its docstring).
"""

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from keras_cdm import presets
from keras_cdm._hub import check_revision
from keras_cdm._validation import (
    check_choice,
    check_finite,
    check_num_steps,
    check_text,
    has_control_characters,
    shown,
)
from keras_cdm.diffusion import SAMPLERS
from keras_cdm.guidance import MAX_GUIDANCE_SCALE
from keras_cdm.pipeline import CascadedDiffusionPipeline
from keras_cdm.seeding import SEED_LIMIT
from keras_cdm.version import __version__
from keras_cdm.visualization import save_image_grid

MAX_GRID_IMAGES = 10_000  # images in one `sample` grid (100 x 100 tiles)
MAX_EVALUATION_SAMPLES = 10_000_000  # --num-samples, --num-real (FID takes 50,000)
MAX_CAS_EPOCHS = 10_000
MAX_BATCH_SIZE = 2**31 - 1
USER_ERRORS = (ValueError, OSError, MemoryError, ImportError)
"""Errors the user can fix (exit status 2): checks' ValueErrors, files and network
(OSError), requests too large (MemoryError), missing optional packages (ImportError)."""


def _cmd_presets(args):
    for name, description in presets.list_presets().items():
        print(f"{name:28s} {description}")


def _cmd_architecture(args):
    start = time.perf_counter()
    if presets.preset_kind(presets.builtin_preset_path(args.preset)) == "cascade":
        if args.dtype is not None:
            raise ValueError(f"--dtype applies to stage presets; {args.preset!r} is a cascade. Received: {args.dtype!r}")
        stages = CascadedDiffusionPipeline.from_preset(args.preset, load_weights=False).stages
        units = [(stage.name, stage.unet) for stage in stages]
    else:
        overrides = {} if args.dtype is None else {"dtype": args.dtype}
        units = [(args.preset, presets.unet_from_preset(args.preset, **overrides))]
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
    if args.per_class is not None and (args.labels or args.num_images):
        raise ValueError("--per-class takes a positive integer and replaces --labels and --num-images. "
                         f"Received: --per-class {args.per_class}, --labels {args.labels}, "
                         f"--num-images {args.num_images}")
    if args.labels and len(args.labels) > MAX_GRID_IMAGES:
        raise ValueError(f"--labels takes at most {MAX_GRID_IMAGES} labels (one grid). Received: {len(args.labels)}")
    _check_output("--out", args.out, ".png")
    pipeline = _load_pipeline(args.preset, args.revision)
    _apply_sampling(pipeline, args)
    labels, columns = args.labels, args.columns
    if args.per_class is not None:
        classes = pipeline.stages[0].unet.num_classes
        if classes is None:
            raise ValueError(f"--per-class needs a class-conditional cascade; {args.preset!r} is unconditional.")
        if classes * args.per_class > MAX_GRID_IMAGES:
            raise ValueError(f"--per-class {args.per_class} makes {classes * args.per_class} images ({classes} "
                             f"classes); one grid takes at most {MAX_GRID_IMAGES}. Received: --per-class "
                             f"{args.per_class}")
        labels, columns = np.repeat(np.arange(classes), args.per_class).tolist(), columns or args.per_class
    count = len(labels) if labels else args.num_images
    if columns is not None and count is not None and columns > count:
        raise ValueError(f"--columns must be in [1, {count}] (the number of images). Received: --columns {columns}")
    start = time.perf_counter()
    images = pipeline.generate(labels=labels, num_images=args.num_images, seed=args.seed,
                               batch_size=args.batch_size, verbose=not args.quiet)
    seconds = time.perf_counter() - start
    path = save_image_grid(images, args.out, labels=labels, columns=columns)
    print(f"wrote {len(images)} samples ({images.shape[1]}x{images.shape[2]}) to {path} in {seconds:.1f} s")


def _apply_sampling(pipeline, args):
    """--steps, --sampler and --guidance-scale: one value for every stage, or one per stage."""
    settings = [{} for _ in pipeline.stages]
    for option, key, values in (("--steps", "num_steps", args.steps), ("--sampler", "sampler", args.sampler),
                                ("--guidance-scale", "guidance_scale", args.guidance_scale)):
        if not values:
            continue
        if len(values) not in (1, len(pipeline.stages)):
            raise ValueError(f"{option} takes one value, or one per stage ({len(pipeline.stages)}: "
                             f"{pipeline.stage_names}). Received: {len(values)} values")
        for stage_settings, value in zip(settings, values * len(pipeline.stages) if len(values) == 1 else values):
            stage_settings[key] = _steps_value(value) if key == "num_steps" else value
    for k, stage_settings in enumerate(settings):
        if stage_settings:
            pipeline.set_sampling(k, **stage_settings)


def _steps_value(value):
    """A --steps value as `num_steps`: "all" (every step) None, "100" 100, a spacing
    ("ddim25", "logsnr20", ...) as it is; a value already converted is returned as it is."""
    if not isinstance(value, str):
        return value
    if value in ("all", "full"):
        return None
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else value


def _num_steps(text):
    """argparse type of --steps: a value `set_sampling` may take (checked against each stage later)."""
    try:
        return check_num_steps(_steps_value(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _guidance_scale(text):
    """argparse type of --guidance-scale: a number in [0, MAX_GUIDANCE_SCALE]."""
    value = float(text)  # a ValueError: argparse's "invalid float value: 'x'"
    try:
        return check_finite("guidance_scale", value, 0.0, MAX_GUIDANCE_SCALE)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


_guidance_scale.__name__ = "float"
_GUIDANCE_HELP = ("classifier-free guidance scale: one for every stage or one per stage; 1 (default) is none, "
                  ">1 favours the class; only for stages trained with label dropout (docs/sampling.md)")


def _sampler(value):
    try:
        return check_choice("sampler", value, SAMPLERS)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _int_in(low, high):
    """An argparse type: an integer in [low, high]."""
    def parse(text):
        value = int(text)  # a ValueError: argparse's "invalid int value: 'x'"
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {high}]. Received: {shown(text)}")
        return value

    parse.__name__ = "int"
    return parse


def _text(text):
    """An argparse type: a string without control characters (a name, a split, a message)."""
    try:
        return check_text("value", text, 1000)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be at most 1000 characters without control characters. "
                                         f"Received: {shown(text)}") from None


def _revision(text):
    try:
        return check_revision(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _check_output(option, path, suffix=None):
    """Fails before any work when `path` cannot be written: a folder, a device or a pipe,
    a folder that cannot be made or written in, or the wrong suffix."""
    if suffix == ".png" and Path(path).suffix.lower() != ".png":
        raise ValueError(f"{option}: grids are written as PNG: the path must end in .png. Received: {path!r}")
    if not path.strip() or has_control_characters(path):
        raise ValueError(f"{option} must be a file path without control characters. Received: {path!r}")
    target = Path(path)
    try:
        if target.is_dir():
            raise ValueError(f"{option} is a folder; give the path of a file to write. Received: {path!r}")
        if target.exists() and not target.is_file():
            raise ValueError(f"{option} exists and is not a regular file (a device or a pipe). Received: {path!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():  # the name itself may be refused (too long, ...): try it
            target.touch()
            target.unlink()
        else:
            with tempfile.TemporaryFile(dir=target.parent):
                pass
    except OSError as error:
        raise ValueError(f"{option} cannot be written ({error.strerror or error}). Received: {path!r}") from None


def _check_input(option, path, kind):
    """`path` is an existing folder (`kind` "folder") or regular file ("file")."""
    try:
        exists = Path(path).is_dir() if kind == "folder" else Path(path).is_file()
    except OSError:  # a name too long for the file system, ...
        exists = False
    if not path.strip() or not exists:  # "" would be the working folder
        raise ValueError(f"{option} must be an existing {kind}. Received: {path!r}")


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
    import zipfile

    import keras

    if not args.extractor.endswith(".keras"):
        raise ValueError(f"--extractor is 'inception' or a .keras classifier file. Received: {args.extractor!r}")
    _check_input("--extractor", args.extractor, "file")
    if not zipfile.is_zipfile(args.extractor):
        raise ValueError(f"--extractor must be a .keras model file (a zip archive written by model.save); this "
                         f"file is not one. Received: {args.extractor!r}")
    try:
        model = keras.saving.load_model(args.extractor, safe_mode=True)
    except Exception as error:  # a broken archive raises anything: BadZipFile, KeyError, JSON errors, ...
        raise ValueError(f"--extractor could not be loaded as a Keras model ({type(error).__name__}: "
                         f"{_one_line(error)[:500]}). Received: {args.extractor!r}") from error
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

    _check_evaluate_options(args)
    if args.metric in ("fid", "cas") and args.data is None:
        raise ValueError(f"--metric {args.metric} needs --data: a folder of real images or tfds:NAME")
    if args.data is not None:
        if args.data.startswith("tfds:"):
            if not args.data[5:]:
                raise ValueError(f"--data tfds:NAME needs a dataset name. Received: {args.data!r}")
        else:
            _check_input("--data", args.data, "folder")
    if args.data_dir is not None:
        _check_input("--data-dir", args.data_dir, "folder")
    if args.inception_weights is not None:
        _check_input("--inception-weights", args.inception_weights, "file")
    if args.json is not None:
        _check_output("--json", args.json)
    extractor = None if args.metric == "cas" else _extractor(args)  # a bad extractor fails before sampling
    pipeline = _load_pipeline(args.preset, args.revision)
    _apply_sampling(pipeline, args)
    classes = pipeline.stages[0].unet.num_classes
    labels = None if classes is None else np.arange(args.num_samples) % classes
    samples = pipeline.iter_generate(labels=labels, num_images=args.num_samples, seed=args.seed,
                                     batch_size=args.batch_size, chunk_size=max(args.batch_size, 100), verbose=False)
    start = time.perf_counter()
    if args.metric == "cas":
        if classes is None:
            raise ValueError("--metric cas needs a class-conditional cascade")
        real, real_labels = _real_data(args, pipeline, args.num_real or args.num_samples)  # fails before sampling
        generated = np.concatenate(list(samples))
        result = evaluation.classification_accuracy_score(generated, labels, real, real_labels, classes,
                                                          epochs=args.cas_epochs, seed=args.seed)
        result = {"top1": result["top1"], "top5": result["top5"]}
    elif args.metric == "is":
        _, score = evaluation.compute_statistics(samples, extractor, num_samples=args.num_samples,
                                                 inception_score=True, splits=min(10, args.num_samples))
        mean, std = score.result()
        result = {"is": mean, "is_std": std}
    else:
        real, _ = _real_data(args, pipeline, args.num_real or args.num_samples)  # fails before sampling
        real_stats = evaluation.compute_statistics(real, extractor)
        del real
        stats = evaluation.compute_statistics(samples, extractor, num_samples=args.num_samples)
        result = {"fid": evaluation.fid(real_stats, stats)}
    result.update(samples=args.num_samples, seconds=round(time.perf_counter() - start, 1))
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    if args.json is not None:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "metric": args.metric, **result}, indent=2))


_EVALUATE_OPTIONS = {  # option: (its attribute, the metrics it applies to)
    "--data": ("data", ("fid", "cas")),
    "--num-real": ("num_real", ("fid", "cas")),
    "--cas-epochs": ("cas_epochs", ("cas",)),
    "--extractor": ("extractor", ("fid", "is")),
    "--feature-layer": ("feature_layer", ("fid", "is")),
    "--inception-weights": ("inception_weights", ("fid", "is")),
    "--allow-download": ("allow_download", ("fid", "is")),
}


def _check_evaluate_options(args):
    """Refuses an option that would be ignored (it does not apply to the metric, the data or
    the extractor given), then fills in the defaults of the ones left out."""
    given = {option: getattr(args, name) for option, (name, _) in _EVALUATE_OPTIONS.items()}
    given["--allow-download"] = given["--allow-download"] or None
    for option, (_, metrics) in _EVALUATE_OPTIONS.items():
        if given[option] is not None and args.metric not in metrics:
            raise ValueError(f"{option} does not apply to --metric {args.metric} (only to --metric "
                             f"{' or '.join(metrics)}). Received: {option} {given[option]!r}")
    tfds_data = args.data is not None and args.data.startswith("tfds:")
    for option, value in (("--data-dir", args.data_dir), ("--split", args.split)):
        if value is not None and not tfds_data:
            raise ValueError(f"{option} applies only to --data tfds:NAME. Received: {option} {value!r} with "
                             f"--data {args.data!r}")
    inception = args.extractor in (None, "inception")
    if args.feature_layer is not None and inception:
        raise ValueError(f"--feature-layer applies only to a .keras --extractor. Received: --feature-layer "
                         f"{args.feature_layer!r} with --extractor {args.extractor or 'inception'!r}")
    for option in ("--inception-weights", "--allow-download"):
        if given[option] is not None and not inception:
            raise ValueError(f"{option} applies only to --extractor inception. Received: {option} with "
                             f"--extractor {args.extractor!r}")
    args.extractor = args.extractor or "inception"
    args.split = args.split or "validation"
    args.cas_epochs = args.cas_epochs or 20


def _cmd_upload(args):
    url = presets.upload_preset(args.handle, args.folder, private=args.private or None,
                                  commit_message=args.message)
    print(f"uploaded {args.folder} to {args.handle}: {url}")


class _Parser(argparse.ArgumentParser):
    """argparse, whose errors end with the command's one `keras-cdm: error:` line."""

    def error(self, message):
        self.print_usage(sys.stderr)
        command = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"keras-cdm: error: {command}{_one_line(message)}\n")


SAMPLER_HELP = """\
picking a sampler and a step budget (docs/sampling.md):
  Each step of each stage costs one network evaluation (NFE) per image. A preset samples
  with the settings it was saved with; for cdm_mnist32 those are the best split of 40 NFE
  found by keras_cdm.step_budget.search_step_budget, which measures every stage's
  samplers and step counts and then the best splits of a budget end to end.
  --sampler dpm++2m-sde --steps logsnr10    few steps, stochastic: 10 per stage
  --sampler dpm++2m --steps logsnr20        deterministic (same noise, same image)
  --sampler ancestral --steps all           the paper's sampler over every step
  --sampler dpm++2m dpm++2m dpm++2m-sde     one value per stage (here: 3 stages)
"""


def build_parser():
    parser = _Parser(
        prog="keras-cdm",
        description="Cascaded Diffusion Models for Keras 3 (Ho et al. 2021).",
    )
    parser.add_argument("--version", action="version", version=f"keras-cdm {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="let TensorFlow, XLA and PyTorch log as in Python, and show the traceback of an "
                             "error (also after COMMAND)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="library logs and the traceback of an error")

    listing = commands.add_parser("presets", help="list the built-in presets", parents=[common])
    listing.set_defaults(func=_cmd_presets)

    arch = commands.add_parser(
        "architecture", parents=[common],
        help="build a preset's U-Nets (random weights) and print their summaries and parameter counts",
    )
    arch.add_argument("preset", help="a built-in preset name (see `keras-cdm presets`)")
    arch.add_argument("--dtype", help='dtype policy, e.g. "mixed_bfloat16"')
    arch.add_argument("--no-summary", action="store_true", help="print only the parameter count")
    arch.set_defaults(func=_cmd_architecture)

    seed = _int_in(0, SEED_LIMIT - 1)
    batch_size = _int_in(1, MAX_BATCH_SIZE)
    sample = commands.add_parser("sample", help="sample a cascade (or one stage) and write a labelled PNG grid",
                                 parents=[common], epilog=SAMPLER_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sample.add_argument("--preset", required=True, help="a built-in name, a preset folder or hf://owner/repo")
    sample.add_argument("--revision", type=_revision, help="a Hub revision (branch, tag or commit) for hf:// presets")
    sample.add_argument("--labels", type=_int_in(0, 100_000), nargs="+", help="class labels, one per image")
    sample.add_argument("--num-images", type=_int_in(1, MAX_GRID_IMAGES),
                        help=f"number of images (unconditional cascades; at most {MAX_GRID_IMAGES})")
    sample.add_argument("--per-class", type=_int_in(1, MAX_GRID_IMAGES), metavar="K",
                        help="K images of every class, one row per class (instead of --labels)")
    sample.add_argument("--seed", type=seed, default=0, help="random seed in [0, 2**31) (default 0)")
    sample.add_argument("--out", required=True, help="the PNG file to write")
    sample.add_argument("--steps", nargs="+", metavar="N", type=_num_steps,
                        help='sampling steps: one value for every stage or one per stage: "100" (evenly spaced), '
                             '"ddim25", "logsnr20" or "karras20" (spaced by noise level, for DPM-Solver++), "all"')
    sample.add_argument("--sampler", nargs="+", metavar="NAME", type=_sampler,
                        help='sampler: one for every stage or one per stage: "ancestral", "ddim", "dpm++2m", '
                             '"dpm++3m" or "dpm++2m-sde" (see docs/sampling.md; default: the preset\'s)')
    sample.add_argument("--guidance-scale", nargs="+", metavar="W", type=_guidance_scale, help=_GUIDANCE_HELP)
    sample.add_argument("--batch-size", type=batch_size, default=16, help="images per call of a stage (default 16)")
    sample.add_argument("--columns", type=_int_in(1, MAX_GRID_IMAGES),
                        help="images per row of the grid (at most the number of images)")
    sample.add_argument("--quiet", action="store_true", help="no progress bars")
    sample.set_defaults(func=_cmd_sample)

    evaluate = commands.add_parser("evaluate", help="FID, Inception Score or Classification Accuracy Score of a preset",
                                   parents=[common])
    evaluate.add_argument("--preset", required=True, help="a built-in name, a preset folder or hf://owner/repo")
    evaluate.add_argument("--revision", type=_revision, help="a Hub revision for hf:// presets")
    evaluate.add_argument("--metric", required=True, choices=["fid", "is", "cas"])
    evaluate.add_argument("--data", help="real images: a folder (one sub-folder per class) or tfds:NAME")
    evaluate.add_argument("--data-dir", help="tfds data_dir")
    evaluate.add_argument("--split", type=_text,
                          help="tfds split of the real images (default validation)")
    evaluate.add_argument("--num-samples", type=_int_in(1, MAX_EVALUATION_SAMPLES), default=50000,
                          help=f"generated samples (default 50000, at most {MAX_EVALUATION_SAMPLES})")
    evaluate.add_argument("--num-real", type=_int_in(1, MAX_EVALUATION_SAMPLES),
                          help="real images (default: as many as samples)")
    evaluate.add_argument("--extractor",
                          help="'inception' (Inception-v3 pool features, the default) or a .keras classifier "
                               "(domain FID/IS)")
    evaluate.add_argument("--feature-layer", type=_text, help="layer of a .keras extractor giving the features")
    evaluate.add_argument("--inception-weights", help="local Inception-v3 weights file (default: the Keras cache)")
    evaluate.add_argument("--allow-download", action="store_true", help="download Inception-v3 weights if missing")
    evaluate.add_argument("--cas-epochs", type=_int_in(1, MAX_CAS_EPOCHS),
                          help="classifier epochs for CAS (default 20)")
    evaluate.add_argument("--steps", nargs="+", metavar="N", type=_num_steps, help="sampling steps, as for `sample`")
    evaluate.add_argument("--sampler", nargs="+", metavar="NAME", type=_sampler, help="samplers, as for `sample`")
    evaluate.add_argument("--guidance-scale", nargs="+", metavar="W", type=_guidance_scale,
                          help="guidance scales, as for `sample`")
    evaluate.add_argument("--batch-size", type=batch_size, default=16, help="images per call of a stage (default 16)")
    evaluate.add_argument("--seed", type=seed, default=0)
    evaluate.add_argument("--json", help="also write the result to this JSON file")
    evaluate.set_defaults(func=_cmd_evaluate)

    upload = commands.add_parser("upload", help="upload a preset folder to the Hugging Face Hub", parents=[common])
    upload.add_argument("folder", help="a preset folder written by save_to_preset")
    upload.add_argument("handle", help="hf://owner/repo[/subfolder]")
    upload.add_argument("--private", action="store_true", help="create the repository as private")
    upload.add_argument("--message", type=_text, help="commit message")
    upload.set_defaults(func=_cmd_upload)
    _add_plan_parser(commands, common)
    return parser


def _add_plan_parser(commands, common):
    plan = commands.add_parser("plan", parents=[common],
                               help="memory per device of training a stage, with and without sharding and remat, "
                                    "and the setup to train it with (docs/distribution_plan.md)")
    plan.add_argument("preset", help="a built-in stage preset (see `keras-cdm presets`)")
    plan.add_argument("--devices", type=_int_in(1, 1 << 20), default=8, help="number of devices (default 8)")
    plan.add_argument("--device-memory", type=float, default=80.0, metavar="GIB",
                      help="memory of one device in GiB (default 80; a TPU v3 chip: 16)")
    plan.add_argument("--batch-size", type=_int_in(1, MAX_BATCH_SIZE),
                      help="global batch size (default: the paper's for its ImageNet stages)")
    plan.add_argument("--model-axis", type=_int_in(1, 1 << 20), metavar="M",
                      help="only this model-axis size (and 1, no sharding); default: every divisor of --devices")
    plan.set_defaults(func=_cmd_plan)


def _cmd_plan(args):
    from keras_cdm import memory_plan

    check_finite("device_memory", args.device_memory, 1e-6, 1e9)
    print(memory_plan.plan(args.preset, args.devices, args.device_memory * 2**30, args.batch_size,
                           model_axis=args.model_axis).table())


def _one_line(error):
    """An error's message on one line (multi-line messages, e.g. TensorFlow's, joined)."""
    return " ".join(str(error).split()) or type(error).__name__


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        parser.exit(130, "keras-cdm: error: interrupted\n")
    except Exception as error:  # one line, no traceback (unless --debug): see the module's docstring
        if args.debug:
            raise
        if isinstance(error, MemoryError):
            parser.exit(2, f"keras-cdm: error: not enough memory for this request ({_one_line(error)})\n")
        if isinstance(error, USER_ERRORS):
            parser.exit(2, f"keras-cdm: error: {_one_line(error)}\n")
        parser.exit(1, f"keras-cdm: error: internal error ({type(error).__name__}: {_one_line(error)}); run "
                       "with --debug for the traceback\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
