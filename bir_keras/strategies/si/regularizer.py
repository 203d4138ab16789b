"""Synaptic intelligence's regulariser (its declaration: ``bir_keras.strategies.si``)."""

from __future__ import annotations

import tensorflow as tf

from bir_keras.config import Config
from bir_keras.strategies.regularizers import Regularizer, global_sum, state_variable


def from_config(config: Config) -> SI:
    """The SI regulariser of a resolved config."""
    return SI(config.si_c, config.epsilon)


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
        self.w = [state_variable(v, "si_w") for v in self.vars]
        self.omega = [state_variable(v, "si_omega") for v in self.vars]
        self.anchor = [state_variable(v, "si_anchor") for v in self.vars]
        self.start = [state_variable(v, "si_start") for v in self.vars]

    def penalty(self):
        """c * sum_i Omega_i (theta_i - theta*_i)^2."""
        total = tf.constant(0.0)
        for o, a, v in zip(self.omega, self.anchor, self.vars):
            total = total + tf.reduce_sum(o * tf.square(v - a))
        return self.c * total

    def apply(self, update, grads, variables):
        """The update, then w += -g * delta for each protected variable: the step's
        contribution to the loss decrease, g the gradient summed over the replicas."""
        index = {id(v): i for i, v in enumerate(variables)}
        mine = [index[id(v)] for v in self.vars]
        before = [tf.identity(variables[i]) for i in mine]
        update()
        applied = global_sum([grads[i] for i in mine])
        for w, g, i, b in zip(self.w, applied, mine, before):
            if g is not None:
                w.assign_add(-tf.convert_to_tensor(g) * (tf.convert_to_tensor(variables[i]) - b))

    def before_task(self, task):
        """Reset the path integral and remember the parameters at the task's start."""
        for w, s, v in zip(self.w, self.start, self.vars):
            w.assign(tf.zeros_like(w))
            s.assign(v)

    def after_task(self, task, trainer):
        """Omega += w / (total change^2 + xi); anchor = parameters now."""
        for w, o, s, a, v in zip(self.w, self.omega, self.start, self.anchor, self.vars):
            change = tf.convert_to_tensor(v) - s
            o.assign_add(w / (tf.square(change) + self.epsilon))
            a.assign(v)

    def state(self):
        """Path integral, Omega and anchors."""
        return {"w": self.w, "omega": self.omega, "anchor": self.anchor, "start": self.start}
