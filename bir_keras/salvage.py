"""What a run saves when Ctrl-C stops it: a finished task's export, or the partly trained
model (``<export_dir>-interrupted``) and, between compiled calls, the task's progress, from
which ``--resume_from`` continues mid-task (``RunInterrupted`` says what went where)."""

from __future__ import annotations

from pathlib import Path

from bir_keras import export, rundirs
from bir_keras.interrupts import caused_by_interrupt
from bir_keras.setup import Setup
from bir_keras.strategies.base import Trainer

INTERRUPTED_SUFFIX = "-interrupted"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, after saving what could be saved; ``str()`` says where."""

    def __init__(self, message: str, saved: Path | None, last_complete: Path | None):
        super().__init__(message)
        self.saved = saved
        self.last_complete = last_complete


def last_export_note(saved: dict) -> str:
    if saved["export"] is None:
        return "no task was completed, so nothing was exported"
    return f"the last complete export (after task {saved['tasks']}) is in {saved['export']}"


def save_interrupted(trainer: Trainer, setup: Setup, export_dir: str, saved: dict,
                      record, is_chief: bool, resumable=None) -> RunInterrupted:
    """Export what Ctrl-C left: a finished but not yet exported task goes to ``export_dir``
    as usual; a task part-way through goes to ``<export_dir>-interrupted`` (marked in its
    run.json, refused by ``--resume_from``), so ``export_dir`` keeps the last complete task,
    and, where Ctrl-C landed between compiled calls (``resumable``), into
    ``<export_dir>/task_progress``, from which ``--resume_from`` continues the task."""
    done = trainer.tasks_learned
    last = last_export_note(saved)
    if done == saved["tasks"] and trainer.global_step == saved["step"]:
        if done == trainer.protocol.num_tasks and saved["export"] is not None:
            return RunInterrupted(
                f"interrupted after the last task's export, before the results were written: "
                f"{last}; write the results, plots and TensorBoard without training by "
                f"running the same command with --resume_from={saved['export']}",
                None, saved["export"])
        return RunInterrupted(f"interrupted between tasks, nothing new to save: {last}",
                              None, saved["export"])
    if not is_chief:
        return RunInterrupted(f"interrupted (not the chief worker: nothing saved); {last}",
                              None, saved["export"])
    trunk = setup.trunk if setup.protocol.features else None
    rec = record(trainer)
    try:
        if done > saved["tasks"] and len(trainer.history.accuracy_matrix) == done:
            # the task is learned and evaluated; only its export was cut short
            export.export_run(trainer, export_dir, rec, pixels=setup.pixels, trunk=trunk)
            return RunInterrupted(f"interrupted after task {done}: saved its export to "
                                  f"{export_dir} (continue with --resume_from={export_dir})",
                                  Path(export_dir), Path(export_dir))
        task, iters = saved["tasks"] + 1, trainer.global_step - saved["step"]
        if resumable is not None:
            save, iters = resumable
            save()
            last = (f"its progress is saved in {Path(export_dir) / export.TASK_PROGRESS} "
                    f"(continue the task with --resume_from={export_dir})")
        rec["interrupted"] = {"task": task, "iterations_done": iters,
                              "global_step": trainer.global_step}
        # never over a directory this package did not write: take the next free name
        dest = rundirs.free_sibling(Path(export_dir).parent /
                                    (Path(export_dir).name + INTERRUPTED_SUFFIX), rundirs.EXPORT)
        export.export_run(trainer, dest, rec, pixels=setup.pixels, trunk=trunk)
    except BaseException as e:
        if not caused_by_interrupt(e):
            raise
        return RunInterrupted(f"interrupted again while saving, nothing saved; {last}",
                              None, saved["export"])
    return RunInterrupted(f"interrupted in task {task} after {iters} iteration(s): saved the "
                          f"partly trained model to {dest} (not resumable); {last}",
                          dest, saved["export"])
