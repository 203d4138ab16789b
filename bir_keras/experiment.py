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

import numpy as np
import tensorflow as tf

from bir_keras import export, interrupts, rundirs, salvage, tensorboard_log
from bir_keras.config import Config, ConfigError, method_label, resolve
from bir_keras.data.protocols import Protocol, make_protocol, max_tasks
from bir_keras.evaluation.metrics import summarize
from bir_keras.evaluation.plots import plot_accuracy_matrix, plot_average_accuracy
from bir_keras.fileio import atomic_dir, atomic_write_json
from bir_keras.interrupts import caused_by_interrupt
from bir_keras.models.layers import CONV_FEATURES, conv_trunk
from bir_keras.salvage import RunInterrupted
from bir_keras.strategies import make_trainer
from bir_keras.strategies.base import NonFiniteLoss, TaskProgress, Trainer

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONV_WEIGHTS = PACKAGE_ROOT / "saved_models" / "cifar10_conv" / "conv_trunk.weights.h5"


@dataclasses.dataclass
class Setup:
    """A resolved config, its protocol (features if conv layers are frozen and cached), the
    pixel-level protocol and the pre-trained conv trunk (CIFAR only)."""

    config: Config
    protocol: Protocol
    pixels: Protocol
    trunk: object | None


def load_trunk(path: str | None):
    """The CIFAR conv trunk with pre-trained weights (``path='random'``: untrained, for tests)."""
    trunk = conv_trunk()
    if path == "random":
        return trunk
    path = Path(path) if path else DEFAULT_CONV_WEIGHTS
    if not path.exists():
        raise ConfigError(f"pre-trained conv weights not found at {path}; run "
                          "`python -m apps.pretrain` or pass --conv_weights=FILE")
    trunk.load_weights(str(path))
    return trunk


def prepare(config: Config) -> Setup:
    """Load the data, fill the paper's defaults, check flags, cache frozen conv features."""
    pixels = make_protocol(config.experiment, config.scenario, tasks=config.tasks,
                           data_dir=config.data_dir, seed=config.seed,
                           keep_label_order=config.keep_label_order)
    c = resolve(config, pixels.conv)
    protocol, trunk = pixels, None
    if pixels.conv:
        trunk = load_trunk(c.conv_weights)
        trunk.trainable = False
        # Frozen layers give the same output for the same input: compute the features of
        # each dataset once (internal replay, method.md 4.3.4) and train the FC part on them.
        if c.hidden or (c.freeze_convE and c.replay != "generative"):
            def features(x: np.ndarray) -> np.ndarray:
                return np.concatenate([trunk(x[s:s + 1000], training=False).numpy()
                                       for s in range(0, len(x), 1000)])
            protocol = pixels.with_features(features, CONV_FEATURES)
    return Setup(c, protocol, pixels, trunk)


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
    for key in ("experiment", "scenario", "classes_per_task", "dataset", "features"):
        if theirs.get(key) != mine.get(key):
            raise ConfigError(f"--resume_from={resume_from} has a different protocol "
                              f"({key}={theirs.get(key)!r}, this run has {mine.get(key)!r})")
    if theirs["class_order"][:len(mine["class_order"])] != mine["class_order"][:len(theirs["class_order"])]:
        raise ConfigError(f"--resume_from={resume_from} used a different class order (seed)")
    learned, n = old["tasks_learned"], setup.protocol.num_tasks
    if learned >= n:
        most = max_tasks(setup.config.experiment)
        if most is not None and learned >= most:
            raise ConfigError(f"--resume_from={resume_from} already learned all {learned} "
                              f"tasks of {setup.config.experiment}: there is nothing left to "
                              "learn")
        raise ConfigError(f"--resume_from={resume_from} already learned {learned} tasks and "
                          f"this run asks for --tasks={n}; ask for more with --tasks="
                          f"{learned + 1}{'' if most is None else f' (up to {most})'}")
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
    trainer.history.accuracy_matrix = [list(r) + [None] * (n - len(r))
                                       for r in old["accuracy_matrix"]]
    trainer.history.task_times = list(old.get("task_times_s", []))
    trainer.history.losses = list(old.get("losses", []))
    trainer.global_step = int(old.get("global_step", 0))
    if progress is None:
        return None
    at = TaskProgress(**progress)
    return at, lambda tr: export.restore_progress(tr, path)


def run(config: Config, output_dir: str, export_dir: str | None = None,
        resume_from: str | None = None, overwrite: bool = False,
        strategy: tf.distribute.Strategy | None = None, is_chief: bool = True,
        verbose: bool = True, setup: Setup | None = None,
        progress_every: float | None = 30.0, checkpoint_every: float | None = 5.0) -> dict:
    """Train, evaluate after each task, export after each task, write results atomically.

    The chief claims ``output_dir`` and ``export_dir`` for the whole run
    (``rundirs.claim``: a second run on either is refused). Every ``checkpoint_every``
    minutes inside a task (None or 0: never) the task's progress is saved into
    ``<export_dir>/task_progress``, from which ``resume_from`` continues mid-task. When
    ``verbose`` and stdout is not a terminal (no progress bar), a progress line is printed
    every ``progress_every`` seconds inside a task."""
    if export_dir is None:
        export_dir = str(rundirs.default_export_dir(output_dir))
    with contextlib.ExitStack() as claims:
        if is_chief:
            claims.enter_context(rundirs.claim(output_dir, "--output_dir"))
            claims.enter_context(rundirs.claim(export_dir, "--export_dir"))
            rundirs.check_run_paths(output_dir, export_dir, resume_from, overwrite)
        return _run(config, output_dir, export_dir, resume_from, strategy, is_chief, verbose,
                    setup, progress_every, checkpoint_every)


def _run(config, output_dir, export_dir, resume_from, strategy, is_chief, verbose, setup,
         progress_every, checkpoint_every) -> dict:
    out = Path(output_dir)
    setup = setup or prepare(config)
    trainer = build(setup, strategy=strategy, verbose=verbose)
    midtask = resume(trainer, setup, resume_from) if resume_from else None
    start = time.time()
    # What is safely on disk: the tasks whose final state is exported, and where.
    saved = {"tasks": trainer.tasks_learned, "step": trainer.global_step,
             "export": Path(resume_from) if resume_from else None}
    # Everything goes to a temporary sibling first and is renamed into place at the end, so
    # an earlier run in ``output_dir`` is never half-overwritten (workers other than the
    # chief write to a scratch directory that is deleted).
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))

    def record(tr: Trainer) -> dict:
        rec = run_record(setup, tr, time.time() - start)
        rec["resume_from"] = str(resume_from) if resume_from else None
        return rec

    def after_task(tr: Trainer, t: int) -> None:
        if is_chief:
            # logged (and flushed) before the export: once the export is there, the next
            # write to the event file is the next task's
            tensorboard_log.log_samples(tr, setup, t)
            tensorboard_log.log_accuracy_curves(tr, setup, t)
            tr.summary_writer.flush()
            rec = record(tr)
            export.export_run(tr, export_dir, rec, pixels=setup.pixels,
                              trunk=setup.trunk if setup.protocol.features else None)
            saved["export"] = Path(export_dir)
        saved.update(tasks=t + 1, step=tr.global_step)
        last_checkpoint[0] = time.time()

    last_checkpoint = [time.time()]
    latest: dict = {}   # the last boundary between compiled calls (a Ctrl-C lands there)

    def save_progress(tr: Trainer, at: TaskProgress) -> None:
        rec = record(tr)
        rec["task_progress"] = dataclasses.asdict(at)
        export.save_progress(tr, export_dir, rec)
        last_checkpoint[0] = time.time()

    def checkpoint_in_task(tr: Trainer, at: TaskProgress) -> None:
        latest.update(at=at, step=tr.global_step)
        # between compiled calls; none right before the task's own export
        if checkpoint_every and time.time() - last_checkpoint[0] >= checkpoint_every * 60 \
                and at.iterations < tr.iterations(at.task):
            save_progress(tr, at)

    trainer.callbacks.append(after_task)
    if is_chief:
        trainer.chunk_callbacks.append(checkpoint_in_task)
    progress = None
    if verbose and progress_every and not _isatty(sys.stdout):
        progress = Progress(trainer, progress_every, midtask[0] if midtask else None)
        trainer.callbacks.append(progress.task_done)
        progress.start()
    # a second Ctrl-C ends the process at once (interrupts.deferred): leave no temporary
    forget_work = interrupts.on_hard_stop(lambda: shutil.rmtree(work, ignore_errors=True))
    # the salvage after a first Ctrl-C runs inside the block too, so a second one stops it
    with interrupts.deferred():
        try:
            if is_chief:
                trainer.summary_writer = tf.summary.create_file_writer(str(work / "tensorboard"))
                tensorboard_log.log_hparams(trainer, setup)
                tensorboard_log.log_about(trainer, setup)
            trainer.fit(resume=midtask)
        except NonFiniteLoss as e:
            # the weights may already hold NaN: export nothing, keep the last good export
            _discard(trainer, work)
            raise NonFiniteLoss(f"{e}; {salvage.last_export_note(saved)}") from e
        except BaseException as e:
            _discard(trainer, work)
            if caused_by_interrupt(e):
                resumable = None
                at = latest.get("at")
                if at is not None and latest["step"] == trainer.global_step \
                        and at.task == trainer.tasks_learned == saved["tasks"] \
                        and at.iterations < trainer.iterations(at.task):
                    resumable = (lambda: save_progress(trainer, at), at.iterations)  # noqa: E731
                raise salvage.save_interrupted(trainer, setup, export_dir, saved, record,
                                        is_chief, resumable) from None
            raise
        finally:
            forget_work()
            if progress is not None:
                progress.stop()
    rec = record(trainer)
    rec["export_dir"] = str(export_dir)
    if not is_chief:
        shutil.rmtree(work, ignore_errors=True)
        return rec
    try:
        trainer.summary_writer.close()
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
        raise RunInterrupted(f"interrupted while writing {out} (not written); "
                             f"{salvage.last_export_note(saved)}", None, saved["export"]) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rec


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


