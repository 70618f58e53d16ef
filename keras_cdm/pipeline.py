"""CascadedDiffusionPipeline: a whole cascade sampled in one call (sections 2.4, 3, 4).

A cascade is a base stage followed by super-resolution stages, each conditioned on
the previous stage's output. Every stage has its own sampling settings: sampler
and number of steps, the augmentation level s and mode (truncated or not) of a
Gaussian-augmented upsampler (sections 3.2, 3.3), the inference noise schedule of
a continuous-noise upsampler (section 4.4).
"""

import time

import keras
import numpy as np

from keras_cdm._validation import check_choice
from keras_cdm.conditioning import GaussianConditioningAugmentation
from keras_cdm.diffusion import SAMPLERS, GaussianDiffusion, example_seeds
from keras_cdm.diffusion_model import DiffusionModel

SAMPLING_DEFAULTS = {
    "sampler": "ancestral", "num_steps": None, "eta": 0.0, "clip_denoised": True,
    "augmentation_level": 0, "truncated": False, "noise_schedule": None,
}


def to_uint8(images):
    """Images in [-1, 1] -> uint8 in [0, 255] (rounded, clipped)."""
    return np.clip(np.round((np.asarray(images, "float32") + 1.0) * 127.5), 0, 255).astype("uint8")


def from_uint8(images):
    """uint8 images (or floats already in [-1, 1]) -> float32 in [-1, 1]."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype("float32") / 127.5 - 1.0
    images = images.astype("float32")
    if images.size and (images.min() < -1.0 - 1e-3 or images.max() > 1.0 + 1e-3):
        raise ValueError("Low-resolution images must be uint8, or floats in [-1, 1]. "
                         f"Received: floats in [{images.min():.3g}, {images.max():.3g}]")
    return images


class CascadedDiffusionPipeline:
    """An ordered list of `DiffusionModel` stages with per-stage sampling settings.

    Args:
        stages: the base stage, then any number of super-resolution stages; stage
            k+1's `low_res_size` is stage k's `image_size`. Stage names (unique)
            name the subfolders of a saved cascade.
        sampling: per-stage sampling settings: a list with one dict per stage,
            or a dict from stage name to dict. Keys (all optional):
            `sampler` ("ancestral" | "ddim"), `num_steps` (respacing, e.g. 100
            or "ddim50"), `eta`, `clip_denoised`, `augmentation_level` (s),
            `truncated` (feed the previous stage's sample stopped at s instead
            of re-noising its final sample), `noise_schedule` (inference
            schedule of a continuous-noise stage).
        description: one line for the preset's metadata.

    Example:
    >>> pipeline = CascadedDiffusionPipeline.from_preset("cdm_imagenet256", load_weights=False)
    >>> [stage.unet.image_size for stage in pipeline.stages]
    [32, 64, 256]
    """

    def __init__(self, stages, sampling=None, description=None):
        self.stages = list(stages)
        _check_stages(self.stages)
        self.description = description
        self.last_timings = {}  # stage name -> seconds, of the last `generate`
        self.sampling = [dict(SAMPLING_DEFAULTS) for _ in self.stages]
        given = sampling or []
        if isinstance(given, dict):
            unknown = set(given) - set(self.stage_names)
            if unknown:
                raise ValueError(f"Unknown stages {sorted(unknown)} in `sampling`; stages: {self.stage_names}.")
            given = [given.get(name, {}) for name in self.stage_names]
        if len(given) not in (0, len(self.stages)):
            raise ValueError(f"`sampling` needs one dict per stage ({len(self.stages)}). Received: {len(given)}")
        for k, settings in enumerate(given):
            self.sampling[k].update(_check_keys(settings))
        self._check_sampling()

    @property
    def stage_names(self):
        return [stage.name for stage in self.stages]

    def stage_index(self, stage):
        """The index of a stage given by index or name."""
        if isinstance(stage, str) and stage in self.stage_names:
            return self.stage_names.index(stage)
        if isinstance(stage, (int, np.integer)) and not isinstance(stage, bool) and 0 <= stage < len(self.stages):
            return int(stage)
        raise ValueError(f"`stage` must be a stage name in {self.stage_names} or an index in "
                         f"[0, {len(self.stages)}). Received: stage={stage!r}")

    def set_sampling(self, stage, **settings):
        """Changes the sampling settings of one stage (by index or name), e.g.
        `set_sampling("sr64", augmentation_level=501, truncated=True)`."""
        k = self.stage_index(stage)
        previous = dict(self.sampling[k])
        self.sampling[k].update(_check_keys(settings))
        try:
            self._check_sampling()
        except ValueError:
            self.sampling[k] = previous
            raise

    def _check_sampling(self):
        for k, (stage, settings) in enumerate(zip(self.stages, self.sampling)):
            check_choice("sampler", settings["sampler"], SAMPLERS)
            if not isinstance(settings["eta"], (int, float)) or settings["eta"] < 0:
                raise ValueError(f"`eta` must be a number >= 0. Received: eta={settings['eta']!r}")
            stage.inference_diffusion(settings["num_steps"], settings["noise_schedule"])
            _check_augmentation(self.stages, self.sampling, k)

    # -- sampling ---------------------------------------------------------------------------

    def generate(self, labels=None, seed=None, batch_size=16, num_images=None, return_intermediates=False,
                 start_stage=0, low_res_images=None, use_ema=True, output="uint8", first_example=0,
                 verbose="auto"):
        """Samples the cascade; returns uint8 NHWC numpy images.

        Args:
            labels: class labels, one per image (class-conditional cascades).
            seed: integer seed; image i of stage k comes from
                `example_seeds(seed, [i], stream=k)`, so results do not depend
                on `batch_size`. None draws a random seed.
            batch_size: images per call of a stage (memory bound).
            num_images: number of images of an unconditional cascade.
            return_intermediates: also return `{stage name: uint8 images}` of
                every stage run (a truncated stage's entry is its z_s).
            start_stage: run from this stage (index or name) on, conditioned on
                `low_res_images`: super-resolution of real images.
            low_res_images: uint8 (or [-1, 1] float) images at the start stage's
                `low_res_size`. A truncated stage treats them as z_0 and noises
                them to its level s (non-truncated augmentation).
            use_ema: sample with the EMA weights when a stage has an optimizer.
            output: "uint8", or "float" for float32 images in [-1, 1] (what
                each stage passes to the next, unquantized).
            first_example: index of the first image in a larger request: image
                i here is example `first_example + i` of `seed` (`iter_generate`).
        `last_timings` then holds the seconds each stage took.
            verbose: True shows one progress bar per stage; "auto" shows it for
                stages of several batches or of 100+ steps.
        """
        start = self.stage_index(start_stage)
        convert = {"uint8": to_uint8, "float": lambda x: x}.get(output)
        if convert is None:
            raise ValueError(f"`output` must be one of ['uint8', 'float']. Received: output={output!r}")
        labels, count = self._check_request(labels, num_images, start, low_res_images)
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
        seed = _check_seed(seed)
        if not isinstance(first_example, (int, np.integer)) or isinstance(first_example, bool) or first_example < 0:
            raise ValueError(f"`first_example` must be an integer >= 0. Received: first_example={first_example!r}")
        current = None if start == 0 else from_uint8(low_res_images)
        intermediates, self.last_timings = {}, {}
        for k in range(start, len(self.stages)):
            truncated = self.sampling[k]["truncated"] and k > start
            began = time.perf_counter()
            current = self._run_stage(k, labels, count, (seed, first_example), batch_size, current, truncated,
                                      use_ema, verbose)
            self.last_timings[self.stages[k].name] = time.perf_counter() - began
            intermediates[self.stages[k].name] = convert(current)
        images = intermediates[self.stages[-1].name]
        return (images, intermediates) if return_intermediates else images

    def iter_generate(self, labels=None, seed=0, chunk_size=256, num_images=None, **kwargs):
        """Yields the images of `generate(labels, seed, ...)` chunk by chunk (the same
        images), so that e.g. 50,000 samples can be scored without holding them all."""
        seed = _check_seed(seed)
        count = len(np.asarray(labels).reshape(-1)) if labels is not None else num_images
        if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive integer. Received: chunk_size={chunk_size!r}")
        if not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"Pass `labels` or a positive `num_images`. Received: num_images={num_images!r}")
        for begin in range(0, count, chunk_size):
            end = min(begin + chunk_size, count)
            part = dict(labels=np.asarray(labels).reshape(-1)[begin:end]) if labels is not None else dict(
                num_images=end - begin)
            yield self.generate(seed=seed, first_example=begin, **part, **kwargs)

    def _run_stage(self, k, labels, count, seed_offset, batch_size, low_res, truncated, use_ema, verbose):
        stage, settings = self.stages[k], self.sampling[k]
        seed, offset = seed_offset
        steps = stage.inference_diffusion(settings["num_steps"], settings["noise_schedule"]).num_timesteps
        show = verbose is True or (verbose == "auto" and (count > batch_size or steps >= 100))
        progress = keras.utils.Progbar(count, unit_name="image") if show else None
        if progress is not None:
            print(f"Stage {k + 1}/{len(self.stages)}: {stage.name} ({stage.unet.image_size}x{stage.unet.image_size})")
        outputs, stop_step = [], self.truncation_step(k)
        for begin in range(0, count, batch_size):
            index = np.arange(begin, min(begin + batch_size, count))
            kwargs = dict(
                labels=None if labels is None else labels[index],
                num_images=None if labels is not None else len(index),
                seed=example_seeds(seed, offset + index, stream=k), num_steps=settings["num_steps"],
                sampler=settings["sampler"], eta=settings["eta"], clip_denoised=settings["clip_denoised"],
                noise_schedule=settings["noise_schedule"], stop_step=stop_step,
                use_ema=use_ema, verbose=False,
            )
            if low_res is not None:
                kwargs.update(low_res_images=low_res[index], augmentation_level=settings["augmentation_level"],
                              truncated=truncated)
            outputs.append(stage.generate(**kwargs))
            if progress is not None:
                progress.update(index[-1] + 1)
        return np.concatenate(outputs)

    def truncation_step(self, k):
        """Where stage k stops: None (run to x_0), or the step of its respaced process
        holding z_s when stage k+1 uses truncated augmentation at level s > 0."""
        if k + 1 >= len(self.stages):
            return None
        following = self.sampling[k + 1]
        if not following["truncated"] or following["augmentation_level"] == 0:
            return None
        stage, settings = self.stages[k], self.sampling[k]
        steps = stage.inference_diffusion(settings["num_steps"], settings["noise_schedule"]).timestep_map
        return int(np.flatnonzero(steps == following["augmentation_level"] - 1)[0])

    def _check_request(self, labels, num_images, start, low_res_images):
        first = self.stages[start].unet
        if first.num_classes is not None:
            if labels is None:
                raise ValueError("This cascade is class-conditional: pass `labels`. Received: labels=None")
            labels = np.asarray(labels).reshape(-1)
            if labels.size == 0 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 \
                    or labels.max() >= first.num_classes:
                raise ValueError(f"`labels` must be a non-empty list of integers in [0, {first.num_classes}). "
                                 f"Received: labels={labels.tolist()[:10]}")
            count = len(labels)
        else:
            if labels is not None:
                raise ValueError(f"This cascade is unconditional: pass `num_images`, not labels. Received: {labels!r}")
            count = num_images if num_images is not None or low_res_images is None else len(low_res_images)
            if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 1:
                raise ValueError(f"`num_images` must be a positive integer. Received: num_images={num_images!r}")
        if (start == 0) != (low_res_images is None):
            raise ValueError(
                "`low_res_images` goes with a super-resolution `start_stage`, and only with it. "
                f"Received: start_stage={self.stage_names[start]!r}, "
                f"low_res_images={'given' if low_res_images is not None else None}"
            )
        if low_res_images is not None:
            size, channels = first.low_res_size, first.image_channels
            if tuple(np.shape(low_res_images)) != (count, size, size, channels):
                raise ValueError(f"`low_res_images` must have shape ({count}, {size}, {size}, {channels}). "
                                 f"Received: shape={tuple(np.shape(low_res_images))}")
        return (None if labels is None else labels.astype("int32")), int(count)

    # -- presets ------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset, load_weights=True, revision=None):
        """Loads a cascade from a built-in name (`list_presets()`), a local folder or
        `hf://owner/repo[@revision]`. A stage preset gives a one-stage pipeline.

        Without trained weights (the paper's built-ins) the stages are randomly
        initialised, with one warning unless `load_weights=False`.
        """
        from keras_cdm import presets

        folder = presets.resolve_preset(preset, revision)
        if presets.preset_kind(folder) == "stage":
            stage, random = presets.load_stage(folder, load_weights, label=str(preset))
            stages, sampling, description = [stage], None, None
        else:
            config = presets.read_config(folder)["config"]
            names = [presets.check_subfolder_name(name) for name in config.get("stages", [])]
            loaded = [presets.load_stage(folder / name, load_weights, label=f"{preset}/{name}") for name in names]
            stages, random = [s for s, _ in loaded], any(r for _, r in loaded)
            sampling, description = config.get("sampling"), config.get("description")
        if random:
            presets.warn_random_weights(preset)
        return cls(stages, sampling, description)

    def get_config(self):
        return {"stages": self.stage_names, "sampling": [dict(s) for s in self.sampling],
                "description": self.description}

    def save_to_preset(self, folder, overwrite=False, include_weights=True):
        """Writes the cascade as one folder: its `config.json`, `metadata.json`, a model
        card, and one stage preset per subfolder (named after the stage). Atomic;
        an existing folder is replaced only with `overwrite=True`."""
        from keras_cdm import presets

        def write(tmp):
            for stage in self.stages:
                (tmp / stage.name).mkdir()
                presets.write_stage(stage, tmp / stage.name, include_weights)
            presets.write_cascade(tmp, self.get_config(), self.stages)

        return presets.write_atomically(folder, write, overwrite)


def _check_seed(seed):
    if seed is None:
        return int(np.random.randint(0, 2**31 - 1))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31:
        raise ValueError(f"`seed` must be None or an integer in [0, 2**31). Received: seed={seed!r}")
    return int(seed)


def _check_keys(settings):
    if not isinstance(settings, dict) or not set(settings) <= set(SAMPLING_DEFAULTS):
        bad = sorted(set(settings) - set(SAMPLING_DEFAULTS)) if isinstance(settings, dict) else settings
        raise ValueError(f"Sampling settings take the keys {sorted(SAMPLING_DEFAULTS)}. Received: {bad!r}")
    return settings


def _check_stages(stages):
    if not stages or not all(isinstance(s, DiffusionModel) for s in stages):
        raise ValueError("`stages` must be a non-empty list of DiffusionModel. "
                         f"Received: {[type(s).__name__ for s in stages]}")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"Stage names must be unique (they name the preset's subfolders). Received: {names}")
    if stages[0].unet.low_res_size is not None:
        raise ValueError(f"The first stage must be a base stage (no `low_res_size`). Received: {names[0]!r}")
    for before, after in zip(stages, stages[1:]):
        a, b = before.unet, after.unet
        if b.low_res_size != a.image_size or b.image_channels != a.image_channels:
            raise ValueError(
                f"Stage {after.name!r} upsamples {b.low_res_size}x{b.low_res_size} images but stage "
                f"{before.name!r} makes {a.image_size}x{a.image_size} ({a.image_channels} channels)."
            )
    classes = {s.unet.num_classes for s in stages}
    if len(classes) > 1:
        raise ValueError(f"All stages must share their classes. Received: num_classes={[s.unet.num_classes for s in stages]}")


def _check_augmentation(stages, sampling, k):
    stage, settings = stages[k], sampling[k]
    level, truncated = settings["augmentation_level"], settings["truncated"]
    gaussian = isinstance(stage.augmentation, GaussianConditioningAugmentation)
    if not isinstance(level, (int, np.integer)) or isinstance(level, bool) or level < 0 \
            or (level and not gaussian) or (gaussian and level > stage.augmentation.num_timesteps):
        allowed = f"[0, {stage.augmentation.num_timesteps}]" if gaussian else "0 (no Gaussian augmentation)"
        raise ValueError(f"Stage {stage.name!r}: `augmentation_level` must be an integer in {allowed}. "
                         f"Received: augmentation_level={level!r}")
    if not isinstance(truncated, bool) or (truncated and (not gaussian or k == 0)):
        raise ValueError(f"Stage {stage.name!r}: `truncated=True` needs a Gaussian-augmented upsampler after "
                         f"another stage. Received: truncated={truncated!r}")
    if truncated and level:
        _check_truncation(stages[k - 1], sampling[k - 1], stage, level)


def _check_truncation(before, before_settings, stage, level):
    """Truncation feeds the previous stage's z_s: its process must be the augmentation's."""
    aug = stage.augmentation
    reference = GaussianDiffusion(aug.num_timesteps, aug.schedule).betas
    if before.diffusion.conditioning != "timestep" or before.diffusion.num_timesteps != aug.num_timesteps \
            or not np.allclose(before.diffusion.betas, reference):
        raise ValueError(
            f"Truncated augmentation of stage {stage.name!r} needs stage {before.name!r} to use the "
            f"augmentation's process ({aug.num_timesteps} steps, {aug.schedule!r}); use truncated=False."
        )
    kept = before.inference_diffusion(before_settings["num_steps"]).timestep_map
    if level - 1 not in set(kept.tolist()):
        near = kept[np.argsort(np.abs(kept - (level - 1)))[:3]] + 1
        raise ValueError(
            f"Truncated augmentation at s={level} needs stage {before.name!r} to visit step s; with "
            f"num_steps={before_settings['num_steps']!r} it does not. Nearest levels it visits: "
            f"{sorted(near.tolist())}. Received: augmentation_level={level}"
        )

