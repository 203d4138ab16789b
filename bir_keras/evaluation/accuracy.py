"""Test accuracy of a trainer's classifier after each task: on each learned task's test
set, among the output units active for that task (``Protocol.active_table``); with
``Config.eval_n``, after every task but the run's last, on a fixed random subset of each
test set (the authors' ``--acc-n`` for their plots during a task), so that a long run's
evaluation costs ``eval_n`` images per learned task instead of whole test sets."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from bir_keras.models.layers import masked_logits


class Evaluator:
    """Evaluates ``trainer`` (anything with ``protocol``, ``config.eval_batch``, ``model``,
    ``logits`` and ``preprocess``: a ``strategies.base.Trainer``) in batches of
    ``eval_batch``, one traced function for every task."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self._fn = tf.function(self._batch, reduce_retracing=True, autograph=False)

    def _batch(self, x, y, tid, active_row):
        tr = self.trainer
        logits = tr.logits(tr.model, tr.preprocess(x), tid)
        pred = tf.argmax(masked_logits(logits, active_row[None]), -1, output_type=tf.int32)
        return tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.int32))

    def evaluate(self, t: int, last: bool = True) -> list[float | None]:
        """Accuracy on every learned task's test set after learning task ``t`` (None for
        the tasks after it); unless ``last`` (the run's last task), on ``eval_n`` test
        images per task when ``Config.eval_n`` asks for it."""
        protocol = self.trainer.protocol
        table = protocol.active_table(t)
        n = None if last else self.trainer.config.eval_n or None
        return [self.task_accuracy(j, table[j], n) if j <= t else None
                for j in range(protocol.num_tasks)]

    def task_accuracy(self, j: int, active_row: np.ndarray, n: int | None = None) -> float:
        """Test accuracy on task ``j`` with the given active units, on its whole test set
        or on ``n`` of its images (``subset``)."""
        x_test, y_test = self.trainer.protocol.test_set(j)
        if n is not None and n < len(y_test):
            keep = subset(len(y_test), n, j)
            x_test, y_test = x_test[keep], y_test[keep]
        correct, bs = 0, self.trainer.config.eval_batch
        active = tf.constant(active_row)
        for s in range(0, len(y_test), bs):
            x = x_test[s:s + bs]
            correct += int(self._fn(tf.constant(x), tf.constant(y_test[s:s + bs]),
                                    tf.fill([len(x)], tf.constant(j, tf.int32)), active))
        return correct / len(y_test)


def subset(size: int, n: int, j: int) -> np.ndarray:
    """``n`` of a test set's ``size`` indices, in order: the same for task ``j`` in every
    run, seed and method (drawn from a generator seeded by ``j`` alone), so that runs
    compare on the same images; random, as a test set may be sorted by class."""
    return np.sort(np.random.default_rng([0xE7A1, j]).choice(size, n, replace=False))
