"""Learning without Forgetting: replay the current batch with soft targets from the model
frozen at the end of the previous task (method.md 3)."""

from __future__ import annotations

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

    def draw(self, data: dict, ctx: dict) -> dict[str, tf.Tensor]:
        """Adds the replayed samples' modes, spread uniformly over the previous tasks."""
        draws = super().draw(data, ctx)
        cpt = self.protocol.classes_per_task
        n_prev = tf.maximum(ctx["task"], 1) * cpt
        draws["r_modes"] = self.rng.uniform([self.config.batch_replay], 0, n_prev, tf.int32)
        return draws


class LwF(ReplayTrainer):
    """Replays the current inputs, labelled (soft targets) by the previous model."""

    def replay_batch(self, batch: dict, draws: dict, ctx: dict) -> dict:
        """The current batch, with targets from the frozen model over its units."""
        x = batch["x"]
        tid = draws["r_modes"] // self.protocol.classes_per_task
        return {"x": x, "tid": tid, **self.label_replay(self.prev_model, x, tid, ctx)}
