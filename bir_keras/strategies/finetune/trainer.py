"""Fine-tuning's Trainer (its declaration: ``bir_keras.strategies.finetune``): the classifier
trained on each task in turn, with nothing against forgetting. Every classifier method
builds on its network and its loss."""

from __future__ import annotations

import tensorflow as tf

from bir_keras.models.classifier import Classifier, HardTargets
from bir_keras.models.layers import make_unit_masks
from bir_keras.strategies.base import Trainer
from bir_keras.strategies.records import Batch, Plan, StepContext, weigh


class FineTuning(Trainer):
    """Cross-entropy on the current batch over each sample's active units; with replay
    (subclasses), plus the replayed samples' loss, weighted 1/t and 1 - 1/t (method.md 2)."""

    def build_models(self) -> None:
        """The classifier."""
        self.model = self.make_classifier()

    def make_classifier(self) -> Classifier:
        """The classifier of this protocol, with XdG masks when asked for (method.md 3: per
        task a fixed random mask over every hidden layer's units)."""
        c, p = self.config, self.protocol
        units = [c.fc_units] * c.fc_layers
        xdg = None
        if c.xdg:
            xdg = [make_unit_masks(p.capacity, u, c.xdg_prop, seed=c.seed + 1000 + i)
                   for i, u in enumerate(units)]
        return self.pretrained(Classifier(p.input_shape, p.num_outputs, units,
                                          conv=p.conv and not p.features, xdg_masks=xdg,
                                          seed=c.seed))

    def losses(self, batch: Batch, replay, draws, ctx: StepContext,
               plan: Plan) -> dict[str, tf.Tensor]:
        """``class_current`` (and ``class_replay``) from the model's ``loss_terms``."""
        current = self.model.loss_terms(batch.x, HardTargets(batch.y, tf.gather(ctx.active, batch.tid)),
                                        batch.tid, training=True)
        out = {"class_current": tf.nn.compute_average_loss(current["class"],
                                                           global_batch_size=self.config.batch)}
        if replay is not None:
            rep = self.model.loss_terms(replay.x, replay.targets, replay.tid, training=True)
            out["class_replay"] = tf.nn.compute_average_loss(rep["class"],
                                                             global_batch_size=plan.n_replay)
        out["total"] = weigh(ctx, out["class_current"], out.get("class_replay"))
        return out
