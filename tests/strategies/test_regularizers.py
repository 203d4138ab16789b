"""EWC, online EWC, SI and XdG against hand computations on tiny models."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from bir_keras.strategies.ewc.regularizer import EWC, fisher_diagonal
from bir_keras.strategies.si.regularizer import SI
from bir_keras.strategies.trainers import make_trainer


def test_ewc_penalty_zero_at_anchor_and_quadratic():
    v = tf.Variable([1.0, -2.0, 0.5])
    ewc = EWC(lam=4.0)
    ewc.build([v])
    fisher = [tf.constant([0.5, 2.0, 1.0])]
    ewc.fold(fisher)
    assert float(ewc.penalty()) == pytest.approx(0.0, abs=1e-7)
    for step in (0.1, 0.2, 0.4):
        v.assign([1.0 + step, -2.0, 0.5])
        assert float(ewc.penalty()) == pytest.approx(0.5 * 4.0 * 0.5 * step ** 2, rel=1e-4)
    # a second task adds its own term around its own anchor
    v.assign([3.0, 0.0, 0.0])
    ewc.fold([tf.constant([1.0, 1.0, 1.0])])
    v.assign([2.0, -1.0, 1.0])
    expected = 0.5 * 4.0 * (np.sum(np.array([0.5, 2, 1]) * (np.array([2, -1, 1]) - [1, -2, .5]) ** 2)
                            + np.sum((np.array([2, -1, 1]) - [3, 0, 0]) ** 2))
    assert float(ewc.penalty()) == pytest.approx(expected, rel=1e-4)


def test_online_ewc_running_fisher():
    v = tf.Variable([1.0, 1.0])
    ewc = EWC(lam=1.0, online=True, gamma=0.5)
    ewc.build([v])
    ewc.fold([tf.constant([2.0, 4.0])])
    v.assign([0.0, 3.0])
    ewc.fold([tf.constant([1.0, 1.0])])
    np.testing.assert_allclose(ewc.precision[0].numpy(), [0.5 * 2 + 1, 0.5 * 4 + 1])
    np.testing.assert_allclose(ewc.anchor[0].numpy(), [0.0, 3.0])
    assert float(ewc.penalty()) == pytest.approx(0.0, abs=1e-7)


def test_fisher_matches_hand_computation():
    # a linear softmax model z = x W: d log p_c / dW[i, j] = x_i (1[j = c] - p_j)
    w = tf.Variable([[0.2, -0.1, 0.4], [0.3, 0.5, -0.2]])
    x = tf.constant([[1.0, 2.0], [-1.0, 0.5], [0.3, 0.3]])
    active = tf.constant([[1.0, 1.0, 0.0]] * 3)
    got = fisher_diagonal(lambda xb, tb: tf.matmul(xb, w), [w], x, tf.zeros([3], tf.int32),
                          active, chunk=2)[0].numpy()
    expected = np.zeros((2, 3))
    for xi in x.numpy():
        z = xi @ w.numpy()
        p = np.exp(z[:2]) / np.exp(z[:2]).sum()
        p = np.append(p, 0.0)
        for c in range(2):
            g = np.outer(xi, (np.arange(3) == c) - p)
            g[:, 2] = 0.0  # inactive unit takes no part in the softmax
            expected += p[c] * g ** 2
    np.testing.assert_allclose(got, expected / 3, rtol=1e-4, atol=1e-7)


def test_si_omega_matches_hand_path_integral():
    # plain gradient descent on L = sum (theta - target)^2 with the SI penalty off (c = 0)
    theta = tf.Variable([0.0, 1.0])
    target = np.array([1.0, -1.0])
    si = SI(c=0.0, epsilon=0.1)
    si.build([theta])
    si.before_task(0)
    lr, w_hand, t = 0.1, np.zeros(2), np.array([0.0, 1.0])
    for _ in range(5):
        g = 2 * (t - target)
        new = t - lr * g
        w_hand += -g * (new - t)
        si.apply(functools.partial(theta.assign, new), [tf.constant(g, tf.float32)], [theta])
        t = new
    si.after_task(0, None)
    omega = w_hand / ((t - np.array([0.0, 1.0])) ** 2 + 0.1)
    np.testing.assert_allclose(si.omega[0].numpy(), omega, rtol=1e-4)
    np.testing.assert_allclose(si.anchor[0].numpy(), t, rtol=1e-5)


def test_si_accumulates_inside_compiled_step(tiny_setup):
    cfg, proto = tiny_setup("task", tasks=2, iters=20, si=True, si_c=1.0)
    tr = make_trainer(cfg, proto, verbose=False)
    tr.fit(until=1)
    si = tr.regularizers[0]
    assert all(float(tf.reduce_sum(o)) > 0 for o in si.omega)
    assert all(float(tf.reduce_min(o)) > -1e-3 for o in si.omega)


def test_ewc_composes_with_xdg_and_masks_differ(tiny_setup):
    # without XLA: compiling took most of the time (test_methods compares XLA with the plain step)
    cfg, proto = tiny_setup("task", tasks=2, iters=20, xdg=True, xdg_prop=0.75, ewc=True,
                            ewc_lambda=10.0, jit_compile=False)
    tr = make_trainer(cfg, proto, verbose=False)
    masks = [m.numpy() for m in tr.model.xdg_masks]
    assert masks[0].shape == (proto.capacity, 40)
    np.testing.assert_array_equal(masks[0].sum(1), [10] * proto.capacity)
    assert not np.array_equal(masks[0][0], masks[0][1])
    # a masked unit outputs relu(bias) whatever the input (the mask comes before the bias)
    bias = np.maximum(tr.model.fc.layers_[-1].bias.numpy(), 0)
    for x in (tf.ones((2, 64)), tf.zeros((2, 64)) + 3.0):
        h = tr.model.hidden(x, tf.constant([0, 1])).numpy()
        for row in (0, 1):
            off = masks[-1][row] == 0
            np.testing.assert_allclose(h[row][off], bias[off], rtol=1e-6)
    tr.fit()
    assert float(tr.regularizers[0].penalty()) > 0
