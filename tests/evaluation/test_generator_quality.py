"""Tests for bir_keras.evaluation.generator_quality."""

import keras
import numpy as np
import pytest

from bir_keras.evaluation import generator_quality as gq


def _blob(rng, n, dim, center):
    return rng.normal(size=(n, dim)) + center


# ---------------------------------------------------------------- inception score


def test_inception_score_uniform_rows_is_one():
    probs = np.full((50, 10), 0.1)
    assert gq.inception_score(probs) == pytest.approx(1.0, abs=1e-9)


def test_inception_score_confident_and_even_is_k():
    k = 7
    probs = np.eye(k)[np.arange(70) % k]
    assert gq.inception_score(probs) == pytest.approx(float(k), rel=1e-9)
    assert gq.inception_score(probs, splits=10) == pytest.approx(float(k), rel=1e-9)


def test_inception_score_between_bounds():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 5)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert 1.0 < gq.inception_score(probs) < 5.0


# ---------------------------------------------------------------- FID


def test_fid_self_is_zero_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    scale = np.trace(np.cov(a, rowvar=False))
    assert gq.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6 * scale)
    values = [gq.frechet_distance(a, a + shift) for shift in (0.1, 0.5, 1.0, 2.0)]
    assert all(x < y for x, y in zip(values, values[1:]))
    # A pure mean shift by s in all 16 dims gives FID = 16 s^2.
    np.testing.assert_allclose(values, [16 * s**2 for s in (0.1, 0.5, 1.0, 2.0)], rtol=1e-5)


def test_fid_different_covariance_positive():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(500, 8))
    b = rng.normal(size=(500, 8)) * 3.0
    assert gq.frechet_distance(a, b) > 8 * (3.0 - 1.0) ** 2 * 0.5


# ---------------------------------------------------------------- precision / recall


def test_precision_recall_identical_sets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    precision, recall = gq.precision_recall(x, x.copy(), num_runs=3)
    assert precision == pytest.approx(1.0, abs=1e-6)
    assert recall == pytest.approx(1.0, abs=1e-6)


def test_precision_recall_disjoint_blobs():
    rng = np.random.default_rng(0)
    real = _blob(rng, 300, 8, 0.0)
    fake = _blob(rng, 300, 8, 50.0)
    precision, recall = gq.precision_recall(real, fake, num_runs=3)
    assert precision < 0.2
    assert recall < 0.2


def test_precision_recall_half_overlap_intermediate():
    rng = np.random.default_rng(0)
    a = _blob(rng, 300, 8, 0.0)
    b = _blob(rng, 300, 8, 50.0)
    c = _blob(rng, 300, 8, -50.0)
    real = np.concatenate([a[:150], b[:150]])
    fake = np.concatenate([a[150:], c[:150]])
    precision, recall = gq.precision_recall(real, fake, num_runs=3)
    assert 0.3 < precision < 0.7
    assert 0.3 < recall < 0.7


def test_precision_recall_mode_dropping_orientation():
    # The fake set covers only one of the two real modes: precise, but low recall.
    rng = np.random.default_rng(0)
    real = np.concatenate([_blob(rng, 200, 8, 0.0), _blob(rng, 200, 8, 50.0)])
    fake = _blob(rng, 600, 8, 0.0)  # larger set gets subsampled to 400
    precision, recall = gq.precision_recall(real, fake, num_runs=3)
    assert precision > 0.9
    assert 0.3 < recall < 0.7


def test_prd_curve_shapes_and_range():
    rng = np.random.default_rng(0)
    precisions, recalls = gq.prd_curve(
        rng.normal(size=(100, 4)),
        rng.normal(size=(100, 4)),
        num_clusters=5,
        num_angles=51,
        num_runs=2,
    )
    assert precisions.shape == recalls.shape == (51,)
    assert np.all((precisions >= 0) & (precisions <= 1))
    assert np.all((recalls >= 0) & (recalls <= 1))


# ---------------------------------------------------------------- embedding network


def test_embedding_network_without_trunk():
    model = gq.build_embedding_network((4, 4, 1), num_classes=3, fc_units=16)
    feats, probs = gq.embed(model, np.zeros((10, 4, 4, 1), np.float32), batch_size=4)
    assert feats.shape == (10, 16)
    assert probs.shape == (10, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_embedding_network_trunk_frozen_and_evaluate():
    keras.utils.set_random_seed(0)
    trunk = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="tiny_trunk")
    model = gq.build_embedding_network((8, 8, 1), num_classes=5, conv_trunk=trunk, fc_units=32)
    assert not trunk.trainable
    trunk_before = [w.copy() for w in trunk.get_weights()]
    head_before = [w.copy() for w in model.get_layer(gq.FEATURES_LAYER).get_weights()]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 5, size=64)
    history = gq.train_embedding_network(model, x, y, epochs=1, batch_size=16, lr=1e-3)
    assert len(history["loss"]) == 1
    for before, after in zip(trunk_before, trunk.get_weights()):
        np.testing.assert_array_equal(before, after)
    head_after = model.get_layer(gq.FEATURES_LAYER).get_weights()
    assert any(not np.array_equal(b, a) for b, a in zip(head_before, head_after))

    feats, probs = gq.embed(model, x[:20], batch_size=8)
    assert feats.shape == (20, 32)
    assert probs.shape == (20, 5)

    scores = gq.evaluate_generator(model, x[:40], x[24:64], num_clusters=4, num_runs=2)
    assert set(scores) == {"inception_score", "fid", "precision", "recall"}
    assert 1.0 <= scores["inception_score"] <= 5.0
    assert scores["fid"] >= 0.0
    assert 0.0 <= scores["precision"] <= 1.0 and 0.0 <= scores["recall"] <= 1.0
