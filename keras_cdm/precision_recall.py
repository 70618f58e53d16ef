"""Improved precision and recall (Kynkäänniemi et al. 2019): fidelity and diversity apart.

FID mixes two failures in one number: samples unlike real images (fidelity) and samples
that cover too little of the real distribution (diversity). Classifier-free guidance
trades one for the other, so its search reports both. Each set of features spans a
manifold estimate, the union of balls around its points whose radius is the distance to
the point's k-th nearest neighbour in the same set. Precision: the share of generated
samples inside the real manifold. Recall: the share of real samples inside the
generated manifold. Features come from any extractor of `keras_cdm.evaluation` (e.g. a
domain classifier's `ClassifierFeatures`).
"""

import numpy as np

from keras_cdm._validation import check_finite_array, check_int, shown

_CHUNK = 1024  # rows of a distance block: 1024 x 10,000 float64 distances are 80 MB


def precision_recall(real_features, generated_features, k=3):
    """`{"precision": float, "recall": float}` of generated features against real ones.

    Args:
        real_features: (N, D) features of real images.
        generated_features: (M, D) features of generated images, the same D.
        k: the neighbour whose distance is a point's radius (3 in the paper), below
            the size of each set.
    """
    real = _features("real_features", real_features)
    generated = _features("generated_features", generated_features)
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"`real_features` and `generated_features` must have the same feature size. Received: "
                         f"{real.shape[1]} and {generated.shape[1]}")
    k = check_int("k", k, 1, min(len(real), len(generated)) - 1)
    return {"precision": _inside(generated, real, _radii(real, k)),
            "recall": _inside(real, generated, _radii(generated, k))}


def _features(name, features):
    array = np.asarray(features)
    if array.ndim != 2 or len(array) < 2 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"`{name}` must be a 2-D numeric array of at least 2 rows (one per image). "
                         f"Received: shape {array.shape}, dtype {array.dtype} ({shown(features)})")
    return check_finite_array(name, array.astype(np.float64), "finite (no NaN or infinite value)")


def _squared_distances(a, b):
    """(len(a), len(b)) squared Euclidean distances, clipped at 0 against rounding."""
    return np.maximum((a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :], 0.0)


def _radii(points, k):
    """Each point's squared distance to its k-th nearest other point of the set."""
    radii = np.empty(len(points))
    for start in range(0, len(points), _CHUNK):
        block = _squared_distances(points[start:start + _CHUNK], points)
        # the point itself is at distance 0: its k-th neighbour is the (k+1)-th smallest
        radii[start:start + _CHUNK] = np.partition(block, k, axis=1)[:, k]
    return radii


def _inside(queries, points, radii):
    """The share of `queries` within the radius of at least one of `points`."""
    hits = 0
    for start in range(0, len(queries), _CHUNK):
        block = _squared_distances(queries[start:start + _CHUNK], points)
        hits += int(np.count_nonzero((block <= radii[None, :]).any(axis=1)))
    return hits / len(queries)
