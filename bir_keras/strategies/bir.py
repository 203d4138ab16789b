"""Brain-inspired replay (BI-R, method.md 4.3): generative replay through the classifier's
own feedback connections (RtF: the classifier's hidden layers are the VAE's encoder, a
softmax layer reads its last one, the decoder is the feedback path), with the components
that ``GenerativeReplay`` gives its generator: a mixture prior with a mode per class,
decoder gates chosen by the class, distillation, and (on CIFAR) internal replay of the
frozen conv layers' features. ``--brain_inspired`` and every variant with ``--feedback``
run here; one loss trains the whole model."""

from __future__ import annotations

import tensorflow as tf

from bir_keras.models.classifier import HardTargets
from bir_keras.models.vae import RtFClassifier
from bir_keras.strategies.base import Plan
from bir_keras.strategies.generative import GenerativeReplay
from bir_keras.strategies.replay import ReplayTrainer


class BrainInspiredReplay(GenerativeReplay):
    """The model is classifier and generator at once; its frozen copy replays and labels."""

    generator = None   # no separate generator

    def make_classifier(self) -> RtFClassifier:
        """The combined classifier-generator."""
        c, p = self.config, self.protocol
        units = [c.fc_units] * c.fc_layers
        return RtFClassifier(p.input_shape, p.num_outputs, units, salt=2, **self.vae_settings(units))

    def build_models(self) -> None:
        """The live RtF model and its frozen copy (no separate generator)."""
        ReplayTrainer.build_models(self)

    def networks(self):
        """The RtF model."""
        return {"model": self.model}

    def checkpoint_parts(self) -> dict[str, object]:
        """The replay trainer's parts (the model holds the generator)."""
        return ReplayTrainer.checkpoint_parts(self)

    @property
    def live_generator(self) -> RtFClassifier:
        """The RtF model being trained."""
        return self.model

    @property
    def replay_source(self) -> RtFClassifier:
        """The frozen RtF model replays (and labels)."""
        return self.prev_model

    def protected_variables(self) -> list:
        """Regularisers (BI-R + SI, method.md 4.3) protect the encoder and classifier, not
        the decoder or the prior."""
        m = self.model
        layers = ([m.trunk] if m.trunk is not None else []) + [m.encoder, m.head]
        return [v for layer in layers for v in layer.trainable_variables]

    def losses(self, batch, replay, draws, ctx, plan):
        """One loss: classification + reconstruction + latent, on the current batch and on
        replay, weighted 1/t and 1 - 1/t (method.md 2)."""
        targets = HardTargets(batch.y, tf.gather(ctx.active, batch.tid))
        out = self.vae_losses(self.model, batch, replay, draws, ctx, plan, targets)
        cur = out["class_current"] + out["recon_current"] + out["latent_current"]
        if replay is None:
            out["total"] = cur
        else:
            rep = out["class_replay"] + out["recon_replay"] + out["latent_replay"]
            out["total"] = ctx.w_current * cur + ctx.w_replay * rep
        return out

    def loss_names(self, plan: Plan) -> list[str]:
        """Classification terms, then reconstruction and latent terms."""
        names = ReplayTrainer.loss_names(self, plan)
        extra = ["recon_current", "latent_current"]
        if plan.replay:
            extra += ["recon_replay", "latent_replay"]
        return names[:1] + extra + names[1:]

    def optim_groups(self, plan: Plan):
        """One optimiser for the whole model."""
        return ReplayTrainer.optim_groups(self, plan)

    def iterations(self, t: int) -> int:
        """``--iters`` (there is no separate generator)."""
        return self.config.iters

    def plan_for_iteration(self, plan: Plan, i: int) -> Plan:
        """The same plan throughout."""
        return plan
