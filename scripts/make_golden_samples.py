"""Regenerates tests/data/cdm_mnist32_golden_<backend>.npz, the reference of
tests/golden_samples_test.py (see keras_cdm/testing/golden.py).

Run it only when the shipped preset's weights change on purpose (a retrain), once per
backend: `KERAS_BACKEND=tensorflow python scripts/make_golden_samples.py`, then with
`KERAS_BACKEND=jax` and `KERAS_BACKEND=torch`.
A refactor must leave these arrays unchanged: that is what the test checks.
"""

from pathlib import Path

import keras
import numpy as np

from keras_cdm.pipeline import CascadedDiffusionPipeline
from keras_cdm.testing.golden import golden_file, golden_samples

if __name__ == "__main__":
    path = golden_file(Path(__file__).resolve().parent.parent / "tests" / "data", keras.backend.backend())
    samples = golden_samples(CascadedDiffusionPipeline.from_preset("cdm_mnist32").stages)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **samples)
    print(f"wrote {path}: {len(samples)} arrays")
