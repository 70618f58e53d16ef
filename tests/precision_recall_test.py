"""Improved precision and recall (keras_cdm.precision_recall), against cases with known answers."""

import numpy as np
import pytest

from keras_cdm import precision_recall as pr

pytestmark = pytest.mark.backend_neutral


def brute_force(real, generated, k):
    """The definition, with a double loop in float64."""
    def radii(points):
        return [sorted(np.linalg.norm(points - p, axis=1))[k] for p in points]

    def inside(queries, points, r):
        return np.mean([any(np.linalg.norm(q - p) <= rp for p, rp in zip(points, r)) for q in queries])

    return {"precision": inside(generated, real, radii(real)), "recall": inside(real, generated, radii(generated))}


def test_matches_the_definition_on_random_sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 4))
    generated = rng.normal(1.5, 0.5, size=(45, 4))  # shifted and narrower: partial precision and recall
    got = pr.precision_recall(real, generated, k=3)
    expected = brute_force(real, generated, 3)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1


def test_fidelity_and_diversity_apart():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(400, 2))
    same = pr.precision_recall(real, real.copy())
    assert same == {"precision": 1.0, "recall": 1.0}
    far = pr.precision_recall(real, real + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0}
    # Mode collapse: every sample near one real point. Faithful (precision 1), not diverse.
    collapsed = real[:1] + rng.normal(scale=1e-3, size=(400, 2))
    result = pr.precision_recall(real, collapsed)
    assert result["precision"] == 1.0 and result["recall"] < 0.05


def test_bad_inputs_are_refused():
    good = np.zeros((5, 3))
    for bad, message in [(np.zeros(5), "2-D numeric array"), (np.zeros((1, 3)), "at least 2 rows"),
                         (np.array([["a"] * 3] * 4), "numeric"), (np.full((5, 3), np.nan), "NaN or infinite")]:
        with pytest.raises(ValueError, match=message):
            pr.precision_recall(bad, good)
    with pytest.raises(ValueError, match="the same feature size"):
        pr.precision_recall(good, np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"`k` must be an integer in \[1, 4\]"):
        pr.precision_recall(good, good, k=5)
