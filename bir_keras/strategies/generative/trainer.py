"""Generative replay's Trainer (GR, method.md 4.1; its declaration:
``bir_keras.strategies.generative``): a separate VAE, trained beside the classifier,
generates the replay; frozen copies of it and of the classifier make and label the samples.

BI-R's components other than replay through feedback are settings of the generator
(``prior='gmm'``: conditional replay; ``dg_gates``: gates chosen by the class or task;
``distill``: soft targets), so the ablations of Fig. 8 without RtF run here. What GR
shares with BI-R (the replayed batch, the VAE's losses, gates, ``--reinit``) is
``vae_replay.VAEReplay``; GR adds the separate generator, its optimiser and its own
``--g_iters``.
"""

from __future__ import annotations

from bir_keras.models.vae import VAE
from bir_keras.strategies.execution import make_adam
from bir_keras.strategies.generative.vae_replay import VAEReplay
from bir_keras.strategies.records import OptimGroup, Plan, weigh


class GenerativeReplay(VAEReplay):
    """A classifier and a separate generator, each with its own optimiser and loss."""

    def make_generator(self) -> VAE:
        """The separate generator (hidden sizes ``g_fc_units``)."""
        units = [self.config.g_fc_units] * self.config.fc_layers
        return self.pretrained(VAE(self.protocol.input_shape, units, salt=3,
                                   **self.vae_settings(units)))

    def build_models(self) -> None:
        """Live and frozen classifier, live and frozen generator, the generator's optimiser."""
        super().build_models()
        self.generator = self.make_generator()
        self.prev_generator = self.make_generator()
        self.prev_generator.trainable = False
        self.gen_optimizer = make_adam(self.config.lr_gen)
        self.gen_optimizer.build(self.generator.trainable_variables)

    def networks(self):
        """The classifier and the generator."""
        return {**super().networks(), "generator": self.generator}

    def checkpoint_parts(self) -> dict[str, object]:
        """Adds the generator, its frozen copy and its optimiser."""
        return {**super().checkpoint_parts(), "generator": self.generator,
                "prev_generator": self.prev_generator, "gen_optimizer": self.gen_optimizer}

    @property
    def live_generator(self) -> VAE:
        """The separate generator."""
        return self.generator

    @property
    def replay_source(self) -> VAE:
        """Its frozen copy."""
        return self.prev_generator

    def before_task(self, t: int) -> None:
        """Freeze a copy of the generator too."""
        if t > 0:
            self.prev_generator.set_weights(self.generator.get_weights())
        super().before_task(t)

    def losses(self, batch, replay, draws, ctx, plan):
        """The classifier's loss (``FineTuning``) and the generator's, ``gen_total``:
        reconstruction + latent, on the current batch and on replay, weighted 1/t and
        1 - 1/t (method.md 2)."""
        out = super().losses(batch, replay, draws, ctx, plan)
        gen = {f"gen_{k}": v for k, v in
               self.vae_losses(self.generator, batch, replay, draws, plan).items()}
        gen["gen_total"] = weigh(
            ctx, gen["gen_recon_current"] + gen["gen_latent_current"],
            None if replay is None else gen["gen_recon_replay"] + gen["gen_latent_replay"])
        return {**out, **gen}

    def optim_groups(self) -> dict[str, OptimGroup]:
        """The classifier's and the generator's (the regularisers protect the classifier)."""
        return {**super().optim_groups(),
                "generator": OptimGroup(self.gen_optimizer,
                                        list(self.generator.trainable_variables),
                                        loss="gen_total", regularized=False)}

    def iterations(self, t: int) -> int:
        """max(iters, g_iters): the generator has its own ``--g_iters``."""
        return max(self.config.iters, self.config.g_iters)

    def plan_for_iteration(self, plan: Plan, i: int) -> Plan:
        """The classifier trains for ``iters`` iterations, the generator for ``g_iters``."""
        return plan._replace(groups=tuple(name for name, n in (("classifier", self.config.iters),
                                                               ("generator", self.config.g_iters))
                                          if i < n))
