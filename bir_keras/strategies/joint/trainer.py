"""Joint training's Trainer (its declaration: ``bir_keras.strategies.joint``): at task t,
train on all data of tasks 1..t (the upper bound)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bir_keras.strategies.finetune.trainer import FineTuning
from bir_keras.strategies.records import Plan, TaskData


class Joint(FineTuning):
    """Trains on the union of the tasks so far: in Task-IL each batch deals its slots to the
    tasks in turn, otherwise it is drawn from the union."""

    def task_data(self, t: int) -> TaskData:
        """Concatenated data of tasks 0..t with per-task offsets and sizes (used as separate
        parts in Task-IL, as one set otherwise)."""
        tasks = [self.protocol.task(j) for j in range(t + 1)]
        sizes = np.array([len(k.y_train) for k in tasks], np.int32)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
        return TaskData(x=tf.constant(np.concatenate([k.x_train for k in tasks])),
                        y=tf.constant(np.concatenate([k.y_train for k in tasks]), tf.int32),
                        tid=tf.constant(np.repeat(np.arange(t + 1, dtype=np.int32), sizes)),
                        offsets=tf.constant(offsets), sizes=tf.constant(sizes))

    def plan(self, t: int) -> Plan:
        """In Task-IL each task keeps its own batches, as the authors' separate data loaders
        per task (train.py, ``Offline_TaskIL``); otherwise one loader over the union."""
        return super().plan(t)._replace(parts=t + 1 if self.protocol.scenario == "task" else 1)
