"""Regularisers that combine with any method: EWC and online EWC (``ewc``), SI (``si``),
method.md 3.

A regulariser is an object the Trainer calls: ``build`` once (under the distribution
strategy's scope), ``penalty`` inside the compiled step, ``after_apply`` inside the step
after the optimiser update, and ``before_task`` / ``after_task`` between tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import tensorflow as tf

if TYPE_CHECKING:
    from bir_keras.config import Config
    from bir_keras.strategies.base import Trainer


def state_variable(v, name: str) -> tf.Variable:
    """A zero variable shaped like ``v``, written once for all replicas."""
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

    def after_task(self, task: int, trainer: Trainer) -> None:
        """Called after training on ``task`` with the trainer (its model, data, settings)."""

    def state(self) -> dict[str, object]:
        """Trackable state to checkpoint."""
        return {}




def make_regularizers(config: Config) -> list[Regularizer]:
    """EWC / online EWC / SI as the config asks for."""
    from bir_keras.strategies.ewc import EWC
    from bir_keras.strategies.si import SI

    regs: list[Regularizer] = []
    if config.ewc:
        regs.append(EWC(config.ewc_lambda, online=config.online, gamma=config.gamma))
    if config.si:
        regs.append(SI(config.si_c, config.epsilon))
    return regs
