"""Regularisers that combine with any method: EWC, online EWC and SI (method.md 3).

A regulariser is an object the Trainer calls: ``build`` once (under the distribution
strategy's scope), ``penalty`` inside the compiled step, ``after_apply`` inside the step
after the optimiser update, and ``before_task`` / ``after_task`` between tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf


def _state(v, name: str) -> tf.Variable:
    return tf.Variable(tf.zeros_like(v), trainable=False, name=name,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


class Regularizer:
    """Base class: no penalty, no state."""

    name = "regularizer"

    def build(self, variables: Sequence[tf.Variable]) -> None:
        """Create the state for the protected ``variables``."""
        self.vars = list(variables)

    def penalty(self) -> tf.Tensor:
        """The extra loss term (a scalar), evaluated inside the training step."""
        return tf.constant(0.0)

    def after_apply(self, grads: Sequence[tf.Tensor], deltas: Sequence[tf.Tensor]) -> None:
        """Called in the step with the applied (global) gradients and parameter changes."""
        return None

    def before_task(self, task: int) -> None:
        """Called before training on ``task`` (0-based)."""

    def after_task(self, task: int, fisher_fn: Callable[[], list[tf.Tensor]] | None) -> None:
        """Called after training on ``task``; ``fisher_fn`` computes that task's Fisher."""

    def state(self) -> dict[str, object]:
        """Trackable state to checkpoint."""
        return {}


class EWC(Regularizer):
    """(Online) EWC: penalty (lambda/2) sum_k sum_i F_k,i (theta_i - theta*_k,i)^2.

    sum_k F_k (theta - theta*_k)^2 = A (theta - m)^2 + c with A = sum_k F_k and
    m = sum_k F_k theta*_k / A, so one precision ``A``, one Fisher-weighted anchor ``m``
    and one scalar ``c`` hold every task's term exactly (and stay stable in float32).
    Online EWC (Schwarz et al.): A <- gamma A + F_new, m = theta after the last task.
    """

    name = "ewc"

    def __init__(self, lam: float, online: bool = False, gamma: float = 1.0):
        self.lam, self.online, self.gamma = float(lam), online, float(gamma)

    def build(self, variables):
        """Create precision, anchor and offset variables."""
        super().build(variables)
        self.precision = [_state(v, "ewc_fisher") for v in self.vars]
        self.anchor = [_state(v, "ewc_anchor") for v in self.vars]
        self.offset = tf.Variable(0.0, trainable=False, name="ewc_offset",
                                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.tasks_seen = tf.Variable(0, trainable=False, name="ewc_tasks",
                                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def penalty(self):
        """(lambda / 2) * (sum_i A_i (theta_i - m_i)^2 + c)."""
        total = self.offset
        for a, m, v in zip(self.precision, self.anchor, self.vars):
            total = total + tf.reduce_sum(a * tf.square(v - m))
        return 0.5 * self.lam * total

    def after_task(self, task, fisher_fn):
        """Fold the new task's Fisher and anchor into the quadratic form."""
        fisher = fisher_fn()
        if self.online:
            for a, m, v, f in zip(self.precision, self.anchor, self.vars, fisher):
                a.assign(self.gamma * a + f)
                m.assign(v)
            self.offset.assign(0.0)
        else:
            offset = self.offset
            for a, m, v, f in zip(self.precision, self.anchor, self.vars, fisher):
                # c_new = c + A m^2 + F v^2 - A_new m_new^2, with A_new m_new = A m + F v
                new_a = a + f
                weighted = a * m + f * v
                new_m = tf.math.divide_no_nan(weighted, new_a)
                offset = offset + tf.reduce_sum(a * m * m + f * v * v - new_a * new_m * new_m)
                a.assign(new_a)
                m.assign(new_m)
            self.offset.assign(tf.maximum(offset, 0.0))
        self.tasks_seen.assign_add(1)

    def state(self):
        """Fisher, anchors and offset."""
        return {"precision": self.precision, "anchor": self.anchor, "offset": self.offset,
                "tasks_seen": self.tasks_seen}


class SI(Regularizer):
    """Synaptic intelligence: running path integral w, importance Omega, anchor theta*.

    During a task w_i += -g_i * delta_i with g the gradient the step applied (of the whole
    loss, penalty included, as in the paper's code, method.md 3); after the task
    Omega_i += w_i / ((theta_i(end) - theta_i(start))^2 + xi). Penalty c sum Omega (theta - theta*)^2.
    """

    name = "si"

    def __init__(self, c: float, epsilon: float = 0.1):
        self.c, self.epsilon = float(c), float(epsilon)

    def build(self, variables):
        """Create path integral, importance, anchor and task-start variables."""
        super().build(variables)
        self.w = [_state(v, "si_w") for v in self.vars]
        self.omega = [_state(v, "si_omega") for v in self.vars]
        self.anchor = [_state(v, "si_anchor") for v in self.vars]
        self.start = [_state(v, "si_start") for v in self.vars]

    def penalty(self):
        """c * sum_i Omega_i (theta_i - theta*_i)^2."""
        total = tf.constant(0.0)
        for o, a, v in zip(self.omega, self.anchor, self.vars):
            total = total + tf.reduce_sum(o * tf.square(v - a))
        return self.c * total

    def after_apply(self, grads, deltas):
        """Accumulate -g * delta (the step's contribution to the loss decrease)."""
        for w, g, d in zip(self.w, grads, deltas):
            if g is not None:
                w.assign_add(-tf.convert_to_tensor(g) * d)

    def before_task(self, task):
        """Reset the path integral and remember the parameters at the task's start."""
        for w, s, v in zip(self.w, self.start, self.vars):
            w.assign(tf.zeros_like(w))
            s.assign(v)

    def after_task(self, task, fisher_fn):
        """Omega += w / (total change^2 + xi); anchor = parameters now."""
        for w, o, s, a, v in zip(self.w, self.omega, self.start, self.anchor, self.vars):
            change = tf.convert_to_tensor(v) - s
            o.assign_add(w / (tf.square(change) + self.epsilon))
            a.assign(v)

    def state(self):
        """Path integral, Omega and anchors."""
        return {"w": self.w, "omega": self.omega, "anchor": self.anchor, "start": self.start}
