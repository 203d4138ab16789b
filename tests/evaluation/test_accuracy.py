"""Accuracy after each task: on whole test sets, or with ``eval_n`` on a fixed random
subset of each test set for every task but the run's last."""

import numpy as np
import pytest
import tensorflow as tf

from bir_keras.evaluation.accuracy import subset
from bir_keras.models.layers import masked_logits
from bir_keras.strategies.trainers import make_trainer


def test_a_subset_is_fixed_sorted_distinct_and_per_task():
    a = subset(1000, 50, 3)
    assert np.array_equal(a, subset(1000, 50, 3))   # every run, seed and method alike
    assert len(a) == 50 and len(set(a.tolist())) == 50
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 1000
    assert not np.array_equal(a, subset(1000, 50, 4))
    # spread over the test set, not its start (a test set may be sorted by class)
    assert a.max() > 500


def test_an_accuracy_on_n_images_is_the_mean_over_those_images(tiny_setup):
    cfg, proto = tiny_setup("class", tasks=2, jit_compile=False)
    tr = make_trainer(cfg, proto, verbose=False)
    # untrained, among task 1's two units: right on about one class of the two
    x, y = proto.test_set(0)
    row = proto.active_table(0)[0]
    logits = tr.logits(tr.model, tr.preprocess(tf.constant(x)), tf.fill([len(y)], 0))
    pred = tf.argmax(masked_logits(logits, tf.constant(row)[None]), -1).numpy()
    correct = pred == y
    assert 0 < correct.mean() < 1
    n = len(y) // 3
    on_n = correct[subset(len(y), n, 0)].mean()
    assert on_n not in (correct[:n].mean(), correct.mean())   # so the test tells them apart
    assert tr.evaluator.task_accuracy(0, row, n) == pytest.approx(on_n)
    assert tr.evaluator.task_accuracy(0, row) == pytest.approx(correct.mean())
    assert tr.evaluator.task_accuracy(0, row, len(y) + 5) == pytest.approx(correct.mean())


def _fit(tiny_setup, eval_n, until=None):
    cfg, proto = tiny_setup("class", tasks=3, iters=5, eval_n=eval_n, jit_compile=False)
    tr = make_trainer(cfg, proto, verbose=False)
    calls = []
    real = tr.evaluator.task_accuracy

    def task_accuracy(j, row, n=None):
        calls.append((j, n))
        return real(j, row, n)

    tr.evaluator.task_accuracy = task_accuracy
    return tr, calls


def test_eval_n_measures_every_row_but_the_last_on_n_images(tiny_setup):
    tr, calls = _fit(tiny_setup, eval_n=7)
    tr.fit()
    assert calls == [(0, 7), (0, 7), (1, 7), (0, None), (1, None), (2, None)]
    plain, plain_calls = _fit(tiny_setup, eval_n=0)
    plain.fit()
    assert all(n is None for _, n in plain_calls)
    # evaluation draws no random numbers: the same training, the same last row
    assert tr.history.accuracy_matrix[-1] == plain.history.accuracy_matrix[-1]


def test_the_last_task_of_each_fit_is_measured_whole(tiny_setup):
    tr, calls = _fit(tiny_setup, eval_n=7)
    tr.fit(until=2)   # a run of two tasks, continued later with a third
    tr.fit()
    assert calls == [(0, 7), (0, None), (1, None), (0, None), (1, None), (2, None)]
