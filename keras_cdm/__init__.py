"""keras_cdm: Cascaded Diffusion Models (Ho et al. 2021) for Keras 3."""

from keras_cdm.layers import (
    AttentionBlock,
    ClassEmbedding,
    Downsample,
    GroupNormalization,
    ResidualBlock,
    TimestepEmbedding,
    Upsample,
)
from keras_cdm.version import __version__
from keras_cdm.conditioning import BlurConditioningAugmentation, ConditioningAugmentation, GaussianConditioningAugmentation
from keras_cdm.diffusion import GaussianDiffusion
from keras_cdm.diffusion_model import DiffusionModel
from keras_cdm.pipeline import CascadedDiffusionPipeline
from keras_cdm.sampling import SamplingPlan
from keras_cdm.presets import list_presets, unet_from_preset, upload_preset
from keras_cdm.visualization import image_grid, save_image_grid
from keras_cdm.unet import DiffusionUNet

__all__ = [
    "AttentionBlock",
    "BlurConditioningAugmentation",
    "CascadedDiffusionPipeline",
    "ClassEmbedding",
    "ConditioningAugmentation",
    "DiffusionModel",
    "DiffusionUNet",
    "Downsample",
    "GaussianConditioningAugmentation",
    "GaussianDiffusion",
    "GroupNormalization",
    "ResidualBlock",
    "SamplingPlan",
    "TimestepEmbedding",
    "Upsample",
    "__version__",
    "image_grid",
    "list_presets",
    "save_image_grid",
    "unet_from_preset",
    "upload_preset",
]
