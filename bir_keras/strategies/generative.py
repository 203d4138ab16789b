"""Generative replay (GR, method.md 4.1) and brain-inspired replay (BI-R, 4.3).

One class covers both, so the paper's additions and ablations (Fig. 8) are settings of
the same code: ``feedback`` (RtF: the generator is the classifier's own VAE),
``prior='gmm'`` (conditional replay), ``dg_gates`` (gating based on internal context),
internal replay (the protocol's inputs are frozen conv features) and ``distill``.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from bir_keras.models.classifier import masked_cross_entropy
from bir_keras.models.layers import make_unit_masks
from bir_keras.models.vae import VAE, RtFClassifier
from bir_keras.strategies.lwf import ReplayTrainer


class GenerativeReplay(ReplayTrainer):
    """Replays samples of a frozen copy of the generator, labelled by the frozen classifier."""

    # -- models ----------------------------------------------------------------------
    def _vae_kwargs(self, units: list[int]) -> dict:
        c, p = self.config, self.protocol
        gates = None
        n_ctx = p.num_modes if c.dg_type == "class" else p.capacity
        mode_to_ctx = (np.arange(p.num_modes) if c.dg_type == "class"
                       else np.arange(p.num_modes) // p.classes_per_task)
        if c.dg_gates and c.dg_prop > 0:
            # method.md 4.3.3: a fixed random mask per class (or task) on every decoder layer
            gates = [make_unit_masks(n_ctx, u, c.dg_prop, seed=c.seed + 2000 + i)
                     for i, u in enumerate(reversed(units))]
        return dict(z_dim=c.z_dim, recon_loss=p.recon_loss, prior=c.prior,
                    num_modes=p.num_modes, gate_masks=gates, mode_to_context=mode_to_ctx,
                    conv=p.conv and not p.features)

    def make_generator(self) -> VAE:
        """The separate generator of standard GR (hidden sizes ``g_fc_units``)."""
        units = [self.config.g_fc_units] * self.config.fc_layers
        return VAE(self.protocol.input_shape, units, **self._vae_kwargs(units))

    def make_classifier(self):
        """The classifier, or with RtF the combined classifier-generator."""
        c, p = self.config, self.protocol
        if not c.feedback:
            return super().make_classifier()
        units = [c.fc_units] * c.fc_layers
        return RtFClassifier(p.input_shape, p.num_outputs, units, **self._vae_kwargs(units))

    def build_models(self) -> None:
        """Live and frozen classifier; with separate GR also live and frozen generators."""
        super().build_models()
        self.generator = self.prev_generator = None
        if not self.config.feedback:
            self.generator = self.make_generator()
            self.prev_generator = self.make_generator()
            self.prev_generator.trainable = False
            self.gen_optimizer = keras.optimizers.Adam(self.config.lr_gen, beta_1=0.9, beta_2=0.999)
            self.gen_optimizer.build(self.generator.trainable_variables)

    def protected_variables(self) -> list:
        """With RtF, regularisers protect the encoder and classifier only (BI-R + SI,
        method.md 4.3), not the decoder or the prior."""
        m = self.model
        if not isinstance(m, RtFClassifier):
            return super().protected_variables()
        layers = ([m.trunk] if m.trunk is not None else []) + [m.encoder, m.head]
        return [v for layer in layers for v in layer.trainable_variables]

    @property
    def replay_source(self) -> VAE:
        """The frozen generator that replays: the previous RtF model or previous VAE."""
        return self.prev_model if self.config.feedback else self.prev_generator

    def before_task(self, t: int) -> None:
        """Freeze copies; with ``--reinit`` then re-initialise the live networks (Fig. 4)."""
        if t > 0 and self.generator is not None:
            self.prev_generator.set_weights(self.generator.get_weights())
        super().before_task(t)
        if t > 0 and self.config.reinit:
            self._reinitialise()

    def _reinitialise(self) -> None:
        with self.strategy.scope():
            self.model.set_weights(self.make_classifier().get_weights())
            for v in self.optimizer.variables:
                v.assign(tf.zeros_like(v))
            if self.generator is not None:
                self.generator.set_weights(self.make_generator().get_weights())
                for v in self.gen_optimizer.variables:
                    v.assign(tf.zeros_like(v))
        for reg in self.regularizers:
            reg.before_task(-1)

    # -- the step --------------------------------------------------------------------
    def draw(self, data: dict, ctx: dict) -> dict[str, tf.Tensor]:
        """Adds the noise of the encoders (current and replay) and of the prior."""
        draws = super().draw(data, ctx)
        z = self.config.z_dim
        draws["eps"] = self.rng.normal([self.config.batch, z])
        draws["r_eps"] = self.rng.normal([self.config.batch_replay, z])
        draws["r_eps_enc"] = self.rng.normal([self.config.batch_replay, z])
        return draws

    def _mode_weights(self, probs: tf.Tensor, tid: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Soft targets over output units -> (weights, candidate modes) for the mixture prior.

        In Task-IL and Domain-IL only the sample's task's modes can carry weight, so the
        mixture runs over those ``classes_per_task`` modes; in Class-IL over all modes."""
        p = self.protocol
        cpt = p.classes_per_task
        if p.scenario == "class":
            return probs, None
        ids = tid[:, None] * cpt + tf.range(cpt)[None, :]
        weights = tf.gather(probs, ids, batch_dims=1) if p.scenario == "task" else probs
        return weights, ids

    def replay_batch(self, batch: dict, draws: dict, ctx: dict) -> dict:
        """Generate for modes of the previous tasks, label with the frozen classifier."""
        modes = draws["r_modes"]
        x = tf.stop_gradient(self.replay_source.generate(modes, draws["r_eps"]))
        tid = modes // self.protocol.classes_per_task
        labels = self.label_replay(self.prev_model, x, tid, ctx)
        weights, ids = self._mode_weights(labels["probs"], tid)
        out = {"x": x, "tid": tid, "modes": modes, "mode_probs": weights, **labels}
        if ids is not None:
            out["mode_ids"] = ids
        return out

    def _vae_terms(self, vae: VAE, batch: dict, replay: dict | None, draws: dict, ctx: dict,
                   prefix: str) -> tuple[dict, tf.Tensor | None, tf.Tensor | None]:
        """Reconstruction and latent terms on current data (label's mode and gate) and on
        replay (generated mode's gate, prior weighted by the soft targets)."""
        c = self.config
        cur_modes = batch["tid"] * self.protocol.classes_per_task + batch["y"] % \
            self.protocol.classes_per_task
        recon, latent, h = vae.losses_for(batch["x"], draws["eps"], modes=cur_modes)
        out = {f"{prefix}recon_current": tf.nn.compute_average_loss(recon, global_batch_size=c.batch),
               f"{prefix}latent_current": tf.nn.compute_average_loss(latent, global_batch_size=c.batch)}
        h_r = None
        if replay is not None:
            recon_r, latent_r, h_r = vae.losses_for(
                replay["x"], draws["r_eps_enc"], modes=None, mode_probs=replay["mode_probs"],
                gate_modes=replay["modes"], mode_ids=replay.get("mode_ids"))
            out[f"{prefix}recon_replay"] = tf.nn.compute_average_loss(
                recon_r, global_batch_size=c.batch_replay)
            out[f"{prefix}latent_replay"] = tf.nn.compute_average_loss(
                latent_r, global_batch_size=c.batch_replay)
        return out, h, h_r

    def model_losses(self, batch, replay, draws, ctx):
        """RtF: one loss (classification + reconstruction + latent); GR: classifier loss and
        a separate generator loss; both with the 1/t, 1 - 1/t weighting (method.md 2)."""
        c = self.config
        if not c.feedback:
            out = super().model_losses(batch, replay, draws, ctx)
            gen, _, _ = self._vae_terms(self.generator, batch, replay, draws, ctx, "gen_")
            cur = gen["gen_recon_current"] + gen["gen_latent_current"]
            if replay is not None:
                rep = gen["gen_recon_replay"] + gen["gen_latent_replay"]
                gen["gen_total"] = ctx["w_current"] * cur + ctx["w_replay"] * rep
            else:
                gen["gen_total"] = cur
            out.update(gen)
            return out
        m = self.model
        out, h, h_r = self._vae_terms(m, batch, replay, draws, ctx, "")
        ce = masked_cross_entropy(m.head(h), batch["y"], tf.gather(ctx["active"], batch["tid"]))
        out["class_current"] = tf.nn.compute_average_loss(ce, global_batch_size=c.batch)
        cur = out["class_current"] + out["recon_current"] + out["latent_current"]
        if replay is not None:
            out["class_replay"] = self.replay_class_loss(m.head(h_r), replay, ctx)
            rep = out["class_replay"] + out["recon_replay"] + out["latent_replay"]
            out["total"] = ctx["w_current"] * cur + ctx["w_replay"] * rep
        else:
            out["total"] = cur
        return out

    def loss_names(self, ctx: dict) -> list[str]:
        """Classifier terms, then reconstruction/latent terms (of the generator for GR)."""
        names = super().loss_names(ctx)
        prefix = "" if self.config.feedback else "gen_"
        extra = [f"{prefix}recon_current", f"{prefix}latent_current"]
        if ctx["replay"]:
            extra += [f"{prefix}recon_replay", f"{prefix}latent_replay"]
        if not self.config.feedback:
            extra = ["gen_total"] + extra
        return names[:1] + extra + names[1:]

    def optim_groups(self, ctx: dict):
        """The classifier (or RtF model) and, for GR, the generator with its own optimiser."""
        groups = []
        if ctx.get("train_classifier", True):
            groups += super().optim_groups(ctx)
        if self.generator is not None and ctx.get("train_generator", True):
            groups.append(("gen_total", self.gen_optimizer,
                           list(self.generator.trainable_variables), False))
        return groups

    def iterations(self, t: int) -> int:
        """max(iters, g_iters) when the generator is separate (its own ``--g_iters``)."""
        if self.config.feedback:
            return self.config.iters
        return max(self.config.iters, self.config.g_iters)

    def ctx_for_iteration(self, ctx: dict, i: int) -> dict:
        """Stop the classifier after ``iters`` and the generator after ``g_iters``."""
        if self.config.feedback:
            return ctx
        train_c, train_g = i < self.config.iters, i < self.config.g_iters
        if train_c and train_g:
            return ctx
        return {**ctx, "train_classifier": train_c, "train_generator": train_g}
