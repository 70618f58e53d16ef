"""The `keras-cdm` command. Bad arguments give a one-line error and exit code 2."""

import argparse
import resource
import sys
import time

import keras_cdm


def _cmd_presets(args):
    for name, description in keras_cdm.list_presets().items():
        print(f"{name:28s} {description}")


def _cmd_architecture(args):
    start = time.perf_counter()
    unet = keras_cdm.unet_from_preset(args.preset, **({"dtype": args.dtype} if args.dtype else {}))
    seconds = time.perf_counter() - start
    if not args.no_summary:
        unet.summary(line_length=110)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.preset}: {unet.count_params():,} parameters")
    print(f"built in {seconds:.1f} s; peak resident memory {peak_gib:.2f} GiB")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-cdm",
        description="Cascaded Diffusion Models for Keras 3 (Ho et al. 2021).",
    )
    parser.add_argument("--version", action="version", version=f"keras-cdm {keras_cdm.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    presets = commands.add_parser("presets", help="list the built-in presets")
    presets.set_defaults(func=_cmd_presets)

    arch = commands.add_parser(
        "architecture",
        help="build a preset's U-Net (random weights) and print its summary and parameter count",
    )
    arch.add_argument("preset", help="a built-in preset name (see `keras-cdm presets`)")
    arch.add_argument("--dtype", help='dtype policy, e.g. "mixed_bfloat16"')
    arch.add_argument("--no-summary", action="store_true", help="print only the parameter count")
    arch.set_defaults(func=_cmd_architecture)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        args.func(args)
    except ValueError as error:
        parser.exit(2, f"keras-cdm: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
