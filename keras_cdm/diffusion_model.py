"""DiffusionModel: one cascade stage, trainable with `model.fit` (sections 3, 4, App. B).

A stage is a `DiffusionUNet` + a `GaussianDiffusion` (+ conditioning augmentation
for super-resolution stages). Training draws (t, noise, flips, augmentation)
happen in `call` through a `keras.random.SeedGenerator` and the loss comes from
`compute_loss`, so the stock `fit` of every backend trains it; `generate()`
samples the stage alone, with the optimizer's EMA weights when they exist.
"""

import contextlib
import dataclasses
import math
import threading

import keras
import numpy as np
from keras import ops

from keras_cdm import adapters, lora, presets
from keras_cdm._compile import compile_with_model
from keras_cdm._data_epochs import set_epoch
from keras_cdm._validation import (
    as_array,
    check_bool,
    check_choice,
    check_config,
    check_finite,
    check_finite_array,
    check_generator_seed,
    check_image_shape,
    check_keyword_arguments,
    check_labels,
    check_positive_int,
    check_positive_number,
    check_range,
    check_verbose,
    is_int,
    shown,
    with_static_shape,
)
from keras_cdm.conditioning import ConditioningAugmentation
from keras_cdm.diffusion import GaussianDiffusion
from keras_cdm.ema import Adam
from keras_cdm.guidance import drop_labels, guided_output
from keras_cdm.images import INTERPOLATIONS, from_uint8
from keras_cdm.sampling import SamplingPlan, make_plan
from keras_cdm.seeding import per_example_seeds
from keras_cdm.solvers import initial_state, state_sample
from keras_cdm.unet import DiffusionUNet


@keras.saving.register_keras_serializable(package="keras_cdm")
class DiffusionModel(keras.Model):
    """One stage of a cascade: base model or super-resolution model.

    Batches are dicts `{"images": (B, S, S, C) in [-1, 1], "labels": (B,) int}`
    (`labels` only for class-conditional U-Nets). For a super-resolution stage
    the low-resolution input is derived inside the model by anti-aliased
    downsampling of `images`, so one dataset of images trains any stage.

    Args:
        unet: the `DiffusionUNet` (or its serialized config).
        diffusion: the training `GaussianDiffusion` (or its config).
        augmentation: None, a `GaussianConditioningAugmentation` (the U-Net
            needs `augmentation_level_embedding=True`) or a
            `BlurConditioningAugmentation`; super-resolution stages only.
        random_flip: random left-right flips of the training images.
        low_res_interpolation: how training images are downsampled to the
            low-resolution conditioning (anti-aliased).
        seed: seed of the training draws.
        label_dropout: probability of training on the "no class" label instead of
            an example's class (classifier-free guidance: the U-Net needs
            `null_label=True`; 0.1-0.2 is usual). 0, the default, is the paper.

    Example:
    >>> unet = DiffusionUNet(image_size=8, base_channels=8, channel_multipliers=(1,),
    ...                      attention_resolutions=(), num_groups=4, num_classes=2)
    >>> model = DiffusionModel(unet, GaussianDiffusion(10, "cosine"))
    >>> model.compile()
    >>> images = np.zeros((4, 8, 8, 3), "float32")
    >>> history = model.fit({"images": images, "labels": np.array([0, 1, 0, 1])}, epochs=1, verbose=0)
    >>> model.generate(labels=[0, 1], seed=0).shape
    (2, 8, 8, 3)
    """

    def __init__(self, unet, diffusion, augmentation=None, random_flip=False,
                 low_res_interpolation="bicubic", seed=None, label_dropout=0.0, **kwargs):
        super().__init__(**check_keyword_arguments(DiffusionModel, kwargs))
        self.unet = _deserialize(unet, DiffusionUNet, "unet")
        self.diffusion = _deserialize(diffusion, GaussianDiffusion, "diffusion")
        self.augmentation = None if augmentation is None else _deserialize(
            augmentation, ConditioningAugmentation, "augmentation"
        )
        if type(self.augmentation) is ConditioningAugmentation:
            raise ValueError("`augmentation` must be a GaussianConditioningAugmentation, a "
                             "BlurConditioningAugmentation or another subclass of ConditioningAugmentation. "
                             "Received: the ConditioningAugmentation interface itself")
        self.random_flip = check_bool("random_flip", random_flip)
        self.low_res_interpolation = check_choice("low_res_interpolation", low_res_interpolation, INTERPOLATIONS)
        self.seed = check_generator_seed(seed)
        self.label_dropout = check_range("label_dropout", label_dropout, 0.0, 1.0, high_inclusive=False)
        if self.label_dropout and not self.unet.null_label:
            raise ValueError("`label_dropout` replaces labels by the 'no class' label of classifier-free guidance: "
                             "the U-Net needs one, `DiffusionUNet(num_classes=..., null_label=True)`. "
                             f"Received: label_dropout={label_dropout!r} for a U-Net with null_label=False")
        _check_stage(self.unet, self.diffusion, self.augmentation)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.mse_tracker = keras.metrics.Mean(name="mse")
        # The variational bound is defined for discrete steps only.
        self.vb_tracker = keras.metrics.Mean(name="vb") if self.diffusion.conditioning == "timestep" else None
        self.built = True
        self._samplers = {}

    # -- training -----------------------------------------------------------------

    def compile(self, optimizer=None, learning_rate=1e-4, use_ema=True, ema_momentum=0.9999, ema_warmup=True,
                **kwargs):
        """Adam (learning rate 1e-4) with an EMA of the weights (momentum 0.9999, App. B) by
        default. The EMA warms up (`ema_warmup`: momentum min(m, (1 + k) / (10 + k)) at step
        k, see `keras_cdm.ema`) so that a short run or fine-tuning is not averaged with the
        weights it started from. A given `optimizer` is used as it is."""
        if not callable(learning_rate):  # a number, or a schedule (keras.optimizers.schedules)
            learning_rate = check_positive_number("learning_rate", learning_rate)
        use_ema, ema_warmup = check_bool("use_ema", use_ema), check_bool("ema_warmup", ema_warmup)
        ema_momentum = check_finite("ema_momentum", ema_momentum, 0.0, 1.0)
        if optimizer is None:
            optimizer = Adam(learning_rate, use_ema=use_ema, ema_momentum=ema_momentum, ema_warmup=ema_warmup)
        super().compile(optimizer=optimizer, **kwargs)

    def call(self, inputs, training=None):
        images, labels = self._unpack(inputs)
        x_start = ops.cast(images, "float32")
        batch = ops.shape(x_start)[0]
        if self.random_flip and training:
            flip = keras.random.uniform((batch,), seed=self.seed_generator) < 0.5
            x_start = ops.where(ops.reshape(flip, (-1, 1, 1, 1)), ops.flip(x_start, axis=2), x_start)
        t = keras.random.randint((batch,), 0, self.diffusion.num_timesteps, seed=self.seed_generator)
        noise = keras.random.normal(ops.shape(x_start), seed=self.seed_generator)
        outputs = {"x_start": x_start, "t": t, "noise": noise}
        if labels is not None and self.label_dropout and training:
            labels = drop_labels(labels, self.label_dropout, self.unet.num_classes, self.seed_generator)
        unet_inputs = {} if labels is None else {"labels": labels}
        if self.diffusion.conditioning == "noise_level":
            levels = self.diffusion.sample_noise_levels(t, seed=self.seed_generator)
            unet_inputs["noisy_images"] = self.diffusion.q_sample_at_noise_level(x_start, levels, noise)
            unet_inputs["noise_levels"] = outputs["noise_levels"] = levels
        else:
            unet_inputs["noisy_images"] = self.diffusion.q_sample(x_start, t, noise)
            unet_inputs["timesteps"] = self.diffusion.model_conditioning(t)
        outputs["x_t"] = unet_inputs["noisy_images"]
        if self.unet.low_res_size is not None:
            low_res = self.downsample(x_start)
            unet_inputs.update({"low_res_images": low_res} if self.augmentation is None
                               else self.augmentation.training_inputs(low_res, training=training))
        outputs["model_output"] = self.unet(unet_inputs, training=training)
        return outputs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = self.diffusion.training_losses(
            y_pred["model_output"], y_pred["x_start"], y_pred["t"], y_pred["noise"],
            noise_levels=y_pred.get("noise_levels"), x_t=y_pred["x_t"],
        )
        self.mse_tracker.update_state(terms["mse"])
        if self.vb_tracker is not None:
            self.vb_tracker.update_state(terms["vb"])
        loss = ops.mean(terms["loss"])
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return _scale_for_replicas(loss)

    def fit(self, x=None, *args, **kwargs):
        """Keras `fit`, except that the weights stay the training weights.

        Keras' `fit` ends by overwriting the weights with their EMA, so a second
        `fit` call (or any training in chunks) would restart from the EMA. Here
        the EMA stays in the optimizer: `generate()` and `ema_weights()` use it.

        Each epoch begins by setting the epoch of `keras_cdm.data` pipelines
        (`keras_cdm.data.set_epoch`): their shuffle order and flips are those of the
        epoch, so a run resumed in a new process trains on the same batches.
        """
        _check_data(self, x)
        args, kwargs = _with_callback(args, kwargs, _DataEpochs())
        if _is_dataset(x) and len(args) <= _FIT_SHUFFLE_POSITION and "shuffle" not in kwargs:
            kwargs["shuffle"] = False  # a dataset is shuffled by its pipeline: Keras would warn at every fit
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None:
            return super().fit(x, *args, **kwargs)
        _build_optimizer_before_tracing(self)
        optimizer.finalize_variable_values = lambda var_list: None
        try:
            return super().fit(x, *args, **kwargs)
        finally:
            del optimizer.finalize_variable_values

    def evaluate(self, x=None, *args, **kwargs):
        _check_data(self, x)
        return super().evaluate(x, *args, **kwargs)

    # -- MultiWorkerMirroredStrategy: two Keras 3.15 limitations, worked around --------

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        if _multi_worker_strategy(self) is None:
            return logs
        # Keras reduces each log across workers with strategy.reduce("MEAN", v, axis=0),
        # which needs an axis: give every scalar one (the reduction returns a scalar).
        return {key: ops.reshape(value, (1,)) for key, value in logs.items()}

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # TensorFlow trainer hook: Keras takes one batch to build the optimizer by
        # strategy.reduce("MEAN", batch), which a multi-worker strategy cannot do for a
        # dict batch; hand Keras the first replica's local batch instead.
        strategy = _multi_worker_strategy(self)
        if strategy is not None and iterator is not None and data_batch is None:
            local = lambda v: strategy.experimental_local_results(v)[0]  # noqa: E731
            for _, _, it in iterator:
                data_batch = keras.tree.map_structure(local, next(it))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def downsample(self, images):
        """The low-resolution conditioning of `images` (anti-aliased, clipped to [-1, 1])."""
        size = self.unet.low_res_size
        low = ops.image.resize(ops.cast(images, "float32"), (size, size),
                               interpolation=self.low_res_interpolation, antialias=True)
        return ops.clip(low, -1.0, 1.0)

    def _unpack(self, inputs):
        if not isinstance(inputs, dict) or "images" not in inputs:
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"Batches must be dicts with 'images' (and 'labels'). Received: {got}")
        images, labels = inputs["images"], inputs.get("labels")
        check_image_shape("images", images.shape, self.unet.image_size, self.unet.image_channels)
        images = _with_static_shape(images, (None, self.unet.image_size, self.unet.image_size,
                                             self.unet.image_channels))
        if (labels is None) != (self.unet.num_classes is None):
            raise ValueError(
                f"This stage is {'class-conditional' if self.unet.num_classes else 'unconditional'}: "
                f"batches must {'include' if self.unet.num_classes else 'not include'} 'labels'. "
                f"Received keys: {sorted(inputs)}"
            )
        return images, None if labels is None else ops.reshape(ops.cast(labels, "int32"), (-1,))

    # -- sampling -------------------------------------------------------------------

    def sampling_plan(self, **settings):
        """Validates sampling settings once and returns this stage's `SamplingPlan`.

        Settings (all optional; defaults in `keras_cdm.sampling.SAMPLING_DEFAULTS`):
            sampler: "ancestral", "ddim" (with `eta`), or DPM-Solver++:
                "dpm++2m", "dpm++3m", "dpm++2m-sde" (see `keras_cdm.solvers` and
                docs/sampling.md).
            num_steps: respace the reverse process: an int (e.g. 100, evenly
                spaced steps), section counts such as "ddim50", or N steps evenly
                spaced in log-SNR ("logsnr20") or in Karras et al.'s spacing
                ("karras20"); None uses all its steps.
            eta: DDIM noise scale (>= 0).
            clip_denoised: clip the predicted x_0 to [-1, 1] at every step.
            augmentation_level: s for a Gaussian-augmented stage (0 = none).
            truncated: the low-resolution input is already z_s (a previous
                stage's sample stopped at s: truncated augmentation); otherwise
                it is z_0 and is re-noised to s (non-truncated augmentation).
            noise_schedule: continuous-noise stages only (section 4.4): the
                inference schedule, independent of the training one, as a dict
                of `GaussianDiffusion` arguments, e.g.
                `{"schedule": "linear", "num_timesteps": 100}`, or a
                `GaussianDiffusion`. None samples the training schedule.
            guidance_scale: classifier-free guidance (`keras_cdm.guidance`): 1 (the
                default) samples the conditional model as the paper does; w != 1
                needs a U-Net with `null_label=True` trained with `label_dropout`.
        """
        return make_plan(self.diffusion, self.augmentation, settings, self.name, guidable=self.unet.null_label)

    def generate(self, labels=None, num_images=None, seed=0, *, low_res_images=None, plan=None, stop_step=None,
                 use_ema=True, verbose="auto", **settings):
        """Samples this stage alone; returns float32 NHWC numpy images in [-1, 1].

        Args:
            labels: class labels, one per image (class-conditional stages).
            num_images: number of images for unconditional stages.
            seed: integer seed; the same seed gives the same images (None: a
                random one). Image i is drawn from `example_seeds(seed, [i])`;
                a sequence of such per-example seeds is accepted too.
            low_res_images: the conditioning of a super-resolution stage, at the
                stage's `low_res_size`: uint8 (or integer) images in [0, 255], or
                floats in [-1, 1]; with `truncated=True` they are z_s (a previous
                stage's sample stopped at s), finite floats of any range.
            plan: a `SamplingPlan` of this stage (`sampling_plan(...)`), or None
                to make one from `settings`.
            stop_step: stop the reverse process early and return the sample at
                that step (of the respaced process), e.g. z_s for truncation.
            use_ema: sample with the optimizer's EMA weights when they exist.
            verbose: "auto" shows a progress bar for chains of 100+ steps.
            **settings: sampling settings (see `sampling_plan`), e.g.
                `num_steps=50, sampler="ddim"`; not together with `plan`.
        """
        if plan is not None and settings:
            raise ValueError(f"Pass sampling settings or a `plan`, not both. Received: {sorted(settings)} and a plan")
        plan = self.sampling_plan(**settings) if plan is None else _check_plan(self, plan)
        if stop_step is not None:
            plan = dataclasses.replace(plan, stop_step=stop_step)
        labels, batch, low_res = self._check_generate_args(labels, num_images, low_res_images, plan.truncated)
        use_ema, verbose = check_bool("use_ema", use_ema), check_verbose(verbose)
        return self.run_plan(plan, labels, per_example_seeds(seed, batch), low_res, use_ema, verbose)

    def run_plan(self, plan, labels, seeds, low_res_images=None, use_ema=True, verbose=False):
        """Runs a `SamplingPlan` on inputs already checked (`generate` is the checked
        entry point; the pipeline calls this after checking its own request).

        `labels`: int32 labels or None; `seeds`: int32 per-example seeds;
        `low_res_images`: float32 images in [-1, 1] (super-resolution stages).
        """
        state, seed_tensor, conditioning = self._loop_inputs(plan, labels, seeds, low_res_images)
        total = plan.num_network_evaluations
        chunk = total if not _show_progress(verbose, total) else max(1, math.ceil(total / 20))
        progress = keras.utils.Progbar(total, unit_name="step") if chunk < total else None
        with self.ema_weights(use_ema):
            done = 0
            run = self._sampler(plan, sorted(conditioning))
            while done < total:
                steps = min(chunk, total - done)
                state = run(state, seed_tensor, ops.convert_to_tensor(plan.start_step - done, "int32"),
                            _step_count(steps), conditioning)
                done += steps
                if progress is not None:
                    progress.update(done)
        return np.asarray(ops.convert_to_numpy(state_sample(state)))

    def prepare_plan(self, plan, batch_size, build=True):
        """Compiles the sampler that `run_plan(plan, ...)` (without a progress bar) runs on
        batches of `batch_size`, without sampling, so that such a call starts at once.
        `build`: under TensorFlow, also run it for zero steps, which builds the graph's
        kernels (C++ work, without the GIL; otherwise the first call does it).
        Returns whether there was anything to compile (False when it was compiled already,
        or under PyTorch, which runs eagerly). Safe to call in another thread while other
        stages sample: `CascadedDiffusionPipeline.generate` prepares its later stages
        that way (the first call of a cascade then traces its upsamplers while the base
        stage runs)."""
        labels = None if self.unet.num_classes is None else np.zeros(batch_size, "int32")
        low_res = None
        if self.unet.low_res_size is not None:
            size = self.unet.low_res_size
            low_res = np.zeros((batch_size, size, size, self.unet.image_channels), "float32")
        state, seed_tensor, conditioning = self._loop_inputs(plan, labels, np.zeros(batch_size, "int32"), low_res)
        run = self._sampler(plan, sorted(conditioning))
        args = (state, seed_tensor, ops.convert_to_tensor(plan.start_step, "int32"), _step_count(0), conditioning)
        if not run.can_prepare or run.ready(*args):
            return False
        run.prepare(*args)
        if build and keras.backend.backend() == "tensorflow":
            # A run of zero steps: TensorFlow optimizes the graph (Grappler) and creates its
            # kernels on a function's first call, 0.7 s for `cdm_mnist32`'s base sampler (2,900
            # nodes) on 2 cores, which the first sampling call would otherwise pay.
            run(*args)
        return True

    def _loop_inputs(self, plan, labels, seeds, low_res_images):
        """The sampling loop's initial state, seeds and conditioning inputs."""
        conditioning = {} if labels is None else {"labels": ops.convert_to_tensor(labels, "int32")}
        if low_res_images is not None:
            conditioning.update(self._sampling_low_res_inputs(low_res_images, plan, seeds))
        shape = (len(seeds), self.unet.image_size, self.unet.image_size, self.unet.image_channels)
        state = initial_state(plan.process.initial_noise(shape, seeds), plan.sampler)
        return state, ops.convert_to_tensor(seeds, "int32"), conditioning

    def _sampler(self, plan, keys):
        """The compiled sampler of `plan`'s settings, `run(state, seeds, start_step, num_steps,
        conditioning)`: the number of steps is an argument (a tensor where the backend
        compiles), so one graph runs a whole chain, its chunks (progress bars) and zero steps."""
        key = (repr(plan.process), plan.sampler, float(plan.eta), plan.clip_denoised, plan.guidance_scale,
               tuple(keys))
        with _SAMPLERS_LOCK:  # a pipeline prepares samplers in a background thread
            if key not in self._samplers:
                self._samplers[key] = self._compiled_sampler(plan)
            return self._samplers[key]

    def _compiled_sampler(self, plan):
        conditioning_key = self.unet.conditioning_key
        process, sampler, eta, clip = plan.process, plan.sampler, float(plan.eta), plan.clip_denoised
        scale, null_label, channels = plan.guidance_scale, self.unet.num_classes, self.unet.image_channels

        def run(apply, x, seed, start, steps, conditioning):
            def denoise(x_t, cond):
                inputs = {**conditioning, "noisy_images": x_t, conditioning_key: cond}
                if scale == 1.0:  # the conditional model alone, as the paper samples
                    return apply(inputs)
                return guided_output(apply, inputs, scale, null_label, channels)

            return process.run_steps(denoise, x, seed, start, steps, sampler, eta, clip)

        return compile_with_model(self.unet, run)

    def _sampling_low_res_inputs(self, low_res_images, plan, seeds):
        if self.augmentation is None:
            return {"low_res_images": ops.convert_to_tensor(low_res_images, "float32")}
        return self.augmentation.sampling_inputs(low_res_images, plan.augmentation_level, seeds, plan.truncated)

    def _check_generate_args(self, labels, num_images, low_res_images, truncated):
        """(labels, batch, low_res): int32 labels or None, the number of images, and the
        low-resolution images as float32 in [-1, 1] (or finite z_s when `truncated`) or None."""
        if self.unet.num_classes is not None:
            if labels is None:
                raise ValueError("This stage is class-conditional: pass `labels`. Received: labels=None")
            labels = check_labels(labels, self.unet.num_classes)
            batch = len(labels)
            check_num_images_with_labels(num_images, batch)
        else:
            if labels is not None:
                raise ValueError(f"This stage is unconditional: do not pass `labels`. Received: labels={labels!r}")
            batch = num_images if num_images is not None or low_res_images is None else len(low_res_images)
            batch = check_positive_int("num_images", batch)
        if (low_res_images is None) != (self.unet.low_res_size is None):
            raise ValueError(
                "`low_res_images` is required for a super-resolution stage and not allowed for a base stage. "
                f"Received: low_res_images={'given' if low_res_images is not None else None}, "
                f"low_res_size={self.unet.low_res_size}"
            )
        low_res = None
        if low_res_images is not None:
            low_res_images = as_array("low_res_images", low_res_images, LOW_RES_VALUES)
            check_image_shape("low_res_images", low_res_images.shape, self.unet.low_res_size,
                              self.unet.image_channels, batch)
            low_res = low_res_input(low_res_images, truncated)
        return labels, int(batch), low_res

    @contextlib.contextmanager
    def ema_weights(self, use_ema=True):
        """Context in which the weights are the optimizer's EMA (when it has one).

        `with model.ema_weights(): model.save_weights(...)` exports the EMA;
        the training weights come back when the block exits.
        """
        optimizer = getattr(self, "optimizer", None)
        if not check_bool("use_ema", use_ema) or optimizer is None or not optimizer.use_ema or not optimizer.built:
            yield
            return
        variables = self.trainable_variables
        saved = [ops.convert_to_numpy(v) for v in variables]
        # The class's method: inside `fit` the instance's is switched off (see `fit`),
        # and callbacks that sample during training must still see the EMA.
        type(optimizer).finalize_variable_values(optimizer, variables)
        try:
            yield
        finally:
            for variable, value in zip(variables, saved):
                variable.assign(value)

    # -- LoRA fine-tuning (keras_cdm.lora) ---------------------------------------------

    def enable_lora(self, rank, target=None, alpha=None):
        """Enables LoRA of `rank` on the U-Net's layers that `target` names ("attention",
        "convolutions", "embeddings", or a list; None: attention and convolutions) and
        freezes every other weight: `compile()` and `fit` then train only the adapter
        (and its EMA). `alpha` scales the update by alpha / rank (None: the rank).
        Call it before the stage is trained in this session. Save the adapter alone with
        `save_lora_weights` or as a preset naming its base (`save_to_preset`); sample at
        full speed from `merge_lora()`.

        Example:
        >>> stage = DiffusionModel.from_preset("cdm_mnist32/base")
        >>> stage.enable_lora(rank=8)
        >>> stage.compile(learning_rate=1e-4)
        >>> stage.fit(my_digits, epochs=20)
        >>> stage.save_to_preset("my_adapter")  # an adapter preset of cdm_mnist32/base
        """
        self._check_lora_allowed()
        config = self.unet.enable_lora(rank, target, alpha)
        self._samplers = {}
        return config

    @property
    def lora_config(self):
        """{"rank", "alpha", "target"} once LoRA is enabled, else None."""
        return self.unet.lora_config

    def save_lora_weights(self, path, use_ema=True):
        """Writes only the adapter (the EMA of its weights when the optimizer has one, as
        `generate` samples) and its base's fingerprint to `path`, `*.lora.h5`."""
        lora.check_lora_path(path)
        with self.ema_weights(use_ema):
            return self.unet.save_lora_weights(path)

    def load_lora_weights(self, path):
        """Loads an adapter file onto this stage (enabling LoRA with the file's settings if
        needed); refuses one trained on another base (architecture or weights)."""
        if self.lora_config is None:
            self._check_lora_allowed()
        config = self.unet.load_lora_weights(path)
        self._samplers = {}
        return config

    def merge_lora(self, use_ema=True):
        """A new stage (same config, uncompiled, without LoRA) whose weights have the
        adapter merged in (its EMA by default): the same samples at full speed."""
        lora.lora_weights(self.unet)  # refuses a stage without LoRA
        merged = type(self).from_config(self.get_config())
        with self.ema_weights(use_ema):
            lora.copy_merged(self.unet, merged.unet)
        merged.preset_source = getattr(self, "preset_source", None)
        return merged

    def _check_lora_allowed(self):
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and optimizer.built:
            raise ValueError(f"Stage {self.name!r} has been trained in this session: its optimizer holds the state of "
                             "all its weights. Enable LoRA on a stage fresh from its preset (or weights file), then "
                             "`compile()` and `fit`.")

    # -- exact resume: the random streams are part of the saved state -------------------

    def _seed_states(self):
        return [v for v in self.non_trainable_variables if v.name == "seed_generator_state"]

    def save_own_variables(self, store):
        """Also saves the state of every seed generator (training draws, augmentation,
        dropout), so that a run restored by `BackupAndRestore` continues the same
        random streams as an uninterrupted run."""
        super().save_own_variables(store)
        for i, state in enumerate(self._seed_states()):
            store[f"seed_state_{i}"] = ops.convert_to_numpy(state)
        for key, value in lora.checkpoint_state(self.unet).items():  # Keras writes LoRA layers merged
            store[key] = value

    def load_weights(self, filepath, *args, **kwargs):
        """Keras' `load_weights`; a stage with LoRA gets back its unmerged weights and its
        adapter exactly (Keras alone would load the merged weights, adapter zeroed)."""
        self._lora_checkpoint = {}
        try:
            super().load_weights(filepath, *args, **kwargs)
            if self.lora_config is not None:
                lora.restore_checkpoint_state(self.unet, self._lora_checkpoint)
        finally:
            self._lora_checkpoint = {}

    def load_own_variables(self, store):
        keys = list(store.keys())
        # A LoRA checkpoint's adapter, restored once Keras has loaded the layers (merged
        # weights); into a stage without LoRA the merged weights load as they are.
        self._lora_checkpoint = {k: np.asarray(store[k]) for k in keys
                                 if k.startswith("lora_") and self.lora_config is not None}
        keys = [k for k in keys if not k.startswith("lora_")]
        super().load_own_variables({k: store[k] for k in keys if not k.startswith("seed_state_")})
        states = self._seed_states()
        saved = [k for k in keys if k.startswith("seed_state_")]
        if saved and len(saved) != len(states):
            raise ValueError(
                f"The weights file holds {len(saved)} seed-generator states but this model has {len(states)}: "
                "it was saved from a different architecture."
            )
        for i, state in enumerate(states if saved else []):
            state.assign(store[f"seed_state_{i}"])

    def get_compile_config(self):
        if getattr(self, "optimizer", None) is None:
            return None
        return {"optimizer": keras.saving.serialize_keras_object(self.optimizer)}

    def compile_from_config(self, config):
        self.compile(optimizer=keras.saving.deserialize_keras_object(config["optimizer"]))
        self.optimizer.build(self.trainable_variables)

    # -- presets ------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset, load_weights=True, revision=None):
        """Builds a stage from a preset: a built-in name (see `list_presets()`), a
        local folder, or `hf://owner/repo[@revision][/subfolder]`.

        The parameter count is checked against the preset's `metadata.json`;
        weights are loaded when the preset has them. A preset without weights
        (the paper's built-ins) gives a randomly initialised stage and one
        warning, unless `load_weights=False`.
        """
        folder = presets.resolve_preset(preset, revision)
        model, random = adapters.load_stage(folder, load_weights, label=str(preset), revision=revision)
        if random:
            presets.warn_random_weights(preset)
        return model

    def save_to_preset(self, folder, overwrite=False, include_weights=True, description=None, base=None,
                       revision=None):
        """Writes this stage as a preset folder (`config.json`, `metadata.json` and
        `model.weights.h5` with the EMA weights when the optimizer has them).

        With LoRA enabled the preset is an adapter preset (`keras_cdm.adapters`): the
        adapter alone (its EMA), naming its base: `base` (a built-in name, a folder or
        an hf:// handle, at `revision`), by default the preset this stage was loaded
        from; the base is loaded and checked to be the one the adapter was trained on.
        `stage.merge_lora().save_to_preset(...)` writes the adapted stage in full.

        The folder is written atomically; an existing one is replaced only with
        `overwrite=True`. Returns the folder's path.
        """
        presets.check_save_arguments(include_weights, description)
        return presets.write_atomically(
            folder, lambda tmp: adapters.write_stage(self, tmp, include_weights, description, base, revision,
                                                     destination=folder), overwrite)

    # -- config ---------------------------------------------------------------------

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "unet": keras.saving.serialize_keras_object(self.unet),
            "diffusion": keras.saving.serialize_keras_object(self.diffusion),
            "augmentation": None if self.augmentation is None else keras.saving.serialize_keras_object(
                self.augmentation),
            "random_flip": self.random_flip,
            "low_res_interpolation": self.low_res_interpolation,
            "seed": self.seed,
            "label_dropout": self.label_dropout,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**check_config(cls, config))


def _step_count(steps):
    """A sampler's number of steps: a Python int under PyTorch (eager loops), else an int32
    tensor, so that compiling backends trace one graph for every number of steps."""
    return steps if keras.backend.backend() == "torch" else ops.convert_to_tensor(steps, "int32")


def _deserialize(obj, classes, name):
    if isinstance(obj, dict):
        obj = keras.saving.deserialize_keras_object(obj, safe_mode=True)
    if not isinstance(obj, classes):
        allowed = [c.__name__ for c in (classes if isinstance(classes, tuple) else (classes,))]
        raise ValueError(f"`{name}` must be one of {allowed}. Received: {name}={type(obj).__name__}")
    return obj


def _check_stage(unet, diffusion, augmentation):
    if unet.conditioning != diffusion.conditioning:
        raise ValueError(
            f"The U-Net and the diffusion must use the same conditioning. "
            f"Received: unet.conditioning={unet.conditioning!r}, diffusion.conditioning={diffusion.conditioning!r}"
        )
    if unet.learned_variance != (diffusion.variance == "learned_range"):
        raise ValueError(
            "A U-Net with `learned_variance=True` goes with variance='learned_range', and only with it. "
            f"Received: learned_variance={unet.learned_variance}, variance={diffusion.variance!r}"
        )
    level_input = augmentation is not None and augmentation.level_input
    if augmentation is not None and unet.low_res_size is None:
        raise ValueError("Conditioning augmentation applies to super-resolution stages (a U-Net with "
                         f"`low_res_size`). Received: augmentation={type(augmentation).__name__}")
    if level_input != unet.augmentation_level_embedding:
        raise ValueError(
            "Gaussian conditioning augmentation and the U-Net's `augmentation_level_embedding` go together. "
            f"Received: augmentation={type(augmentation).__name__}, "
            f"augmentation_level_embedding={unet.augmentation_level_embedding}"
        )


def _check_plan(model, plan):
    """A plan this stage would make from the plan's settings (same inference process)."""
    if not isinstance(plan, SamplingPlan):
        raise ValueError(f"`plan` must be a SamplingPlan from `sampling_plan(...)`. Received: {type(plan).__name__}")
    try:
        own = model.sampling_plan(**plan.settings)
    except ValueError as error:
        raise ValueError(f"This plan was not made for stage {model.name!r}: {error}") from None
    if repr(own.process) != repr(plan.process):
        raise ValueError(f"This plan was not made for stage {model.name!r} (its process is {plan.process!r}, the "
                         f"stage's would be {own.process!r}): make it with `{model.name}.sampling_plan(...)`.")
    return plan


class _DataEpochs(keras.callbacks.Callback):
    """Sets the epoch of `keras_cdm.data` pipelines when each epoch begins (before Keras
    starts the epoch's pass over the data)."""

    def on_epoch_begin(self, epoch, logs=None):
        set_epoch(epoch)


_FIT_CALLBACKS_POSITION = 4  # fit(x, y, batch_size, epochs, verbose, callbacks, ...): after x
_FIT_SHUFFLE_POSITION = 7  # ... validation_split, validation_data, shuffle: its index after x


def _is_dataset(x):
    return hasattr(x, "element_spec") and hasattr(x, "take")


def _with_callback(args, kwargs, callback):
    """`fit`'s (args, kwargs) with `callback` added to its callbacks, wherever they were passed."""
    if len(args) > _FIT_CALLBACKS_POSITION:
        args = list(args)
        args[_FIT_CALLBACKS_POSITION] = _add_callback(args[_FIT_CALLBACKS_POSITION], callback)
        return tuple(args), kwargs
    return args, {**kwargs, "callbacks": _add_callback(kwargs.get("callbacks"), callback)}


def _add_callback(callbacks, callback):
    if isinstance(callbacks, keras.callbacks.CallbackList):
        if not any(type(c) is type(callback) for c in callbacks.callbacks):  # a list reused by another fit
            callbacks.callbacks.append(callback)  # needs no model: CallbackList sets none on it
        return callbacks
    return [*(callbacks or ()), callback]


def _build_optimizer_before_tracing(model):
    """Builds the optimizer's variables (moments, EMA) before `fit` traces its train function.

    Keras' TensorFlow trainer without a `tf.distribute` strategy leaves them to the first
    `apply_gradients`, inside the trace: creating variables in a `tf.function` makes
    TensorFlow trace it twice: the first `fit` of a stage took twice as long
    (`benchmarks/first_fit.py`: README's 8x8 base stage 15.1 s, built before 7.7 s). Keras builds
    them this way itself under a strategy and on JAX; the variables are the same (the
    model's trainable variables, in order), so training is bit for bit the same."""
    optimizer = model.optimizer
    if (keras.backend.backend() != "tensorflow" or optimizer.built or model._distribute_strategy is not None
            or not all(layer.built for layer in model._flatten_layers())):
        return
    optimizer.build(model.trainable_variables)


def _check_data(model, x):
    """Checks data before any compute: in-memory dicts fully, a tf.data dataset by its
    first batch (later batches get the static shape checks of `call`)."""
    batch = None
    if isinstance(x, dict):
        batch = x
    elif _is_dataset(x):  # tf.data: check the first batch
        for element in x.take(1):
            batch = element[0] if isinstance(element, tuple) else element
    elif hasattr(x, "shape"):  # an array or a tensor instead of a dict
        batch = x
    if batch is None:
        return
    if not isinstance(batch, dict) or "images" not in batch:
        raise ValueError(f"Batches must be dicts with 'images' (and 'labels'). Received: {type(batch).__name__}")
    check_image_shape("images", np.shape(batch["images"]), model.unet.image_size, model.unet.image_channels)
    if model.unet.num_classes is not None:
        if "labels" not in batch:
            raise ValueError(f"This stage is class-conditional: batches need 'labels'. Received keys: {sorted(batch)}")
        check_labels(batch["labels"], model.unet.num_classes)


def _with_static_shape(images, shape):
    """A tf.data batch whose static shape is partly unknown gets the stage's (checked when
    the batch arrives); other backends trace with concrete shapes."""
    if keras.backend.backend() != "tensorflow":
        return images
    expected = f"(batch, {', '.join(map(str, shape[1:]))})"
    return with_static_shape("images", images, shape, expected, where=" for this stage")


def check_num_images_with_labels(num_images, count):
    """`num_images` next to `labels` (a class-conditional request): None, or their number."""
    if num_images is not None and not (is_int(num_images) and num_images == count):
        raise ValueError(f"`num_images` must be None for a class-conditional model: `labels` give the number of "
                         f"images ({count}). Received: num_images={shown(num_images)}")


_SAMPLERS_LOCK = threading.Lock()
LOW_RES_VALUES = "integers in [0, 255], or floats in [-1, 1] (finite z_s of any range with truncated=True)"


def low_res_input(images, truncated=False):
    """The low-resolution images of a request as float32: integers in [0, 255] (uint8) are
    mapped to [-1, 1]; floats must be in [-1, 1] (`from_uint8`'s check: no NaN, no
    infinity, no [0, 255] floats taken for [-1, 1] ones), except with `truncated`, where
    they are z_s, a noisy sample of any (finite) range."""
    if not truncated:
        return from_uint8(images, name="low_res_images")
    array = as_array("low_res_images", images, LOW_RES_VALUES)
    if array.dtype.kind in "iub":
        return from_uint8(array, name="low_res_images")
    return check_finite_array("low_res_images", array.astype("float32"), "finite (z_s with truncated=True)")


def _scale_for_replicas(loss):
    """Under a `tf.distribute` strategy each replica returns its share of the mean
    loss (Keras sums the replicas' gradients and unscales the reported loss), as
    Keras' own `compute_loss` does; JAX distributions compute the global mean."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            loss = loss / replicas
    return loss


def _multi_worker_strategy(model):
    """The model's tf.distribute MultiWorkerMirroredStrategy, if it has one."""
    strategy = getattr(model, "_distribute_strategy", None)
    if strategy is None or keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return strategy if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) else None


def _show_progress(verbose, total):
    if verbose == "auto":
        return total >= 100
    return bool(verbose)
