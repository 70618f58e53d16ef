"""CascadedDiffusionPipeline on a tiny 8 -> 16 -> 32 cascade with random weights."""

import keras
import numpy as np
import pytest

from keras_cdm import CascadedDiffusionPipeline, DiffusionModel, DiffusionUNet, GaussianDiffusion
from keras_cdm.images import from_uint8, to_uint8
from keras_cdm.seeding import example_seeds
from keras_cdm.testing import tiny_cascade

LABELS = [0, 2, 1, 2]


@pytest.fixture(scope="module")
def cascade():
    return tiny_cascade()


@pytest.fixture(scope="module")
def sampled(cascade):
    return cascade.generate(labels=LABELS, seed=5, batch_size=4, return_intermediates=True)


def test_generate_runs_every_stage_and_returns_uint8(cascade, sampled):
    images, intermediates = sampled
    assert images.dtype == np.uint8 and images.shape == (4, 32, 32, 1)
    assert list(intermediates) == ["base", "sr16", "sr32"]
    assert [v.shape[1] for v in intermediates.values()] == [8, 16, 32]
    np.testing.assert_array_equal(intermediates["sr32"], images)
    assert images.std() > 5  # not a constant image


def test_same_seed_same_images_other_seed_other_images(cascade, sampled):
    again = cascade.generate(labels=LABELS, seed=5, batch_size=4)
    np.testing.assert_array_equal(again, sampled[0])
    other = cascade.generate(labels=LABELS, seed=6, batch_size=4)
    assert np.abs(other.astype(int) - sampled[0]).mean() > 1


def test_a_batch_of_4_equals_four_batches_of_1(cascade, sampled):
    one_by_one = cascade.generate(labels=LABELS, seed=5, batch_size=1)
    difference = np.abs(one_by_one.astype(int) - sampled[0])
    assert difference.max() <= 1 and difference.mean() < 0.01  # float round-off may flip one level


def test_truncation_stops_the_previous_stage_at_s(cascade, sampled):
    # sr16 uses truncated augmentation at s = 3: the base stage returns z_3, i.e. step index 2.
    assert cascade.truncation_step(0) == 2 and cascade.truncation_step(1) is None
    z_s = cascade.stages[0].generate(labels=LABELS, seed=example_seeds(5, range(4), stream=0), stop_step=2)
    np.testing.assert_array_equal(sampled[1]["base"], to_uint8(z_s))
    # Respaced base process: s = 3 needs original step 2 to be kept.
    cascade.set_sampling("base", num_steps=5)
    try:
        kept = cascade.stages[0].sampling_plan(num_steps=5).process.timestep_map
        assert cascade.truncation_step(0) == int(np.flatnonzero(kept == 2)[0])
        with pytest.raises(ValueError, match=r"needs stage 'base' to visit step s; .* Nearest levels it visits"):
            cascade.set_sampling("sr16", augmentation_level=2)
        assert cascade.sampling[1]["augmentation_level"] == 3  # a refused change leaves the settings as they were
    finally:
        cascade.set_sampling("base", num_steps=None)


def test_super_resolution_of_given_images_from_an_intermediate_stage(cascade):
    low = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    images, intermediates = cascade.generate(labels=[1, 0], seed=3, start_stage="sr16", low_res_images=low,
                                             return_intermediates=True)
    assert images.shape == (2, 32, 32, 1) and list(intermediates) == ["sr16", "sr32"]
    # Given images are z_0: the truncated stage re-noises them to s with its seeds (stream 1).
    expected = cascade.stages[1].generate(labels=[1, 0], seed=example_seeds(3, range(2), stream=1),
                                          low_res_images=from_uint8(low), augmentation_level=3)
    np.testing.assert_array_equal(intermediates["sr16"], to_uint8(expected))


def test_uint8_conversions_round_trip():
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    np.testing.assert_array_equal(to_uint8(from_uint8(images)), images)
    with pytest.raises(ValueError, match=r"must be integers in \[0, 255\], or floats in \[-1, 1\]"):
        from_uint8(np.full((1, 2, 2, 1), 3.0))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"labels": [0, 3]}, r"`labels` must be a non-empty list of integers in \[0, 3\). Received: labels outside it: \[3\]"),
        ({"labels": None}, "This cascade is class-conditional: pass `labels`"),
        ({"labels": [0], "batch_size": 0}, "`batch_size` must be a positive integer. Received: batch_size=0"),
        ({"labels": [0], "seed": -1}, r"`seed` must be None or an integer in \[0, 2\*\*31\)"),
        ({"labels": [0], "start_stage": "sr64"}, r"`start_stage` must be a stage name in \['base', 'sr16', 'sr32'\]"),
        ({"labels": [0], "start_stage": 1}, "`low_res_images` goes with a super-resolution `start_stage`"),
        ({"labels": [0], "start_stage": 1, "low_res_images": np.zeros((1, 16, 16, 1), np.uint8)},
         r"`low_res_images` must have shape \(1, 8, 8, 1\)"),
    ],
)
def test_generate_rejects_bad_requests(cascade, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cascade.generate(**kwargs)


@pytest.mark.parametrize(
    "stage,settings,message",
    [
        ("sr32", {"augmentation_level": 2}, r"Stage 'sr32': `augmentation_level` must be an integer in 0"),
        ("sr16", {"augmentation_level": 11}, r"`augmentation_level` must be an integer in \[0, 10\]"),
        ("base", {"truncated": True}, "`truncated=True` needs a Gaussian-augmented upsampler after another stage"),
        ("base", {"noise_schedule": {"schedule": "linear"}}, "`noise_schedule` needs a stage trained with continuous"),
        ("base", {"sampler": "euler"}, r"`sampler` must be one of \['ancestral', 'ddim', 'dpm\+\+2m', "),
        ("base", {"steps": 4}, r"Sampling settings take the keys .* Received: \['steps'\]"),
        ("base", {"eta": -1.0}, r"`eta` must be a finite number in \[0.0, 1.0\]"),
    ],
)
def test_bad_sampling_settings_are_refused(cascade, stage, settings, message):
    before = [dict(s) for s in cascade.sampling]
    with pytest.raises(ValueError, match=message):
        cascade.set_sampling(stage, **settings)
    assert cascade.sampling == before


def test_stages_must_chain(cascade):
    base, sr16, sr32 = cascade.stages
    with pytest.raises(ValueError, match="Stage 'sr32' upsamples 16x16 images but stage 'base' makes 8x8"):
        CascadedDiffusionPipeline([base, sr32])
    with pytest.raises(ValueError, match="The first stage must be a base stage"):
        CascadedDiffusionPipeline([sr16, sr32])
    with pytest.raises(ValueError, match="Stage names must be unique"):
        CascadedDiffusionPipeline([base, base])
    with pytest.raises(ValueError, match="`sampling` needs one dict per stage"):
        CascadedDiffusionPipeline([base, sr16], [{}])
    other = DiffusionModel(DiffusionUNet(image_size=8, base_channels=8, channel_multipliers=(1,),
                                         attention_resolutions=(), num_groups=4, image_channels=1, num_classes=5),
                           GaussianDiffusion(10, "cosine"), name="other")
    with pytest.raises(ValueError, match="All stages must share their classes"):
        CascadedDiffusionPipeline([other, sr16])


def test_truncation_needs_the_augmentation_process(cascade):
    _, sr16, _ = cascade.stages
    linear_base = DiffusionModel(
        DiffusionUNet(image_size=8, base_channels=8, channel_multipliers=(1,), attention_resolutions=(), num_groups=4,
                      image_channels=1, num_classes=3),
        GaussianDiffusion(10, "linear", beta_start=1e-3, beta_end=0.2), name="linear_base")
    with pytest.raises(ValueError, match="needs stage 'linear_base' to use the augmentation's process"):
        CascadedDiffusionPipeline([linear_base, sr16], [{}, {"augmentation_level": 2, "truncated": True}])
    CascadedDiffusionPipeline([linear_base, sr16], [{}, {"augmentation_level": 2}])  # non-truncated is fine


def test_progress_bar_per_stage(cascade, capsys):
    cascade.generate(labels=[0, 1], seed=0, verbose=True)
    out = capsys.readouterr().out
    assert "Stage 1/3: base (8x8)" in out and "Stage 3/3: sr32 (32x32)" in out and "2/2" in out


def test_iter_generate_streams_the_same_images(cascade, sampled):
    chunks = list(cascade.iter_generate(labels=LABELS, seed=5, chunk_size=3, batch_size=4))
    assert [len(c) for c in chunks] == [3, 1]
    difference = np.abs(np.concatenate(chunks).astype(int) - sampled[0])
    assert difference.max() <= 1 and difference.mean() < 0.01
    with pytest.raises(ValueError, match="`chunk_size` must be a positive integer"):
        next(cascade.iter_generate(labels=LABELS, chunk_size=0))
    with pytest.raises(ValueError, match="`output` must be one of"):
        cascade.generate(labels=[0], output="png")


@pytest.mark.tensorflow_only
def test_a_cascade_generate_prints_no_retracing_warning():
    """Every stage's sampler is traced once per batch shape (then once more for any batch,
    TensorFlow's reduce_retracing); TensorFlow used to count all samplers as one function
    (they share the code of one lambda) and warn of 'excessive retracing'."""
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        cascade = tiny_cascade()
        for count in (2, 3, 5, 7):
            cascade.generate(labels=[0] * count, seed=0, batch_size=count, verbose=False)
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "retracing" in r.getMessage()]
    assert all(f.function.experimental_get_tracing_count() <= 2 for s in cascade.stages for f in s._samplers.values())


def test_under_pytorch_samplers_record_no_autograd_graph():
    """PyTorch runs the sampler eagerly: inside `torch.inference_mode` no op is recorded for
    backpropagation (the U-Net's weights require gradients, so without it every op would be)."""
    if keras.backend.backend() != "torch":
        pytest.skip("PyTorch backend only")
    from keras_cdm._compile import compile_with_model

    stage = tiny_cascade().stages[0]
    inputs = {key: np.zeros((2, *spec.shape[1:]), spec.dtype) for key, spec in stage.unet.input.items()}
    output = compile_with_model(stage.unet, lambda apply, x: apply(x))(inputs)
    assert output.is_inference() and not output.requires_grad
    assert stage.unet(inputs, training=False).requires_grad  # what inference_mode turns off


def _count_unet_traces(stages, monkeypatch):
    """{stage name: [thread names]}: each U-Net call in Python. Under TensorFlow and JAX the
    compiled sampler runs the U-Net's Python code only while it is traced."""
    import threading

    calls = {}
    for stage in stages:
        original = stage.unet.call

        def counted(*args, _original=original, _name=stage.name, **kwargs):
            calls.setdefault(_name, []).append(threading.current_thread().name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(stage.unet, "call", counted)
    return calls


@pytest.mark.parametrize("count, batch_size", [(3, 3), (5, 2)])
def test_generate_traces_later_stages_in_the_background_once(monkeypatch, count, batch_size):
    """The first generate of a cascade compiles each later stage's sampler (and the first
    stage's last, smaller batch) in a background thread while the stages before it sample:
    every sampler is traced once, the later ones not on the main thread, and the images are
    those of a cascade that compiles each stage when it runs."""
    if keras.backend.backend() == "torch":
        pytest.skip("PyTorch runs the sampler eagerly: nothing to compile ahead")
    from keras_cdm import pipeline as pipeline_module

    labels = [0, 1, 2, 0, 1][:count]
    monkeypatch.setattr(pipeline_module, "can_prepare_in_background", lambda: False)
    expected = tiny_cascade().generate(labels=labels, seed=3, batch_size=batch_size, return_intermediates=True)
    monkeypatch.undo()
    cascade = tiny_cascade()
    calls = _count_unet_traces(cascade.stages, monkeypatch)
    images = cascade.generate(labels=labels, seed=3, batch_size=batch_size, return_intermediates=True)
    np.testing.assert_array_equal(images[0], expected[0])
    for name in expected[1]:
        np.testing.assert_array_equal(images[1][name], expected[1][name])
    sizes = 1 if count % batch_size == 0 else 2  # a last, smaller batch is a second trace
    assert {name: len(threads) for name, threads in calls.items()} == {"base": sizes, "sr16": sizes, "sr32": sizes}
    assert set(calls["sr16"]) == set(calls["sr32"]) == {"keras_cdm-prepare"}
    assert calls["base"][0] == "MainThread" and set(calls["base"][1:]) <= {"keras_cdm-prepare"}
    again = cascade.generate(labels=labels, seed=3, batch_size=batch_size)  # compiled: nothing traced again
    np.testing.assert_array_equal(again, expected[0])
    assert sum(map(len, calls.values())) == 3 * sizes


def test_a_failed_preparation_leaves_sampling_to_the_stage(monkeypatch):
    """When compiling ahead fails, each stage compiles its sampler itself when it runs."""
    cascade = tiny_cascade()
    expected = cascade.generate(labels=[0, 1], seed=4, batch_size=2)
    fresh = tiny_cascade()

    def broken(self, plan, batch_size, build=True):
        raise RuntimeError("preparation failed")

    monkeypatch.setattr(DiffusionModel, "prepare_plan", broken)
    np.testing.assert_array_equal(fresh.generate(labels=[0, 1], seed=4, batch_size=2), expected)


def test_one_compiled_sampler_runs_a_chain_whole_in_chunks_and_for_zero_steps(monkeypatch):
    """The number of steps is an argument of the compiled sampler: a progress bar's chunks
    reuse the whole chain's graph, and `prepare_plan`'s zero-step run (TensorFlow builds a
    graph's kernels on its first call) leaves the state as it was."""
    from keras_cdm.diffusion_model import _step_count

    stage = tiny_cascade().stages[0]
    calls = _count_unet_traces([stage], monkeypatch)
    plan = stage.sampling_plan(num_steps=7)
    whole = stage.generate(labels=[0, 1], seed=3, plan=plan, verbose=False)
    chunked = stage.generate(labels=[0, 1], seed=3, plan=plan, verbose=True)  # 7 chunks of 1 step
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    assert len(stage._samplers) == 1
    if keras.backend.backend() != "torch":  # PyTorch calls the U-Net eagerly at every step
        assert len(calls[stage.name]) == 1
    state, seeds, conditioning = stage._loop_inputs(plan, np.array([0, 1], "int32"), example_seeds(3, range(2)), None)
    run = next(iter(stage._samplers.values()))
    after = run(state, seeds, keras.ops.convert_to_tensor(plan.start_step, "int32"), _step_count(0), conditioning)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(after), keras.ops.convert_to_numpy(state))
    assert np.abs(keras.ops.convert_to_numpy(state) - whole).max() > 0.1  # zero steps is not the sample


@pytest.mark.parametrize("build", [True, False])
def test_prepare_plan_builds_the_graph_with_a_zero_step_run_under_tensorflow(monkeypatch, build):
    """TensorFlow builds a graph's kernels on its first call: `prepare_plan` makes that call,
    for zero steps, unless `build=False` (a cascade's first stage, built by its own first run)."""
    from keras_cdm._compile import Compiled

    steps_run = []
    original = Compiled.__call__

    def recorded(self, *args):
        if len(args) == 5:  # a sampler: (state, seeds, start, num_steps, conditioning)
            steps_run.append(int(keras.ops.convert_to_numpy(args[3])))
        return original(self, *args)

    monkeypatch.setattr(Compiled, "__call__", recorded)
    stage = tiny_cascade().stages[0]
    plan = stage.sampling_plan(num_steps=5)
    assert stage.prepare_plan(plan, 2, build=build) is (keras.backend.backend() != "torch")
    assert steps_run == ([0] if build and keras.backend.backend() == "tensorflow" else [])
    stage.run_plan(plan, np.array([0, 1], "int32"), example_seeds(0, range(2)))
    assert steps_run[-1] == 5


def test_prepare_plan_compiles_once_and_run_plan_reuses_it(monkeypatch):
    stage = tiny_cascade().stages[1]
    calls = _count_unet_traces([stage], monkeypatch)
    plan = stage.sampling_plan(augmentation_level=2)
    compiled_ahead = keras.backend.backend() != "torch"
    assert stage.prepare_plan(plan, 2) is compiled_ahead
    assert stage.prepare_plan(plan, 2) is False  # ready already
    low_res = np.zeros((2, 8, 8, 1), "float32")
    stage.generate(labels=[0, 1], low_res_images=low_res, seed=0, plan=plan)
    if compiled_ahead:  # traced once, by prepare_plan (PyTorch calls the U-Net eagerly at every step)
        assert len(calls["sr16"]) == 1
