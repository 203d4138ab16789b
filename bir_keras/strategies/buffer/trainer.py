"""Buffer replay's Trainer (its settings: ``bir_keras.strategies.buffer``): the memory,
stored after each task, drawn from and replayed in the step."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from bir_keras.models.classifier import HardTargets
from bir_keras.strategies.records import Batch, Plan, StepContext, TaskData
from bir_keras.strategies.replay import Replay, ReplayTrainer


class MemoryDraws(NamedTuple):
    """Which stored samples one iteration replays."""

    idx: tf.Tensor   # indices into the memory


class BufferReplay(ReplayTrainer):
    """Replays stored training samples."""

    def build_models(self) -> None:
        """The classifier, its frozen copy (for ``--distill``) and the memory: the stored
        inputs (as the protocol stores them: uint8 pixels or features), their labels and
        tasks, in variables that grow by ``budget`` samples per class after each task."""
        super().build_models()
        x = self.protocol.task(0).x_train

        def grows(shape, dtype, name):
            return tf.Variable(tf.zeros([0, *shape], dtype), shape=tf.TensorShape([None, *shape]),
                               trainable=False, name=name)

        self.memory_x = grows(x.shape[1:], x.dtype, "memory_x")
        self.memory_y = grows([], tf.int32, "memory_y")
        self.memory_tid = grows([], tf.int32, "memory_tid")

    def checkpoint_parts(self) -> dict[str, object]:
        """Adds the memory."""
        return {**super().checkpoint_parts(), "memory_x": self.memory_x,
                "memory_y": self.memory_y, "memory_tid": self.memory_tid}

    def conditional_replay(self) -> bool:
        """A stored sample keeps the task it came from."""
        return True

    def after_task(self, t: int, data: TaskData) -> None:
        """Store ``budget`` samples per class of task ``t``."""
        super().after_task(t, data)
        task = self.protocol.task(t)
        rng = np.random.RandomState([self.config.seed, 7919, t])
        keep = []
        for label in np.unique(task.y_train):
            where = np.flatnonzero(task.y_train == label)
            keep.append(rng.choice(where, min(self.config.budget, len(where)), replace=False))
        keep = np.sort(np.concatenate(keep))
        for var, new in ((self.memory_x, task.x_train[keep]),
                         (self.memory_y, task.y_train[keep].astype(np.int32)),
                         (self.memory_tid, np.full(len(keep), t, np.int32))):
            var.assign(tf.concat([var, new], 0))

    def stored(self) -> dict[str, np.ndarray]:
        """The memory's samples as stored: x, y (labels) and tid (tasks)."""
        return {"x": self.memory_x.numpy(), "y": self.memory_y.numpy(),
                "tid": self.memory_tid.numpy()}

    def draw(self, ctx: StepContext, plan: Plan) -> MemoryDraws:
        """Which stored samples to replay: uniform over the memory (drawn in the first task
        too, where the memory is empty and nothing is replayed)."""
        size = tf.shape(self.memory_y)[0]
        return MemoryDraws(idx=self.rng.uniform([plan.n_replay], 0, size, tf.int32))

    def replay_batch(self, batch: Batch, draws: MemoryDraws, ctx: StepContext,
                     plan: Plan) -> Replay:
        """The drawn stored samples with their labels (or, with ``--distill``, the previous
        model's soft targets) over their own task's units."""
        x = self.preprocess(tf.gather(self.memory_x, draws.idx))
        tid = tf.gather(self.memory_tid, draws.idx)
        if self.config.distill:
            return self.label_replay(x, tid, ctx)
        y = tf.gather(self.memory_y, draws.idx)
        return Replay(x=x, tid=tid, targets=HardTargets(y, tf.gather(ctx.active, tid)))
