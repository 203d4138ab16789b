"""Generative replay (GR, method.md 4.1): a separate VAE, trained beside the classifier,
generates the replay; a frozen copy of it and of the classifier make and label the samples.

BI-R's components other than replay through feedback are settings of the generator here
(``prior='gmm'``: conditional replay; ``dg_gates``: gates chosen by the class or task;
``distill``: soft targets), so the ablations of Fig. 8 without RtF run in this class; with
RtF (``--feedback``, as ``--brain_inspired``) the classifier is the generator
(``bir.BrainInspiredReplay``, a subclass).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bir_keras.models.layers import make_gate_masks, torch_uniform_init
from bir_keras.models.vae import VAE
from bir_keras.strategies.base import Batch, Draws, Plan, StepContext, TaskData, make_adam
from bir_keras.strategies.replay import Replay, ReplayTrainer


class GenerativeReplay(ReplayTrainer):
    """Replays samples of a frozen copy of the generator, labelled by the frozen classifier."""

    # -- models ----------------------------------------------------------------------
    def vae_settings(self, units: list[int]) -> dict:
        """The VAE's keyword arguments: prior, decoder gates, latent divisor, seed."""
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
        """The separate generator (hidden sizes ``g_fc_units``)."""
        units = [self.config.g_fc_units] * self.config.fc_layers
        return VAE(self.protocol.input_shape, units, salt=3, **self.vae_settings(units))

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
        """The generator being trained."""
        return self.generator

    @property
    def replay_source(self) -> VAE:
        """The frozen generator that replays."""
        return self.prev_generator

    @property
    def can_sample(self) -> bool:
        """GR samples from its generator."""
        return True

    def sample(self, modes: tf.Tensor, tasks: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        """The live generator's samples of the given modes, each with its mode's gate or,
        with gates per task, its task's."""
        gen = self.live_generator
        gate = gen.gate_for(tasks) if self.config.dg_type == "task" else None
        return gen.generate(modes, eps, gate)

    def before_task(self, t: int) -> None:
        """Freeze copies; with ``--reinit`` then re-initialise the live networks (Fig. 4)."""
        if t > 0 and self.generator is not None:
            self.prev_generator.set_weights(self.generator.get_weights())
        super().before_task(t)
        if t > 0 and self.config.reinit:
            self._reinitialise(t)

    def _reinitialise(self, t: int) -> None:
        """The authors' ``init_params`` before each task: every dense and (de)conv layer
        re-drawn (PyTorch's default initialisation), the pre-trained conv layers kept, the
        mixture prior kept (it is not a module with ``reset_parameters``) and the
        optimisers' state kept (fidelity.md item 7)."""
        salts = {"model": 10, "generator": 20}
        for name, m in self.networks().items():
            for part in m._flatten_layers(include_self=False, recursive=False):
                if part is not getattr(m, "trunk", None):
                    torch_uniform_init(part, self.config.seed, salt=salts[name] + t)
        for reg in self.regularizers:
            reg.before_task(-1)

    # -- replay ------------------------------------------------------------------------
    def conditional_replay(self) -> bool:
        """A mixture prior or decoder gates make each sample for a chosen class."""
        c = self.config
        return c.prior == "gmm" or bool(c.dg_gates and c.dg_prop > 0)

    def per_task_replay(self) -> bool:
        """A conditional generator in Task-IL generates per previous task (the authors'
        train.py: ``conditional_gen and scenario == "task"``; fidelity.md item 14)."""
        return self.protocol.scenario == "task" and self.conditional_replay()

    def draw(self, data: TaskData, ctx: StepContext, plan: Plan) -> Draws:
        """Adds the noise of the encoders (current and replay) and of the prior."""
        draws = super().draw(data, ctx, plan)
        z, n = self.config.z_dim, plan.n_replay
        return draws._replace(eps=self.rng.normal([self.config.batch, z]),
                              r_eps=self.rng.normal([n, z]), r_eps_enc=self.rng.normal([n, z]))

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

    def replay_batch(self, batch: Batch, draws: Draws, ctx: StepContext, plan: Plan) -> Replay:
        """Generate for the drawn modes (each with its own gate), label with the frozen
        classifier, and say what the generator trains on for each replayed sample
        (the authors' ``train_a_batch``):

        * prior: with distillation the mixture of the previous classes' modes weighted by
          softmax(old scores / T); with hard targets the predicted class's mode (item 11);
        * gate: the predicted class's, soft (softmax(old scores / T) @ masks) with
          distillation; task gates keep the task the sample was generated for (item 13)."""
        modes, tasks = draws.r_modes, draws.r_tasks
        src = self.replay_source
        x = tf.stop_gradient(src.generate(modes, draws.r_eps, self._gate(src, modes, tasks)))
        replay = self.label_replay(x, tasks, ctx)
        if self.replay_all_previous_tasks():
            return replay  # unconditional: standard prior, no gates
        if self.config.distill:
            probs, ids = self._mode_weights(replay.soft, tasks)
            replay = replay._replace(mode_probs=probs, mode_ids=ids)
            class_gate = replay.soft
        else:
            replay = replay._replace(prior_modes=replay.hard)
            class_gate = tf.one_hot(replay.hard, self.protocol.num_modes)
        return replay._replace(gate=tf.one_hot(tasks, self.protocol.capacity)
                               if self.config.dg_type == "task" else class_gate)

    # -- the loss ----------------------------------------------------------------------
    def vae_losses(self, vae: VAE, batch: Batch, replay: Replay | None, draws: Draws,
                   ctx: StepContext, plan: Plan, current_targets=None) -> dict[str, tf.Tensor]:
        """The VAE's ``loss_terms`` on the current batch (the label's mode and gate) and on
        replay (``replay_batch`` says which prior target and gate), each averaged over its
        global batch: ``<term>_current`` and ``<term>_replay``. With targets (RtF) the
        terms include ``class``."""
        current = vae.loss_terms(batch.x, draws.eps, current_targets, modes=batch.y,
                                 gate=self._gate(vae, batch.y, batch.tid))
        out = {f"{k}_current": tf.nn.compute_average_loss(v, global_batch_size=self.config.batch)
               for k, v in current.items()}
        if replay is not None:
            rep = vae.loss_terms(replay.x, draws.r_eps_enc,
                                 replay.targets if current_targets is not None else None,
                                 modes=replay.prior_modes, mode_probs=replay.mode_probs,
                                 mode_ids=replay.mode_ids,
                                 gate=replay.gate if vae.gate_masks is not None else None)
            out.update({f"{k}_replay": tf.nn.compute_average_loss(v, global_batch_size=plan.n_replay)
                        for k, v in rep.items()})
        return out

    def losses(self, batch, replay, draws, ctx, plan):
        """The classifier's loss (``FineTuning``) and the generator's, ``gen_total``, each
        with the 1/t, 1 - 1/t weighting (method.md 2)."""
        out = super().losses(batch, replay, draws, ctx, plan)
        gen = {f"gen_{k}": v for k, v in
               self.vae_losses(self.generator, batch, replay, draws, ctx, plan).items()}
        cur = gen["gen_recon_current"] + gen["gen_latent_current"]
        if replay is not None:
            rep = gen["gen_recon_replay"] + gen["gen_latent_replay"]
            gen["gen_total"] = ctx.w_current * cur + ctx.w_replay * rep
        else:
            gen["gen_total"] = cur
        out.update(gen)
        return out

    def loss_names(self, plan: Plan) -> list[str]:
        """Classifier terms, then the generator's."""
        names = super().loss_names(plan)
        extra = ["gen_total", "gen_recon_current", "gen_latent_current"]
        if plan.replay:
            extra += ["gen_recon_replay", "gen_latent_replay"]
        return names[:1] + extra + names[1:]

    def optim_groups(self, plan: Plan):
        """The classifier and the generator, each with its own optimiser."""
        groups = super().optim_groups(plan) if plan.train_classifier else []
        if plan.train_generator:
            groups.append(("gen_total", self.gen_optimizer,
                           list(self.generator.trainable_variables), False))
        return groups

    def iterations(self, t: int) -> int:
        """max(iters, g_iters): the generator has its own ``--g_iters``."""
        return max(self.config.iters, self.config.g_iters)

    def plan_for_iteration(self, plan: Plan, i: int) -> Plan:
        """Stop the classifier after ``iters`` and the generator after ``g_iters``."""
        return plan._replace(train_classifier=i < self.config.iters,
                             train_generator=i < self.config.g_iters)
