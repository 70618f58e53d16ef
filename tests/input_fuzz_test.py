"""Fuzzing the public functions of the data pipelines and of evaluation (issue 21, classes 4-6).

Every argument of every function gets each value of one generated pool of bad values
(wrong types, NaN and infinities, huge, negative, empty, unicode and control characters,
ragged, wrong shapes and dtypes) in an otherwise valid call. A value the argument takes is
left out (`accepts`); every other one must be refused, quickly, by a ValueError (or a
FileNotFoundError for a path) that names the argument and says what it received: never a
hang, another exception type (a raw traceback from deep inside), or a NaN result.
"""

import math
import time

import keras
import numpy as np
import pytest

from keras_cdm import evaluation as ev
from keras_cdm import images as image_conventions
from keras_cdm.testing import within

CALL_LIMIT_S = 30  # per call, generous on 2 busy cores; every refusal takes milliseconds


def _pool():
    """(label, value) pairs: the generated bad values."""
    shape = (2, 4, 4, 3)
    scalars = [None, True, False, 0, 1, -1, 3, 2**31, 2**63, -(2**63), 10**100, 1.5, -0.5, 0.0, math.nan,
               math.inf, -math.inf, 1e308, np.int64(-7), np.float32("nan"), np.float64(2.0), 1j]
    texts = ["", " ", "x", "é", "日本語", "😀", "\x00", "a\x00b", "\n", "\t\r", "\x1b[31mred", "\u202eevil",
             "../../etc/passwd", "a" * 5000, b"bytes", b"\xff\xfe"]
    containers = [[], [1, [2]], [[1, 2], [3]], (), (1, 2, 3), {}, {"images": 1}, set(), object(), Ellipsis,
                  range(3), len, type]
    arrays = [np.array([]), np.array([1, 2]), np.array([[np.nan]]), np.array([["a"]]), np.zeros((0, 4, 4, 3)),
              np.zeros((2, 0, 4, 3)), np.full(shape, np.nan, np.float32), np.full(shape, np.inf),
              np.full(shape, -np.inf), np.full(shape, -3.0), np.full(shape, 1e30), np.zeros(shape, complex),
              np.zeros(shape, bool), np.zeros(shape, object), -np.ones(shape, np.int64),
              np.full(shape, 256, np.int32), np.zeros((2, 4, 4)), np.zeros((2, 4, 4, 3, 1))]
    values = scalars + texts + containers + arrays
    return [(f"{type(v).__name__}:{_label(v)}", v) for v in values]


def _label(value):
    if isinstance(value, np.ndarray):
        return f"{value.dtype}{value.shape}"
    text = repr(value)
    return text if len(text) < 30 else text[:27] + "..."


POOL = _pool()


# -- what each argument takes --------------------------------------------------------------


def is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def positive_int(high=math.inf):
    return lambda v: is_int(v) and 1 <= v <= high


def flag(v):
    return isinstance(v, (bool, np.bool_))


def seed(v):
    return v is None or (is_int(v) and 0 <= v < 2**32)


def never(v):
    return False


def is_none(v):
    return v is None


def text(v):
    return isinstance(v, str) and not any(ord(c) < 32 or ord(c) == 127 for c in v)


def image_array(*ranks):
    """A non-empty array of the given ranks holding integers in [0, 255] or floats in [-1, 1]."""
    def accepts(v):
        if not isinstance(v, np.ndarray) or v.ndim not in ranks or not v.size:
            return False
        if v.dtype.kind in "iu":
            return 0 <= v.min() and v.max() <= 255
        return v.dtype.kind == "f" and bool(np.isfinite(v).all()) and -1 <= v.min() and v.max() <= 1

    return accepts


def image_values(v):
    """Numbers of any shape that `from_uint8` takes: integers in [0, 255], finite floats in [-1, 1]."""
    if isinstance(v, (str, bytes, dict, set)) or callable(v):
        return False
    try:
        array = np.asarray(v)
    except ValueError:
        return False
    if array.dtype.kind in "iu":
        return not array.size or (0 <= array.min() and array.max() <= 255)
    return array.dtype.kind == "f" and (not array.size or (bool(np.isfinite(array).all())
                                                           and -1 <= array.min() and array.max() <= 1))


def one_of(*options):
    return lambda v: any(type(v) is type(o) and v == o for o in options)


class Case:
    """`call(value)` puts `value` into `argument` of an otherwise valid call."""

    def __init__(self, name, argument, call, accepts, names=None):
        self.name, self.argument, self.call, self.accepts = name, argument, call, accepts
        self.names = names or (argument,)


def cases_for(name, valid, call, accepts, names=None):
    """One Case per argument of `valid` (the kwargs of a valid call)."""
    return [Case(name, arg, lambda v, arg=arg: call(**{**valid, arg: v}), accepts[arg], (names or {}).get(arg))
            for arg in valid]


def run_cases(cases):
    """Feeds the pool to every case; returns (tried, refused, failures)."""
    tried = refused = 0
    failures = []
    for case in cases:
        for label, value in POOL:
            try:
                accepted = case.accepts(value)
            except (TypeError, ValueError):  # an array compared with ==
                accepted = False
            if accepted:
                continue
            tried += 1
            problem = _refusal_problem(case, value)
            if problem is None:
                refused += 1
            else:
                failures.append(f"{case.name}({case.argument}={label}): {problem}")
    return tried, refused, failures


def _refusal_problem(case, value):
    start = time.perf_counter()
    try:
        result, _ = within(CALL_LIMIT_S, lambda: case.call(value))
    except (ValueError, FileNotFoundError) as error:
        message = str(error)
        if "Received" not in message:
            return f"{type(error).__name__} without 'Received': {message[:300]!r}"
        if not any(f"`{name}`" in message for name in case.names):
            return f"{type(error).__name__} not naming {case.names}: {message[:300]!r}"
        return None
    except AssertionError as error:
        return str(error)  # a hang
    except Exception as error:  # noqa: BLE001 - this is what the test is looking for
        return f"raw {type(error).__name__}: {str(error)[:300]!r}"
    seconds = time.perf_counter() - start
    return f"accepted in {seconds:.2f} s, returning {_label(result)}"


def assert_all_refused(cases, minimum):
    tried, refused, failures = run_cases(cases)
    print(f"\nfuzz: {tried} bad values tried, {refused} refused cleanly, {len(failures)} not")
    assert not failures, "\n".join(failures[:60]) + f"\n({len(failures)} in all)"
    assert tried >= minimum


# -- data pipelines ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("fuzz_images")
    for klass in ("a", "b"):
        (root / klass).mkdir()
        for index in range(2):
            Image.new("RGB", (6, 6), (index * 200, 0, 0)).save(root / klass / f"{index}.png")
    return root


def options_accepts(**extra):
    return {"batch_size": positive_int(2**31 - 1), "shuffle": flag, "seed": seed, "random_flip": flag,
            "cache": flag, "drop_remainder": flag, "interpolation": never, **extra}


OPTIONS = {"batch_size": 2, "shuffle": True, "seed": 0, "random_flip": False, "cache": False,
           "drop_remainder": False, "interpolation": "bilinear"}


def image_size_ok(v):
    return is_int(v) and 1 <= v <= 4096


@pytest.mark.tensorflow_only
def test_data_pipelines_refuse_bad_values(folder):
    import tensorflow as tf

    from keras_cdm import data

    images = np.zeros((4, 4, 4, 3), np.uint8)
    cases = cases_for("from_arrays", {"images": images, "labels": [0, 1, 0, 1], "image_size": 4, **OPTIONS},
                      data.from_arrays, options_accepts(images=never, labels=is_none,
                                                        image_size=lambda v: v is None or image_size_ok(v)),
                      names={"images": ("images", "labels")})  # 2 valid images, 4 labels
    cases += cases_for(
        "from_image_folder",
        {"folder": folder, "image_size": 4, "channels": 3, "labels": "inferred", "on_error": "skip", **OPTIONS,
         "max_file_bytes": 2**20, "max_pixels": 2**20},
        data.from_image_folder,
        options_accepts(folder=never, image_size=image_size_ok, channels=one_of(3, 1), labels=is_none,
                        on_error=never, max_file_bytes=positive_int(), max_pixels=positive_int()))
    cases += cases_for(
        "from_tfds", {"name": "cifar10", "split": "train", "image_size": None, "data_dir": str(folder), **OPTIONS},
        data.from_tfds,
        options_accepts(name=never, split=text, image_size=lambda v: v is None or image_size_ok(v),
                        data_dir=lambda v: v is None or text(v)))  # accepted values: "not prepared"
    cases += cases_for("resize_images", {"images": images, "image_size": 2, "interpolation": "bicubic"},
                       data.resize_images,
                       {"images": image_array(3, 4), "image_size": image_size_ok, "interpolation": never})
    dataset = data.from_arrays(images, batch_size=2)
    cases += cases_for("low_res_pairs", {"dataset": dataset, "low_res_size": 2, "interpolation": "bicubic"},
                       data.low_res_pairs, {"dataset": never, "low_res_size": image_size_ok, "interpolation": never})
    cases += cases_for("mnist_subset", {"split": "train", "heldout_per_class": 50}, data.mnist_subset,
                       {"split": never, "heldout_per_class": positive_int(499)})
    assert isinstance(dataset, tf.data.Dataset)
    assert_all_refused(cases, minimum=1000)


@pytest.mark.tensorflow_only
def test_valid_values_of_the_pool_still_work(folder):
    """The values `accepts` lets through give datasets of finite images (no NaN result)."""
    from keras_cdm import data

    for value in (1, 3):
        (batch,) = list(data.resize_images(np.zeros((1, 4, 4, 3), np.uint8), value)[None])
        assert np.isfinite(batch.numpy()).all() and batch.shape == (1, value, value, 3)
    for value in (None, 0, 1, 3, 2**31):
        dataset = data.from_image_folder(folder, 2, seed=value, batch_size=4)
        (batch,) = list(dataset)
        assert np.isfinite(batch["images"].numpy()).all() and batch["images"].shape == (4, 2, 2, 3)


# -- evaluation -------------------------------------------------------------------------------


def linear_extractor(batch):
    flat = np.asarray(batch, np.float64).reshape(len(batch), -1)
    return {"features": flat, "logits": flat[:, :3]}


def tiny_classifier():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Dense(2, name="hidden")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


@pytest.mark.backend_neutral
def test_evaluation_refuses_bad_values(tmp_path):
    stats = ev.FeatureStatistics().update(np.random.default_rng(0).normal(size=(5, 2)))
    saved = str(stats.save(tmp_path / "stats.npz"))
    model = tiny_classifier()
    extractor = ev.ClassifierFeatures(model)
    images = np.zeros((4, 4, 4, 3), np.uint8)
    labels = np.array([0, 1, 0, 1])
    cases = [
        Case("FeatureStatistics.update", "features", lambda v: ev.FeatureStatistics().update(v), never),
        Case("FeatureStatistics.merge", "other", lambda v: ev.FeatureStatistics().merge(v), never),
        Case("FeatureStatistics.save", "path", lambda v: stats.save(v), never),
        Case("FeatureStatistics.load", "path", ev.FeatureStatistics.load, never),
        Case("InceptionScore.update", "values", lambda v: ev.InceptionScore(10).update(v), never),
        Case("InceptionScore.update(probabilities)", "values",
             lambda v: ev.InceptionScore(10, from_logits=False).update(v), never),
    ]
    gaussian = {"mu1": np.zeros(2), "sigma1": np.eye(2), "mu2": np.ones(2), "sigma2": np.eye(2)}
    means = lambda v: isinstance(v, np.ndarray) and v.dtype.kind in "iuf" and v.shape == (2,)  # noqa: E731
    cases += cases_for("frechet_distance", gaussian, ev.frechet_distance,
                       {"mu1": means, "sigma1": never, "mu2": means, "sigma2": never})
    cases += cases_for("fid", {"real_stats": stats, "generated_stats": saved}, ev.fid,
                       dict.fromkeys(["real_stats", "generated_stats"], never))
    cases += cases_for("InceptionScore", {"num_samples": 10, "splits": 2, "from_logits": True}, ev.InceptionScore,
                       {"num_samples": positive_int(), "splits": lambda v: is_int(v) and 1 <= v <= 10,
                        "from_logits": flag})
    statistics_args = {"images": images, "extractor": extractor, "batch_size": 2, "num_samples": 4,
                       "inception_score": True, "splits": 2}
    statistics_accepts = {"images": never, "extractor": never, "batch_size": positive_int(),
                          "num_samples": lambda v: v is None or positive_int()(v), "inception_score": flag,
                          "splits": lambda v: is_int(v) and 1 <= v <= 4}
    cases += cases_for("compute_statistics", statistics_args, ev.compute_statistics, statistics_accepts,
                       names={"splits": ("splits", "num_samples")})
    score_args = {k: v for k, v in statistics_args.items() if k != "inception_score"}
    score_accepts = {k: v for k, v in statistics_accepts.items() if k != "inception_score"}
    cases += cases_for("inception_score", score_args, ev.inception_score, score_accepts,
                       names={"splits": ("splits", "num_samples")})
    cas = {"train_images": images, "train_labels": labels, "test_images": images, "test_labels": labels,
           "num_classes": 2, "classifier": None, "epochs": 1, "batch_size": 2, "learning_rate": 1e-3, "seed": 0,
           "verbose": 0}
    cas_accepts = {**dict.fromkeys(["train_images", "train_labels", "test_images", "test_labels"], never),
                   "num_classes": lambda v: is_int(v) and 2 <= v <= 100_000, "classifier": is_none,
                   "epochs": positive_int(), "batch_size": positive_int(2**31 - 1),
                   "learning_rate": lambda v: isinstance(v, (float, int, np.floating, np.integer))
                   and not isinstance(v, (bool, np.bool_)) and math.isfinite(v) and v > 0,
                   "seed": seed, "verbose": lambda v: is_int(v) and v in (0, 1, 2)}
    cases += cases_for("classification_accuracy_score", cas, ev.classification_accuracy_score, cas_accepts,
                       names={"num_classes": ("num_classes", "train_labels")})
    cases += cases_for("default_cas_classifier", {"input_shape": (4, 4, 3), "num_classes": 2, "width": 4},
                       ev.default_cas_classifier,
                       {"input_shape": never, "num_classes": positive_int(100_000), "width": positive_int(1024)})
    cases += cases_for("ClassifierFeatures", {"model": model, "feature_layer": None, "from_logits": True},
                       ev.ClassifierFeatures, {"model": never, "feature_layer": is_none, "from_logits": flag})
    cases += cases_for("InceptionV3Features", {"weights": str(tmp_path / "missing.h5"), "allow_download": False},
                       ev.InceptionV3Features, {"weights": is_none, "allow_download": flag})
    # The pixel-level judges (their image and label inputs: the shared checkers).
    cases += [Case("pixel_statistics", "images", ev.pixel_statistics, never),
              Case("histogram_distance", "images", lambda v: ev.histogram_distance(v, images), never),
              Case("histogram_distance", "reference", lambda v: ev.histogram_distance(images, v), never,
                   names=("reference", "images")),  # pixel_statistics names its argument `images`
              Case("recognition_accuracy", "images", lambda v: ev.recognition_accuracy(model, v, labels, 2), never),
              Case("recognition_accuracy", "labels", lambda v: ev.recognition_accuracy(model, images, v, 2), never),
              Case("from_uint8", "images", image_conventions.from_uint8, image_values)]  # any shape
    assert_all_refused(cases, minimum=2000)


@pytest.mark.backend_neutral
def test_inception_score_is_never_nan():
    """The cases of the issue: NaN logits and unnormalised probabilities are refused; -inf logits
    (probability 0) are logits."""
    with pytest.raises(ValueError, match=r"`values` must be logits.*Received: 1 NaN or infinite values"):
        ev.InceptionScore(2, splits=1).update(np.array([[0.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"`values` must be probabilities.*row sums in \[0.5, 2\]"):
        ev.InceptionScore(2, splits=1, from_logits=False).update(np.array([[0.25, 0.25], [1.0, 1.0]]))
    score = ev.InceptionScore(2, splits=1).update(np.array([[0.0, -np.inf], [-np.inf, 0.0]])).result()
    assert score == pytest.approx((2.0, 0.0))
    float32_softmax = keras.ops.convert_to_numpy(keras.ops.softmax(np.random.default_rng(0).normal(size=(4, 1000))))
    assert np.isfinite(ev.InceptionScore(4, splits=1, from_logits=False).update(float32_softmax).result()).all()


@pytest.mark.backend_neutral
def test_cas_refuses_zero_epochs_before_training():
    images = np.zeros((4, 4, 4, 3), np.uint8)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"`epochs` must be a positive integer. Received: epochs=0"):
        ev.classification_accuracy_score(images, [0, 1, 0, 1], images, [0, 1, 0, 1], 2, epochs=0)
    assert time.perf_counter() - start < 5
