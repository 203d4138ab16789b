"""The fast dense Fisher equals the vectorised-Jacobian one (and so the hand computation)."""

import numpy as np
import tensorflow as tf

from bir_keras.models.classifier import Classifier
from bir_keras.models.layers import make_unit_masks
from bir_keras.strategies.ewc.regularizer import dense_fisher, fisher_diagonal


def test_dense_fisher_matches_jacobian_fisher():
    xdg = [make_unit_masks(3, 12, 0.5, seed=0), make_unit_masks(3, 8, 0.5, seed=1)]
    for masks in (None, xdg):
        model = Classifier((6,), 6, [12, 8], xdg_masks=masks)
        x = tf.random.stateless_normal((20, 6), seed=(1, 2))
        tid = tf.constant(np.arange(20) % 3, tf.int32)
        table = np.zeros((3, 6), np.float32)
        for t in range(3):
            table[t, 2 * t:2 * t + 2] = 1.0
        active = tf.gather(tf.constant(table), tid)
        variables = list(model.trainable_variables)
        slow = fisher_diagonal(lambda xb, tb, m=model: m(xb, tb), variables, x, tid, active, chunk=7)
        fast = dense_fisher(model, variables, x, tid, active)
        assert fast is not None
        for a, b in zip(slow, fast):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-8)
