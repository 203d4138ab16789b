"""Brain-inspired replay (BI-R, method.md 4.3): generative replay through the classifier's
own feedback connections (RtF: the classifier's hidden layers are the VAE's encoder, a
softmax layer reads its last one, the decoder is the feedback path), with the components
it shares with GR's generator (``vae_replay.VAEReplay``): a mixture prior with a mode per
class, decoder gates chosen by the class, distillation, and (on CIFAR) internal replay of
the frozen conv layers' features. ``--brain_inspired`` and every variant with
``--feedback`` run here; one loss trains the whole model."""

from __future__ import annotations

import tensorflow as tf

from bir_keras.models.classifier import HardTargets
from bir_keras.models.vae import RtFClassifier
from bir_keras.strategies.generative.vae_replay import VAEReplay
from bir_keras.strategies.records import weigh


class BrainInspiredReplay(VAEReplay):
    """The model is classifier and generator at once; its frozen copy replays and labels."""

    def make_classifier(self) -> RtFClassifier:
        """The combined classifier-generator (its frozen copy is built the same way)."""
        c, p = self.config, self.protocol
        units = [c.fc_units] * c.fc_layers
        return self.pretrained(RtFClassifier(p.input_shape, p.num_outputs, units, salt=2,
                                             **self.vae_settings(units)))

    @property
    def live_generator(self) -> RtFClassifier:
        """The RtF model being trained."""
        return self.model

    @property
    def replay_source(self) -> RtFClassifier:
        """Its frozen copy replays (and labels)."""
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
        out = self.vae_losses(self.model, batch, replay, draws, plan, targets)
        out["total"] = weigh(
            ctx, out["class_current"] + out["recon_current"] + out["latent_current"],
            None if replay is None
            else out["class_replay"] + out["recon_replay"] + out["latent_replay"])
        return out
