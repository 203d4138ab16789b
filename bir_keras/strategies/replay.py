"""What every replaying method shares (LwF, buffer replay, GR, BI-R): a frozen copy of the
model taken before each task, how many samples are replayed and for which classes and
tasks (``ReplayDraws``), and how replayed inputs are labelled (method.md 3-4)."""

from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

from bir_keras.models.classifier import HardTargets, SoftTargets, Targets, TaskHeadsTargets
from bir_keras.models.layers import masked_logits
from bir_keras.strategies.finetune.trainer import FineTuning
from bir_keras.strategies.records import Plan, StepContext


class Replay(NamedTuple):
    """Replayed samples for one replica and what they are trained towards."""

    x: tf.Tensor
    tid: tf.Tensor               # each sample's task
    targets: Targets             # the classification loss's targets
    hard: tf.Tensor | None = None          # the previous model's predicted unit
    soft: tf.Tensor | None = None          # its probabilities at temperature T


class ReplayDraws(NamedTuple):
    """What is replayed in one iteration: each replayed sample's mode and task."""

    modes: tf.Tensor   # the output unit (Domain-IL: the within-task class)
    tasks: tf.Tensor   # the previous task it stands for


class ReplayTrainer(FineTuning):
    """Shared by methods that replay: a frozen copy of the model taken before each task,
    replayed samples spread over the previous tasks, and the 1/t, 1 - 1/t weighting."""

    uses_replay = True

    def build_models(self) -> None:
        """The live model plus a frozen copy of it (built second: the construction order
        draws the initial weights that are not seeded per layer)."""
        super().build_models()
        self.prev_model = self.make_classifier()
        self.prev_model.trainable = False

    def checkpoint_parts(self) -> dict[str, object]:
        """Adds the frozen copy."""
        return {**super().checkpoint_parts(), "prev_model": self.prev_model}

    def before_task(self, t: int) -> None:
        """Freeze a copy of the model as it is at the end of the previous task."""
        if t > 0:
            self.prev_model.set_weights(self.model.get_weights())
        super().before_task(t)

    # -- how much and what is replayed --------------------------------------------------
    def per_task_replay(self) -> bool:
        """Whether replay is drawn per previous task (a conditional generator in Task-IL)."""
        return False

    def conditional_replay(self) -> bool:
        """Whether each replayed sample is made for one chosen class (or task)."""
        return False

    def _per_task_count(self, t: int) -> int:
        """ceil(batch_replay / (t - 1)) per previous task (the authors' train.py,
        ``batch_size_replay_to_use``; fidelity.md item 14), rounded up to a multiple of
        the replicas so that every replica gets a share."""
        m = math.ceil(self.config.batch_replay / t)
        return math.ceil(m / self.replicas) * self.replicas if t * m % self.replicas else m

    def plan(self, t: int) -> Plan:
        """With per-task replay, t x ceil(batch_replay / t) replayed samples."""
        plan = super().plan(t)
        if t > 0 and self.per_task_replay():
            plan = plan._replace(n_replay=t * self._per_task_count(t))
        return plan

    def draw(self, ctx: StepContext, plan: Plan) -> ReplayDraws:
        """Each replayed sample's mode (output unit) and task, as the authors' ``sample``:
        Class-IL and Task-IL draw a class of the previous tasks uniformly (its task follows);
        Domain-IL draws the class among all and, independently, a previous task (used by
        task gates; fidelity.md item 12); per-task replay has ceil(batch_replay / (t - 1))
        samples of each previous task, in task order. Drawn in every task, the first too
        (where nothing is replayed), so that every task's draws follow from the seed."""
        cpt = self.protocol.classes_per_task
        n = plan.n_replay
        prev = tf.maximum(ctx.task, 1)
        if plan.replay and self.per_task_replay():
            tasks = tf.range(n, dtype=tf.int32) // (n // ctx.task)
            modes = tasks * cpt + self.rng.uniform([n], 0, cpt, tf.int32)
        elif self.protocol.scenario == "domain":
            modes = self.rng.uniform([n], 0, cpt, tf.int32)
            tasks = self.rng.uniform([n], 0, prev, tf.int32)
        else:
            modes = self.rng.uniform([n], 0, prev * cpt, tf.int32)
            tasks = modes // cpt
        return ReplayDraws(modes=modes, tasks=tasks)

    # -- labelling --------------------------------------------------------------------
    def replay_all_previous_tasks(self) -> bool:
        """Task-IL replay that was not generated for a chosen task (LwF; GR without a
        mixture prior or gates) is labelled by every previous task's head and its loss
        averaged over those tasks (method.md 4.1: "labelled per previous task with that
        task's active units", as the paper's code does). Conditional replay is generated
        per previous task (``per_task_replay``), so it is labelled over that task only.
        With XdG the logits depend on the task's mask, so each sample keeps the one task
        it was drawn for (XdG with replay is not in the paper; the authors' code refuses
        it)."""
        return (self.protocol.scenario == "task" and not self.conditional_replay()
                and not self.config.xdg)

    def label_replay(self, x: tf.Tensor, tid: tf.Tensor, ctx: StepContext) -> Replay:
        """Replayed inputs labelled by the frozen previous model over the units it knew:
        hard targets (its prediction) or, with ``--distill``, soft ones at temperature T."""
        c = self.config
        distill, temp = bool(c.distill), c.temp
        if self.replay_all_previous_tasks():
            cpt = self.protocol.classes_per_task
            z = tf.reshape(self.logits(self.prev_model, x, tid), [tf.shape(x)[0], -1, cpt])
            n_tasks = tf.shape(z)[1]
            prev = tf.cast(tf.range(n_tasks) < ctx.task, tf.float32)
            hard = tf.argmax(z, -1, output_type=tf.int32)
            soft = tf.nn.softmax(z / temp)
            targets = TaskHeadsTargets(None if distill else hard, soft if distill else None,
                                       prev / tf.maximum(tf.reduce_sum(prev), 1.0), cpt, temp)
            return Replay(x=x, tid=tid, targets=targets, hard=hard, soft=soft)
        prev_active = tf.gather(ctx.active_prev, tid)
        z = masked_logits(self.logits(self.prev_model, x, tid), prev_active)
        hard = tf.argmax(z, -1, output_type=tf.int32)
        soft = tf.where(prev_active > 0, tf.nn.softmax(z / temp), 0.0)
        # the loss runs over the units active now (ctx.active), as the authors' code
        active = tf.gather(ctx.active, tid)
        targets = SoftTargets(soft, active, temp) if distill else HardTargets(hard, active)
        return Replay(x=x, tid=tid, targets=targets, hard=hard, soft=soft)
