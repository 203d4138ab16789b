"""apps.train when a run cannot finish: Ctrl-C saves what it can and exits 130; a diverging
loss stops with one `error:` line, exit 1, and the last good export left as it was."""

import json
import signal
import time

import pytest

from tests import processes
from tests.apps.test_sample import ENV, FAST, diverging_ewc_run


def no_output(out):
    """``--output_dir`` was not created, and no temporary sibling was left behind."""
    return not out.exists() and not [p for p in out.parent.iterdir() if ".tmp-" in p.name]


def events_size(work_parent) -> int:
    """Bytes in the event files of a run still in progress (its temporary output dir)."""
    return sum(f.stat().st_size for f in work_parent.glob(".out.tmp-*/tensorboard/events.*"))


def test_ctrl_c_saves_export_and_exits_130(tmp_path):
    out, exp = tmp_path / "out", tmp_path / "export"
    # --log_every=1: the event file grows every few steps (the writer's queue holds 10
    # summaries), which shows when task 2 is under way whatever the machine's speed
    args = [*FAST, "--method=none", "--iters=500", "--tasks=3", "--log_every=1",
            f"--output_dir={out}", f"--export_dir={exp}"]
    # PYTHONFAULTHANDLER: should the process die of a signal, stderr says where
    with processes.running(["-m", "apps.train", *args],
                           env={**ENV, "PYTHONFAULTHANDLER": "1"}) as proc:
        deadline = time.time() + 240
        processes.wait_until(proc, (exp / "run.json").exists, deadline,
                             "an export after task 1", every=0.05)
        after_task1 = events_size(tmp_path)  # task 1's accuracy is flushed before its export
        processes.wait_until(proc, lambda: events_size(tmp_path) != after_task1, deadline,
                             "the start of task 2")
        stdout, stderr = processes.ctrl_c(proc)
    assert proc.returncode == 130, (proc.returncode, stderr[-3000:])
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    [line] = [ln for ln in stderr.splitlines() if ln.startswith("interrupted")]
    assert no_output(out)

    # the export after task 1 is intact and resumable; the partly trained task 2 is saved
    # beside it, marked as interrupted
    run = json.loads((exp / "run.json").read_text())
    assert run["tasks_learned"] == 1 and (exp / "saved_model" / "saved_model.pb").exists()
    assert "interrupted" not in run
    partial = exp.parent / "export-interrupted"
    assert "interrupted in task 2 after" in line and str(partial) in line and str(exp) in line
    prun = json.loads((partial / "run.json").read_text())
    assert prun["interrupted"]["task"] == 2 and prun["interrupted"]["iterations_done"] > 0
    assert prun["tasks_learned"] == 1 and (partial / "checkpoint").is_dir()
    assert (partial / "saved_model" / "saved_model.pb").exists()

    # continuing from the partly trained export is refused (it is not the same run)
    from bir_keras import experiment
    from bir_keras.config import ConfigError

    with pytest.raises(ConfigError, match="interrupted part-way through task 2"):
        experiment.resume(None, None, str(partial))  # checks run.json before anything else


def test_non_finite_loss_stops_with_error_and_keeps_last_export(tmp_path_factory):
    r, out, exp = diverging_ewc_run(tmp_path_factory)
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "non-finite loss at task 2" in line and "global step" in line
    assert "penalty_ewc" in line and str(exp) in line
    # the earlier --output_dir is not replaced (despite --overwrite), nothing half-written
    assert sorted(p.name for p in out.iterdir()) == [".bir_keras", "results.json"]
    assert (out / "results.json").read_text() == "an earlier run"
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]
    # the export written after task 1 is the last one
    run = json.loads((exp / "run.json").read_text())
    assert run["tasks_learned"] == 1 and len(run["accuracy_matrix"]) == 1
    assert (exp / "saved_model" / "saved_model.pb").exists()
    # ... and nothing else was exported (no temporary or interrupted siblings; ".made" is
    # tests/once.py's marker)
    assert sorted(p.name for p in exp.parent.iterdir()) == [".made", "export", "out",
                                                            "result.json"]


def test_ctrl_c_inside_a_c_callback_counts_as_an_interrupt():
    # a SIGINT that lands while numpy's __array__ runs under a tensor conversion surfaces as
    # SystemError("... returned a result with an exception set") with the KeyboardInterrupt
    # as its context; it is recognised as the Ctrl-C, other chained errors are not
    from bir_keras.experiment import caused_by_interrupt

    def converted():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise SystemError("<built-in method __array__> returned a result with an "
                              "exception set") from None

    with pytest.raises(SystemError) as info:
        converted()
    assert info.value.__cause__ is None and isinstance(info.value.__context__, KeyboardInterrupt)
    assert caused_by_interrupt(info.value)
    assert caused_by_interrupt(KeyboardInterrupt())
    try:
        try:
            raise ValueError("inner")
        except ValueError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as e:
        assert not caused_by_interrupt(e)


def test_run_saves_when_ctrl_c_surfaces_as_system_error(tmp_path, monkeypatch):
    # the same SystemError raised inside task 2's training loop: experiment.run saves the
    # export of task 1 and the partly trained task 2 exactly as for a plain Ctrl-C
    from bir_keras import experiment
    from bir_keras.config import Config
    from bir_keras.strategies import loop

    real = loop.log_scalars

    def log_scalars(tr, values, step):
        if int(tr.tasks_done.numpy()) == 1:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise SystemError("<built-in method __array__> returned a result with an "
                                  "exception set") from None
        real(tr, values, step)

    monkeypatch.setattr(loop, "log_scalars", log_scalars)
    cfg = Config(experiment="split_digits", scenario="class", tasks=3, iters=25, batch=32,
                 fc_units=40, keep_label_order=True, log_every=1)
    out, exp = tmp_path / "out", tmp_path / "export"
    with pytest.raises(experiment.RunInterrupted, match=r"interrupted in task 2 after \d+ iteration"):
        experiment.run(cfg, str(out), export_dir=str(exp), verbose=False)
    assert not out.exists()
    assert json.loads((exp / "run.json").read_text())["tasks_learned"] == 1
    prun = json.loads((tmp_path / "export-interrupted" / "run.json").read_text())
    assert prun["interrupted"]["task"] == 2 and prun["interrupted"]["iterations_done"] >= 1


def test_ctrl_c_waits_for_the_end_of_the_compiled_call(tmp_path, monkeypatch):
    # SIGINT arrives as task 2's compiled call is about to start: the call runs to its end
    # (all 25 iterations, steps_per_call=50), then the loop stops and saves. Without the
    # deferral the KeyboardInterrupt would be raised at once, with none of task 2 done.
    import os

    from bir_keras import experiment
    from bir_keras.config import Config
    from bir_keras.strategies.base import Trainer

    real = Trainer.run_steps

    def run_steps(self, run, k, plan=None):
        if run.task == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, run, k, plan)

    monkeypatch.setattr(Trainer, "run_steps", run_steps)
    cfg = Config(experiment="split_digits", scenario="class", tasks=3, iters=25, batch=32,
                 fc_units=40, keep_label_order=True)
    out, exp = tmp_path / "out", tmp_path / "export"
    with pytest.raises(experiment.RunInterrupted, match="interrupted in task 2 after 25 iter"):
        experiment.run(cfg, str(out), export_dir=str(exp), verbose=False)
    assert json.loads((exp / "run.json").read_text())["tasks_learned"] == 1
    prun = json.loads((tmp_path / "export-interrupted" / "run.json").read_text())
    assert prun["interrupted"] == {"task": 2, "iterations_done": 25, "global_step": 50}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
