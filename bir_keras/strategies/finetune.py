"""Fine-tuning ("None", method.md 3): the classifier trained on each task in turn, with
nothing against forgetting. Every classifier method builds on its loss."""

from __future__ import annotations

import tensorflow as tf

from bir_keras.models.classifier import HardTargets
from bir_keras.strategies.base import Batch, Draws, Plan, StepContext, Trainer


class FineTuning(Trainer):
    """Cross-entropy on the current batch over each sample's active units; with replay
    (subclasses), plus the replayed samples' loss, weighted 1/t and 1 - 1/t (method.md 2)."""

    def losses(self, batch: Batch, replay, draws: Draws, ctx: StepContext,
               plan: Plan) -> dict[str, tf.Tensor]:
        """``class_current`` (and ``class_replay``) from the model's ``loss_terms``."""
        current = self.model.loss_terms(batch.x, HardTargets(batch.y, tf.gather(ctx.active, batch.tid)),
                                        batch.tid, training=True)
        out = {"class_current": tf.nn.compute_average_loss(current["class"],
                                                           global_batch_size=self.config.batch)}
        if replay is None:
            out["total"] = out["class_current"]
            return out
        rep = self.model.loss_terms(replay.x, replay.targets, replay.tid, training=True)
        out["class_replay"] = tf.nn.compute_average_loss(rep["class"], global_batch_size=plan.n_replay)
        out["total"] = ctx.w_current * out["class_current"] + ctx.w_replay * out["class_replay"]
        return out

    def loss_names(self, plan: Plan) -> list[str]:
        """total, class_current (, class_replay)."""
        return ["total", "class_current"] + (["class_replay"] if plan.replay else [])
