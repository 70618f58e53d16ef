import json

import keras
import numpy as np
import pytest

from keras_cdm import (
    BlurConditioningAugmentation,
    DiffusionModel,
    DiffusionUNet,
    GaussianConditioningAugmentation,
    GaussianDiffusion,
)
from keras_cdm.seeding import example_seeds, stateless_normal
from keras_cdm.seeding import AUGMENTATION_NOISE_COUNTER
from keras_cdm.testing import mnist_digits, randomize_weights, to_numpy

TINY = dict(base_channels=16, channel_multipliers=(1, 2), num_res_blocks=1, attention_resolutions=(),
            num_classes=10, num_groups=8, image_channels=1)


def base_stage(**kwargs):
    unet = DiffusionUNet(image_size=8, **{**TINY, **kwargs.pop("unet", {})})
    return DiffusionModel(unet, GaussianDiffusion(20, "cosine"), **kwargs)


def sr_stage(**kwargs):
    unet = DiffusionUNet(image_size=16, low_res_size=8, augmentation_level_embedding=True, learned_variance=True,
                         **TINY)
    diffusion = GaussianDiffusion(20, "cosine", variance="learned_range", loss="hybrid")
    return DiffusionModel(unet, diffusion, augmentation=GaussianConditioningAugmentation(5, num_timesteps=20),
                          **kwargs)


@pytest.fixture(scope="module")
def digits():
    return mnist_digits(per_class=1, size=16, classes=range(8))


@pytest.fixture(scope="module")
def trained_base(digits):
    """A tiny base stage fitted for a few steps with EMA (shared by the tests below)."""
    keras.utils.set_random_seed(0)
    model = base_stage(seed=0)
    model.compile(learning_rate=1e-3, ema_momentum=0.5)
    images = to_numpy(keras.ops.image.resize(digits[0], (8, 8), antialias=True))
    model.fit({"images": images, "labels": digits[1]}, epochs=2, batch_size=4, verbose=0)
    return model


# Overfitting real digits: the training side works end to end -------------------------------


def _mean_distance(samples, targets):
    return float(((samples - targets) ** 2).mean())


def test_base_stage_overfits_real_digits(digits):
    keras.utils.set_random_seed(0)
    images = np.clip(to_numpy(keras.ops.image.resize(digits[0], (8, 8), antialias=True)), -1, 1)
    labels = digits[1]
    unet = DiffusionUNet(image_size=8, **{**TINY, "base_channels": 32})
    model = DiffusionModel(unet, GaussianDiffusion(50, "cosine"), seed=0)
    before = model.generate(labels=labels, seed=1)
    model.compile(learning_rate=3e-3, use_ema=False)
    data = {"images": np.repeat(images, 8, 0), "labels": np.repeat(labels, 8)}
    history = model.fit(data, epochs=30, batch_size=16, verbose=0).history
    assert history["loss"][-1] < 0.25 * history["loss"][0]
    after = model.generate(labels=labels, seed=1)
    assert _mean_distance(after, images) < 0.2 * _mean_distance(before, images)
    assert _mean_distance(after, images) < 0.3


@pytest.mark.backend_neutral  # 60 epochs: run once (TensorFlow); JAX training is covered by the base stage
def test_super_resolution_stage_overfits_real_digits(digits):
    keras.utils.set_random_seed(0)
    images, labels = digits
    model = sr_stage(seed=0)
    # Two samples per digit; the median per-image distance is robust to the odd
    # digit that a 20-step, 8-channel model gets wrong.
    images, labels = np.concatenate([images, images]), np.concatenate([labels, labels])
    low = to_numpy(model.downsample(images))

    def median_distance():
        samples = model.generate(labels=labels, seed=1, low_res_images=low, augmentation_level=2)
        return float(np.median(((samples - images) ** 2).mean(axis=(1, 2, 3))))

    before = median_distance()
    model.compile(learning_rate=3e-3, use_ema=False)
    data = {"images": np.repeat(images, 4, 0), "labels": np.repeat(labels, 4)}
    history = model.fit(data, epochs=60, batch_size=16, verbose=0).history
    assert history["mse"][-1] < 0.25 * history["mse"][0]
    assert set(history) == {"loss", "mse", "vb"}
    assert median_distance() < 0.1 * before


# Sampling ----------------------------------------------------------------------------------


def test_generate_is_deterministic_in_the_seed_and_respaces(trained_base):
    a = trained_base.generate(labels=[1, 2], seed=7)
    np.testing.assert_array_equal(a, trained_base.generate(labels=[1, 2], seed=7))
    assert np.abs(a - trained_base.generate(labels=[1, 2], seed=8)).max() > 1e-3
    assert a.shape == (2, 8, 8, 1) and a.dtype == np.float32 and np.abs(a).max() <= 1.0 + 1e-6
    assert trained_base.generate(labels=[3], seed=0, num_steps=5).shape == (1, 8, 8, 1)
    unseeded = [trained_base.generate(labels=[3], seed=None, num_steps=5) for _ in range(2)]
    assert np.abs(unseeded[0] - unseeded[1]).max() > 1e-3  # seed=None draws a fresh seed
    ddim = trained_base.generate(labels=[3], seed=0, num_steps="ddim4", sampler="ddim")
    np.testing.assert_array_equal(ddim, trained_base.generate(labels=[3], seed=0, num_steps="ddim4", sampler="ddim"))


def test_fit_keeps_training_weights_and_the_ema_apart(trained_base):
    averages = trained_base.optimizer._model_variables_moving_average
    gaps = [np.abs(to_numpy(a) - to_numpy(v)).max() for a, v in zip(averages, trained_base.trainable_variables)]
    assert max(gaps) > 1e-5  # Keras' fit would have overwritten the weights with the EMA


def _fit_counting_traces(model, data):
    traces = {"n": 0}
    train_step = model.train_step

    def counted(batch):
        traces["n"] += 1  # Python runs once per trace of the train function
        return train_step(batch)

    model.train_step = counted
    model.fit(data, epochs=1, batch_size=4, verbose=0)
    del model.train_step
    return traces["n"]


@pytest.mark.tensorflow_only  # JAX's trainer builds the optimizer first itself; PyTorch does not trace
def test_first_fit_traces_the_train_step_once_with_the_same_training(digits, monkeypatch):
    """The optimizer is built before the train function is traced (Keras' TensorFlow trainer
    builds it inside, which makes TensorFlow trace twice); training is the same bit for bit
    as Keras' own order. The Gaussian augmentation layer (no weights) counts as built."""
    import keras_cdm.diffusion_model as module

    images = to_numpy(keras.ops.image.resize(digits[0], (16, 16)))
    data = {"images": images, "labels": digits[1]}
    results = {}
    for order in ("before", "inside"):
        if order == "inside":
            monkeypatch.setattr(module, "_build_optimizer_before_tracing", lambda model: None)
        keras.utils.set_random_seed(0)
        model = sr_stage(seed=0)
        model.compile(learning_rate=1e-3, ema_momentum=0.5)
        traces = _fit_counting_traces(model, data)
        averages = model.optimizer._model_variables_moving_average
        results[order] = [to_numpy(v) for v in [*model.trainable_variables, *averages]]
        assert traces == (1 if order == "before" else 2), order
    for before, inside in zip(results["before"], results["inside"], strict=True):
        np.testing.assert_array_equal(before, inside)


def test_generate_uses_ema_weights_and_restores_the_training_weights(trained_base):
    weights = [to_numpy(w).copy() for w in trained_base.unet.trainable_variables]
    with_ema = trained_base.generate(labels=[4, 5], seed=0)
    without = trained_base.generate(labels=[4, 5], seed=0, use_ema=False)
    assert np.abs(with_ema - without).max() > 1e-4
    for before, after in zip(weights, trained_base.unet.trainable_variables):
        np.testing.assert_array_equal(before, to_numpy(after))
    # The EMA weights are the optimizer's moving averages: sampling with them loaded equals `with_ema`.
    averages = [to_numpy(v) for v in trained_base.optimizer._model_variables_moving_average]
    for variable, average in zip(trained_base.unet.trainable_variables, averages):
        variable.assign(average)
    np.testing.assert_array_equal(trained_base.generate(labels=[4, 5], seed=0, use_ema=False), with_ema)
    for variable, value in zip(trained_base.unet.trainable_variables, weights):
        variable.assign(value)


def test_stop_step_returns_an_intermediate_sample(trained_base):
    z = trained_base.generate(labels=[1], seed=3, stop_step=10)
    full = trained_base.generate(labels=[1], seed=3)
    assert z.shape == full.shape and np.abs(z - full).max() > 1e-2


def test_truncated_and_non_truncated_conditioning():
    model = sr_stage(seed=0)
    randomize_weights(model.unet, scale=0.05)
    low = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)).astype("float32")
    non_truncated = model.generate(labels=[0, 1], seed=0, low_res_images=low, augmentation_level=4)
    # Non-truncated = re-noise z_0 to s with the seed, then condition on it: the same as passing that z_s
    # in truncated mode.
    noise = stateless_normal(low.shape, example_seeds(0, range(2)), AUGMENTATION_NOISE_COUNTER)
    z_s = to_numpy(model.augmentation.augment(low, np.full(2, 4), noise))
    truncated = model.generate(labels=[0, 1], seed=0, low_res_images=z_s, augmentation_level=4, truncated=True)
    np.testing.assert_allclose(truncated, non_truncated, atol=1e-5)
    clean = model.generate(labels=[0, 1], seed=0, low_res_images=low, augmentation_level=0)
    assert np.abs(clean - non_truncated).max() > 1e-3
    assert np.abs(model.generate(labels=[0, 1], seed=0, low_res_images=low, augmentation_level=4, truncated=True)
                  - non_truncated).max() > 1e-3


def test_a_batch_equals_its_examples_drawn_one_by_one(trained_base):
    labels = [3, 1, 4, 1]
    batch = trained_base.generate(labels=labels, seed=11, num_steps=6)
    seeds = example_seeds(11, range(4))
    singles = [trained_base.generate(labels=[label], seed=[s], num_steps=6) for label, s in zip(labels, seeds)]
    np.testing.assert_allclose(np.concatenate(singles), batch, atol=1e-5)
    assert np.abs(batch[1] - batch[3]).max() > 1e-2  # same label, different example seeds


def test_progress_bar_on_long_chains(capsys):
    model = base_stage()
    model.generate(labels=[0], seed=0, verbose=True)
    assert "20/20" in capsys.readouterr().out


# Serialization -------------------------------------------------------------------------------


def test_config_round_trip_and_keras_file(trained_base, tmp_path):
    config = json.loads(json.dumps(trained_base.get_config()))
    clone = DiffusionModel.from_config(config)
    assert clone.get_config() == config
    path = tmp_path / "stage.keras"
    trained_base.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(restored, DiffusionModel) and restored.optimizer.use_ema
    np.testing.assert_array_equal(restored.generate(labels=[1, 6], seed=2), trained_base.generate(labels=[1, 6], seed=2))


def test_continuous_noise_stage_with_blur_trains_and_samples():
    unet = DiffusionUNet(image_size=16, low_res_size=8, conditioning="noise_level", **TINY)
    model = DiffusionModel(unet, GaussianDiffusion(100, "linear", conditioning="noise_level"),
                           augmentation=BlurConditioningAugmentation(seed=1), random_flip=True, seed=0)
    model.compile()
    images = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 1)).astype("float32")
    history = model.fit({"images": images, "labels": np.arange(4)}, epochs=1, verbose=0).history
    assert set(history) == {"loss", "mse"}
    low = to_numpy(model.downsample(images))
    out = model.generate(labels=np.arange(4), seed=0, num_steps=4, low_res_images=low)
    assert out.shape == (4, 16, 16, 1)
    # An inference schedule of its own (section 4.4): linear, 25 steps, Improved DDPM's 1000/T scaling.
    schedule = {"schedule": "linear", "num_timesteps": 25}
    inference = model.sampling_plan(noise_schedule=schedule).process
    expected = np.sqrt(np.cumprod(1 - np.linspace(1e-4 * 40, 0.02 * 40, 25)))
    np.testing.assert_allclose(inference.sqrt_alphas_cumprod, expected, rtol=1e-12)
    assert inference.conditioning == "noise_level" and model.sampling_plan(num_steps=4).process.num_timesteps == 4
    custom = model.generate(labels=np.arange(4), seed=0, low_res_images=low, noise_schedule=schedule)
    same = model.generate(labels=np.arange(4), seed=0, low_res_images=low,
                          noise_schedule=GaussianDiffusion(25, "linear", conditioning="noise_level"))
    np.testing.assert_array_equal(custom, same)
    assert np.abs(custom - out).max() > 1e-3
    with pytest.raises(ValueError, match="dict with keys among"):
        model.generate(labels=[0], seed=0, low_res_images=low[:1], noise_schedule={"steps": 10})
    # An inference schedule may switch between the fixed variances (fixed_small: posterior variances).
    large = model.sampling_plan(noise_schedule={**schedule, "variance": "fixed_large"}).process
    assert large.variance == "fixed_large" and model.diffusion.variance == "fixed_small"
    np.testing.assert_allclose(large.sqrt_alphas_cumprod, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="may switch only between the fixed variances"):
        model.sampling_plan(noise_schedule={**schedule, "variance": "learned_range"}).process


# Bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,message",
    [
        ({"images": np.zeros((4, 16, 16, 1)), "labels": np.zeros(4)},
         "`images` must have shape (batch, 8, 8, 1) for this stage. Received: images.shape=(4, 16, 16, 1)"),
        ({"images": np.zeros((4, 8, 8, 3)), "labels": np.zeros(4)}, "Received: images.shape=(4, 8, 8, 3)"),
        ({"images": np.zeros((4, 8, 8, 1)), "labels": np.array([0, 3, 10, -1])},
         "`labels` must be a non-empty list of integers in [0, 10). Received: labels outside it: [10, -1]"),
        ({"images": np.zeros((4, 8, 8, 1))}, "This stage is class-conditional: batches need 'labels'"),
        (np.zeros((4, 8, 8, 1)), "Batches must be dicts with 'images' (and 'labels'). Received: ndarray"),
    ],
)
def test_fit_rejects_bad_data_before_any_compute(data, message):
    model = base_stage()
    model.compile()
    with pytest.raises(ValueError) as info:
        model.fit(data, epochs=1, verbose=0)
    assert message in str(info.value)
    assert int(to_numpy(model.optimizer.iterations)) == 0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"labels": None}, "This stage is class-conditional: pass `labels`"),
        ({"labels": [0, 12]}, "`labels` must be a non-empty list of integers in [0, 10). Received: labels outside it: [12]"),
        ({"labels": [0], "low_res_images": np.zeros((1, 4, 4, 1))},
         "`low_res_images` must have shape (1, 8, 8, 1) for this stage. Received: low_res_images.shape=(1, 4, 4, 1)"),
        ({"labels": [0]}, "`low_res_images` is required for a super-resolution stage"),
        ({"labels": [0, 1], "low_res_images": np.zeros((1, 8, 8, 1))}, "`low_res_images` must have shape (2, 8, 8, 1) for this stage. Received: low_res_images.shape=(1, 8, 8, 1)"),
        ({"labels": [0], "low_res_images": np.zeros((1, 8, 8, 1)), "augmentation_level": 21},
         "`augmentation_level` must be an integer in [0, 20]. Received: augmentation_level=21"),
        ({"labels": [0], "low_res_images": np.zeros((1, 8, 8, 1)), "stop_step": 20},
         "`stop_step` must be None or an integer in [0, start_step) = [0, 19). Received: stop_step=20"),
        ({"labels": [0], "low_res_images": np.zeros((1, 8, 8, 1)), "sampler": "heun"},
         "`sampler` must be one of ['ancestral', 'ddim', 'dpm++2m', 'dpm++3m', 'dpm++2m-sde']"),
        ({"labels": [0], "low_res_images": np.zeros((1, 8, 8, 1)), "seed": 1.5},
         "`seed` must be None, an integer in [0, 2**31), or 1 such integers (one per image). Received: seed=1.5"),
        ({"labels": [0, 1], "low_res_images": np.zeros((2, 8, 8, 1)), "seed": [3]},
         "or 2 such integers (one per image). Received: seed=[3]"),
        ({"labels": [0], "low_res_images": np.zeros((1, 8, 8, 1)), "noise_schedule": {"schedule": "linear"}},
         "`noise_schedule` needs a stage trained with continuous noise conditioning"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs, message):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ValueError) as info:
        sr_stage().generate(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: DiffusionModel(DiffusionUNet(image_size=8, **TINY), GaussianDiffusion(20, "cosine",
                                variance="learned_range", loss="hybrid")),
         "Received: learned_variance=False, variance='learned_range'"),
        (lambda: DiffusionModel(DiffusionUNet(image_size=8, **TINY), GaussianDiffusion(50, "linear",
                                conditioning="noise_level")),
         "Received: unet.conditioning='timestep', diffusion.conditioning='noise_level'"),
        (lambda: base_stage(augmentation=BlurConditioningAugmentation()),
         "Conditioning augmentation applies to super-resolution stages"),
        (lambda: DiffusionModel(DiffusionUNet(image_size=16, low_res_size=8, **TINY), GaussianDiffusion(20, "cosine"),
                                augmentation=GaussianConditioningAugmentation(5, num_timesteps=20)),
         "Received: augmentation=GaussianConditioningAugmentation, augmentation_level_embedding=False"),
        (lambda: DiffusionModel("unet", GaussianDiffusion(20, "cosine")),
         "`unet` must be one of ['DiffusionUNet']. Received: unet=str"),
    ],
)
def test_inconsistent_stages_are_rejected(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)
