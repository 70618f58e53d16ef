"""The shipped cdm_mnist32 cascade gives the same images as when the golden samples were
stored (scripts/make_golden_samples.py): refactors keep behaviour.

Bit for bit on the machine that stored them; another CPU of the same architecture makes
oneDNN (TensorFlow, PyTorch) and XLA (JAX) pick other kernels, whose float32 rounding
differs by a few ulps per network evaluation and grows along the chain (measured on two
hosts of the project: at most 1.6e-3 on [-1, 1], a fifth of one uint8 level). A change of
behaviour (another seed, step, sampler or schedule) moves pixels by tenths."""

from pathlib import Path

import keras
import numpy as np
import pytest

from keras_cdm.pipeline import CascadedDiffusionPipeline
from keras_cdm.testing.golden import SETTINGS, golden_file, golden_samples

DATA = Path(__file__).resolve().parent / "data"
ROUNDING = 4e-3  # float32 rounding of other kernels, accumulated over a cascade (see above)


@pytest.fixture(scope="module")
def stored():
    path = golden_file(DATA, keras.backend.backend())
    if not path.exists():
        pytest.fail(f"No golden samples for backend {keras.backend.backend()!r}: run scripts/make_golden_samples.py")
    with np.load(path) as arrays:
        return dict(arrays)


def test_samples_equal_the_stored_golden_samples(stored):
    samples = golden_samples(CascadedDiffusionPipeline.from_preset("cdm_mnist32").stages)
    assert sorted(samples) == sorted(stored) and len(stored) == 3 * len(SETTINGS) + 3
    for key, images in samples.items():
        np.testing.assert_allclose(images, stored[key], rtol=0, atol=ROUNDING, err_msg=key)
    # The settings differ, and so do their samples: the comparison is not vacuous.
    assert not np.array_equal(samples["ancestral/sr32"], samples["truncated/sr32"])
