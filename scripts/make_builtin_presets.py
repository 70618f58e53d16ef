"""Writes the weightless built-in presets of the paper (Appendix B) into `presets/`.

    python scripts/make_builtin_presets.py [--out presets]

Each stage is built once (random weights, about 10 GiB for all four) to record its
parameter count; each cascade folder gets copies of its stage presets, as a cascade
preset must be complete on its own (one Hub repo, one folder).
"""

import argparse
import json
import shutil
from pathlib import Path

from keras_cdm import (BlurConditioningAugmentation, DiffusionModel, DiffusionUNet, GaussianConditioningAugmentation,
                       GaussianDiffusion, presets)
from keras_cdm.pipeline import CascadedDiffusionPipeline

SOURCE = "Ho et al. 2021, Cascaded Diffusion Models, Appendix B (architecture, diffusion); Tables 3-4 (sampling)"
COMMON = dict(num_classes=1000, image_channels=3, use_scale_shift_norm=True, num_groups=32)
LOW_RES = dict(base_channels=256, channel_multipliers=(1, 2, 3, 4), attention_resolutions=(16, 8), num_heads=4,
               dropout=0.1, learned_variance=True)
HIGH_RES = dict(base_channels=128, num_res_blocks=3, attention_resolutions=(16,), num_heads=1, dropout=0.0,
                learned_variance=False, conditioning="noise_level")


def stages():
    hybrid = dict(variance="learned_range", loss="hybrid")
    continuous = GaussianDiffusion(2000, "linear", variance="fixed_large", conditioning="noise_level")
    blur = BlurConditioningAugmentation(sigma_range=(0.4, 0.6), probability=0.5)
    return {
        "cdm_imagenet32_base": (
            DiffusionModel(DiffusionUNet(image_size=32, num_res_blocks=6, **LOW_RES, **COMMON),
                           GaussianDiffusion(4000, "cosine", **hybrid), name="cdm_imagenet32_base"),
            "ImageNet 32x32 base model (Appendix B): 256 channels, multipliers 1,2,3,4, 6 blocks, attention at 16 "
            "and 8, learned variances (hybrid loss), cosine schedule, 4000 steps."),
        "cdm_imagenet32_to_64": (
            DiffusionModel(DiffusionUNet(image_size=64, low_res_size=32, num_res_blocks=5,
                                         augmentation_level_embedding=True, **LOW_RES, **COMMON),
                           GaussianDiffusion(4000, "cosine", **hybrid),
                           augmentation=GaussianConditioningAugmentation(max_level=2000, num_timesteps=4000),
                           name="cdm_imagenet32_to_64"),
            "ImageNet 32->64 super-resolution (Appendix B): 256 channels, multipliers 1,2,3,4, 5 blocks, attention "
            "at 16 and 8, learned variances, Gaussian conditioning augmentation amortized over s in [0, 2000], "
            "cosine schedule, 4000 steps."),
        "cdm_imagenet64_to_128": (
            DiffusionModel(DiffusionUNet(image_size=128, low_res_size=64, channel_multipliers=(1, 2, 4, 8, 8),
                                         **HIGH_RES, **COMMON),
                           continuous, augmentation=blur, name="cdm_imagenet64_to_128"),
            "ImageNet 64->128 super-resolution (Appendix B): 128 channels, multipliers 1,2,4,8,8, 3 blocks, "
            "attention at 16, fixed variances, blur conditioning augmentation, continuous noise conditioning "
            "(linear schedule, 2000 steps; 100 at inference)."),
        "cdm_imagenet64_to_256": (
            DiffusionModel(DiffusionUNet(image_size=256, low_res_size=64, channel_multipliers=(1, 2, 4, 4, 8, 8),
                                         **HIGH_RES, **COMMON),
                           continuous, augmentation=blur, random_flip=True, name="cdm_imagenet64_to_256"),
            "ImageNet 64->256 super-resolution (Appendix B): 128 channels, multipliers 1,2,4,4,8,8, 3 blocks, "
            "attention at 16, fixed variances, blur conditioning augmentation (sigma ~ U(0.4, 0.6), half the "
            "examples), random flips, continuous noise conditioning (linear schedule, 2000 steps; 100 at inference)."),
    }


INFERENCE_100 = {"noise_schedule": {"schedule": "linear", "num_timesteps": 100}}
TRUNCATED_501 = {"augmentation_level": 501, "truncated": True}
CASCADES = {
    "cdm_imagenet64": (["cdm_imagenet32_base", "cdm_imagenet32_to_64"], [{}, TRUNCATED_501],
                       "ImageNet 64x64 cascade (Table 1a: FID 1.48): 32x32 base + 32->64 with truncated "
                       "conditioning augmentation at s=501, 4000 steps per stage."),
    "cdm_imagenet128": (["cdm_imagenet32_base", "cdm_imagenet32_to_64", "cdm_imagenet64_to_128"],
                        [{}, TRUNCATED_501, INFERENCE_100],
                        "ImageNet 128x128 cascade (Table 1a): 32 base, 32->64 (truncated, s=501), 64->128 "
                        "(blur-augmented, 100-step linear inference schedule)."),
    "cdm_imagenet256": (["cdm_imagenet32_base", "cdm_imagenet32_to_64", "cdm_imagenet64_to_256"],
                        [{}, TRUNCATED_501, INFERENCE_100],
                        "ImageNet 256x256 cascade (Table 1a: FID 4.88): 32 base, 32->64 (truncated, s=501), "
                        "64->256 (blur-augmented, 100-step linear inference schedule)."),
}


def write_stage(folder, model, description):
    model.save_to_preset(folder, overwrite=True, include_weights=False, description=description)
    metadata = json.loads((folder / presets.METADATA).read_text())
    metadata["source"] = SOURCE
    (folder / presets.METADATA).write_text(json.dumps(metadata, indent=2) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "presets"))
    out = Path(parser.parse_args().out)
    built = stages()
    for name, (model, description) in built.items():
        write_stage(out / name, model, description)
        print(f"{name}: {model.unet.count_params():,} parameters")
    for name, (stage_names, sampling, description) in CASCADES.items():
        pipeline = CascadedDiffusionPipeline([built[s][0] for s in stage_names], sampling, description)

        def write(tmp, stage_names=stage_names, pipeline=pipeline):
            for stage in stage_names:
                shutil.copytree(out / stage, tmp / stage)
            presets.write_cascade(tmp, pipeline.get_config(), pipeline.stages)

        presets.write_atomically(out / name, write, overwrite=True)
        print(f"{name}: {len(stage_names)} stages")


if __name__ == "__main__":
    main()
