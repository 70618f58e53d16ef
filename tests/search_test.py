"""Post-training searches on the tiny 8 -> 16 -> 32 cascade, with a recording `evaluate`."""


import keras
import numpy as np
import pytest
from PIL import Image

from keras_cdm.search import search_augmentation_level, search_noise_schedule
from keras_cdm.testing import RecordingEvaluate as Recorder, tiny_cascade

# Backend-independent logic (the pipeline itself is tested on both backends): run once.
pytestmark = pytest.mark.backend_neutral

LABELS = [0, 1, 2]


@pytest.fixture(scope="module")
def cascade():
    return tiny_cascade()


def _fresh(cascade):
    return type(cascade)(cascade.stages, cascade.sampling)


def test_augmentation_search_scores_what_the_pipeline_would_generate(cascade, tmp_path, capsys):
    pipeline, evaluate = _fresh(cascade), Recorder()
    result = search_augmentation_level(pipeline, "sr16", [0, 2, 5], evaluate, LABELS, seed=3,
                                       plot_path=tmp_path / "s.png")
    assert [(r["mode"], r["s"]) for r in result.rows] == [
        ("non_truncated", 0), ("non_truncated", 2), ("non_truncated", 5),
        ("truncated", 0), ("truncated", 2), ("truncated", 5)]
    head = type(pipeline)(pipeline.stages[:2], pipeline.sampling[:2])
    for row, seen in zip(result.rows, evaluate.seen):
        head.set_sampling("sr16", augmentation_level=row["s"], truncated=row["mode"] == "truncated")
        expected = head.generate(labels=LABELS, seed=3)
        np.testing.assert_array_equal(seen, expected)  # exactly the cascade's own output for that setting
        assert row["fid"] == pytest.approx(np.abs(expected.astype(float) - 128).mean())
    assert len({seen.tobytes() for seen in evaluate.seen}) >= 4  # s changes the samples
    best = min(result.rows, key=lambda r: r["fid"])
    assert result.best is best
    out = capsys.readouterr().out
    assert "Augmentation level of sr16 (3 samples)" in out and "  *" in out
    assert Image.open(tmp_path / "s.png").size[0] > 100
    assert pipeline.sampling[1]["augmentation_level"] == 3  # untouched without apply_best


def test_augmentation_search_on_ground_truth_and_apply_best(cascade):
    pipeline, evaluate = _fresh(cascade), Recorder()
    low = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    result = search_augmentation_level(pipeline, 1, [0, 4], evaluate, LABELS, low_res_images=low,
                                       metric="brightness", lower_is_better=False, apply_best=True, verbose=False)
    assert [r["mode"] for r in result.rows] == ["ground_truth", "ground_truth"]
    assert [seen.shape for seen in evaluate.seen] == [(3, 16, 16, 1)] * 2  # stops at the searched stage
    best = max(result.rows, key=lambda r: r["brightness"])
    assert pipeline.sampling[1]["augmentation_level"] == best["s"] and pipeline.sampling[1]["truncated"] is False


def test_noise_schedule_search_tries_the_grid_and_applies_the_best(cascade):
    pipeline, evaluate = _fresh(cascade), Recorder()
    result = search_noise_schedule(pipeline, "sr32", 4, evaluate, LABELS, beta_starts=(1e-3, 0.1),
                                   beta_ends=(0.05, 0.5), apply_best=True, verbose=False)
    assert [(r["beta_start"], r["beta_end"]) for r in result.rows] == [(1e-3, 0.05), (1e-3, 0.5), (0.1, 0.5)]
    head = type(pipeline)(pipeline.stages, cascade.sampling)
    low = head.generate(labels=LABELS, seed=0, return_intermediates=True, output="float")[1]["sr16"]
    schedule = {"schedule": "linear", "num_timesteps": 4, "beta_start": 0.1, "beta_end": 0.5}
    head.set_sampling("sr32", noise_schedule=schedule, num_steps=None)
    np.testing.assert_array_equal(evaluate.seen[2], head.generate(labels=LABELS, seed=0, start_stage="sr32",
                                                                  low_res_images=low))
    best = result.best
    assert pipeline.sampling[2]["noise_schedule"]["beta_end"] == best["beta_end"]
    assert pipeline.sampling[2]["num_steps"] is None


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda p: search_augmentation_level(p, "sr32", [0], Recorder(), LABELS),
         "Stage 'sr32' has no Gaussian conditioning augmentation to search"),
        (lambda p: search_augmentation_level(p, "sr16", [0, 11], Recorder(), LABELS),
         r"`levels` must be a non-empty list of integers in \[0, 10\]"),
        (lambda p: search_augmentation_level(p, "sr16", [0], Recorder(), LABELS, modes="truncated"),
         r"`modes` must be a list of values in \['non_truncated', 'truncated'\]"),
        (lambda p: search_augmentation_level(p, "sr16", [0], lambda x: {"is": 1.0}, LABELS, verbose=False),
         r"`evaluate` must return 'fid'. Received keys: \['is'\]"),
        (lambda p: search_noise_schedule(p, "sr16", 4, Recorder(), LABELS),
         "Stage 'sr16' is not conditioned on continuous noise levels"),
        (lambda p: search_noise_schedule(p, "sr32", 4, Recorder(), LABELS, schedules=[{"schedule": "quadratic"}]),
         "`schedule` must be one of"),
    ],
)
def test_searches_reject_bad_arguments(cascade, call, message):
    with pytest.raises(ValueError, match=message):
        call(_fresh(cascade))


def test_sample_quality_measures_fid_and_is_with_any_extractor():
    import keras

    from keras_cdm.evaluation import ClassifierFeatures, compute_statistics
    from keras_cdm.search import sample_quality

    inputs = keras.Input((32, 32, 1))
    hidden = keras.layers.Dense(4, name="features")(keras.layers.Flatten()(inputs))
    extractor = ClassifierFeatures(keras.Model(inputs, keras.layers.Dense(3)(hidden)), feature_layer="features")
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (40, 32, 32, 1), dtype=np.uint8)
    evaluate = sample_quality(extractor, compute_statistics(real, extractor))
    same, other = evaluate(real), evaluate(np.zeros_like(real))
    assert abs(same["fid"]) < 1e-6 and other["fid"] > 1e-3 and 1.0 <= same["is"] <= 3.0 and "is_std" in same
    with pytest.raises(ValueError, match="Nothing to measure"):
        sample_quality(extractor, None, inception_score=False)


def test_stage_diagnostics_compare_generated_and_real_conditioning(cascade):
    from keras_cdm.search import stage_diagnostics

    pipeline, evaluate = _fresh(cascade), Recorder()
    low = np.full((3, 8, 8, 1), 255, np.uint8)
    result = stage_diagnostics(pipeline, "sr16", evaluate, LABELS, low, seed=1)
    assert set(result) == {"generated", "real"} and [s.shape for s in evaluate.seen] == [(3, 16, 16, 1)] * 2
    assert result["real"]["fid"] != result["generated"]["fid"]


# The trivial baseline: each upsampler against a plain resize of its inputs ---------------------


def test_pixel_statistics_and_histogram_distance_closed_forms():
    from keras_cdm.evaluation import histogram_distance, pixel_statistics

    black = np.zeros((1, 4, 4, 1), np.uint8)
    half = black.copy()
    half[:, :2] = 255  # half the pixels white
    stats = pixel_statistics(half, bins=4)
    assert stats["near_black"] == 0.5 and stats["mean"] == 0.5
    np.testing.assert_array_equal(stats["histogram"], [0.5, 0, 0, 0.5])
    assert histogram_distance(half, black, bins=4) == 0.5 and histogram_distance(black, black) == 0.0
    assert histogram_distance(np.full((1, 2, 2, 1), 255, np.uint8), black) == 1.0
    assert pixel_statistics(np.full((1, 2, 2, 1), -1.0, np.float32))["near_black"] == 1.0


def test_baseline_comparison_scores_each_upsampler_and_its_resize(cascade):
    from keras_cdm.search import baseline_comparison, stage_beats_baseline

    pipeline = type(cascade)(cascade.stages, cascade.sampling)
    pipeline.set_sampling("sr16", truncated=False)
    labels = [0, 1, 2, 0]
    real = {"sr16": np.zeros((4, 16, 16, 1), np.uint8), "sr32": np.zeros((4, 32, 32, 1), np.uint8)}
    brightness = lambda images: {"fid": float(images.mean())}  # noqa: E731
    result = baseline_comparison(pipeline, brightness, labels, real, seed=3, verbose=False)
    assert [(r["stage"], r["images"]) for r in result.rows] == [
        ("sr16", "stage"), ("sr16", "bicubic"), ("sr32", "stage"), ("sr32", "bicubic")]
    # The "stage" rows are the cascade's own outputs; the bicubic rows resize the previous stage's.
    _, samples = pipeline.generate(labels=labels, seed=3, return_intermediates=True, output="float")
    assert np.isclose(result.rows[2]["fid"], to_uint8_mean(samples["sr32"]))
    resized = keras.ops.convert_to_numpy(keras.ops.image.resize(samples["sr16"], (32, 32), interpolation="bicubic"))
    assert np.isclose(result.rows[3]["fid"], to_uint8_mean(resized))
    assert set(stage_beats_baseline(result)) == {"sr16", "sr32"}
    with pytest.raises(ValueError, match="truncated augmentation"):
        baseline_comparison(cascade, brightness, labels, real, verbose=False)
    with pytest.raises(ValueError, match=r"Missing: \['sr32'\]"):
        baseline_comparison(pipeline, brightness, labels, {"sr16": real["sr16"]}, verbose=False)
    with pytest.raises(ValueError, match="not the base stage"):
        baseline_comparison(pipeline, brightness, labels, real, stages=["base"], verbose=False)


def to_uint8_mean(images):
    from keras_cdm.images import to_uint8

    return float(to_uint8(images).mean())


def test_baseline_comparison_scores_given_intermediates_without_sampling(cascade, tmp_path):
    from keras_cdm.search import baseline_comparison

    pipeline = type(cascade)(cascade.stages, cascade.sampling)
    pipeline.set_sampling("sr16", truncated=False)
    labels = [0, 1, 2, 0]
    real = {"sr16": np.zeros((4, 16, 16, 1), np.uint8), "sr32": np.full((4, 32, 32, 1), 255, np.uint8)}
    brightness = lambda images: {"fid": float(images.mean())}  # noqa: E731
    _, samples = pipeline.generate(labels=labels, seed=3, return_intermediates=True)  # uint8
    sampled = baseline_comparison(pipeline, brightness, labels, real, seed=3, verbose=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the cascade must not sample when intermediates are given")

    pipeline.generate = refuse
    given = baseline_comparison(pipeline, brightness, labels, real, intermediates=samples, verbose=False,
                                histogram_path=tmp_path / "histograms.png")
    assert (tmp_path / "histograms.png").stat().st_size > 0
    for a, b in zip(sampled.rows, given.rows):
        assert a["stage"] == b["stage"] and a["images"] == b["images"]
        if a["images"] == "stage":  # uint8 intermediates score as the float samples they round to
            assert a == b
        else:  # the resize of rounded vs unrounded inputs: within a rounding step
            assert a["fid"] == pytest.approx(b["fid"], abs=1.0)
            assert a["near_black"] == pytest.approx(b["near_black"], abs=0.01)
    assert given.rows[2]["fid"] == pytest.approx(float(samples["sr32"].mean()))
    with pytest.raises(ValueError, match=r"Wrong or missing: \['base'\]"):
        baseline_comparison(pipeline, brightness, labels, real, intermediates={k: v for k, v in samples.items()
                                                                               if k != "base"}, verbose=False)
    with pytest.raises(ValueError, match=r"Wrong or missing: \['sr32'\]"):
        baseline_comparison(pipeline, brightness, labels, real, verbose=False,
                            intermediates={**samples, "sr32": samples["sr32"][:3]})
    with pytest.raises(ValueError, match=r"`intermediates\['sr32'\]` must have shape \(4, 32, 32, 1\)"):
        baseline_comparison(pipeline, brightness, labels, real, verbose=False,
                            intermediates={**samples, "sr32": samples["sr16"]})
    with pytest.raises(ValueError, match=r"`intermediates\['sr16'\]` must be integers in \[0, 255\]"):
        baseline_comparison(pipeline, brightness, labels, real, verbose=False,
                            intermediates={**samples, "sr16": samples["sr16"].astype("float32")})
