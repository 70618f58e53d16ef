"""Keras callbacks for training cascade stages with `model.fit`.

`SampleGrid` samples the stage being trained every few epochs (with its EMA
weights, like `generate()`) and writes a PNG grid, so a long run can be watched
and judged by eye:

    stage.fit(train, epochs=50, callbacks=[
        SampleGrid("samples/epoch_{epoch:03d}.png", labels=range(10), num_steps=50, every=5)])
"""

import math
from pathlib import Path

import keras
import numpy as np

from keras_cdm._validation import check_positive_int, is_int
from keras_cdm.images import from_uint8, to_uint8
from keras_cdm.sampling import check_settings
from keras_cdm.visualization import save_image_grid

__all__ = ["SampleGrid"]


class SampleGrid(keras.callbacks.Callback):
    """Writes a grid of samples of the trained `DiffusionModel` every `every` epochs.

    Every grid uses the same `seed`, so successive grids show the same starting
    noise turning into images as training goes on. The samples come from
    `model.generate(...)`: with the optimizer's EMA weights when it has them
    (`use_ema=False` for the raw training weights). Grids are written after
    epochs `every`, `2 * every`, ... and after the last epoch of the `fit` call.

    Args:
        path: where to write the PNG. `{epoch}` in it (1-based, format specs
            allowed: `"grid_{epoch:03d}.png"`) gives one file per epoch;
            without it the same file is overwritten.
        labels: one class label per image (class-conditional stages).
        num_images: how many images (unconditional stages; ignored with `labels`).
        low_res_images: the conditioning of a super-resolution stage, one image
            per sample, at its `low_res_size`: uint8, or floats in [-1, 1].
        show_low_res: for an upsampler, put each low-resolution input (enlarged,
            nearest neighbour) above its sample.
        every: epochs between two grids.
        seed: the sampling seed (the same for every grid).
        columns: images per row (default: about square; all of them in one row
            with `show_low_res`, which needs `columns` to divide the number of images).
        class_names: names written above the tiles instead of label numbers.
        verbose: print the path of each grid written.
        **generate_kwargs: sampling settings (`DiffusionModel.sampling_plan`),
            e.g. `num_steps=25`, `augmentation_level=100`, `noise_schedule={...}`,
            turned into the stage's plan once, when the callback meets its model;
            and `use_ema=False` to sample the training weights.

    Attributes:
        paths: the files written, in order.
    """

    def __init__(self, path, labels=None, num_images=None, low_res_images=None, show_low_res=True, every=1, seed=0,
                 columns=None, class_names=None, verbose=False, **generate_kwargs):
        super().__init__()
        self.path = str(path)
        if Path(self.path.replace("{", "").replace("}", "")).suffix.lower() != ".png":
            raise ValueError(f"`path` must end in .png. Received: path={self.path!r}")
        every = check_positive_int("every", every)
        self.labels = None if labels is None else np.asarray(list(labels) if isinstance(labels, range) else labels)
        if self.labels is not None:
            self.labels = self.labels.reshape(-1)
            count = len(self.labels)
        elif is_int(num_images) and num_images > 0:
            count = int(num_images)
        else:
            raise ValueError("Pass `labels` (class-conditional stage) or a positive `num_images`. "
                             f"Received: labels=None, num_images={num_images!r}")
        self.num_images = count
        self.low_res_images = None if low_res_images is None else from_uint8(low_res_images, name="low_res_images")
        if self.low_res_images is not None and len(self.low_res_images) != count:
            raise ValueError(f"`low_res_images` must hold one image per sample ({count}). "
                             f"Received: {len(self.low_res_images)}")
        self.show_low_res = bool(show_low_res) and self.low_res_images is not None
        columns = None if columns is None else check_positive_int("columns", columns)
        if self.show_low_res and columns is not None and count % columns:
            raise ValueError(f"With `show_low_res`, `columns` must divide the number of images ({count}). "
                             f"Received: columns={columns}")
        self.every, self.seed, self.columns = every, seed, columns
        self.class_names, self.verbose = class_names, verbose
        self.use_ema = generate_kwargs.pop("use_ema", True)
        self.settings = check_settings(generate_kwargs)
        self.plan = None
        self.paths = []

    def set_model(self, model):
        if not callable(getattr(model, "generate", None)) or not hasattr(model, "unet"):
            raise ValueError(f"SampleGrid samples a keras_cdm DiffusionModel. Received: {type(model).__name__}")
        self.plan = model.sampling_plan(**self.settings)  # bad settings fail before training starts
        super().set_model(model)

    def on_epoch_end(self, epoch, logs=None):
        last = (self.params or {}).get("epochs")
        if (epoch + 1) % self.every == 0 or epoch + 1 == last:
            self.write(epoch + 1)

    def write(self, epoch):
        """Samples the model now and writes the grid for `epoch`; returns the path."""
        samples = self.model.generate(
            labels=self.labels, num_images=None if self.labels is not None else self.num_images, seed=self.seed,
            low_res_images=self.low_res_images, plan=self.plan, use_ema=self.use_ema, verbose=False)
        images, labels, columns = to_uint8(samples), self.labels, self.columns
        if self.show_low_res:
            factor = images.shape[1] // self.low_res_images.shape[1]
            low = np.repeat(np.repeat(to_uint8(self.low_res_images), factor, axis=1), factor, axis=2)
            columns = columns or len(images)
            rows = [part for start in range(0, len(images), columns)
                    for part in (low[start:start + columns], images[start:start + columns])]
            images = np.concatenate(rows)
            if labels is not None:
                labels = np.concatenate([labels[start:start + columns] for start in range(0, len(labels), columns)
                                         for _ in range(2)])
        columns = columns or max(1, math.ceil(math.sqrt(len(images))))
        path = Path(self.path.format(epoch=epoch))
        save_image_grid(images, path, labels=labels, columns=columns, class_names=self.class_names)
        self.paths.append(path)
        if self.verbose:
            print(f"SampleGrid: epoch {epoch}: {path}")
        return path
