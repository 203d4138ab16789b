"""Regularisers that combine with any method: EWC and online EWC (``ewc``), SI (``si``),
method.md 3.

A regulariser is an object the Trainer calls: ``build`` once (under the distribution
strategy's scope), ``penalty`` inside the compiled step, ``apply`` around the optimiser's
update of the variables it protects (``apply_regularized``), and ``before_task`` /
``after_task`` between tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

    def apply(self, update: Callable[[], None], grads: Sequence[tf.Tensor],
              variables: Sequence[tf.Variable]) -> None:
        """Run ``update`` (the optimiser's step of ``variables`` with this replica's
        ``grads``), in the step; a regulariser that follows the updates (SI) wraps it."""
        update()

    def before_task(self, task: int) -> None:
        """Called before training on ``task`` (0-based)."""

    def after_task(self, task: int, trainer: Trainer) -> None:
        """Called after training on ``task`` with the trainer (its model, data, settings)."""

    def state(self) -> dict[str, object]:
        """Trackable state to checkpoint."""
        return {}


def apply_regularized(regularizers: Sequence[Regularizer], update: Callable[[], None],
                      grads: Sequence[tf.Tensor], variables: Sequence[tf.Variable]) -> None:
    """The optimiser's ``update`` of ``variables``, with every regulariser's ``apply``
    around it."""
    for reg in regularizers:
        update = _wrapped(reg, update, grads, variables)
    update()


def _wrapped(reg: Regularizer, update, grads, variables) -> Callable[[], None]:
    return lambda: reg.apply(update, grads, variables)


def global_sum(grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """Per-replica gradients summed over the replicas (as the optimiser applies them)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return list(grads)
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(grads))


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
