"""Generative replay (GR, method.md 4.1) and brain-inspired replay (BI-R, 4.3).

One class covers both, so the paper's additions and ablations (Fig. 8) are settings of
the same code: ``feedback`` (RtF: the generator is the classifier's own VAE),
``prior='gmm'`` (conditional replay), ``dg_gates`` (gating based on internal context),
internal replay (the protocol's inputs are frozen conv features) and ``distill``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bir_keras.models.classifier import masked_cross_entropy
from bir_keras.models.layers import make_gate_masks, torch_uniform_init
from bir_keras.models.vae import VAE, RtFClassifier
from bir_keras.strategies.base import make_adam
from bir_keras.strategies.lwf import ReplayTrainer


class GenerativeReplay(ReplayTrainer):
    """Replays samples of a frozen copy of the generator, labelled by the frozen classifier."""

    # -- models ----------------------------------------------------------------------
    def _vae_kwargs(self, units: list[int]) -> dict:
        c, p = self.config, self.protocol
        gates = None
        n_ctx = p.num_modes if c.dg_type == "class" else p.capacity
        if c.dg_type == "class":
            mode_to_gate = np.arange(p.num_modes)
        elif p.scenario == "domain":
            # a mode (digit) belongs to no task: unless told, generate with task 1's gate
            mode_to_gate = np.zeros(p.num_modes, np.int32)
        else:
            mode_to_gate = np.arange(p.num_modes) // p.classes_per_task
        if c.dg_gates and c.dg_prop > 0:
            # method.md 4.3.3: a fixed random mask per class (or task) on every decoder
            # hidden layer; the authors' code has no gates when the proportion is 0
            gates = [make_gate_masks(n_ctx, u, c.dg_prop, seed=c.seed + 2000 + i)
                     for i, u in enumerate(reversed(units))]
        return dict(z_dim=c.z_dim, recon_loss=p.recon_loss, prior=c.prior,
                    num_modes=p.num_modes, gate_masks=gates, mode_to_gate=mode_to_gate,
                    conv=p.conv and not p.features, latent_divisor=p.input_pixels or None,
                    seed=c.seed)

    def make_generator(self) -> VAE:
        """The separate generator of standard GR (hidden sizes ``g_fc_units``)."""
        units = [self.config.g_fc_units] * self.config.fc_layers
        return VAE(self.protocol.input_shape, units, salt=3, **self._vae_kwargs(units))

    def make_classifier(self):
        """The classifier, or with RtF the combined classifier-generator."""
        c, p = self.config, self.protocol
        if not c.feedback:
            return super().make_classifier()
        units = [c.fc_units] * c.fc_layers
        return RtFClassifier(p.input_shape, p.num_outputs, units, salt=2, **self._vae_kwargs(units))

    def build_models(self) -> None:
        """Live and frozen classifier; with separate GR also live and frozen generators."""
        super().build_models()
        self.generator = self.prev_generator = None
        if not self.config.feedback:
            self.generator = self.make_generator()
            self.prev_generator = self.make_generator()
            self.prev_generator.trainable = False
            self.gen_optimizer = make_adam(self.config.lr_gen)
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
        """The authors' ``init_params`` before each task: every dense and (de)conv layer
        re-drawn (PyTorch's default initialisation), the pre-trained conv layers kept, the
        mixture prior kept (it is not a module with ``reset_parameters``) and the
        optimisers' state kept (fidelity.md item 7)."""
        t = int(self.tasks_done.numpy())
        for salt, m in ((10, self.model), (20, self.generator)):
            if m is None:
                continue
            for part in m._flatten_layers(include_self=False, recursive=False):
                if part is not getattr(m, "trunk", None):
                    torch_uniform_init(part, self.config.seed, salt=salt + t)
        for reg in self.regularizers:
            reg.before_task(-1)

    # -- the step --------------------------------------------------------------------
    def draw(self, data: dict, ctx: dict) -> dict[str, tf.Tensor]:
        """Adds the noise of the encoders (current and replay) and of the prior."""
        draws = super().draw(data, ctx)
        z, n = self.config.z_dim, ctx["n_replay"]
        draws["eps"] = self.rng.normal([self.config.batch, z])
        draws["r_eps"] = self.rng.normal([n, z])
        draws["r_eps_enc"] = self.rng.normal([n, z])
        return draws

    def per_task_replay(self) -> bool:
        """A conditional generator in Task-IL generates per previous task (the authors'
        train.py: ``conditional_gen and scenario == "task"``; fidelity.md item 14)."""
        c = self.config
        conditional = c.prior == "gmm" or bool(c.dg_gates and c.dg_prop > 0)
        return self.protocol.scenario == "task" and conditional

    def _mode_weights(self, probs: tf.Tensor, tid: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Soft targets over output units -> (weights, candidate modes) for the mixture prior.

        In Task-IL only the sample's task's modes can carry weight, so the mixture runs
        over those ``classes_per_task`` modes; otherwise over all modes."""
        if self.protocol.scenario != "task":
            return probs, None
        cpt = self.protocol.classes_per_task
        ids = tid[:, None] * cpt + tf.range(cpt)[None, :]
        return tf.gather(probs, ids, batch_dims=1), ids

    def _gate(self, vae: VAE, modes: tf.Tensor, tasks: tf.Tensor) -> tf.Tensor | None:
        """One-hot decoder gate of a chosen class (or task)."""
        return vae.gate_for(tasks if self.config.dg_type == "task" else modes)

    def replay_batch(self, batch: dict, draws: dict, ctx: dict) -> dict:
        """Generate for the drawn modes (each with its own gate), label with the frozen
        classifier, and say what the generator trains on for each replayed sample
        (the authors' ``train_a_batch``):

        * prior: with distillation the mixture of the previous classes' modes weighted by
          softmax(old scores / T); with hard targets the predicted class's mode (item 11);
        * gate: the predicted class's, soft (softmax(old scores / T) @ masks) with
          distillation; task gates keep the task the sample was generated for (item 13)."""
        modes, tasks = draws["r_modes"], draws["r_tasks"]
        src = self.replay_source
        x = tf.stop_gradient(src.generate(modes, draws["r_eps"], self._gate(src, modes, tasks)))
        labels = self.label_replay(self.prev_model, x, tasks, ctx)
        out = {"x": x, "tid": tasks, **labels}
        if self.replay_all_previous_tasks():
            return out  # unconditional: standard prior, no gates
        if self.config.distill:
            out["mode_probs"], out["mode_ids"] = self._mode_weights(labels["soft"], tasks)
            class_gate = labels["soft"]
        else:
            out["prior_modes"] = labels["hard"]
            class_gate = tf.one_hot(labels["hard"], self.protocol.num_modes)
        out["gate"] = tf.one_hot(tasks, self.protocol.capacity) \
            if self.config.dg_type == "task" else class_gate
        return out

    def _vae_terms(self, vae: VAE, batch: dict, replay: dict | None, draws: dict, ctx: dict,
                   prefix: str) -> tuple[dict, tf.Tensor | None, tf.Tensor | None]:
        """Reconstruction and latent terms on current data (the label's mode and gate) and
        on replay (``replay_batch`` says which prior target and gate)."""
        c = self.config
        recon, latent, h = vae.losses_for(batch["x"], draws["eps"], modes=batch["y"],
                                          gate=self._gate(vae, batch["y"], batch["tid"]))
        out = {f"{prefix}recon_current": tf.nn.compute_average_loss(recon, global_batch_size=c.batch),
               f"{prefix}latent_current": tf.nn.compute_average_loss(latent, global_batch_size=c.batch)}
        h_r = None
        if replay is not None:
            gate = replay.get("gate") if vae.gate_masks is not None else None
            recon_r, latent_r, h_r = vae.losses_for(
                replay["x"], draws["r_eps_enc"], modes=replay.get("prior_modes"),
                mode_probs=replay.get("mode_probs"), gate=gate, mode_ids=replay.get("mode_ids"))
            n = ctx["n_replay"]
            out[f"{prefix}recon_replay"] = tf.nn.compute_average_loss(recon_r, global_batch_size=n)
            out[f"{prefix}latent_replay"] = tf.nn.compute_average_loss(latent_r, global_batch_size=n)
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
