"""Learning without Forgetting: replay the current batch with soft targets from the model
frozen at the end of the previous task (method.md 3)."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from bir_keras.strategies.base import Trainer


class ReplayTrainer(Trainer):
    """Shared by methods that replay: a frozen copy of the model taken before each task,
    replayed samples spread over the previous tasks, and the 1/t, 1 - 1/t weighting."""

    uses_replay = True

    def build_models(self) -> None:
        """The live model plus a frozen copy of it."""
        super().build_models()
        self.prev_model = self.make_model_copy()
        self.prev_model.trainable = False

    def make_model_copy(self):
        """A second instance of the main model's architecture."""
        return self.make_classifier()

    def before_task(self, t: int) -> None:
        """Freeze a copy of the model as it is at the end of the previous task."""
        if t > 0:
            self.prev_model.set_weights(self.model.get_weights())
        super().before_task(t)

    def per_task_replay(self) -> bool:
        """Whether replay is drawn per previous task (a conditional generator in Task-IL)."""
        return False

    def step_context(self, t: int) -> dict:
        """Adds how many samples are replayed per iteration and, when replay is drawn per
        previous task, the task of each of them: ceil(batch_replay / (t - 1)) per previous
        task (the authors' train.py, ``batch_size_replay_to_use``; fidelity.md item 14),
        rounded up to a multiple of the replicas so that every replica gets a share."""
        ctx = super().step_context(t)
        if t > 0 and self.per_task_replay():
            m = math.ceil(self.config.batch_replay / t)
            m = math.ceil(m / self.replicas) * self.replicas if t * m % self.replicas else m
            ctx["replay_tasks"] = tf.constant(np.repeat(np.arange(t), m), tf.int32)
            ctx["n_replay"] = t * m
        return ctx

    def draw(self, data: dict, ctx: dict) -> dict[str, tf.Tensor]:
        """Adds each replayed sample's mode (output unit) and task, as the authors' ``sample``:
        Class-IL and Task-IL draw a class of the previous tasks uniformly (its task follows);
        Domain-IL draws the class among all and, independently, a previous task (used by
        task gates; fidelity.md item 12); per-task replay has fixed tasks."""
        draws = super().draw(data, ctx)
        cpt = self.protocol.classes_per_task
        n = ctx["n_replay"]
        prev = tf.maximum(ctx["task"], 1)
        if "replay_tasks" in ctx:
            tasks = ctx["replay_tasks"]
            modes = tasks * cpt + self.rng.uniform([n], 0, cpt, tf.int32)
        elif self.protocol.scenario == "domain":
            modes = self.rng.uniform([n], 0, cpt, tf.int32)
            tasks = self.rng.uniform([n], 0, prev, tf.int32)
        else:
            modes = self.rng.uniform([n], 0, prev * cpt, tf.int32)
            tasks = modes // cpt
        draws["r_modes"], draws["r_tasks"] = modes, tasks
        return draws


class LwF(ReplayTrainer):
    """Replays the current inputs, labelled (soft targets) by the previous model."""

    def replay_batch(self, batch: dict, draws: dict, ctx: dict) -> dict:
        """The current batch, with targets from the frozen model over its units."""
        x = batch["x"]
        tid = draws["r_tasks"]
        return {"x": x, "tid": tid, **self.label_replay(self.prev_model, x, tid, ctx)}
