"""Arguments accepted silently (issue 21, class 4): the models, sampling and presets.

Targeted tests for each case of the issue (misspelt keyword arguments, DDIM's eta, truthy
strings for booleans, NaN and [0, 255] floats as low-resolution images, empty counts,
tf.data batches of unknown static shape), then a fuzz test: every argument of the
constructors, of `generate`, `sampling_plan` / `set_sampling`, `compile` and the preset
functions gets each value of the generated pool of bad values of `input_fuzz_test` in an
otherwise valid call; each must be refused quickly by a ValueError that names the argument
and says what it received (never another exception, a hang or a NaN result).
"""

import math
import time

import keras
import numpy as np
import pytest

from keras_cdm import CascadedDiffusionPipeline, DiffusionModel, GaussianDiffusion
from keras_cdm.conditioning import BlurConditioningAugmentation, GaussianConditioningAugmentation
from keras_cdm.images import from_uint8
from keras_cdm.testing import tiny_cascade
from keras_cdm.unet import DiffusionUNet
from keras_cdm.visualization import image_grid
from tests.input_fuzz_test import (
    Case,
    cases_for,
    flag,
    is_int,
    is_none,
    never,
    positive_int,
    run_cases,
    seed,
    text,
)

pytestmark = pytest.mark.backend_neutral

TINY = dict(base_channels=8, channel_multipliers=(1,), num_res_blocks=1, attention_resolutions=(), num_groups=4,
            image_channels=1)


@pytest.fixture(scope="module")
def cascade():
    return tiny_cascade()


# -- misspelt keyword arguments -----------------------------------------------------------------


def test_misspelt_keyword_arguments_are_refused():
    with pytest.raises(ValueError, match=r"Unrecognized keyword arguments passed to DiffusionUNet: \['num_clases'\] "
                                         r"\('num_clases': did you mean 'num_classes'\?\).*Received: num_clases=10"):
        DiffusionUNet(8, num_clases=10, **TINY)
    with pytest.raises(ValueError, match=r"DiffusionUNet: \['autocast'\]"):
        DiffusionUNet(8, autocast=False, **TINY)  # a functional model would drop it
    unet = DiffusionUNet(8, name="u", trainable=False, **TINY)  # Keras' own arguments it keeps
    assert unet.name == "u" and not unet.trainable
    with pytest.raises(ValueError, match=r"DiffusionModel: \['random_flips'\] \('random_flips': did you mean "
                                         r"'random_flip'\?\)"):
        DiffusionModel(unet, GaussianDiffusion(10, "cosine"), random_flips=True)
    for make in (lambda: GaussianConditioningAugmentation(3, num_timesteps=10, max_levl=2),
                 lambda: BlurConditioningAugmentation(kernel=3)):
        with pytest.raises(ValueError, match="Unrecognized keyword arguments"):
            make()
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_timestep'"):
        GaussianDiffusion(num_timestep=10)


# -- DDIM's eta ----------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [math.nan, math.inf, -math.inf, 5, 1.0001, -0.1, "0.5", True, None, [0.5]])
def test_eta_outside_0_1_is_refused(cascade, eta):
    with pytest.raises(ValueError, match=r"`eta` must be a finite number in \[0.0, 1.0\]. Received: eta="):
        cascade.stages[0].sampling_plan(sampler="ddim", eta=eta)
    with pytest.raises(ValueError, match="`eta` must be"):
        cascade.set_sampling("base", sampler="ddim", eta=eta)


def test_eta_in_0_1_samples_finite_images(cascade):
    base = cascade.stages[0]
    for eta in (0, 0.5, np.float32(1.0)):
        images = base.generate(labels=[0, 1], seed=0, sampler="ddim", eta=eta, num_steps=3, verbose=False)
        assert np.isfinite(images).all()


# -- booleans are booleans -----------------------------------------------------------------------


def boolean_calls(cascade, tmp_path):
    base, sr16 = cascade.stages[:2]
    folder = base.save_to_preset(tmp_path / "stage", include_weights=False)
    cascade_folder = cascade.save_to_preset(tmp_path / "cascade", include_weights=False)
    model = DiffusionModel(DiffusionUNet(8, num_classes=2, **TINY), GaussianDiffusion(10, "cosine"))
    return {
        "truncated": lambda v: sr16.sampling_plan(truncated=v),
        "clip_denoised": lambda v: base.sampling_plan(clip_denoised=v),
        "use_ema": lambda v: base.generate(labels=[0], use_ema=v),
        "use_ema (pipeline)": lambda v: cascade.generate(labels=[0], use_ema=v),
        "use_ema (iter_generate)": lambda v: cascade.iter_generate(labels=[0], use_ema=v),
        "use_ema (ema_weights)": lambda v: base.ema_weights(v).__enter__(),
        "return_intermediates": lambda v: cascade.generate(labels=[0], return_intermediates=v),
        "include_weights": lambda v: base.save_to_preset(tmp_path / "x", include_weights=v),
        "overwrite": lambda v: cascade.save_to_preset(tmp_path / "y", overwrite=v),
        "load_weights": lambda v: DiffusionModel.from_preset(str(folder), load_weights=v),
        "load_weights (pipeline)": lambda v: CascadedDiffusionPipeline.from_preset(str(cascade_folder),
                                                                                   load_weights=v),
        "use_ema (compile)": lambda v: model.compile(use_ema=v),
        "ema_warmup": lambda v: model.compile(ema_warmup=v),
        "random_flip": lambda v: DiffusionModel(DiffusionUNet(8, **TINY), GaussianDiffusion(10, "cosine"),
                                                random_flip=v),
        "learned_variance": lambda v: DiffusionUNet(8, learned_variance=v, **TINY),
    }


def test_truthy_values_are_not_booleans(cascade, tmp_path):
    for label, call in boolean_calls(cascade, tmp_path).items():
        argument = label.split(" ")[0]
        for value in ("yes", "no", "False", "", "x", 1, 0, None, 1.0, [True]):
            with pytest.raises(ValueError, match=rf"`{argument}` must be True or False. Received: {argument}="):
                call(value)


def test_verbose_is_true_false_or_auto(cascade):
    for value in ("yes", "", 2, None, [True]):
        with pytest.raises(ValueError, match=r'`verbose` must be True, False or "auto"'):
            cascade.generate(labels=[0], verbose=value)
        with pytest.raises(ValueError, match=r'`verbose` must be True, False or "auto"'):
            cascade.stages[0].generate(labels=[0], verbose=value)


def test_numpy_booleans_are_booleans(cascade):
    plan = cascade.stages[0].sampling_plan(clip_denoised=np.bool_(False))
    assert plan.clip_denoised is False
    images = cascade.stages[0].generate(labels=[0], use_ema=np.bool_(True), verbose=np.bool_(False), num_steps=2)
    assert np.isfinite(images).all()


# -- low-resolution images -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_infinite_low_res_images_are_refused(cascade, bad):
    sr16, sr32 = cascade.stages[1:]
    low = np.zeros((1, 8, 8, 1), np.float32)
    low[0, 3, 3, 0] = bad  # one pixel: min() and max() of the array are NaN, or a finite-looking inf
    message = r"`low_res_images` must be .*Received: 1 NaN or infinite values \(of 64\) in low_res_images"
    for call in (lambda: sr16.generate(labels=[0], low_res_images=low),
                 lambda: sr16.generate(labels=[0], low_res_images=low, augmentation_level=2, truncated=True),
                 lambda: sr32.generate(labels=[0], low_res_images=np.repeat(np.repeat(low, 2, 1), 2, 2)),
                 lambda: cascade.generate(labels=[0], start_stage="sr16", low_res_images=low)):
        with pytest.raises(ValueError, match=message.replace("64", "64|256")):
            call()


def test_uint8_low_res_images_are_mapped_and_0_255_floats_refused(cascade):
    sr32 = cascade.stages[2]
    low = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 1), dtype=np.uint8)
    as_uint8 = sr32.generate(labels=[0, 1], seed=3, low_res_images=low, verbose=False)
    as_unit = sr32.generate(labels=[0, 1], seed=3, low_res_images=from_uint8(low), verbose=False)
    np.testing.assert_array_equal(as_uint8, as_unit)  # uint8 is [0, 255], as the pipeline takes it
    with pytest.raises(ValueError, match=r"`low_res_images` must be integers in \[0, 255\], or floats in \[-1, 1\]. "
                                         r"Received: floats in \[.*\] \(map \[0, 255\] floats with x / 127.5 - 1\)"):
        sr32.generate(labels=[0, 1], low_res_images=low.astype(np.float32))
    with pytest.raises(ValueError, match=r"Received: integers in \[300, 300\]"):
        sr32.generate(labels=[0, 1], low_res_images=np.full((2, 16, 16, 1), 300))


def test_truncated_low_res_images_are_z_s_of_any_finite_range(cascade):
    sr16 = cascade.stages[1]
    z_s = np.random.default_rng(0).normal(0, 2, (1, 8, 8, 1)).astype(np.float32)  # beyond [-1, 1]: a noisy sample
    images = sr16.generate(labels=[0], low_res_images=z_s, augmentation_level=3, truncated=True, verbose=False)
    assert np.isfinite(images).all()
    with pytest.raises(ValueError, match=r"Received: floats in"):
        sr16.generate(labels=[0], low_res_images=z_s, augmentation_level=3)  # z_0 must be in [-1, 1]


# -- empty and non-positive counts ---------------------------------------------------------------


@pytest.mark.parametrize("labels", [[], np.array([], np.int64), [[]], "", "0", [0.5], [-1], [3]])
def test_bad_labels_name_the_argument(cascade, labels):
    for call in (lambda: cascade.stages[0].generate(labels=labels), lambda: cascade.generate(labels=labels)):
        with pytest.raises(ValueError, match=r"`labels` must be a non-empty list of integers in \[0, 3\)"):
            call()


@pytest.mark.parametrize("num_steps", [[], (), "", " ", 0, -3, 1.5, True, [0], [2, -1], "\x00", {}, math.nan])
def test_bad_num_steps_name_the_argument(cascade, num_steps):
    message = r'`num_steps` must be None, a positive integer, a string such as "100"'
    with pytest.raises(ValueError, match=message):
        cascade.stages[0].sampling_plan(num_steps=num_steps)
    with pytest.raises(ValueError, match=message):
        cascade.set_sampling(0, num_steps=num_steps)


@pytest.mark.parametrize("num_steps", ["abc", "ddim0", "ddim-3", "logsnr0", "karras11", 11, [11], "5," * 10 + "5"])
def test_num_steps_that_do_not_fit_the_process_name_the_argument(cascade, num_steps):
    with pytest.raises(ValueError, match=r"`num_steps` must select steps of the stage's 10-step process .*"
                                         r"Received: num_steps="):
        cascade.stages[0].sampling_plan(num_steps=num_steps)


def test_num_images_with_labels_must_agree(cascade):
    for call in (cascade.generate, cascade.stages[0].generate):
        with pytest.raises(ValueError, match=r"`num_images` must be None for a class-conditional model: `labels` give "
                                             r"the number of images \(2\). Received: num_images=5"):
            call(labels=[0, 1], num_images=5)
    assert cascade.stages[0].generate(labels=[0, 1], num_images=2, num_steps=2, verbose=False).shape == (2, 8, 8, 1)


def test_compile_checks_its_numbers():
    model = DiffusionModel(DiffusionUNet(8, num_classes=2, **TINY), GaussianDiffusion(10, "cosine"))
    for value in (math.nan, 0, -1e-4, "1e-4", math.inf):
        with pytest.raises(ValueError, match=r"`learning_rate` must be a finite number > 0. Received: learning_rate="):
            model.compile(learning_rate=value)
    for value in (math.nan, 1.5, -0.1, "0.999"):
        with pytest.raises(ValueError, match=r"`ema_momentum` must be a finite number in \[0.0, 1.0\]"):
            model.compile(ema_momentum=value)
    model.compile(learning_rate=keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9))  # a schedule is fine


def test_grids_are_bounded():
    images = np.zeros((3, 4, 4, 1), np.uint8)
    for columns in (0, 4, 10**9, 1.5, "2", True):
        with pytest.raises(ValueError, match=r"`columns` must be an integer in \[1, 3\]. Received: columns="):
            image_grid(images, columns=columns)
    for scale in (0, 10**6, 2.0):
        with pytest.raises(ValueError, match=r"`scale` must be an integer in \[1, 1024\]"):
            image_grid(images, scale=scale)
    with pytest.raises(ValueError, match=r"`class_names` must name every label"):
        image_grid(images, labels=[0, 1, 5], class_names=["a", "b"])
    assert image_grid(images, columns=3).shape[1] == 3 * (64 + 2) + 2


# -- tf.data batches of unknown static shape --------------------------------------------------------


@pytest.mark.tensorflow_only
def test_low_res_pairs_take_batches_of_unknown_static_shape():
    import tensorflow as tf

    from keras_cdm import data

    def batches(shapes):
        def make():
            for shape in shapes:
                yield {"images": np.zeros(shape, np.float32), "labels": np.zeros(shape[0], np.int32)}
        return make

    unknown_rank = tf.data.Dataset.from_generator(batches([(2, 8, 8, 1), (3, 8, 8, 1)]), output_signature={
        "images": tf.TensorSpec(None, tf.float32), "labels": tf.TensorSpec(None, tf.int32)})
    filtered = data.from_arrays(np.zeros((6, 8, 8, 1), np.uint8), [0, 1, 0, 1, 0, 1], batch_size=2,
                                drop_remainder=False).unbatch().filter(lambda example: True).batch(2)
    for dataset in (unknown_rank, filtered):  # refused before the fix (unknown rank), though every batch is valid
        pairs = list(data.low_res_pairs(dataset, 4))
        assert [tuple(p["low_res_images"].shape[1:]) for p in pairs] == [(4, 4, 1)] * len(pairs)
    # (`fit` on such batches: tests/data_reliability_test.py)
    wrong_rank = tf.data.Dataset.from_generator(batches([(2, 8, 8, 1), (8, 8, 1)]), output_signature={
        "images": tf.TensorSpec(None, tf.float32), "labels": tf.TensorSpec(None, tf.int32)})
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`images` must have shape \(B, H, W, C\) \(batches of "
                                                             r"`dataset`\). Received: images.shape="):
        list(data.low_res_pairs(wrong_rank, 4))  # the second batch is wrong: checked when it arrives


# -- fuzz ------------------------------------------------------------------------------------------


def real(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def finite_in(low, high, high_inclusive=True):
    return lambda v: real(v) and math.isfinite(v) and low <= v and (v <= high if high_inclusive else v < high)


def auto_or_flag(v):
    return flag(v) or (isinstance(v, str) and v == "auto")


def int_in(low, high):
    return lambda v: is_int(v) and low <= v <= high


def optional(accepts):
    return lambda v: v is None or accepts(v)


def int_sequence(allow_empty=False):
    def accepts(v):
        if isinstance(v, np.ndarray):
            items = v.tolist() if v.ndim == 1 else None
        else:
            items = list(v) if isinstance(v, (list, tuple, range)) else None
        return items is not None and (allow_empty or bool(items)) and all(is_int(i) and i > 0 for i in items)
    return accepts


def labels_of(classes, count=None):
    def accepts(v):
        if not isinstance(v, (list, tuple, range, np.ndarray)):
            return False
        try:
            array = np.asarray(v)
        except ValueError:
            return False
        return (array.dtype.kind in "iu" and array.size > 0 and (array.ndim == 1 or array.shape[1:] == (1,))
                and array.ndim <= 2 and 0 <= array.min() and array.max() < classes
                and (count is None or array.size == count))
    return accepts


def steps_of(length):
    """`num_steps` values a process of `length` steps takes (the pool's: ints, and (1, 2, 3))."""
    return lambda v: v is None or int_in(1, length)(v) or (isinstance(v, (list, tuple)) and v == (1, 2, 3)
                                                          and length >= 9)


def plan_setting_cases(name, stage, process_length, max_level=0, continuous=False):
    valid = {"sampler": "ddim", "num_steps": None, "eta": 0.0, "clip_denoised": True, "augmentation_level": 0,
             "truncated": False, "noise_schedule": None}
    accepts = {"sampler": never, "num_steps": steps_of(process_length), "eta": finite_in(0.0, 1.0),
               "clip_denoised": flag, "augmentation_level": int_in(0, max_level),
               "truncated": flag if max_level else lambda v: v is False or v is np.False_,
               "noise_schedule": (lambda v: v is None or (isinstance(v, dict) and not v)) if continuous else is_none}
    return cases_for(name, valid, lambda **kw: stage.sampling_plan(**kw), accepts)


def fuzz_cases(cascade, tmp_path):
    base, sr16, sr32 = cascade.stages
    unet_valid = {"image_size": 8, "base_channels": 8, "channel_multipliers": (1,), "num_res_blocks": 1,
                  "attention_resolutions": (), "num_heads": 1, "dropout": 0.0, "num_classes": None,
                  "learned_variance": False, "image_channels": 1, "low_res_size": None,
                  "low_res_interpolation": "bicubic", "augmentation_level_embedding": False,
                  "conditioning": "timestep", "noise_level_scale": 1000.0, "use_scale_shift_norm": True,
                  "resblock_updown": False, "conv_resample": True, "num_groups": 4, "dtype": None}
    unet_accepts = {"image_size": int_in(1, 4096), "base_channels": int_in(1, 8192),
                    "channel_multipliers": int_sequence(), "num_res_blocks": int_in(1, 16),
                    "attention_resolutions": int_sequence(allow_empty=True), "num_heads": int_in(1, 1024),
                    "dropout": finite_in(0.0, 1.0, high_inclusive=False), "num_classes": optional(int_in(1, 100_000)),
                    "learned_variance": flag, "image_channels": int_in(1, 64),
                    "low_res_size": optional(int_in(1, 4096)),
                    "low_res_interpolation": never, "augmentation_level_embedding": flag, "conditioning": never,
                    "noise_level_scale": finite_in(0.0, 1e6), "use_scale_shift_norm": flag, "resblock_updown": flag,
                    "conv_resample": flag, "num_groups": int_in(1, 1024), "dtype": is_none}
    cases = cases_for("DiffusionUNet", unet_valid, DiffusionUNet, unet_accepts)
    cases += cases_for(
        "GaussianDiffusion",
        {"num_timesteps": 10, "schedule": "cosine", "beta_start": None, "beta_end": None, "section_counts": None,
         "prediction": "epsilon", "variance": "fixed_small", "loss": "mse", "conditioning": "timestep"},
        GaussianDiffusion,
        {"num_timesteps": int_in(1, 100_000), "schedule": never, "beta_start": optional(finite_in(0.0, 1.0)),
         "beta_end": optional(finite_in(0.0, 1.0)), "section_counts": steps_of(10), "prediction": never,
         "variance": never, "loss": never, "conditioning": never})
    cases += cases_for("GaussianConditioningAugmentation",
                       {"max_level": 2, "num_timesteps": 10, "schedule": "cosine", "seed": None},
                       GaussianConditioningAugmentation,
                       {"max_level": int_in(0, 10), "num_timesteps": int_in(3, 100_000), "schedule": never,
                        "seed": seed})
    cases += cases_for("BlurConditioningAugmentation",
                       {"sigma_range": (0.4, 0.6), "probability": 0.5, "kernel_size": 3, "seed": None},
                       BlurConditioningAugmentation,
                       {"sigma_range": never, "probability": finite_in(0.0, 1.0),
                        "kernel_size": lambda v: int_in(1, 63)(v) and v % 2 == 1, "seed": seed})
    unet, diffusion = DiffusionUNet(8, num_classes=3, **TINY), GaussianDiffusion(10, "cosine")
    cases += cases_for(
        "DiffusionModel",
        {"unet": unet, "diffusion": diffusion, "augmentation": None, "random_flip": False,
         "low_res_interpolation": "bicubic", "seed": None},
        DiffusionModel,
        {"unet": never, "diffusion": never, "augmentation": is_none, "random_flip": flag,
         "low_res_interpolation": never, "seed": seed})
    cases += cases_for(
        "CascadedDiffusionPipeline", {"stages": [base], "sampling": None, "description": None},
        CascadedDiffusionPipeline,
        {"stages": never, "sampling": lambda v: v is None or (isinstance(v, (list, tuple, dict)) and not v),
         "description": lambda v: v is None or (text(v) and len(v) <= 1000)})
    # Sampling settings: each stage's own (a discrete process of 10 steps, a Gaussian
    # augmentation with levels in [0, 10], a continuous-noise stage with an inference schedule).
    cases += plan_setting_cases("base.sampling_plan", base, 10)
    cases += plan_setting_cases("sr16.sampling_plan", sr16, 10, max_level=10)
    cases += plan_setting_cases("sr32.sampling_plan", sr32, 30, continuous=True)
    cases.append(Case("set_sampling", "stage", lambda v: cascade.set_sampling(v, eta=0.0),
                      lambda v: int_in(0, 2)(v)))
    for argument, accepts in (("num_steps", steps_of(25)), ("eta", finite_in(0.0, 1.0)), ("clip_denoised", flag),
                              ("sampler", never)):
        cases.append(Case("set_sampling", argument, lambda v, a=argument: cascade.set_sampling("sr32", **{a: v}),
                          accepts))
    # generate, of a stage and of the cascade.
    cases += cases_for(
        "DiffusionModel.generate",
        {"labels": [0], "num_images": None, "seed": 0, "plan": None, "stop_step": None, "use_ema": True,
         "verbose": False},
        base.generate,
        {"labels": labels_of(3), "num_images": lambda v: v is None or (is_int(v) and v == 1),
         "seed": lambda v: seed(v) and (v is None or v < 2**31), "plan": is_none,
         "stop_step": lambda v: v is None or int_in(-1, 8)(v), "use_ema": flag,
         "verbose": auto_or_flag})
    low16 = np.zeros((1, 16, 16, 1), np.float32)
    cases.append(Case("DiffusionModel.generate", "low_res_images",
                      lambda v: sr32.generate(labels=[0], low_res_images=v, verbose=False), never))
    cases.append(Case("DiffusionModel.generate", "labels",
                      lambda v: sr32.generate(labels=v, low_res_images=low16, verbose=False), labels_of(3, 1),
                      names=("labels", "low_res_images")))  # 2 labels for 1 image: either is wrong
    pipeline_valid = {"labels": [0], "seed": 0, "batch_size": 1, "num_images": None, "return_intermediates": False,
                      "start_stage": 0, "low_res_images": None, "use_ema": True, "output": "uint8",
                      "first_example": 0, "verbose": False}
    pipeline_accepts = {"labels": labels_of(3), "seed": lambda v: seed(v) and (v is None or v < 2**31),
                        "batch_size": positive_int(), "num_images": lambda v: v is None or (is_int(v) and v == 1),
                        "return_intermediates": flag, "start_stage": lambda v: is_int(v) and v == 0,
                        "low_res_images": is_none, "use_ema": flag, "output": never,
                        "first_example": lambda v: is_int(v) and v >= 0, "verbose": auto_or_flag}
    cases += cases_for("CascadedDiffusionPipeline.generate", pipeline_valid, cascade.generate, pipeline_accepts,
                       names={"start_stage": ("start_stage", "low_res_images")})
    cases.append(Case("CascadedDiffusionPipeline.iter_generate", "chunk_size",
                      lambda v: cascade.iter_generate(labels=[0], chunk_size=v), positive_int()))
    cases.append(Case("CascadedDiffusionPipeline.generate", "low_res_images",
                      lambda v: cascade.generate(labels=[0], start_stage="sr32", low_res_images=v), never))
    # Training and presets.
    model = DiffusionModel(DiffusionUNet(8, num_classes=2, **TINY), GaussianDiffusion(10, "cosine"))
    cases += cases_for(
        "DiffusionModel.compile", {"learning_rate": 1e-4, "use_ema": True, "ema_momentum": 0.999, "ema_warmup": True},
        model.compile,
        {"learning_rate": lambda v: callable(v) or (real(v) and math.isfinite(v) and v > 0), "use_ema": flag,
         "ema_momentum": finite_in(0.0, 1.0), "ema_warmup": flag})
    stage_folder = base.save_to_preset(tmp_path / "stage", include_weights=False)
    cascade_folder = cascade.save_to_preset(tmp_path / "cascade", include_weights=False)
    cases += cases_for(
        "DiffusionModel.save_to_preset",
        {"overwrite": False, "include_weights": False, "description": None},
        lambda **kw: base.save_to_preset(tmp_path / "new_stage", **kw),
        {"overwrite": flag, "include_weights": flag,
         "description": lambda v: v is None or (text(v) and len(v) <= 1000)})
    cases += cases_for(
        "CascadedDiffusionPipeline.save_to_preset", {"overwrite": False, "include_weights": False},
        lambda **kw: cascade.save_to_preset(tmp_path / "new_cascade", **kw),
        {"overwrite": flag, "include_weights": flag})
    for owner, folder in ((DiffusionModel, stage_folder), (CascadedDiffusionPipeline, cascade_folder)):
        cases += cases_for(f"{owner.__name__}.from_preset", {"load_weights": False, "revision": None},
                           lambda owner=owner, folder=folder, **kw: owner.from_preset(str(folder), **kw),
                           {"load_weights": flag, "revision": is_none})
    return cases


def test_fuzz_models_sampling_and_presets_refuse_bad_values(cascade, tmp_path):
    start, before = time.perf_counter(), cascade.sampling
    cases = fuzz_cases(cascade, tmp_path)
    tried = refused = 0
    failures, counts = [], []
    for owner in dict.fromkeys(case.name for case in cases):  # counted per function, for the record
        group = run_cases([case for case in cases if case.name == owner])
        tried, refused, failures = tried + group[0], refused + group[1], failures + group[2]
        counts.append(f"{owner} {group[0]}/{group[1]}")
    seconds = time.perf_counter() - start
    print(f"\nclass 4 fuzz: {len(cases)} arguments, {tried} bad values tried, {refused} refused cleanly, "
          f"{len(failures)} not ({seconds:.1f} s); tried/refused per function: {', '.join(counts)}")
    assert not failures, "\n".join(failures[:60]) + f"\n({len(failures)} in all)"
    assert tried >= 3000 and len({(c.name, c.argument) for c in cases}) >= 100
    assert cascade.sampling == before  # no bad value changed anything
