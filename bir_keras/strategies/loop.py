"""The task loop of every run: for each task not yet learned, every trainer starts it,
its steps run (one trainer's own step, or a ``SeedPack``'s step over several seeds in
lockstep), and every trainer ends it (evaluation, logging, callbacks); a Ctrl-C lands
between tasks too. Inside a task, ``task_loop`` keeps the books of each trainer's chunks
of iterations (loss sums, TensorBoard, the progress bar, the NaN check, the callbacks
between compiled calls, Ctrl-C), and ``report_task`` says how the task went.

It knows the trainers only by what it calls of them (``tasks_learned``, ``protocol``,
``start_task``, ``end_task``, ``history``), so that ``base.Trainer.fit`` and
``pack.SeedPack.fit`` both run it without either module importing the other's loop."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from bir_keras import interrupts
from bir_keras.config import ConfigError
from bir_keras.strategies.records import NonFiniteLoss, TaskProgress


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
            tr.end_task(run, m, start, last=t == last - 1)
        interrupts.raise_if_requested()
    return [tr.history for tr in trainers]


def task_loop(tr: Any, run: Any, names: list[str], at: TaskProgress | None = None,
              interruptible: bool = True):
    """The bookkeeping of trainer ``tr``'s training on one task, as a generator: it yields ``(plan, k)``,
    a chunk of up to ``steps_per_call`` iterations (chunks never span a change of plan),
    is sent back the chunk's losses ``[k, terms]`` (columns in the order of ``names``),
    logs them (TensorBoard, progress bar), stops at a non-finite loss, runs
    ``chunk_callbacks`` after each chunk, lets a Ctrl-C land after them (unless not
    ``interruptible``: a ``SeedPack`` checks once every seed has had its chunk, so the
    seeds stop at one step), and returns the task's mean losses. Whoever runs the step
    drives it: ``Trainer.train_task`` for one trainer, a ``SeedPack`` for several in lockstep.
    ``run`` has its data padded (``pad_samples``)."""
    t = run.task
    n = tr.iterations(t)
    sums = np.array(at.sums, np.float64) if at else np.zeros(len(names))
    window = np.array(at.window, np.float64) if at else np.zeros(len(names))
    if len(sums) != len(names) or len(window) != len(names):
        raise ValueError(f"task progress has {len(sums)} loss terms, the step {len(names)}")
    bar = keras.utils.Progbar(n, verbose=1 if sys.stdout.isatty() else 2, stateful_metrics=names) \
        if tr.verbose else None
    i = at.iterations if at else 0
    started = time.time() - (at.elapsed if at else 0.0)  # for TaskProgress.elapsed
    while i < n:
        plan = tr.plan_for_iteration(run.plan, i)
        k = 1
        while (i + k < n and k < tr.steps_per_call
               and tr.plan_for_iteration(run.plan, i + k) == plan):
            k += 1
        rows = yield plan, k
        # count what the model went through at once (an interrupted run reports it)
        first, tr.global_step = tr.global_step, tr.global_step + len(rows)
        for j, values in enumerate(rows):
            if not np.all(np.isfinite(values)):
                bad = [nm for nm, v in zip(names, values) if not np.isfinite(v)]
                raise NonFiniteLoss(f"non-finite loss at task {t + 1}, iteration {i + 1} "
                                    f"(global step {first + j + 1}): {', '.join(bad)}")
            sums += values
            window += values
            if (i + 1) % tr.config.log_every == 0 or i + 1 == n:
                m = (i % tr.config.log_every) + 1
                log_scalars(tr, {f"loss/{nm}": v / m for nm, v in zip(names, window)},
                            first + j + 1)
                window[:] = 0
                if bar is not None:
                    bar.update(i + 1, [(nm, float(v)) for nm, v in zip(names, values)])
            i += 1
        for cb in tr.chunk_callbacks:
            cb(tr, TaskProgress(t, i, sums.tolist(), window.tolist(),
                                  time.time() - started))
        if interruptible:
            interrupts.raise_if_requested()  # Ctrl-C lands here, between compiled calls
    return {nm: float(v / max(n, 1)) for nm, v in zip(names, sums)}


def log_scalars(tr: Any, values: dict[str, float], step: int) -> None:
    """Trainer ``tr``'s loss means to its TensorBoard, when a writer is attached."""
    if tr.summary_writer is None:
        return
    with tr.summary_writer.as_default(step=step):
        for k, v in values.items():
            tf.summary.scalar(k, v, description="x axis: training iteration (global step); "
                              f"mean over the last {tr.config.log_every} iterations")


def report_task(tr: Any, t: int) -> None:
    """Trainer ``tr``'s accuracy per task and the average after task ``t``, to its
    TensorBoard and (``verbose``) stdout."""
    row = tr.history.accuracy_matrix[-1]
    avg = tr.history.average_accuracy[-1]
    vals = {f"accuracy/task{j + 1}": a for j, a in enumerate(row) if a is not None}
    vals["accuracy/average"] = avg
    if tr.summary_writer is not None:
        with tr.summary_writer.as_default(step=t + 1):
            for k, v in vals.items():
                tf.summary.scalar(k, v, description="x axis: number of tasks learned; test "
                                  "accuracy (set smoothing to 0: few points)")
        tr.summary_writer.flush()
    if tr.verbose:
        accs = " ".join(f"{a:.4f}" for a in row if a is not None)
        print(f"task {t + 1}/{tr.protocol.num_tasks}: average accuracy {avg:.4f} "
              f"[{accs}] ({tr.history.task_times[-1]:.1f}s)", flush=True)
