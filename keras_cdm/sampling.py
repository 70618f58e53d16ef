"""Sampling plans: a stage's sampling settings, validated once, as an immutable plan.

A stage turns its settings (sampler, steps, DDIM eta, clipping, the augmentation level s
and mode of a Gaussian-augmented upsampler, the inference noise schedule of a
continuous-noise stage, the classifier-free guidance scale) into a `SamplingPlan` with `DiffusionModel.sampling_plan`; the
plan derives the inference process those settings make, once. The cascade stores one
plan per stage, links each stage's stop step to the truncated augmentation of the next
(`stopping_for`), and hands each stage its plan.
"""

import copy
import dataclasses
import types

import numpy as np

from keras_cdm._validation import check_bool, check_choice, check_eta, check_num_steps, is_int, shown
from keras_cdm.diffusion import SAMPLERS, GaussianDiffusion
from keras_cdm.guidance import check_guidance_scale

SAMPLING_DEFAULTS = {
    "sampler": "ancestral", "num_steps": None, "eta": 0.0, "clip_denoised": True,
    "augmentation_level": 0, "truncated": False, "noise_schedule": None, "guidance_scale": 1.0,
}
_SCHEDULE_KEYS = ("schedule", "num_timesteps", "beta_start", "beta_end", "variance")
_INFERENCE_VARIANCES = ("fixed_small", "fixed_large")


@dataclasses.dataclass(frozen=True)
class SamplingPlan:
    """How one stage samples: its settings and the process they make.

    Build it with `DiffusionModel.sampling_plan(**settings)` (the settings are the keys
    of `SAMPLING_DEFAULTS`). The plan is immutable and consistent: `process`, the
    inference `GaussianDiffusion` (the training process `training_process`, or the
    inference noise schedule, respaced to `num_steps`), is derived from the settings, so
    `dataclasses.replace(plan, num_steps=...)` gives a plan whose process follows.
    `stop_step` is None (run to x_0) or the step of `process` at which to stop and
    return z_s; `truncation_process` is the process that makes this stage's z_s input
    when it uses truncated augmentation.
    """

    training_process: GaussianDiffusion = dataclasses.field(repr=False, compare=False)
    sampler: str = "ancestral"
    num_steps: object = None
    eta: float = 0.0
    clip_denoised: bool = True
    augmentation_level: int = 0
    truncated: bool = False
    noise_schedule: object = None
    guidance_scale: float = 1.0
    stop_step: object = None
    truncation_process: object = dataclasses.field(default=None, repr=False, compare=False)
    process: GaussianDiffusion = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        schedule = None if self.noise_schedule is None else types.MappingProxyType(dict(self.noise_schedule))
        object.__setattr__(self, "noise_schedule", schedule)
        process = inference_process(self.training_process, self.num_steps, schedule)
        object.__setattr__(self, "process", process)
        if self.stop_step is not None:
            process.check_steps(process.num_timesteps - 1, self.stop_step)

    @property
    def settings(self):
        """The settings (a fresh, JSON-ready dict) that make this plan."""
        settings = {key: getattr(self, key) for key in SAMPLING_DEFAULTS}
        settings["num_steps"] = copy.deepcopy(self.num_steps)  # section counts may be a list
        settings["noise_schedule"] = None if self.noise_schedule is None else dict(self.noise_schedule)
        return settings

    @property
    def start_step(self):
        return self.process.num_timesteps - 1

    @property
    def num_network_evaluations(self):
        """Reverse steps the plan runs (one network evaluation each)."""
        return self.start_step - (-1 if self.stop_step is None else self.stop_step)

    def stopping_for(self, following, stage_name, previous_name):
        """This plan, stopping where its process holds z_s when the next stage's plan
        `following` (of stage `stage_name`) uses truncated augmentation at level s > 0;
        running to x_0 otherwise."""
        level = following.augmentation_level if following.truncated else 0
        if not level:
            return self if self.stop_step is None else dataclasses.replace(self, stop_step=None)
        forward, process = following.truncation_process, self.process
        if process.conditioning != "timestep" or process.original_num_timesteps != forward.num_timesteps \
                or not np.allclose(process.respace(None).betas, forward.betas):
            raise ValueError(
                f"Truncated augmentation of stage {stage_name!r} needs stage {previous_name!r} to use the "
                f"augmentation's process ({forward.num_timesteps} steps, {forward.schedule!r}); use truncated=False."
            )
        kept = process.timestep_map
        if level - 1 not in set(kept.tolist()):
            near = kept[np.argsort(np.abs(kept - (level - 1)))[:3]] + 1
            raise ValueError(
                f"Truncated augmentation at s={level} needs stage {previous_name!r} to visit step s; with "
                f"num_steps={self.num_steps!r} it does not. Nearest levels it visits: "
                f"{sorted(near.tolist())}. Received: augmentation_level={level}"
            )
        stop_step = int(np.flatnonzero(kept == level - 1)[0])
        if stop_step == len(kept) - 1:
            raise ValueError(
                f"Truncated augmentation at s={level} would stop stage {previous_name!r} at the first step it "
                f"visits (z_s would be its initial noise, no step run). Use s < {level} (levels it visits: "
                f"{sorted((kept[:-1] + 1).tolist())[-3:]} and below) or truncated=False. "
                f"Received: augmentation_level={level}"
            )
        return self if self.stop_step == stop_step else dataclasses.replace(self, stop_step=stop_step)


def check_settings(settings):
    """`settings` is a dict whose keys are sampling settings; returns it."""
    if not isinstance(settings, dict) or not set(settings) <= set(SAMPLING_DEFAULTS):
        bad = sorted(set(settings) - set(SAMPLING_DEFAULTS)) if isinstance(settings, dict) else settings
        raise ValueError(f"Sampling settings take the keys {sorted(SAMPLING_DEFAULTS)}. Received: {bad!r}")
    return settings


def check_augmentation_settings(augmentation, level, truncated, stage_name):
    """The augmentation level s and mode a stage with `augmentation` (None: none) may sample with."""
    maximum = 0 if augmentation is None else augmentation.max_sampling_level
    if not is_int(level) or not 0 <= level <= maximum:
        allowed = f"[0, {maximum}]" if maximum else "0 (no Gaussian augmentation)"
        raise ValueError(f"Stage {stage_name!r}: `augmentation_level` must be an integer in {allowed}. "
                         f"Received: augmentation_level={level!r}")
    truncated = check_bool("truncated", truncated)
    if truncated and not (augmentation is not None and augmentation.supports_truncation):
        raise ValueError(f"Stage {stage_name!r}: `truncated` must be False: `truncated=True` needs a "
                         f"Gaussian-augmented upsampler after another stage. Received: truncated={truncated!r}")
    return int(level), truncated


def make_plan(diffusion, augmentation, settings, stage_name, guidable=False):
    """The `SamplingPlan` of a stage with training process `diffusion` and
    conditioning `augmentation` (None for a base stage or no augmentation);
    `guidable`: its U-Net has the null label of classifier-free guidance."""
    given = {**SAMPLING_DEFAULTS, **check_settings(settings)}
    level, truncated = check_augmentation_settings(augmentation, given["augmentation_level"], given["truncated"],
                                                   stage_name)
    return SamplingPlan(
        training_process=diffusion,
        sampler=check_choice("sampler", given["sampler"], SAMPLERS),
        num_steps=check_num_steps(given["num_steps"]),
        eta=check_eta(given["eta"]),
        clip_denoised=check_bool("clip_denoised", given["clip_denoised"]),
        augmentation_level=level,
        truncated=truncated,
        noise_schedule=_schedule_settings(diffusion, given["noise_schedule"]),
        guidance_scale=check_guidance_scale(given["guidance_scale"], guidable, stage_name),
        truncation_process=augmentation.forward_process if truncated else None,
    )


def inference_process(diffusion, num_steps=None, noise_schedule=None):
    """The process a stage trained with `diffusion` samples: the training one, or the
    inference `noise_schedule` (a dict of schedule settings) of a continuous-noise
    stage; respaced to `num_steps`."""
    if noise_schedule is not None:
        diffusion = GaussianDiffusion(**{**diffusion.get_config(), "section_counts": None, "beta_start": None,
                                         "beta_end": None, **noise_schedule})
    if num_steps is not None:
        try:
            diffusion = diffusion.respace(num_steps)
        except ValueError as error:  # the request does not fit this process: name the setting
            raise ValueError(f"`num_steps` must select steps of the stage's {diffusion.num_timesteps}-step "
                             f"process ({error}). Received: num_steps={shown(num_steps)}") from None
    return diffusion


def _schedule_settings(diffusion, noise_schedule):
    """An inference `noise_schedule` (a dict of schedule settings or a GaussianDiffusion)
    checked against the stage's training process, as a dict of schedule settings."""
    if noise_schedule is None:
        return None
    if diffusion.conditioning != "noise_level":
        raise ValueError(
            "`noise_schedule` needs a stage trained with continuous noise conditioning "
            "(conditioning='noise_level'); this one is conditioned on timesteps. "
            f"Received: noise_schedule={noise_schedule!r}"
        )
    if isinstance(noise_schedule, GaussianDiffusion):
        config = noise_schedule.get_config()
        fixed = {"prediction": diffusion.prediction, "loss": diffusion.loss, "conditioning": "noise_level",
                 "section_counts": None}
        if any(config[key] != value for key, value in fixed.items()):
            raise ValueError(
                f"An inference `noise_schedule` must use the stage's prediction and loss, conditioning='noise_level' "
                f"and no respacing (set `num_steps` instead): {fixed}. Received: {noise_schedule!r}"
            )
        noise_schedule = {key: config[key] for key in _SCHEDULE_KEYS}
    if not isinstance(noise_schedule, dict) or not set(noise_schedule) <= set(_SCHEDULE_KEYS):
        raise ValueError(
            f"`noise_schedule` must be a GaussianDiffusion or a dict with keys among {list(_SCHEDULE_KEYS)}. "
            f"Received: noise_schedule={noise_schedule!r}"
        )
    variance = noise_schedule.get("variance", diffusion.variance)
    if variance != diffusion.variance and (
            diffusion.variance not in _INFERENCE_VARIANCES or variance not in _INFERENCE_VARIANCES):
        raise ValueError(
            f"An inference `noise_schedule` may switch only between the fixed variances {list(_INFERENCE_VARIANCES)} "
            f"(this stage trains {diffusion.variance!r}). Received: variance={variance!r}"
        )
    return copy.deepcopy(noise_schedule)
