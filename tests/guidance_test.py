"""Classifier-free guidance (keras_cdm.guidance): the null label, label dropout, guided sampling."""

import json

import keras
import numpy as np
import pytest

from keras_cdm import CascadedDiffusionPipeline, DiffusionModel, DiffusionUNet, GaussianDiffusion
from keras_cdm.guidance import drop_labels, guided_output
from keras_cdm.testing import randomize_weights, tiny_cascade, to_numpy
from keras_cdm.unet import parameter_count

TINY = dict(image_size=8, base_channels=8, channel_multipliers=(1,), num_res_blocks=1, attention_resolutions=(),
            num_groups=4, image_channels=1, num_classes=3)
HYBRID = dict(variance="learned_range", loss="hybrid")


def guided_stage(learned_variance=True, label_dropout=0.2, seed=0):
    unet = DiffusionUNet(null_label=True, learned_variance=learned_variance, **TINY)
    diffusion = GaussianDiffusion(10, "cosine", **(HYBRID if learned_variance else {}))
    model = DiffusionModel(unet, diffusion, label_dropout=label_dropout, seed=seed)
    randomize_weights(unet, seed=seed, scale=0.1)  # the output conv starts at zero: labels would not matter
    return model


# -- the guided prediction --------------------------------------------------------------------


@pytest.mark.parametrize("channels,output_channels", [(1, 1), (3, 6)])
def test_guided_output_is_the_float64_formula(channels, output_channels):
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(4, output_channels))  # one response per label (3 classes + null)
    x = rng.normal(size=(5, 2, 2, channels)).astype("float32")
    labels = np.array([0, 1, 2, 1, 0], "int32")
    calls = []

    def apply(inputs):  # a stand-in network: depends on x, the step and the label
        calls.append(int(inputs["labels"].shape[0]))
        x_mean = keras.ops.mean(inputs["noisy_images"], axis=-1, keepdims=True)
        per_label = keras.ops.take(keras.ops.convert_to_tensor(weights, "float32"), inputs["labels"], axis=0)
        return x_mean * per_label[:, None, None, :] + keras.ops.reshape(inputs["timesteps"], (-1, 1, 1, 1))

    steps = np.arange(5, dtype="float32")
    for scale in (0.0, 1.0, 2.5, 7.0):
        got = to_numpy(guided_output(apply, {"noisy_images": x, "labels": labels, "timesteps": steps}, scale, 3,
                                     channels))
        mean = x.astype(np.float64).mean(-1, keepdims=True)
        out_c = mean * weights[labels][:, None, None, :] + steps[:, None, None, None]
        out_u = mean * weights[3][None, None, None, :] + steps[:, None, None, None]
        expected = out_u[..., :channels] + scale * (out_c[..., :channels] - out_u[..., :channels])
        if output_channels > channels:  # the variance channels are the conditional model's
            expected = np.concatenate([expected, out_c[..., channels:]], axis=-1)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert calls == [10] * 4  # one call, on the doubled batch


def test_scale_one_is_the_unguided_sampler_bit_for_bit_and_others_change_the_samples():
    model = guided_stage()
    labels = [0, 1, 2, 0]
    for sampler in ("ancestral", "ddim", "dpm++2m", "dpm++2m-sde"):
        plain = model.generate(labels=labels, seed=3, sampler=sampler, use_ema=False)
        one = model.generate(labels=labels, seed=3, sampler=sampler, guidance_scale=1.0, use_ema=False)
        np.testing.assert_array_equal(one, plain)
        guided = model.generate(labels=labels, seed=3, sampler=sampler, guidance_scale=4.0, use_ema=False)
        again = model.generate(labels=labels, seed=3, sampler=sampler, guidance_scale=4.0, use_ema=False)
        np.testing.assert_array_equal(guided, again)  # deterministic for a seed
        assert np.isfinite(guided).all() and not np.array_equal(guided, plain)


def test_scale_zero_samples_the_unconditional_model():
    model = guided_stage(learned_variance=False)
    plan = model.sampling_plan(sampler="ddim", guidance_scale=0.0)
    unconditional = model.sampling_plan(sampler="ddim")
    seeds = np.arange(4, dtype="int32")
    guided = model.run_plan(plan, np.array([0, 1, 2, 0], "int32"), seeds, use_ema=False)
    null = model.run_plan(unconditional, np.full(4, 3, "int32"), seeds, use_ema=False)  # label 3: "no class"
    np.testing.assert_allclose(guided, null, atol=1e-5)  # one network call on 8 images vs 4: rounding only


# -- training with label dropout --------------------------------------------------------------


def test_label_dropout_draws_follow_the_seed():
    labels = keras.ops.convert_to_tensor(np.arange(20_000) % 3, "int32")
    first = to_numpy(drop_labels(labels, 0.25, 3, keras.random.SeedGenerator(7)))
    again = to_numpy(drop_labels(labels, 0.25, 3, keras.random.SeedGenerator(7)))
    other = to_numpy(drop_labels(labels, 0.25, 3, keras.random.SeedGenerator(8)))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    dropped = first == 3
    assert abs(dropped.mean() - 0.25) < 0.015  # 5 standard deviations of 20,000 draws
    np.testing.assert_array_equal(first[~dropped], to_numpy(labels)[~dropped])  # the others are kept
    np.testing.assert_array_equal(to_numpy(drop_labels(labels, 0.0, 3, keras.random.SeedGenerator(7))),
                                  to_numpy(labels))


@pytest.mark.parametrize("label_dropout", [0.0, 0.5])
def test_the_null_embedding_learns_only_with_label_dropout(label_dropout):
    model = guided_stage(learned_variance=False, label_dropout=label_dropout)
    model.compile(learning_rate=1e-2)
    table = model.unet.get_layer("label_embedding").embedding.embeddings
    before = to_numpy(table).copy()
    images = np.random.default_rng(0).uniform(-1, 1, (16, 8, 8, 1)).astype("float32")
    model.fit({"images": images, "labels": np.arange(16) % 3}, epochs=2, batch_size=8, verbose=0)
    after = to_numpy(table)
    assert not np.array_equal(after[:3], before[:3])  # the classes learn
    assert np.array_equal(after[3], before[3]) == (label_dropout == 0.0)


def test_the_null_embedding_exists_only_when_asked():
    plain, guided = DiffusionUNet(**TINY), DiffusionUNet(null_label=True, **TINY)
    assert guided.count_params() - plain.count_params() == 4 * TINY["base_channels"]  # one embedding row
    config = guided.get_config()
    assert config["null_label"] is True and plain.get_config()["null_label"] is False
    assert parameter_count({**config, "dtype": None}) == guided.count_params()
    restored = DiffusionUNet.from_config(json.loads(json.dumps(config)))
    assert restored.null_label and restored.count_params() == guided.count_params()
    model = guided_stage(label_dropout=0.15)
    again = DiffusionModel.from_config(json.loads(json.dumps(model.get_config())))
    assert again.label_dropout == 0.15 and again.unet.null_label


# -- settings, presets, refusals --------------------------------------------------------------


def test_a_cascade_samples_with_a_guidance_scale_per_stage_and_saves_it(tmp_path):
    pipeline = tiny_cascade(null_label=True)
    labels = [0, 1, 2]
    plain = pipeline.generate(labels=labels, seed=0, verbose=False)
    pipeline.set_sampling(0, guidance_scale=3.0)
    pipeline.set_sampling(2, guidance_scale=1.5)  # the continuous-noise upsampler
    guided = pipeline.generate(labels=labels, seed=0, verbose=False)
    assert guided.shape == plain.shape and np.isfinite(guided).all() and not np.array_equal(guided, plain)
    assert [s["guidance_scale"] for s in pipeline.sampling] == [3.0, 1.0, 1.5]
    pipeline.save_to_preset(tmp_path / "guided")
    loaded = CascadedDiffusionPipeline.from_preset(tmp_path / "guided")
    assert [s["guidance_scale"] for s in loaded.sampling] == [3.0, 1.0, 1.5]
    np.testing.assert_array_equal(loaded.generate(labels=labels, seed=0, verbose=False), guided)


def test_guidance_is_refused_where_it_cannot_apply():
    plain = DiffusionModel(DiffusionUNet(**TINY), GaussianDiffusion(10, "cosine"), name="plain")
    with pytest.raises(ValueError, match=r"Stage 'plain': `guidance_scale` needs .*null_label=True.*"
                                         r"Received: guidance_scale=2.0"):
        plain.sampling_plan(guidance_scale=2.0)
    assert plain.sampling_plan(guidance_scale=1).guidance_scale == 1.0  # no guidance: always fine
    guided = guided_stage()
    for bad in (float("nan"), float("inf"), -0.5, 101.0, True, "2", None):
        with pytest.raises(ValueError, match=r"`guidance_scale` must be a finite number in \[0.0, 100.0\]"):
            guided.sampling_plan(guidance_scale=bad)
    with pytest.raises(ValueError, match=r"`label_dropout` .*null_label=True.*Received: label_dropout=0.1"):
        DiffusionModel(DiffusionUNet(**TINY), GaussianDiffusion(10, "cosine"), label_dropout=0.1)
    for bad in (1.0, -0.1, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="`label_dropout`"):
            DiffusionModel(DiffusionUNet(null_label=True, **TINY), GaussianDiffusion(10, "cosine"), label_dropout=bad)
    with pytest.raises(ValueError, match=r"`null_label=True` .* needs a class-conditional U-Net"):
        DiffusionUNet(null_label=True, **{**TINY, "num_classes": None})
    with pytest.raises(ValueError, match="`null_label` must be True or False"):
        DiffusionUNet(null_label="yes", **TINY)


# -- the guidance search ----------------------------------------------------------------------


def test_search_guidance_scale_scores_what_the_pipeline_samples(tmp_path):
    from keras_cdm.search import search_guidance_scale
    from keras_cdm.testing import RecordingEvaluate

    pipeline = tiny_cascade(null_label=True)
    labels = [0, 1, 2, 1]
    evaluate = RecordingEvaluate()
    result = search_guidance_scale(pipeline, "base", [0, 1, 3], evaluate, labels, seed=2, batch_size=4,
                                   metric="mean", plot_path=tmp_path / "g.png", verbose=False)
    assert [row["guidance_scale"] for row in result.rows] == [0.0, 1.0, 3.0] and (tmp_path / "g.png").is_file()
    for row, images in zip(result.rows, evaluate.seen):
        head = CascadedDiffusionPipeline(pipeline.stages[:1], [dict(pipeline.sampling[0],
                                                                   guidance_scale=row["guidance_scale"])])
        np.testing.assert_array_equal(images, head.generate(labels=labels, seed=2, batch_size=4, verbose=False))
    assert pipeline.sampling[0]["guidance_scale"] == 1.0  # left as it was
    # An upsampler, scored at the end of the cascade; the best scale applied.
    evaluate = RecordingEvaluate()
    result = search_guidance_scale(pipeline, "sr32", [1, 2], evaluate, labels, seed=2, batch_size=4,
                                   metric="mean", through_cascade=True, apply_best=True, verbose=False)
    for row, images in zip(result.rows, evaluate.seen):
        settings = [dict(s) for s in pipeline.sampling]
        settings[2]["guidance_scale"] = row["guidance_scale"]
        expected = CascadedDiffusionPipeline(pipeline.stages, settings).generate(labels=labels, seed=2, batch_size=4,
                                                                                 verbose=False)
        np.testing.assert_array_equal(images, expected)
    assert pipeline.sampling[2]["guidance_scale"] == result.best["guidance_scale"]


def test_search_guidance_scale_refuses_before_sampling():
    from keras_cdm.search import search_guidance_scale
    from keras_cdm.testing import RecordingEvaluate

    evaluate = RecordingEvaluate()
    with pytest.raises(ValueError, match="`guidance_scale` needs a class-conditional U-Net"):
        search_guidance_scale(tiny_cascade(), "base", [1, 2], evaluate, [0, 1], verbose=False)
    pipeline = tiny_cascade(null_label=True)
    for bad in ([], [1, float("nan")], [-1], [True], "2", None):
        with pytest.raises(ValueError, match="`scales` must be a non-empty list of numbers"):
            search_guidance_scale(pipeline, "base", bad, evaluate, [0, 1], verbose=False)
    assert evaluate.seen == []
