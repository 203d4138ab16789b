"""One experiment end to end: config -> protocol -> trainer -> results, logs and exports."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import tensorflow as tf

from bir_keras import export, interrupts, rundirs, salvage, tensorboard_log
from bir_keras.config import (
    Config,
    ConfigError,
    check_intervals,
    check_seeds_at_once,
    method_label,
    resolve,
)
from bir_keras.data.protocols import max_tasks
from bir_keras.evaluation.metrics import summarize
from bir_keras.evaluation.plots import plot_accuracy_matrix, plot_average_accuracy
from bir_keras.fileio import atomic_dir, atomic_write_json
from bir_keras.interrupts import caused_by_interrupt
from bir_keras.salvage import RunInterrupted
from bir_keras.setup import DEFAULT_CONV_WEIGHTS, Setup, load_trunk, prepare
from bir_keras.strategies.base import Trainer
from bir_keras.strategies.pack import SeedPack
from bir_keras.strategies.records import NonFiniteLoss, TaskProgress
from bir_keras.strategies.trainers import make_trainer

# prepare and its Setup live in bir_keras.setup (what a run is made of, read by salvage and
# tensorboard_log too); they are named here as well, the door of a run
__all__ = ["DEFAULT_CONV_WEIGHTS", "Setup", "build", "load_trunk", "prepare", "resume", "run",
           "run_record"]


def build(setup: Setup, strategy: tf.distribute.Strategy | None = None,
          verbose: bool = True) -> Trainer:
    """The trainer, its networks' conv trunks built from the pre-trained weights (all
    methods start from them, method.md 4.4; only frozen with ``--freeze_convE``). With
    the features cached (``prepare``) the networks have no conv layers."""
    pixel_level = setup.trunk is not None and not setup.protocol.features
    return make_trainer(setup.config, setup.protocol, strategy=strategy, verbose=verbose,
                        trunk_weights=setup.trunk.get_weights() if pixel_level else None)


def run_record(setup: Setup, trainer: Trainer, wall: float) -> dict:
    """The JSON record of a run: flags, protocol, classes seen, accuracy matrix, metrics."""
    matrix = trainer.history.accuracy_matrix
    rec = {"method": method_label(setup.config), "flags": setup.config.to_dict(),
           "protocol": setup.protocol.describe(),
           "tasks_learned": trainer.tasks_learned,
           "classes_seen": [int(c) for c in setup.protocol.class_order[
               :trainer.tasks_learned * setup.protocol.classes_per_task]]
           if setup.protocol.experiment != "permuted_mnist"
           else list(range(setup.protocol.classes_per_task)),
           "accuracy_matrix": matrix, "wall_time_s": wall,
           "task_times_s": trainer.history.task_times, "losses": trainer.history.losses,
           "global_step": trainer.global_step}
    if matrix:
        s = summarize(matrix)
        rec.update(average_accuracy=s["average_accuracy"],
                   final_average_accuracy=s["final_average_accuracy"], bwt=s["bwt"],
                   forgetting=s["forgetting"])
    return rec


def resume(trainer: Trainer, setup: Setup, resume_from: str):
    """Load a previous run's checkpoint and history into ``trainer`` (same protocol and
    settings only; refused with a ``ConfigError`` otherwise). Returns what ``Trainer.fit``
    needs to continue a task part-way through (``fit(resume=...)``), or None when the
    export's last task is complete."""
    path = Path(resume_from)
    old = rundirs.read_resume_record(resume_from)
    rundirs.check_resume_flags(resume_from, old["flags"], setup.config.to_dict())
    mine = setup.protocol.describe()
    theirs = dict(old["protocol"])
    # a run on your own data may continue on new data (another file: its ``dataset``);
    # ``streams.stream_protocol`` has checked that the new data comes as the old did
    keys = ("experiment", "scenario", "classes_per_task", "features") + (
        ("dataset",) if setup.protocol.stream is None else ("kind", "sample_shape", "capacity"))
    for key in keys:
        if theirs.get(key) != mine.get(key):
            raise ConfigError(f"--resume_from={resume_from} has a different protocol "
                              f"({key}={theirs.get(key)!r}, this run has {mine.get(key)!r})")
    if theirs["class_order"][:len(mine["class_order"])] != mine["class_order"][:len(theirs["class_order"])]:
        raise ConfigError(f"--resume_from={resume_from} used a different class order (seed)")
    learned, n = old["tasks_learned"], setup.protocol.num_tasks
    _check_record(resume_from, old)
    most = max_tasks(setup.config.experiment)
    if learned == n and old.get("task_progress") is None:
        # nothing left to learn (a run stopped after its last export, before its results
        # were written): the run writes its output directory without training
        if trainer.verbose:
            more = "" if most is not None and n >= most else \
                f" (ask for more with --tasks={n + 1})"
            print(f"note: --resume_from={resume_from} already learned the {n} tasks asked "
                  f"for: writing its results, plots and TensorBoard without training{more}",
                  flush=True)
    elif learned >= n:
        more = "" if most is not None and learned >= most else \
            f"; ask for more with --tasks={learned + 1}{'' if most is None else f' (up to {most})'}"
        raise ConfigError(f"--resume_from={resume_from} already learned {learned} tasks and "
                          f"this run asks for --tasks={n}{more} (or --tasks={learned} to write "
                          "its results without training)")
    progress = old.get("task_progress")
    try:
        if progress is None:
            export.restore_checkpoint(trainer, path)
        else:
            # readable now; fit() restores it once the task has started (a restore before
            # start_task would be undone there, and a second restore of Keras models does
            # not reliably assign every variable again)
            export.check_progress(path)
            trainer.tasks_done.assign(learned)   # fit() starts with the task in progress
    except (export.CheckpointUnreadable, export.CheckpointMismatch) as e:
        raise ConfigError(str(e)) from None
    # n >= learned here, so every filled entry (row i: tasks 1..i+1) fits in n columns
    trainer.history.accuracy_matrix = [(list(r) + [None] * n)[:n] for r in old["accuracy_matrix"]]
    trainer.history.task_times = list(old.get("task_times_s", []))
    trainer.history.losses = list(old.get("losses", []))
    trainer.global_step = int(old.get("global_step", 0))
    if progress is None:
        return None
    at = TaskProgress(**progress)
    return at, lambda tr: export.restore_progress(tr, path)


def _check_record(resume_from: str, old: dict) -> None:
    """Refuse (``ConfigError``) a run.json whose accuracy matrix does not fit the tasks it
    says were learned (one row per task, row i filled for tasks 1..i+1 with accuracies in
    [0, 1]): an edited or mixed-up export, which would otherwise fail after loading."""
    learned, rows = old["tasks_learned"], old.get("accuracy_matrix")
    ok = isinstance(rows, list) and len(rows) == learned and learned >= 0
    for i, row in enumerate(rows if ok else []):
        ok = ok and isinstance(row, list) and len(row) > i and all(
            (isinstance(a, (int, float)) and 0 <= a <= 1) if j <= i else a is None
            for j, a in enumerate(row))
    if not ok:
        raise ConfigError(f"--resume_from={resume_from}: its run.json says {learned} tasks were "
                          "learned, but its accuracy matrix does not have one filled row per "
                          "task: not an export this package wrote as it is (edited or mixed "
                          "up with another run's files)")


def _packed_resume(setup: Setup, resume_from: str, verbose: bool) -> Setup:
    """A seed trained in a pack (``--seeds_at_once``) stepped without XLA, which draws other
    batches and random numbers than the default XLA step on a CPU: resumed alone with
    ``jit_compile`` left to choose, it steps without XLA too, so that it goes on with the
    draws it was trained with; asked for XLA, it says that its numbers will differ. An
    export trained with ``--nojit_compile`` (such a resumed seed's, too) continues so."""
    old = rundirs.read_resume_record(resume_from)
    packed = int(old.get("seeds_at_once") or 1)
    c = setup.config
    if packed == 1 and old["flags"].get("jit_compile") is not False:
        return setup
    if c.jit_compile is False:
        return setup
    if c.jit_compile is None:
        # (and a seed resumed so before: its record says --nojit_compile)
        if verbose and packed > 1:
            print(f"note: --resume_from={resume_from} was trained in a pack of {packed} seeds, "
                  "whose step runs without XLA: it continues without XLA too (--nojit_compile), "
                  "drawing the batches it was trained with", flush=True)
        return dataclasses.replace(setup, config=dataclasses.replace(c, jit_compile=False))
    if packed == 1:
        return setup  # asked for XLA after a --nojit_compile run: as asked
    if verbose:
        print(f"note: --resume_from={resume_from} was trained in a pack of {packed} seeds "
              "without XLA: with --jit_compile it draws other batches and random numbers, so "
              "its numbers will differ from the packed run's (--nojit_compile matches them)",
              flush=True)
    return setup


def run(config: Config, output_dir: str, export_dir: str | None = None,
        resume_from: str | None = None, overwrite: bool = False,
        strategy: tf.distribute.Strategy | None = None, is_chief: bool = True,
        verbose: bool = True, setup: Setup | None = None,
        progress_every: float | None = 30.0, checkpoint_every: float | None = 5.0,
        seeds_at_once: int = 1, data=None, callbacks: tuple = (),
        chunk_callbacks: tuple = ()) -> dict | list[dict]:
    """Train, evaluate after each task, export after each task, write results atomically.

    The chief claims ``output_dir`` and ``export_dir`` for the whole run
    (``rundirs.claim``: a second run on either is refused). Every ``checkpoint_every``
    minutes inside a task (None or 0: never) the task's progress is saved into
    ``<export_dir>/task_progress``, from which ``resume_from`` continues mid-task. When
    ``verbose`` and stdout is not a terminal (no progress bar), a progress line is printed
    every ``progress_every`` seconds inside a task.

    ``seeds_at_once`` = K > 1 trains seeds ``config.seed`` .. ``config.seed + K - 1`` in one
    compiled step (``strategies.pack``), each writing what a separate run writes into
    ``rundirs.seed_dirs`` (its checkpoints inside a task included); it returns their records
    (one record for K = 1). A pack does not resume as a whole: each seed's export resumes on
    its own, stepping without XLA as the pack did (``_packed_resume``).

    ``data``: a ``bir_keras.data.streams.TaskStream`` for ``config.experiment == "custom"``
    (else the ``.npz`` or folder at ``config.data_dir`` is read). ``callbacks``: functions
    ``fn(trainer, task)`` called after each task of each seed, once its export is written;
    ``chunk_callbacks``: ``fn(trainer, TaskProgress)`` after each compiled call inside a task
    (every ``log_every`` iterations or so)."""
    if export_dir is None:
        export_dir = str(rundirs.default_export_dir(output_dir))
    check_intervals(progress_every, checkpoint_every)
    check_seeds_at_once(resolve(config), seeds_at_once, resume_from)
    seeds = [config.seed + i for i in range(seeds_at_once)]
    if seeds_at_once > 1 and setup is not None:
        raise ValueError("a packed run prepares each seed's data itself: pass no setup")
    dirs = rundirs.seed_dirs(output_dir, export_dir, seeds)
    with contextlib.ExitStack() as claims:
        if is_chief:
            for out, exp in dirs:
                claims.enter_context(rundirs.claim(out, "--output_dir"))
                claims.enter_context(rundirs.claim(exp, "--export_dir"))
                rundirs.check_run_paths(out, exp, resume_from, overwrite)
        runs = []
        for s, (out, exp) in zip(seeds, dirs):
            cfg = dataclasses.replace(config, seed=s)
            runs.append(_SeedRun(cfg, out, exp, resume_from, strategy, is_chief, verbose,
                                 setup, checkpoint_every, seeds_at_once, data))
            runs[-1].trainer.callbacks.extend(callbacks)
            runs[-1].trainer.chunk_callbacks.extend(chunk_callbacks)
        recs = _run(runs, progress_every if verbose else None)
    return recs[0] if seeds_at_once == 1 else recs


class _SeedRun:
    """One seed's part of a run: its setup and trainer, its callbacks (an export after every
    task, checkpoints inside a task), its scratch output directory (renamed into place at
    the end, so an earlier run in ``output_dir`` is never half-overwritten; workers other
    than the chief write to a scratch directory that is deleted) and what is safely on
    disk (``saved``: the tasks whose final state is exported, and where)."""

    def __init__(self, config, output_dir, export_dir, resume_from, strategy, is_chief,
                 verbose, setup, checkpoint_every, pack_size=1, data=None):
        self.pack_size = pack_size
        self.out, self.export_dir = Path(output_dir), export_dir
        self.resume_from, self.is_chief = resume_from, is_chief
        setup = setup or prepare(config, data, resume_from)
        if resume_from:
            setup = _packed_resume(setup, resume_from, verbose)
        self.setup = setup
        self.trainer = trainer = build(setup, strategy=strategy, verbose=verbose)
        self.midtask = resume(trainer, setup, resume_from) if resume_from else None
        self.start = time.time()
        self.saved = {"tasks": trainer.tasks_learned, "step": trainer.global_step,
                      "export": Path(resume_from) if resume_from else None}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        self.checkpoint_every = checkpoint_every
        self.last_checkpoint = time.time()
        self.latest: dict = {}  # the last boundary between compiled calls (a Ctrl-C lands there)
        trainer.callbacks.append(self.after_task)
        if is_chief:
            trainer.chunk_callbacks.append(self.checkpoint_in_task)

    def record(self, tr: Trainer) -> dict:
        rec = run_record(self.setup, tr, time.time() - self.start)
        rec["resume_from"] = str(self.resume_from) if self.resume_from else None
        # how many seeds trained in one step (1: alone); above 1 the wall times are shared
        rec["seeds_at_once"] = self.pack_size
        return rec

    def after_task(self, tr: Trainer, t: int) -> None:
        if self.is_chief:
            # logged (and flushed) before the export: once the export is there, the next
            # write to the event file is the next task's
            tensorboard_log.log_samples(tr, self.setup, t)
            tensorboard_log.log_accuracy_curves(tr, self.setup, t)
            tr.summary_writer.flush()
            export.export_run(tr, self.export_dir, self.record(tr), pixels=self.setup.pixels,
                              trunk=self.setup.trunk if self.setup.protocol.features else None)
            self.saved["export"] = Path(self.export_dir)
        self.saved.update(tasks=t + 1, step=tr.global_step)
        self.last_checkpoint = time.time()

    def save_progress(self, tr: Trainer, at: TaskProgress) -> None:
        rec = self.record(tr)
        rec["task_progress"] = dataclasses.asdict(at)
        export.save_progress(tr, self.export_dir, rec)
        self.last_checkpoint = time.time()

    def checkpoint_in_task(self, tr: Trainer, at: TaskProgress) -> None:
        self.latest.update(at=at, step=tr.global_step)
        # between compiled calls; none right before the task's own export
        if self.checkpoint_every and time.time() - self.last_checkpoint >= self.checkpoint_every * 60 \
                and at.iterations < tr.iterations(at.task):
            self.save_progress(tr, at)

    def begin(self) -> None:
        if self.is_chief:
            tr = self.trainer
            tr.summary_writer = tf.summary.create_file_writer(str(self.work / "tensorboard"))
            tensorboard_log.log_hparams(tr, self.setup)
            tensorboard_log.log_about(tr, self.setup)
            if self.resume_from:
                # the accuracy after the tasks learned before (their losses are in the
                # TensorBoard of the run that learned them); with nothing left to learn,
                # the replay samples of the final model too
                tensorboard_log.log_learned(tr, self.setup,
                                            samples=tr.tasks_learned >= tr.protocol.num_tasks)

    def interrupted(self, resumable_ok: bool) -> RunInterrupted:
        """What Ctrl-C leaves of this seed (``salvage.save_interrupted``)."""
        tr, at, resumable = self.trainer, self.latest.get("at"), None
        if resumable_ok and at is not None and self.latest["step"] == tr.global_step \
                and at.task == tr.tasks_learned == self.saved["tasks"] \
                and at.iterations < tr.iterations(at.task):
            resumable = (lambda: self.save_progress(tr, at), at.iterations)  # noqa: E731
        return salvage.save_interrupted(tr, self.setup, self.export_dir, self.saved,
                                        self.record, self.is_chief, resumable)

    def finish(self) -> dict:
        """Write results.json, the plots and TensorBoard into place: the record."""
        tr, setup, out, work = self.trainer, self.setup, self.out, self.work
        rec = self.record(tr)
        rec["export_dir"] = str(self.export_dir)
        if not self.is_chief:
            shutil.rmtree(work, ignore_errors=True)
            return rec
        try:
            if self.saved["export"] is not None and \
                    not rundirs.same_path(self.saved["export"], self.export_dir):
                # resumed with nothing left to learn, into another --export_dir: the export
                # of the final model goes there as after a task
                export.export_run(tr, self.export_dir, rec, pixels=setup.pixels,
                                  trunk=setup.trunk if setup.protocol.features else None)
                self.saved["export"] = Path(self.export_dir)
            tr.summary_writer.close()
            atomic_write_json(work / "results.json", rec)
            plot_average_accuracy({method_label(setup.config): (rec["average_accuracy"], None)},
                                  work / "accuracy.png",
                                  title=f"{setup.config.experiment} ({setup.config.scenario}-IL)")
            plot_accuracy_matrix(rec["accuracy_matrix"], work / "accuracy_matrix.png",
                                 title="accuracy after each task (rows) on each task (columns)")
            rundirs.write_marker(work, rundirs.OUTPUT)
            atomic_dir(out, lambda tmp: _move_contents(work, tmp), overwrite=True,
                       check=rundirs.replace_check(rundirs.OUTPUT, "--output_dir",
                                                   "run's output directory"))
        except BaseException as e:
            if not caused_by_interrupt(e):
                raise
            again = "" if self.saved["export"] is None else (
                "; write it without training by running the same command with "
                f"--resume_from={self.saved['export']}")
            raise RunInterrupted(f"interrupted while writing {out} (not written); "
                                 f"{salvage.last_export_note(self.saved)}{again}", None,
                                 self.saved["export"]) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return rec


def _run(runs: list[_SeedRun], progress_every: float | None) -> list[dict]:
    """Train the seeds together (``SeedPack``; one seed: ``Trainer.fit``), then write each
    seed's results; on failure discard every seed's unfinished output."""
    trainers = [r.trainer for r in runs]
    progress = None
    if progress_every and not _isatty(sys.stdout):
        progress = Progress(trainers[0], progress_every,
                            runs[0].midtask[0] if runs[0].midtask else None)
        trainers[0].callbacks.append(progress.task_done)
        progress.start()
    # a second Ctrl-C ends the process at once (interrupts.deferred): leave no temporary
    forget_work = interrupts.on_hard_stop(
        lambda: [shutil.rmtree(r.work, ignore_errors=True) for r in runs])
    # the salvage after a first Ctrl-C runs inside the block too, so a second one stops it
    with interrupts.deferred():
        try:
            # refused before anything is written (``strategies.pack.check_packable``)
            pack = SeedPack(trainers) if len(runs) > 1 else None
            for r in runs:
                r.begin()
            if pack is None:
                trainers[0].fit(resume=runs[0].midtask)
            else:
                pack.fit()
        except NonFiniteLoss as e:
            # the weights may already hold NaN: export nothing, keep the last good export
            for r in runs:
                _discard(r.trainer, r.work)
            notes = "; ".join(salvage.last_export_note(r.saved) for r in runs)
            raise NonFiniteLoss(f"{e}; {notes}") from e
        except BaseException as e:
            for r in runs:
                _discard(r.trainer, r.work)
            if caused_by_interrupt(e):
                if len(runs) == 1:
                    raise runs[0].interrupted(resumable_ok=True) from None
                # the seeds stopped at one step (``SeedPack``): each saves its progress
                saved = [r.interrupted(resumable_ok=True) for r in runs]
                raise RunInterrupted("; ".join(f"seed {r.trainer.config.seed}: {s}"
                                               for r, s in zip(runs, saved)),
                                     saved[0].saved, saved[0].last_complete) from None
            raise
        finally:
            forget_work()
            if progress is not None:
                progress.stop()
    return [r.finish() for r in runs]


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress(threading.Thread):
    """Prints where training stands every ``every`` seconds (for logs and pipes, where the
    progress bar of a terminal only prints at the end of each task)."""

    def __init__(self, trainer: Trainer, every: float, at: TaskProgress | None = None):
        super().__init__(daemon=True, name="bir_keras-progress")
        self.trainer, self.every = trainer, float(every)
        self._stop_event = threading.Event()
        self._begin(trainer.tasks_learned, at.iterations if at else 0)

    def _begin(self, task: int, done: int = 0) -> None:
        tr = self.trainer
        self.task, self.first_step, self.since = task, tr.global_step - done, time.time()
        self.iters = tr.iterations(task) if task < tr.protocol.num_tasks else 0

    def task_done(self, trainer: Trainer, t: int) -> None:
        """Trainer callback: the next task starts counting."""
        self._begin(t + 1)

    def line(self) -> str:
        """The progress line for now."""
        tr, n = self.trainer, self.trainer.protocol.num_tasks
        done = tr.global_step - self.first_step
        elapsed = time.time() - self.since
        where = f"task {self.task + 1}/{n}"
        if done >= self.iters:
            return f"{where}: {self.iters}/{self.iters} iterations, evaluating and exporting"
        if not done:
            return f"{where}: starting ({elapsed:.0f} s; the step is compiled at the start of a task)"
        eta = elapsed / done * (self.iters - done)
        return f"{where}: iteration {done}/{self.iters} ({elapsed:.0f} s, about {eta:.0f} s left)"

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            if self.task < self.trainer.protocol.num_tasks:
                print(self.line(), flush=True)

    def stop(self) -> None:
        """End the thread (it prints nothing more)."""
        self._stop_event.set()


def _discard(trainer: Trainer, work: Path) -> None:
    """Drop the unfinished output directory (and close the TensorBoard writer into it)."""
    if trainer.summary_writer is not None:
        trainer.summary_writer.close()
    shutil.rmtree(work, ignore_errors=True)


def _move_contents(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        os.replace(item, dst / item.name)


