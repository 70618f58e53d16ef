"""Sampling plans: a stage's sampling settings, validated once, as an immutable plan.

A stage turns its settings (sampler, steps, DDIM eta, clipping, the augmentation
level s and mode of a Gaussian-augmented upsampler, the inference noise schedule
of a continuous-noise stage) into a `SamplingPlan` with `DiffusionModel.sampling_plan`;
the plan holds the inference process those settings make, built once. The
cascade stores one plan per stage, derives where each stage stops for truncated
augmentation (`stopping_at`), and hands the plans to its stages.
"""

import copy
import dataclasses

import numpy as np

from keras_cdm._validation import check_bool, check_choice, check_non_negative, is_int
from keras_cdm.diffusion import SAMPLERS, GaussianDiffusion

SAMPLING_DEFAULTS = {
    "sampler": "ancestral", "num_steps": None, "eta": 0.0, "clip_denoised": True,
    "augmentation_level": 0, "truncated": False, "noise_schedule": None,
}
_SCHEDULE_KEYS = ("schedule", "num_timesteps", "beta_start", "beta_end", "variance")
_INFERENCE_VARIANCES = ("fixed_small", "fixed_large")


@dataclasses.dataclass(frozen=True)
class SamplingPlan:
    """How one stage samples: its settings and the process they make.

    Build it with `DiffusionModel.sampling_plan(**settings)`; the settings are
    the keys of `SAMPLING_DEFAULTS`. `process` is the inference
    `GaussianDiffusion` (the training process, or the inference noise schedule,
    respaced to `num_steps`); `stop_step` is None (run to x_0) or the step of
    `process` at which to stop and return z_s.
    """

    sampler: str
    num_steps: object
    eta: float
    clip_denoised: bool
    augmentation_level: int
    truncated: bool
    noise_schedule: object
    process: GaussianDiffusion = dataclasses.field(repr=False, compare=False)
    stop_step: object = None

    @property
    def settings(self):
        """The settings (a fresh dict, JSON-ready) that make this plan."""
        return {key: copy.deepcopy(getattr(self, key)) for key in SAMPLING_DEFAULTS}

    @property
    def start_step(self):
        return self.process.num_timesteps - 1

    @property
    def num_network_evaluations(self):
        """Reverse steps the plan runs (one network evaluation each)."""
        return self.start_step - (-1 if self.stop_step is None else self.stop_step)

    def stopping_at(self, level, forward_process, stage_name, previous_name):
        """This plan, stopping where its process holds z_s for the truncated
        augmentation at level `level` of the next stage (`stage_name`), whose
        augmentation makes z_s with `forward_process`. Level 0: run to x_0."""
        if not level:
            return dataclasses.replace(self, stop_step=None)
        process = self.process
        reference = forward_process.betas
        if process.conditioning != "timestep" or process.original_num_timesteps != forward_process.num_timesteps \
                or not np.allclose(process.respace(None).betas, reference):
            raise ValueError(
                f"Truncated augmentation of stage {stage_name!r} needs stage {previous_name!r} to use the "
                f"augmentation's process ({forward_process.num_timesteps} steps, {forward_process.schedule!r}); "
                "use truncated=False."
            )
        kept = process.timestep_map
        if level - 1 not in set(kept.tolist()):
            near = kept[np.argsort(np.abs(kept - (level - 1)))[:3]] + 1
            raise ValueError(
                f"Truncated augmentation at s={level} needs stage {previous_name!r} to visit step s; with "
                f"num_steps={self.num_steps!r} it does not. Nearest levels it visits: "
                f"{sorted(near.tolist())}. Received: augmentation_level={level}"
            )
        return dataclasses.replace(self, stop_step=int(np.flatnonzero(kept == level - 1)[0]))


def check_settings(settings):
    """`settings` is a dict whose keys are sampling settings; returns it."""
    if not isinstance(settings, dict) or not set(settings) <= set(SAMPLING_DEFAULTS):
        bad = sorted(set(settings) - set(SAMPLING_DEFAULTS)) if isinstance(settings, dict) else settings
        raise ValueError(f"Sampling settings take the keys {sorted(SAMPLING_DEFAULTS)}. Received: {bad!r}")
    return settings


def make_plan(diffusion, augmentation, settings, stage_name):
    """The `SamplingPlan` of a stage with training process `diffusion` and
    conditioning `augmentation` (None for a base stage or no augmentation)."""
    given = {**SAMPLING_DEFAULTS, **check_settings(settings)}
    level, truncated = given["augmentation_level"], given["truncated"]
    maximum = 0 if augmentation is None else augmentation.max_sampling_level
    if not is_int(level) or not 0 <= level <= maximum:
        allowed = f"[0, {maximum}]" if maximum else "0 (no Gaussian augmentation)"
        raise ValueError(f"Stage {stage_name!r}: `augmentation_level` must be an integer in {allowed}. "
                         f"Received: augmentation_level={level!r}")
    if not isinstance(truncated, bool) or (truncated and not getattr(augmentation, "supports_truncation", False)):
        raise ValueError(f"Stage {stage_name!r}: `truncated=True` needs a Gaussian-augmented upsampler after "
                         f"another stage. Received: truncated={truncated!r}")
    return SamplingPlan(
        sampler=check_choice("sampler", given["sampler"], SAMPLERS),
        num_steps=given["num_steps"],
        eta=check_non_negative("eta", given["eta"]),
        clip_denoised=check_bool("clip_denoised", given["clip_denoised"]),
        augmentation_level=int(level),
        truncated=truncated,
        noise_schedule=copy.deepcopy(given["noise_schedule"]),
        process=inference_process(diffusion, given["num_steps"], given["noise_schedule"]),
    )


def inference_process(diffusion, num_steps=None, noise_schedule=None):
    """The process a stage trained with `diffusion` samples: the training one, or
    the inference `noise_schedule` of a continuous-noise stage; respaced to `num_steps`."""
    if noise_schedule is not None:
        if diffusion.conditioning != "noise_level":
            raise ValueError(
                "`noise_schedule` needs a stage trained with continuous noise conditioning "
                "(conditioning='noise_level'); this one is conditioned on timesteps. "
                f"Received: noise_schedule={noise_schedule!r}"
            )
        diffusion = _inference_schedule(diffusion, noise_schedule)
    if num_steps is not None:
        diffusion = diffusion.respace(num_steps)
    return diffusion


def _inference_schedule(diffusion, noise_schedule):
    if isinstance(noise_schedule, GaussianDiffusion):
        if noise_schedule.conditioning != "noise_level":
            raise ValueError("An inference `noise_schedule` must use conditioning='noise_level'. "
                             f"Received: {noise_schedule!r}")
        return noise_schedule
    if not isinstance(noise_schedule, dict) or not set(noise_schedule) <= set(_SCHEDULE_KEYS):
        raise ValueError(
            f"`noise_schedule` must be a GaussianDiffusion or a dict with keys among {list(_SCHEDULE_KEYS)}. "
            f"Received: noise_schedule={noise_schedule!r}"
        )
    if noise_schedule.get("variance", diffusion.variance) != diffusion.variance and (
            diffusion.variance not in _INFERENCE_VARIANCES or noise_schedule["variance"] not in _INFERENCE_VARIANCES):
        raise ValueError(
            f"An inference `noise_schedule` may switch only between the fixed variances {list(_INFERENCE_VARIANCES)} "
            f"(this stage trains {diffusion.variance!r}). Received: variance={noise_schedule['variance']!r}"
        )
    return GaussianDiffusion(**{**diffusion.get_config(), "section_counts": None, "beta_start": None,
                                "beta_end": None, **noise_schedule})
