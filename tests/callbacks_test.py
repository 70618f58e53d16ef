import numpy as np
import pytest
from PIL import Image

from keras_cdm import (DiffusionModel, DiffusionUNet, GaussianConditioningAugmentation, GaussianDiffusion,
                       image_grid)
from keras_cdm.callbacks import SampleGrid
from keras_cdm.images import from_uint8, to_uint8

SMALL = dict(base_channels=8, channel_multipliers=(1,), num_res_blocks=1, attention_resolutions=(), num_groups=4,
             num_classes=2, image_channels=1)


def _base():
    model = DiffusionModel(DiffusionUNet(image_size=8, **SMALL), GaussianDiffusion(10, "cosine"), seed=0)
    model.compile(learning_rate=1e-3, ema_momentum=0.5)
    return model


def _data(size):
    rng = np.random.default_rng(0)
    return {"images": rng.uniform(-1, 1, (8, size, size, 1)).astype("float32"), "labels": np.arange(8) % 2}


def test_grids_every_epochs_and_after_the_last(tmp_path):
    model = _base()
    grid = SampleGrid(tmp_path / "grid_{epoch:02d}.png", labels=[0, 1, 1], every=2, num_steps=3)
    model.fit(_data(8), epochs=3, batch_size=4, verbose=0, callbacks=[grid])
    assert [p.name for p in grid.paths] == ["grid_02.png", "grid_03.png"]
    # The last grid is exactly the EMA samples of the trained model, labelled.
    expected = image_grid(model.generate(labels=[0, 1, 1], seed=0, num_steps=3), labels=[0, 1, 1], columns=2)
    np.testing.assert_array_equal(np.asarray(Image.open(grid.paths[-1])), expected)


def test_fixed_path_is_overwritten_and_unconditional(tmp_path):
    unet = DiffusionUNet(image_size=8, **{**SMALL, "num_classes": None})
    model = DiffusionModel(unet, GaussianDiffusion(10, "cosine"), seed=0)
    model.compile()
    grid = SampleGrid(tmp_path / "grid.png", num_images=4, num_steps=2, use_ema=False)
    model.fit({"images": _data(8)["images"]}, epochs=2, batch_size=4, verbose=0, callbacks=[grid])
    assert grid.paths == [tmp_path / "grid.png"] * 2


def test_upsampler_grid_shows_low_res_inputs_above_samples(tmp_path):
    unet = DiffusionUNet(image_size=16, low_res_size=8, augmentation_level_embedding=True, **SMALL)
    model = DiffusionModel(unet, GaussianDiffusion(10, "cosine"),
                           augmentation=GaussianConditioningAugmentation(5, num_timesteps=10), seed=0)
    model.compile()
    low = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    grid = SampleGrid(tmp_path / "sr.png", labels=[0, 1, 0, 1], low_res_images=low, columns=2, num_steps=2,
                      augmentation_level=3)
    model.fit(_data(16), epochs=1, batch_size=4, verbose=0, callbacks=[grid])
    samples = model.generate(labels=[0, 1, 0, 1], seed=0, num_steps=2, augmentation_level=3,
                             low_res_images=from_uint8(low))
    enlarged = np.repeat(np.repeat(low, 2, axis=1), 2, axis=2)

    rows = np.concatenate([enlarged[:2], to_uint8(samples[:2]), enlarged[2:], to_uint8(samples[2:])])
    expected = image_grid(rows, labels=[0, 1, 0, 1, 0, 1, 0, 1], columns=2)
    np.testing.assert_array_equal(np.asarray(Image.open(grid.paths[0])), expected)


@pytest.mark.parametrize("kwargs, match", [
    (dict(path="grid.jpg", labels=[0]), "png"),
    (dict(path="grid.png", labels=[0], every=0), "every"),
    (dict(path="grid.png"), "num_images"),
    (dict(path="grid.png", labels=[0, 1], low_res_images=np.zeros((3, 8, 8, 1), "uint8")), "one image per"),
    (dict(path="grid.png", labels=[0, 1, 0], low_res_images=np.zeros((3, 8, 8, 1), "uint8"), columns=2), "divide"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SampleGrid(**kwargs)


def test_needs_a_diffusion_model():
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="DiffusionModel"):
        SampleGrid("grid.png", labels=[0]).set_model(model)
