"""The records a Trainer's step and loop pass around, and what every method shares of them:
``TaskData`` (a task's tensors), ``StepContext`` (tensors fixed for a task), ``Plan`` (the
Python values that shape the compiled step: a change retraces it), ``Draws`` (the batch's
indices and the method's own draws), ``Batch``, ``OptimGroup``, ``TaskRun``,
``TaskProgress`` (a task part-way through), ``History`` (what a run measured), and the
one weighting of current and replayed losses (``weigh``)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or infinite; the message names the step and the term."""


@dataclasses.dataclass
class History:
    """What a run measured: the accuracy matrix and per-task mean losses."""

    accuracy_matrix: list[list[float | None]] = dataclasses.field(default_factory=list)
    losses: list[dict[str, float]] = dataclasses.field(default_factory=list)
    task_times: list[float] = dataclasses.field(default_factory=list)

    @property
    def average_accuracy(self) -> list[float]:
        """Per row, the mean accuracy over the tasks learned so far."""
        return [float(np.mean([a for a in row if a is not None])) for row in self.accuracy_matrix]


class TaskData(NamedTuple):
    """A task's training data as tensors: inputs, labels, task ids, and the offset and size
    of each part (Joint in Task-IL draws from each task's part separately)."""

    x: tf.Tensor
    y: tf.Tensor
    tid: tf.Tensor
    offsets: tf.Tensor
    sizes: tf.Tensor


class StepContext(NamedTuple):
    """Tensors fixed for a task."""

    task: tf.Tensor          # the task's index (0-based)
    active: tf.Tensor        # [tasks, units]: active output units per task row, now
    active_prev: tf.Tensor   # the same after the previous task (what replay is labelled over)
    w_current: tf.Tensor     # 1 / t: the current data's share of the loss (method.md 2)
    w_replay: tf.Tensor      # 1 - 1 / t: replay's share
    # [2] int64: the seed's key of the batch draws, an input rather than a constant of the
    # graph, so that every seed of a setting compiles to the same XLA program (which a
    # persistent XLA cache, ``xla_cache.py``, then compiles once for all of them)
    draw_key: tf.Tensor


class Plan(NamedTuple):
    """The Python values that shape the compiled step (a change traces it again)."""

    replay: bool = False             # whether this task replays
    n_replay: int = 0                # replayed samples per iteration
    parts: int = 1                   # data parts the batch's slots are dealt to
    groups: tuple[str, ...] | None = None  # optimiser groups that train (None: all)


class Draws(NamedTuple):
    """All random numbers of one iteration, drawn once, globally (each replica takes its
    slice of every tensor's first axis)."""

    idx: tf.Tensor          # the batch's sample indices (the Trainer's ``draw_batch``)
    own: Any = None         # the method's own draws (``draw``: a record of its own, or None)


class OptimGroup(NamedTuple):
    """One optimiser of the step: it minimises ``losses[loss]`` over ``variables``; with
    ``regularized`` the regularisers' penalties are in that loss and see its updates."""

    optimizer: keras.optimizers.Optimizer
    variables: list
    loss: str = "total"
    regularized: bool = True


class Batch(NamedTuple):
    """The current data one replica trains on: model inputs, labels, task ids."""

    x: tf.Tensor
    y: tf.Tensor
    tid: tf.Tensor


@dataclasses.dataclass
class TaskProgress:
    """Where a task part-way through stands, at a boundary between compiled calls: what a
    checkpoint inside the task records beside the training state, and what ``fit(resume=)``
    continues from."""

    task: int                 # the task's index (0-based)
    iterations: int           # iterations of the task done
    sums: list[float]         # per loss term, the sum over those iterations (task means)
    window: list[float]       # per loss term, the sum since the last TensorBoard point
    elapsed: float            # seconds spent in the task so far


def weigh(ctx: StepContext, current: tf.Tensor, replay: tf.Tensor | None) -> tf.Tensor:
    """A loss on the current data and one on replay weighted 1/t and 1 - 1/t, t the number
    of tasks so far (method.md 2; the authors' ``rnt``); the current loss alone without
    replay."""
    if replay is None:
        return current
    return ctx.w_current * current + ctx.w_replay * replay


class TaskRun(NamedTuple):
    """What ``start_task`` prepares and ``run_steps`` runs."""

    task: int
    data: TaskData
    ctx: StepContext
    plan: Plan


class VariableList(tf.Module):
    """A list of variables as one checkpointable object."""

    def __init__(self, variables):
        super().__init__()
        self.variables_ = list(variables)
