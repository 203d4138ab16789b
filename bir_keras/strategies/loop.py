"""The task loop of every run: for each task not yet learned, every trainer starts it,
its steps run (one trainer's own step, or a ``SeedPack``'s step over several seeds in
lockstep), and every trainer ends it (evaluation, logging, callbacks); a Ctrl-C lands
between tasks too.

It knows the trainers only by what it calls of them (``tasks_learned``, ``protocol``,
``start_task``, ``end_task``, ``history``), so that ``base.Trainer.fit`` and
``pack.SeedPack.fit`` both run it without either module importing the other's loop."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from bir_keras import interrupts
from bir_keras.config import ConfigError


def fit(trainers: Sequence[Any], train_task: Callable[[list, Any], list[dict]],
        until: int | None = None, resume: tuple[Any, Callable[[Any], None]] | None = None
        ) -> list:
    """Train ``trainers`` (one, or the seeds of a pack) on the tasks not yet learned, up
    to ``until``, with ``train_task(runs, at)`` -> each trainer's mean losses of the task;
    ``resume=(progress, restore)`` continues a task part-way through (one trainer only):
    after the task's ``start_task``, ``restore(trainer)`` loads the state saved at
    ``progress``. Returns the trainers' histories."""
    first = trainers[0]
    if len({tr.tasks_learned for tr in trainers}) != 1:
        raise ValueError("the seeds of a pack must have learned the same tasks")
    if resume is not None and len(trainers) > 1:
        raise ConfigError("a packed run does not resume part-way through a task")
    n = first.protocol.num_tasks
    last = n if until is None else min(until, n)
    for t in range(first.tasks_learned, last):
        start = time.time()
        runs = [tr.start_task(t) for tr in trainers]
        at = None
        if resume is not None and resume[0].task == t:
            at, restore = resume
            restore(first)
            start -= at.elapsed
        means = train_task(runs, at)
        for tr, run, m in zip(trainers, runs, means):
            tr.end_task(run, m, start)
        interrupts.raise_if_requested()
    return [tr.history for tr in trainers]
