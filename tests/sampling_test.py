"""Sampling plans (keras_cdm.sampling) and the conditioning-augmentation interface."""

import dataclasses
import json

import numpy as np
import pytest

from keras_cdm import (BlurConditioningAugmentation, ConditioningAugmentation, DiffusionModel, DiffusionUNet,
                       GaussianConditioningAugmentation, GaussianDiffusion, SamplingPlan)
from keras_cdm.sampling import SAMPLING_DEFAULTS
from keras_cdm.testing import tiny_cascade, to_numpy


@pytest.fixture(scope="module")
def cascade():
    return tiny_cascade()


def test_settings_round_trip_through_a_plan(cascade):
    base, sr16, sr32 = cascade.stages
    for stage, settings in [(base, {"num_steps": 5, "sampler": "ddim", "eta": 0.5}),
                            (sr16, {"augmentation_level": 3, "truncated": True}),
                            (sr32, {"noise_schedule": {"schedule": "linear", "num_timesteps": 25}, "num_steps": 5})]:
        plan = stage.sampling_plan(**settings)
        assert plan.settings == {**SAMPLING_DEFAULTS, **settings}
        assert json.loads(json.dumps(plan.settings)) == plan.settings
        assert stage.sampling_plan(**plan.settings) == plan


def test_the_plan_derives_its_process_from_its_settings(cascade):
    base = cascade.stages[0]
    plan = base.sampling_plan(num_steps=5)
    assert plan.process.num_timesteps == 5 and plan.num_network_evaluations == 5
    fewer = dataclasses.replace(plan, num_steps=2)  # the process follows the settings
    assert fewer.process.num_timesteps == 2 and fewer.settings["num_steps"] == 2
    assert dataclasses.replace(plan, stop_step=2).num_network_evaluations == 2
    with pytest.raises(ValueError, match=r"`stop_step` must be None or an integer in \[0, start_step\)"):
        dataclasses.replace(plan, stop_step=50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.num_steps = 3


def test_a_plan_noise_schedule_cannot_change_behind_its_back(cascade):
    schedule = {"schedule": "linear", "num_timesteps": 25}
    plan = cascade.stages[2].sampling_plan(noise_schedule=schedule)
    schedule["num_timesteps"] = 7  # the caller's dict is copied
    assert plan.process.num_timesteps == 25
    with pytest.raises(TypeError):
        plan.noise_schedule["num_timesteps"] = 7
    plan.settings["noise_schedule"]["num_timesteps"] = 7  # settings are a fresh copy
    assert plan.settings["noise_schedule"]["num_timesteps"] == 25


def test_a_gaussian_diffusion_schedule_is_stored_as_settings(cascade):
    sr32 = cascade.stages[2]
    as_object = sr32.sampling_plan(noise_schedule=GaussianDiffusion(25, "linear", variance="fixed_large",
                                                                    conditioning="noise_level"))
    as_dict = sr32.sampling_plan(noise_schedule={"schedule": "linear", "num_timesteps": 25})
    assert repr(as_object.process) == repr(as_dict.process)
    json.dumps(as_object.settings)
    with pytest.raises(ValueError, match="no respacing"):
        sr32.sampling_plan(noise_schedule=GaussianDiffusion(25, "linear", section_counts=5, variance="fixed_large",
                                                            conditioning="noise_level"))


def test_generate_takes_a_plan_of_its_own_stage_only(cascade):
    base, sr16 = cascade.stages[:2]
    plan = base.sampling_plan(num_steps=3)
    np.testing.assert_array_equal(base.generate(labels=[0, 1], seed=4, plan=plan),
                                  base.generate(labels=[0, 1], seed=4, num_steps=3))
    with pytest.raises(ValueError, match="Pass sampling settings or a `plan`, not both"):
        base.generate(labels=[0], plan=plan, num_steps=3)
    with pytest.raises(ValueError, match="This plan was not made for stage 'base'"):
        base.generate(labels=[0], plan=sr16.sampling_plan(augmentation_level=3))
    other = DiffusionModel(DiffusionUNet(image_size=8, base_channels=8, channel_multipliers=(1,),
                                         attention_resolutions=(), num_groups=4, image_channels=1, num_classes=3,
                                         learned_variance=True),
                           GaussianDiffusion(40, "linear", variance="learned_range", loss="hybrid"), name="other")
    with pytest.raises(ValueError, match="This plan was not made for stage 'other'"):
        other.generate(labels=[0], plan=plan)
    with pytest.raises(ValueError, match="`plan` must be a SamplingPlan"):
        base.generate(labels=[0], plan={"num_steps": 3})


def test_run_plan_is_generate_without_the_checks(cascade):
    base = cascade.stages[0]
    plan = base.sampling_plan(num_steps=3)
    seeds = np.array([7, 8], "int32")
    np.testing.assert_array_equal(base.run_plan(plan, np.array([0, 2], "int32"), seeds),
                                  base.generate(labels=[0, 2], seed=seeds, plan=plan))


def test_truncation_links_the_previous_plan(cascade):
    base = cascade.stages[0]
    following = cascade.stages[1].sampling_plan(augmentation_level=3, truncated=True)
    assert following.truncation_process is cascade.stages[1].augmentation.forward_process
    assert base.sampling_plan().stopping_for(following, "sr16", "base").stop_step == 2
    assert base.sampling_plan().stopping_for(cascade.stages[1].sampling_plan(augmentation_level=3), "sr16",
                                             "base").stop_step is None
    with pytest.raises(ValueError, match="needs stage 'base' to visit step s"):
        base.sampling_plan(num_steps=2).stopping_for(following, "sr16", "base")
    # s - 1 = 9 is the first step of the 10-step base: stopping there would run no step at all
    highest = cascade.stages[1].sampling_plan(augmentation_level=10, truncated=True)
    with pytest.raises(ValueError, match=r"s=10 would stop stage 'base' at the first step it visits.*Use s < 10"):
        base.sampling_plan().stopping_for(highest, "sr16", "base")
    assert base.sampling_plan().stopping_for(dataclasses.replace(highest, augmentation_level=9), "sr16",
                                             "base").stop_step == 8
    with pytest.raises(ValueError, match=r"needs stage 'sr16' to use the augmentation's process"):
        cascade.stages[1].sampling_plan(num_steps=3, augmentation_level=0).stopping_for(
            dataclasses.replace(following, truncation_process=GaussianDiffusion(40, "linear")), "x", "sr16")


@pytest.mark.parametrize("settings,message", [
    ({"augmentation_level": 1}, "`augmentation_level` must be an integer in 0 (no Gaussian augmentation)"),
    ({"truncated": True}, "`truncated=True` needs a Gaussian-augmented upsampler"),
    ({"truncated": "yes"}, "`truncated` must be True or False. Received: truncated='yes'"),
    ({"eta": -1}, "`eta` must be a finite number in [0.0, 1.0]. Received: eta=-1"),
    ({"eta": 1.5}, "`eta` must be a finite number in [0.0, 1.0]. Received: eta=1.5"),
    ({"num_steps": []}, "`num_steps` must be None, a positive integer"),
    ({"num_steps": 11}, "`num_steps` must select steps of the stage's 10-step process"),
    ({"clip_denoised": 0}, "`clip_denoised` must be True or False"),
    ({"sampler": "heun"}, "`sampler` must be one of ['ancestral', 'ddim', 'dpm++2m', 'dpm++3m', 'dpm++2m-sde']"),
    ({"steps": 3}, "Sampling settings take the keys"),
])
def test_bad_settings_are_refused_by_the_stage(cascade, settings, message):
    with pytest.raises(ValueError) as info:
        cascade.stages[0].sampling_plan(**settings)
    assert message in str(info.value)


def test_numpy_integer_steps_are_integers(cascade):
    plan = cascade.stages[0].sampling_plan(num_steps=np.int64(5))
    assert plan.num_steps == 5 and type(plan.num_steps) is int and plan.process.num_timesteps == 5


def test_pipeline_plans_are_read_only(cascade):
    assert isinstance(cascade.plans, tuple) and all(isinstance(p, SamplingPlan) for p in cascade.plans)
    with pytest.raises(AttributeError):
        cascade.plans = ()


# The one interface of both augmentation kinds --------------------------------------------------


def test_gaussian_augmentation_interface():
    aug = GaussianConditioningAugmentation(max_level=5, num_timesteps=10, seed=0)
    images = np.linspace(-1, 1, 2 * 4 * 4).reshape(2, 4, 4, 1).astype("float32")
    assert aug.max_sampling_level == 10 and aug.supports_truncation and aug.level_input
    assert aug.forward_process.num_timesteps == 10
    train = aug.training_inputs(images, training=True)
    assert sorted(train) == ["augmentation_levels", "low_res_images"]
    assert all(0 <= s <= 5 for s in to_numpy(train["augmentation_levels"]))
    truncated = aug.sampling_inputs(images, 3, np.array([1, 2]), truncated=True)
    np.testing.assert_array_equal(to_numpy(truncated["low_res_images"]), images)  # z_s is given as is
    np.testing.assert_array_equal(to_numpy(truncated["augmentation_levels"]), [3.0, 3.0])
    noised = to_numpy(aug.sampling_inputs(images, 3, np.array([1, 2]))["low_res_images"])
    assert np.abs(noised - images).max() > 1e-3  # non-truncated: z_0 noised to z_3
    np.testing.assert_array_equal(to_numpy(aug.sampling_inputs(images, 0, np.array([1, 2]))["low_res_images"]), images)


def test_blur_augmentation_interface():
    blur = BlurConditioningAugmentation(probability=1.0, seed=0)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 6, 6, 1)).astype("float32")
    assert blur.max_sampling_level == 0 and not blur.supports_truncation and not blur.level_input
    assert blur.forward_process is None
    assert sorted(blur.training_inputs(images, training=True)) == ["low_res_images"]
    assert np.abs(to_numpy(blur.training_inputs(images, training=True)["low_res_images"]) - images).max() > 1e-3
    np.testing.assert_array_equal(to_numpy(blur.sampling_inputs(images, 0, np.array([1, 2]))["low_res_images"]),
                                  images)


def test_the_interface_itself_is_not_an_augmentation():
    unet = DiffusionUNet(image_size=8, low_res_size=4, base_channels=8, channel_multipliers=(1,),
                         attention_resolutions=(), num_groups=4, image_channels=1)
    with pytest.raises(ValueError, match="Received: the ConditioningAugmentation interface itself"):
        DiffusionModel(unet, GaussianDiffusion(10, "cosine"), augmentation=ConditioningAugmentation())
