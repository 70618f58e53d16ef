"""The shipped cdm_mnist32 cascade gives the same images, bit for bit, as when the golden
samples were stored (scripts/make_golden_samples.py): refactors keep behaviour."""

from pathlib import Path

import keras
import numpy as np
import pytest

from keras_cdm.pipeline import CascadedDiffusionPipeline
from keras_cdm.testing.golden import SETTINGS, golden_file, golden_samples

DATA = Path(__file__).resolve().parent / "data"


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
        np.testing.assert_array_equal(images, stored[key], err_msg=key)  # bit for bit
    # The settings differ, and so do their samples: the comparison is not vacuous.
    assert not np.array_equal(samples["ancestral/sr32"], samples["truncated/sr32"])
