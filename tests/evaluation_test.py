import math
import os
import subprocess
import sys
import time
import warnings

import keras
import numpy as np
import pytest

from keras_cdm import evaluation
from keras_cdm.evaluation import (ClassifierFeatures, FeatureStatistics, InceptionScore, InceptionV3Features,
                                  classification_accuracy_score, compute_statistics, default_cas_classifier, fid,
                                  frechet_distance, inception_score, pixel_classifier, recognition_accuracy)
from keras_cdm.testing import mnist_digits, to_numpy

neutral = pytest.mark.backend_neutral


def random_orthogonal(dim, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def analytic_fid(m1, a, m2, b):
    """Fréchet distance of Gaussians whose covariances share eigenvectors, eigenvalues a, b."""
    return float(np.sum((m1 - m2) ** 2) + np.sum(a + b - 2.0 * np.sqrt(a * b)))


# --- streaming feature statistics -------------------------------------------------


@neutral
def test_streaming_statistics_equal_numpy_on_uneven_chunks():
    x = np.random.default_rng(0).normal(size=(503, 12)) * np.arange(1, 13) + 1e3  # large common offset
    stats = FeatureStatistics()
    for chunk in np.split(x, [1, 2, 40, 41, 300]):
        stats.update(chunk.astype(np.float64))
    assert stats.count == 503
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-10)


@neutral
def test_merge_equals_a_single_pass():
    x = np.random.default_rng(1).normal(size=(90, 5)) + 7.0
    whole = FeatureStatistics().update(x)
    left, right = FeatureStatistics().update(x[:31]), FeatureStatistics().update(x[31:50]).update(x[50:])
    merged = left.merge(right).merge(FeatureStatistics())
    assert merged.count == 90
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-13)
    np.testing.assert_allclose(merged.covariance, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    assert FeatureStatistics().merge(whole).count == 90
    with pytest.raises(ValueError, match=r"`features` must have the dimension of the earlier batches \(5\)"):
        whole.update(np.zeros((2, 4)))


@neutral
def test_statistics_save_load_round_trip(tmp_path):
    x = np.random.default_rng(2).normal(size=(40, 6))
    stats = FeatureStatistics().update(x)
    path = stats.save(tmp_path / "stats" / "real.npz")
    loaded = FeatureStatistics.load(path)
    assert loaded.count == 40
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_array_equal(loaded.covariance, stats.covariance)
    with np.load(path, allow_pickle=False) as data:  # readable by other FID tools
        np.testing.assert_allclose(data["sigma"], np.cov(x, rowvar=False), rtol=1e-12)
    assert fid(path, stats) == 0.0
    loaded.update(x)  # loaded statistics keep streaming
    np.testing.assert_allclose(loaded.covariance, np.cov(np.concatenate([x, x]), rowvar=False), rtol=1e-10)
    with pytest.raises(ValueError, match=r"\.npz"):
        stats.save(tmp_path / "real.txt")


@neutral
def test_statistics_bad_inputs():
    with pytest.raises(ValueError, match="Received: count=0"):
        FeatureStatistics().mean
    with pytest.raises(ValueError, match="at least 2 samples"):
        FeatureStatistics().update(np.ones((1, 3))).covariance
    with pytest.raises(ValueError, match=r"features.shape=\(4,\)"):
        FeatureStatistics().update(np.ones(4))


# --- Fréchet distance ----------------------------------------------------------------


@neutral
def test_fid_of_identical_statistics_is_zero():
    x = np.random.default_rng(3).normal(size=(500, 64)) @ np.random.default_rng(4).normal(size=(64, 64))
    stats = FeatureStatistics().update(x)
    assert abs(fid(stats, stats)) < 1e-8


@neutral
def test_fid_of_diagonal_gaussians_is_analytic():
    rng = np.random.default_rng(5)
    m1, m2 = rng.normal(size=32), rng.normal(size=32)
    a, b = rng.uniform(0.1, 5.0, 32), rng.uniform(0.1, 5.0, 32)
    expected = analytic_fid(m1, a, m2, b)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-6)


@neutral
def test_fid_of_full_commuting_covariances_is_analytic():
    rng = np.random.default_rng(6)
    q = random_orthogonal(48, seed=7)
    a, b = rng.uniform(0.01, 3.0, 48), rng.uniform(0.01, 3.0, 48)
    a[:5] = 0.0  # a singular one too
    m1, m2 = rng.normal(size=48), rng.normal(size=48)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    assert abs(s1[0, 1]) > 1e-3  # genuinely non-diagonal
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(analytic_fid(m1, a, m2, b), rel=1e-6)


@neutral
def test_fid_of_rank_deficient_covariances_is_finite_real_symmetric():
    rng = np.random.default_rng(8)
    x1, x2 = rng.normal(size=(20, 256)), rng.normal(size=(20, 256)) * 2.0 + 0.5
    s1, s2 = FeatureStatistics().update(x1), FeatureStatistics().update(x2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d12, d21 = fid(s1, s2), fid(s2, s1)
    assert isinstance(d12, float) and math.isfinite(d12) and d12 >= 0.0
    assert d12 == pytest.approx(d21, rel=1e-9)
    # Independent: with S_i = C_i^T C_i / (n - 1) (C_i the centred data), the cross term
    # tr((S1^1/2 S2 S1^1/2)^1/2) is the nuclear norm of the 20x20 matrix C1 C2^T / (n - 1).
    c1, c2 = x1 - x1.mean(axis=0), x2 - x2.mean(axis=0)
    cross = np.linalg.svd(c1 @ c2.T / 19.0, compute_uv=False).sum()
    expected = np.sum((x1.mean(0) - x2.mean(0)) ** 2) + (np.sum(c1**2) + np.sum(c2**2)) / 19.0 - 2.0 * cross
    assert d12 == pytest.approx(expected, rel=1e-8)


@neutral
def test_fid_is_symmetric_on_general_covariances():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(64, 100)), rng.normal(size=(64, 100))
    s1, s2 = a @ a.T / 100, b @ b.T / 100 + 0.1
    m1, m2 = rng.normal(size=64), rng.normal(size=64)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(frechet_distance(m2, s2, m1, s1), rel=1e-9)


@neutral
def test_fid_shape_errors():
    with pytest.raises(ValueError, match=r"Received: mu1.shape=\(3,\), sigma1.shape=\(2, 2\)"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="same dimension"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="finite"):
        frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))


# --- Inception Score --------------------------------------------------------------------


def reference_inception_score(logits, splits):
    """Salimans et al.'s loop: per contiguous split, exp(mean_x KL(p(y|x) || p(y)))."""
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n, scores = len(probs), []
    for k in range(splits):
        part = probs[k * n // splits:(k + 1) * n // splits]
        marginal = part.mean(axis=0)
        kl = [sum(p * (math.log(p) - math.log(q)) for p, q in zip(row, marginal) if p > 0) for row in part]
        scores.append(math.exp(sum(kl) / len(kl)))
    return scores


@neutral
def test_inception_score_matches_the_reference_loop():
    logits = np.random.default_rng(10).normal(size=(1003, 7)) * 3.0
    score = InceptionScore(1003)
    for chunk in np.split(logits, [5, 6, 250, 777]):  # chunks straddle split boundaries
        score.update(chunk)
    expected = reference_inception_score(logits, 10)
    np.testing.assert_allclose(score.split_scores, expected, rtol=1e-10)
    mean, std = score.result()
    assert mean == pytest.approx(np.mean(expected), rel=1e-10) and std == pytest.approx(np.std(expected), rel=1e-8)


@neutral
def test_inception_score_limits():
    uniform = InceptionScore(50, splits=10).update(np.zeros((50, 1000))).result()
    assert uniform[0] == pytest.approx(1.0, abs=1e-12) and uniform[1] < 1e-12
    labels = np.arange(10 * 4 * 3) % 4  # 4 classes, balanced in each of the 10 contiguous splits
    one_hot = np.eye(4)[labels]
    assert InceptionScore(120, from_logits=False).update(one_hot).result() == pytest.approx((4.0, 0.0), abs=1e-12)
    confident = InceptionScore(120).update(60.0 * one_hot).result()
    assert confident[0] == pytest.approx(4.0, rel=1e-12)


@neutral
def test_inception_score_from_probabilities_equals_from_logits():
    logits = np.random.default_rng(11).normal(size=(40, 5))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    a = InceptionScore(40, splits=4).update(logits).result()
    b = InceptionScore(40, splits=4, from_logits=False).update(probs).result()
    np.testing.assert_allclose(a, b, rtol=1e-12)


@neutral
def test_inception_score_bad_inputs():
    with pytest.raises(ValueError, match="Received: splits=10, num_samples=5"):
        InceptionScore(5)
    score = InceptionScore(20).update(np.zeros((15, 3)))
    with pytest.raises(ValueError, match="Fewer samples"):
        score.result()
    with pytest.raises(ValueError, match=r"`values` holds more samples than announced.*Received: 21 > 20"):
        score.update(np.zeros((6, 3)))
    with pytest.raises(ValueError, match=r"`values` must be probabilities.*each row in \[0, 1\]"):
        InceptionScore(10, from_logits=False).update(-np.ones((2, 3)))


# --- extractors and streaming ------------------------------------------------------------


def linear_extractor(batch):
    """Pure numpy: features are the flattened pixels, logits a fixed projection."""
    flat = np.asarray(batch, np.float64).reshape(len(batch), -1)
    return {"features": flat, "logits": flat @ np.linspace(-2.0, 2.0, flat.shape[1] * 3).reshape(-1, 3)}


@neutral
def test_compute_statistics_on_arrays_and_generators():
    images = np.random.default_rng(12).uniform(-1, 1, size=(57, 2, 2, 1))
    flat = images.reshape(57, -1)
    stats, score = compute_statistics(images, linear_extractor, batch_size=10, inception_score=True, splits=3)
    np.testing.assert_allclose(stats.covariance, np.cov(flat, rowvar=False), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(score.split_scores, reference_inception_score(linear_extractor(images)["logits"], 3),
                               rtol=1e-9)
    batches = ((images[i:i + 7], np.zeros(7)) for i in range(0, 57, 7))  # (images, labels), truncated at 40
    streamed = compute_statistics(batches, linear_extractor, num_samples=40)
    assert streamed.count == 40
    np.testing.assert_allclose(streamed.mean, flat[:40].mean(axis=0), rtol=1e-12)
    assert compute_statistics(images, linear_extractor, batch_size=50, num_samples=1000).count == 57
    assert inception_score(images, linear_extractor, splits=3) == pytest.approx(score.result(), rel=1e-12)
    with pytest.raises(ValueError, match="num_samples"):
        compute_statistics(iter([images]), linear_extractor, inception_score=True)
    with pytest.raises(ValueError, match="`extractor` must return a dict with 'features' and 'logits'"):
        compute_statistics(images, lambda b: {"features": b.reshape(len(b), -1)}, inception_score=True, splits=3)


def tiny_classifier(softmax=False):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Dense(6, activation="tanh", name="penultimate")(keras.layers.Flatten()(x))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax" if softmax else None, name="head")(x))


def test_classifier_features():
    model = tiny_classifier()
    images = np.random.default_rng(13).integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8)
    floats = images.astype("float32") / 127.5 - 1.0
    out = ClassifierFeatures(model)(images)
    penultimate = keras.Model(model.input, model.get_layer("penultimate").output)
    np.testing.assert_allclose(out["features"], to_numpy(penultimate(floats)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["logits"], to_numpy(model(floats)), rtol=1e-5, atol=1e-6)
    assert ClassifierFeatures(model, feature_layer="conv")(floats)["features"].shape == (5, 6 * 6 * 4)
    probs_model = tiny_classifier(softmax=True)
    log_probs = ClassifierFeatures(probs_model, from_logits=False)(floats)["logits"]
    np.testing.assert_allclose(np.exp(log_probs), to_numpy(probs_model(floats)), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="functional or Sequential"):
        ClassifierFeatures(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match=r"or floats in \[-1, 1\]. Received: floats in \[-128, 128\]"):
        ClassifierFeatures(model)(floats * 127.5)


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    """Keras' own InceptionV3 (softmax top, random weights) and our extractor loading its weights file."""
    keras.utils.set_random_seed(1)
    reference = keras.applications.InceptionV3(weights=None)
    path = tmp_path_factory.mktemp("inception") / "inception.weights.h5"
    reference.save_weights(path)
    return reference, InceptionV3Features(weights=path)


@neutral  # backend-agnostic Keras code, heavy: run once (TensorFlow pass) to keep CI short
def test_inception_features_shapes_and_exact_logits(inception):
    reference, extractor = inception
    images = np.random.default_rng(14).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    floats = images.astype("float32") / 127.5 - 1.0
    out = extractor(images)
    assert out["features"].shape == (2, 2048) and out["logits"].shape == (2, 1000)
    np.testing.assert_allclose(extractor(floats)["logits"], out["logits"], rtol=1e-5, atol=1e-5)
    # logits are the top layer's pre-activation on the pool features ...
    kernel, bias = (to_numpy(w) for w in reference.get_layer("predictions").weights)
    np.testing.assert_allclose(out["logits"], out["features"] @ kernel + bias, rtol=1e-4, atol=1e-4)
    # ... and their softmax is Keras' InceptionV3 output on the bilinearly resized images.
    resized = to_numpy(keras.ops.image.resize(floats, (299, 299), interpolation="bilinear"))
    probs = reference.predict_on_batch(resized)
    z = out["logits"] - out["logits"].max(axis=1, keepdims=True)
    np.testing.assert_allclose(np.exp(z) / np.exp(z).sum(axis=1, keepdims=True), probs, rtol=1e-4, atol=1e-6)


@neutral  # backend-agnostic Keras code, heavy: run once (TensorFlow pass) to keep CI short
def test_inception_features_greyscale_and_bad_images(inception):
    _, extractor = inception
    grey = np.random.default_rng(15).uniform(-1, 1, size=(2, 32, 32, 1)).astype("float32")  # shape compiled before
    np.testing.assert_allclose(extractor(grey)["features"], extractor(np.repeat(grey, 3, axis=-1))["features"],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        extractor(np.zeros((1, 8, 8, 2), "float32"))


@neutral
def test_missing_inception_weights_fail_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    start = time.time()
    with pytest.raises(FileNotFoundError) as error:
        InceptionV3Features()
    assert time.time() - start < 5.0
    message = str(error.value)
    assert str(tmp_path / "models" / evaluation.INCEPTION_WEIGHTS_FILE) in message
    assert evaluation.INCEPTION_WEIGHTS_URL in message and "allow_download=True" in message
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        InceptionV3Features(weights=str(tmp_path / "nowhere.h5"))
    with pytest.raises(ValueError, match="Received: weights=3"):
        InceptionV3Features(weights=3)
    cached = tmp_path / "models" / evaluation.INCEPTION_WEIGHTS_FILE
    cached.parent.mkdir()
    cached.write_bytes(b"")
    assert evaluation._inception_weights_path("imagenet", allow_download=False) == str(cached)


# --- Classification Accuracy Score ------------------------------------------------------


def mnist_split(train_per_class=30, test_per_class=30, size=16):
    """Disjoint real MNIST train/test digits: per class, the first ones train, the next test."""
    images, labels = mnist_digits(per_class=train_per_class + test_per_class, size=size)
    rank = np.arange(len(labels)) % (train_per_class + test_per_class)
    train, test = rank < train_per_class, rank >= train_per_class
    return images[train], labels[train], images[test], labels[test]


@neutral  # backend-agnostic Keras code, heavy: run once (TensorFlow pass) to keep CI short
def test_cas_rewards_label_consistent_training_data():
    x_train, y_train, x_test, y_test = mnist_split()
    assert not (x_train[:, None] == x_test[None]).all(axis=(2, 3, 4)).any()  # no test digit is trained on
    kwargs = dict(num_classes=10, epochs=8, batch_size=32, seed=0)
    result = classification_accuracy_score(x_train, y_train, x_test, y_test, **kwargs)
    assert result["top1"] > 0.6 and 1.0 >= result["top5"] >= result["top1"]
    assert result["per_class_top1"].shape == (10,) and len(result["history"]["loss"]) == 8
    assert np.mean(result["per_class_top1"]) == pytest.approx(result["top1"])  # balanced test set
    shuffled = np.random.default_rng(0).permutation(y_train)
    wrong = classification_accuracy_score(x_train, shuffled, x_test, y_test, **kwargs)
    assert wrong["top1"] < 0.3  # chance is 0.1: the score measures image-label consistency


@neutral  # backend-agnostic Keras code, heavy: run once (TensorFlow pass) to keep CI short
def test_cas_with_a_compiled_classifier_and_few_classes():
    images, labels = mnist_digits(per_class=4, size=8, classes=(0, 1, 2))
    model = default_cas_classifier((8, 8, 1), 3, width=4)
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [to_numpy(w) for w in model.weights]
    result = classification_accuracy_score(images, labels, images[::-1], labels[::-1], 3, classifier=model,
                                           epochs=1)
    assert result["top5"] == 1.0  # top-min(5, K): with 3 classes every label is in the top 3
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, to_numpy(new))  # trained as compiled (lr 0), not recompiled
    with pytest.raises(ValueError, match=r"`train_labels` must be one integer in \[0, 3\)"):
        classification_accuracy_score(images, labels + 1, images, labels, 3, classifier=model, epochs=1)


@neutral
def test_evaluation_does_not_import_tensorflow():
    code = "import sys, keras_cdm.evaluation; print('tensorflow' in sys.modules)"
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def _pixel_argmax_model(num_pixels):
    """A classifier whose logits are the pixel values themselves (class c = pixel c)."""
    inputs = keras.Input((1, num_pixels, 1))
    dense = keras.layers.Dense(num_pixels, use_bias=False)
    outputs = dense(keras.layers.Flatten()(inputs))
    dense.kernel.assign(np.eye(num_pixels, dtype="float32"))
    return keras.Model(inputs, outputs)


def test_recognition_accuracy_closed_form():
    brightest = np.array([0, 1, 2, 3, 0, 1])  # the class each image's logits pick
    images = np.full((6, 1, 4, 1), 10, np.uint8)
    images[np.arange(6), 0, brightest, 0] = 250
    labels = np.array([0, 1, 0, 3, 1, 1])  # right, right, wrong, right, wrong, right
    result = recognition_accuracy(_pixel_argmax_model(4), images, labels, num_classes=4)
    assert result["top1"] == pytest.approx(4 / 6) and result["top5"] == 1.0  # top-min(5, 4) holds every class
    np.testing.assert_allclose(result["per_class_top1"], [1 / 2, 2 / 3, np.nan, 1.0])  # no class-2 image
    floats = images.astype("float32") / 127.5 - 1.0  # the same images in [-1, 1]
    assert recognition_accuracy(_pixel_argmax_model(4), floats, labels, 4)["top1"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match=r"`labels` must be one integer in \[0, 4\)"):
        recognition_accuracy(_pixel_argmax_model(4), images, labels[:5], 4)
    with pytest.raises(ValueError, match=r"`images` must be an \(N, H, W, C\) array"):
        recognition_accuracy(_pixel_argmax_model(4), images[0], labels, 4)


def test_pixel_classifier_is_dense_on_raw_pixels():
    model = pixel_classifier((8, 8, 1), 3, width=16)
    assert model.output_shape == (None, 3)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert kinds == {"InputLayer", "Flatten", "Dense", "Dropout"}  # no convolution or pooling averages grain away
    assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [16, 16, 3]
    with pytest.raises(ValueError, match="`width` must be a positive integer"):
        pixel_classifier((8, 8, 1), 3, width=0)
