"""CascadedDiffusionPipeline: a whole cascade sampled in one call (sections 2.4, 3, 4).

A cascade is a base stage followed by super-resolution stages, each conditioned on
the previous stage's output. Every stage has its own sampling settings: sampler
and number of steps, the augmentation level s and mode (truncated or not) of a
Gaussian-augmented upsampler (sections 3.2, 3.3), the inference noise schedule of
a continuous-noise upsampler (section 4.4). Each stage turns its settings into a
validated, immutable `SamplingPlan` once, when they are set; the pipeline keeps the
plans (`plans`), links each stage's stop step to the truncation of the next, and
hands each stage its plan.
"""

import dataclasses
import threading
import time

import keras
import numpy as np

from keras_cdm import adapters, presets
from keras_cdm._compile import can_prepare_in_background
from keras_cdm._validation import (
    as_array,
    check_bool,
    check_choice,
    check_image_shape,
    check_int,
    check_labels,
    check_positive_int,
    check_text,
    check_verbose,
    is_int,
    shown,
)
from keras_cdm.diffusion_model import DiffusionModel, check_num_images_with_labels
from keras_cdm.images import from_uint8, to_uint8
from keras_cdm.sampling import check_settings
from keras_cdm.seeding import check_seed, example_seeds


class CascadedDiffusionPipeline:
    """An ordered list of `DiffusionModel` stages with per-stage sampling settings.

    Args:
        stages: the base stage, then any number of super-resolution stages; stage
            k+1's `low_res_size` is stage k's `image_size`. Stage names (unique)
            name the subfolders of a saved cascade.
        sampling: per-stage sampling settings: a list with one dict per stage,
            or a dict from stage name to dict. Keys (all optional):
            `sampler` ("ancestral" | "ddim" | "dpm++2m" | "dpm++3m" |
            "dpm++2m-sde"), `num_steps` (respacing, e.g. 100, "ddim50",
            "logsnr20" or "karras20"), `eta`, `clip_denoised`, `augmentation_level` (s),
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
        self.stages = _check_stages(stages)
        self.description = check_text("description", description, 1000, allow_none=True)
        self.last_timings = {}  # stage name -> seconds, of the last `generate`
        given = _check_sampling(sampling, self.stage_names)
        self._plans = self._link([stage.sampling_plan(**check_settings(settings))
                                  for stage, settings in zip(self.stages, given)])

    @property
    def stage_names(self):
        return [stage.name for stage in self.stages]

    @property
    def plans(self):
        """The `SamplingPlan` of every stage (a tuple; change them with `set_sampling`)."""
        return self._plans

    @property
    def sampling(self):
        """The sampling settings of every stage (fresh dicts; change them with `set_sampling`)."""
        return [plan.settings for plan in self._plans]

    def stage_index(self, stage, name="stage"):
        """The index of a stage given by index or name (`name`: the argument, for errors)."""
        if isinstance(stage, str) and stage in self.stage_names:
            return self.stage_names.index(stage)
        if is_int(stage) and 0 <= stage < len(self.stages):
            return int(stage)
        raise ValueError(f"`{name}` must be a stage name in {self.stage_names} or an index in "
                         f"[0, {len(self.stages)}). Received: {name}={shown(stage)}")

    def set_sampling(self, stage, **settings):
        """Changes the sampling settings of one stage (by index or name), e.g.
        `set_sampling("sr64", augmentation_level=501, truncated=True)`. The new plan
        is validated (with its neighbours) before anything changes."""
        k = self.stage_index(stage)
        plans = list(self._plans)
        plans[k] = self.stages[k].sampling_plan(**{**plans[k].settings, **check_settings(settings)})
        self._plans = self._link(plans)

    def _link(self, plans):
        """The plans with each stage's stop step for the truncated augmentation of the next."""
        names = self.stage_names
        return tuple(plan.stopping_for(following, name, previous) for plan, following, name, previous
                     in zip(plans, plans[1:], names[1:], names)) + (plans[-1],)

    def truncation_step(self, k):
        """Where stage k stops: None (run to x_0), or the step of its respaced process
        holding z_s when stage k+1 uses truncated augmentation at level s > 0."""
        return self._plans[self.stage_index(k)].stop_step

    # -- sampling ---------------------------------------------------------------------------

    def generate(self, labels=None, seed=None, batch_size=16, num_images=None, return_intermediates=False,
                 start_stage=0, low_res_images=None, use_ema=True, output="uint8", first_example=0,
                 verbose="auto"):
        """Samples the cascade; returns uint8 NHWC numpy images.

        Args:
            labels: class labels, one per image (class-conditional cascades).
            seed: integer seed; image i of stage k comes from
                `example_seeds(seed, [i], stream=k)` (see `keras_cdm.seeding`), so
                results do not depend on `batch_size`. None draws a random seed.
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
            verbose: True shows one progress bar per stage; "auto" shows it for
                stages of several batches or of 100+ steps.

        `last_timings` then holds the seconds each stage took.
        """
        request = self._check_request(labels, num_images, start_stage, low_res_images, seed, batch_size, output,
                                      use_ema, verbose)
        first_example = check_int("first_example", first_example, 0)
        return_intermediates = check_bool("return_intermediates", return_intermediates)
        return self._generate(request, first_example, return_intermediates, request["use_ema"], request["verbose"])

    def iter_generate(self, labels=None, seed=0, chunk_size=256, num_images=None, start_stage=0, low_res_images=None,
                      batch_size=16, output="uint8", use_ema=True, verbose="auto"):
        """Yields the images of `generate(labels, seed, ...)` chunk by chunk (the same
        images), so that e.g. 50,000 samples can be scored without holding them all.
        The whole request is checked when this is called, before any chunk is sampled."""
        chunk_size = check_positive_int("chunk_size", chunk_size)
        request = self._check_request(labels, num_images, start_stage, low_res_images, seed, batch_size, output,
                                      use_ema, verbose)
        use_ema, verbose = request["use_ema"], request["verbose"]

        def chunks():
            for begin in range(0, request["count"], chunk_size):
                part = slice(begin, min(begin + chunk_size, request["count"]))
                chunk = {**request, "count": part.stop - part.start,
                         "labels": None if request["labels"] is None else request["labels"][part],
                         "low_res": None if request["low_res"] is None else request["low_res"][part]}
                yield self._generate(chunk, begin, False, use_ema, verbose)

        return chunks()

    def _generate(self, request, first_example, return_intermediates, use_ema, verbose):
        start, current, convert = request["start"], request["low_res"], request["convert"]
        # The first stage run takes the given images as z_0, even if it would be fed z_s in a full cascade.
        plans = {k: self._plans[k] for k in range(start, len(self.stages))}
        if plans[start].truncated:
            plans[start] = dataclasses.replace(plans[start], truncated=False)
        preparation = _Preparation(self.stages, plans, _batch_sizes(request["count"], request["batch_size"]))
        intermediates, self.last_timings = {}, {}
        for k, plan in plans.items():
            began = time.perf_counter()
            current = self._run_stage(k, plan, request, first_example, current, use_ema, verbose, preparation)
            self.last_timings[self.stages[k].name] = time.perf_counter() - began
            intermediates[self.stages[k].name] = convert(current)
        images = intermediates[self.stages[-1].name]
        return (images, intermediates) if return_intermediates else images

    def _run_stage(self, k, plan, request, first_example, low_res, use_ema, verbose, preparation):
        stage, labels, count, batch_size = self.stages[k], request["labels"], request["count"], request["batch_size"]
        steps = plan.num_network_evaluations
        show = verbose is True or (verbose == "auto" and (count > batch_size or steps >= 100))
        progress = keras.utils.Progbar(count, unit_name="image") if show else None
        if progress is not None:
            print(f"Stage {k + 1}/{len(self.stages)}: {stage.name} ({stage.unet.image_size}x{stage.unet.image_size})")
        outputs = []
        for begin in range(0, count, batch_size):
            index = np.arange(begin, min(begin + batch_size, count))
            preparation.wait(k, len(index))
            outputs.append(stage.run_plan(
                plan, None if labels is None else labels[index],
                example_seeds(request["seed"], first_example + index, stream=k),
                None if low_res is None else low_res[index], use_ema=use_ema, verbose=False))
            if progress is not None:
                progress.update(index[-1] + 1)
        return np.concatenate(outputs)

    def _check_request(self, labels, num_images, start_stage, low_res_images, seed, batch_size, output, use_ema,
                       verbose):
        """Checks a sampling request once, before any compute; returns it normalized."""
        start = self.stage_index(start_stage, "start_stage")
        convert = {"uint8": to_uint8, "float": lambda x: x}[check_choice("output", output, ("uint8", "float"))]
        first = self.stages[start].unet
        if first.num_classes is not None:
            if labels is None:
                raise ValueError("This cascade is class-conditional: pass `labels`. Received: labels=None")
            labels = check_labels(labels, first.num_classes)
            count = len(labels)
            check_num_images_with_labels(num_images, count)
        else:
            if labels is not None:
                raise ValueError(f"This cascade is unconditional: pass `num_images`, not labels. Received: {labels!r}")
            count = num_images if num_images is not None or low_res_images is None else len(low_res_images)
            count = check_positive_int("num_images", count)
        if (start == 0) != (low_res_images is None):
            raise ValueError(
                "`low_res_images` goes with a super-resolution `start_stage`, and only with it. "
                f"Received: start_stage={self.stage_names[start]!r}, "
                f"low_res_images={'given' if low_res_images is not None else None}"
            )
        low_res = None
        if low_res_images is not None:
            low_res_images = as_array("low_res_images", low_res_images, "integers in [0, 255], or floats in [-1, 1]")
            check_image_shape("low_res_images", low_res_images.shape, first.low_res_size, first.image_channels,
                              count, where=f" (the input of stage {self.stage_names[start]!r})")
            low_res = from_uint8(low_res_images, name="low_res_images")
        return {"start": start, "labels": labels, "count": count, "low_res": low_res, "seed": check_seed(seed),
                "batch_size": check_positive_int("batch_size", batch_size), "convert": convert,
                "use_ema": check_bool("use_ema", use_ema), "verbose": check_verbose(verbose)}

    # -- presets ------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset, load_weights=True, revision=None):
        """Loads a cascade from a built-in name (`list_presets()`), a local folder or
        `hf://owner/repo[@revision]`. A stage preset gives a one-stage pipeline.

        Without trained weights (the paper's built-ins) the stages are randomly
        initialised, with one warning unless `load_weights=False`.
        """
        folder = presets.resolve_preset(preset, revision)
        if presets.preset_kind(folder) != "cascade":
            stage, random = adapters.load_stage(folder, load_weights, label=str(preset), revision=revision)
            stages, sampling, description = [stage], None, None
        else:
            config = presets.read_cascade_config(folder)
            loaded = [adapters.load_stage(folder / name, load_weights, label=f"{preset}/{name}", revision=revision)
                      for name in config["stages"]]
            stages, random = [s for s, _ in loaded], any(r for _, r in loaded)
            sampling, description = config.get("sampling"), config.get("description")
        try:
            pipeline = cls(stages, sampling, description)
        except (ValueError, TypeError) as error:  # stages that do not chain, bad sampling settings
            raise ValueError(f"{folder / presets.CONFIG}: {error}") from error
        if random:
            presets.warn_random_weights(preset)
        return pipeline

    def get_config(self):
        return {"stages": self.stage_names, "sampling": self.sampling,
                "description": self.description}

    def save_to_preset(self, folder, overwrite=False, include_weights=True):
        """Writes the cascade as one folder: its `config.json`, `metadata.json`, a model
        card, and one stage preset per subfolder (named after the stage). Atomic;
        an existing folder is replaced only with `overwrite=True`."""

        for name in self.stage_names:  # the rule of loading, before anything is written
            presets.check_subfolder_name(name)
        presets.check_save_arguments(include_weights)

        def write(tmp):
            for stage in self.stages:
                (tmp / stage.name).mkdir()
                # a LoRA stage is written as an adapter preset
                adapters.write_stage(stage, tmp / stage.name, include_weights, destination=folder)
            presets.write_cascade(tmp, self.get_config(), self.stages)

        return presets.write_atomically(folder, write, overwrite)


def _check_sampling(sampling, names):
    """`sampling` (None, one dict per stage, or a dict from stage name to dict) as a list
    of one dict of settings per stage."""
    allowed = ("`sampling` must be None, a list of one dict of settings per stage, or a dict from stage name "
               f"to dict (stages: {names})")
    if sampling is None or (isinstance(sampling, (dict, list, tuple)) and not sampling):
        return [{} for _ in names]
    if isinstance(sampling, dict):
        unknown = set(sampling) - set(names)
        if unknown:
            raise ValueError(f"Unknown stages {sorted(unknown, key=str)} in `sampling`; stages: {names}. "
                             f"Received: sampling keys {shown(sorted(sampling, key=str))}")
        given = [sampling.get(name, {}) for name in names]
    elif isinstance(sampling, (list, tuple)):
        given = list(sampling)
        if len(given) != len(names):
            raise ValueError(f"`sampling` needs one dict per stage ({len(names)}). Received: {len(given)}")
    else:
        raise ValueError(f"{allowed}. Received: sampling={shown(sampling)}")
    for name, settings in zip(names, given):
        if not isinstance(settings, dict):
            raise ValueError(f"{allowed}. Received: the settings of stage {name!r}: {shown(settings)}")
    return given


def _check_stages(stages):
    """`stages` as a list: a non-empty sequence of DiffusionModel that chain."""
    if not isinstance(stages, (list, tuple)) or not stages or not all(isinstance(s, DiffusionModel) for s in stages):
        kinds = [type(s).__name__ for s in stages] if isinstance(stages, (list, tuple)) else shown(stages)
        raise ValueError(f"`stages` must be a non-empty list of DiffusionModel. Received: stages={kinds}")
    stages = list(stages)
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
    return stages


def _batch_sizes(count, batch_size):
    """The sizes of the batches a stage samples `count` images in, in order of use."""
    sizes = [min(batch_size, count)]
    return sizes + [count % batch_size] if count > batch_size and count % batch_size else sizes


class _Preparation:
    """Compiles the samplers of a cascade's stages in a background thread, in the order
    they will run, while the stages before them sample (tracing is Python work; a running
    graph or XLA executable releases the GIL). The first stage's sampler is compiled on
    the calling thread first (nothing could run beside it), then the thread starts.
    `wait(k, size)` returns once stage k's sampler for batches of `size` is prepared, or
    its preparation failed: the stage then compiles it itself when it runs, as without
    preparation (`errors` keeps what failed). No thread is started where there is nothing
    to prepare ahead (one batch size of one stage) or it cannot be done in another thread
    (PyTorch runs eagerly; distribution strategies are the calling thread's setting)."""

    def __init__(self, stages, plans, sizes):
        order = list(plans)
        first, *jobs = [(k, size) for k in order for size in sizes]
        self.errors, self._done = {}, {}
        if not jobs or not can_prepare_in_background():
            return
        work = [(job, stages[job[0]], plans[job[0]]) for job in [first] + jobs]
        # Traced here, its kernels built by its first run while the thread traces the next stages.
        self._prepare(*work[0], build=False)
        self._done = {job: threading.Event() for job in jobs}
        threading.Thread(target=self._run, args=(work[1:],), name="keras_cdm-prepare", daemon=True).start()

    def _prepare(self, job, stage, plan, build=True):
        try:
            stage.prepare_plan(plan, job[1], build=build)
        except Exception as error:  # noqa: BLE001 - the stage compiles it itself when it runs
            self.errors[job] = error

    def _run(self, work):
        for job, stage, plan in work:
            try:
                self._prepare(job, stage, plan)
            finally:
                self._done[job].set()

    def wait(self, k, size):
        if (k, size) in self._done:
            self._done[k, size].wait()
