"""Regularisers that combine with any method: EWC and online EWC (``ewc``), SI (``si``),
method.md 3; ``make_regularizers`` builds those a config switches on.

A regulariser is an object the Trainer calls: ``build`` once (under the distribution
strategy's scope), ``penalty`` inside the compiled step, ``apply`` around the optimiser's
update of the variables it protects (``apply_regularized``), and ``before_task`` /
``after_task`` between tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import tensorflow as tf

from bir_keras.config import Config, selected_methods


class TrainerView(Protocol):
    """What a regulariser reads of the trainer it serves after a task
    (``strategies.base.Trainer`` is one): its settings, protocol, networks and the
    variables it protects (EWC's Fisher is taken through them)."""

    config: Config
    protocol: Any

    def preprocess(self, x: tf.Tensor) -> tf.Tensor: ...
    def protected_variables(self) -> list[tf.Variable]: ...
    def networks(self) -> dict[str, Any]: ...
    def logits(self, model, x: tf.Tensor, task_ids: tf.Tensor,
               training: bool = False) -> tf.Tensor: ...


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

    def after_task(self, task: int, trainer: TrainerView) -> None:
        """Called after training on ``task`` with the trainer (its model, data, settings)."""

    def state(self) -> dict[str, object]:
        """Trackable state to checkpoint."""
        return {}


def make_regularizers(config: Config) -> list[Regularizer]:
    """The regularisers of the methods a resolved config switches on (EWC / online EWC,
    SI: each declaration's ``regularizer``), in the registry's order; the Trainer builds
    them."""
    return [m.make_regularizer(config) for m in selected_methods(config) if m.regularizer]


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
