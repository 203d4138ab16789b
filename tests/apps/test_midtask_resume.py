"""Checkpoints inside a task (``checkpoint_every``): a run stopped right after one, and
continued with ``resume_from``, gives the accuracy matrix and losses of a straight run, bit
for bit (same machine, same process kind: both runs here are in-process). The state on
disk that a kill leaves is exactly what was written (every write is atomic), so a copy of
the export directory at that moment stands for the killed run."""

import json
import shutil

import numpy as np
import pytest

from bir_keras import experiment, export
from bir_keras.config import Config, method_settings

# 60 iterations per task: compiled calls of 50 + 10, so the checkpoint lands at iteration 50
BASE = dict(experiment="split_digits", scenario="class", tasks=2, iters=60, batch=16,
            fc_units=20, z_dim=4, seed=12)


def config(method: str, **over) -> Config:
    return Config(**{**BASE, **method_settings(method, "split_digits", "class"),
                     "method": method, **over})


# Without XLA: its compilation is most of this test's time (50 s with it, 19 s without, on
# a 2-core EPYC); the default step with XLA, and GR with its own generator iterations
# (--g_iters), with --run-slow (the suite's time)
@pytest.mark.parametrize("method, xla", [
    ("bir_si", False), pytest.param("bir_si", True, marks=pytest.mark.slow),
    pytest.param("generative", False, marks=pytest.mark.slow)])
def test_resume_mid_task_gives_the_straight_run(tmp_path, monkeypatch, method, xla):
    # One straight run that checkpoints after every compiled call; the export directory as
    # it stands on disk right after task 2's checkpoint at iteration 50 is copied aside:
    # what a kill -9 at that moment would leave. Resuming from the copy must give the
    # straight run's numbers.
    cfg = config(method, jit_compile=xla, **({"g_iters": 80} if method == "generative" else {}))
    real = export.save_progress
    saves = []

    def save_and_copy(trainer, export_dir, record):
        path = real(trainer, export_dir, record)
        saves.append(record["task_progress"])
        if record["task_progress"]["task"] == 1 and not (tmp_path / "killed").exists():
            shutil.copytree(export_dir, tmp_path / "killed")
        return path

    monkeypatch.setattr(export, "save_progress", save_and_copy)
    straight = experiment.run(cfg, str(tmp_path / "a"), export_dir=str(tmp_path / "ea"),
                              verbose=False, checkpoint_every=1e-9)
    monkeypatch.setattr(export, "save_progress", real)
    # after every compiled call but the task's last (its export follows): GR's
    # generator-only iterations past --iters are a call of their own
    pairs = [(s["task"], s["iterations"]) for s in saves]
    assert pairs == ([(0, 50), (1, 50)] if method == "bir_si" else
                     [(0, 50), (0, 60), (1, 50), (1, 60)])
    killed = tmp_path / "killed"
    progress = json.loads((killed / "task_progress" / "progress.json").read_text())
    assert progress["tasks_learned"] == 1 and progress["task_progress"]["iterations"] == 50
    resumed = experiment.run(cfg, str(tmp_path / "c"), export_dir=str(killed),
                             resume_from=str(killed), verbose=False, checkpoint_every=0)
    assert resumed["accuracy_matrix"] == straight["accuracy_matrix"]
    assert resumed["losses"] == straight["losses"]
    assert resumed["global_step"] == straight["global_step"]
    # the task's export replaced the progress checkpoint
    assert not (killed / "task_progress").exists()
    np.testing.assert_array_equal(resumed["average_accuracy"], straight["average_accuracy"])
