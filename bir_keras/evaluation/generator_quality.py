"""Quality of replayed samples (Fig. 9 of the paper): IS, FID, precision and recall.

The scores are computed in the feature space of an embedding network (conv
trunk, frozen, then FC 2000-2000 and a softmax over the classes), so that
samples replayed at the pixel level and at the level of the hidden conv
features can be compared.  The score functions themselves work on plain numpy
arrays of features or class probabilities.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import keras
import numpy as np
from scipy import linalg, special
from sklearn.cluster import MiniBatchKMeans

FEATURES_LAYER = "embedding_features"
LOGITS_LAYER = "embedding_logits"


# ----------------------------------------------------------------------------
# Inception score and Frechet distance
# ----------------------------------------------------------------------------


def inception_score(probs: np.ndarray, splits: int = 1) -> float:
    """exp(E_x KL(p(y|x) || p(y))) of softmax outputs [N, K], averaged over ``splits`` chunks."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty [N, K] array, got shape {probs.shape}")
    if splits < 1 or splits > probs.shape[0]:
        raise ValueError(f"splits must be in 1..{probs.shape[0]}, got {splits}")
    scores = []
    for chunk in np.array_split(probs, splits):
        marginal = chunk.mean(axis=0, keepdims=True)
        # xlogy gives 0 * log(0) = 0, so one-hot rows are handled exactly.
        kl = special.xlogy(chunk, chunk) - special.xlogy(chunk, marginal)
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return float(np.mean(scores))


def _sqrtm_quiet(matrix: np.ndarray) -> np.ndarray:
    """scipy.linalg.sqrtm without the warning for singular input (the caller checks the result)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return np.asarray(linalg.sqrtm(matrix))


def frechet_distance(feat_a: np.ndarray, feat_b: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, D] (FID in feature space)."""
    a = np.asarray(feat_a, dtype=np.float64)
    b = np.asarray(feat_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [N, D] with equal D, got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("each feature set needs at least 2 samples")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    product = cov_a @ cov_b
    covmean = _sqrtm_quiet(product)
    residual = np.linalg.norm(covmean @ covmean - product) / max(np.linalg.norm(product), 1e-300)
    if not np.all(np.isfinite(covmean)) or residual > 1e-3:
        # Singular covariances (e.g. fewer samples than dimensions, dead ReLUs): regularize.
        offset = eps * np.eye(cov_a.shape[0])
        covmean = _sqrtm_quiet((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean)
    # A squared distance: tiny negative values are round-off.
    return float(max(value, 0.0))


# ----------------------------------------------------------------------------
# Precision and recall for distributions (Sajjadi et al. 2018)
# ----------------------------------------------------------------------------


def _equal_size(
    real: np.ndarray, fake: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Subsample the larger of the two sets (without replacement) to the size of the smaller."""
    n = min(real.shape[0], fake.shape[0])
    if real.shape[0] > n:
        real = real[np.sort(rng.choice(real.shape[0], n, replace=False))]
    if fake.shape[0] > n:
        fake = fake[np.sort(rng.choice(fake.shape[0], n, replace=False))]
    return real, fake


def _cluster_histograms(
    real: np.ndarray, fake: np.ndarray, num_clusters: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the union of both sets and return each set's normalized histogram over clusters."""
    data = np.concatenate([real, fake], axis=0)
    kmeans = MiniBatchKMeans(n_clusters=num_clusters, n_init=10, random_state=seed)
    labels = kmeans.fit_predict(data)
    real_labels, fake_labels = labels[: real.shape[0]], labels[real.shape[0] :]
    real_hist = np.bincount(real_labels, minlength=num_clusters).astype(np.float64)
    fake_hist = np.bincount(fake_labels, minlength=num_clusters).astype(np.float64)
    return real_hist / real_hist.sum(), fake_hist / fake_hist.sum()


def _prd_from_histograms(
    p_real: np.ndarray, p_fake: np.ndarray, num_angles: int, epsilon: float = 1e-10
) -> tuple[np.ndarray, np.ndarray]:
    """PRD curve (alpha, beta) over ``num_angles`` slopes lambda = tan(angle), angle in (0, pi/2)."""
    angles = np.linspace(epsilon, np.pi / 2 - epsilon, num_angles)
    slopes = np.tan(angles)[:, None]
    alpha = np.minimum(slopes * p_real[None, :], p_fake[None, :]).sum(axis=1)
    beta = alpha / slopes[:, 0]
    return np.clip(alpha, 0.0, 1.0), np.clip(beta, 0.0, 1.0)


def prd_curve(
    real: np.ndarray,
    fake: np.ndarray,
    num_clusters: int = 20,
    num_angles: int = 1001,
    num_runs: int = 10,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """PRD curve (precisions, recalls) of fake vs real features, averaged over k-means runs."""
    real = np.asarray(real, dtype=np.float64).reshape(len(real), -1)
    fake = np.asarray(fake, dtype=np.float64).reshape(len(fake), -1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: {real.shape[1]} vs {fake.shape[1]}")
    if num_angles < 3:
        raise ValueError("num_angles must be at least 3")
    if num_runs < 1:
        raise ValueError("num_runs must be at least 1")
    rng = np.random.default_rng(seed)
    real, fake = _equal_size(real, fake, rng)
    if 2 * real.shape[0] < num_clusters:
        raise ValueError(f"{2 * real.shape[0]} samples are too few for {num_clusters} clusters")
    precisions = np.zeros(num_angles)
    recalls = np.zeros(num_angles)
    for run in range(num_runs):
        p_real, p_fake = _cluster_histograms(real, fake, num_clusters, seed + run)
        precision, recall = _prd_from_histograms(p_real, p_fake, num_angles)
        precisions += precision
        recalls += recall
    return precisions / num_runs, recalls / num_runs


def _max_f_beta(precisions: np.ndarray, recalls: np.ndarray, beta: float) -> float:
    """Largest F_beta score along a PRD curve (0 where precision and recall are both 0)."""
    num = (1.0 + beta**2) * precisions * recalls
    den = beta**2 * precisions + recalls
    f = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return float(np.max(f))


def precision_recall(
    real: np.ndarray,
    fake: np.ndarray,
    num_clusters: int = 20,
    num_angles: int = 1001,
    num_runs: int = 10,
    seed: int = 0,
) -> tuple[float, float]:
    """(precision, recall) of fake vs real features as the PRD curve's max F_{1/8} and F_8 scores."""
    precisions, recalls = prd_curve(real, fake, num_clusters, num_angles, num_runs, seed)
    precision = _max_f_beta(precisions, recalls, beta=1.0 / 8.0)
    recall = _max_f_beta(precisions, recalls, beta=8.0)
    return precision, recall


# ----------------------------------------------------------------------------
# Embedding network
# ----------------------------------------------------------------------------


def build_embedding_network(
    input_shape: Sequence[int],
    num_classes: int,
    conv_trunk: keras.layers.Layer | None = None,
    fc_units: int = 2000,
) -> keras.Model:
    """Embedding network: frozen conv trunk (optional) -> FC fc_units -> FC fc_units -> logits.

    The given ``conv_trunk`` layer is set to ``trainable = False`` in place; it
    may be shared with another model (its weights are then shared too).
    """
    inputs = keras.Input(shape=tuple(input_shape), name="embedding_input")
    x = inputs
    if conv_trunk is not None:
        conv_trunk.trainable = False
        x = conv_trunk(x, training=False)
    x = keras.layers.Flatten(name="embedding_flatten")(x)
    x = keras.layers.Dense(fc_units, activation="relu", name="embedding_fc1")(x)
    x = keras.layers.Dense(fc_units, activation="relu", name=FEATURES_LAYER)(x)
    logits = keras.layers.Dense(num_classes, name=LOGITS_LAYER)(x)
    return keras.Model(inputs, logits, name="embedding_network")


def embed(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features [N, fc_units] and class probabilities [N, num_classes] of ``x``."""
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    feature_model = keras.Model(
        inputs,
        [model.get_layer(FEATURES_LAYER).output, model.get_layer(LOGITS_LAYER).output],
    )
    x = np.asarray(x, dtype=np.float32)
    features, logits = [], []
    for start in range(0, x.shape[0], batch_size):
        f, lg = feature_model(x[start : start + batch_size], training=False)
        features.append(keras.ops.convert_to_numpy(f))
        logits.append(keras.ops.convert_to_numpy(lg))
    if not features:
        raise ValueError("x is empty")
    feats = np.concatenate(features).astype(np.float64)
    probs = special.softmax(np.concatenate(logits).astype(np.float64), axis=1)
    return feats, probs


def train_embedding_network(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    batch_size: int = 256,
    lr: float = 1e-4,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Train with Adam and sparse categorical cross-entropy (from logits); returns per-epoch loss/accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    rng = np.random.default_rng(seed)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    for _ in range(epochs):
        order = rng.permutation(x.shape[0])
        result = model.fit(
            x[order], y[order], batch_size=batch_size, epochs=1, shuffle=False, verbose=0
        )
        history["loss"].append(float(result.history["loss"][-1]))
        history["accuracy"].append(float(result.history["accuracy"][-1]))
    return history


def evaluate_generator(
    model: keras.Model,
    real_x: np.ndarray,
    fake_x: np.ndarray,
    num_clusters: int = 20,
    num_runs: int = 10,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, float]:
    """IS (of fake samples), FID, precision and recall of fake vs real samples in embedding space."""
    real_feats, _ = embed(model, real_x, batch_size)
    fake_feats, fake_probs = embed(model, fake_x, batch_size)
    precision, recall = precision_recall(
        real_feats, fake_feats, num_clusters=num_clusters, num_runs=num_runs, seed=seed
    )
    return {
        "inception_score": inception_score(fake_probs),
        "fid": frechet_distance(real_feats, fake_feats),
        "precision": precision,
        "recall": recall,
    }
