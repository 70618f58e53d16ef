"""Sample-quality metrics of section 4: FID, Inception Score, Classification Accuracy Score.

Feature extractors map image batches (NHWC, uint8 or floats in [-1, 1]) to features and
logits; `FeatureStatistics` and `InceptionScore` accumulate them batch by batch in
float64, so 50,000 samples never sit in memory.
"""

import os
from pathlib import Path

import keras
import numpy as np
from keras import ops

from keras_cdm._validation import (
    LIMITS,
    as_array,
    check_bool,
    check_choice,
    check_finite_array,
    check_generator_seed,
    check_int,
    check_positive_int,
    check_positive_number,
    check_size,
    shown,
)
from keras_cdm.images import from_uint8

INCEPTION_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"
INCEPTION_WEIGHTS_URL = (
    f"https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/{INCEPTION_WEIGHTS_FILE}"
)
_INCEPTION_WEIGHTS_MD5 = "9a0d58056eeedaa3f26cb7ebd46da564"


class FeatureStatistics:
    """Running count, mean and unbiased covariance (as `np.cov(x, rowvar=False)`) of
    D-dimensional features, in float64. Batches are centred on their own mean and
    combined by Chan et al.'s pairwise update: accurate despite large common offsets."""

    def __init__(self):
        self.count, self._mean, self._m2 = 0, None, None

    def update(self, features):
        """Adds a (B, D) batch of features; returns self."""
        allowed = "a (batch, dim) array of finite numbers"
        features = as_array("features", _to_numpy(features), allowed, ndim=2).astype(np.float64)
        check_finite_array("features", features, allowed)
        if self.count and features.shape[1] != len(self._mean):
            raise ValueError(f"`features` must have the dimension of the earlier batches ({len(self._mean)}). "
                             f"Received: features.shape={features.shape}")
        if len(features):
            mean = features.mean(axis=0)
            centred = features - mean
            self._combine(len(features), mean, centred.T @ centred)
        return self

    def merge(self, other):
        """Adds the samples summarised by another `FeatureStatistics`; returns self."""
        if not isinstance(other, FeatureStatistics):
            raise ValueError(f"`other` must be a FeatureStatistics. Received: other={shown(other)}")
        if other.count:
            self._combine(other.count, other._mean, other._m2)
        return self

    def _combine(self, count, mean, m2):
        if self.count == 0:
            self.count, self._mean, self._m2 = count, mean.copy(), m2.copy()
            return
        if mean.shape != self._mean.shape:
            raise ValueError(f"`other` must have this one's feature dimension, {len(self._mean)}. "
                             f"Received: other of dimension {len(mean)}")
        total = self.count + count
        delta = mean - self._mean
        self._mean = self._mean + delta * (count / total)
        self._m2 = self._m2 + m2 + np.outer(delta, delta) * (self.count * count / total)
        self.count = total

    @property
    def mean(self):
        if self.count == 0:
            raise ValueError("No features yet: call `update()` first. Received: count=0")
        return self._mean.copy()

    @property
    def covariance(self):
        if self.count < 2:
            raise ValueError(f"The covariance needs at least 2 samples. Received: count={self.count}")
        return self._m2 / (self.count - 1)

    def save(self, path):
        """Writes `count`, `mu`, `m2` (and `sigma`, as other FID tools name it) to .npz."""
        path = Path(_check_path(path))
        if path.suffix != ".npz":
            raise ValueError(f"Statistics are saved as .npz: `path` must end in .npz. Received: path={str(path)!r}")
        arrays = {"count": np.int64(self.count), "mu": self.mean, "m2": self._m2}
        if self.count > 1:
            arrays["sigma"] = self.covariance
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path):
        """The statistics written by `save` (a .npz file; never unpickles)."""
        return cls._load(path, "path")

    @classmethod
    def _load(cls, path, name):
        path = _check_path(path, name)
        allowed = "a .npz file written by FeatureStatistics.save"
        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("not a .npz archive")
            with data:
                if {"count", "mu", "m2"} - set(data.files):
                    raise ValueError(f"arrays {data.files}, not count, mu and m2")
                count, mean, m2 = data["count"], data["mu"], data["m2"]
        except FileNotFoundError:
            raise FileNotFoundError(f"`{name}` must be {allowed}: there is no such file. "
                                    f"Received: {name}={shown(path)}") from None
        except (OSError, ValueError, EOFError) as error:  # not a .npz, pickled arrays, missing arrays
            raise ValueError(f"`{name}` must be {allowed} ({error}). Received: {name}={shown(path)}") from None
        ok = count.shape == () and count.dtype.kind in "iu" and count >= 1 and mean.ndim == 1
        ok = ok and mean.dtype.kind == "f" and m2.shape == mean.shape * 2 and m2.dtype.kind == "f"
        if not ok or not (np.isfinite(mean).all() and np.isfinite(m2).all()):
            raise ValueError(f"`{name}` must be {allowed}: a count >= 1, a (D,) mean and a (D, D) m2, finite. "
                             f"Received: {name}={shown(path)}")
        stats = cls()
        stats.count, stats._mean, stats._m2 = int(count), mean.astype(np.float64), m2.astype(np.float64)
        return stats


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), a float >= 0.

    ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2), where the last
    trace is the sum of singular values of L1^T L2 for any factors S = L L^T (Cholesky,
    or for singular S the eigh factor V sqrt(max(w, 0))). Always real, accurate on
    rank-deficient covariances, and symmetric in its two arguments.
    """
    mu1, sigma1 = _check_gaussian(mu1, sigma1, "1")
    mu2, sigma2 = _check_gaussian(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"Both Gaussians must have the same dimension. Received: {mu1.shape} and {mu2.shape}")
    factor1, factor2 = _sqrt_factor(sigma1), _sqrt_factor(sigma2)
    cross = np.linalg.svd(factor1.T @ factor2, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.square(factor1).sum() + np.square(factor2).sum() - 2.0 * cross, 0.0))


def _check_gaussian(mu, sigma, suffix):
    mu = as_array(f"mu{suffix}", mu, "a (D,) mean", ndim=1).astype(np.float64)
    sigma = as_array(f"sigma{suffix}", sigma, "a (D, D) covariance", ndim=2).astype(np.float64)
    if sigma.shape != (mu.shape[0],) * 2:
        raise ValueError(f"`sigma{suffix}` must be a (D, D) covariance for `mu{suffix}` of shape (D,). "
                         f"Received: mu{suffix}.shape={mu.shape}, sigma{suffix}.shape={sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"`mu{suffix}` and `sigma{suffix}` must be finite. Received: non-finite values")
    return mu, sigma


def _sqrt_factor(sigma):
    """L with L L^T = sigma (its PSD part when sigma is singular or slightly indefinite)."""
    sigma = (sigma + sigma.T) / 2.0
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        eigenvalues, vectors = np.linalg.eigh(sigma)
        return vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


def fid(real_stats, generated_stats):
    """FID between two `FeatureStatistics` (or paths to their saved .npz files)."""
    real, generated = (s if isinstance(s, FeatureStatistics) else FeatureStatistics._load(s, name)
                       for s, name in ((real_stats, "real_stats"), (generated_stats, "generated_stats")))
    return frechet_distance(real.mean, real.covariance, generated.mean, generated.covariance)


class InceptionScore:
    """Streaming Inception Score exp(E_x KL(p(y|x) || p(y))): (mean, std) over splits.

    As in Salimans et al.'s code, the i-th of `num_samples` samples falls in the
    contiguous split k with k N // splits <= i < (k + 1) N // splits, and the std is the
    population one. Per split it keeps the count, sum_x sum_y p log p and sum_x p, since
    E_x KL = E_x sum_y p log p - sum_y pbar log pbar, pbar = E_x p(y|x). `update` takes
    logits (softmax in float64), or probabilities with `from_logits=False`.
    """

    def __init__(self, num_samples, splits=10, from_logits=True):
        self.num_samples = check_positive_int("num_samples", num_samples)
        self.splits = check_positive_int("splits", splits)
        if splits > num_samples:
            raise ValueError(f"`splits` must be <= `num_samples`. Received: splits={splits}, num_samples={num_samples}")
        self.from_logits, self.count, self._psum = check_bool("from_logits", from_logits), 0, None
        self._starts = np.arange(splits) * num_samples // splits
        self._counts, self._plogp = np.zeros(splits, np.int64), np.zeros(splits)

    def update(self, values):
        """Adds a (B, K) batch of logits (or probabilities); returns self."""
        kind = "logits" if self.from_logits else "probabilities"
        values = as_array("values", _to_numpy(values), f"a (batch, classes) array of {kind}", ndim=2)
        values = values.astype(np.float64)
        classes = values.shape[1] if self._psum is None else self._psum.shape[1]
        if values.shape[1] != classes or not classes:
            raise ValueError(f"`values` must be a (batch, classes) array of {kind} with one class or more, as many "
                             f"as in earlier batches. Received: values.shape={values.shape}")
        if self.count + len(values) > self.num_samples:
            raise ValueError(f"`values` holds more samples than announced (`num_samples`). "
                             f"Received: {self.count + len(values)} > {self.num_samples}")
        probs, logp = _log_softmax(values) if self.from_logits else _probabilities(values)
        if self._psum is None:
            self._psum = np.zeros((self.splits, values.shape[1]))
        split = np.searchsorted(self._starts, self.count + np.arange(len(values)), side="right") - 1
        for k in np.unique(split):
            rows = split == k
            self._counts[k] += rows.sum()
            self._plogp[k] += (probs[rows] * logp[rows]).sum()
            self._psum[k] += probs[rows].sum(axis=0)
        self.count += len(values)
        return self

    @property
    def split_scores(self):
        if self.count != self.num_samples:
            raise ValueError(f"Fewer samples than announced. Received: {self.count} < {self.num_samples}")
        pbar = self._psum / self._counts[:, None]
        pbar_log_pbar = (pbar * np.log(np.where(pbar > 0, pbar, 1.0))).sum(axis=1)
        mean_kl = self._plogp / self._counts - pbar_log_pbar
        return np.exp(np.maximum(mean_kl, 0.0))  # the mean KL is >= 0 but for rounding

    def result(self):
        """(mean, std) of the per-split scores."""
        scores = self.split_scores
        return float(scores.mean()), float(scores.std())


def _log_softmax(logits):
    # -inf is a logit (probability 0); NaN, +inf, or a row of -inf only, are not.
    if np.isnan(logits).any() or np.isposinf(logits).any() or (len(logits) and np.isneginf(logits).all(axis=1).any()):
        raise ValueError(f"`values` must be logits: numbers, -inf allowed, not NaN or +inf, each row with a "
                         f"finite one. Received: {np.count_nonzero(~np.isfinite(logits))} NaN or infinite values")
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(logp)
    return probs, np.where(probs > 0, logp, 0.0)


_PROBABILITY_TOLERANCE = 1e-3


def _probabilities(probs):
    """Rows of probabilities in [0, 1] summing to 1 (within 1e-3: float32 softmax outputs)."""
    allowed = ("probabilities (from_logits=False): each row in [0, 1], summing to 1 within "
               f"{_PROBABILITY_TOLERANCE} (pass logits with from_logits=True)")
    check_finite_array("values", probs, allowed)
    sums = probs.sum(axis=1)
    if probs.size and (probs.min() < 0 or probs.max() > 1 or np.abs(sums - 1).max() > _PROBABILITY_TOLERANCE):
        raise ValueError(f"`values` must be {allowed}. Received: values in [{probs.min():.6g}, {probs.max():.6g}], "
                         f"row sums in [{sums.min():.6g}, {sums.max():.6g}]")
    return probs, np.log(np.where(probs > 0, probs, 1.0))


def _to_numpy(value):
    """A tensor of any backend as numpy; anything else as it is (checked by `as_array`)."""
    return ops.convert_to_numpy(value) if ops.is_tensor(value) else value


def _check_path(path, name="path"):
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path) or "\x00" in os.fspath(path):
        raise ValueError(f"`{name}` must be a file path. Received: {name}={shown(path)}")
    return path


def _unit_range(images, channels=None, name="images"):
    """NHWC images as float32 in [-1, 1]: uint8 is rescaled, floats are clipped."""
    need = f" with {' or '.join(map(str, channels))} channels" if channels else ""
    allowed = f"an (N, H, W, C) array{need}, not empty"
    images = as_array(name, _to_numpy(images), allowed)
    if images.ndim != 4 or not images.size or (channels and images.shape[-1] not in channels):
        raise ValueError(f"`{name}` must be {allowed}. Received: {name}.shape={images.shape}")
    return from_uint8(images, tolerance=0.5, clip=True, name=name)


def _as_numpy_outputs(outputs):
    return {key: np.asarray(ops.convert_to_numpy(value)) for key, value in outputs.items()}


class InceptionV3Features:
    """Keras' InceptionV3 as extractor: 2048-d pool features and 1000 logits (FID, IS).

    `extractor(images)` takes NHWC uint8 or [-1, 1] images of any size (greyscale is
    repeated to RGB), resizes them bilinearly to 299x299 (no antialiasing, like TF-GAN)
    and returns `{"features": (B, 2048), "logits": (B, 1000)}`; the logits are the top
    layer's exact pre-softmax outputs (built with `classifier_activation=None`). These
    are Keras' ImageNet weights, not the 2015 TF-GAN graph of the paper's FID: numbers
    are close to, not identical with, published FIDs; compare models with one extractor.

    Args:
        weights: "imagenet" (Keras' cache file `$KERAS_HOME/models/INCEPTION_WEIGHTS_FILE`,
            KERAS_HOME defaulting to ~/.keras), a local .h5 path, or None (random).
        allow_download: fetch a missing "imagenet" file from `INCEPTION_WEIGHTS_URL`
            (92 MB). Off by default: a missing file raises FileNotFoundError at once.
    """

    def __init__(self, weights="imagenet", allow_download=False):
        path = _inception_weights_path(weights, check_bool("allow_download", allow_download))
        base = keras.applications.InceptionV3(weights=None, classifier_activation=None)
        if path is not None:
            try:
                base.load_weights(path)
            except (ValueError, OSError, KeyError) as error:  # not an h5 file, or not these weights
                raise ValueError(f"`weights` must be a file of InceptionV3 weights ({error}). "
                                 f"Received: weights={shown(str(weights))}") from None
        heads = keras.Model(base.input, {"features": base.get_layer("avg_pool").output, "logits": base.output})
        images = keras.Input((None, None, 3))
        resized = keras.layers.Resizing(299, 299, interpolation="bilinear")(images)
        self.model = keras.Model(images, heads(resized), name="inception_v3_features")

    def __call__(self, images):
        images = _unit_range(images, channels=(1, 3))
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        return _as_numpy_outputs(self.model.predict_on_batch(images))


def _keras_home():
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return home if os.access(home, os.W_OK) or not os.path.exists(home) else os.path.join("/tmp", ".keras")


def _inception_weights_path(weights, allow_download):
    if weights is None:
        return None
    if isinstance(weights, str) and weights == "imagenet":
        home = _keras_home()
        path = Path(home) / "models" / INCEPTION_WEIGHTS_FILE
        if path.is_file():
            return str(path)
        if allow_download:
            return keras.utils.get_file(INCEPTION_WEIGHTS_FILE, INCEPTION_WEIGHTS_URL, cache_dir=home,
                                        cache_subdir="models", file_hash=_INCEPTION_WEIGHTS_MD5)
        raise FileNotFoundError(
            f"The InceptionV3 ImageNet weights are not in the Keras cache: {path} does not exist. "
            f"Download {INCEPTION_WEIGHTS_URL} to that path (or set KERAS_HOME), pass weights='path/to/"
            f"{INCEPTION_WEIGHTS_FILE}', or pass allow_download=True."
        )
    if isinstance(weights, (str, os.PathLike)) and not str(weights).endswith(".h5"):
        raise ValueError(f"`weights` must be 'imagenet', a path to an .h5 file or None. "
                         f"Received: weights={shown(weights)}")
    if isinstance(weights, (str, os.PathLike)):
        try:
            found = Path(_check_path(weights, "weights")).is_file()
        except OSError:  # e.g. a name too long
            found = False
        if found:
            return str(weights)
        raise FileNotFoundError(f"`weights` must be an InceptionV3 weights file (see {INCEPTION_WEIGHTS_URL}): "
                                f"there is none there. Received: weights={shown(str(weights))}")
    raise ValueError(f"`weights` must be 'imagenet', a path to an .h5 file or None. Received: weights={shown(weights)}")


class ClassifierFeatures:
    """A functional or Sequential Keras classifier as extractor (domain-specific FID/IS).

    `extractor(images)` (NHWC uint8 or [-1, 1] floats at the model's resolution; uint8
    is mapped to [-1, 1]) returns `{"features": (B, D), "logits": (B, K)}`: the
    flattened output of `feature_layer` (default: the input of the last layer) and the
    model output; with `from_logits=False` the model outputs probabilities, returned as
    their logarithms.
    """

    def __init__(self, model, feature_layer=None, from_logits=True):
        try:
            inputs, outputs = model.inputs, model.outputs
        except (AttributeError, ValueError):
            inputs = outputs = None
        if not isinstance(model, keras.Model) or not inputs or len(outputs) != 1:
            raise ValueError("`model` must be a built functional or Sequential Keras model with one output. "
                             f"Received: model={shown(model)}")
        names = [layer.name for layer in model.layers]
        if feature_layer is not None and (not isinstance(feature_layer, str) or feature_layer not in names):
            raise ValueError(f"`feature_layer` must be None or the name of a layer of `model` ({shown(names)}). "
                             f"Received: feature_layer={shown(feature_layer)}")
        features = model.layers[-1].input if feature_layer is None else model.get_layer(feature_layer).output
        self.from_logits = check_bool("from_logits", from_logits)
        inputs = inputs[0] if len(inputs) == 1 else inputs
        self.model = keras.Model(inputs, {"features": features, "logits": outputs[0]})

    def __call__(self, images):
        images = _unit_range(images)
        expected = tuple(self.model.inputs[0].shape[1:])
        if len(self.model.inputs) == 1 and not all(e is None or e == g for e, g in zip(expected, images.shape[1:])):
            shape = ", ".join("H W C".split()[i] if e is None else str(e) for i, e in enumerate(expected))
            raise ValueError(f"`images` must have shape (N, {shape}) for this model. Received: "
                             f"images.shape={images.shape}")
        out = _as_numpy_outputs(self.model.predict_on_batch(images))
        out["features"] = out["features"].reshape(len(out["features"]), -1)
        if not self.from_logits:
            out["logits"] = np.log(np.maximum(out["logits"].astype(np.float64), 1e-300))
        return out


def compute_statistics(images, extractor, batch_size=100, num_samples=None, inception_score=False, splits=10):
    """Runs `extractor` over `images`; returns their `FeatureStatistics`, or
    `(FeatureStatistics, InceptionScore)` with `inception_score=True`.

    Args:
        images: an (N, H, W, C) array, or an iterable of batches (generator, dataset; an
            `(images, labels)` item counts as its images): samples can be generated,
            measured and dropped batch by batch.
        extractor: a callable mapping a batch to `{"features": (B, D), "logits": (B, K)}`
            (`InceptionV3Features`, `ClassifierFeatures`, ...); logits only for the IS.
        batch_size: for arrays (iterables keep their batches).
        num_samples: stop after this many (or at the end of the data); required for the
            IS of an iterable.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    inception_score = check_bool("inception_score", inception_score)
    splits = check_positive_int("splits", splits)
    if not callable(extractor):
        raise ValueError("`extractor` must be a callable mapping a batch of images to "
                         f"{{'features': ..., 'logits': ...}}. Received: extractor={shown(extractor)}")
    if isinstance(images, (list, tuple)) and images and not hasattr(images[0], "__len__"):
        images = as_array("images", images, "an (N, H, W, C) array or an iterable of batches")
    is_array = hasattr(images, "shape") and len(images.shape) == 4
    wrong_array = hasattr(images, "shape") and not is_array
    if isinstance(images, (str, bytes, dict)) or wrong_array or not (is_array or hasattr(images, "__iter__")):
        raise ValueError("`images` must be an (N, H, W, C) array or an iterable of (B, H, W, C) batches. "
                         f"Received: images={shown(images)}")
    if num_samples is not None:
        num_samples = check_positive_int("num_samples", num_samples)
    if is_array:
        if not images.shape[0]:
            raise ValueError(f"`images` must hold at least one image. Received: images.shape={images.shape}")
        num_samples = images.shape[0] if num_samples is None else min(num_samples, images.shape[0])
    elif inception_score and num_samples is None:
        raise ValueError("The Inception Score of an iterable needs `num_samples`. Received: num_samples=None")
    stats = FeatureStatistics()
    score = InceptionScore(num_samples, splits) if inception_score else None
    for batch in _batches(images, is_array, batch_size, num_samples):
        out = extractor(batch)
        if not isinstance(out, dict) or "features" not in out or (score is not None and "logits" not in out):
            needed = "'features' and 'logits'" if score is not None else "'features'"
            raise ValueError(f"`extractor` must return a dict with {needed}. Received: {shown(out)}")
        stats.update(out["features"])
        if score is not None:
            score.update(out["logits"])
    if not stats.count:
        raise ValueError(f"`images` must hold at least one image. Received: images={shown(images)}")
    return (stats, score) if inception_score else stats


def _batches(images, is_array, batch_size, num_samples):
    if is_array:
        for start in range(0, num_samples, batch_size):
            yield images[start:min(start + batch_size, num_samples)]
        return
    seen = 0
    for batch in images:
        batch = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
        if not (hasattr(batch, "shape") and len(batch.shape) == 4):
            batch = as_array("images", batch, "an iterable of (B, H, W, C) batches", ndim=4)
        if num_samples is not None:
            batch = batch[: num_samples - seen]
        seen += len(batch)
        if len(batch):
            yield batch
        if num_samples is not None and seen >= num_samples:
            return


def inception_score(images, extractor, batch_size=100, num_samples=None, splits=10):
    """(mean, std) Inception Score of `images` over `splits` (see `compute_statistics`)."""
    return compute_statistics(images, extractor, batch_size, num_samples, True, splits)[1].result()


def default_cas_classifier(input_shape, num_classes, width=32):
    """Small CNN for CAS: (conv3x3-ReLU x2, max-pool) stages, widths doubling (at most
    8 x `width`), until the feature map is at most 4 pixels wide; dropout; a linear
    layer to `num_classes` logits."""
    input_shape = _check_input_shape(input_shape)
    num_classes = check_size("num_classes", num_classes)
    width = check_int("width", width, 1, _MAX_CAS_WIDTH)
    inputs = keras.Input(input_shape)
    x, size, channels = inputs, min(input_shape[:2]), width
    while True:
        x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu")(x)
        x, size, channels = keras.layers.MaxPooling2D()(x), size // 2, min(2 * channels, 8 * width)
        if size <= 4:
            break
    x = keras.layers.Dropout(0.3)(keras.layers.Flatten()(x))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name="cas_classifier")


_MAX_CAS_WIDTH = 1024


def _check_input_shape(input_shape):
    """(H, W, C) of a classifier input: H, W in [2, LIMITS["image_size"]], C in [1, LIMITS["image_channels"]]."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    bounds = [(2, LIMITS["image_size"])] * 2 + [(1, LIMITS["image_channels"])]
    if shape is None or len(shape) != 3 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and low <= v <= high
            for v, (low, high) in zip(shape, bounds)):
        raise ValueError(f"`input_shape` must be (height, width, channels) with height and width in [2, "
                         f"{LIMITS['image_size']}] and channels in [1, {LIMITS['image_channels']}]. "
                         f"Received: input_shape={shown(input_shape)}")
    return tuple(int(v) for v in shape)


def classification_accuracy_score(train_images, train_labels, test_images, test_labels, num_classes,
                                  classifier=None, epochs=20, batch_size=64, learning_rate=1e-3, seed=None,
                                  verbose=0):
    """Classification Accuracy Score (Ravuri & Vinyals 2019; section 4.1, Table 1b).

    Protocol: train a classifier only on generated images (NHWC uint8 or [-1, 1]) with
    the labels they were conditioned on, then score it on real held-out data (e.g. the
    ImageNet validation set): high only for realistic, label-consistent samples.

    Args:
        classifier: a Keras model mapping images to `num_classes` scores (the paper:
            ResNet-50); default `default_cas_classifier`. Uncompiled models get
            Adam(`learning_rate`) and sparse cross-entropy on logits; compiled ones
            train as compiled.
        seed: if set, `keras.utils.set_random_seed(seed)` (global) before building.

    Returns:
        dict: `top1`, `top5` (top-min(5, num_classes)), `per_class_top1` (NaN for
        classes absent from the test set; the paper's Figure 5), `history`.
    """
    num_classes = check_size("num_classes", num_classes)
    epochs = check_positive_int("epochs", epochs)
    batch_size = check_int("batch_size", batch_size, 1, 2**31 - 1)
    learning_rate = check_positive_number("learning_rate", learning_rate)
    seed = check_generator_seed(seed)
    verbose = check_choice("verbose", verbose, ("auto", 0, 1, 2))
    if classifier is not None and not isinstance(classifier, keras.Model):
        raise ValueError(f"`classifier` must be None or a Keras model. Received: classifier={shown(classifier)}")
    x_train = _unit_range(train_images, name="train_images")
    y_train = _check_labels("train", train_labels, x_train, num_classes)
    x_test = _unit_range(test_images, name="test_images")
    y_test = _check_labels("test", test_labels, x_test, num_classes)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"`test_images` must have the shape of `train_images` per image, {x_train.shape[1:]}. "
                         f"Received: test_images.shape={x_test.shape}")
    if seed is not None:
        keras.utils.set_random_seed(seed)
    model = classifier if classifier is not None else default_cas_classifier(x_train.shape[1:], num_classes)
    if not getattr(model, "compiled", False):
        model.compile(keras.optimizers.Adam(learning_rate),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=verbose)
    return {**_accuracies(model, x_test, y_test, num_classes, batch_size),
            "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}


def pixel_classifier(input_shape, num_classes, width=256):
    """A classifier of raw pixels: flatten, two ReLU layers of `width`, dropout, a linear
    layer to `num_classes` logits. No convolution or pooling averages small structures
    away, so grain on a black background moves its decisions, where the CNN of
    `default_cas_classifier` is blind to it: a pixel-level judge beside the feature one."""
    inputs = keras.Input(tuple(input_shape))
    x = keras.layers.Flatten()(inputs)
    for _ in range(2):
        x = keras.layers.Dense(check_positive_int("width", width), activation="relu")(x)
    x = keras.layers.Dropout(0.3)(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name="pixel_classifier")


def recognition_accuracy(classifier, images, labels, num_classes, batch_size=256):
    """How often a trained `classifier` (images -> `num_classes` scores) recognises the
    label each image (NHWC uint8 or [-1, 1]) was made for: `top1`, `top5` (top-min(5,
    num_classes)) and `per_class_top1` (NaN for absent classes). With a classifier
    trained on real images, the label accuracy of class-conditional samples."""
    num_classes = check_positive_int("num_classes", num_classes)
    x = _unit_range(images)
    return _accuracies(classifier, x, _check_labels("", labels, x, num_classes), num_classes, batch_size)


def _accuracies(model, images, labels, num_classes, batch_size):
    scores = np.asarray(ops.convert_to_numpy(model.predict(images, batch_size=batch_size, verbose=0)))
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, : min(5, num_classes)]
    correct1, correct5 = ranked[:, 0] == labels, (ranked == labels[:, None]).any(axis=1)
    counts = np.bincount(labels, minlength=num_classes)
    per_class = np.divide(np.bincount(labels, correct1, num_classes), counts, out=np.full(num_classes, np.nan),
                          where=counts > 0)
    return {"top1": float(correct1.mean()), "top5": float(correct5.mean()), "per_class_top1": per_class}


def _check_labels(split, labels, images, num_classes):
    name = f"{split + '_' if split else ''}labels"
    labels = as_array(name, _to_numpy(labels), f"one integer in [0, {num_classes}) per image")
    ok = labels.ndim == 1 and len(labels) == len(images) and np.issubdtype(labels.dtype, np.integer)
    if not ok or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ValueError(f"`{name}` must be one integer in [0, {num_classes}) per image. Received: "
                         f"shape={labels.shape}, dtype={labels.dtype}, for {len(images)} images")
    return labels.astype(np.int32)


# -- pixel-level statistics: what a feature metric can miss (e.g. grain on a black background) -------

NEAR_BLACK = 0.05  # on [0, 1]


def pixel_statistics(images, bins=32):
    """Pixel-value statistics of images (uint8, or floats in [-1, 1]), on [0, 1]:
    `near_black` (the fraction of pixels below 0.05), `mean`, and `histogram` (the
    fraction of pixels in each of `bins` equal bins of [0, 1])."""
    values = (_unit_range(images).astype(np.float64).reshape(-1) + 1.0) / 2.0
    bins = check_positive_int("bins", bins)
    histogram = np.bincount(np.minimum((values * bins).astype(np.int64), bins - 1), minlength=bins) / values.size
    return {"near_black": float((values < NEAR_BLACK).mean()), "mean": float(values.mean()), "histogram": histogram}


def histogram_distance(images, reference, bins=32):
    """Total-variation distance (0: same, 1: disjoint) between the pixel-value histograms
    of `images` and `reference` (`pixel_statistics`, `bins` bins of [0, 1])."""
    p = pixel_statistics(images, bins)["histogram"]
    q = pixel_statistics(reference, bins)["histogram"]
    return float(0.5 * np.abs(p - q).sum())
